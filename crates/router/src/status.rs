//! `cluster status`: the router asks every member for its report and judges which shards can
//! be served (the rules are in `counter_proto::status`).

use crate::forward::{msg_name, Router};
use counter_cluster::Placement;
use counter_proto::status::MAX_LISTED_SHARDS;
use counter_proto::{
    encode_frame, ClusterStatus, Config, DataState, Frame, MemberStatus, Msg, NodeId, ShardMove,
};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long the router waits for each member's report. A member asks its peers with a shorter
/// timeout ([`PEER_TIMEOUT`]) before it answers, so a live member answers well within it.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a member waits for each peer's answer when it checks which peers are up.
pub const PEER_TIMEOUT: Duration = Duration::from_millis(500);

impl Router {
    /// Asks every member of the agreed configuration at once, and judges the answers.
    pub async fn status(&self) -> ClusterStatus {
        self.refresh().await;
        let view = self.view();
        let asks = view.config.members.iter().map(|(&node, addr)| async move {
            let status = match self.pool().call(addr, Msg::NodeStatus, NODE_TIMEOUT).await {
                Ok(Msg::NodeStatusReply(status)) => Ok(status),
                Ok(Msg::Error(e)) => Err(format!("answered {e}")),
                Ok(other) => Err(format!("answered {}", msg_name(&other))),
                Err(e) => Err(e.to_string()),
            };
            MemberStatus {
                node,
                addr: addr.clone(),
                status,
            }
        });
        let members = futures::future::join_all(asks).await;
        let mut status = summarize(&view.config, members);
        fit_in_a_frame(&mut status);
        status
    }
}

/// The cluster's status from its members' answers (`members`: every member of `config`).
pub fn summarize(config: &Config, members: Vec<MemberStatus>) -> ClusterStatus {
    let mut warnings = Vec::new();
    let placement = &Placement::from_config(config);
    let replication = config.replication;
    let shards = config.shard_count();
    // Members whose answer counts: the node the cluster file names, serving.
    let mut serving: std::collections::BTreeMap<NodeId, BTreeSet<NodeId>> = Default::default();
    let mut cluster_ids = BTreeSet::new();
    for m in &members {
        let Ok(s) = &m.status else { continue };
        if s.node != m.node {
            warnings.push(format!(
                "{} (node {}'s address in the configuration) is answered by node {}",
                m.addr, m.node, s.node
            ));
            continue;
        }
        cluster_ids.insert(s.cluster_id);
        if s.replication != replication || s.shards_total != shards {
            warnings.push(format!(
                "node {} runs with replication {} and {} shards; the configuration says \
                 replication {replication} and {shards} shards",
                m.node, s.replication, s.shards_total
            ));
        } else if s.config_version == config.version {
            let expected = placement.shards_of(m.node).count() as u32;
            if s.shards != expected {
                warnings.push(format!(
                    "node {} replicates {} shards, the configuration places {expected} on it",
                    m.node, s.shards
                ));
            }
        }
        if s.config_version != config.version {
            warnings.push(format!(
                "node {} runs configuration version {}, the router's is version {} (it catches \
                 up within seconds)",
                m.node, s.config_version, config.version
            ));
        }
        if s.state == DataState::Serving {
            serving.insert(m.node, s.peers_up.iter().copied().collect());
        }
    }
    if cluster_ids.len() > 1 {
        let ids: Vec<String> = cluster_ids.iter().map(|id| format!("{id:016x}")).collect();
        warnings.push(format!(
            "the members belong to different clusters ({}): every member must run with the \
             same cluster file",
            ids.join(", ")
        ));
    }
    let mut shards_available = 0;
    let mut unavailable_shards = Vec::new();
    for (shard, set) in config.shards.iter().enumerate() {
        let shard = shard as u32;
        let replicas = set.nodes();
        let majority_of = |group: &[NodeId], c: &NodeId, up: &BTreeSet<NodeId>| {
            group.iter().filter(|&r| r == c || up.contains(r)).count() > group.len() / 2
        };
        // Some replica serves and reaches a majority of the shard's replicas (of both sets
        // while it moves), itself included.
        let coordinator = replicas.iter().any(|c| {
            serving.get(c).is_some_and(|up| {
                majority_of(&set.old, c, up) && (!set.is_moving() || majority_of(&set.new, c, up))
            })
        });
        if coordinator {
            shards_available += 1;
        } else if unavailable_shards.len() < MAX_LISTED_SHARDS {
            unavailable_shards.push(shard);
        }
    }
    let moves: Vec<ShardMove> = config
        .moving()
        .map(|(shard, set)| {
            // The node driving the change reports how far its rescan is.
            let reported = members
                .iter()
                .filter_map(|m| m.status.as_ref().ok())
                .filter(|s| s.config_version == config.version)
                .flat_map(|s| s.rescan.iter())
                .filter(|r| r.shard == shard)
                .max_by_key(|r| (r.done, r.keys_copied));
            ShardMove {
                shard,
                from: set.old.clone(),
                to: set.new.clone(),
                keys_copied: reported.map_or(0, |r| r.keys_copied),
                copied: reported.is_some_and(|r| r.done),
            }
        })
        .collect();
    let answered = |m: &&MemberStatus| m.status.is_ok();
    ClusterStatus {
        router_version: env!("CARGO_PKG_VERSION").to_string(),
        config_version: config.version,
        replication,
        shards,
        nodes: members.len() as u32,
        nodes_reachable: members.iter().filter(answered).count() as u32,
        nodes_ready: members
            .iter()
            .filter(|m| m.status.as_ref().is_ok_and(|s| s.ready))
            .count() as u32,
        members,
        shards_available,
        unavailable_shards,
        moves,
        warnings,
    }
}

/// Whether `status` fits in one frame as the answer to a request.
fn fits(status: &ClusterStatus) -> bool {
    let frame = Frame {
        id: u64::MAX,
        msg: Msg::ClusterStatus(status.clone()),
    };
    encode_frame(&frame, &mut Vec::new()).is_ok()
}

/// Shrinks `status` until it fits in one frame (only a cluster of hundreds of members needs
/// it): first the members' peer lists and long texts, then member rows from the end. The
/// counts stay whole, and a warning says what was left out.
pub fn fit_in_a_frame(status: &mut ClusterStatus) {
    if fits(status) {
        return;
    }
    for m in &mut status.members {
        match &mut m.status {
            Ok(s) => s.peers_up.clear(),
            Err(e) => truncate(e, 100),
        }
    }
    status.warnings.truncate(8);
    for w in &mut status.warnings {
        truncate(w, 200);
    }
    status
        .warnings
        .push("too large for one frame: the members' peer lists were left out".into());
    let total = status.members.len();
    while !fits(status) && !status.members.is_empty() {
        let keep = status.members.len() * 9 / 10;
        status.members.truncate(keep);
    }
    if status.members.len() < total {
        let last = status.warnings.len() - 1;
        status.warnings[last] = format!(
            "too large for one frame: the members' peer lists and the rows of {} of the {total} \
             members were left out (the counts include them)",
            total - status.members.len()
        );
    }
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Of `node`'s shards in `placement`, how many it cannot reach a majority of replicas for,
/// when the peers `up` are up (and the node itself is, if it serves).
pub fn shards_without_quorum(
    placement: &Placement,
    node: NodeId,
    serving: bool,
    up: &BTreeSet<NodeId>,
) -> u32 {
    placement
        .shards_of(node)
        .filter(|&shard| {
            let replicas = placement.replicas(shard);
            let reached = replicas
                .iter()
                .filter(|&&r| (r == node && serving) || up.contains(&r))
                .count();
            reached < replicas.len() / 2 + 1
        })
        .count() as u32
}

/// Whether `answer` to `Identify`, from `peer`, says it is a serving member of cluster
/// `cluster_id`.
pub fn peer_is_up(peer: NodeId, cluster_id: u64, answer: &Msg) -> bool {
    matches!(answer, Msg::Identity { cluster_id: c, node, state: DataState::Serving, .. }
        if *c == cluster_id && *node == peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use counter_cluster::Cluster;
    use counter_proto::NodeStatus;

    fn cluster(nodes: u32, r: usize, shards: u32) -> Cluster {
        let mut text = format!("replication = {r}\nshards = {shards}\n");
        for id in 1..=nodes {
            text += &format!("[[node]]\nid = {id}\naddr = \"127.0.0.1:{}\"\n", 7100 + id);
        }
        Cluster::parse("t", &text).unwrap()
    }

    /// Member `node`'s answer when the members `up` are up (the node itself among them).
    fn answer(c: &Cluster, p: &Placement, node: NodeId, up: &[NodeId]) -> MemberStatus {
        let peers: BTreeSet<NodeId> = up.iter().copied().filter(|&n| n != node).collect();
        let without = shards_without_quorum(p, node, true, &peers);
        MemberStatus {
            node,
            addr: c.nodes[&node].clone(),
            status: Ok(NodeStatus {
                node,
                listen: c.nodes[&node].clone(),
                cluster_id: 7,
                config_version: 1,
                state: DataState::Serving,
                epoch: Some(1),
                shards: p.shards_of(node).count() as u32,
                shards_total: c.shards,
                replication: c.replication as u32,
                uptime_secs: 1,
                version: "0".into(),
                peers_up: peers.into_iter().collect(),
                shards_without_quorum: without,
                rescan: Vec::new(),
                ready: without == 0,
            }),
        }
    }

    /// Every member's answer when the members `up` are up and reach each other.
    fn members(c: &Cluster, p: &Placement, up: &[NodeId]) -> Vec<MemberStatus> {
        c.nodes
            .keys()
            .map(|&n| {
                if up.contains(&n) {
                    answer(c, p, n, up)
                } else {
                    MemberStatus {
                        node: n,
                        addr: c.nodes[&n].clone(),
                        status: Err("not sent: connection refused".into()),
                    }
                }
            })
            .collect()
    }

    #[test]
    fn a_shard_is_available_while_a_majority_of_its_replicas_is_up() {
        let c = cluster(5, 3, 64);
        let p = Placement::new(&c);
        let all = summarize(&c.bootstrap_config(7), members(&c, &p, &[1, 2, 3, 4, 5]));
        assert_eq!((all.nodes, all.nodes_reachable, all.nodes_ready), (5, 5, 5));
        assert_eq!(all.shards_available, 64);
        assert!(all.all_available() && all.unavailable_shards.is_empty());
        assert!(all.warnings.is_empty(), "{:?}", all.warnings);
        assert!(all.moves.is_empty());

        // Nodes 1 and 2 down: exactly the shards with both among their replicas are lost.
        let s = summarize(&c.bootstrap_config(7), members(&c, &p, &[3, 4, 5]));
        let lost: Vec<u32> = (0..64)
            .filter(|&sh| {
                let r = p.replicas(sh);
                r.contains(&1) && r.contains(&2)
            })
            .collect();
        assert!(!lost.is_empty() && lost.len() < 64, "{lost:?}");
        assert_eq!(s.unavailable_shards, lost);
        assert_eq!(s.shards_available, 64 - lost.len() as u32);
        assert_eq!(s.nodes_reachable, 3);
        // A survivor is ready only if none of its shards lost its majority.
        for m in &s.members {
            if let Ok(n) = &m.status {
                let hit = p.shards_of(n.node).filter(|sh| lost.contains(sh)).count();
                assert_eq!(n.ready, hit == 0, "node {}", n.node);
                assert_eq!(n.shards_without_quorum as usize, hit);
            }
        }
    }

    #[test]
    fn a_node_cut_off_from_its_peers_coordinates_nothing() {
        let c = cluster(3, 3, 8);
        let p = Placement::new(&c);
        // Node 1 answers the router but reaches no peer; 2 and 3 are down.
        let mut m = members(&c, &p, &[1]);
        let s = summarize(&c.bootstrap_config(7), m.clone());
        assert_eq!(
            (s.nodes_reachable, s.nodes_ready, s.shards_available),
            (1, 0, 0)
        );
        assert_eq!(s.unavailable_shards, (0..8).collect::<Vec<_>>());
        // Node 1 reaches node 2 (the router does not): a majority, so every shard is served.
        m[0] = answer(&c, &p, 1, &[1, 2]);
        let s = summarize(&c.bootstrap_config(7), m);
        assert_eq!(
            (s.nodes_reachable, s.nodes_ready, s.shards_available),
            (1, 1, 8)
        );
        // A member that does not serve yet (a new cluster starting) counts for nothing.
        let mut m = members(&c, &p, &[1, 2, 3]);
        for member in &mut m {
            if let Ok(n) = &mut member.status {
                n.state = DataState::Created;
            }
        }
        assert_eq!(summarize(&c.bootstrap_config(7), m).shards_available, 0);
    }

    #[test]
    fn differing_cluster_files_are_warned_about() {
        let c = cluster(3, 3, 8);
        let p = Placement::new(&c);
        let mut m = members(&c, &p, &[1, 2, 3]);
        if let Ok(n) = &mut m[0].status {
            n.cluster_id = 8;
            n.shards += 1;
        }
        if let Ok(n) = &mut m[1].status {
            n.node = 9;
        }
        if let Ok(n) = &mut m[2].status {
            n.config_version = 2;
        }
        let w = summarize(&c.bootstrap_config(7), m).warnings.join("\n");
        assert!(w.contains("answered by node 9"), "{w}");
        assert!(w.contains("node 1 replicates 9 shards"), "{w}");
        assert!(w.contains("different clusters"), "{w}");
        assert!(w.contains("configuration version 2"), "{w}");
    }

    #[test]
    fn only_a_serving_member_of_the_same_cluster_is_up() {
        let identity = |cluster_id, node, state| Msg::Identity {
            cluster_id,
            node,
            config_version: 1,
            state,
        };
        assert!(peer_is_up(2, 7, &identity(7, 2, DataState::Serving)));
        assert!(!peer_is_up(2, 7, &identity(7, 2, DataState::Created)));
        assert!(!peer_is_up(2, 7, &identity(7, 2, DataState::Empty)));
        assert!(!peer_is_up(2, 7, &identity(8, 2, DataState::Serving)));
        assert!(!peer_is_up(2, 7, &identity(7, 3, DataState::Serving)));
        assert!(!peer_is_up(2, 7, &Msg::Status));
        // A node that does not serve counts only the peers it reaches.
        let c = cluster(3, 3, 8);
        let p = Placement::new(&c);
        let two: BTreeSet<NodeId> = [2, 3].into();
        assert_eq!(shards_without_quorum(&p, 1, false, &two), 0);
        assert_eq!(shards_without_quorum(&p, 1, false, &[2].into()), 8);
        assert_eq!(shards_without_quorum(&p, 1, true, &[2].into()), 0);
        assert_eq!(shards_without_quorum(&p, 1, true, &BTreeSet::new()), 8);
    }

    #[test]
    fn a_huge_cluster_still_fits_in_one_frame() {
        let c = cluster(300, 3, 64);
        let p = Placement::new(&c);
        let up: Vec<NodeId> = (1..=300).collect();
        let mut s = summarize(&c.bootstrap_config(7), members(&c, &p, &up));
        assert!(!fits(&s));
        fit_in_a_frame(&mut s);
        assert!(fits(&s));
        assert_eq!((s.nodes, s.nodes_reachable), (300, 300));
        assert!(
            s.warnings.last().unwrap().contains("too large"),
            "{:?}",
            s.warnings
        );
        let mut small = summarize(&c.bootstrap_config(7), members(&c, &p, &up[..3]));
        small.members.truncate(3);
        let before = small.clone();
        fit_in_a_frame(&mut small);
        assert_eq!(small, before);
    }
}
