//! Where keys live, for a client that sends commands straight to a replica of their key
//! (`counter-client`'s direct mode, `counter-bench --direct`): the placement a router uses and
//! the members' addresses, from a router's (or node's) `Placement` answer.

use crate::{shard_of, Cluster, Placement};
use counter_proto::{Msg, NodeId};

/// The placement and addresses of a cluster, as a client learns them: per shard, the
/// addresses of its replicas (computed once, so that placing a key allocates nothing).
#[derive(Clone, Debug)]
pub struct Directory {
    shards: u32,
    replicas: Vec<Vec<String>>,
    nodes: Vec<String>,
}

impl Directory {
    /// From the answer to `GetPlacement`, checked as a cluster file is.
    pub fn from_answer(answer: Msg) -> Result<Directory, String> {
        let Msg::Placement {
            shards,
            replication,
            nodes,
        } = answer
        else {
            return Err(format!("no placement in the answer: {answer:?}"));
        };
        let cluster =
            Cluster::from_placement(shards, replication, nodes).map_err(|e| e.to_string())?;
        let placement = Placement::new(&cluster);
        let addr = |n: &NodeId| cluster.addr(*n).map(str::to_string);
        Ok(Directory {
            shards,
            replicas: (0..shards)
                .map(|s| placement.replicas(s).iter().filter_map(addr).collect())
                .collect(),
            nodes: cluster.nodes.values().cloned().collect(),
        })
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
        let cluster = Cluster::parse("t", text).unwrap();
        let dir = Directory::from_answer(cluster.placement_msg()).unwrap();
        let placement = Placement::new(&cluster);
        for key in ["page_views", "k1", "stock:sku-9"] {
            let want: Vec<&str> = placement
                .replicas(placement.shard_of(key))
                .iter()
                .map(|&n| cluster.addr(n).unwrap())
                .collect();
            assert_eq!(dir.replicas(key), want, "{key}");
        }
        assert_eq!(dir.nodes().len(), 4);
        assert!(Directory::from_answer(Msg::Value(1)).is_err());
        let bad = Msg::Placement {
            shards: 8,
            replication: 3,
            nodes: vec![(1, "a:1".into())],
        };
        assert!(Directory::from_answer(bad).is_err());
    }
}
