//! A coordinator's whole job for one batch of operations on one key, sans I/O.
//!
//! The driver (the node's tokio code, or the simulator) does what the [`Action`]s say and feeds
//! back what happened: acceptor replies ([`Decider::on_reply`]), and the end of a phase without
//! a decision ([`Decider::on_phase_timeout`]). Everything that decides safety is here: ballot
//! choice, counting replies ([`Round`]), what to propose ([`next_proposal`]) and how an
//! unfinished batch must be reported ([`Failure`]).

use crate::change::Ctx;
use crate::proposer::Warm;
use crate::{next_ballot, next_proposal, AcceptorReply, Quorum, Round, Step};
use counter_proto::{Ballot, Command, NodeId, Outcome, Register};

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send Prepare(ballot) to every replica.
    Prepare(Ballot),
    /// Phase 1 at the shard's floor ([`crate::floor`]): send ReadAtFloor(ballot) to every
    /// replica. Their promises and refusals are fed back as a Prepare's.
    ReadAtFloor(Ballot),
    /// Send Accept(ballot, register, next) to every replica: `next` is the ballot they are
    /// asked to promise along with it (phase 1 of this coordinator's next round on the key).
    Accept(Ballot, Register, Option<Ballot>),
    /// The round failed: wait (randomized exponential backoff, `attempt` rounds failed so far),
    /// then call [`Decider::start_round`] again, or [`Decider::give_up`] past the deadline.
    Retry { attempt: u32 },
    /// Decided: each command's answer, in order.
    Done(Vec<Outcome>),
    /// Ended without a decision.
    Failed(Failure),
}

/// How a batch ended without a decision. The distinction is what clients are told.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// No Accept carrying these ops was ever sent: they were not applied.
    NotApplied(String),
    /// An Accept carrying them was sent and not decided: they may have been applied.
    Ambiguous(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Phase {
    Idle,
    Preparing,
    Accepting,
    Finished,
}

/// Drives rounds until a batch of ops is chosen or must be reported as failed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decider {
    node: NodeId,
    epoch: u32,
    /// Who must answer (the key's replicas; both sets while its shard moves).
    quorum: Quorum,
    ops: Vec<Command>,
    /// Clock and bounds the commands are applied with.
    ctx: Ctx,
    /// Highest ballot known for the key; the next round goes above it.
    seen: Ballot,
    round: Option<Round>,
    phase: Phase,
    /// Our register sent in Accepts without a decision, and its ballot.
    in_doubt: Option<(Ballot, Register)>,
    results: Vec<Outcome>,
    failed_rounds: u32,
    last_error: String,
}

impl Decider {
    /// `seen` is the highest ballot the coordinator knows for the key (its own acceptor's);
    /// `ctx` the clock and bounds the commands are applied with.
    pub fn new(
        node: NodeId,
        epoch: u32,
        quorum: impl Into<Quorum>,
        ops: Vec<Command>,
        seen: Ballot,
        ctx: Ctx,
    ) -> Decider {
        Decider {
            node,
            epoch,
            ctx,
            quorum: quorum.into(),
            results: Vec::with_capacity(ops.len()),
            ops,
            seen,
            round: None,
            phase: Phase::Idle,
            in_doubt: None,
            failed_rounds: 0,
            last_error: String::new(),
        }
    }

    pub fn ops(&self) -> &[Command] {
        &self.ops
    }

    /// Who the rounds must reach.
    pub fn quorum(&self) -> &Quorum {
        &self.quorum
    }

    /// The key's replicas changed (a newer cluster configuration arrived): the next round
    /// counts `quorum`. Only between rounds, so that one round never mixes two
    /// configurations; what earlier rounds left in doubt is kept (an Accept sent under the old
    /// configuration may still be chosen, and a retry must recognise it).
    ///
    /// # Panics
    /// While a round runs: that is a bug in the driver.
    pub fn set_quorum(&mut self, quorum: Quorum) {
        assert!(
            matches!(self.phase, Phase::Idle),
            "set_quorum while a round runs"
        );
        self.quorum = quorum;
    }

    /// The ballot of the current round, if one is running.
    pub fn ballot(&self) -> Option<Ballot> {
        self.round.as_ref().map(Round::ballot)
    }

    /// Starts a round above every ballot seen: send the Prepares.
    pub fn start_round(&mut self) -> Action {
        assert!(
            matches!(self.phase, Phase::Idle),
            "start_round while a round runs or after the end"
        );
        let ballot = next_ballot(self.node, self.epoch, self.seen);
        self.seen = ballot;
        self.round = Some(Round::new(ballot, &self.quorum));
        self.phase = Phase::Preparing;
        Action::Prepare(ballot)
    }

    /// Starts with a round already prepared by the previous one on the key ([`Decider::warm`]):
    /// straight to phase 2, one round trip. If it fails, the retries are ordinary rounds.
    ///
    /// Only for a batch that is safe to retry (reads, and commands with request ids): a
    /// prepared round is older than a fresh one, so it more often loses a race in phase 2 and
    /// leaves its register in doubt, which only such a batch can resolve. Any other batch
    /// starts an ordinary round ([`Decider::start_round`]).
    pub fn start_warm(&mut self, warm: Warm) -> Action {
        assert!(
            matches!(self.phase, Phase::Idle) && self.failed_rounds == 0,
            "start_warm only as the first round"
        );
        if !self.ops.iter().all(crate::change::is_retry_safe) {
            return self.start_round();
        }
        self.seen = self.seen.max(warm.ballot);
        self.round = Some(Round::promised(warm, &self.quorum));
        self.propose()
    }

    /// Starts with a round at the shard's floor `floor`, which a majority promised to this
    /// coordinator for every key of the shard, and which this key has not used yet
    /// ([`crate::FloorLease::take`]): phase 1 reads instead of writing. If it fails, the
    /// retries are ordinary rounds above it, never at it again.
    ///
    /// Only for a batch that is safe to retry, as [`Decider::start_warm`] (a floor is an
    /// older ballot than a fresh one), and only if the key has seen no ballot above the floor
    /// (`seen`, which counts our acceptor's floor: equal to it when the key has seen nothing
    /// higher; above it, a replica would refuse the read). Otherwise an ordinary round starts.
    pub fn start_at_floor(&mut self, floor: Ballot) -> Action {
        assert!(
            matches!(self.phase, Phase::Idle) && self.failed_rounds == 0,
            "start_at_floor only as the first round"
        );
        if self.seen > floor || !self.ops.iter().all(crate::change::is_retry_safe) {
            return self.start_round();
        }
        self.seen = floor;
        self.round = Some(Round::at_floor(floor, &self.quorum));
        self.phase = Phase::Preparing;
        Action::ReadAtFloor(floor)
    }

    /// After [`Action::Done`]: the next round on the key, prepared, if a majority promised it.
    pub fn warm(&self) -> Option<Warm> {
        match self.phase {
            Phase::Finished => self.round.as_ref()?.warm(),
            _ => None,
        }
    }

    /// [`Decider::warm`]'s two ballots, without copying the register.
    pub fn prepared(&self) -> Option<(Ballot, Ballot)> {
        match self.phase {
            Phase::Finished => self.round.as_ref()?.prepared(),
            _ => None,
        }
    }

    /// Phase 1 is done: what to send in phase 2 (or how the batch failed).
    fn propose(&mut self) -> Action {
        let round = self.round.as_mut().expect("proposing in a round");
        let ballot = round.ballot();
        match next_proposal(
            round.highest_accepted(),
            self.in_doubt.as_ref(),
            &self.ops,
            &self.ctx,
            &mut self.results,
        ) {
            Some(register) => {
                let next = next_ballot(self.node, self.epoch, ballot);
                round.propose(register.clone(), Some(next));
                self.phase = Phase::Accepting;
                Action::Accept(ballot, register, Some(next))
            }
            None => {
                self.phase = Phase::Finished;
                Action::Failed(Failure::Ambiguous(format!(
                    "an accept of this operation was interrupted ({}) and another \
                     register superseded it; it may have been applied",
                    self.last_error
                )))
            }
        }
    }

    /// Feeds one acceptor reply. `None`: nothing to do yet.
    pub fn on_reply(&mut self, from: NodeId, reply: AcceptorReply) -> Option<Action> {
        let round = self.round.as_mut()?;
        let step = match reply {
            AcceptorReply::Promise { ballot, accepted } => {
                if self.phase != Phase::Preparing {
                    return None;
                }
                round.on_promise(from, ballot, accepted)
            }
            AcceptorReply::Accepted { ballot, next } => {
                if self.phase != Phase::Accepting {
                    return None;
                }
                round.on_accepted(from, ballot, next)
            }
            AcceptorReply::Reject { ballot, promised } => {
                if !matches!(self.phase, Phase::Preparing | Phase::Accepting) {
                    return None;
                }
                round.on_reject(from, ballot, promised)
            }
        };
        match step {
            Step::Pending => None,
            Step::Promised { .. } => Some(self.propose()),
            Step::Chosen(_) => {
                self.phase = Phase::Finished;
                Some(Action::Done(std::mem::take(&mut self.results)))
            }
            Step::Preempted { seen } => {
                self.seen = self.seen.max(seen);
                Some(self.round_failed("preempted by a higher ballot"))
            }
        }
    }

    /// The current phase ended (timeout, or every replica answered) without a decision.
    pub fn on_phase_timeout(&mut self) -> Option<Action> {
        match self.phase {
            Phase::Preparing | Phase::Accepting => Some(self.round_failed("no majority in time")),
            _ => None,
        }
    }

    fn round_failed(&mut self, why: &str) -> Action {
        let round = self.round.take().expect("a round was running");
        self.seen = self.seen.max(round.seen());
        self.last_error = format!("round {}: {why}", round.ballot());
        if let Some(register) = round.proposed() {
            self.in_doubt = Some((round.ballot(), register.clone()));
        }
        self.phase = Phase::Idle;
        self.failed_rounds += 1;
        Action::Retry {
            attempt: self.failed_rounds,
        }
    }

    /// The deadline passed: how the batch must be reported.
    pub fn give_up(&mut self) -> Failure {
        if let Some(round) = self.round.take() {
            if let Some(register) = round.proposed() {
                self.in_doubt = Some((round.ballot(), register.clone()));
            }
        }
        self.phase = Phase::Finished;
        match &self.in_doubt {
            Some(_) => Failure::Ambiguous(format!(
                "an accept was sent but no decision was reached before the deadline ({})",
                self.last_error
            )),
            None => Failure::NotApplied(format!(
                "no quorum of replicas {} before the deadline ({})",
                self.quorum, self.last_error
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use counter_proto::Op;

    const R: [NodeId; 3] = [1, 2, 3];

    fn decider(ops: &[Op]) -> Decider {
        let cmds = ops.iter().map(|&op| op.into()).collect();
        Decider::new(1, 1, &R, cmds, Ballot::ZERO, Ctx::default())
    }

    fn promise(
        d: &mut Decider,
        from: NodeId,
        accepted: Option<(Ballot, Register)>,
    ) -> Option<Action> {
        let ballot = d.ballot().unwrap();
        d.on_reply(from, AcceptorReply::Promise { ballot, accepted })
    }
    fn accepted(d: &mut Decider, from: NodeId) -> Option<Action> {
        let ballot = d.ballot().unwrap();
        // Every acceptor promises the next ballot the Accept asked for.
        let next = Some(next_ballot(1, 1, ballot));
        d.on_reply(from, AcceptorReply::Accepted { ballot, next })
    }

    #[test]
    fn a_quiet_batch_is_decided_in_one_round() {
        let mut d = decider(&[Op::Incr(2), Op::Incr(3)]);
        assert_eq!(d.ops(), &[Op::Incr(2).into(), Op::Incr(3).into()]);
        let Action::Prepare(b) = d.start_round() else {
            panic!()
        };
        assert!(b > Ballot::ZERO);
        assert_eq!(promise(&mut d, 1, None), None);
        let Some(Action::Accept(b2, reg, _)) = promise(&mut d, 2, None) else {
            panic!()
        };
        assert_eq!((b2, reg.value), (b, 5));
        assert_eq!(accepted(&mut d, 3), None);
        assert_eq!(
            accepted(&mut d, 1),
            Some(Action::Done(vec![Outcome::Value(2), Outcome::Value(5)]))
        );
    }

    #[test]
    fn a_retry_goes_above_the_rejecting_ballot() {
        let mut d = decider(&[Op::Incr(1)]);
        let Action::Prepare(b) = d.start_round() else {
            panic!()
        };
        let high = Ballot {
            round: 40,
            node: 3,
            epoch: 2,
        };
        d.on_reply(
            2,
            AcceptorReply::Reject {
                ballot: b,
                promised: high,
            },
        );
        let retry = d.on_reply(
            3,
            AcceptorReply::Reject {
                ballot: b,
                promised: high,
            },
        );
        assert_eq!(retry, Some(Action::Retry { attempt: 1 }));
        let Action::Prepare(b2) = d.start_round() else {
            panic!()
        };
        assert!(b2 > high);
        // Prepare never got a majority: nothing could have been applied.
        assert!(matches!(d.give_up(), Failure::NotApplied(_)));
    }

    #[test]
    fn an_interrupted_accept_is_finished_when_it_is_the_highest() {
        let mut d = decider(&[Op::Incr(1)]);
        let Action::Prepare(b) = d.start_round() else {
            panic!()
        };
        promise(&mut d, 1, None);
        let Some(Action::Accept(_, reg, _)) = promise(&mut d, 2, None) else {
            panic!()
        };
        accepted(&mut d, 1);
        assert_eq!(d.on_phase_timeout(), Some(Action::Retry { attempt: 1 }));
        d.start_round();
        promise(&mut d, 1, Some((b, reg.clone())));
        // Same register again: the increment is finished, not applied a second time.
        let Some(Action::Accept(_, again, _)) = promise(&mut d, 3, None) else {
            panic!()
        };
        assert_eq!(again, reg);
        accepted(&mut d, 1);
        assert_eq!(
            accepted(&mut d, 3),
            Some(Action::Done(vec![Outcome::Value(1)]))
        );
    }

    #[test]
    fn an_interrupted_accept_superseded_is_ambiguous() {
        let mut d = decider(&[Op::Incr(1)]);
        d.start_round();
        promise(&mut d, 1, None);
        promise(&mut d, 2, None);
        d.on_phase_timeout();
        d.start_round();
        let other = (
            Ballot {
                round: 9,
                node: 2,
                epoch: 1,
            },
            Register::new(1, 1),
        );
        promise(&mut d, 2, Some(other));
        assert!(matches!(
            promise(&mut d, 3, None),
            Some(Action::Failed(Failure::Ambiguous(_)))
        ));
    }

    #[test]
    fn giving_up_after_an_accept_was_sent_is_ambiguous() {
        let mut d = decider(&[Op::Incr(1)]);
        d.start_round();
        promise(&mut d, 1, None);
        promise(&mut d, 2, None);
        assert!(matches!(d.give_up(), Failure::Ambiguous(_)));
    }

    #[test]
    fn stale_replies_after_a_retry_do_not_count() {
        let mut d = decider(&[Op::Incr(1)]);
        let Action::Prepare(old) = d.start_round() else {
            panic!()
        };
        d.on_phase_timeout();
        d.start_round();
        assert_eq!(
            d.on_reply(
                1,
                AcceptorReply::Promise {
                    ballot: old,
                    accepted: None
                }
            ),
            None
        );
        assert_eq!(
            d.on_reply(
                2,
                AcceptorReply::Promise {
                    ballot: old,
                    accepted: None
                }
            ),
            None
        );
        assert_eq!(promise(&mut d, 1, None), None);
    }

    fn with_id(op: Op, seen: Ballot) -> Decider {
        let cmd = counter_proto::Command {
            op,
            request: Some(counter_proto::RequestId {
                client: 1,
                seq: 1,
                expires_ms: 0,
            }),
            ..Default::default()
        };
        Decider::new(1, 1, &R, vec![cmd], seen, Ctx::default())
    }

    #[test]
    fn a_round_at_the_floor_reads_then_accepts_and_retries_above_it() {
        let floor = Ballot {
            round: 4,
            node: 1,
            epoch: 1,
        };
        // Not for a batch that cannot be retried, nor on a key that saw a ballot above it.
        assert!(matches!(
            decider(&[Op::Incr(1)]).start_at_floor(floor),
            Action::Prepare(_)
        ));
        let above = Ballot {
            round: 4,
            node: 2,
            epoch: 1,
        };
        assert!(matches!(
            with_id(Op::Incr(1), above).start_at_floor(floor),
            Action::Prepare(b) if b > above
        ));

        // The key has seen nothing above our acceptor's floor, the floor itself.
        let mut d = with_id(Op::Incr(3), floor);
        assert_eq!(d.start_at_floor(floor), Action::ReadAtFloor(floor));
        let old = (
            Ballot {
                round: 2,
                node: 2,
                epoch: 1,
            },
            Register::new(7, 1),
        );
        assert_eq!(promise(&mut d, 2, Some(old.clone())), None);
        let Some(Action::Accept(b, reg, Some(next))) = promise(&mut d, 3, None) else {
            panic!()
        };
        // Phase 2 at the floor, on top of what the reads reported.
        assert_eq!((b, reg.value), (floor, 10));
        assert!(next > floor);

        // Interrupted: the retry is an ordinary round with a fresh ballot above the floor.
        assert!(matches!(d.on_phase_timeout(), Some(Action::Retry { .. })));
        let Action::Prepare(retry) = d.start_round() else {
            panic!()
        };
        assert!(retry > floor);
    }

    #[test]
    fn a_chosen_round_prepares_the_next_one_on_the_key() {
        let mut d = decider(&[Op::Incr(2)]);
        d.start_round();
        promise(&mut d, 1, None);
        let Some(Action::Accept(b, reg, Some(next))) = promise(&mut d, 2, None) else {
            panic!()
        };
        assert!(next > b);
        assert_eq!(d.warm(), None, "not decided yet");
        accepted(&mut d, 1);
        assert!(matches!(accepted(&mut d, 2), Some(Action::Done(_))));
        let warm = d.warm().expect("a majority promised the next ballot");
        assert_eq!(warm.ballot, next);
        assert_eq!(warm.accepted, (b, reg));

        // A batch that cannot be retried safely does not take the prepared round.
        let mut d = decider(&[Op::Incr(3)]);
        assert!(matches!(d.start_warm(warm.clone()), Action::Prepare(_)));

        // One that can goes straight to phase 2, on top of the chosen register.
        let with_id = |op| with_id(op, Ballot::ZERO);
        let mut d = with_id(Op::Incr(3));
        let Action::Accept(b2, reg2, _) = d.start_warm(warm.clone()) else {
            panic!()
        };
        assert_eq!((b2, reg2.value), (next, 5));
        accepted(&mut d, 3);
        assert_eq!(
            accepted(&mut d, 1),
            Some(Action::Done(vec![Outcome::Value(5)]))
        );

        // Another coordinator got in between: the warm round is refused, and the retry is an
        // ordinary round above the competitor, with the warm register in doubt.
        let mut d = with_id(Op::Incr(3));
        d.start_warm(warm);
        let high = Ballot {
            round: next.round + 5,
            node: 3,
            epoch: 1,
        };
        for from in [2, 3] {
            d.on_reply(
                from,
                AcceptorReply::Reject {
                    ballot: next,
                    promised: high,
                },
            );
        }
        let Action::Prepare(b3) = d.start_round() else {
            panic!()
        };
        assert!(b3 > high);
        assert!(matches!(d.give_up(), Failure::Ambiguous(_)));
    }
}
