//! Keys → shards → replica sets.

use crate::cluster::Cluster;
use counter_proto::{NodeId, ShardId};
use hashring::HashRing;

/// Points each node has on the ring.
const VIRTUAL_NODES: u32 = 64;

/// The shard of `key`: a hash fixed by its specification (XXH3-64, seed 0), so it is the same
/// on every platform and in every version.
pub fn shard_of(key: &str, shards: u32) -> ShardId {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % u64::from(shards)) as ShardId
}

/// One point of a node on the ring. Hashed as a string so the position does not depend on the
/// platform's integer byte order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct VNode(String, NodeId);

impl VNode {
    fn new(node: NodeId, index: u32) -> VNode {
        VNode(format!("node-{node}#{index}"), node)
    }
}

/// Replica sets of every shard, computed once from the cluster description.
#[derive(Clone, Debug)]
pub struct Placement {
    shards: u32,
    replicas: Vec<Vec<NodeId>>,
}

impl Placement {
    pub fn new(cluster: &Cluster) -> Placement {
        let mut ring = HashRing::new();
        for &node in cluster.nodes.keys() {
            for i in 0..VIRTUAL_NODES {
                ring.add(VNode::new(node, i));
            }
        }
        let points = cluster.nodes.len() * VIRTUAL_NODES as usize;
        let replicas = (0..cluster.shards)
            .map(|shard| {
                // The whole ring, clockwise from the shard's point; keep the first R distinct nodes.
                let walk = ring
                    .get_with_replicas(&format!("shard-{shard}"), points)
                    .unwrap_or_default();
                let mut set: Vec<NodeId> = Vec::with_capacity(cluster.replication);
                for VNode(_, node) in walk {
                    if !set.contains(&node) {
                        set.push(node);
                        if set.len() == cluster.replication {
                            break;
                        }
                    }
                }
                set
            })
            .collect();
        Placement {
            shards: cluster.shards,
            replicas,
        }
    }

    /// The placement an agreed configuration states: per shard, its nodes (both sets while
    /// it moves, the old set first).
    pub fn from_config(config: &counter_proto::Config) -> Placement {
        Placement {
            shards: config.shard_count(),
            replicas: config.shards.iter().map(|s| s.nodes()).collect(),
        }
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    pub fn shard_of(&self, key: &str) -> ShardId {
        shard_of(key, self.shards)
    }

    /// The replicas of `shard`, coordinator preference first.
    pub fn replicas(&self, shard: ShardId) -> &[NodeId] {
        &self.replicas[shard as usize]
    }

    /// Shards `node` is a replica of.
    pub fn shards_of(&self, node: NodeId) -> impl Iterator<Item = ShardId> + '_ {
        (0..self.shards).filter(move |&s| self.replicas(s).contains(&node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(nodes: u32, r: usize) -> Cluster {
        let mut text = format!("replication = {r}\n");
        for id in 1..=nodes {
            text += &format!("[[node]]\nid = {id}\naddr = \"127.0.0.1:{}\"\n", 7100 + id);
        }
        Cluster::parse("t", &text).unwrap()
    }

    #[test]
    fn every_shard_has_r_distinct_replicas() {
        let p = Placement::new(&cluster(5, 3));
        for s in 0..p.shards() {
            let set = p.replicas(s);
            assert_eq!(set.len(), 3);
            let mut sorted = set.to_vec();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "shard {s}: {set:?}");
        }
    }

    #[test]
    fn placement_is_deterministic_and_spreads_coordinators() {
        let a = Placement::new(&cluster(5, 3));
        let b = Placement::new(&cluster(5, 3));
        let mut first = std::collections::BTreeMap::new();
        for s in 0..a.shards() {
            assert_eq!(a.replicas(s), b.replicas(s));
            *first.entry(a.replicas(s)[0]).or_insert(0) += 1;
        }
        assert!(first.len() >= 4, "coordinators badly spread: {first:?}");
    }

    #[test]
    fn the_shard_hash_is_pinned() {
        // If this changes, every existing cluster's keys move: never change it.
        assert_eq!(shard_of("page_views", 64), shard_of("page_views", 64));
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2d06800538d394c2);
        let spread: std::collections::BTreeSet<_> =
            (0..1000).map(|i| shard_of(&format!("k{i}"), 64)).collect();
        assert_eq!(spread.len(), 64);
    }
}
