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
//! may crash and recover. The search is exhaustive up to a depth (`MODEL_DEPTH`, default 10).
//!
//! Properties: every history is linearizable (stateright's tester, with unanswered operations
//! left in flight, i.e. "unknown"), and sometimes a non-zero value is read back (the search
//! reaches states where a value was chosen).

use counter_core::{AcceptorReply, AcceptorState, Action, Ctx, Decider};
use counter_proto::{Ballot, NodeId, Op, Outcome, Register};
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

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Msg {
    Request(Op),
    Reply(i64),
    Prepare(Ballot),
    Accept(Ballot, Register, Option<Ballot>),
    Acceptor(AcceptorReply),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Phase;

/// Rounds a coordinator may try per operation before giving up (bounds the state space).
const MAX_ATTEMPTS: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[allow(clippy::large_enum_variant)] // states are hashed and cloned, never moved in bulk
pub enum State {
    Server {
        acceptor: AcceptorState,
        epoch: u32,
        lead: Option<(Id, Decider)>,
    },
    Client {
        next: usize,
    },
}

/// What a server keeps across crashes (a client keeps only that it has started).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Durable {
    acceptor: AcceptorState,
    epoch: u32,
}

#[derive(Clone, Debug)]
pub enum CounterActor {
    /// `duplicate`: every acceptor message is sent twice (see [`Config::duplicate_internal`]).
    Server {
        servers: usize,
        duplicate: bool,
    },
    Client {
        server: Id,
        ops: Vec<Op>,
    },
}

fn node_of(id: Id) -> NodeId {
    usize::from(id) as NodeId + 1
}

impl CounterActor {
    fn replicas(servers: usize) -> Vec<NodeId> {
        (1..=servers as NodeId).collect()
    }

    /// Carries out `action` for the server `id`. Like the node, a coordinator reaches its own
    /// acceptor without the network: that reply is fed back at once (and persisted first).
    fn act(
        id: Id,
        (servers, duplicate): (usize, bool),
        state: &mut State,
        action: Action,
        o: &mut Out<Self>,
    ) {
        let copies = if duplicate { 2 } else { 1 };
        let State::Server {
            acceptor,
            epoch,
            lead,
        } = state
        else {
            return;
        };
        let others: Vec<Id> = (0..servers).map(Id::from).filter(|&s| s != id).collect();
        let mut action = action;
        loop {
            let local = match action {
                Action::Prepare(b) => {
                    for _ in 0..copies {
                        o.broadcast(&others, &Msg::Prepare(b));
                    }
                    o.set_timer(Phase, model_timeout());
                    acceptor.prepare(b)
                }
                Action::Accept(b, r, next) => {
                    for _ in 0..copies {
                        o.broadcast(&others, &Msg::Accept(b, r.clone(), next));
                    }
                    o.set_timer(Phase, model_timeout());
                    acceptor.accept(b, r, next)
                }
                Action::Retry { attempt } => {
                    let (_, decider) = lead.as_mut().expect("a lead retries");
                    if attempt < MAX_ATTEMPTS {
                        action = decider.start_round();
                        continue;
                    }
                    // Gives up: the client is never answered (its op stays "unknown").
                    decider.give_up();
                    *lead = None;
                    o.cancel_timer(Phase);
                    return;
                }
                Action::Done(results) => {
                    let (client, _) = lead.take().expect("a lead finishes");
                    if let Some(Outcome::Value(v)) = results.first() {
                        o.send(client, Msg::Reply(*v));
                    }
                    o.cancel_timer(Phase);
                    return;
                }
                Action::Failed(_) => {
                    *lead = None;
                    o.cancel_timer(Phase);
                    return;
                }
            };
            let (next, reply) = local;
            if let Some(next) = next {
                o.save(Durable {
                    acceptor: next.clone(),
                    epoch: *epoch,
                });
                *acceptor = next;
            }
            match lead
                .as_mut()
                .and_then(|(_, d)| d.on_reply(node_of(id), reply))
            {
                Some(next_action) => action = next_action,
                None => return,
            }
        }
    }
}

fn model_timeout() -> std::ops::Range<Duration> {
    Duration::from_secs(1)..Duration::from_secs(2)
}

impl Actor for CounterActor {
    type Msg = Msg;
    type State = State;
    type Timer = Phase;
    type Random = ();
    type Storage = Durable;

    fn on_start(&self, _id: Id, storage: &Option<Durable>, o: &mut Out<Self>) -> State {
        match self {
            CounterActor::Server { .. } => {
                let (acceptor, epoch) = storage
                    .as_ref()
                    .map(|d| (d.acceptor.clone(), d.epoch))
                    .unwrap_or_default();
                // A new incarnation: bump and persist the epoch before doing anything.
                let epoch = epoch + 1;
                o.save(Durable {
                    acceptor: acceptor.clone(),
                    epoch,
                });
                State::Server {
                    acceptor,
                    epoch,
                    lead: None,
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
                    epoch: 0,
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
            CounterActor::Server { servers, duplicate } => {
                let cfg = (*servers, *duplicate);
                let servers = *servers;
                let s = state.to_mut();
                let State::Server {
                    acceptor,
                    epoch,
                    lead,
                } = s
                else {
                    return;
                };
                match msg {
                    Msg::Request(op) => {
                        if lead.is_some() {
                            return; // one operation at a time in the model
                        }
                        let mut decider = Decider::new(
                            node_of(id),
                            *epoch,
                            &Self::replicas(servers),
                            vec![op.into()],
                            acceptor.highest(),
                            Ctx::default(),
                        );
                        let action = decider.start_round();
                        *lead = Some((src, decider));
                        Self::act(id, cfg, s, action, o);
                    }
                    Msg::Prepare(b) | Msg::Accept(b, _, _) => {
                        let (next, reply) = match msg {
                            Msg::Prepare(_) => acceptor.prepare(b),
                            Msg::Accept(_, r, next) => acceptor.accept(b, r, next),
                            _ => unreachable!(),
                        };
                        if let Some(next) = next {
                            // Persisted before the reply is sent.
                            o.save(Durable {
                                acceptor: next.clone(),
                                epoch: *epoch,
                            });
                            *acceptor = next;
                        }
                        for _ in 0..if *duplicate { 2 } else { 1 } {
                            o.send(src, Msg::Acceptor(reply.clone()));
                        }
                    }
                    Msg::Acceptor(reply) => {
                        let action = lead
                            .as_mut()
                            .and_then(|(_, d)| d.on_reply(node_of(src), reply));
                        if let Some(action) = action {
                            Self::act(id, cfg, s, action, o);
                        }
                    }
                    Msg::Reply(_) => {}
                }
            }
        }
    }

    fn on_timeout(&self, id: Id, state: &mut Cow<State>, _timer: &Phase, o: &mut Out<Self>) {
        let CounterActor::Server { servers, duplicate } = self else {
            return;
        };
        let s = state.to_mut();
        let action = match s {
            State::Server {
                lead: Some((_, d)), ..
            } => d.on_phase_timeout(),
            _ => None,
        };
        if let Some(action) = action {
            Self::act(id, (*servers, *duplicate), s, action, o);
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
}

pub type History = LinearizabilityTester<Id, CounterSpec>;

impl Config {
    pub fn into_model(self) -> ActorModel<CounterActor, Config, History> {
        let servers = self.servers;
        let mut model = ActorModel::new(self.clone(), LinearizabilityTester::new(CounterSpec(0)))
            .actors((0..servers).map(|_| CounterActor::Server {
                servers,
                duplicate: self.duplicate_internal,
            }))
            .actors((0..self.clients).map(|c| CounterActor::Client {
                server: Id::from(c % servers),
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
