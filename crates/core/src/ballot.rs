//! Choosing ballots. Never from a clock: from the highest ballot seen for the key.

use counter_proto::{Ballot, NodeId};

/// The next ballot a coordinator `(node, epoch)` should use on a key, given `seen`, the highest
/// ballot it knows of for that key (its own acceptor's promise, the last ballot it used, any
/// ballot a rejection carried). The result is strictly greater than `seen` and than every
/// ballot with `seen`'s round, so it fast-forwards past any competitor it has heard of.
pub fn next_ballot(node: NodeId, epoch: u32, seen: Ballot) -> Ballot {
    Ballot {
        round: seen.round.saturating_add(1),
        node,
        epoch,
    }
}

/// A ballot for unit tests: `round` of `node` (epoch 1).
#[cfg(test)]
pub(crate) fn b(round: u64, node: NodeId) -> Ballot {
    Ballot {
        round,
        node,
        epoch: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_ballot_is_above_everything_seen() {
        let seen = Ballot {
            round: 7,
            node: 9,
            epoch: 9,
        };
        let b = next_ballot(1, 0, seen);
        assert!(b > seen);
        assert_eq!(b.round, 8);
        assert_eq!((b.node, b.epoch), (1, 0));
        assert!(next_ballot(1, 0, Ballot::ZERO) > Ballot::ZERO);
    }
}
