//! One round of a coordinator on one key, as a state machine.
//!
//! `Round::new(ballot, replicas)` → send Prepare(ballot) to every replica → feed replies with
//! `on_promise` / `on_reject` → on [`Step::Promised`] apply the change to `prior` and call
//! `propose(new)` → send Accept(ballot, new) → feed `on_accepted` / `on_reject` → on
//! [`Step::Chosen`] the register is chosen and the clients may be answered.
//!
//! Only replies to this round's ballot, from replicas of the key, count, and each replica
//! counts once: a stale or duplicated reply can never complete a quorum.

use crate::Quorum;
use counter_proto::{Ballot, NodeId, Register};

/// What the coordinator should do after feeding a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet (or the reply did not count).
    Pending,
    /// A majority promised. `prior` is the register accepted under the highest ballot among the
    /// promises (the initial register if none): apply the change to it and `propose`.
    Promised { prior: Register },
    /// A majority accepted: `register` is chosen.
    Chosen(Register),
    /// A majority can no longer be reached with this ballot: retry above `seen`.
    Preempted { seen: Ballot },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Phase {
    Preparing,
    Promised,
    /// Phase 2 with the register in `proposed`.
    Accepting,
    /// `proposed` is chosen.
    Chosen,
    Preempted,
}

/// One prepare/accept round under one ballot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Round {
    ballot: Ballot,
    /// Who must answer: a majority of the key's replicas (of both sets while its shard moves).
    quorum: Quorum,
    phase: Phase,
    /// Replicas that answered positively in the current phase.
    granted: Vec<NodeId>,
    /// Replicas that refused in the current phase.
    refused: Vec<NodeId>,
    /// Highest accepted (ballot, register) among the promises.
    best: Option<(Ballot, Register)>,
    /// Highest ballot heard of (our own, or one a rejection carried).
    seen: Ballot,
    /// The register sent in Accepts, once `propose` was called.
    proposed: Option<Register>,
    /// The ballot the Accepts asked to be promised for the next round, and who promised it.
    next: Option<Ballot>,
    next_granted: Vec<NodeId>,
    /// Phase 1 reads at the shard's floor ([`crate::floor`]): a refusal naming our own ballot
    /// (or a lower one) is real, not the echo of a duplicated Prepare (a read changes nothing,
    /// so a duplicate gets the same answer).
    at_floor: bool,
}

/// A coordinator's next round on a key, already prepared: a majority promised `ballot` when
/// they accepted `accepted`, the register chosen by the round before. The next change can go
/// straight to phase 2 with `accepted` as its prior.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Warm {
    pub ballot: Ballot,
    pub accepted: (Ballot, Register),
}

impl Round {
    /// A round of `ballot` over the key's replicas (`quorum`: a set, or two during a move).
    pub fn new(ballot: Ballot, quorum: impl Into<Quorum>) -> Round {
        let quorum = quorum.into();
        Round {
            ballot,
            granted: Vec::with_capacity(quorum.members().len()),
            quorum,
            phase: Phase::Preparing,
            refused: Vec::new(),
            best: None,
            seen: ballot,
            proposed: None,
            next: None,
            next_granted: Vec::new(),
            at_floor: false,
        }
    }

    /// A round at the shard's floor `ballot`, whose phase 1 reads ([`crate::floor`]).
    pub fn at_floor(ballot: Ballot, quorum: impl Into<Quorum>) -> Round {
        let mut round = Round::new(ballot, quorum);
        round.at_floor = true;
        round
    }

    /// A round whose phase 1 is already done (the round before piggybacked it): it starts at
    /// [`Step::Promised`] with `warm.accepted` as the highest accepted register.
    pub fn promised(warm: Warm, quorum: impl Into<Quorum>) -> Round {
        let mut round = Round::new(warm.ballot, quorum);
        round.phase = Phase::Promised;
        round.best = Some(warm.accepted);
        round
    }

    /// When the round is chosen and a majority also promised the ballot its Accepts asked for:
    /// the next round, prepared.
    pub fn warm(&self) -> Option<Warm> {
        let (ballot, at) = self.prepared()?;
        Some(Warm {
            ballot,
            accepted: (at, self.chosen()?.clone()),
        })
    }

    /// [`Round::warm`] without copying the register: the prepared ballot, and this round's
    /// (whose chosen register is the prior), for a driver that can read the register back.
    pub fn prepared(&self) -> Option<(Ballot, Ballot)> {
        self.chosen()?;
        let ballot = self
            .next
            .filter(|_| self.quorum.is_met(&self.next_granted))?;
        Some((ballot, self.ballot))
    }

    pub fn ballot(&self) -> Ballot {
        self.ballot
    }

    /// Who must answer.
    pub fn quorum(&self) -> &Quorum {
        &self.quorum
    }

    /// Highest ballot heard of: retry above it.
    pub fn seen(&self) -> Ballot {
        self.seen
    }

    /// The register this round sent in Accepts, if it got that far. A round that ends (by
    /// preemption or timeout) without being chosen is ambiguous exactly when this is `Some`:
    /// the register may have been accepted by a minority and be chosen later by another round.
    pub fn proposed(&self) -> Option<&Register> {
        self.proposed.as_ref()
    }

    /// The register accepted under the highest ballot among the promises so far, with that ballot.
    pub fn highest_accepted(&self) -> Option<&(Ballot, Register)> {
        self.best.as_ref()
    }

    /// Whether the round has been decided.
    pub fn chosen(&self) -> Option<&Register> {
        match self.phase {
            Phase::Chosen => self.proposed.as_ref(),
            _ => None,
        }
    }

    /// Counts a promise from `from`.
    pub fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        accepted: Option<(Ballot, Register)>,
    ) -> Step {
        if self.phase != Phase::Preparing || !self.counts(from, ballot) {
            return Step::Pending;
        }
        self.granted.push(from);
        if let Some((b, r)) = accepted {
            if self.best.as_ref().is_none_or(|(best, _)| b > *best) {
                self.best = Some((b, r));
            }
        }
        if self.quorum.is_met(&self.granted) {
            self.phase = Phase::Promised;
            self.granted.clear();
            self.refused.clear();
            let prior = self
                .best
                .as_ref()
                .map(|(_, r)| r.clone())
                .unwrap_or_default();
            return Step::Promised { prior };
        }
        Step::Pending
    }

    /// Enters phase 2 with `register` (the change applied to `prior`). Send Accept(ballot,
    /// register, next): `next` (above the ballot), if given, is asked to be promised too.
    ///
    /// # Panics
    /// If the round has not reached [`Step::Promised`]: that is a bug in the caller.
    pub fn propose(&mut self, register: Register, next: Option<Ballot>) {
        assert_eq!(
            self.phase,
            Phase::Promised,
            "propose before a promise quorum"
        );
        self.phase = Phase::Accepting;
        self.proposed = Some(register);
        self.next = next.filter(|&n| n > self.ballot);
    }

    /// Counts an acceptance from `from`; `next` is the ballot it promised along with it.
    pub fn on_accepted(&mut self, from: NodeId, ballot: Ballot, next: Option<Ballot>) -> Step {
        if self.phase != Phase::Accepting || !self.counts(from, ballot) {
            return Step::Pending;
        }
        self.granted.push(from);
        if next.is_some() && next == self.next {
            self.next_granted.push(from);
        }
        if self.quorum.is_met(&self.granted) {
            self.phase = Phase::Chosen;
            let register = self.proposed.clone().expect("accepting means proposed");
            return Step::Chosen(register);
        }
        Step::Pending
    }

    /// Counts a refusal: `from` has promised `promised`, above our ballot.
    pub fn on_reject(&mut self, from: NodeId, ballot: Ballot, promised: Ballot) -> Step {
        if !matches!(self.phase, Phase::Preparing | Phase::Accepting) {
            return Step::Pending;
        }
        // A refusal that names our own ballot is the echo of a duplicated request we already
        // counted, not a competitor; except a read's at the floor (an acceptor that has not
        // promised the floor, or a key that has seen its ballot).
        let read = self.at_floor && self.phase == Phase::Preparing;
        if (promised <= self.ballot && !read) || !self.counts(from, ballot) {
            return Step::Pending;
        }
        self.seen = self.seen.max(promised);
        self.refused.push(from);
        if self.quorum.is_lost(&self.refused) {
            self.phase = Phase::Preempted;
            return Step::Preempted { seen: self.seen };
        }
        Step::Pending
    }

    /// Whether a reply of `from` to `ballot` counts in the current phase.
    fn counts(&self, from: NodeId, ballot: Ballot) -> bool {
        ballot == self.ballot
            && self.quorum.contains(from)
            && !self.granted.contains(&from)
            && !self.refused.contains(&from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ballot::b;
    fn reg(value: i64, version: u64) -> Register {
        Register::new(value, version)
    }
    const REPLICAS: [NodeId; 3] = [1, 2, 3];

    #[test]
    fn a_read_at_the_floor_counts_refusals_that_name_no_higher_ballot() {
        // An ordinary Prepare's refusal naming its own ballot is a duplicate's echo...
        let mut r = Round::new(b(5, 1), &REPLICAS);
        assert_eq!(r.on_reject(2, b(5, 1), b(5, 1)), Step::Pending);
        assert_eq!(r.on_reject(3, b(5, 1), b(4, 2)), Step::Pending);
        // ...a read's at the floor is a refusal: two of three end the round at once.
        let mut r = Round::at_floor(b(5, 1), &REPLICAS);
        assert_eq!(r.on_reject(2, b(5, 1), b(5, 1)), Step::Pending);
        assert_eq!(
            r.on_reject(3, b(5, 1), b(4, 2)),
            Step::Preempted { seen: b(5, 1) }
        );
        // In phase 2 an echo is an echo again.
        let mut r = Round::at_floor(b(5, 1), &REPLICAS);
        r.on_promise(1, b(5, 1), None);
        r.on_promise(2, b(5, 1), None);
        r.propose(reg(1, 1), None);
        assert_eq!(r.on_reject(3, b(5, 1), b(5, 1)), Step::Pending);
        assert_eq!(r.on_reject(2, b(5, 1), b(5, 1)), Step::Pending);
    }

    #[test]
    fn a_majority_of_distinct_replicas_is_needed() {
        let mut r = Round::new(b(5, 1), &REPLICAS);
        assert_eq!(r.on_promise(1, b(5, 1), None), Step::Pending);
        // The same replica twice (a duplicated message) does not make a majority.
        assert_eq!(r.on_promise(1, b(5, 1), None), Step::Pending);
        // A node that is not a replica of the key does not count.
        assert_eq!(r.on_promise(9, b(5, 1), None), Step::Pending);
        assert_eq!(
            r.on_promise(2, b(5, 1), None),
            Step::Promised {
                prior: Register::default()
            }
        );
    }

    /// During a move a round needs a majority of the old set and of the new one, in both
    /// phases: old votes alone would leave the new set without the value.
    #[test]
    fn a_joint_round_needs_both_majorities_in_both_phases() {
        let q = Quorum::joint(&[1, 2, 3], &[3, 4, 5]);
        let mut r = Round::new(b(5, 1), &q);
        assert_eq!(r.on_promise(1, b(5, 1), None), Step::Pending);
        assert_eq!(r.on_promise(2, b(5, 1), None), Step::Pending);
        assert_eq!(r.on_promise(4, b(5, 1), None), Step::Pending);
        assert!(matches!(
            r.on_promise(5, b(5, 1), None),
            Step::Promised { .. }
        ));
        r.propose(reg(1, 1), None);
        assert_eq!(r.on_accepted(1, b(5, 1), None), Step::Pending);
        assert_eq!(r.on_accepted(2, b(5, 1), None), Step::Pending);
        assert_eq!(r.on_accepted(3, b(5, 1), None), Step::Pending);
        assert_eq!(r.on_accepted(4, b(5, 1), None), Step::Chosen(reg(1, 1)));
        // Two refusals in the new set make it impossible.
        let mut r = Round::new(b(5, 1), &q);
        assert_eq!(r.on_reject(4, b(5, 1), b(6, 2)), Step::Pending);
        assert!(matches!(
            r.on_reject(5, b(5, 1), b(6, 2)),
            Step::Preempted { .. }
        ));
    }

    #[test]
    fn replies_to_another_ballot_do_not_count() {
        let mut r = Round::new(b(5, 1), &REPLICAS);
        assert_eq!(r.on_promise(1, b(4, 1), None), Step::Pending);
        assert_eq!(r.on_promise(2, b(4, 1), None), Step::Pending);
        assert_eq!(r.on_promise(3, b(6, 1), None), Step::Pending);
        assert_eq!(r.on_promise(1, b(5, 1), None), Step::Pending);
        assert!(matches!(
            r.on_promise(2, b(5, 1), None),
            Step::Promised { .. }
        ));
        r.propose(reg(1, 1), None);
        assert_eq!(r.on_accepted(1, b(4, 1), None), Step::Pending);
        assert_eq!(r.on_accepted(2, b(4, 1), None), Step::Pending);
        assert_eq!(r.on_accepted(1, b(5, 1), None), Step::Pending);
        assert_eq!(r.on_accepted(1, b(5, 1), None), Step::Pending);
        assert_eq!(r.on_accepted(3, b(5, 1), None), Step::Chosen(reg(1, 1)));
        assert_eq!(r.chosen(), Some(&reg(1, 1)));
    }

    #[test]
    fn takes_the_register_accepted_under_the_highest_ballot() {
        // Values are chosen so that "largest value" (a pitfall of the sample this project started from: comparing values, not ballots) picks differently.
        let mut r = Round::new(b(9, 1), &[1, 2, 3, 4, 5]);
        r.on_promise(1, b(9, 1), Some((b(2, 2), reg(50, 8))));
        r.on_promise(2, b(9, 1), Some((b(7, 3), reg(2, 9))));
        let step = r.on_promise(3, b(9, 1), Some((b(4, 2), reg(40, 7))));
        assert_eq!(step, Step::Promised { prior: reg(2, 9) });
    }

    #[test]
    fn a_zero_register_under_the_highest_ballot_wins() {
        // A reset to 0 is a real accepted value (the same sample treated 0 as "nothing accepted").
        let mut r = Round::new(b(9, 1), &REPLICAS);
        r.on_promise(1, b(9, 1), Some((b(3, 2), reg(0, 4))));
        let step = r.on_promise(2, b(9, 1), Some((b(2, 3), reg(17, 3))));
        assert_eq!(step, Step::Promised { prior: reg(0, 4) });
    }

    #[test]
    fn the_highest_ballot_wins_whatever_order_promises_arrive_in() {
        let mut r = Round::new(b(9, 1), &REPLICAS);
        r.on_promise(1, b(9, 1), Some((b(3, 2), reg(30, 4))));
        let step = r.on_promise(3, b(9, 1), Some((b(3, 1), reg(31, 4))));
        assert_eq!(step, Step::Promised { prior: reg(30, 4) });
        let mut r = Round::new(b(9, 1), &REPLICAS);
        r.on_promise(3, b(9, 1), Some((b(3, 1), reg(31, 4))));
        let step = r.on_promise(1, b(9, 1), Some((b(3, 2), reg(30, 4))));
        assert_eq!(step, Step::Promised { prior: reg(30, 4) });
    }

    #[test]
    fn accept_replies_before_propose_do_not_count() {
        let mut r = Round::new(b(5, 1), &REPLICAS);
        assert_eq!(r.on_accepted(1, b(5, 1), None), Step::Pending);
        assert_eq!(r.on_accepted(2, b(5, 1), None), Step::Pending);
        r.on_promise(1, b(5, 1), None);
        r.on_promise(2, b(5, 1), None);
        // Promises must not be mistaken for acceptances either.
        r.propose(reg(1, 1), None);
        assert_eq!(r.on_accepted(1, b(5, 1), None), Step::Pending);
        assert_eq!(r.chosen(), None);
    }

    #[test]
    #[should_panic(expected = "propose before a promise quorum")]
    fn propose_without_promises_is_a_bug() {
        Round::new(b(5, 1), &REPLICAS).propose(reg(1, 1), None);
    }

    #[test]
    fn preempted_once_a_majority_is_out_of_reach() {
        let mut r = Round::new(b(5, 1), &REPLICAS);
        assert_eq!(r.on_reject(2, b(5, 1), b(7, 2)), Step::Pending);
        assert_eq!(r.on_reject(2, b(5, 1), b(7, 2)), Step::Pending);
        assert_eq!(
            r.on_reject(3, b(5, 1), b(6, 3)),
            Step::Preempted { seen: b(7, 2) }
        );
        assert_eq!(r.proposed(), None);
        assert!(r.seen() > b(7, 1));
        // Once preempted, late promises change nothing.
        assert_eq!(r.on_promise(1, b(5, 1), None), Step::Pending);
    }

    #[test]
    fn with_five_replicas_two_refusals_leave_a_majority_possible() {
        let mut r = Round::new(b(5, 1), &[1, 2, 3, 4, 5]);
        assert_eq!(r.on_reject(4, b(5, 1), b(6, 4)), Step::Pending);
        assert_eq!(r.on_reject(5, b(5, 1), b(6, 5)), Step::Pending);
        r.on_promise(1, b(5, 1), None);
        r.on_promise(2, b(5, 1), None);
        assert!(matches!(
            r.on_promise(3, b(5, 1), None),
            Step::Promised { .. }
        ));
        let mut r = Round::new(b(5, 1), &[1, 2, 3, 4, 5]);
        r.on_reject(3, b(5, 1), b(6, 3));
        r.on_reject(4, b(5, 1), b(6, 4));
        assert!(matches!(
            r.on_reject(5, b(5, 1), b(6, 5)),
            Step::Preempted { .. }
        ));
    }

    #[test]
    fn one_refusal_does_not_stop_a_majority() {
        let mut r = Round::new(b(5, 1), &REPLICAS);
        r.on_reject(3, b(5, 1), b(8, 3));
        r.on_promise(1, b(5, 1), None);
        assert!(matches!(
            r.on_promise(2, b(5, 1), None),
            Step::Promised { .. }
        ));
        r.propose(reg(3, 1), None);
        r.on_reject(3, b(5, 1), b(8, 3));
        r.on_accepted(1, b(5, 1), None);
        assert_eq!(r.on_accepted(2, b(5, 1), None), Step::Chosen(reg(3, 1)));
    }

    #[test]
    fn a_refusal_naming_our_own_ballot_or_a_stale_one_is_ignored() {
        let mut r = Round::new(b(5, 1), &REPLICAS);
        r.on_promise(1, b(5, 1), None);
        // Echo of a duplicated Prepare: the acceptor has promised exactly our ballot.
        assert_eq!(r.on_reject(1, b(5, 1), b(5, 1)), Step::Pending);
        assert_eq!(r.on_reject(2, b(4, 1), b(9, 9)), Step::Pending);
        assert_eq!(r.on_reject(3, b(4, 1), b(9, 9)), Step::Pending);
        assert_eq!(r.seen(), b(5, 1));
        assert!(matches!(
            r.on_promise(2, b(5, 1), None),
            Step::Promised { .. }
        ));
    }

    #[test]
    fn preemption_after_propose_is_ambiguous() {
        let mut r = Round::new(b(5, 1), &REPLICAS);
        r.on_promise(1, b(5, 1), None);
        r.on_promise(2, b(5, 1), None);
        r.propose(reg(1, 1), None);
        r.on_reject(2, b(5, 1), b(6, 2));
        assert_eq!(
            r.on_reject(3, b(5, 1), b(6, 2)),
            Step::Preempted { seen: b(6, 2) }
        );
        assert_eq!(r.proposed(), Some(&reg(1, 1)));
        assert_eq!(r.chosen(), None);
    }
}

/// What to propose once a round has a majority of promises.
///
/// `highest` is the register accepted under the highest ballot among the promises
/// ([`Round::highest_accepted`]); `in_doubt` is the (ballot, register) this coordinator sent in
/// Accepts for the same `cmds` in an earlier round that ended without a decision, if any.
///
/// - Nothing in doubt: apply `cmds` to `highest` (the initial register if none); `results` gets
///   each command's answer.
/// - In doubt and the promises report exactly that (ballot, register) as the highest: propose
///   it again, unchanged: the commands inside it are finished, not applied a second time, and
///   `results` (from the earlier round) stay as they are.
/// - In doubt otherwise, and every command safe to retry (a read, or a request id the register
///   remembers: [`crate::change::is_retry_safe`]): apply them to `highest` afresh; those already
///   in it are answered from its client entries, not applied again.
/// - In doubt otherwise: `None`. Another register superseded ours; it may or may not contain
///   our commands, so applying them again could count twice: the caller must answer `unknown`.
pub fn next_proposal(
    highest: Option<&(Ballot, Register)>,
    in_doubt: Option<&(Ballot, Register)>,
    cmds: &[counter_proto::Command],
    ctx: &crate::change::Ctx,
    results: &mut Vec<counter_proto::Outcome>,
) -> Option<Register> {
    match in_doubt {
        Some(ours) if highest == Some(ours) => Some(ours.1.clone()),
        Some(_) if !cmds.iter().all(crate::change::is_retry_safe) => None,
        _ => {
            results.clear();
            let prior = highest.map(|(_, r)| r.clone()).unwrap_or_default();
            Some(crate::apply_all(cmds, prior, ctx, results))
        }
    }
}

#[cfg(test)]
mod warm_tests {
    use super::*;

    const REPLICAS: [NodeId; 3] = [1, 2, 3];

    fn b(round: u64) -> Ballot {
        crate::ballot::b(round, 1)
    }

    #[test]
    fn a_round_whose_accepts_were_promised_the_next_ballot_leaves_it_prepared() {
        let mut r = Round::new(b(5), &REPLICAS);
        r.on_promise(1, b(5), None);
        r.on_promise(2, b(5), None);
        r.propose(Register::new(1, 1), Some(b(6)));
        assert_eq!(r.warm(), None, "not chosen yet");
        r.on_accepted(1, b(5), Some(b(6)));
        assert!(matches!(
            r.on_accepted(3, b(5), Some(b(6))),
            Step::Chosen(_)
        ));
        let warm = r.warm().expect("a majority promised the next ballot");
        assert_eq!(warm.ballot, b(6));
        assert_eq!(warm.accepted, (b(5), Register::new(1, 1)));
        // The next round starts at phase 2 with the chosen register as its prior.
        let next = Round::promised(warm, &REPLICAS);
        assert_eq!(next.ballot(), b(6));
        assert_eq!(next.highest_accepted(), Some(&(b(5), Register::new(1, 1))));
    }

    #[test]
    fn without_a_majority_promising_the_next_ballot_nothing_is_prepared() {
        let mut r = Round::new(b(5), &REPLICAS);
        r.on_promise(1, b(5), None);
        r.on_promise(2, b(5), None);
        r.propose(Register::new(1, 1), Some(b(6)));
        r.on_accepted(1, b(5), Some(b(6)));
        // Chosen, but one of the two did not promise b(6) (or promised another ballot).
        assert!(matches!(
            r.on_accepted(2, b(5), Some(b(7))),
            Step::Chosen(_)
        ));
        assert_eq!(r.warm(), None);
        let mut r = Round::new(b(5), &REPLICAS);
        r.on_promise(1, b(5), None);
        r.on_promise(2, b(5), None);
        r.propose(Register::new(1, 1), None);
        r.on_accepted(1, b(5), None);
        r.on_accepted(2, b(5), None);
        assert_eq!(r.warm(), None, "nothing was asked");
    }
}

#[cfg(test)]
mod proposal_tests {
    use super::*;
    use crate::change::Ctx;
    use counter_proto::{Command, Op, Outcome, RequestId};

    fn b(round: u64) -> Ballot {
        crate::ballot::b(round, 1)
    }
    fn reg(value: i64, version: u64) -> Register {
        Register::new(value, version)
    }
    fn cmds(ops: &[Op]) -> Vec<Command> {
        ops.iter().map(|&op| op.into()).collect()
    }

    #[test]
    fn fresh_ops_apply_to_the_highest_register() {
        let mut results = Vec::new();
        let ctx = Ctx::default();
        let p = next_proposal(
            Some(&(b(3), reg(10, 4))),
            None,
            &cmds(&[Op::Incr(2), Op::Incr(3)]),
            &ctx,
            &mut results,
        );
        assert_eq!(p, Some(reg(15, 6)));
        assert_eq!(results, vec![Outcome::Value(12), Outcome::Value(15)]);
        let p = next_proposal(None, None, &cmds(&[Op::Decr(1)]), &ctx, &mut results);
        assert_eq!(p, Some(reg(-1, 1)));
        assert_eq!(results, vec![Outcome::Value(-1)]);
    }

    #[test]
    fn our_register_in_doubt_is_finished_not_reapplied() {
        let mut results = vec![Outcome::Value(11)];
        let ours = (b(3), reg(11, 5));
        let p = next_proposal(
            Some(&ours),
            Some(&ours),
            &cmds(&[Op::Incr(1)]),
            &Ctx::default(),
            &mut results,
        );
        assert_eq!(
            p,
            Some(reg(11, 5)),
            "the increment must not be applied twice"
        );
        assert_eq!(results, vec![Outcome::Value(11)]);
    }

    #[test]
    fn a_superseded_register_in_doubt_is_ambiguous() {
        let mut results = vec![Outcome::Value(11)];
        let ours = (b(3), reg(11, 5));
        let ctx = Ctx::default();
        let incr = cmds(&[Op::Incr(1)]);
        // Another coordinator's register, possibly built on ours.
        let other = (b(4), reg(12, 6));
        assert_eq!(
            next_proposal(Some(&other), Some(&ours), &incr, &ctx, &mut results),
            None
        );
        // Nothing accepted that we can see: ours may still sit on a minority.
        let older = (b(2), reg(10, 4));
        assert_eq!(
            next_proposal(Some(&older), Some(&ours), &incr, &ctx, &mut results),
            None
        );
        assert_eq!(
            next_proposal(None, Some(&ours), &incr, &ctx, &mut results),
            None
        );
    }

    #[test]
    fn a_superseded_register_in_doubt_is_retried_when_the_register_remembers_requests() {
        let ctx = Ctx::default();
        let incr = [Command {
            op: Op::Incr(1),
            request: Some(RequestId {
                client: 9,
                seq: 1,
                expires_ms: 0,
            }),
            ..Command::default()
        }];
        let mut results = Vec::new();
        // Our round applied it to 10 and was interrupted...
        let mine = next_proposal(Some(&(b(2), reg(10, 4))), None, &incr, &ctx, &mut results);
        let ours = (b(3), mine.clone().unwrap());
        // ...another coordinator built on it (12): the retry recognises the request.
        let mut built_on = mine.unwrap();
        crate::change::apply(&Op::Incr(1).into(), &mut built_on, &ctx);
        let p = next_proposal(
            Some(&(b(4), built_on.clone())),
            Some(&ours),
            &incr,
            &ctx,
            &mut results,
        );
        assert_eq!(p.map(|r| r.value), Some(12), "not applied a second time");
        assert_eq!(
            results,
            vec![Outcome::Value(11)],
            "answered as the first time"
        );
        // ...or it was lost on a minority: the retry applies it once.
        let p = next_proposal(
            Some(&(b(4), reg(10, 5))),
            Some(&ours),
            &incr,
            &ctx,
            &mut results,
        );
        assert_eq!(p.map(|r| r.value), Some(11));
        assert_eq!(results, vec![Outcome::Value(11)]);
    }
}
