//! Deterministic simulation of a counter cluster, from a seed.
//!
//! Why a simulator over the pure core rather than turmoil over the real `net` code: every
//! decision that matters for safety (acceptor rules, ballots, counting replies, what to propose,
//! how to report an unfinished batch) is in `counter-core`, and the node's tokio code only
//! carries messages for it ([`counter_core::Decider`] and [`counter_core::AcceptorState`] are
//! driven here exactly as the node drives them). A simulator of our own controls every fault
//! precisely (loss, duplication, reordering, delay, partitions, crashes that keep durable
//! state and lose volatile state) and runs thousands of seeds a second in one thread. What it
//! does not cover, the framing and the RocksDB store, is covered by the real-process tests.
//!
//! The model: `nodes` nodes, each an acceptor of every key (R = nodes) and a coordinator of
//! what clients send it; clients issue operations one at a time on a few keys through a random
//! live node (the router's job), with a timeout. Every history is checked by `counter-check`.

use counter_check::{OpKind, Operation, Outcome, Verdict};
use counter_core::{
    AcceptorReply, AcceptorState, Action, Ctx, Decider, Failure, Limits, QuietRead, ReadStep, Warm,
};
use counter_proto::{Ballot, Command, NodeId, Op, Register, RequestId};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// A small, stable PRNG (SplitMix64): the same seed gives the same run on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }
}

/// Fault and workload settings of a run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The preset it came from (`--setting` of `counter-sim`), for replay commands.
    pub setting: &'static str,
    pub nodes: usize,
    pub clients: usize,
    pub keys: usize,
    pub ops_per_client: usize,
    /// Message loss, duplication (per mille).
    pub loss: u64,
    pub duplicate: u64,
    /// Message delay range in ticks (reordering comes from it).
    pub min_delay: u64,
    pub max_delay: u64,
    /// Per mille chance, at each fault tick, of crashing a node / cutting one off.
    pub crash: u64,
    pub partition: u64,
    /// Ticks between fault decisions.
    pub fault_every: u64,
    /// Nodes clients send to (coordinators); empty: any live node.
    pub coordinators: Vec<NodeId>,
    /// Nodes that may crash; empty: any.
    pub crashable: Vec<NodeId>,
    /// How long a crashed node stays down, in ticks.
    pub restart_min: u64,
    pub restart_max: u64,
    /// A client's timeout and a coordinator's deadline per batch.
    pub client_timeout: u64,
    pub coordinator_deadline: u64,
    pub phase_timeout: u64,
    /// Exactly-once mode: mutating commands carry request ids, and a client whose outcome is
    /// unknown (timeout, ambiguous failure) sends the same request again through another live
    /// node until it is answered. The history must be linearizable with every retried request
    /// counted once.
    pub request_ids: bool,
    /// Exactly-once mode: a client stops resending a request this long after it first sent it
    /// and reports its outcome unknown (the client library's timeout); a session takes a new
    /// request only if this deadline ends before the session's renewal time (its rule).
    pub request_deadline: u64,
    /// What registers keep of their clients, in simulated ticks for the times (the node's
    /// rules, with small bounds so that sessions end and entries go within a run).
    pub limits: Limits,
    /// Each node's clock runs this many ticks ahead of true time, at most (drawn per node and
    /// run): with `limits.skew_ms` or less, no live session may be refused.
    pub clock_skew: u64,
    /// Planted bugs, for showing that the simulation catches them (see `tools/plant-bugs.sh`).
    pub mutation: Mutation,
}

/// Bugs that can be planted in the simulated cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// Acceptors reply to a Prepare without persisting the promise (lost on crash).
    PromiseNotPersisted,
    /// Coordinators retry an ambiguous batch from scratch (applying it again).
    RetryAmbiguous,
    /// Reads answered from the coordinator's own acceptor, without a round.
    ReadOneReplica,
    /// Coordinators drop the request ids of the commands they run (no deduplication), while
    /// clients keep retrying unknown outcomes.
    ForgetRequestIds,
    /// A quiet read answers with the first replica's report instead of a majority's.
    QuietReadAnyReply,
    /// Nodes answer an expired request as "not applied" (the first exactly-once design's
    /// `invalid: request expired`), though an earlier attempt may have applied it.
    ExpiredMeansNotApplied,
}

impl Config {
    pub fn cluster(nodes: usize) -> Config {
        Config {
            setting: "cluster",
            nodes,
            clients: 4,
            keys: 2,
            ops_per_client: 25,
            loss: 50,
            duplicate: 30,
            min_delay: 1,
            max_delay: 40,
            crash: 120,
            partition: 120,
            fault_every: 60,
            restart_min: 50,
            restart_max: 600,
            coordinators: Vec::new(),
            crashable: Vec::new(),
            client_timeout: 1_500,
            coordinator_deadline: 1_000,
            phase_timeout: 120,
            request_ids: false,
            // The client library's rule: a request's retries end well within the margin a
            // session is renewed by (2 × skew before its end): deadline + coordinator
            // deadline + two network delays <= skew, with clocks up to `skew` apart.
            request_deadline: 4_500,
            limits: Limits {
                max_clients: 256,
                idle_ms: 24_000,
                skew_ms: 6_000,
            },
            clock_skew: 0,
            mutation: Mutation::None,
        }
    }

    /// Exactly-once with sessions: many clients on one key, sessions that end and are renewed
    /// within a run, node clocks apart by as much as the limits allow. No live client may be
    /// refused (`Stats::expired` stays 0) and every history is linearizable.
    pub fn sessions(nodes: usize) -> Config {
        Config {
            setting: "sessions",
            clients: 8,
            keys: 1,
            ops_per_client: 20,
            request_ids: true,
            limits: Limits {
                max_clients: 16,
                ..Config::cluster(nodes).limits
            },
            clock_skew: 6_000,
            ..Config::cluster(nodes)
        }
    }

    /// A preset by name (`cluster`, `hostile`, `sessions`, `crowded`).
    pub fn setting(name: &str, nodes: usize) -> Option<Config> {
        Some(match name {
            "cluster" => Config::cluster(nodes),
            "hostile" => Config::hostile(nodes),
            "sessions" => Config::sessions(nodes),
            "crowded" => Config::crowded(nodes),
            _ => return None,
        })
    }

    /// True when no request may be answered expired: request ids in sessions, clocks within
    /// the skew the limits allow, and keys that keep every session that writes them (each
    /// client has at most two sessions with entries: the current one and the one before).
    pub fn expects_no_expired(&self) -> bool {
        self.request_ids
            && self.clock_skew <= self.limits.skew_ms
            && self.limits.max_clients >= 2 * self.clients
    }

    /// Like [`Config::sessions`], but a key keeps fewer clients than write it, and two
    /// coordinators compete: entries are dropped while their requests are in doubt, so some
    /// requests are answered expired (an unknown outcome), never "not applied".
    pub fn crowded(nodes: usize) -> Config {
        Config {
            setting: "crowded",
            clients: 4,
            keys: 2,
            ops_per_client: 10,
            limits: Limits {
                max_clients: 1,
                ..Config::sessions(nodes).limits
            },
            coordinators: vec![1, 2],
            ..Config::sessions(nodes)
        }
    }

    /// Two coordinators competing on one key while the other nodes (pure acceptors) crash
    /// often and restart quickly: the setting that exposes bugs needing a crash between a
    /// reply and the next message (planted-bug runs). Coordinators do not crash here, so few
    /// outcomes are unknown and histories stay quick to check.
    pub fn hostile(nodes: usize) -> Config {
        Config {
            setting: "hostile",
            clients: 6,
            keys: 1,
            ops_per_client: 15,
            crash: 500,
            partition: 100,
            fault_every: 15,
            restart_min: 5,
            restart_max: 60,
            coordinators: vec![1, 2],
            crashable: (3..=nodes as NodeId).collect(),
            ..Config::cluster(nodes)
        }
    }
}

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

/// Counts of what happened in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub crashes: usize,
    pub partitions: usize,
    pub messages: usize,
    pub chosen_values: usize,
    /// Requests resent by their clients after an unknown outcome (exactly-once mode).
    pub resent: usize,
    /// Requests answered expired (their session ended or their key forgot it): 0 unless a key
    /// has more clients than it keeps, or the clocks are further apart than the limits allow.
    pub expired: usize,
    /// Sessions the clients opened (exactly-once mode).
    pub sessions: usize,
    /// Batches that started in phase 2, prepared by the round before (one round trip).
    pub warm_rounds: usize,
}

/// A finished run.
pub struct Run {
    pub seed: u64,
    pub history: Vec<Operation>,
    pub stats: Stats,
    pub verdict: Verdict,
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

    /// The request id of client `c`'s next mutating request: in its session, or in a new one
    /// (opened at a random live node, by that node's clock) once it is time to renew.
    fn next_request(&mut self, c: usize) -> RequestId {
        let now = self.now;
        // The client library's rule: a session takes a new request only if the request's
        // whole deadline ends before the session's renewal time.
        let deadline = self.cfg.request_deadline;
        let renew = self.clients[c]
            .session
            .is_none_or(|s| now.saturating_add(deadline) >= s.renew_at);
        if renew {
            let live: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.up)
                .map(|(&id, _)| id)
                .collect();
            let opener = if live.is_empty() {
                1
            } else {
                live[self.rng.range(0, live.len() as u64 - 1) as usize]
            };
            let life = self.cfg.limits.session_life(0);
            let expires_ms = self.clock(opener) + life;
            let cl = &mut self.clients[c];
            cl.sessions_opened += 1;
            cl.session = Some(SimSession {
                id: ((c as u64) << 32) | cl.sessions_opened,
                expires_ms,
                renew_at: now + self.cfg.limits.renew_after_ms(life),
                seq: 0,
            });
            self.stats.sessions += 1;
        }
        let s = self.clients[c].session.as_mut().expect("a session");
        s.seq += 1;
        RequestId {
            client: s.id,
            seq: s.seq,
            expires_ms: s.expires_ms,
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

    /// Runs `f` on the lead of `key` at `node` if it is still the one the timer was for.
    fn with_lead(
        &mut self,
        node: NodeId,
        key: &str,
        gen: u64,
        f: impl FnOnce(&mut Lead) -> Option<Action>,
    ) -> Option<Action> {
        let n = self.nodes.get_mut(&node)?;
        if !n.up {
            return None;
        }
        let lead = n.leads.get_mut(key)?;
        if lead.gen != gen {
            return None;
        }
        f(lead)
    }

    fn client_next(&mut self, c: usize) {
        if self.clients[c].done >= self.cfg.ops_per_client {
            return;
        }
        let key = format!("k{}", self.rng.range(0, self.cfg.keys as u64 - 1));
        let op = match self.rng.range(0, 99) {
            0..=59 => Op::Incr(self.rng.range(1, 3)),
            60..=74 => Op::Decr(1),
            75..=94 => Op::Get,
            _ => Op::Reset,
        };
        let req = self.clients[c].next_req;
        self.clients[c].next_req += 1;
        self.clients[c].done += 1;
        let request = (self.cfg.request_ids && !op.is_read()).then(|| self.next_request(c));
        let cmd = Command {
            op,
            request,
            ..Command::default()
        };
        let index = self.history.len();
        self.history.push(Operation {
            key: key.clone(),
            kind: match op {
                Op::Incr(d) => OpKind::Incr(d),
                Op::Decr(d) => OpKind::Decr(d),
                Op::Get => OpKind::Get,
                Op::Reset => OpKind::Reset,
                Op::Set(_) | Op::Cas { .. } => unreachable!("not generated"),
            },
            call: self.now,
            ret: u64::MAX,
            outcome: Outcome::Unknown,
            client: c as u32,
        });
        self.clients[c].pending = Some((req, index));
        self.clients[c].current = Some((key, cmd));
        self.clients[c].sends = 0;
        self.clients[c].first_sent = self.now;
        self.dispatch(c, true);
    }

    /// The client sends its pending request again (same request id) after an unknown outcome.
    fn resend(&mut self, c: usize) {
        let cl = &self.clients[c];
        if self.now >= cl.first_sent.saturating_add(self.cfg.request_deadline) {
            // The deadline passed: the outcome stays unknown (and open-ended: an attempt may
            // still be applied later, so the history keeps no return time).
            self.clients[c].pending = None;
            self.stats.unknown += 1;
            let pause = self.rng.range(1, 30);
            self.schedule(pause, Event::ClientNext(c));
            return;
        }
        self.stats.resent += 1;
        self.dispatch(c, false);
    }

    /// Sends the client's pending request through a random live node (the router's job).
    /// `first`: never sent before, so "no live node" means it was not applied.
    fn dispatch(&mut self, c: usize, first: bool) {
        let (req, index) = self.clients[c].pending.expect("a pending request");
        let (key, cmd) = self.clients[c].current.clone().expect("a current command");
        // The router: a live node, chosen at random; none live means "not sent".
        let live: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, n)| {
                n.up && (self.cfg.coordinators.is_empty() || self.cfg.coordinators.contains(id))
            })
            .map(|(&id, _)| id)
            .collect();
        if live.is_empty() && !first {
            // Sent before, so it may have been applied: keep trying later.
            self.schedule(10, Event::ClientTimeout { client: c, req });
            return;
        }
        if live.is_empty() {
            self.clients[c].pending = None;
            self.history[index].outcome = Outcome::Failed;
            self.history[index].ret = self.now;
            self.stats.failed += 1;
            self.schedule(10, Event::ClientNext(c));
            return;
        }
        let to = live[self.rng.range(0, live.len() as u64 - 1) as usize];
        self.clients[c].sends += 1;
        let timeout = self.cfg.client_timeout;
        self.schedule(timeout, Event::ClientTimeout { client: c, req });
        self.send(
            CLIENT_BASE + c as NodeId,
            to,
            Payload::Request {
                client: c,
                req,
                key,
                cmd,
            },
        );
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, payload: Payload) {
        if to >= CLIENT_BASE {
            if let Payload::Response {
                client,
                req,
                result,
            } = payload
            {
                self.client_answer(client, req, result);
            }
            return;
        }
        if !self.nodes[&to].up {
            return;
        }
        match payload {
            Payload::Request {
                client,
                req,
                key,
                mut cmd,
            } => {
                if self.cfg.mutation == Mutation::ForgetRequestIds {
                    cmd.request = None;
                }
                if self.cfg.mutation == Mutation::ReadOneReplica && cmd.op == Op::Get {
                    let v = self.nodes[&to]
                        .volatile
                        .get(&key)
                        .and_then(|s| s.accepted.as_ref())
                        .map(|(_, r)| r.value)
                        .unwrap_or(0);
                    self.send(
                        to,
                        from,
                        Payload::Response {
                            client,
                            req,
                            result: Ok(v),
                        },
                    );
                    return;
                }
                // The node's intake check of the request id, by its own clock: `expired`
                // (node.rs).
                if counter_core::change::check_request(&cmd, &self.ctx(to)).is_err() {
                    self.send(
                        to,
                        from,
                        Payload::Response {
                            client,
                            req,
                            result: Err(Failed::Expired),
                        },
                    );
                    return;
                }
                let node = self.nodes.get_mut(&to).expect("node");
                node.queues
                    .entry(key.clone())
                    .or_default()
                    .push((client, req, cmd));
                if !node.leads.contains_key(&key) {
                    self.start_lead(to, &key);
                }
            }
            Payload::Prepare { key, ballot } => {
                let reply = self.acceptor(to, &key, |s| s.prepare(ballot), true);
                self.send(to, from, Payload::Reply { key, reply });
            }
            Payload::Accept {
                key,
                ballot,
                register,
                next,
            } => {
                let reply = self.acceptor(to, &key, |s| s.accept(ballot, register, next), false);
                self.send(to, from, Payload::Reply { key, reply });
            }
            Payload::Reply { key, reply } => {
                let action = self
                    .nodes
                    .get_mut(&to)
                    .and_then(|n| n.leads.get_mut(&key))
                    .and_then(|l| l.decider.on_reply(from, reply));
                if let Some(action) = action {
                    self.act(to, &key, action);
                }
            }
            Payload::Read { key } => {
                let accepted = self.nodes[&to]
                    .durable
                    .get(&key)
                    .and_then(|s| s.accepted.as_ref())
                    .map(|(b, r)| (*b, r.value));
                self.send(to, from, Payload::ReadReply { key, accepted });
            }
            Payload::ReadReply { key, accepted } => self.on_read_reply(to, from, &key, accepted),
            Payload::Response { .. } => {}
        }
    }

    /// Applies an acceptor rule at `node`, persisting the change before the reply (unless the
    /// `PromiseNotPersisted` bug is planted and this is a promise).
    fn acceptor(
        &mut self,
        node: NodeId,
        key: &str,
        rule: impl FnOnce(&AcceptorState) -> (Option<AcceptorState>, AcceptorReply),
        is_prepare: bool,
    ) -> AcceptorReply {
        let planted = self.cfg.mutation == Mutation::PromiseNotPersisted;
        let n = self.nodes.get_mut(&node).expect("node");
        let current = n.volatile.get(key).cloned().unwrap_or_default();
        let (next, reply) = rule(&current);
        if let Some(state) = next {
            match &state.accepted {
                // The planted bug forgets promises: a Prepare's, and the one an Accept carries.
                _ if planted && is_prepare => {}
                Some((ballot, _)) if planted => {
                    let forgetful = AcceptorState {
                        promised: *ballot,
                        ..state.clone()
                    };
                    n.durable.insert(key.to_string(), forgetful);
                }
                _ => {
                    n.durable.insert(key.to_string(), state.clone());
                }
            }
            n.volatile.insert(key.to_string(), state);
        }
        reply
    }

    fn start_lead(&mut self, node: NodeId, key: &str) {
        let replicas = self.replicas();
        let deadline = self.now + self.cfg.coordinator_deadline;
        let ctx = self.ctx(node);
        let n = self.nodes.get_mut(&node).expect("node");
        let Some(mut queue) = n.queues.remove(key).filter(|q| !q.is_empty()) else {
            return;
        };
        // The node's batching: at most as many request clients as a register keeps.
        let len = counter_core::change::batch_len(queue.iter().map(|q| q.2), &ctx.limits);
        let rest = queue.split_off(len);
        let batch = queue;
        if !rest.is_empty() {
            n.queues.insert(key.to_string(), rest);
        }
        let seen = n
            .volatile
            .get(key)
            .map(|s| s.highest())
            .unwrap_or(Ballot::ZERO);
        let ops = batch.iter().map(|&(_, _, op)| op).collect();
        let decider = Decider::new(node, n.epoch, &replicas, ops, seen, ctx);
        let reads = batch.iter().all(|(_, _, cmd)| cmd.op.is_read());
        let mut lead = Lead {
            decider,
            quiet: None,
            waiters: batch.iter().map(|&(c, r, _)| (c, r)).collect(),
            deadline,
            gen: 0,
        };
        if reads {
            lead.quiet = Some(QuietRead::new(&replicas));
            lead.gen = 1;
            n.leads.insert(key.to_string(), lead);
            let payload = Payload::Read { key: key.into() };
            self.start_phase(node, key, 1, payload);
            return;
        }
        let action = match n.warm.remove(key) {
            Some(warm) => lead.decider.start_warm(warm),
            None => lead.decider.start_round(),
        };
        if matches!(action, Action::Accept(..)) {
            self.stats.warm_rounds += 1;
        }
        n.leads.insert(key.to_string(), lead);
        self.act(node, key, action);
    }

    /// Feeds an acceptor's report to a quiet read: answers the batch, or goes to a full round.
    fn on_read_reply(
        &mut self,
        node: NodeId,
        from: NodeId,
        key: &str,
        accepted: Option<(Ballot, i64)>,
    ) {
        let any_reply = self.cfg.mutation == Mutation::QuietReadAnyReply;
        let Some(lead) = self.nodes.get_mut(&node).and_then(|n| n.leads.get_mut(key)) else {
            return;
        };
        let Some(quiet) = lead.quiet.as_mut() else {
            return;
        };
        let step = match quiet.on_reply(from, accepted) {
            ReadStep::Pending if any_reply => ReadStep::Value(accepted.map_or(0, |(_, v)| v)),
            step => step,
        };
        match step {
            ReadStep::Pending => {}
            ReadStep::Value(v) => {
                let lead = self.finish_lead(node, key);
                for (client, req) in lead.waiters {
                    self.respond(node, client, req, Ok(v));
                }
            }
            ReadStep::Disagree => {
                lead.quiet = None;
                let action = lead.decider.start_round();
                self.act(node, key, action);
            }
        }
    }

    fn act(&mut self, node: NodeId, key: &str, action: Action) {
        let gen = {
            let lead = self
                .nodes
                .get_mut(&node)
                .and_then(|n| n.leads.get_mut(key))
                .expect("acting on a live lead");
            lead.gen += 1;
            lead.gen
        };
        match action {
            Action::Prepare(ballot) => {
                let payload = Payload::Prepare {
                    key: key.into(),
                    ballot,
                };
                self.start_phase(node, key, gen, payload);
            }
            Action::Accept(ballot, register, next) => {
                let payload = Payload::Accept {
                    key: key.into(),
                    ballot,
                    register,
                    next,
                };
                self.start_phase(node, key, gen, payload);
            }
            Action::Retry { attempt } => {
                let cap = (2u64 << attempt.min(6)).min(100);
                let wait = self.rng.range(1, cap);
                self.schedule(
                    wait,
                    Event::Retry {
                        node,
                        key: key.into(),
                        gen,
                    },
                );
            }
            Action::Done(results) => {
                self.stats.chosen_values += 1;
                let n = self.nodes.get_mut(&node).expect("node");
                if let Some(warm) = n.leads.get(key).and_then(|l| l.decider.warm()) {
                    n.warm.insert(key.to_string(), warm);
                }
                let lead = self.finish_lead(node, key);
                for (&(client, req), outcome) in lead.waiters.iter().zip(results) {
                    // What the node answers (node.rs, outcome_msg): expired is its own kind.
                    let result = match outcome {
                        counter_proto::Outcome::Value(v) => Ok(v),
                        counter_proto::Outcome::Expired
                            if self.cfg.mutation == Mutation::ExpiredMeansNotApplied =>
                        {
                            Err(Failed::NotApplied)
                        }
                        counter_proto::Outcome::Expired => Err(Failed::Expired),
                        _ => Err(Failed::NotApplied),
                    };
                    self.respond(node, client, req, result);
                }
            }
            Action::Failed(f) => {
                let kind = match f {
                    Failure::NotApplied(_) => Failed::NotApplied,
                    Failure::Ambiguous(_) => Failed::Ambiguous,
                };
                let lead = self.finish_lead(node, key);
                if kind == Failed::Ambiguous && self.cfg.mutation == Mutation::RetryAmbiguous {
                    // Planted bug: put the ops back in the queue as if nothing had happened.
                    let ops = lead.decider.ops().to_vec();
                    let n = self.nodes.get_mut(&node).expect("node");
                    let q = n.queues.entry(key.to_string()).or_default();
                    for (&(c, r), op) in lead.waiters.iter().zip(ops) {
                        q.insert(0, (c, r, op));
                    }
                } else {
                    for &(client, req) in &lead.waiters {
                        self.respond(node, client, req, Err(kind));
                    }
                }
            }
        }
    }

    /// Answers a client's request.
    fn respond(&mut self, node: NodeId, client: usize, req: u64, result: Result<i64, Failed>) {
        let payload = Payload::Response {
            client,
            req,
            result,
        };
        self.send(node, CLIENT_BASE + client as NodeId, payload);
    }

    /// Sends a phase's request to every replica and arms the phase's timeout.
    fn start_phase(&mut self, node: NodeId, key: &str, gen: u64, payload: Payload) {
        for to in self.replicas() {
            self.send(node, to, payload.clone());
        }
        let t = self.cfg.phase_timeout;
        let key = key.to_string();
        self.schedule(t, Event::PhaseTimeout { node, key, gen });
    }

    /// Removes the finished lead and starts the next batch of the key, if any.
    fn finish_lead(&mut self, node: NodeId, key: &str) -> Lead {
        let lead = self
            .nodes
            .get_mut(&node)
            .and_then(|n| n.leads.remove(key))
            .expect("finishing a live lead");
        if self.nodes[&node]
            .queues
            .get(key)
            .is_some_and(|q| !q.is_empty())
        {
            self.start_lead(node, key);
        }
        lead
    }

    fn client_answer(&mut self, client: usize, req: u64, result: Result<i64, Failed>) {
        let Some((pending, index)) = self.clients[client].pending else {
            return;
        };
        if pending != req {
            return; // a duplicate, or an answer after the client gave up
        }
        // With request ids an unknown outcome is retried. So is "not applied" once the request
        // was sent before: that attempt did not apply it, an earlier one may have.
        let maybe_applied = result == Err(Failed::Ambiguous)
            || (result == Err(Failed::NotApplied) && self.clients[client].sends > 1);
        if self.cfg.request_ids && maybe_applied {
            self.resend(client);
            return;
        }
        self.clients[client].pending = None;
        let op = &mut self.history[index];
        // An expired answer bounds nothing: another attempt may still be applied by a
        // coordinator whose clock has not reached the session's end.
        if result != Err(Failed::Expired) {
            op.ret = self.now;
        }
        op.outcome = match result {
            Ok(v) => {
                self.stats.ok += 1;
                Outcome::Ok(v)
            }
            Err(Failed::NotApplied) => {
                self.stats.failed += 1;
                Outcome::Failed
            }
            Err(Failed::Ambiguous) => {
                self.stats.unknown += 1;
                Outcome::Unknown
            }
            Err(Failed::Expired) => {
                // Its outcome is unknown, and the session is over: the next request opens a
                // new one (the client library's rule).
                self.stats.expired += 1;
                self.clients[client].session = None;
                Outcome::Unknown
            }
        };
        let pause = self.rng.range(0, 20);
        self.schedule(pause, Event::ClientNext(client));
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
                self.stats.crashes += 1;
                let n = self.nodes.get_mut(&victim).expect("node");
                n.up = false;
                n.leads.clear();
                n.queues.clear();
                n.volatile.clear();
                n.warm.clear();
                let back = self.rng.range(self.cfg.restart_min, self.cfg.restart_max);
                self.schedule(back, Event::Restart(victim));
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

/// The command that replays a seed of `cfg`.
pub fn replay_command(seed: u64, cfg: &Config) -> String {
    let mut flags = format!("--setting {} --nodes {}", cfg.setting, cfg.nodes);
    let preset = Config::setting(cfg.setting, cfg.nodes);
    if preset
        .as_ref()
        .is_some_and(|p| p.request_ids != cfg.request_ids)
        && cfg.request_ids
    {
        flags += " --request-ids";
    }
    if preset
        .as_ref()
        .is_some_and(|p| p.clock_skew != cfg.clock_skew)
    {
        flags += &format!(" --clock-skew {}", cfg.clock_skew);
    }
    format!("cargo run --release -p counter-sim -- {flags} --seed {seed} --verbose")
}

impl Run {
    /// What is wrong with this run of `cfg`, if anything: a history that is not linearizable,
    /// or a live client refused (an expired answer where none may be).
    pub fn problem(&self, cfg: &Config) -> Option<String> {
        let replay = replay_command(self.seed, cfg);
        match &self.verdict {
            Verdict::Violation(cx) => {
                return Some(format!(
                    "seed {} ({} nodes, {}) is not linearizable; replay: {replay}\n{cx}",
                    self.seed, cfg.nodes, cfg.setting
                ))
            }
            Verdict::Linearizable | Verdict::Inconclusive { .. } => {}
        }
        if cfg.expects_no_expired() && self.stats.expired > 0 {
            return Some(format!(
                "seed {} ({} nodes, {}): {} requests of live sessions were answered expired; \
                 replay: {replay}",
                self.seed, cfg.nodes, cfg.setting, self.stats.expired
            ));
        }
        None
    }
}
