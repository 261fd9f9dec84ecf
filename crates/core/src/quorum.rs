//! Who must answer for a round on a key to count: a majority of its replica set, or, while the
//! key's shard moves from set O to set N, a majority of O **and** a majority of N (a joint
//! quorum, the per-shard form of Raft's joint consensus; see `counter-cluster`'s `membership`
//! module for the whole change).
//!
//! Every counting rule of a round ([`crate::Round`], [`crate::QuietRead`]) asks this type; none
//! counts heads itself, so a joint quorum cannot be mistaken for a simple one anywhere.

use counter_proto::NodeId;

/// The replica sets a round must reach a majority of (one set, or two during a move).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Quorum {
    /// One set, or the old and the new set of a moving shard (distinct node ids each).
    sets: Vec<Vec<NodeId>>,
    /// Every node of every set, each once: where a round's messages go.
    members: Vec<NodeId>,
}

impl Quorum {
    /// A majority of `set`.
    pub fn majority(set: &[NodeId]) -> Quorum {
        Quorum {
            sets: vec![set.to_vec()],
            members: set.to_vec(),
        }
    }

    /// A majority of `old` and a majority of `new` (a simple majority when they are the same
    /// set, or when `new` is empty).
    pub fn joint(old: &[NodeId], new: &[NodeId]) -> Quorum {
        if new.is_empty() || same_set(old, new) {
            return Quorum::majority(old);
        }
        let mut members = old.to_vec();
        members.extend(new.iter().filter(|n| !old.contains(n)));
        Quorum {
            sets: vec![old.to_vec(), new.to_vec()],
            members,
        }
    }

    /// Every node a round sends to.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Whether this is a joint quorum (a move in progress).
    pub fn is_joint(&self) -> bool {
        self.sets.len() > 1
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.members.contains(&node)
    }

    /// Whether `granted` (distinct members) holds a majority of every set.
    pub fn is_met(&self, granted: &[NodeId]) -> bool {
        self.sets.iter().all(|set| {
            let yes = set.iter().filter(|n| granted.contains(n)).count();
            yes > set.len() / 2
        })
    }

    /// Whether no quorum is possible any more once `refused` (distinct members) said no: some
    /// set has too few members left.
    pub fn is_lost(&self, refused: &[NodeId]) -> bool {
        self.sets.iter().any(|set| {
            let left = set.iter().filter(|n| !refused.contains(n)).count();
            left <= set.len() / 2
        })
    }
}

impl std::fmt::Display for Quorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.sets.as_slice() {
            [one] => write!(f, "{one:?}"),
            sets => {
                let parts: Vec<String> = sets.iter().map(|s| format!("{s:?}")).collect();
                write!(f, "joint {}", parts.join(" + "))
            }
        }
    }
}

fn same_set(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|n| b.contains(n))
}

impl From<&[NodeId]> for Quorum {
    fn from(set: &[NodeId]) -> Quorum {
        Quorum::majority(set)
    }
}

impl<const N: usize> From<&[NodeId; N]> for Quorum {
    fn from(set: &[NodeId; N]) -> Quorum {
        Quorum::majority(set)
    }
}

impl From<&Vec<NodeId>> for Quorum {
    fn from(set: &Vec<NodeId>) -> Quorum {
        Quorum::majority(set)
    }
}

impl From<&Quorum> for Quorum {
    fn from(q: &Quorum) -> Quorum {
        q.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simple_quorum_is_a_majority() {
        let q = Quorum::majority(&[1, 2, 3]);
        assert!(!q.is_met(&[1]));
        assert!(q.is_met(&[1, 3]));
        assert!(!q.is_lost(&[2]));
        assert!(q.is_lost(&[2, 3]));
        assert!(!q.is_joint());
    }

    /// The trap of counting votes by head: during a move {1,2,3} -> {1,2,4}... or worse,
    /// {1,2,3} -> {4,5,6}, three votes of the old set are a majority of the union but not of
    /// the new set, which would then never have seen the value.
    #[test]
    fn a_joint_quorum_needs_a_majority_of_each_set() {
        let q = Quorum::joint(&[1, 2, 3], &[4, 5, 6]);
        assert_eq!(q.members(), &[1, 2, 3, 4, 5, 6]);
        assert!(q.is_joint());
        assert!(!q.is_met(&[1, 2, 3]), "old votes alone");
        assert!(!q.is_met(&[4, 5, 6]), "new votes alone");
        assert!(!q.is_met(&[1, 2, 3, 4]));
        assert!(q.is_met(&[1, 2, 4, 5]));
        assert!(q.is_lost(&[5, 6]));
        assert!(!q.is_lost(&[3, 6]));
    }

    #[test]
    fn replacing_one_member_of_three() {
        let q = Quorum::joint(&[1, 2, 3], &[1, 2, 4]);
        assert_eq!(q.members(), &[1, 2, 3, 4]);
        // The two survivors make both majorities: a lost node 3 and a slow node 4 block nothing.
        assert!(q.is_met(&[1, 2]));
        assert!(!q.is_met(&[1, 3]), "node 3 is not in the new set");
        assert!(!q.is_met(&[1, 4]), "node 4 is not in the old set");
        assert!(q.is_met(&[1, 3, 4]));
    }

    #[test]
    fn the_same_set_twice_is_a_simple_quorum() {
        assert_eq!(
            Quorum::joint(&[1, 2, 3], &[3, 2, 1]),
            Quorum::majority(&[1, 2, 3])
        );
        assert_eq!(Quorum::joint(&[1, 2, 3], &[]), Quorum::majority(&[1, 2, 3]));
        assert_eq!(
            Quorum::joint(&[1, 2, 3], &[4, 5]).to_string(),
            "joint [1, 2, 3] + [4, 5]"
        );
    }
}
