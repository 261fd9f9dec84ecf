//! Model checking of the real core with stateright.
//!
//! The actors wrap the very types the node runs: each server keeps an
//! [`AcceptorState`] (its durable storage, saved with `Out::save` before a reply is sent, and
//! restored after a crash) and coordinates client operations with a [`Decider`] (volatile, lost
//! in a crash), reaching its own acceptor without the network as the node does. Each client
//! issues one increment. The network may lose and reorder messages, and acceptor messages are
//! sent twice so each may also be delivered twice ([`Config::duplicate_internal`]; stateright's
//! duplicating network would also duplicate client requests, which TCP never does: a
//! duplicated request is a retry that only request ids make safe). Up to `max_crashes` actors
//! may crash and recover. The search is exhaustive up to a depth (`MODEL_DEPTH`, default 10;
//! 9 for a membership change, `CHANGE_DEPTH`: see `tests/check.rs`).
//!
//! Properties: every history is linearizable (stateright's tester, with unanswered operations
//! left in flight, i.e. "unknown"), and sometimes a non-zero value is read back (the search
//! reaches states where a value was chosen).
//!
//! # A membership change ([`Config::change`])
//!
//! The key's replica set moves from `old` to `new` while clients run, following the recipe of
//! `counter_core::membership` (configuration versions: 1 = `old`, 2 = joint, 3 = `new`):
//!
//! - Node 1 (server 0, a member of both sets) runs the admin command ([`Move`]): when its
//!   `Move` timer fires it installs version 2 and sends `Install(2)` to every other server over
//!   the same lossy network (resent on each later firing until acknowledged); once a majority
//!   of the **old** set has acknowledged (its own install counts), it runs an identity round
//!   (a [`Decider`] with an `Op::Get`: read, write back) under the joint quorum through its own
//!   coordinator, queued behind any client operation it coordinates, retried (a fresh round on
//!   each `Move` timer) until chosen; then it installs version 3 and sends `Install(3)` to every
//!   other server. Agreement on the configuration register is not modelled: node 1 is its only
//!   writer.
//! - Every server persists its installed version with its acceptor state. Installing a version
//!   whose replica set excludes the server drops its acceptor state (the node deletes the
//!   shard): only version 3 excludes a node that held the key.
//! - Every Prepare and Accept carries the version its round runs under, and every acceptor
//!   fences it with the real rule (`counter_core::membership::fence`): an older version is
//!   refused with `Stale(ours)`, and the coordinator installs the newer version, ends the phase
//!   (`Decider::on_phase_timeout`) and retries under the new quorum (`Decider::set_quorum`), as
//!   `counter`'s coordinator does. A newer version is **learnt from the message**: the acceptor
//!   installs it (dropping its state if that version excludes it) and then answers under it.
//!   The real node refuses (`NeedConfig`) and is sent the configuration; the model's shortcut
//!   is the interleaving in which the mover's `Install` for that version (in flight to every
//!   server from the moment the version exists) arrives just before the message.
//! - A server that does not hold the key under its version does not answer (the node answers
//!   an error, which a coordinator ignores), and a coordinator uses its own acceptor only if it
//!   holds the key under the round's version.
//! - The key starts with a value ([`SEED`]) chosen under version 1 and accepted by the nodes of
//!   [`Change::seeded`] only (a majority of `old`; the others missed it): exactly what the
//!   identity round must carry to the new set. The clients' specification starts from it.
//!
//! Extra property: sometimes the change completes (some server installed version 3).

use counter_core::floor::LEASE_KEY_OVERHEAD;
use counter_core::membership::{fence, Fence};
use counter_core::{AcceptorReply, AcceptorState, Action, Ctx, Decider, FloorLease, Quorum};
use counter_proto::{Ballot, Command, NodeId, Op, Outcome, Register, RequestId};
use stateright::actor::{Actor, ActorModel, Id, LossyNetwork, Network, Out};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};
use stateright::Expectation;
use std::borrow::Cow;
use std::time::Duration;

/// A counter, as clients should see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CounterSpec(i64);

impl SequentialSpec for CounterSpec {
    type Op = Op;
    type Ret = i64;
    fn invoke(&mut self, op: &Op) -> i64 {
        match *op {
            Op::Incr(d) => self.0 += d as i64,
            Op::Decr(d) => self.0 -= d as i64,
            Op::Reset => self.0 = 0,
            Op::Get => {}
            Op::Set(v) => self.0 = v,
            Op::Cas { expected, new } => {
                if self.0 == expected {
                    self.0 = new;
                }
            }
        }
        self.0
    }
}

/// Configuration versions of a membership change.
const OLD: u64 = 1;
const JOINT: u64 = 2;
const NEW: u64 = 3;

/// The key's value before a membership change ([`Change::seeded`]).
pub const SEED: i64 = 10;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Msg {
    Request(Op),
    Reply(i64),
    /// Sent under configuration version `.1`.
    Prepare(Ballot, u64),
    /// Sent under configuration version `.3`.
    Accept(Ballot, Register, Option<Ballot>, u64),
    /// Phase 1 at the shard's floor ([`Config::floor`]), under configuration version `.1`.
    ReadAtFloor(Ballot, u64),
    Acceptor(AcceptorReply),
    /// The acceptor runs a newer configuration (this version) than the message's: refused.
    Stale(u64),
    /// The mover asks a server to install a configuration version.
    Install(u64),
    /// The server has installed this version (or a newer one).
    Installed(u64),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// The current phase of a coordinator's round ends without a decision.
    Phase,
    /// The mover's next step (start the change, resend installs, retry the identity round).
    Move,
}

/// Rounds a coordinator may try per operation before giving up (bounds the state space).
const MAX_ATTEMPTS: u32 = 2;

/// Whom a coordinator's rounds are for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Who {
    Client(Id),
    /// The mover's identity round.
    Rescan,
}

/// A coordinator's operation in progress.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lead {
    who: Who,
    decider: Decider,
    /// The configuration version the current round runs under.
    version: u64,
}

/// Where the mover (node 1 during a change) is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Move {
    /// Not the mover, or no change.
    Off,
    /// Version 1: the admin command has not started yet.
    Idle,
    /// Version 2 installed here and sent to the others; these nodes acknowledged it (sorted).
    Fence(Vec<NodeId>),
    /// A majority of the old set installed version 2: the identity round runs or is due.
    Rescan,
    /// Version 3 installed here.
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[allow(clippy::large_enum_variant)] // states are hashed and cloned, never moved in bulk
pub enum State {
    Server {
        acceptor: AcceptorState,
        /// The key's shard's floor (persisted; `counter_core::floor`).
        floor: Ballot,
        epoch: u32,
        /// The configuration version installed (persisted); always 1 without a change.
        version: u64,
        lead: Option<Lead>,
        mover: Move,
        /// The floor this server leases as a coordinator (volatile: [`Config::floor`]).
        lease: Option<FloorLease>,
    },
    Client {
        next: usize,
    },
}

/// What a server keeps across crashes (a client keeps only that it has started).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Durable {
    acceptor: AcceptorState,
    floor: Ballot,
    epoch: u32,
    version: u64,
}

/// A move of the key's replica set from `old` to `new`, driven by node 1 (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Change {
    pub old: Vec<NodeId>,
    pub new: Vec<NodeId>,
    /// The nodes that accepted the key's value [`SEED`] before the change (a majority of
    /// `old`).
    pub seeded: Vec<NodeId>,
    /// The nodes clients send their requests to: client `c` to `coordinators[c % len]`.
    pub coordinators: Vec<NodeId>,
}

impl Change {
    /// Who must answer a round under configuration `version`.
    fn quorum(&self, version: u64) -> Quorum {
        match version {
            OLD => Quorum::majority(&self.old),
            JOINT => Quorum::joint(&self.old, &self.new),
            _ => Quorum::majority(&self.new),
        }
    }

    /// The key's register on node `node` before the change.
    fn seed(&self, node: NodeId) -> AcceptorState {
        if !self.seeded.contains(&node) {
            return AcceptorState::default();
        }
        let ballot = Ballot {
            round: 1,
            node: self.seeded[0],
            epoch: 0,
        };
        AcceptorState {
            promised: ballot,
            accepted: Some((ballot, Register::new(SEED, 1))),
        }
    }
}

/// What every server knows of the model's shape.
#[derive(Clone, Debug)]
pub struct Layout {
    servers: usize,
    /// Shard floors ([`Config::floor`]).
    floor: bool,
    /// Every acceptor message is sent twice (see [`Config::duplicate_internal`]).
    duplicate: bool,
    change: Option<Change>,
}

impl Layout {
    /// Who must answer a round under configuration `version`.
    fn quorum(&self, version: u64) -> Quorum {
        match &self.change {
            Some(change) => change.quorum(version),
            None => Quorum::majority(&(1..=self.servers as NodeId).collect::<Vec<_>>()),
        }
    }

    /// Whether `node` holds the key under configuration `version`.
    fn holds(&self, node: NodeId, version: u64) -> bool {
        self.quorum(version).contains(node)
    }

    fn copies(&self) -> usize {
        if self.duplicate {
            2
        } else {
            1
        }
    }

    fn others(&self, id: Id) -> Vec<Id> {
        (0..self.servers)
            .map(Id::from)
            .filter(|&s| s != id)
            .collect()
    }
}

#[derive(Clone, Debug)]
pub enum CounterActor {
    Server(Layout),
    Client { server: Id, ops: Vec<Op> },
}

fn node_of(id: Id) -> NodeId {
    usize::from(id) as NodeId + 1
}

fn id_of(node: NodeId) -> Id {
    Id::from(node as usize - 1)
}

/// The mover: node 1.
const MOVER: NodeId = 1;

/// The model's one key, as a floor lease names it.
const KEY: &str = "k";
/// With [`Config::floor`]: the floor node 1 raised (in its first incarnation), the nodes that
/// promised it, and the node that leases it.
/// Round 2, so that node 3's first ballot, (1, 3, 1), is below it.
const FLOOR: Ballot = Ballot {
    round: 2,
    node: 1,
    epoch: 1,
};
const FLOOR_HOLDERS: [NodeId; 2] = [1, 2];
const FLOOR_LEASER: NodeId = 1;

/// Installs configuration `to` on a server if it is newer (persisted), dropping its acceptor
/// state if `to` excludes it.
fn install(
    layout: &Layout,
    me: NodeId,
    (acceptor, floor, epoch, version): (&mut AcceptorState, Ballot, u32, &mut u64),
    to: u64,
    o: &mut Out<CounterActor>,
) {
    if to <= *version {
        return;
    }
    *version = to;
    if !layout.holds(me, to) {
        *acceptor = AcceptorState::default();
    }
    o.save(Durable {
        acceptor: acceptor.clone(),
        floor,
        epoch,
        version: to,
    });
}

impl CounterActor {
    /// Carries out `action` for the server `id`. Like the node, a coordinator reaches its own
    /// acceptor without the network: that reply is fed back at once (and persisted first).
    fn act(id: Id, layout: &Layout, state: &mut State, action: Action, o: &mut Out<Self>) {
        let State::Server {
            acceptor,
            floor,
            epoch,
            version,
            lead,
            mover,
            ..
        } = state
        else {
            return;
        };
        let me = node_of(id);
        let mut action = action;
        loop {
            let Some(l) = lead.as_mut() else {
                return;
            };
            let quorum = l.decider.quorum().clone();
            let others: Vec<Id> = quorum
                .members()
                .iter()
                .filter(|&&n| n != me)
                .map(|&n| id_of(n))
                .collect();
            // Whether the own acceptor takes part: it holds the key under the round's version
            // and the fence lets the round through (it may have installed a newer version).
            let local = quorum.contains(me) && fence(*version, l.version) == Fence::Admit;
            let reply = match action {
                Action::Prepare(b) => {
                    for _ in 0..layout.copies() {
                        o.broadcast(&others, &Msg::Prepare(b, l.version));
                    }
                    o.set_timer(Timer::Phase, model_timeout());
                    local.then(|| acceptor.prepare_over(b, *floor))
                }
                Action::ReadAtFloor(b) => {
                    for _ in 0..layout.copies() {
                        o.broadcast(&others, &Msg::ReadAtFloor(b, l.version));
                    }
                    o.set_timer(Timer::Phase, model_timeout());
                    local.then(|| (None, acceptor.read_at_floor(b, *floor)))
                }
                Action::Accept(b, r, next) => {
                    for _ in 0..layout.copies() {
                        o.broadcast(&others, &Msg::Accept(b, r.clone(), next, l.version));
                    }
                    o.set_timer(Timer::Phase, model_timeout());
                    local.then(|| acceptor.accept_over(b, r, next, *floor))
                }
                Action::Retry { attempt } => {
                    if attempt < MAX_ATTEMPTS {
                        // A newer configuration arrived: the next round counts its replicas.
                        if l.version != *version {
                            l.decider.set_quorum(layout.quorum(*version));
                            l.version = *version;
                        }
                        action = l.decider.start_round();
                        continue;
                    }
                    // Gives up: a client is never answered (its op stays "unknown"); the mover
                    // tries a new identity round on its next `Move` timer.
                    l.decider.give_up();
                    *lead = None;
                    o.cancel_timer(Timer::Phase);
                    return;
                }
                Action::Done(results) => {
                    let l = lead.take().expect("a lead finishes");
                    match l.who {
                        Who::Client(client) => {
                            if let Some(Outcome::Value(v)) = results.first() {
                                o.send(client, Msg::Reply(*v));
                            }
                        }
                        Who::Rescan => {
                            // Every value chosen under version 1 is now held by a majority of
                            // the new set: switch to it.
                            install(
                                layout,
                                me,
                                (&mut *acceptor, *floor, *epoch, &mut *version),
                                NEW,
                                o,
                            );
                            o.broadcast(&layout.others(id), &Msg::Install(NEW));
                            *mover = Move::Done;
                            o.cancel_timer(Timer::Move);
                        }
                    }
                    o.cancel_timer(Timer::Phase);
                    return;
                }
                Action::Failed(_) => {
                    *lead = None;
                    o.cancel_timer(Timer::Phase);
                    return;
                }
            };
            let next = match reply {
                Some((next, reply)) => {
                    if let Some(next) = next {
                        o.save(Durable {
                            acceptor: next.clone(),
                            floor: *floor,
                            epoch: *epoch,
                            version: *version,
                        });
                        *acceptor = next;
                    }
                    lead.as_mut().and_then(|l| l.decider.on_reply(me, reply))
                }
                // The own acceptor refuses the round's (older) configuration: end the phase and
                // retry under the new one, as the node does on a `StaleConfig`.
                None if quorum.contains(me) => {
                    lead.as_mut().and_then(|l| l.decider.on_phase_timeout())
                }
                None => None,
            };
            match next {
                Some(next_action) => action = next_action,
                None => return,
            }
        }
    }

    /// Starts a coordinator's operation: the decider under the server's configuration.
    fn lead(id: Id, layout: &Layout, state: &mut State, who: Who, op: Op, o: &mut Out<Self>) {
        let State::Server {
            acceptor,
            floor,
            epoch,
            version,
            lead,
            lease,
            ..
        } = state
        else {
            return;
        };
        // With floors, requests carry ids (a round at a floor is only for a batch that is safe
        // to retry): the client's own, one request each.
        let request = match (&who, layout.floor) {
            (Who::Client(client), true) => Some(RequestId {
                client: usize::from(*client) as u64,
                seq: 1,
                expires_ms: 0,
            }),
            _ => None,
        };
        let cmd = Command {
            op,
            request,
            ..Default::default()
        };
        let seen = acceptor.highest_over(*floor);
        let mut decider = Decider::new(
            node_of(id),
            *epoch,
            layout.quorum(*version),
            vec![cmd],
            seen,
            Ctx::default(),
        );
        let at_floor = lease
            .as_mut()
            .and_then(|l| l.take(KEY, *version))
            .filter(|&f| f >= seen);
        let action = match at_floor {
            Some(f) => decider.start_at_floor(f),
            None => decider.start_round(),
        };
        *lead = Some(Lead {
            who,
            decider,
            version: *version,
        });
        Self::act(id, layout, state, action, o);
    }

    /// The mover's identity round, if its coordinator is free (else on a later `Move` timer).
    fn rescan(id: Id, layout: &Layout, state: &mut State, o: &mut Out<Self>) {
        if let State::Server { lead: None, .. } = state {
            Self::lead(id, layout, state, Who::Rescan, Op::Get, o);
        }
    }
}

fn model_timeout() -> std::ops::Range<Duration> {
    Duration::from_secs(1)..Duration::from_secs(2)
}

impl Actor for CounterActor {
    type Msg = Msg;
    type State = State;
    type Timer = Timer;
    type Random = ();
    type Storage = Durable;

    fn on_start(&self, id: Id, storage: &Option<Durable>, o: &mut Out<Self>) -> State {
        match self {
            CounterActor::Server(layout) => {
                let me = node_of(id);
                let (acceptor, floor, epoch, version) = match storage {
                    Some(d) => (d.acceptor.clone(), d.floor, d.epoch, d.version),
                    None => match &layout.change {
                        Some(change) => (change.seed(me), Ballot::ZERO, 0, OLD),
                        // With floors: the state right after node 1 raised the shard's floor,
                        // promised by nodes 1 and 2 (a majority; node 3 missed it).
                        None if layout.floor && FLOOR_HOLDERS.contains(&me) => {
                            (AcceptorState::default(), FLOOR, 0, OLD)
                        }
                        None => (AcceptorState::default(), Ballot::ZERO, 0, OLD),
                    },
                };
                // Node 1 leases the floor it raised, until it crashes (a lease is volatile).
                let lease = (layout.floor && me == FLOOR_LEASER && storage.is_none())
                    .then(|| FloorLease::new(FLOOR, OLD, KEY.len() + LEASE_KEY_OVERHEAD));
                // A new incarnation: bump and persist the epoch before doing anything.
                let epoch = epoch + 1;
                o.save(Durable {
                    acceptor: acceptor.clone(),
                    floor,
                    epoch,
                    version,
                });
                let mover = match &layout.change {
                    Some(_) if me == MOVER => match version {
                        OLD => {
                            o.set_timer(Timer::Move, model_timeout());
                            Move::Idle
                        }
                        JOINT => {
                            // The admin command, run again, resumes the change.
                            o.broadcast(&layout.others(id), &Msg::Install(JOINT));
                            o.set_timer(Timer::Move, model_timeout());
                            Move::Fence(vec![me])
                        }
                        _ => Move::Done,
                    },
                    _ => Move::Off,
                };
                State::Server {
                    acceptor,
                    floor,
                    epoch,
                    version,
                    lead: None,
                    mover,
                    lease,
                }
            }
            CounterActor::Client { server, ops } => {
                if storage.is_some() {
                    // A client that crashed and came back does not reissue what it may have
                    // sent: its operation stays in flight (unknown) in the history.
                    return State::Client { next: usize::MAX };
                }
                o.save(Durable {
                    acceptor: AcceptorState::default(),
                    floor: Ballot::ZERO,
                    epoch: 0,
                    version: OLD,
                });
                o.send(*server, Msg::Request(ops[0]));
                State::Client { next: 1 }
            }
        }
    }

    fn on_msg(&self, id: Id, state: &mut Cow<State>, src: Id, msg: Msg, o: &mut Out<Self>) {
        match self {
            CounterActor::Client { server, ops } => {
                if let (Msg::Reply(_), State::Client { next }) = (&msg, state.as_ref()) {
                    let next = *next;
                    if next == usize::MAX {
                        return;
                    }
                    if next < ops.len() {
                        o.send(*server, Msg::Request(ops[next]));
                    }
                    *state.to_mut() = State::Client { next: next + 1 };
                }
            }
            CounterActor::Server(layout) => {
                let me = node_of(id);
                let s = state.to_mut();
                let State::Server {
                    acceptor,
                    floor,
                    epoch,
                    version,
                    lead,
                    mover,
                    ..
                } = s
                else {
                    return;
                };
                match msg {
                    Msg::Request(op) => {
                        if lead.is_some() {
                            return; // one operation at a time in the model
                        }
                        Self::lead(id, layout, s, Who::Client(src), op, o);
                    }
                    Msg::Prepare(b, sent)
                    | Msg::Accept(b, _, _, sent)
                    | Msg::ReadAtFloor(b, sent) => {
                        match fence(*version, sent) {
                            Fence::Stale => {
                                for _ in 0..layout.copies() {
                                    o.send(src, Msg::Stale(*version));
                                }
                                return;
                            }
                            Fence::Behind => install(
                                layout,
                                me,
                                (&mut *acceptor, *floor, *epoch, &mut *version),
                                sent,
                                o,
                            ),
                            Fence::Admit => {}
                        }
                        if !layout.holds(me, *version) {
                            return; // not a replica of the key: the node answers an error
                        }
                        let (next, reply) = match msg {
                            Msg::Prepare(..) => acceptor.prepare_over(b, *floor),
                            Msg::Accept(_, r, next, _) => acceptor.accept_over(b, r, next, *floor),
                            Msg::ReadAtFloor(..) => (None, acceptor.read_at_floor(b, *floor)),
                            _ => unreachable!(),
                        };
                        if let Some(next) = next {
                            // Persisted before the reply is sent.
                            o.save(Durable {
                                acceptor: next.clone(),
                                floor: *floor,
                                epoch: *epoch,
                                version: *version,
                            });
                            *acceptor = next;
                        }
                        for _ in 0..layout.copies() {
                            o.send(src, Msg::Acceptor(reply.clone()));
                        }
                    }
                    Msg::Acceptor(reply) => {
                        let action = lead
                            .as_mut()
                            .and_then(|l| l.decider.on_reply(node_of(src), reply));
                        if let Some(action) = action {
                            Self::act(id, layout, s, action, o);
                        }
                    }
                    Msg::Stale(newer) => {
                        install(
                            layout,
                            me,
                            (&mut *acceptor, *floor, *epoch, &mut *version),
                            newer,
                            o,
                        );
                        // The round cannot count under its configuration any more: end the
                        // phase now (what it sent stays in doubt) and retry under the new one.
                        let action = lead
                            .as_mut()
                            .filter(|l| l.version < newer)
                            .and_then(|l| l.decider.on_phase_timeout());
                        if let Some(action) = action {
                            Self::act(id, layout, s, action, o);
                        }
                    }
                    Msg::Install(to) => {
                        install(
                            layout,
                            me,
                            (&mut *acceptor, *floor, *epoch, &mut *version),
                            to,
                            o,
                        );
                        o.send(src, Msg::Installed(to));
                    }
                    Msg::Installed(v) => {
                        let (Move::Fence(acked), Some(change)) = (&mut *mover, &layout.change)
                        else {
                            return;
                        };
                        if v != JOINT || acked.contains(&node_of(src)) {
                            return;
                        }
                        acked.push(node_of(src));
                        acked.sort_unstable();
                        // From now on no round under version 1 can complete: each needs a
                        // majority of the old set, and a majority refuses version 1.
                        if Quorum::majority(&change.old).is_met(acked) {
                            *mover = Move::Rescan;
                            Self::rescan(id, layout, s, o);
                        }
                    }
                    Msg::Reply(_) => {}
                }
            }
        }
    }

    fn on_timeout(&self, id: Id, state: &mut Cow<State>, timer: &Timer, o: &mut Out<Self>) {
        let CounterActor::Server(layout) = self else {
            return;
        };
        match timer {
            Timer::Phase => {
                let s = state.to_mut();
                let action = match s {
                    State::Server { lead: Some(l), .. } => l.decider.on_phase_timeout(),
                    _ => None,
                };
                if let Some(action) = action {
                    Self::act(id, layout, s, action, o);
                }
            }
            Timer::Move => {
                let me = node_of(id);
                let State::Server { mover, lead, .. } = state.as_ref() else {
                    return;
                };
                match mover {
                    Move::Idle => {
                        // The admin command starts: install the joint configuration here and
                        // on every other server.
                        let State::Server {
                            acceptor,
                            floor,
                            epoch,
                            version,
                            mover,
                            ..
                        } = state.to_mut()
                        else {
                            return;
                        };
                        install(
                            layout,
                            me,
                            (&mut *acceptor, *floor, *epoch, &mut *version),
                            JOINT,
                            o,
                        );
                        *mover = Move::Fence(vec![me]);
                        o.broadcast(&layout.others(id), &Msg::Install(JOINT));
                    }
                    Move::Fence(acked) => {
                        let missing: Vec<Id> = layout
                            .others(id)
                            .into_iter()
                            .filter(|&s| !acked.contains(&node_of(s)))
                            .collect();
                        o.broadcast(&missing, &Msg::Install(JOINT));
                    }
                    Move::Rescan if lead.is_none() => Self::rescan(id, layout, state.to_mut(), o),
                    Move::Rescan => {}
                    Move::Off | Move::Done => return,
                }
                o.set_timer(Timer::Move, model_timeout());
            }
        }
    }
}

/// The model's shape.
#[derive(Clone, Debug)]
pub struct Config {
    pub servers: usize,
    pub clients: usize,
    pub max_crashes: usize,
    pub lossy: bool,
    pub duplicating: bool,
    /// Acceptor messages (prepares, accepts and their replies) are sent twice, so that every
    /// one of them may be delivered twice, in any order, while client requests are not (TCP
    /// does not duplicate them, and a duplicated request is a retry that only request ids
    /// could make safe).
    pub duplicate_internal: bool,
    /// A membership change runs while the clients do (see the module doc); without one, every
    /// server is a replica of the key and client `c` sends to server `c % servers`.
    pub change: Option<Change>,
    /// Shard floors (`counter_core::floor`): the key's shard starts with a floor that node 1
    /// raised and nodes 1 and 2 promised; node 1 leases it (until it crashes), so its first
    /// round reads at the floor, while node 3, which never heard of the floor, coordinates
    /// the other client's request with a first ballot below it (refused by nodes 1 and 2,
    /// then retried above). Two clients, on nodes 1 and 3. Requests carry ids (what a round
    /// at a floor needs). Not with a change.
    pub floor: bool,
}

pub type History = LinearizabilityTester<Id, CounterSpec>;

impl Config {
    pub fn into_model(self) -> ActorModel<CounterActor, Config, History> {
        let servers = self.servers;
        assert!(
            !(self.floor && self.change.is_some()),
            "floors are modelled without a membership change"
        );
        let layout = Layout {
            servers,
            floor: self.floor,
            duplicate: self.duplicate_internal,
            change: self.change.clone(),
        };
        let (spec, client_server): (CounterSpec, Box<dyn Fn(usize) -> Id>) = match &self.change {
            Some(change) => {
                assert!(
                    change.old.contains(&MOVER) && change.new.contains(&MOVER),
                    "node {MOVER} moves the key: it must be in both sets"
                );
                let all = change.old.iter().chain(&change.new);
                assert!(all.clone().all(|&n| (1..=servers as NodeId).contains(&n)));
                let coordinators = change.coordinators.clone();
                (
                    CounterSpec(SEED),
                    Box::new(move |c| id_of(coordinators[c % coordinators.len()])),
                )
            }
            // With floors: node 1, which leases the floor, and node 3, which never heard of it
            // (its first round goes below the floor: nodes 1 and 2 must refuse it).
            None if self.floor => (CounterSpec(0), Box::new(|c| Id::from([0, 2][c % 2]))),
            None => (CounterSpec(0), Box::new(move |c| Id::from(c % servers))),
        };
        let mut model = ActorModel::new(self.clone(), LinearizabilityTester::new(spec))
            .actors((0..servers).map(|_| CounterActor::Server(layout.clone())))
            .actors((0..self.clients).map(|c| CounterActor::Client {
                server: client_server(c),
                ops: ops_of(c),
            }))
            .init_network(if self.duplicating {
                Network::new_unordered_duplicating([])
            } else {
                Network::new_unordered_nonduplicating([])
            })
            .max_crashes(self.max_crashes)
            .property(Expectation::Always, "linearizable", |_, state| {
                state.history.serialized_history().is_some()
            })
            .property(Expectation::Sometimes, "value chosen", |_, state| {
                state
                    .network
                    .iter_deliverable()
                    .any(|env| matches!(env.msg, Msg::Reply(v) if *v != 0))
            })
            .record_msg_out(|cfg, history, env| match env.msg {
                Msg::Request(op) if usize::from(env.src) >= cfg.servers => {
                    let mut h = history.clone();
                    let _ = h.on_invoke(env.src, *op);
                    Some(h)
                }
                _ => None,
            })
            .record_msg_in(|cfg, history, env| match env.msg {
                Msg::Reply(v) if usize::from(env.dst) >= cfg.servers => {
                    // A second copy of a reply has no invocation left to complete: ignore it.
                    let mut h = history.clone();
                    h.on_return(env.dst, *v).ok()?;
                    Some(h)
                }
                _ => None,
            });
        if self.change.is_some() {
            model = model.property(Expectation::Sometimes, "change completes", |_, state| {
                state
                    .actor_states
                    .iter()
                    .any(|s| matches!(**s, State::Server { version, .. } if version >= NEW))
            });
        }
        if self.floor {
            model = model.property(Expectation::Sometimes, "chosen at the floor", |_, state| {
                let at_floor = |s: &State| match s {
                    State::Server { acceptor, .. } => {
                        matches!(&acceptor.accepted, Some((b, _)) if *b == FLOOR)
                    }
                    _ => false,
                };
                state.actor_states.iter().filter(|s| at_floor(s)).count() >= 2
            });
        }
        if self.lossy {
            model = model.lossy_network(LossyNetwork::Yes);
        }
        model
    }
}

/// Client `c`'s operations: an increment each (by c + 1, so answers tell them apart).
fn ops_of(c: usize) -> Vec<Op> {
    vec![Op::Incr(c as u64 + 1)]
}
