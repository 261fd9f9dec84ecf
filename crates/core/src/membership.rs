//! Changing the cluster's membership without losing a count: the rules, pure.
//!
//! # The recipe: joint quorums per shard, then a rescan, then the switch
//!
//! The configuration ([`Config`]) is itself a CASPaxos register, replicated on every member.
//! An admin command (add, remove or replace a node) is two changes of it:
//!
//! 1. **Joint** (version v+1, [`plan`]): every shard whose replica set changes from O to N is
//!    written `{old: O, new: N}`. A round on a key of such a shard needs a majority of O *and* a
//!    majority of N, in both phases, and so do quiet reads ([`crate::Quorum::joint`]).
//! 2. The mover waits until a majority of every moving shard's O has installed v+1 ([`Fence`]:
//!    from then on they refuse any message sent under an older version, so no round under v can
//!    complete any more: each needs a majority of O), then **rescans**: for every key a
//!    majority of O holds, an identity round (read the register, write it back) under v+1. After
//!    it, every value chosen under v is accepted by a majority of N, under a ballot above any
//!    earlier one; every value chosen since went through joint quorums anyway.
//! 3. **Switch** (version v+2, [`finish`]): the shard's set is N alone. Rounds under v+1 still
//!    running need a majority of N too, so they intersect every v+2 quorum. A node of O that is
//!    not in N drops the shard's data only once it has installed v+2, when it refuses every
//!    message of v+1 and older: its copy can no longer be counted in any quorum.
//!
//! Why it is safe: a value chosen under any version is, at every later version, held by a
//! majority of every quorum's sets (by induction over the two steps above), so every later
//! round's phase 1 sees it (the CASPaxos paper's argument, §2.2, with the joint step standing
//! in for its flexible-quorum steps).
//!
//! # The configuration register
//!
//! A change from configuration C to C' is a CASPaxos round on the register whose quorums are a
//! majority of C's members and a majority of C''s ([`config_quorum`]). The round applies "if
//! the register is at C's version, write C'" ([`config_proposal`]): a coordinator running an
//! old configuration reads a newer one from any majority of its members (the one that made the
//! change included a majority of them) and stops. A register holding a half-made change (an
//! interrupted admin command) is finished before anything else.
//!
//! The bootstrap configuration (version 1, from the cluster file) is never written to the
//! register: every member starts from it, and an empty register means version 1.

use crate::Quorum;
use counter_proto::{Ballot, Change, Config, NodeId, ShardSet, BOOTSTRAP_CONFIG_VERSION};
use std::collections::BTreeMap;

/// Why an admin command cannot be planned: a bad request (the configuration is unchanged).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("node {0} is not a member (members: {1})")]
    UnknownNode(NodeId, String),
    #[error("node {0} is already a member (at {1})")]
    AlreadyMember(NodeId, String),
    #[error("node id {0} was removed from this cluster; ids are never reused: pick a new one")]
    Removed(NodeId),
    #[error("address {0} is already used by node {1}")]
    AddrInUse(String, NodeId),
    #[error(
        "removing node {0} would leave {1} members, fewer than the replication factor {2}; \
         add a node first (cluster add-node), or replace it (cluster replace-node)"
    )]
    BelowReplication(NodeId, usize, u32),
    #[error("another change is under way ({0}); run it again to finish it first")]
    Busy(Change),
    #[error("invalid address {0:?}: expected HOST:PORT")]
    BadAddr(String),
    #[error(
        "the configuration of this change ({0} shards) would not fit in one message (frames are \
         at most {max} bytes): online membership changes need fewer shards",
        max = counter_proto::MAX_FRAME_LEN
    )]
    TooLarge(u32),
}

/// Whether `config` fits in every message that carries it (the largest: a promise of the
/// configuration register with it as the accepted value).
pub fn fits_in_a_frame(config: &Config) -> bool {
    let ballot = Ballot {
        round: u64::MAX,
        node: NodeId::MAX,
        epoch: u32::MAX,
    };
    let frame = counter_proto::Frame {
        id: u64::MAX,
        msg: counter_proto::Msg::ConfigPromise {
            ballot,
            accepted: Some((ballot, Box::new(config.clone()))),
        },
    };
    counter_proto::encode_frame(&frame, &mut Vec::new()).is_ok()
}

/// The first configuration of a cluster created from a cluster file.
pub fn bootstrap(
    cluster_id: u64,
    replication: u32,
    members: BTreeMap<NodeId, String>,
    sets: Vec<Vec<NodeId>>,
    limits: crate::Limits,
) -> Config {
    Config {
        version: BOOTSTRAP_CONFIG_VERSION,
        cluster_id,
        replication,
        members,
        shards: sets.into_iter().map(ShardSet::stable).collect(),
        pending: None,
        removed: Vec::new(),
        dedup: counter_proto::Dedup {
            max_clients: limits.max_clients as u32,
            idle_ms: limits.idle_ms,
            skew_ms: limits.skew_ms,
        },
    }
}

/// The limits a configuration carries (a node that joined without a cluster file uses them);
/// the defaults if they are not valid.
pub fn limits(config: &Config) -> crate::Limits {
    let limits = crate::Limits {
        max_clients: config.dedup.max_clients as usize,
        idle_ms: config.dedup.idle_ms,
        skew_ms: config.dedup.skew_ms,
    };
    match limits.validate() {
        Ok(()) => limits,
        Err(_) => crate::Limits::default(),
    }
}

/// Shards per member, counting the set each shard ends in.
fn load(cfg: &Config) -> BTreeMap<NodeId, usize> {
    let mut load: BTreeMap<NodeId, usize> = cfg.members.keys().map(|&n| (n, 0)).collect();
    for set in &cfg.shards {
        for n in set.target() {
            *load.entry(*n).or_default() += 1;
        }
    }
    load
}

/// Whether `change` is already fully applied to `cfg` (running it again is a no-op).
pub fn is_done(cfg: &Config, change: &Change) -> bool {
    if cfg.pending.is_some() {
        return false;
    }
    match change {
        Change::AddNode { id, addr } => cfg.addr(*id) == Some(addr.as_str()),
        Change::RemoveNode { id } => !cfg.is_member(*id) && cfg.removed.contains(id),
        Change::ReplaceNode { old, new, addr } => {
            !cfg.is_member(*old) && cfg.removed.contains(old) && cfg.addr(*new) == Some(addr)
        }
    }
}

/// Step 1: the joint configuration (version + 1) that starts `change` on `cur`.
pub fn plan(cur: &Config, change: &Change) -> Result<Config, PlanError> {
    if let Some(pending) = &cur.pending {
        return Err(PlanError::Busy(pending.clone()));
    }
    let members_list = || {
        let ids: Vec<String> = cur.members.keys().map(|n| n.to_string()).collect();
        ids.join(", ")
    };
    let check_new = |id: NodeId, addr: &str| -> Result<(), PlanError> {
        if let Some(at) = cur.addr(id) {
            return Err(PlanError::AlreadyMember(id, at.to_string()));
        }
        if cur.removed.contains(&id) {
            return Err(PlanError::Removed(id));
        }
        if !valid_addr(addr) {
            return Err(PlanError::BadAddr(addr.to_string()));
        }
        if let Some((&other, _)) = cur.members.iter().find(|(_, a)| a.as_str() == addr) {
            return Err(PlanError::AddrInUse(addr.to_string(), other));
        }
        Ok(())
    };
    // The largest configuration this change can make (every shard moving, one more member)
    // must fit in a frame; checked first, so that a huge shard count costs nothing more.
    let mut worst = cur.clone();
    for set in &mut worst.shards {
        set.new = set.old.clone();
    }
    worst.members.insert(NodeId::MAX, "x".repeat(64));
    worst.pending = Some(change.clone());
    if !fits_in_a_frame(&worst) {
        return Err(PlanError::TooLarge(cur.shard_count()));
    }
    let mut next = cur.clone();
    next.version = cur.version + 1;
    next.pending = Some(change.clone());
    let mut targets: Vec<Vec<NodeId>> = cur.shards.iter().map(|s| s.old.clone()).collect();
    match change {
        Change::AddNode { id, addr } => {
            check_new(*id, addr)?;
            next.members.insert(*id, addr.clone());
            let mut load = load(cur);
            load.insert(*id, 0);
            let replicas: usize = targets.iter().map(Vec::len).sum();
            let fair = replicas / load.len();
            // Shards in order: each gives the new node the replica of its most loaded member,
            // while that member holds more than the new node would after taking it. One pass
            // per round, a few rounds at most: linear in the number of shards.
            for _round in 0..4 {
                let before = load[id];
                for set in targets.iter_mut() {
                    if load[id] >= fair {
                        break;
                    }
                    if set.contains(id) {
                        continue;
                    }
                    let (at, giver) = set
                        .iter()
                        .enumerate()
                        .map(|(i, &n)| (i, n))
                        .max_by_key(|&(_, n)| (load[&n], n))
                        .expect("a replica set is not empty");
                    if load[&giver] <= load[id] + 1 {
                        continue;
                    }
                    set[at] = *id;
                    *load.get_mut(&giver).expect("member") -= 1;
                    *load.get_mut(id).expect("added") += 1;
                }
                if load[id] == before || load[id] >= fair {
                    break;
                }
            }
        }
        Change::RemoveNode { id } => {
            if !cur.is_member(*id) {
                return Err(PlanError::UnknownNode(*id, members_list()));
            }
            let left = cur.members.len() - 1;
            if left < cur.replication as usize {
                return Err(PlanError::BelowReplication(*id, left, cur.replication));
            }
            let mut load = load(cur);
            load.remove(id);
            for set in targets.iter_mut().filter(|set| set.contains(id)) {
                let (&taker, _) = load
                    .iter()
                    .filter(|(n, _)| !set.contains(n))
                    .min_by_key(|&(&n, &l)| (l, n))
                    .expect("more members than replicas");
                let at = set.iter().position(|n| n == id).expect("holds it");
                set[at] = taker;
                *load.get_mut(&taker).expect("member") += 1;
            }
        }
        Change::ReplaceNode { old, new, addr } => {
            if !cur.is_member(*old) {
                return Err(PlanError::UnknownNode(*old, members_list()));
            }
            check_new(*new, addr)?;
            next.members.insert(*new, addr.clone());
            for set in targets.iter_mut() {
                for n in set.iter_mut().filter(|n| **n == *old) {
                    *n = *new;
                }
            }
        }
    }
    for (set, target) in next.shards.iter_mut().zip(targets) {
        if set.old != target {
            set.new = target;
        }
    }
    Ok(next)
}

/// Step 3: the configuration (version + 1) that ends the change `joint` started, once every
/// moving shard was rescanned: each shard's set is its new one, members that left are gone.
pub fn finish(joint: &Config) -> Config {
    let mut next = joint.clone();
    next.version = joint.version + 1;
    for set in &mut next.shards {
        if set.is_moving() {
            set.old = std::mem::take(&mut set.new);
        }
    }
    let gone = match &joint.pending {
        Some(Change::RemoveNode { id }) => Some(*id),
        Some(Change::ReplaceNode { old, .. }) => Some(*old),
        _ => None,
    };
    if let Some(id) = gone {
        next.members.remove(&id);
        if !next.removed.contains(&id) {
            next.removed.push(id);
        }
    }
    next.pending = None;
    next
}

/// Who must answer a round on the configuration register that changes `cur` into `next`.
pub fn config_quorum(cur: &Config, next: &Config) -> Quorum {
    let old: Vec<NodeId> = cur.members.keys().copied().collect();
    let new: Vec<NodeId> = next.members.keys().copied().collect();
    Quorum::joint(&old, &new)
}

/// What a round on the configuration register does, once a quorum promised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigStep {
    /// Accept this configuration (the one wanted, or the same again when resuming it).
    Write(Config),
    /// The register holds a half-made change other than the one wanted: finish that one first
    /// (write it back under a quorum of its own members too), then report the conflict.
    Finish(Config),
    /// The register is past the coordinator's configuration: install this newer one (it was
    /// chosen: another change was built on it, or it is the value under the highest ballot a
    /// quorum of the old members reports) and start again from it.
    Stale(Config),
}

/// Decides a configuration round: `cur` is the configuration the coordinator runs, `wanted` the
/// next one (version `cur.version + 1`), `highest` the configuration accepted under the highest
/// ballot among the promises (`None`: the register is empty, i.e. at the bootstrap version).
pub fn config_proposal(cur: &Config, wanted: &Config, highest: Option<&Config>) -> ConfigStep {
    debug_assert_eq!(wanted.version, cur.version + 1);
    let Some(highest) = highest else {
        return if cur.version == BOOTSTRAP_CONFIG_VERSION {
            ConfigStep::Write(wanted.clone())
        } else {
            // The coordinator runs a version the register never held: impossible when every
            // configuration past the first is written there; refuse rather than guess.
            ConfigStep::Stale(cur.clone())
        };
    };
    if highest.version == cur.version || (highest == wanted) {
        ConfigStep::Write(wanted.clone())
    } else if highest.version == cur.version + 1 {
        ConfigStep::Finish(highest.clone())
    } else {
        ConfigStep::Stale(highest.clone())
    }
}

/// What an acceptor holding configuration `installed` does with a message sent under `sent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// Same version: go on.
    Admit,
    /// The message's configuration is older: refuse it, with ours.
    Stale,
    /// Ours is older: refuse it and ask for the sender's.
    Behind,
}

/// The rule every acceptor applies to every Prepare, Accept, Read and ListKeys: a round never
/// mixes configurations, and once a node has installed a version, no message of an older one
/// counts.
pub fn fence(installed: u64, sent: u64) -> Fence {
    match sent.cmp(&installed) {
        std::cmp::Ordering::Equal => Fence::Admit,
        std::cmp::Ordering::Less => Fence::Stale,
        std::cmp::Ordering::Greater => Fence::Behind,
    }
}

/// An acceptor of the configuration register.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigAcceptor {
    pub promised: Ballot,
    pub accepted: Option<(Ballot, Config)>,
}

impl ConfigAcceptor {
    /// Phase 1: promise `ballot` (persist before answering) or refuse with what was promised.
    pub fn prepare(&mut self, ballot: Ballot) -> Result<Option<(Ballot, Config)>, Ballot> {
        if ballot <= self.promised {
            return Err(self.promised);
        }
        self.promised = ballot;
        Ok(self.accepted.clone())
    }

    /// Phase 2: accept `config` under `ballot` (persist before answering) or refuse.
    pub fn accept(&mut self, ballot: Ballot, config: Config) -> Result<(), Ballot> {
        if ballot < self.promised {
            return Err(self.promised);
        }
        self.promised = ballot;
        self.accepted = Some((ballot, config));
        Ok(())
    }
}

/// A `HOST:PORT` with a port number.
fn valid_addr(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(nodes: u32, shards: usize) -> Config {
        let members = (1..=nodes).map(|n| (n, format!("h:{n}"))).collect();
        let sets = (0..shards)
            .map(|s| {
                (0..3)
                    .map(|i| ((s as u32 + i) % nodes) + 1)
                    .collect::<Vec<_>>()
            })
            .collect();
        bootstrap(7, 3, members, sets, crate::Limits::default())
    }

    fn add(id: NodeId) -> Change {
        Change::AddNode {
            id,
            addr: format!("h:{id}"),
        }
    }

    #[test]
    fn adding_a_node_moves_a_fair_share_and_no_more() {
        let cur = cfg(3, 16);
        let joint = plan(&cur, &add(4)).unwrap();
        assert_eq!(joint.version, 2);
        assert!(joint.is_member(4));
        let moving: Vec<_> = joint.moving().collect();
        // 48 replicas over 4 nodes: node 4 takes 12, one per moving shard.
        assert_eq!(moving.len(), 12);
        for (_, set) in &moving {
            assert_eq!(set.new.len(), 3);
            assert!(set.new.contains(&4) && !set.old.contains(&4));
            let kept = set.new.iter().filter(|n| set.old.contains(n)).count();
            assert_eq!(kept, 2, "exactly one member of the set changes");
        }
        let done = finish(&joint);
        assert_eq!(done.version, 3);
        assert_eq!(done.moving().count(), 0);
        let load = load(&done);
        assert!(load.values().all(|&l| l == 12), "{load:?}");
        assert!(is_done(&done, &add(4)));
        assert!(!is_done(&joint, &add(4)));
    }

    #[test]
    fn removing_a_node_moves_only_its_shards() {
        let cur = cfg(4, 16);
        let joint = plan(&cur, &Change::RemoveNode { id: 2 }).unwrap();
        for (s, set) in joint.shards.iter().enumerate() {
            assert_eq!(set.is_moving(), cur.shards[s].old.contains(&2), "shard {s}");
            assert!(!set.target().contains(&2));
        }
        // Still a member (an old replica) until the switch.
        assert!(joint.is_member(2));
        let done = finish(&joint);
        assert!(!done.is_member(2) && done.removed == vec![2]);
        assert!(is_done(&done, &Change::RemoveNode { id: 2 }));
        assert_eq!(
            plan(&done, &add(2)),
            Err(PlanError::Removed(2)),
            "a removed id never comes back"
        );
    }

    #[test]
    fn replacing_a_node_substitutes_it_everywhere() {
        let cur = cfg(3, 4);
        let change = Change::ReplaceNode {
            old: 1,
            new: 9,
            addr: "h:9".into(),
        };
        let joint = plan(&cur, &change).unwrap();
        assert_eq!(joint.moving().count(), 4);
        let done = finish(&joint);
        assert!(done
            .shards
            .iter()
            .all(|s| s.old.contains(&9) && !s.old.contains(&1)));
        assert!(!done.is_member(1) && done.is_member(9));
        assert!(is_done(&done, &change));
    }

    #[test]
    fn bad_requests_are_refused() {
        let cur = cfg(3, 4);
        assert!(matches!(
            plan(&cur, &Change::RemoveNode { id: 9 }),
            Err(PlanError::UnknownNode(9, _))
        ));
        assert!(matches!(
            plan(&cur, &Change::RemoveNode { id: 1 }),
            Err(PlanError::BelowReplication(1, 2, 3))
        ));
        assert!(matches!(
            plan(&cur, &add(2)),
            Err(PlanError::AlreadyMember(2, _))
        ));
        let clash = Change::AddNode {
            id: 5,
            addr: "h:2".into(),
        };
        assert_eq!(
            plan(&cur, &clash),
            Err(PlanError::AddrInUse("h:2".into(), 2))
        );
        let bad = Change::AddNode {
            id: 5,
            addr: "nowhere".into(),
        };
        assert!(matches!(plan(&cur, &bad), Err(PlanError::BadAddr(_))));
        let joint = plan(&cur, &add(4)).unwrap();
        assert!(matches!(plan(&joint, &add(5)), Err(PlanError::Busy(_))));
    }

    #[test]
    fn a_configuration_too_large_for_a_frame_is_refused() {
        assert!(plan(&cfg(3, 1024), &add(4)).is_ok());
        assert_eq!(
            plan(&cfg(3, 20_000), &add(4)),
            Err(PlanError::TooLarge(20_000))
        );
    }

    #[test]
    fn the_configuration_register_needs_both_member_majorities() {
        let cur = cfg(3, 4);
        let next = plan(&cur, &add(4)).unwrap();
        let q = config_quorum(&cur, &next);
        // {1,2} is a majority of {1,2,3} but not of {1,2,3,4}.
        assert!(!q.is_met(&[1, 2]));
        assert!(q.is_met(&[1, 2, 4]));
    }

    #[test]
    fn a_configuration_round_finishes_what_it_finds() {
        let cur = cfg(3, 4);
        let mine = plan(&cur, &add(4)).unwrap();
        let theirs = plan(&cur, &Change::RemoveNode { id: 3 }).unwrap_err();
        assert!(matches!(theirs, PlanError::BelowReplication(..)));
        let theirs = plan(&cur, &add(5)).unwrap();
        assert_eq!(
            config_proposal(&cur, &mine, None),
            ConfigStep::Write(mine.clone())
        );
        assert_eq!(
            config_proposal(&cur, &mine, Some(&cur)),
            ConfigStep::Write(mine.clone())
        );
        // Resuming my own interrupted change.
        assert_eq!(
            config_proposal(&cur, &mine, Some(&mine)),
            ConfigStep::Write(mine.clone())
        );
        // Another command's half-made change: finish it, do not overwrite it.
        assert_eq!(
            config_proposal(&cur, &mine, Some(&theirs)),
            ConfigStep::Finish(theirs.clone())
        );
        // The register moved past us: start again from there.
        let later = finish(&theirs);
        assert_eq!(
            config_proposal(&cur, &mine, Some(&later)),
            ConfigStep::Stale(later)
        );
    }

    #[test]
    fn the_fence_admits_only_the_same_version() {
        assert_eq!(fence(3, 3), Fence::Admit);
        assert_eq!(fence(3, 2), Fence::Stale);
        assert_eq!(fence(3, 4), Fence::Behind);
    }

    #[test]
    fn the_config_acceptor_keeps_its_promises() {
        let b = |round| Ballot {
            round,
            node: 1,
            epoch: 0,
        };
        let mut a = ConfigAcceptor::default();
        assert_eq!(a.prepare(b(2)), Ok(None));
        assert_eq!(a.prepare(b(2)), Err(b(2)));
        assert_eq!(a.accept(b(1), cfg(3, 1)), Err(b(2)));
        assert_eq!(a.accept(b(2), cfg(3, 1)), Ok(()));
        assert_eq!(a.prepare(b(3)), Ok(Some((b(2), cfg(3, 1)))));
    }
}
