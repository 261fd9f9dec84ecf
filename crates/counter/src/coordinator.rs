//! The coordinator: carries `counter-core`'s [`Decider`] messages to a key's replicas.
//!
//! Operations on one key queue up here. The first one starts a leader task for the key; the
//! leader takes everything queued, runs one round for all of it (n increments become one
//! Accept of v + sum, each caller answered with its own value) and repeats until the queue is
//! empty. A rejected round retries above the ballot the rejection carried, after a randomized
//! exponential backoff, so that competing coordinators do not livelock.
//!
//! Every decision (ballots, counting replies, what to propose, how a failure is reported) is
//! the Decider's; this module does the I/O: fan-out to the replicas (its own acceptor directly,
//! the others over `net`), phase timeouts, backoff sleeps, answering the callers.

use crate::membership::Membership;
use counter_core::{
    next_ballot, AcceptorReply, Action, Ctx, Decider, Failure, FloorPolicy, FloorSlot, FloorUse,
    Limits, QuietRead, ReadStep, Round, Step, Warm,
};
use counter_net::Pool;
use counter_proto::{
    AcceptorMsg, Ballot, ClientError, Command, Config, Msg, NodeId, Outcome, Register, ShardId,
};
use counter_storage::{StorageError, Store};
use dashmap::DashMap;
use futures::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long one phase waits for a majority before the round is retried.
const PHASE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Most bytes (estimated: the key and about 120 bytes of entry) of prepared next rounds
/// remembered.
const WARM_BYTES: u64 = 16 << 20;

/// The prepared next rounds by key: (configuration version, promised ballot, ballot of the
/// register).
type WarmCache = quick_cache::sync::Cache<String, (u64, Ballot, Ballot), WarmWeight>;

#[derive(Clone, Copy, Debug, Default)]
struct WarmWeight;

impl quick_cache::Weighter<String, (u64, Ballot, Ballot)> for WarmWeight {
    fn weight(&self, key: &String, _: &(u64, Ballot, Ballot)) -> u64 {
        (key.len() + 120) as u64
    }
}
/// How this coordinator keeps the shards' floors (`counter_core::floor`): 256 KiB of keys per
/// lease (about 4,000 short keys; 16 MiB over 64 shards), a raise tried again 1 s after one
/// that failed (meanwhile a shard's first rounds have two writes, as without floors), and a
/// lease given up after 16 refused rounds at it in a row.
const FLOOR_POLICY: FloorPolicy = FloorPolicy {
    lease_bytes: 256 << 10,
    retry_after: 1_000,
    max_misses: 16,
};

/// Most operations coalesced into one round.
const MAX_BATCH: usize = 1024;
const BACKOFF_START: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// A caller waiting for its command.
struct Waiter {
    cmd: Command,
    /// An identity round of a move's rescan: a read that must be written back (never a quiet
    /// read).
    write_back: bool,
    deadline: Instant,
    reply: oneshot::Sender<Result<Outcome, ClientError>>,
}

/// Where a key's replicas are and how to reach them.
pub struct Coordinator {
    id: NodeId,
    epoch: u32,
    store: Arc<Store>,
    pool: Arc<Pool>,
    /// The agreed configuration: replica sets, addresses, and the fence.
    membership: Arc<Membership>,
    /// What registers keep of their clients' requests.
    limits: Limits,
    /// Keys whose next round is prepared: the configuration version it was prepared under, the
    /// ballot a majority promised, and the ballot of the chosen register they reported
    /// (`counter-core`'s [`Warm`], without its register: that is the one our own acceptor
    /// accepted under the second ballot, read back when used). Volatile; at most
    /// [`WARM_BYTES`] (when full, `quick_cache` evicts a key not used recently: a key that
    /// loses its entry takes two round trips once). An entry of another configuration is not
    /// used.
    warm: WarmCache,
    /// Keys with a leader running, and the operations queued behind it.
    queues: DashMap<String, Vec<Waiter>>,
    /// Per shard, the floor this coordinator leases (`counter_core::floor`): a key it has no
    /// prepared round for has its first round there, reading instead of writing in phase 1.
    floors: DashMap<ShardId, FloorSlot>,
    /// The clock of the floors' retry times (milliseconds since this instant).
    started: Instant,
}

/// What a replica's answer to a Prepare or an Accept came to.
enum Got {
    Reply(AcceptorReply),
    /// The replica runs a newer configuration (now installed here): the round must restart
    /// under it.
    Stale,
    Nothing,
}

type ReplyFuture = Pin<Box<dyn Future<Output = (NodeId, Got)> + Send>>;
/// A replica's answer to a read's first try: its durably accepted ballot and value.
type ReadFuture = Pin<Box<dyn Future<Output = (NodeId, Option<Option<(Ballot, i64)>>)> + Send>>;

impl Coordinator {
    pub fn new(
        id: NodeId,
        store: Arc<Store>,
        membership: Arc<Membership>,
        limits: Limits,
    ) -> Arc<Coordinator> {
        Arc::new(Coordinator {
            id,
            epoch: store.epoch(),
            store,
            pool: Arc::new(Pool::new(Duration::from_millis(300))),
            membership,
            limits,
            warm: WarmCache::with_weighter((WARM_BYTES / 140) as usize, WARM_BYTES, WarmWeight),
            queues: DashMap::new(),
            floors: DashMap::new(),
            started: Instant::now(),
        })
    }

    /// Keys with commands queued or in a round, and keys whose next round is prepared.
    pub fn sizes(&self) -> (usize, usize) {
        (self.queues.len(), self.warm.len())
    }

    /// What registers keep of their clients' requests.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Runs `cmd` on `key` (of `shard`) and waits at most `budget`.
    pub async fn submit(
        self: &Arc<Self>,
        shard: ShardId,
        key: String,
        cmd: Command,
        budget: Duration,
    ) -> Result<Outcome, ClientError> {
        self.enqueue(shard, key, cmd, false, budget).await
    }

    /// An identity round on `key`: read it and write it back under the current configuration
    /// (a move's rescan; see [`crate::membership`]).
    pub async fn identity(
        self: &Arc<Self>,
        shard: ShardId,
        key: String,
        budget: Duration,
    ) -> Result<(), ClientError> {
        let read = Command::from(counter_proto::Op::Get);
        self.enqueue(shard, key, read, true, budget)
            .await
            .map(|_| ())
    }

    async fn enqueue(
        self: &Arc<Self>,
        shard: ShardId,
        key: String,
        cmd: Command,
        write_back: bool,
        budget: Duration,
    ) -> Result<Outcome, ClientError> {
        let (tx, rx) = oneshot::channel();
        // The rounds stop a little before the caller stops waiting, so that an honest
        // "unavailable" (nothing was accepted) arrives instead of a timeout's "unknown".
        let margin = (budget / 10).min(Duration::from_millis(100));
        let waiter = Waiter {
            cmd,
            write_back,
            deadline: Instant::now() + budget - margin,
            reply: tx,
        };
        let lead = match self.queues.entry(key.clone()) {
            dashmap::Entry::Occupied(mut e) => {
                e.get_mut().push(waiter);
                false
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(vec![waiter]);
                true
            }
        };
        if lead {
            let this = self.clone();
            tokio::spawn(async move { this.lead(shard, key).await });
        }
        match tokio::time::timeout(budget, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::unknown("coordinator dropped the operation")),
            Err(_) => Err(ClientError::unknown(format!(
                "no decision within {} ms; the operation may still be applied",
                budget.as_millis()
            ))),
        }
    }

    /// Runs rounds for `key` until its queue is empty.
    async fn lead(self: Arc<Self>, shard: ShardId, key: String) {
        loop {
            let batch = match self.queues.entry(key.clone()) {
                dashmap::Entry::Occupied(mut e) => {
                    if e.get().is_empty() {
                        e.remove();
                        return;
                    }
                    let q = e.get_mut();
                    // At most MAX_BATCH commands, of at most `max_clients` request clients, so
                    // that no command's entry is dropped by its own round.
                    let n = counter_core::change::batch_len(
                        q.iter().take(MAX_BATCH).map(|w| w.cmd),
                        &self.limits,
                    );
                    q.drain(..n).collect::<Vec<_>>()
                }
                dashmap::Entry::Vacant(_) => return,
            };
            self.run(shard, &key, batch).await;
        }
    }

    /// Runs one batch to a decision (or to an honest error) and answers every waiter.
    async fn run(self: &Arc<Self>, shard: ShardId, key: &str, batch: Vec<Waiter>) {
        let deadline = batch
            .iter()
            .map(|w| w.deadline)
            .max()
            .expect("non-empty batch");
        if batch.iter().all(|w| w.cmd.op.is_read() && !w.write_back) {
            if let Some(value) = self.quiet_read(shard, key, deadline).await {
                round_metrics().rounds[QUIET_READ].increment(1);
                for w in batch {
                    let _ = w.reply.send(Ok(Outcome::Value(value)));
                }
                return;
            }
        }
        let cmds: Vec<Command> = batch.iter().map(|w| w.cmd).collect();
        round_metrics().batch.record(cmds.len() as f64);
        let mut trips = Trips::default();
        let outcome = self.decide(shard, key, cmds, deadline, &mut trips).await;
        round_metrics().rounds[trips.outcome(outcome.is_ok())].increment(1);
        for (i, w) in batch.into_iter().enumerate() {
            let answer = match &outcome {
                Ok(results) => Ok(results[i]),
                Err(e) => Err(e.clone()),
            };
            let _ = w.reply.send(answer);
        }
    }

    /// A read's first try: one round trip, no disk write. Each replica reports what it has
    /// durably accepted; `counter-core`'s [`QuietRead`] decides whether that answers the read.
    /// `None`: it does not (a write in flight or interrupted, or another configuration), so
    /// the caller runs a full round.
    async fn quiet_read(&self, shard: ShardId, key: &str, deadline: Instant) -> Option<i64> {
        let config = self.membership.config();
        let quorum = Membership::quorum(&config, shard);
        let mut read = QuietRead::new(&quorum);
        let mut replies: FuturesUnordered<ReadFuture> = quorum
            .members()
            .iter()
            .map(|&n| self.read(&config, n, shard, key))
            .collect();
        let until = (Instant::now() + PHASE_TIMEOUT).min(deadline);
        loop {
            let (from, accepted) = match tokio::time::timeout_at(until.into(), replies.next()).await
            {
                Ok(Some((from, Some(accepted)))) => (from, accepted),
                Ok(Some((_, None))) => continue,
                Ok(None) | Err(_) => return None,
            };
            match read.on_reply(from, accepted) {
                ReadStep::Pending => {}
                ReadStep::Value(v) => return Some(v),
                ReadStep::Disagree => return None,
            }
        }
    }

    fn read(&self, config: &Config, node: NodeId, shard: ShardId, key: &str) -> ReadFuture {
        if node == self.id {
            let reply = match self.membership.check_shard(shard, config.version) {
                Some(_) => None,
                None => self
                    .store
                    .read_durable(shard, key)
                    .map_err(|e| tracing::error!(error = %e, "local acceptor failed"))
                    .ok(),
            };
            return Box::pin(std::future::ready((node, reply)));
        }
        let call = self.call_peer(
            config,
            node,
            Msg::Acceptor(AcceptorMsg::Read {
                shard,
                key: key.to_string(),
                config: config.version,
            }),
        );
        let membership = self.membership.clone();
        Box::pin(async move {
            match call.await {
                Some(Msg::ReadReply { accepted }) => (node, Some(accepted)),
                other => {
                    refused(&membership, node, other);
                    (node, None)
                }
            }
        })
    }

    /// Rounds until `cmds` are chosen: each command's outcome, or an error for all of them. The
    /// decisions are `counter-core`'s [`Decider`]; this function only does the I/O it asks for.
    async fn decide(
        self: &Arc<Self>,
        shard: ShardId,
        key: &str,
        cmds: Vec<Command>,
        deadline: Instant,
        trips: &mut Trips,
    ) -> Result<Vec<Outcome>, ClientError> {
        let ctx = Ctx {
            now_ms: counter_proto::unix_ms(),
            limits: self.limits,
        };
        let mut config = self.membership.config();
        let local = self
            .store
            .peek(shard, key)
            .map_err(|e| ClientError::unavailable(format!("local acceptor: {e}")))?;
        // Our acceptor's shard floor is a promise of the key too: a round below it would only
        // be refused.
        let floor = self
            .store
            .floor(shard)
            .map_err(|e| ClientError::unavailable(format!("local acceptor: {e}")))?;
        let seen = local.highest_over(floor);
        // The previous round on the key may have prepared this one (one round trip). Its
        // register is what our acceptor accepted under that round's ballot (one register per
        // ballot); if our acceptor has moved on since, or the configuration changed, the round
        // is not used.
        let own = local.highest();
        // A prepared round below our acceptor's floor would be refused: not used.
        let warm = self
            .warm
            .remove(key)
            .and_then(|(_, (version, ballot, at))| match local.accepted {
                Some((b, register)) if b == at && version == config.version && ballot >= floor => {
                    Some(Warm {
                        ballot,
                        accepted: (b, register),
                    })
                }
                _ => None,
            });
        let mut decider = Decider::new(
            self.id,
            self.epoch,
            Membership::quorum(&config, shard),
            cmds,
            seen,
            ctx,
        );
        let mut action = match warm {
            Some(w) => decider.start_warm(w),
            None => match self.at_floor(shard, key, &config, (own, floor), decider.ops()) {
                Some(floor) => decider.start_at_floor(floor),
                None => decider.start_round(),
            },
        };
        loop {
            let mut replies = match action {
                Action::Prepare(ballot) => {
                    trips.prepares += 1;
                    self.fan_out(&decider, |node| {
                        self.phase_one(&config, node, shard, key, (ballot, false))
                    })
                }
                Action::ReadAtFloor(ballot) => {
                    trips.at_floor = Some(ballot);
                    self.fan_out(&decider, |node| {
                        self.phase_one(&config, node, shard, key, (ballot, true))
                    })
                }
                Action::Accept(ballot, register, next) => self.fan_out(&decider, |node| {
                    self.accept(&config, node, shard, key, ballot, register.clone(), next)
                }),
                Action::Retry { attempt } => {
                    if let (Some(floor), 0) = (trips.at_floor, trips.retries) {
                        let now = self.now_ms();
                        if let Some(mut slot) = self.floors.get_mut(&shard) {
                            slot.missed(floor, now, &FLOOR_POLICY);
                        }
                    }
                    trips.retries += 1;
                    if Instant::now() >= deadline {
                        return Err(failure(decider.give_up()));
                    }
                    self.back_off(attempt, deadline).await;
                    if Instant::now() >= deadline {
                        return Err(failure(decider.give_up()));
                    }
                    // A newer configuration arrived: the next round counts its replicas.
                    let now = self.membership.config();
                    if now.version != config.version {
                        config = now;
                        decider.set_quorum(Membership::quorum(&config, shard));
                    }
                    action = decider.start_round();
                    continue;
                }
                Action::Done(results) => {
                    if let (Some(floor), 0) = (trips.at_floor, trips.retries) {
                        if let Some(mut slot) = self.floors.get_mut(&shard) {
                            slot.held(floor);
                        }
                    }
                    if let Some((ballot, at)) = decider.prepared() {
                        self.warm
                            .insert(key.to_string(), (config.version, ballot, at));
                    }
                    return Ok(results);
                }
                Action::Failed(f) => return Err(failure(f)),
            };
            let phase_end = (Instant::now() + PHASE_TIMEOUT).min(deadline);
            action = loop {
                match next_reply(&mut replies, phase_end).await {
                    Some((from, Got::Reply(reply))) => {
                        if let Some(next) = decider.on_reply(from, reply) {
                            break next;
                        }
                    }
                    // The round cannot count under its configuration any more: end the phase
                    // now (what it sent stays in doubt) and retry under the new one.
                    Some((_, Got::Stale)) => match decider.on_phase_timeout() {
                        Some(next) => break next,
                        None => return Err(failure(decider.give_up())),
                    },
                    Some((_, Got::Nothing)) => {}
                    None => match decider.on_phase_timeout() {
                        Some(next) => break next,
                        None => return Err(failure(decider.give_up())),
                    },
                }
            };
        }
    }

    /// Sleeps a random time up to the backoff of `attempt` (never past `deadline`).
    async fn back_off(&self, attempt: u32, deadline: Instant) {
        let jitter = counter_net::backoff(attempt, BACKOFF_START, BACKOFF_MAX);
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(jitter.min(left)).await;
    }

    fn fan_out<F>(&self, decider: &Decider, call: F) -> FuturesUnordered<ReplyFuture>
    where
        F: Fn(NodeId) -> ReplyFuture,
    {
        decider
            .quorum()
            .members()
            .iter()
            .map(|&n| call(n))
            .collect()
    }

    /// The local acceptor's answer, if the fence lets the round's configuration through.
    fn local(&self, config: &Config, node: NodeId, shard: ShardId) -> Option<ReplyFuture> {
        match self.membership.check_shard(shard, config.version) {
            None => None,
            Some(Msg::StaleConfig(_)) => Some(Box::pin(std::future::ready((node, Got::Stale)))),
            Some(_) => Some(Box::pin(std::future::ready((node, Got::Nothing)))),
        }
    }

    /// A call to our own acceptor (`node`, this one), if the fence lets the round's
    /// configuration through: `call` gets the store.
    fn ask_local<Fut>(
        &self,
        config: &Config,
        node: NodeId,
        shard: ShardId,
        call: impl FnOnce(Arc<Store>) -> Fut,
    ) -> ReplyFuture
    where
        Fut: Future<Output = Result<AcceptorReply, StorageError>> + Send + 'static,
    {
        if let Some(refused) = self.local(config, node, shard) {
            return refused;
        }
        let reply = call(self.store.clone());
        Box::pin(async move { (node, log_local(reply.await)) })
    }

    /// Phase 1 of a round at `ballot` on `node`: a Prepare, or a read at a floor the shard
    /// promised (`counter_core::floor`).
    fn phase_one(
        &self,
        config: &Config,
        node: NodeId,
        shard: ShardId,
        key: &str,
        (ballot, at_floor): (Ballot, bool),
    ) -> ReplyFuture {
        let key = key.to_string();
        if node == self.id {
            return self.ask_local(config, node, shard, move |store| async move {
                if at_floor {
                    store.read_at_floor(shard, &key, ballot).await
                } else {
                    store.prepare(shard, &key, ballot).await
                }
            });
        }
        let version = config.version;
        let msg = if at_floor {
            AcceptorMsg::ReadAtFloor {
                shard,
                key,
                ballot,
                config: version,
            }
        } else {
            AcceptorMsg::Prepare {
                shard,
                key,
                ballot,
                config: version,
            }
        };
        self.remote(config, node, Msg::Acceptor(msg))
    }

    #[allow(clippy::too_many_arguments)]
    fn accept(
        &self,
        config: &Config,
        node: NodeId,
        shard: ShardId,
        key: &str,
        ballot: Ballot,
        register: Register,
        next: Option<Ballot>,
    ) -> ReplyFuture {
        let key = key.to_string();
        if node == self.id {
            return self.ask_local(config, node, shard, move |store| async move {
                store.accept(shard, &key, ballot, register, next).await
            });
        }
        let msg = AcceptorMsg::Accept {
            shard,
            key,
            ballot,
            register,
            next,
            config: config.version,
        };
        self.remote(config, node, Msg::Acceptor(msg))
    }

    fn promise_floor(
        &self,
        config: &Config,
        node: NodeId,
        shard: ShardId,
        ballot: Ballot,
    ) -> ReplyFuture {
        if node == self.id {
            return self.ask_local(config, node, shard, move |store| async move {
                store.promise_floor(shard, ballot).await
            });
        }
        let msg = AcceptorMsg::PromiseFloor {
            shard,
            ballot,
            config: config.version,
        };
        self.remote(config, node, Msg::Acceptor(msg))
    }

    /// Milliseconds since this coordinator started: the clock of its floors' retry times.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The floor `key`'s first round can run at (`counter_core::floor`), if this coordinator
    /// leases a usable one for `shard` under `config` (`FloorSlot::use_for`; `(own, floor)`:
    /// the highest ballot our acceptor has seen for the key, and its floor of the shard). A
    /// shard without one gets one raised in the background; meanwhile first rounds are
    /// ordinary.
    fn at_floor(
        self: &Arc<Self>,
        shard: ShardId,
        key: &str,
        config: &Arc<Config>,
        (own, floor): (Ballot, Ballot),
        ops: &[Command],
    ) -> Option<Ballot> {
        if !ops.iter().all(counter_core::change::is_retry_safe) {
            return None;
        }
        let now = self.now_ms();
        let used = self.floors.entry(shard).or_default().use_for(
            key,
            config.version,
            own,
            floor,
            now,
            &FLOOR_POLICY,
        );
        match used {
            FloorUse::At(floor) => Some(floor),
            FloorUse::Ordinary => None,
            FloorUse::Raise { above } => {
                let this = self.clone();
                let config = config.clone();
                tokio::spawn(async move { this.raise_floor(shard, config, above).await });
                None
            }
        }
    }

    /// Asks `shard`'s replicas to promise a new floor above `above` for every key of the
    /// shard; leases it once a majority (of both sets during a move) did.
    async fn raise_floor(self: Arc<Self>, shard: ShardId, config: Arc<Config>, above: Ballot) {
        let ballot = next_ballot(self.id, self.epoch, above);
        let quorum = Membership::quorum(&config, shard);
        let mut round = Round::new(ballot, &quorum);
        let mut replies: FuturesUnordered<ReplyFuture> = quorum
            .members()
            .iter()
            .map(|&node| self.promise_floor(&config, node, shard, ballot))
            .collect();
        let until = Instant::now() + PHASE_TIMEOUT;
        let outcome = loop {
            let step = match next_reply(&mut replies, until).await {
                Some((from, Got::Reply(AcceptorReply::Promise { ballot, accepted }))) => {
                    round.on_promise(from, ballot, accepted)
                }
                Some((from, Got::Reply(AcceptorReply::Reject { ballot, promised }))) => {
                    round.on_reject(from, ballot, promised)
                }
                // A replica runs a newer configuration (now installed here): this floor would
                // serve no round.
                Some((_, Got::Stale)) => break Err(round.seen()),
                Some(_) => Step::Pending,
                None => break Err(round.seen()),
            };
            match step {
                Step::Promised { .. } => break Ok((ballot, config.version)),
                Step::Preempted { seen } => break Err(seen),
                _ => {}
            }
        };
        let label = match outcome {
            Ok(_) => {
                tracing::debug!(shard, %ballot, "shard floor leased");
                "leased"
            }
            Err(seen) => {
                tracing::debug!(shard, %ballot, %seen, "shard floor not leased; retrying later");
                "refused"
            }
        };
        metrics::counter!("counter_floor_raises_total", "outcome" => label).increment(1);
        let now = self.now_ms();
        self.floors
            .entry(shard)
            .or_default()
            .raised(outcome, now, &FLOOR_POLICY);
    }

    fn remote(&self, config: &Config, node: NodeId, msg: Msg) -> ReplyFuture {
        let call = self.call_peer(config, node, msg);
        let membership = self.membership.clone();
        Box::pin(async move {
            let reply = match call.await {
                Some(Msg::Promise { ballot, accepted }) => {
                    AcceptorReply::Promise { ballot, accepted }
                }
                Some(Msg::Accepted { ballot, next }) => AcceptorReply::Accepted { ballot, next },
                Some(Msg::Reject { ballot, promised }) => {
                    AcceptorReply::Reject { ballot, promised }
                }
                other => {
                    let got = if refused(&membership, node, other) {
                        Got::Stale
                    } else {
                        Got::Nothing
                    };
                    return (node, got);
                }
            };
            (node, Got::Reply(reply))
        })
    }

    /// Sends `msg` to a peer node: its reply, or `None` (logged) if there was none.
    fn call_peer(
        &self,
        config: &Config,
        node: NodeId,
        msg: Msg,
    ) -> impl Future<Output = Option<Msg>> + Send + 'static {
        let addr = config.addr(node).map(str::to_string);
        let pool = self.pool.clone();
        async move {
            let reply = pool.call(&addr?, msg, PHASE_TIMEOUT).await;
            reply
                .map_err(|e| tracing::debug!(node, error = %e, "peer call failed"))
                .ok()
        }
    }
}

/// How a round went, for `counter_rounds_total`.
#[derive(Default)]
struct Trips {
    /// Prepare messages sent (one per replica per phase 1).
    prepares: u32,
    /// Rounds started again after a conflict or a timeout.
    retries: u32,
    /// The floor the first round read at, if it did.
    at_floor: Option<Ballot>,
}

impl Trips {
    /// The index in [`ROUND_OUTCOMES`]: `one_trip` (a warm round: Accept only), `two_trips`
    /// (Prepare then Accept), `conflict` (decided after at least one retry), or `failed` (no
    /// decision: an error was answered).
    fn outcome(&self, decided: bool) -> usize {
        match (decided, self.retries, self.prepares) {
            (false, _, _) => 3,
            (true, 0, _) if self.at_floor.is_some() => 5,
            (true, 0, 0) => 0,
            (true, 0, _) => 1,
            (true, _, _) => 2,
        }
    }
}

/// The `outcome` label of `counter_rounds_total`.
const ROUND_OUTCOMES: [&str; 6] = [
    "one_trip",
    "two_trips",
    "conflict",
    "failed",
    "quiet_read",
    "floor_read",
];
const QUIET_READ: usize = 4;

/// The coordinator's metric handles, looked up once (a `metrics` macro hashes its key at every
/// call).
struct RoundMetrics {
    rounds: Vec<metrics::Counter>,
    batch: metrics::Histogram,
}

fn round_metrics() -> &'static RoundMetrics {
    static METRICS: std::sync::OnceLock<RoundMetrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| RoundMetrics {
        rounds: ROUND_OUTCOMES
            .iter()
            .map(|&outcome| metrics::counter!("counter_rounds_total", "outcome" => outcome))
            .collect(),
        batch: metrics::histogram!("counter_round_batch_commands"),
    })
}

/// A reply that is not an acceptor's answer: a configuration refusal is acted on (a newer
/// configuration installed; ours sent to a replica behind). `true` if the replica runs a newer
/// configuration than the round.
fn refused(membership: &Arc<Membership>, node: NodeId, reply: Option<Msg>) -> bool {
    match reply {
        Some(Msg::StaleConfig(newer)) => {
            membership.learn(*newer);
            true
        }
        Some(Msg::NeedConfig { have }) => {
            let config = membership.config();
            tracing::debug!(
                node,
                have,
                version = config.version,
                "a replica is behind: sending it our configuration"
            );
            if let Some(addr) = config.addr(node).map(str::to_string) {
                let msg = Msg::InstallConfig(Box::new((*config).clone()));
                tokio::spawn(async move {
                    let pool = Pool::new(Duration::from_millis(500));
                    let _ = pool.call(&addr, msg, PHASE_TIMEOUT).await;
                });
            }
            false
        }
        Some(other) => {
            tracing::warn!(node, reply = ?other, "unexpected reply from a peer");
            false
        }
        None => false,
    }
}

/// The next useful reply, or `None` when every replica answered or the phase timed out.
async fn next_reply(
    replies: &mut FuturesUnordered<ReplyFuture>,
    until: Instant,
) -> Option<(NodeId, Got)> {
    match tokio::time::timeout_at(until.into(), replies.next()).await {
        Ok(Some(got)) => Some(got),
        Ok(None) | Err(_) => None,
    }
}

fn log_local(reply: Result<AcceptorReply, counter_storage::StorageError>) -> Got {
    match reply {
        Ok(r) => Got::Reply(r),
        Err(e) => {
            tracing::error!(error = %e, "local acceptor failed");
            Got::Nothing
        }
    }
}

fn failure(f: Failure) -> ClientError {
    match f {
        Failure::NotApplied(m) => ClientError::unavailable(m),
        Failure::Ambiguous(m) => ClientError::unknown(m),
    }
}
