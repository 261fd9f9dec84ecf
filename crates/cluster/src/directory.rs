//! Where keys live, for a client that sends commands straight to a replica of their key
//! (`counter-client`'s direct mode, `counter-bench --direct`): the placement a router uses and
//! the members' addresses, from a router's (or node's) `Placement` answer.

use crate::shard_of;
use counter_proto::{Config, Msg, NodeId};

/// The placement and addresses of a cluster, as a client learns them: per shard, the
/// addresses of its replicas (computed once, so that placing a key allocates nothing).
#[derive(Clone, Debug)]
pub struct Directory {
    /// The configuration version it comes from.
    version: u64,
    shards: u32,
    replicas: Vec<Vec<String>>,
    nodes: Vec<String>,
}

/// The answer to `GetPlacement` for an agreed configuration.
pub fn placement_msg(config: &Config) -> Msg {
    Msg::Placement {
        config: config.version,
        nodes: config
            .members
            .iter()
            .map(|(&id, a)| (id, a.clone()))
            .collect(),
        shards: config.shards.iter().map(|s| s.nodes()).collect(),
    }
}

impl Directory {
    /// From the answer to `GetPlacement`; every shard must name at least one member.
    pub fn from_answer(answer: Msg) -> Result<Directory, String> {
        let Msg::Placement {
            config,
            nodes,
            shards,
        } = answer
        else {
            return Err(format!("no placement in the answer: {answer:?}"));
        };
        let addrs: std::collections::BTreeMap<NodeId, String> = nodes.into_iter().collect();
        if addrs.is_empty() || shards.is_empty() {
            return Err("a placement answer without members or shards".into());
        }
        let mut replicas = Vec::with_capacity(shards.len());
        for (s, set) in shards.iter().enumerate() {
            let at: Vec<String> = set.iter().filter_map(|n| addrs.get(n).cloned()).collect();
            if at.is_empty() {
                return Err(format!("shard {s} has no member in the placement answer"));
            }
            replicas.push(at);
        }
        Ok(Directory {
            version: config,
            shards: shards.len() as u32,
            replicas,
            nodes: addrs.into_values().collect(),
        })
    }

    /// The configuration version this placement comes from.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The addresses of `key`'s replicas, coordinator preference first.
    pub fn replicas(&self, key: &str) -> &[String] {
        &self.replicas[shard_of(key, self.shards) as usize]
    }

    /// Every member's address.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_go_to_the_replicas_a_router_would_pick() {
        let text = "replication = 3\n[[node]]\nid = 1\naddr = \"a:1\"\n[[node]]\nid = 2\n\
                    addr = \"b:2\"\n[[node]]\nid = 3\naddr = \"c:3\"\n[[node]]\nid = 4\naddr = \"d:4\"\n";
        let cluster = crate::Cluster::parse("t", text).unwrap();
        let config = cluster.bootstrap_config(1);
        let dir = Directory::from_answer(placement_msg(&config)).unwrap();
        let placement = crate::Placement::new(&cluster);
        for key in ["page_views", "k1", "stock:sku-9"] {
            let want: Vec<&str> = placement
                .replicas(placement.shard_of(key))
                .iter()
                .map(|&n| cluster.addr(n).unwrap())
                .collect();
            assert_eq!(dir.replicas(key), want, "{key}");
        }
        assert_eq!(dir.nodes().len(), 4);
        assert_eq!(dir.version(), 1);
        assert!(Directory::from_answer(Msg::Value(1)).is_err());
        let bad = Msg::Placement {
            config: 1,
            nodes: vec![(1, "a:1".into())],
            shards: vec![vec![2]],
        };
        assert!(Directory::from_answer(bad).is_err());
    }
}
