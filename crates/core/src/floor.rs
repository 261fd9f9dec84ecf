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

/// Bytes a lease counts per key it remembers, besides the key's own: the set's node and the
/// string's header.
pub const LEASE_KEY_OVERHEAD: usize = 48;

/// A floor a majority of a shard's replicas promised to this coordinator, and the keys that
/// have had their round at it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FloorLease {
    ballot: Ballot,
    /// The configuration version the floor was promised under: a lease serves only rounds
    /// of that configuration (another has other replicas).
    version: u64,
    used: BTreeSet<String>,
    /// Bytes of `used` (each key's length plus [`LEASE_KEY_OVERHEAD`]), at most `capacity`.
    bytes: usize,
    capacity: usize,
}

impl FloorLease {
    /// A floor `ballot` promised under configuration `version`, for the first rounds of keys
    /// whose names take at most `capacity` bytes (with [`LEASE_KEY_OVERHEAD`] each).
    pub fn new(ballot: Ballot, version: u64, capacity: usize) -> FloorLease {
        FloorLease {
            ballot,
            version,
            used: BTreeSet::new(),
            bytes: 0,
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

    /// Whether `key` had its round at this floor.
    pub fn has_used(&self, key: &str) -> bool {
        self.used.contains(key)
    }

    /// Whether no more keys can have a round at this floor: time to raise it.
    pub fn is_full(&self) -> bool {
        self.bytes >= self.capacity
    }

    /// The floor's ballot for a round on `key` under configuration `version`, once per key:
    /// `None` if `key` had its round at this floor already, there is no room left for it, or
    /// the lease is of another configuration.
    pub fn take(&mut self, key: &str, version: u64) -> Option<Ballot> {
        let weight = key.len() + LEASE_KEY_OVERHEAD;
        if version != self.version || self.bytes + weight > self.capacity || self.used.contains(key)
        {
            return None;
        }
        self.used.insert(key.to_string());
        self.bytes += weight;
        Some(self.ballot)
    }
}

/// How a coordinator keeps its floors: room per lease, the wait after a failed raise, and how
/// many refused rounds in a row give a lease up. Times are in the driver's unit (the node's
/// milliseconds, the simulator's ticks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FloorPolicy {
    pub lease_bytes: usize,
    pub retry_after: u64,
    pub max_misses: u32,
}

/// What a coordinator should do about a key's first round ([`FloorSlot::use_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloorUse {
    /// Run it at this floor (a read in phase 1).
    At(Ballot),
    /// Run an ordinary round, and raise the shard's floor above `above` (send PromiseFloor
    /// to the replicas, then report with [`FloorSlot::raised`]).
    Raise { above: Ballot },
    /// Run an ordinary round.
    Ordinary,
}

/// Where a coordinator stands with one shard's floor: the node and the simulator both drive
/// this state machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FloorSlot {
    /// A raise is in flight.
    Raising,
    /// A majority promised the lease's floor; `misses`: rounds at it refused in a row.
    Leased { lease: FloorLease, misses: u32 },
    /// No floor: the next raise not before `retry_at`, above `above`.
    Idle { retry_at: u64, above: Ballot },
}

impl Default for FloorSlot {
    fn default() -> FloorSlot {
        FloorSlot::Idle {
            retry_at: 0,
            above: Ballot::ZERO,
        }
    }
}

impl FloorSlot {
    /// A key without a prepared round, under configuration `version`: `own` is the highest
    /// ballot our acceptor has seen for the key, `local_floor` our acceptor's floor of the
    /// shard, `now` the driver's clock.
    pub fn use_for(
        &mut self,
        key: &str,
        version: u64,
        own: Ballot,
        local_floor: Ballot,
        now: u64,
        policy: &FloorPolicy,
    ) -> FloorUse {
        let above = match self {
            FloorSlot::Leased { lease, .. } if lease.version() == version && !lease.is_full() => {
                if local_floor > lease.ballot() {
                    // Another coordinator raised the shard's floor above ours: every read at
                    // ours would be refused. Raise again later, above theirs.
                    *self = FloorSlot::Idle {
                        retry_at: now.saturating_add(policy.retry_after),
                        above: local_floor,
                    };
                    return FloorUse::Ordinary;
                }
                // The key has its own ballots at or above the floor: a read would be refused.
                if own >= lease.ballot() {
                    return FloorUse::Ordinary;
                }
                return match lease.take(key, version) {
                    Some(floor) => FloorUse::At(floor),
                    None if lease.has_used(key) => FloorUse::Ordinary,
                    // No room left for this key: a new floor.
                    None => {
                        let above = lease.ballot().max(local_floor);
                        *self = FloorSlot::Raising;
                        FloorUse::Raise { above }
                    }
                };
            }
            FloorSlot::Leased { lease, .. } => lease.ballot(),
            FloorSlot::Raising => return FloorUse::Ordinary,
            FloorSlot::Idle { retry_at, .. } if now < *retry_at => return FloorUse::Ordinary,
            FloorSlot::Idle { above, .. } => *above,
        };
        *self = FloorSlot::Raising;
        FloorUse::Raise {
            above: above.max(local_floor),
        }
    }

    /// How a raise ended: `Ok((floor, version))`, a majority promised `floor` under
    /// configuration `version`; `Err(seen)`, it did not (`seen`: the highest ballot heard of).
    pub fn raised(
        &mut self,
        outcome: Result<(Ballot, u64), Ballot>,
        now: u64,
        policy: &FloorPolicy,
    ) {
        *self = match outcome {
            Ok((floor, version)) => FloorSlot::Leased {
                lease: FloorLease::new(floor, version, policy.lease_bytes),
                misses: 0,
            },
            Err(seen) => FloorSlot::Idle {
                retry_at: now.saturating_add(policy.retry_after),
                above: seen,
            },
        };
    }

    /// A round at `floor` was decided without a retry.
    pub fn held(&mut self, floor: Ballot) {
        if let FloorSlot::Leased { lease, misses } = self {
            if lease.ballot() == floor {
                *misses = 0;
            }
        }
    }

    /// A round at `floor` failed: after `max_misses` in a row the lease is given up (the
    /// shard's floor was most likely raised by another coordinator).
    pub fn missed(&mut self, floor: Ballot, now: u64, policy: &FloorPolicy) {
        if let FloorSlot::Leased { lease, misses } = self {
            if lease.ballot() == floor {
                *misses += 1;
                if *misses >= policy.max_misses {
                    *self = FloorSlot::Idle {
                        retry_at: now.saturating_add(policy.retry_after),
                        above: floor,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AcceptorState;
    use counter_proto::Register;

    use crate::ballot::b;

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
        let mut lease = FloorLease::new(b(5, 1), 7, 2 * (1 + LEASE_KEY_OVERHEAD));
        assert_eq!(lease.take("a", 7), Some(b(5, 1)));
        // The same key again: its retry (or its next batch) must use a fresh ballot.
        assert_eq!(lease.take("a", 7), None);
        // Not under another configuration.
        assert_eq!(lease.take("b", 8), None);
        assert_eq!(lease.take("b", 7), Some(b(5, 1)));
        assert!(lease.is_full());
        assert_eq!(lease.take("c", 7), None);
        assert_eq!(lease.used(), 2);
        // Room is counted in bytes: a long key takes more of it.
        let mut lease = FloorLease::new(b(5, 1), 7, 100);
        assert_eq!(lease.take(&"x".repeat(60), 7), None);
        assert_eq!(lease.take(&"x".repeat(40), 7), Some(b(5, 1)));
    }

    const POLICY: FloorPolicy = FloorPolicy {
        lease_bytes: 2 * (1 + LEASE_KEY_OVERHEAD),
        retry_after: 10,
        max_misses: 2,
    };

    #[test]
    fn a_slot_raises_leases_and_raises_again_when_full() {
        let mut slot = FloorSlot::default();
        let zero = Ballot::ZERO;
        let raise = slot.use_for("a", 7, zero, zero, 0, &POLICY);
        assert_eq!(raise, FloorUse::Raise { above: zero });
        // While it is in flight, first rounds are ordinary.
        assert_eq!(
            slot.use_for("a", 7, zero, zero, 0, &POLICY),
            FloorUse::Ordinary
        );
        slot.raised(Ok((b(5, 1), 7)), 0, &POLICY);
        assert_eq!(
            slot.use_for("a", 7, zero, b(5, 1), 0, &POLICY),
            FloorUse::At(b(5, 1))
        );
        // Once per key; not for a key that has seen the floor; not under another version.
        assert_eq!(
            slot.use_for("a", 7, zero, b(5, 1), 0, &POLICY),
            FloorUse::Ordinary
        );
        assert_eq!(
            slot.use_for("b", 7, b(5, 1), b(5, 1), 0, &POLICY),
            FloorUse::Ordinary
        );
        assert_eq!(
            slot.use_for("b", 8, zero, b(5, 1), 0, &POLICY),
            FloorUse::Raise { above: b(5, 1) }
        );
        slot.raised(Ok((b(6, 1), 7)), 0, &POLICY);
        assert_eq!(
            slot.use_for("b", 7, zero, b(6, 1), 0, &POLICY),
            FloorUse::At(b(6, 1))
        );
        assert_eq!(
            slot.use_for("c", 7, zero, b(6, 1), 0, &POLICY),
            FloorUse::At(b(6, 1))
        );
        // Full: the next first round raises it again, above it.
        assert_eq!(
            slot.use_for("d", 7, zero, b(6, 1), 0, &POLICY),
            FloorUse::Raise { above: b(6, 1) }
        );
    }

    #[test]
    fn a_slot_gives_up_a_floor_another_coordinator_raised_past() {
        let zero = Ballot::ZERO;
        let mut slot = FloorSlot::default();
        slot.use_for("a", 7, zero, zero, 0, &POLICY);
        slot.raised(Ok((b(5, 1), 7)), 0, &POLICY);
        // Our acceptor's floor is above our lease: idle until the retry time, then above it.
        assert_eq!(
            slot.use_for("a", 7, zero, b(8, 2), 3, &POLICY),
            FloorUse::Ordinary
        );
        assert_eq!(
            slot.use_for("a", 7, zero, b(8, 2), 12, &POLICY),
            FloorUse::Ordinary
        );
        assert_eq!(
            slot.use_for("a", 7, zero, b(8, 2), 13, &POLICY),
            FloorUse::Raise { above: b(8, 2) }
        );
        // A refused raise idles too; refused rounds in a row give a lease up.
        slot.raised(Err(b(9, 3)), 20, &POLICY);
        assert_eq!(
            slot.use_for("a", 7, zero, zero, 29, &POLICY),
            FloorUse::Ordinary
        );
        assert_eq!(
            slot.use_for("a", 7, zero, zero, 30, &POLICY),
            FloorUse::Raise { above: b(9, 3) }
        );
        slot.raised(Ok((b(10, 1), 7)), 30, &POLICY);
        slot.missed(b(10, 1), 31, &POLICY);
        slot.held(b(10, 1));
        slot.missed(b(10, 1), 32, &POLICY);
        assert!(
            matches!(slot, FloorSlot::Leased { .. }),
            "a hit resets the misses"
        );
        slot.missed(b(10, 1), 33, &POLICY);
        assert_eq!(
            slot,
            FloorSlot::Idle {
                retry_at: 43,
                above: b(10, 1)
            }
        );
    }
}
