//! The simulated cluster and its event loop: messages, timers, faults, on simulated time.
//!
//! The state types and the loop are here; what the clients do is in `client`, what a node
//! does with a message (acceptor and coordinator, as `counter-node` does) in `node`.

use crate::{Config, Rng, Run, Stats};
use counter_check::Operation;
use counter_core::{AcceptorReply, AcceptorState, Action, Ctx, Decider, QuietRead, Warm};
use counter_proto::{Ballot, Command, NodeId, Register};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

mod client;
mod node;

#[derive(Clone, Debug)]
enum Payload {
    Request {
        client: usize,
        req: u64,
        key: String,
        cmd: Command,
    },
    Response {
        client: usize,
        req: u64,
        result: Result<i64, Failed>,
    },
    Prepare {
        key: String,
        ballot: Ballot,
    },
    Accept {
        key: String,
        ballot: Ballot,
        register: Register,
        next: Option<Ballot>,
    },
    Reply {
        key: String,
        reply: AcceptorReply,
    },
    /// A quiet read's question, and an acceptor's durably accepted ballot and value.
    Read {
        key: String,
    },
    ReadReply {
        key: String,
        accepted: Option<(Ballot, i64)>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failed {
    NotApplied,
    Ambiguous,
    /// The node's `expired`: not applied now, never will be; an earlier attempt may have been.
    Expired,
}

#[derive(Clone, Debug)]
enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        payload: Payload,
    },
    ClientNext(usize),
    ClientTimeout {
        client: usize,
        req: u64,
    },
    PhaseTimeout {
        node: NodeId,
        key: String,
        gen: u64,
    },
    Retry {
        node: NodeId,
        key: String,
        gen: u64,
    },
    Fault,
    /// Every node crashes at once (`Config::blackout`).
    Blackout,
    Heal(NodeId),
    Restart(NodeId),
}

/// Where client messages come from (clients are not nodes; they use ids above the nodes').
const CLIENT_BASE: NodeId = 1_000;
/// Simulated clocks read true time plus this (and the node's offset), so that a session's end
/// is never near 0.
const CLOCK_BASE: u64 = 1_000_000;

struct Lead {
    decider: Decider,
    /// A batch of reads first tries a quiet read (one round trip); `None` once in rounds.
    quiet: Option<QuietRead>,
    waiters: Vec<(usize, u64)>,
    deadline: u64,
    /// Bumped at every step so stale timers are ignored.
    gen: u64,
}

#[derive(Default)]
struct SimNode {
    up: bool,
    epoch: u32,
    /// How far this node's clock runs ahead of true time.
    clock_offset: u64,
    /// Durable acceptor state.
    durable: BTreeMap<String, AcceptorState>,
    /// Volatile view (differs from durable only under `PromiseNotPersisted`).
    volatile: BTreeMap<String, AcceptorState>,
    leads: BTreeMap<String, Lead>,
    queues: BTreeMap<String, Vec<(usize, u64, Command)>>,
    /// Keys whose next round is prepared (volatile: lost in a crash).
    warm: BTreeMap<String, Warm>,
}

/// A client's session (the client library's): one request at a time.
#[derive(Clone, Copy, Debug)]
struct SimSession {
    id: u64,
    expires_ms: u64,
    renew_at: u64,
    seq: u64,
}

struct Client {
    /// The session new requests go in (exactly-once mode).
    session: Option<SimSession>,
    sessions_opened: u64,
    done: usize,
    pending: Option<(u64, usize)>,
    next_req: u64,
    /// The key and command of the pending request (resent as is in exactly-once mode).
    current: Option<(String, Command)>,
    /// How many times the pending request was sent, and when it was first.
    sends: u32,
    first_sent: u64,
}

struct Sim {
    cfg: Config,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Event>>,
    nodes: BTreeMap<NodeId, SimNode>,
    cut: BTreeSet<NodeId>,
    clients: Vec<Client>,
    history: Vec<Operation>,
    stats: Stats,
    /// Print every event (`SIM_TRACE=1`).
    trace: bool,
}

/// Runs one seeded simulation and checks its history.
pub fn run(seed: u64, cfg: &Config) -> Run {
    let mut sim = Sim {
        cfg: cfg.clone(),
        rng: Rng::new(seed),
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: Vec::new(),
        nodes: (1..=cfg.nodes as NodeId)
            .map(|id| {
                (
                    id,
                    SimNode {
                        up: true,
                        epoch: 1,
                        clock_offset: 0,
                        ..SimNode::default()
                    },
                )
            })
            .collect(),
        cut: BTreeSet::new(),
        clients: (0..cfg.clients)
            .map(|_| Client {
                session: None,
                sessions_opened: 0,
                done: 0,
                pending: None,
                next_req: 1,
                current: None,
                sends: 0,
                first_sent: 0,
            })
            .collect(),
        history: Vec::new(),
        stats: Stats::default(),
        trace: std::env::var_os("SIM_TRACE").is_some(),
    };
    for id in 1..=cfg.nodes as NodeId {
        let offset = sim.rng.range(0, cfg.clock_skew);
        sim.nodes.get_mut(&id).expect("node").clock_offset = offset;
    }
    for c in 0..cfg.clients {
        let at = sim.rng.range(0, 20);
        sim.schedule(at, Event::ClientNext(c));
    }
    sim.schedule(cfg.fault_every, Event::Fault);
    if let Some((at, _)) = cfg.blackout {
        sim.schedule(at, Event::Blackout);
    }
    // A hard bound on simulated time, so every run ends.
    let horizon = (cfg.ops_per_client as u64 + 10) * cfg.client_timeout * 2;
    while let Some(Reverse((at, _, idx))) = sim.queue.pop() {
        if at > horizon || sim.all_clients_done() {
            break;
        }
        sim.now = at;
        let event = sim.events[idx].take().expect("each event runs once");
        if sim.trace {
            eprintln!("{at:>6} {event:?}");
        }
        sim.handle(event);
    }
    let verdict = counter_check::check_history(&sim.history, 5_000_000);
    Run {
        seed,
        history: sim.history,
        stats: sim.stats,
        verdict,
    }
}

impl Sim {
    fn schedule(&mut self, after: u64, event: Event) {
        self.seq += 1;
        self.events.push(Some(event));
        self.queue
            .push(Reverse((self.now + after, self.seq, self.events.len() - 1)));
    }

    fn all_clients_done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.done >= self.cfg.ops_per_client && c.pending.is_none())
    }

    /// A node's clock, in "milliseconds since the epoch" (ticks, from a base well above 0).
    fn clock(&self, node: NodeId) -> u64 {
        CLOCK_BASE + self.now + self.nodes[&node].clock_offset
    }

    fn ctx(&self, node: NodeId) -> Ctx {
        Ctx {
            now_ms: self.clock(node),
            limits: self.cfg.limits,
        }
    }

    fn replicas(&self) -> Vec<NodeId> {
        (1..=self.cfg.nodes as NodeId).collect()
    }

    /// Sends with the network's faults; a node's messages to itself are in-process calls.
    fn send(&mut self, from: NodeId, to: NodeId, payload: Payload) {
        self.stats.messages += 1;
        if from == to {
            self.schedule(0, Event::Deliver { from, to, payload });
            return;
        }
        let cut = |n: NodeId| n < CLIENT_BASE && self.cut.contains(&n);
        if (cut(from) || cut(to)) && from < CLIENT_BASE && to < CLIENT_BASE {
            return;
        }
        if self.rng.chance(self.cfg.loss) {
            return;
        }
        // Client requests ride TCP through the router: they may be lost, never duplicated
        // (a duplicated request is a retry, which only request ids can make safe).
        let may_duplicate = !matches!(payload, Payload::Request { .. });
        let copies = if may_duplicate && self.rng.chance(self.cfg.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.range(self.cfg.min_delay, self.cfg.max_delay);
            self.schedule(
                delay,
                Event::Deliver {
                    from,
                    to,
                    payload: payload.clone(),
                },
            );
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::ClientNext(c) => self.client_next(c),
            Event::ClientTimeout { client, req } => {
                let cl = &mut self.clients[client];
                if self.cfg.request_ids && cl.pending.is_some_and(|(r, _)| r == req) {
                    self.resend(client);
                    return;
                }
                if cl.pending.is_some_and(|(r, _)| r == req) {
                    // The op stays `Unknown` in the history.
                    cl.pending = None;
                    self.stats.unknown += 1;
                    let pause = self.rng.range(1, 30);
                    self.schedule(pause, Event::ClientNext(client));
                }
            }
            Event::Deliver { from, to, payload } => self.deliver(from, to, payload),
            Event::PhaseTimeout { node, key, gen } => {
                let action = self.with_lead(node, &key, gen, |l| match l.quiet.take() {
                    // The quiet read got no majority in time: a full round.
                    Some(_) => Some(l.decider.start_round()),
                    None => l.decider.on_phase_timeout(),
                });
                if let Some(action) = action {
                    self.act(node, &key, action);
                }
            }
            Event::Retry { node, key, gen } => {
                let now = self.now;
                let action = self.with_lead(node, &key, gen, |l| {
                    Some(if now >= l.deadline {
                        Action::Failed(l.decider.give_up())
                    } else {
                        l.decider.start_round()
                    })
                });
                if let Some(action) = action {
                    self.act(node, &key, action);
                }
            }
            Event::Fault => self.fault(),
            Event::Blackout => {
                let (_, length) = self.cfg.blackout.expect("scheduled only when set");
                // Every node but the first: it keeps taking requests that cannot be decided,
                // so clients keep retrying through the outage.
                let ids: Vec<NodeId> = self.nodes.keys().copied().skip(1).collect();
                for id in ids {
                    if self.nodes[&id].up {
                        let back = length + self.rng.range(0, 100);
                        self.crash(id, back);
                    }
                }
            }
            Event::Heal(n) => {
                self.cut.remove(&n);
            }
            Event::Restart(n) => {
                let node = self.nodes.get_mut(&n).expect("node");
                node.up = true;
                node.epoch += 1;
                node.volatile = node.durable.clone();
            }
        }
    }

    /// Crashes node `id` (its durable acceptor state survives) and restarts it `back` later.
    fn crash(&mut self, id: NodeId, back: u64) {
        self.stats.crashes += 1;
        let n = self.nodes.get_mut(&id).expect("node");
        n.up = false;
        n.leads.clear();
        n.queues.clear();
        n.volatile.clear();
        n.warm.clear();
        self.schedule(back, Event::Restart(id));
    }

    fn fault(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let down = self.nodes.values().filter(|n| !n.up).count() + self.cut.len();
        // Keep a majority able to work most of the time, so runs make progress.
        let minority = (self.cfg.nodes - 1) / 2;
        if down < minority.max(1) {
            let victim = ids[self.rng.range(0, ids.len() as u64 - 1) as usize];
            let crashable = self.cfg.crashable.is_empty() || self.cfg.crashable.contains(&victim);
            if crashable && self.rng.chance(self.cfg.crash) && self.nodes[&victim].up {
                let back = self.rng.range(self.cfg.restart_min, self.cfg.restart_max);
                self.crash(victim, back);
            } else if self.rng.chance(self.cfg.partition) && !self.cut.contains(&victim) {
                self.stats.partitions += 1;
                self.cut.insert(victim);
                let heal = self.rng.range(50, 600);
                self.schedule(heal, Event::Heal(victim));
            }
        }
        let t = self.cfg.fault_every;
        self.schedule(t, Event::Fault);
    }
}
