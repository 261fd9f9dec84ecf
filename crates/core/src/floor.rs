//! A shard's floor: one promise for every key of a shard, so that a key's first round under
//! it needs no write in phase 1 (the way a Multi-Paxos leader's one prepare covers every slot
//! of its log).
//!
//! A coordinator asks a shard's replicas to promise a ballot `F` for the whole shard
//! ([`promise_floor`]): each persists `F` as the shard's floor, and from then on treats it as
//! a promise of every key in the shard (a key's effective promise is the higher of its own
//! and the floor: [`AcceptorState::prepare_over`], [`AcceptorState::accept_over`]). Once a
//! majority promised, the coordinator's next round on a key it has no prepared round for can
//! run at ballot `F` with a read in place of the Prepare
//! ([`AcceptorState::read_at_floor`]): nothing is written, and the round goes to phase 2 as
//! any other.
//!
//! Why this is Paxos on each key: raising the floor to `F` is, for every key whose highest
//! ballot is below `F`, a Prepare(`F`) whose reply was lost (for the others it promises
//! nothing they had not promised). A read at `F` is then that promise's reply, sent late:
//! since the floor was promised, nothing below `F` can have been accepted, so what the read
//! reports is what the reply would have said. Phase 2 is unchanged.
//!
//! One rule is the coordinator's: **at most one round per key at a floor**. Each round of a
//! coordinator on a key normally gets a fresh ballot; rounds at a floor share it. A second
//! round on a key at the same floor (say, after the first timed out with its Accept still in
//! flight) could read a majority that has not yet seen the first's Accept, propose another
//! register under the same ballot, and then the late Accept could overwrite it on a replica:
//! two registers under one ballot, and a chosen value lost. [`FloorLease`] remembers the keys
//! that used its floor and refuses a second; every retry is an ordinary round with a fresh
//! ballot above the floor. When the lease is full the coordinator raises the floor again.
//!
//! [`AcceptorState::prepare_over`]: crate::AcceptorState::prepare_over
//! [`AcceptorState::accept_over`]: crate::AcceptorState::accept_over
//! [`AcceptorState::read_at_floor`]: crate::AcceptorState::read_at_floor

use crate::AcceptorReply;
use counter_proto::Ballot;
use std::collections::BTreeSet;

/// An acceptor's answer to a request to raise its shard's floor (now `current`) to `ballot`:
/// granted only above the current floor. Returns `Some(new floor)` when granted: persist it,
/// and only then let rounds read at it or send the reply.
///
/// The floor does not need to be above any key's own promise: a key that promised more keeps
/// its promise and refuses reads at the floor.
pub fn promise_floor(current: Ballot, ballot: Ballot) -> (Option<Ballot>, AcceptorReply) {
    if ballot > current {
        (
            Some(ballot),
            AcceptorReply::Promise {
                ballot,
                accepted: None,
            },
        )
    } else {
        (
            None,
            AcceptorReply::Reject {
                ballot,
                promised: current,
            },
        )
    }
}

/// A floor a majority of a shard's replicas promised to this coordinator, and the keys that
/// have had their round at it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FloorLease {
    ballot: Ballot,
    /// The configuration version the floor was promised under: a lease serves only rounds
    /// of that configuration (another has other replicas).
    version: u64,
    used: BTreeSet<String>,
    capacity: usize,
}

impl FloorLease {
    /// A floor `ballot` promised under configuration `version`, for the first rounds of at
    /// most `capacity` keys.
    pub fn new(ballot: Ballot, version: u64, capacity: usize) -> FloorLease {
        FloorLease {
            ballot,
            version,
            used: BTreeSet::new(),
            capacity,
        }
    }

    pub fn ballot(&self) -> Ballot {
        self.ballot
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Keys that had their round at the floor.
    pub fn used(&self) -> usize {
        self.used.len()
    }

    /// Whether no more keys can have a round at this floor: time to raise it.
    pub fn is_full(&self) -> bool {
        self.used.len() >= self.capacity
    }

    /// The floor's ballot for a round on `key` under configuration `version`, once per key:
    /// `None` if `key` had its round at this floor already, the lease is full, or of another
    /// configuration.
    pub fn take(&mut self, key: &str, version: u64) -> Option<Ballot> {
        if version != self.version || self.is_full() || self.used.contains(key) {
            return None;
        }
        self.used.insert(key.to_string());
        Some(self.ballot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AcceptorState;
    use counter_proto::Register;

    fn b(round: u64, node: u32) -> Ballot {
        Ballot {
            round,
            node,
            epoch: 1,
        }
    }

    #[test]
    fn a_floor_is_promised_only_above_the_current_one() {
        let (raised, reply) = promise_floor(Ballot::ZERO, b(3, 1));
        assert_eq!(raised, Some(b(3, 1)));
        assert!(matches!(
            reply,
            AcceptorReply::Promise { accepted: None, .. }
        ));
        for lower in [b(3, 1), b(2, 9), b(3, 0)] {
            assert_eq!(
                promise_floor(b(3, 1), lower),
                (
                    None,
                    AcceptorReply::Reject {
                        ballot: lower,
                        promised: b(3, 1)
                    }
                )
            );
        }
    }

    /// The floor is a promise of every key: nothing below it is promised or accepted, on a
    /// key the acceptor never saw as on one it did.
    #[test]
    fn the_floor_refuses_what_a_promise_refuses() {
        let floor = b(5, 1);
        let fresh = AcceptorState::default();
        let used = AcceptorState {
            promised: b(2, 2),
            accepted: Some((b(2, 2), Register::new(4, 1))),
        };
        for s in [&fresh, &used] {
            assert_eq!(s.highest_over(floor), floor);
            let (changed, reply) = s.prepare_over(b(4, 2), floor);
            assert_eq!(changed, None);
            assert_eq!(
                reply,
                AcceptorReply::Reject {
                    ballot: b(4, 2),
                    promised: floor
                }
            );
            assert_eq!(s.prepare_over(floor, floor).0, None);
            let (changed, _) = s.accept_over(b(4, 2), Register::new(9, 2), None, floor);
            assert_eq!(changed, None);
            // The floor's own round is accepted, and a ballot above it is promised.
            assert!(s
                .accept_over(floor, Register::new(9, 2), None, floor)
                .0
                .is_some());
            assert!(s.prepare_over(b(5, 2), floor).0.is_some());
        }
    }

    #[test]
    fn a_read_at_the_floor_is_the_promise_a_prepare_would_get() {
        let floor = b(5, 1);
        let used = AcceptorState {
            promised: b(3, 2),
            accepted: Some((b(2, 2), Register::new(4, 1))),
        };
        assert_eq!(
            used.read_at_floor(floor, floor),
            AcceptorReply::Promise {
                ballot: floor,
                accepted: Some((b(2, 2), Register::new(4, 1)))
            }
        );
        // The same reply a Prepare(floor) would have had, had the floor not been promised.
        assert_eq!(used.prepare(floor).1, used.read_at_floor(floor, floor));
        // Not while the floor is another ballot: a higher one promised more...
        assert_eq!(
            used.read_at_floor(floor, b(6, 2)),
            AcceptorReply::Reject {
                ballot: floor,
                promised: b(6, 2)
            }
        );
        // ...and a lower one did not promise `floor` (no quorum can count this reply).
        assert!(matches!(
            used.read_at_floor(floor, b(4, 1)),
            AcceptorReply::Reject { .. }
        ));
        // Not once the key saw the floor's ballot or a higher one of its own.
        for own in [floor, b(5, 2), b(9, 3)] {
            let s = AcceptorState {
                promised: own,
                accepted: None,
            };
            assert_eq!(
                s.read_at_floor(floor, floor),
                AcceptorReply::Reject {
                    ballot: floor,
                    promised: own
                }
            );
        }
        let accepted_at_floor = AcceptorState {
            promised: b(6, 1),
            accepted: Some((floor, Register::new(1, 1))),
        };
        assert!(matches!(
            accepted_at_floor.read_at_floor(floor, floor),
            AcceptorReply::Reject { .. }
        ));
    }

    #[test]
    fn a_lease_gives_each_key_one_round_at_its_floor() {
        let mut lease = FloorLease::new(b(5, 1), 7, 2);
        assert_eq!(lease.take("a", 7), Some(b(5, 1)));
        // The same key again: its retry (or its next batch) must use a fresh ballot.
        assert_eq!(lease.take("a", 7), None);
        // Not under another configuration.
        assert_eq!(lease.take("b", 8), None);
        assert_eq!(lease.take("b", 7), Some(b(5, 1)));
        assert!(lease.is_full());
        assert_eq!(lease.take("c", 7), None);
        assert_eq!(lease.used(), 2);
    }
}
