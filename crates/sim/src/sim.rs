//! The simulated cluster and its event loop: messages, timers, faults, on simulated time.
//!
//! The state types and the loop are here; what the clients do is in `client`, what a node
//! does with a message (acceptor and coordinator, as `counter-node` does) in `node`, the
//! configurations nodes run and the mover that changes them in `membership`.

use crate::{Config, Rng, Run, Stats};
use counter_check::Operation;
use counter_core::{
    AcceptorReply, AcceptorState, Action, Ctx, Decider, FloorSlot, QuietRead, Warm,
};
use counter_proto::{Ballot, Command, Config as ClusterConfig, NodeId, Register};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

mod client;
mod floor;
mod membership;
mod node;

use floor::Raise;
use membership::{Mover, Refusal};

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
    /// Every Prepare, Accept and Read carries the configuration version its coordinator runs
    /// (the fence) and the phase it belongs to (`gen`: what the node's reply future is tied to).
    Prepare {
        key: String,
        ballot: Ballot,
        version: u64,
        gen: u64,
    },
    Accept {
        key: String,
        ballot: Ballot,
        register: Register,
        next: Option<Ballot>,
        version: u64,
        gen: u64,
    },
    Reply {
        key: String,
        reply: AcceptorReply,
    },
    /// A coordinator asks a shard's replicas to promise a floor (`AcceptorMsg::PromiseFloor`),
    /// and an acceptor's answer; `gen` names the raise.
    PromiseFloor {
        shard: u32,
        ballot: Ballot,
        version: u64,
        gen: u64,
    },
    FloorReply {
        shard: u32,
        gen: u64,
        reply: AcceptorReply,
    },
    /// Phase 1 of a round at its shard's floor (`AcceptorMsg::ReadAtFloor`), answered with a
    /// `Reply` (or `Refused`) as a Prepare.
    ReadAtFloor {
        key: String,
        ballot: Ballot,
        version: u64,
        gen: u64,
    },
    /// A quiet read's question, and an acceptor's durably accepted ballot and value. `read`
    /// names the quiet read (unique in the run) and comes back with the answer: in the node,
    /// each answer goes to its own call, so an answer to an earlier read of the key, arriving
    /// late, never counts for a later one.
    Read {
        key: String,
        version: u64,
        gen: u64,
        read: u64,
    },
    ReadReply {
        key: String,
        accepted: Option<(Ballot, i64)>,
        read: u64,
    },
    /// An acceptor's refusal of a Prepare, Accept or Read of phase `gen` (the node's
    /// `StaleConfig`, `NeedConfig`, or "does not hold the shard").
    Refused {
        key: String,
        gen: u64,
        why: Refusal,
    },
    /// A configuration pushed to a node (the mover's install, a coordinator's answer to
    /// `NeedConfig`), and the version it runs after it.
    InstallConfig(Box<ClusterConfig>),
    ConfigInstalled {
        version: u64,
    },
    /// A node's periodic question for the newest configuration, and the answer.
    GetConfig,
    ConfigIs(Box<ClusterConfig>),
    /// The mover's request for a shard's keys (of its `run`), and the answers.
    ListKeys {
        shard: u32,
        version: u64,
        run: u64,
    },
    Keys {
        shard: u32,
        keys: Vec<String>,
        run: u64,
    },
    ListRefused {
        shard: u32,
        run: u64,
        why: Refusal,
    },
    /// Acceptor messages (Prepare, Accept, Read) of any keys from one node to another, sent
    /// within `Config::batch_window` of each other: one frame (`Msg::Batch`), so delivered
    /// (or lost, or duplicated) together, each then handled as if it had come alone.
    Batch(Vec<Payload>),
}

impl Payload {
    /// What `counter-net` carries in a `Msg::Batch` (the `Msg::Acceptor` messages).
    fn batchable(&self) -> bool {
        matches!(
            self,
            Payload::Prepare { .. }
                | Payload::Accept { .. }
                | Payload::Read { .. }
                | Payload::PromiseFloor { .. }
                | Payload::ReadAtFloor { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failed {
    NotApplied,
    Ambiguous,
    /// The node's `expired`: not applied now, never will be; an earlier attempt may have been.
    Expired,
    /// The node's `NOT_A_MEMBER` (it left the cluster, or has not joined yet): nothing was run;
    /// the router tries another replica.
    NotAMember,
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
    /// A raise of a shard's floor (`gen`) got no majority in time.
    FloorTimeout {
        node: NodeId,
        shard: u32,
        gen: u64,
    },
    Fault,
    /// Every node crashes at once (`Config::blackout`).
    Blackout,
    Heal(NodeId),
    /// Heals `heal`, and may cut off one of `then` (`membership` setting).
    HealThenCut {
        heal: NodeId,
        then: Vec<NodeId>,
    },
    Restart(NodeId),
    /// A node asks the members for a newer configuration (`membership` setting).
    Refresh(NodeId),
    /// The routers move to the newest configuration the live nodes run.
    RouterRefresh,
    /// The mover's timer: (re)start a command, resend, poll, retry (`run`: the command run it
    /// belongs to).
    Mover {
        run: u64,
    },
    /// An identity round of the mover's `run` ended.
    IdentityDone {
        run: u64,
        key: String,
        ok: bool,
    },
}

/// Who waits for a command a coordinator runs.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Waiter {
    /// Client `0`'s request `1`.
    Client(usize, u64),
    /// An identity round on `key` of the mover's run (a move's rescan).
    Mover { run: u64, key: String },
}

/// A command queued at a coordinator: who waits, the command, and whether it is an identity
/// round (a read that must be written back: never a quiet read).
#[derive(Clone, Debug)]
struct Queued {
    waiter: Waiter,
    cmd: Command,
    write_back: bool,
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
    /// The quiet read's name (`Payload::Read`); 0 if none was tried.
    read: u64,
    waiters: Vec<Waiter>,
    deadline: u64,
    /// A new name at every step (unique in the run: `Sim::phases`), so that stale timers and
    /// refusals are ignored.
    gen: u64,
    /// The key's shard, the configuration version the rounds run under, and the replicas they
    /// send to (both sets while the shard moves).
    shard: u32,
    version: u64,
    targets: Vec<NodeId>,
    /// The floor its first round read at, until that round ends (`counter_core::floor`).
    at_floor: Option<Ballot>,
}

struct SimNode {
    up: bool,
    /// Lost for good with its disk (a replaced node): never restarts.
    gone: bool,
    epoch: u32,
    /// The configuration it runs (durable: installed before it is used).
    config: ClusterConfig,
    /// How far this node's clock runs ahead of true time.
    clock_offset: u64,
    /// Durable acceptor state.
    durable: BTreeMap<String, AcceptorState>,
    /// Volatile view (differs from durable only under `PromiseNotPersisted`).
    volatile: BTreeMap<String, AcceptorState>,
    /// Durable floors of its shards (`counter_core::floor`).
    floors: BTreeMap<u32, Ballot>,
    /// The floors it leases as a coordinator, per shard, and its raises in flight (volatile).
    leases: BTreeMap<u32, FloorSlot>,
    raises: BTreeMap<u32, Raise>,
    leads: BTreeMap<String, Lead>,
    queues: BTreeMap<String, Vec<Queued>>,
    /// Keys whose next round is prepared, with the configuration version it was prepared
    /// under (volatile: lost in a crash).
    warm: BTreeMap<String, (u64, Warm)>,
}

impl SimNode {
    /// A node up with an empty store, running `config`.
    fn new(config: ClusterConfig, clock_offset: u64) -> SimNode {
        SimNode {
            up: true,
            gone: false,
            epoch: 1,
            clock_offset,
            config,
            durable: BTreeMap::new(),
            volatile: BTreeMap::new(),
            floors: BTreeMap::new(),
            leases: BTreeMap::new(),
            raises: BTreeMap::new(),
            leads: BTreeMap::new(),
            queues: BTreeMap::new(),
            warm: BTreeMap::new(),
        }
    }
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
    /// Keys the last reader has still to read (`membership` setting, once the changes and the
    /// clients are done); `None` before it starts.
    final_keys: Option<Vec<String>>,
    /// The membership changes (`membership` setting), and the configuration register.
    mover: Mover,
    /// The configuration the routers route by (refreshed periodically, so it may lag).
    router: ClusterConfig,
    history: Vec<Operation>,
    stats: Stats,
    /// Print every event (`SIM_TRACE=1`).
    trace: bool,
    /// The batch each node is filling for each peer: when it was opened, and the events that
    /// deliver its copies (none if it was lost).
    batches: BTreeMap<(NodeId, NodeId), (u64, Vec<usize>)>,
    /// Phases (quiet reads, and each Prepare or Accept phase of a round) started so far: each
    /// one's name (`Lead::gen`, `Lead::read`), unique in the run.
    phases: u64,
}

/// Runs one seeded simulation and checks its history.
pub fn run(seed: u64, cfg: &Config) -> Run {
    let bootstrap = membership::bootstrap(cfg);
    // The last reader of the `membership` setting is one more client.
    let clients = cfg.clients + usize::from(cfg.membership);
    let mut sim = Sim {
        cfg: cfg.clone(),
        rng: Rng::new(seed),
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: Vec::new(),
        nodes: (1..=cfg.nodes as NodeId)
            .map(|id| (id, SimNode::new(bootstrap.clone(), 0)))
            .collect(),
        cut: BTreeSet::new(),
        final_keys: None,
        router: bootstrap.clone(),
        mover: Mover::new(bootstrap),
        clients: (0..clients)
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
        batches: BTreeMap::new(),
        phases: 0,
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
    if cfg.membership {
        sim.start_membership();
    }
    // A hard bound on simulated time, so every run ends.
    let horizon = (cfg.ops_per_client as u64 + 10) * cfg.client_timeout * 2;
    while let Some(Reverse((at, _, idx))) = sim.queue.pop() {
        if at > horizon || sim.all_done() {
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

    /// Whether the clients are done; in the `membership` setting, the changes and the last
    /// reads too (starting those when the rest is done).
    fn all_done(&mut self) -> bool {
        let clients = self.clients[..self.cfg.clients]
            .iter()
            .all(|c| c.done >= self.cfg.ops_per_client && c.pending.is_none());
        if !clients || !self.cfg.membership {
            return clients;
        }
        if !self.mover.done() {
            return false;
        }
        match &self.final_keys {
            None => {
                self.final_keys = Some((0..self.cfg.keys).map(|k| format!("k{k}")).collect());
                self.schedule(0, Event::ClientNext(self.cfg.clients));
                false
            }
            Some(keys) => keys.is_empty() && self.clients[self.cfg.clients].pending.is_none(),
        }
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

    /// Sends with the network's faults; a node's messages to itself are in-process calls.
    /// Acceptor messages to a peer join the batch opened to it within `batch_window` (still
    /// on its way), as `counter-net`'s writer puts the acceptor messages waiting together into
    /// one frame.
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
        let batching = self.cfg.batch_window > 0 && payload.batchable();
        if batching {
            if let Some(copies) = self.open_batch(from, to) {
                self.stats.batched += 1;
                for idx in copies {
                    if let Some(Event::Deliver {
                        payload: Payload::Batch(items),
                        ..
                    }) = &mut self.events[idx]
                    {
                        items.push(payload.clone());
                    }
                }
                return;
            }
        }
        let payload = if batching {
            self.batches.insert((from, to), (self.now, Vec::new()));
            Payload::Batch(vec![payload])
        } else {
            payload
        };
        if self.rng.chance(self.cfg.loss) {
            return;
        }
        // Client requests ride TCP through the router: they may be lost, never duplicated
        // (a duplicated request is a retry, which only request ids can make safe). Nor is a
        // `NOT_A_MEMBER` answer, on which the router sends the request to another replica.
        let may_duplicate = !matches!(
            payload,
            Payload::Request { .. }
                | Payload::Response {
                    result: Err(Failed::NotAMember),
                    ..
                }
        );
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
            if let (Payload::Batch(_), Some((_, events))) =
                (&payload, self.batches.get_mut(&(from, to)))
            {
                events.push(self.events.len() - 1);
            }
        }
    }

    /// The delivery events of the batch `from` has open to `to`, if one was opened within
    /// the batch window and none of its copies has been delivered yet (a lost batch: no
    /// events, and what joins it is lost with it).
    fn open_batch(&self, from: NodeId, to: NodeId) -> Option<Vec<usize>> {
        let (opened, events) = self.batches.get(&(from, to))?;
        let pending = events.iter().all(|&idx| self.events[idx].is_some());
        (self.now < opened + self.cfg.batch_window && pending).then(|| events.clone())
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
                let quiet = self.with_lead(node, &key, gen, |l| l.quiet.take().is_some());
                let action = match quiet {
                    None => None,
                    // The quiet read got no majority in time: a full round.
                    Some(true) => Some(self.start_round(node, &key)),
                    Some(false) => self
                        .with_lead(node, &key, gen, |l| l.decider.on_phase_timeout())
                        .flatten(),
                };
                if let Some(action) = action {
                    self.act(node, &key, action);
                }
            }
            Event::FloorTimeout { node, shard, gen } => self.floor_timeout(node, shard, gen),
            Event::Retry { node, key, gen } => {
                let now = self.now;
                let late = self.with_lead(node, &key, gen, |l| now >= l.deadline);
                let action = match late {
                    None => None,
                    Some(true) => {
                        self.with_lead(node, &key, gen, |l| Action::Failed(l.decider.give_up()))
                    }
                    Some(false) => Some(self.start_round(node, &key)),
                };
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
            Event::HealThenCut { heal, then } => self.heal_then_cut(heal, &then),
            Event::Restart(n) => {
                let node = self.nodes.get_mut(&n).expect("node");
                if node.gone {
                    return;
                }
                node.up = true;
                node.epoch += 1;
                node.volatile = node.durable.clone();
                self.drop_unheld(n);
            }
            Event::Refresh(n) => self.refresh(n),
            Event::RouterRefresh => self.router_refresh(),
            Event::Mover { run } => self.mover_tick(run),
            Event::IdentityDone { run, key, ok } => self.identity_done(run, &key, ok),
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
        n.leases.clear();
        n.raises.clear();
        self.schedule(back, Event::Restart(id));
    }

    /// Whether one more node may go down or be cut off: fewer than a minority of the members
    /// of the newest configuration are (every node but in the `membership` setting), so that a
    /// majority can work most of the time and runs make progress.
    fn may_fault(&self) -> bool {
        let members = &self.mover.register().members;
        let down = members
            .keys()
            .filter(|id| self.nodes.get(id).is_none_or(|n| !n.up))
            .count()
            + self.cut.len();
        let minority = (members.len() - 1) / 2;
        down < minority.max(1)
    }

    fn fault(&mut self) {
        let ids: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.gone)
            .map(|(&id, _)| id)
            .collect();
        if self.may_fault() {
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
