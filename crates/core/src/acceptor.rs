//! The acceptor's rules. Each handler returns the state to persist (if any) and the reply; the
//! caller must make that state durable before the reply leaves the node.

use counter_proto::{Ballot, Register};
use serde::{Deserialize, Serialize};

/// Acceptor state of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AcceptorState {
    /// Highest ballot promised (or accepted). Prepares and accepts below it are refused.
    pub promised: Ballot,
    /// The last register accepted and the ballot it was accepted under.
    pub accepted: Option<(Ballot, Register)>,
}

/// An acceptor's answer to a coordinator.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AcceptorReply {
    Promise {
        ballot: Ballot,
        accepted: Option<(Ballot, Register)>,
    },
    /// `next`: the ballot promised along with the acceptance, if one was asked for.
    Accepted {
        ballot: Ballot,
        next: Option<Ballot>,
    },
    /// `ballot` was refused because `promised` (>= `ballot`) was promised first.
    Reject { ballot: Ballot, promised: Ballot },
}

impl AcceptorState {
    /// Highest ballot this acceptor knows of (promised or accepted).
    pub fn highest(&self) -> Ballot {
        match &self.accepted {
            Some((b, _)) => self.promised.max(*b),
            None => self.promised,
        }
    }

    /// Highest ballot this acceptor knows of for the key, its shard's floor included (the
    /// promise every key of the shard was given at once: [`crate::floor`]).
    pub fn highest_over(&self, floor: Ballot) -> Ballot {
        self.highest().max(floor)
    }

    /// Phase 1: promise `ballot` if it is above every ballot promised so far.
    ///
    /// Returns `Some(new state)` when the state changed: persist it, then send the reply.
    pub fn prepare(&self, ballot: Ballot) -> (Option<AcceptorState>, AcceptorReply) {
        self.prepare_over(ballot, Ballot::ZERO)
    }

    /// [`AcceptorState::prepare`] on a key whose shard promised `floor` to every key: the
    /// floor is a promise like the key's own.
    pub fn prepare_over(
        &self,
        ballot: Ballot,
        floor: Ballot,
    ) -> (Option<AcceptorState>, AcceptorReply) {
        if ballot > self.highest_over(floor) {
            let next = AcceptorState {
                promised: ballot,
                accepted: self.accepted.clone(),
            };
            let reply = AcceptorReply::Promise {
                ballot,
                accepted: self.accepted.clone(),
            };
            (Some(next), reply)
        } else {
            (None, self.reject(ballot, floor))
        }
    }

    /// Phase 2: accept `register` under `ballot` unless a higher ballot was promised or accepted.
    /// If `next` is above `ballot`, promise it in the same step (the coordinator's next round,
    /// phase 1 piggybacked): as if Prepare(next) arrived right after, which could only have
    /// reported `(ballot, register)`.
    ///
    /// Returns `Some(new state)` on acceptance: persist it, then send the reply. A repeated
    /// accept of the same ballot is accepted again (and persisted again, so that its reply
    /// never overtakes the sync of the first) unless `next` was promised since.
    pub fn accept(
        &self,
        ballot: Ballot,
        register: Register,
        next: Option<Ballot>,
    ) -> (Option<AcceptorState>, AcceptorReply) {
        self.accept_over(ballot, register, next, Ballot::ZERO)
    }

    /// [`AcceptorState::accept`] on a key whose shard promised `floor` to every key.
    pub fn accept_over(
        &self,
        ballot: Ballot,
        register: Register,
        next: Option<Ballot>,
        floor: Ballot,
    ) -> (Option<AcceptorState>, AcceptorReply) {
        if ballot >= self.highest_over(floor) {
            let next = next.filter(|&n| n > ballot);
            let state = AcceptorState {
                promised: next.unwrap_or(ballot),
                accepted: Some((ballot, register)),
            };
            (Some(state), AcceptorReply::Accepted { ballot, next })
        } else {
            (None, self.reject(ballot, floor))
        }
    }

    /// Phase 1 of a round at the shard's floor (`ballot`), with nothing to write: the floor
    /// was promised to every key of the shard, durably, before. This is the promise the key
    /// would give to Prepare(`ballot`) now, without the write: what it reports is all that
    /// it accepted below `ballot` (nothing below the floor can be accepted since the floor
    /// was promised), and it promises nothing that the floor did not already promise.
    ///
    /// Granted only while the shard's floor is exactly `ballot` (a higher floor has promised
    /// more; a lower one promised nothing of `ballot`) and the key has seen no ballot of its
    /// own at or above it (that is a round of its own: a Prepare of it would be refused).
    /// The acceptor must reply from durable state only: a change of the key still waiting
    /// for its sync must be synced first.
    pub fn read_at_floor(&self, ballot: Ballot, floor: Ballot) -> AcceptorReply {
        if floor == ballot && self.highest() < ballot {
            AcceptorReply::Promise {
                ballot,
                accepted: self.accepted.clone(),
            }
        } else {
            self.reject(ballot, floor)
        }
    }

    fn reject(&self, ballot: Ballot, floor: Ballot) -> AcceptorReply {
        AcceptorReply::Reject {
            ballot,
            promised: self.highest_over(floor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ballot::b;
    fn reg(value: i64) -> Register {
        Register::new(value, value as u64)
    }

    #[test]
    fn prepare_promises_only_above_the_promise() {
        let s = AcceptorState::default();
        let (next, reply) = s.prepare(b(1, 1));
        let next = next.expect("fresh acceptor promises");
        assert_eq!(next.promised, b(1, 1));
        assert_eq!(
            reply,
            AcceptorReply::Promise {
                ballot: b(1, 1),
                accepted: None
            }
        );
        // The same ballot again, and a lower one, are refused with the promise to fast-forward past.
        for lower in [b(1, 1), b(1, 0), b(0, 9)] {
            let (changed, reply) = next.prepare(lower);
            assert_eq!(changed, None);
            assert_eq!(
                reply,
                AcceptorReply::Reject {
                    ballot: lower,
                    promised: b(1, 1)
                }
            );
        }
        assert!(next.prepare(b(1, 2)).0.is_some());
    }

    #[test]
    fn promise_carries_what_was_accepted() {
        let s = AcceptorState {
            promised: b(3, 1),
            accepted: Some((b(3, 1), reg(5))),
        };
        let (next, reply) = s.prepare(b(4, 2));
        assert_eq!(
            reply,
            AcceptorReply::Promise {
                ballot: b(4, 2),
                accepted: Some((b(3, 1), reg(5)))
            }
        );
        assert_eq!(next.unwrap().accepted, Some((b(3, 1), reg(5))));
    }

    #[test]
    fn accept_is_refused_below_the_promise() {
        let s = AcceptorState {
            promised: b(5, 1),
            accepted: None,
        };
        let (changed, reply) = s.accept(b(4, 9), reg(1), None);
        assert_eq!(changed, None);
        assert_eq!(
            reply,
            AcceptorReply::Reject {
                ballot: b(4, 9),
                promised: b(5, 1)
            }
        );
    }

    #[test]
    fn accept_is_refused_below_the_accepted_ballot() {
        // Even if `promised` were somehow lower, the accepted ballot bounds acceptance.
        let s = AcceptorState {
            promised: b(1, 1),
            accepted: Some((b(6, 1), reg(2))),
        };
        let (changed, reply) = s.accept(b(5, 1), reg(3), None);
        assert_eq!(changed, None);
        assert!(matches!(reply, AcceptorReply::Reject { promised, .. } if promised == b(6, 1)));
        assert!(s.prepare(b(6, 0)).0.is_none());
    }

    #[test]
    fn the_promise_bounds_everything_when_above_the_accepted_ballot() {
        // The usual shape: accepted under b3, then b5 promised.
        let s = AcceptorState {
            promised: b(5, 1),
            accepted: Some((b(3, 1), reg(2))),
        };
        assert_eq!(s.highest(), b(5, 1));
        assert!(s.prepare(b(4, 2)).0.is_none());
        assert!(s.accept(b(4, 2), reg(9), None).0.is_none());
    }

    #[test]
    fn accept_at_or_above_the_promise_is_taken_and_raises_the_promise() {
        let s = AcceptorState {
            promised: b(5, 1),
            accepted: None,
        };
        let (next, reply) = s.accept(b(5, 1), reg(7), None);
        assert_eq!(
            reply,
            AcceptorReply::Accepted {
                ballot: b(5, 1),
                next: None
            }
        );
        assert_eq!(
            next,
            Some(AcceptorState {
                promised: b(5, 1),
                accepted: Some((b(5, 1), reg(7)))
            })
        );
        let (next, _) = s.accept(b(8, 2), reg(9), None);
        let next = next.unwrap();
        assert_eq!(next.promised, b(8, 2));
        // After accepting b8 a prepare of b6 must be refused.
        assert!(next.prepare(b(6, 3)).0.is_none());
    }

    #[test]
    fn an_accept_can_promise_the_next_ballot_in_the_same_step() {
        let s = AcceptorState {
            promised: b(5, 1),
            accepted: None,
        };
        let (next, reply) = s.accept(b(5, 1), reg(7), Some(b(6, 1)));
        assert_eq!(
            reply,
            AcceptorReply::Accepted {
                ballot: b(5, 1),
                next: Some(b(6, 1))
            }
        );
        let next = next.unwrap();
        assert_eq!(next.promised, b(6, 1));
        assert_eq!(next.accepted, Some((b(5, 1), reg(7))));
        // Another coordinator's ballot between the two is refused now...
        assert!(next.prepare(b(5, 9)).0.is_none());
        // ...and the promised one goes straight to phase 2.
        assert!(next.accept(b(6, 1), reg(8), Some(b(7, 1))).0.is_some());
        // A `next` that is not above the ballot promises nothing more.
        let (same, reply) = s.accept(b(5, 1), reg(7), Some(b(4, 1)));
        assert_eq!(same.unwrap().promised, b(5, 1));
        assert!(matches!(reply, AcceptorReply::Accepted { next: None, .. }));
    }
}
