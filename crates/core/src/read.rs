//! Reads in one round trip when the key is quiet.
//!
//! A coordinator asks every replica what it has durably accepted (nothing is written) and feeds
//! the answers to a [`QuietRead`]. If a majority report the same accepted ballot, that ballot's
//! register was accepted by a majority, so it is chosen; and any register chosen before the
//! read began was accepted by a majority, which shares a member with this one, whose accepted
//! ballot only grows: so nothing newer was chosen before the read began. The value is then a
//! linearizable answer. Otherwise (a write in flight, or one interrupted on a minority) the
//! coordinator must run a full round, which finishes any such write before answering.
//!
//! One register per ballot: a coordinator proposes one register per ballot it owns, so "same
//! ballot" means "same register".

use crate::Quorum;
use counter_proto::{Ballot, NodeId};

/// What to do after feeding a replica's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadStep {
    /// Wait for more answers.
    Pending,
    /// A majority agree: answer with this value.
    Value(i64),
    /// No majority can agree any more: run a full round.
    Disagree,
}

/// Counts the replicas' answers to one quiet read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QuietRead {
    quorum: Quorum,
    heard: Vec<NodeId>,
    /// Each accepted ballot reported (`None`: nothing accepted), its value, who reported it.
    tallies: Vec<(Option<Ballot>, i64, Vec<NodeId>)>,
}

impl QuietRead {
    /// A read of a key replicated on `quorum` (a set, or two during a move: then the same
    /// ballot must come from a majority of each).
    pub fn new(quorum: impl Into<Quorum>) -> QuietRead {
        let quorum = quorum.into();
        QuietRead {
            heard: Vec::with_capacity(quorum.members().len()),
            quorum,
            tallies: Vec::with_capacity(2),
        }
    }

    /// Counts `from`'s durably accepted (ballot, value); a replica counts once.
    pub fn on_reply(&mut self, from: NodeId, accepted: Option<(Ballot, i64)>) -> ReadStep {
        if !self.quorum.contains(from) || self.heard.contains(&from) {
            return self.step();
        }
        self.heard.push(from);
        let (ballot, value) = match accepted {
            Some((b, v)) => (Some(b), v),
            None => (None, 0),
        };
        match self.tallies.iter_mut().find(|(b, _, _)| *b == ballot) {
            Some(tally) => tally.2.push(from),
            None => self.tallies.push((ballot, value, vec![from])),
        }
        self.step()
    }

    fn step(&self) -> ReadStep {
        if let Some((_, value, _)) = self.tallies.iter().find(|t| self.quorum.is_met(&t.2)) {
            return ReadStep::Value(*value);
        }
        // Could one ballot still make a quorum, with every silent replica reporting it?
        let possible = self.tallies.iter().any(|(_, _, said)| {
            let against: Vec<NodeId> = self
                .heard
                .iter()
                .copied()
                .filter(|n| !said.contains(n))
                .collect();
            !self.quorum.is_lost(&against)
        });
        if possible || self.tallies.is_empty() {
            ReadStep::Pending
        } else {
            ReadStep::Disagree
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(round: u64) -> Ballot {
        crate::ballot::b(round, 1)
    }

    #[test]
    fn a_majority_on_one_ballot_answers() {
        let mut r = QuietRead::new(&[1, 2, 3]);
        assert_eq!(r.on_reply(1, Some((b(4), 7))), ReadStep::Pending);
        assert_eq!(r.on_reply(3, Some((b(4), 7))), ReadStep::Value(7));
    }

    #[test]
    fn a_key_never_written_reads_zero() {
        let mut r = QuietRead::new(&[1, 2, 3]);
        r.on_reply(2, None);
        assert_eq!(r.on_reply(1, None), ReadStep::Value(0));
    }

    #[test]
    fn a_write_in_flight_sends_the_read_to_a_full_round() {
        let mut r = QuietRead::new(&[1, 2, 3]);
        assert_eq!(r.on_reply(1, Some((b(5), 8))), ReadStep::Pending);
        assert_eq!(r.on_reply(2, Some((b(4), 7))), ReadStep::Pending);
        assert_eq!(r.on_reply(3, None), ReadStep::Disagree);
    }

    #[test]
    fn a_replica_counts_once_and_strangers_not_at_all() {
        let mut r = QuietRead::new(&[1, 2, 3]);
        r.on_reply(1, Some((b(4), 7)));
        assert_eq!(r.on_reply(1, Some((b(4), 7))), ReadStep::Pending);
        assert_eq!(r.on_reply(9, Some((b(4), 7))), ReadStep::Pending);
        // Same ballot and value from a majority, but only once each.
        assert_eq!(r.on_reply(2, Some((b(4), 7))), ReadStep::Value(7));
    }

    #[test]
    fn a_joint_read_needs_the_ballot_from_both_majorities() {
        let q = crate::Quorum::joint(&[1, 2, 3], &[3, 4, 5]);
        let mut r = QuietRead::new(&q);
        r.on_reply(1, Some((b(4), 7)));
        r.on_reply(2, Some((b(4), 7)));
        assert_eq!(r.on_reply(3, Some((b(4), 7))), ReadStep::Pending);
        assert_eq!(r.on_reply(4, None), ReadStep::Pending);
        // Node 5 empty too: the new set has no majority on ballot 4 (nor on "nothing").
        assert_eq!(r.on_reply(5, None), ReadStep::Disagree);
        // Node 3 is in both sets: with 1 and 4 it makes both majorities.
        let mut r = QuietRead::new(&q);
        r.on_reply(1, Some((b(4), 7)));
        r.on_reply(3, Some((b(4), 7)));
        assert_eq!(r.on_reply(4, Some((b(4), 7))), ReadStep::Value(7));
        let mut r = QuietRead::new(&q);
        for n in [1, 2, 3] {
            r.on_reply(n, Some((b(4), 7)));
        }
        assert_eq!(r.on_reply(5, Some((b(4), 7))), ReadStep::Value(7));
    }

    #[test]
    fn five_replicas_need_three() {
        let mut r = QuietRead::new(&[1, 2, 3, 4, 5]);
        r.on_reply(1, Some((b(4), 7)));
        assert_eq!(r.on_reply(2, Some((b(4), 7))), ReadStep::Pending);
        assert_eq!(r.on_reply(3, Some((b(4), 7))), ReadStep::Value(7));
    }

    /// The plant the simulator needed 362 seeds to catch: replies tallied by value. Two
    /// replicas reporting the same number under different ballots are not a majority on one
    /// register (the value may have been chosen again since under a third ballot, or one of the
    /// two may be an unchosen proposal), so the read must go to a full round.
    #[test]
    fn the_same_value_under_different_ballots_is_no_majority() {
        let mut r = QuietRead::new(&[1, 2, 3]);
        assert_eq!(r.on_reply(1, Some((b(4), 7))), ReadStep::Pending);
        assert_eq!(r.on_reply(2, Some((b(5), 7))), ReadStep::Pending);
        assert_eq!(r.on_reply(3, Some((b(6), 9))), ReadStep::Disagree);
        let mut r = QuietRead::new(&[1, 2, 3]);
        r.on_reply(1, Some((b(4), 7)));
        r.on_reply(2, Some((b(5), 7)));
        // A third report settles it only if it makes a majority on one ballot.
        assert_eq!(r.on_reply(3, Some((b(5), 7))), ReadStep::Value(7));
    }
}
