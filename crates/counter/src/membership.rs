//! A node's side of membership changes: the agreed configuration it runs and the fence every
//! acceptor request passes, its acceptor of the configuration register, and the driver of an
//! admin command (`cluster add-node`, `remove-node`, `replace-node`).
//!
//! The rules, and why the recipe is safe, are in `counter_core::membership`. This module does
//! the I/O they ask for:
//!
//! 1. learn the newest configuration from the members; a command already done answers so
//!    (idempotent); one half done is resumed (its joint configuration records which command it
//!    is); another command's half-done change is refused, naming it;
//! 2. agree the joint configuration on the configuration register, install it on every member
//!    and wait until a majority of each moving shard's old set has it (the fence);
//! 3. rescan every moving shard: list its keys from a majority of its old set, page by page in
//!    key order, and run an identity round on each (at most [`WINDOW`] at once, through the
//!    node's coordinator, so they queue behind client commands on the same key like any other);
//! 4. agree the final configuration and install it everywhere; nodes that left a shard drop
//!    its data when they install it.
//!
//! Every step is idempotent: running the command again after a crash of any process, at any
//! point, continues from the agreed configuration (the rescan of a shard starts over; identity
//! rounds are harmless to repeat).

use crate::coordinator::Coordinator;
use counter_core::membership::{
    config_proposal, config_quorum, fence, finish, is_done, plan, ConfigAcceptor, ConfigStep, Fence,
};
use counter_core::{next_ballot, Quorum};
use counter_net::Pool;
use counter_proto::{
    validate_key, Ballot, Change, ClientError, Config, DataState, Msg, NodeId, RescanReport,
    ShardId,
};
use counter_storage::{RescanProgress, StorageError, Store};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Identity rounds of a rescan in flight at once: the move's throttle (client commands on the
/// same node keep most of its capacity).
pub const WINDOW: usize = 16;
/// Keys asked for per page of a rescan.
const PAGE: u32 = 512;
/// Bytes of keys per page at most (a frame is 64 KiB).
pub const PAGE_BYTES: usize = 48 * 1024;
/// One question to a member.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long agreeing a configuration may take before the command reports it cannot.
const AGREE_FOR: Duration = Duration::from_secs(15);
/// How long installing a configuration on the members may take.
const INSTALL_FOR: Duration = Duration::from_secs(20);
/// How often a node asks the members for a newer configuration (it also learns one from
/// refusals, and by pushes).
const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// A node's configuration state.
pub struct Membership {
    id: NodeId,
    epoch: u32,
    store: Arc<Store>,
    current: RwLock<Arc<Config>>,
    /// This node's acceptor of the configuration register (persisted before each answer).
    register: Mutex<ConfigAcceptor>,
    /// Highest configuration-register ballot this node has heard of.
    seen: Mutex<Ballot>,
    pool: Pool,
    /// One admin command at a time on this node.
    admin: tokio::sync::Mutex<()>,
    /// The rescan this node drives: the joint configuration's version, and per shard.
    progress: Mutex<(u64, Vec<RescanReport>)>,
    /// Held by [`Membership::install`] from start to end.
    installing: Mutex<()>,
}

/// How one round on the configuration register ended.
enum RoundEnd {
    Chosen(Config),
    /// Another command's half-made change is in the register.
    Other(Config),
    /// The register is past this node's configuration.
    Stale(Config),
}

impl Membership {
    /// The configuration state of node `id`: the newest agreed configuration its data dir
    /// records, else `bootstrap` (the cluster file's). Drops the data of shards the node no
    /// longer holds (a crash may have come between installing a configuration and dropping).
    pub fn open(
        id: NodeId,
        store: Arc<Store>,
        bootstrap: Option<Config>,
    ) -> Result<Arc<Membership>, StorageError> {
        let agreed = match store.agreed()? {
            Some(c) => c,
            None => bootstrap.ok_or_else(|| {
                StorageError::Corrupt("the data dir records no configuration".into())
            })?,
        };
        let register = store.config_acceptor()?;
        for shard in 0..agreed.shard_count() {
            if !agreed.holds(id, shard) && !store.shard_is_empty(shard)? {
                store.drop_shard(shard)?;
                tracing::info!(shard, "dropped a shard this node no longer holds");
            }
        }
        Ok(Arc::new(Membership {
            id,
            epoch: store.epoch(),
            seen: Mutex::new(register.promised),
            register: Mutex::new(register),
            current: RwLock::new(Arc::new(agreed)),
            store,
            pool: Pool::new(Duration::from_millis(500)),
            admin: tokio::sync::Mutex::new(()),
            progress: Mutex::new((0, Vec::new())),
            installing: Mutex::new(()),
        }))
    }

    /// The configuration this node runs.
    pub fn config(&self) -> Arc<Config> {
        self.current.read().expect("config lock").clone()
    }

    /// Who must answer a round on a key of `shard` under `config`.
    pub fn quorum(config: &Config, shard: ShardId) -> Quorum {
        match config.shard(shard) {
            Some(set) => Quorum::joint(&set.old, &set.new),
            None => Quorum::majority(&[]),
        }
    }

    /// Installs `config` if it is newer than the one this node runs (persisted first), and drops
    /// the data of shards it leaves. `Ok(false)`: not newer, or not of this cluster (ignored).
    pub fn install(&self, config: Config) -> Result<bool, StorageError> {
        // One install at a time, from the version check to the last drop: a newer
        // configuration that gives a shard back cannot be installed (and its rounds admitted)
        // while this one deletes the shard.
        let _one = self.installing.lock().expect("install lock");
        let old = self.config();
        if config.version <= old.version {
            return Ok(false);
        }
        if config.cluster_id != old.cluster_id || config.shard_count() != old.shard_count() {
            tracing::warn!(
                cluster_id = %format!("{:016x}", config.cluster_id),
                shards = config.shard_count(),
                "ignored a configuration of another cluster"
            );
            return Ok(false);
        }
        if self.store.data_state() == DataState::Joining
            && config.is_member(self.id)
            && !adds(&config, self.id)
        {
            // A node that joined becomes a member only through the change that adds it (it
            // installs that change's joint configuration before anything is copied to it).
            // Otherwise the cluster counts this id as a member whose state this empty data
            // dir does not have: a wiped member restarted with --join.
            tracing::error!(
                version = config.version,
                "this node joined with an empty data dir, but configuration {} already counts \
                 node {} as a member: refusing to become that member (a wiped member must be \
                 replaced under a new id: counter-cli cluster replace-node {} NEW_ID NEW_ADDR)",
                config.version,
                self.id,
                self.id
            );
            return Ok(false);
        }
        self.store.save_agreed(&config)?;
        *self.current.write().expect("config lock") = Arc::new(config);
        let new = self.config();
        tracing::info!(
            version = new.version,
            pending = ?new.pending,
            moving = new.moving().count(),
            "installed configuration"
        );
        for shard in 0..new.shard_count() {
            if old.holds(self.id, shard) && !new.holds(self.id, shard) {
                self.store.drop_shard(shard)?;
                tracing::info!(
                    shard,
                    version = new.version,
                    "dropped a shard that moved away"
                );
            }
        }
        if new.is_member(self.id) && self.store.data_state() == DataState::Joining {
            self.store.set_state(DataState::Serving)?;
            tracing::info!(version = new.version, "this node is a member now");
        }
        Ok(true)
    }

    /// Installs a configuration a peer sent; a storage failure is logged.
    pub fn learn(&self, config: Config) {
        if let Err(e) = self.install(config) {
            tracing::error!(error = %e, "cannot record a newer configuration");
        }
    }

    /// The fence every acceptor request of `shard` passes (sent under configuration `version`):
    /// `Some(refusal)` unless this node runs that version and holds the shard.
    pub fn check_shard(&self, shard: ShardId, version: u64) -> Option<Msg> {
        let config = self.config();
        match fence(config.version, version) {
            Fence::Stale => return Some(Msg::StaleConfig(Box::new((*config).clone()))),
            Fence::Behind => {
                return Some(Msg::NeedConfig {
                    have: config.version,
                })
            }
            Fence::Admit => {}
        }
        if !config.holds(self.id, shard) {
            return Some(Msg::Error(ClientError::invalid(format!(
                "node {} does not hold shard {shard} in configuration version {}",
                self.id, config.version
            ))));
        }
        None
    }

    /// [`Membership::check_shard`] for a key's request.
    pub fn check_key(&self, shard: ShardId, key: &str, version: u64) -> Option<Msg> {
        if let Err(e) = validate_key(key) {
            return Some(Msg::Error(e));
        }
        let shards = self.config().shard_count();
        if counter_cluster::shard_of(key, shards) != shard {
            return Some(Msg::Error(ClientError::invalid(format!(
                "key {key:?} is not in shard {shard}"
            ))));
        }
        self.check_shard(shard, version)
    }

    /// Phase 1 on the configuration register.
    pub fn on_config_prepare(&self, ballot: Ballot) -> Msg {
        let mut register = self.register.lock().expect("register lock");
        let mut next = register.clone();
        match next.prepare(ballot) {
            Ok(accepted) => match self.store.save_config_acceptor(&next) {
                Ok(()) => {
                    *register = next;
                    Msg::ConfigPromise {
                        ballot,
                        accepted: accepted.map(|(b, c)| (b, Box::new(c))),
                    }
                }
                Err(e) => storage_failed("configuration", e),
            },
            Err(promised) => Msg::Reject { ballot, promised },
        }
    }

    /// Phase 2 on the configuration register.
    pub fn on_config_accept(&self, ballot: Ballot, config: Config) -> Msg {
        let current = self.config();
        if config.cluster_id != current.cluster_id || config.shard_count() != current.shard_count()
        {
            return Msg::Error(ClientError::invalid(
                "a configuration of another cluster (cluster id or shard count differ)",
            ));
        }
        let mut register = self.register.lock().expect("register lock");
        let mut next = register.clone();
        match next.accept(ballot, config) {
            Ok(()) => match self.store.save_config_acceptor(&next) {
                Ok(()) => {
                    *register = next;
                    Msg::Accepted { ballot, next: None }
                }
                Err(e) => storage_failed("configuration", e),
            },
            Err(promised) => Msg::Reject { ballot, promised },
        }
    }

    /// Answers `ListKeys`.
    pub fn list_keys(&self, shard: ShardId, after: Option<&str>, limit: u32, version: u64) -> Msg {
        if let Some(refusal) = self.check_shard(shard, version) {
            return refusal;
        }
        match self
            .store
            .keys(shard, after, limit.clamp(1, 4096) as usize, PAGE_BYTES)
        {
            Ok((keys, done)) => Msg::Keys { keys, done },
            Err(e) => storage_failed("configuration", e),
        }
    }

    /// Asks node `node` (`addr`) `msg`; this node answers itself without the network.
    async fn ask(&self, node: NodeId, addr: Option<&str>, msg: Msg) -> Option<Msg> {
        if node == self.id {
            return Some(match msg {
                Msg::ConfigPrepare { ballot } => self.on_config_prepare(ballot),
                Msg::ConfigAccept { ballot, config } => self.on_config_accept(ballot, *config),
                Msg::InstallConfig(config) => {
                    self.learn(*config);
                    Msg::ConfigInstalled {
                        version: self.config().version,
                    }
                }
                Msg::ListKeys {
                    shard,
                    after,
                    limit,
                    config,
                } => self.list_keys(shard, after.as_deref(), limit, config),
                Msg::GetConfig => Msg::ConfigIs(Box::new((*self.config()).clone())),
                other => Msg::Error(ClientError::invalid(format!(
                    "not asked locally: {other:?}"
                ))),
            });
        }
        let addr = addr?;
        match self.pool.call(addr, msg, CALL_TIMEOUT).await {
            Ok(reply) => Some(reply),
            Err(e) => {
                tracing::debug!(node, addr, error = %e, "member did not answer");
                None
            }
        }
    }

    /// Asks every member of the current configuration for theirs and installs the newest.
    pub async fn refresh(&self) {
        let config = self.config();
        let asks = config
            .members
            .iter()
            .filter(|(&n, _)| n != self.id)
            .map(|(&n, addr)| self.ask(n, Some(addr), Msg::GetConfig));
        let newest = futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|reply| match reply {
                Some(Msg::ConfigIs(c)) => Some(*c),
                _ => None,
            })
            .max_by_key(|c| c.version);
        if let Some(newest) = newest {
            self.learn(newest);
        }
    }

    /// Asks the members for a newer configuration every [`REFRESH_EVERY`], for as long as
    /// the node runs (a node that was down while the cluster changed catches up by itself).
    pub fn spawn_refresh(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH_EVERY).await;
                let Some(this) = this.upgrade() else { return };
                this.refresh().await;
            }
        });
    }

    /// Runs an admin command to its end (see the module doc): what was done, or why not.
    pub async fn admin(
        self: &Arc<Self>,
        change: Change,
        coordinator: &Arc<Coordinator>,
    ) -> Result<String, ClientError> {
        let Ok(_one) = self.admin.try_lock() else {
            return Err(ClientError::invalid(format!(
                "another admin command is running on node {}; wait for it to end (run it again \
                 to see how it ended)",
                self.id
            )));
        };
        let started = Instant::now();
        self.refresh().await;
        // The node a change brings in may be the only one that has its joint configuration (the
        // driver of an interrupted command reached it and few others): ask it too.
        if let Some((_, addr)) = joiner(&change) {
            if let Ok(Msg::ConfigIs(config)) =
                self.pool.call(addr, Msg::GetConfig, CALL_TIMEOUT).await
            {
                self.learn(*config);
            }
        }
        let cur = self.config();
        if is_done(&cur, &change) {
            return Ok(format!(
                "{change}: already done (configuration version {})",
                cur.version
            ));
        }
        let joint = match &cur.pending {
            Some(pending) if *pending == change => {
                tracing::info!(%change, version = cur.version, "resuming the change");
                (*cur).clone()
            }
            Some(pending) => {
                return Err(ClientError::invalid(format!(
                    "another change is under way ({pending}); run `counter-cli cluster \
                     {pending}` to finish it first; nothing changed"
                )))
            }
            None => {
                let joint = plan(&cur, &change)
                    .map_err(|e| ClientError::invalid(format!("{e}; nothing changed")))?;
                if let Some((id, addr)) = joiner(&change) {
                    self.check_joiner(&cur, id, addr).await?;
                }
                tracing::info!(%change, version = joint.version, moving = joint.moving().count(), "starting the change");
                self.agree(&cur, joint).await?
            }
        };
        let must = joiner(&change).map(|(id, _)| id);
        self.install_everywhere(&joint, &[], must, true).await?;
        let moved = joint.moving().count();
        let keys = self.rescan(&joint, coordinator).await?;
        let done = self.agree(&joint, finish(&joint)).await?;
        // The nodes that left learn that they did (and drop their data).
        let left: Vec<(NodeId, String)> = joint
            .members
            .iter()
            .filter(|(n, _)| !done.is_member(**n))
            .map(|(&n, a)| (n, a.clone()))
            .collect();
        if let Err(e) = self.install_everywhere(&done, &left, None, false).await {
            tracing::warn!(error = %e, "some nodes did not install the final configuration yet; they will learn it from their peers");
        }
        tracing::info!(%change, version = done.version, moved, keys, "change done");
        Ok(format!(
            "{change}: done in {:.1}s: configuration version {}, {moved} shards moved, {keys} \
             keys copied",
            started.elapsed().as_secs_f64(),
            done.version
        ))
    }

    /// Checks that the node to add answers at `addr` as a node of this cluster waiting to join.
    async fn check_joiner(&self, cur: &Config, id: NodeId, addr: &str) -> Result<(), ClientError> {
        let start_it = format!(
            "start it first: counter-node --id {id} --join <a member's address> --listen {addr} \
             --data-dir <an empty dir>"
        );
        match self.pool.call(addr, Msg::Identify, CALL_TIMEOUT).await {
            Ok(Msg::Identity {
                cluster_id,
                node,
                state,
                ..
            }) => {
                if node != id {
                    return Err(ClientError::invalid(format!(
                        "{addr} is node {node}, not node {id}; nothing changed"
                    )));
                }
                if cluster_id != cur.cluster_id {
                    return Err(ClientError::invalid(format!(
                        "node {id} at {addr} belongs to another cluster ({cluster_id:016x}); \
                         nothing changed"
                    )));
                }
                if state != DataState::Joining {
                    return Err(ClientError::invalid(format!(
                        "node {id} at {addr} is not waiting to join (its data dir is {state}); \
                         {start_it}; nothing changed"
                    )));
                }
                Ok(())
            }
            Ok(other) => Err(ClientError::unavailable(format!(
                "node {id} at {addr} answered {other:?} instead of who it is; {start_it}; \
                 nothing changed"
            ))),
            Err(e) => Err(ClientError::unavailable(format!(
                "node {id} at {addr} is unreachable ({e}); {start_it}; nothing changed"
            ))),
        }
    }

    /// Agrees `wanted` (version `cur.version + 1`) on the configuration register; installs
    /// it here. Finishes another command's half-made change if it finds one, and then refuses.
    async fn agree(&self, cur: &Config, wanted: Config) -> Result<Config, ClientError> {
        let deadline = Instant::now() + AGREE_FOR;
        let mut attempt = 0;
        loop {
            match self.config_round(cur, &wanted).await {
                Ok(RoundEnd::Chosen(config)) => {
                    self.install(config.clone())
                        .map_err(|e| ClientError::unavailable(format!("storage: {e}")))?;
                    return Ok(config);
                }
                Ok(RoundEnd::Other(other)) => {
                    let name = other
                        .pending
                        .as_ref()
                        .map_or_else(|| "another change".to_string(), |p| p.to_string());
                    Box::pin(self.agree(cur, other.clone())).await?;
                    return Err(ClientError::invalid(format!(
                        "another admin command ({name}) had started a change; it is now agreed \
                         (configuration version {}): run `counter-cli cluster {name}` to finish \
                         it, then run yours again",
                        other.version
                    )));
                }
                Ok(RoundEnd::Stale(newer)) => {
                    self.refresh().await;
                    return Err(ClientError::unavailable(format!(
                        "the configuration changed meanwhile (this node ran version {}, the \
                         register holds {}): run the command again",
                        cur.version, newer.version
                    )));
                }
                Err(why) => {
                    attempt += 1;
                    if Instant::now() >= deadline {
                        return Err(ClientError::unavailable(format!(
                            "no quorum of members for configuration version {} ({why}); run the \
                             same command again once the members are up (it resumes)",
                            wanted.version
                        )));
                    }
                    let pause = counter_net::backoff(
                        attempt,
                        Duration::from_millis(20),
                        Duration::from_millis(500),
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// One CASPaxos round on the configuration register (see `counter_core::membership`).
    async fn config_round(&self, cur: &Config, wanted: &Config) -> Result<RoundEnd, String> {
        let quorum = config_quorum(cur, wanted);
        let addr = |n: NodeId| cur.addr(n).or_else(|| wanted.addr(n)).map(str::to_string);
        let ballot = {
            let mut seen = self.seen.lock().expect("seen lock");
            let promised = self.register.lock().expect("register lock").promised;
            let b = next_ballot(self.id, self.epoch, (*seen).max(promised));
            *seen = b;
            b
        };
        let replies = self
            .ask_quorum(&quorum, &addr, || Msg::ConfigPrepare { ballot })
            .await;
        let mut granted = Vec::new();
        let mut highest: Option<(Ballot, Config)> = None;
        for (node, reply) in replies {
            match reply {
                Msg::ConfigPromise {
                    ballot: b,
                    accepted,
                } if b == ballot => {
                    granted.push(node);
                    if let Some((at, config)) = accepted {
                        if highest.as_ref().is_none_or(|(h, _)| at > *h) {
                            highest = Some((at, *config));
                        }
                    }
                }
                Msg::Reject { promised, .. } => self.saw(promised),
                _ => {}
            }
        }
        if !quorum.is_met(&granted) {
            return Err(format!("promises from {granted:?} of {quorum}"));
        }
        let value = match config_proposal(cur, wanted, highest.as_ref().map(|(_, c)| c)) {
            ConfigStep::Write(c) => c,
            ConfigStep::Finish(other) => return Ok(RoundEnd::Other(other)),
            ConfigStep::Stale(newer) => return Ok(RoundEnd::Stale(newer)),
        };
        let replies = self
            .ask_quorum(&quorum, &addr, || Msg::ConfigAccept {
                ballot,
                config: Box::new(value.clone()),
            })
            .await;
        let mut accepted = Vec::new();
        for (node, reply) in replies {
            match reply {
                Msg::Accepted { ballot: b, .. } if b == ballot => accepted.push(node),
                Msg::Reject { promised, .. } => self.saw(promised),
                _ => {}
            }
        }
        if !quorum.is_met(&accepted) {
            return Err(format!("acceptances from {accepted:?} of {quorum}"));
        }
        Ok(RoundEnd::Chosen(value))
    }

    fn saw(&self, ballot: Ballot) {
        let mut seen = self.seen.lock().expect("seen lock");
        *seen = (*seen).max(ballot);
    }

    /// Asks every member of `quorum` at once; the answers that came.
    async fn ask_quorum(
        &self,
        quorum: &Quorum,
        addr: &(dyn Fn(NodeId) -> Option<String> + Sync),
        msg: impl Fn() -> Msg,
    ) -> Vec<(NodeId, Msg)> {
        let asks = quorum.members().iter().map(|&n| {
            let addr = addr(n);
            let msg = msg();
            async move { (n, self.ask(n, addr.as_deref(), msg).await) }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|(n, reply)| reply.map(|r| (n, r)))
            .collect()
    }

    /// Sends `config` to every member (and to `extra` nodes of the previous configuration) until
    /// they installed it. With `barrier`, fails unless a majority of every moving shard's old
    /// set, and the node `must` (the one the change brings in), did within [`INSTALL_FOR`] (from then on no round of an older configuration can
    /// complete on that shard); without, gives up quietly after a few seconds.
    async fn install_everywhere(
        &self,
        config: &Config,
        extra: &[(NodeId, String)],
        must: Option<NodeId>,
        barrier: bool,
    ) -> Result<(), ClientError> {
        let mut targets: BTreeMap<NodeId, Option<String>> = config
            .members
            .iter()
            .map(|(&n, a)| (n, Some(a.clone())))
            .collect();
        for (n, addr) in extra {
            targets.insert(*n, Some(addr.clone()));
        }
        let started = Instant::now();
        let mut installed: BTreeSet<NodeId> = BTreeSet::new();
        loop {
            let asks = targets
                .iter()
                .filter(|(n, _)| !installed.contains(n))
                .map(|(&n, addr)| {
                    let msg = Msg::InstallConfig(Box::new(config.clone()));
                    async move { (n, self.ask(n, addr.as_deref(), msg).await) }
                });
            for (n, reply) in futures::future::join_all(asks).await {
                if let Some(Msg::ConfigInstalled { version }) = reply {
                    if version >= config.version {
                        installed.insert(n);
                    }
                }
            }
            let have: Vec<NodeId> = installed.iter().copied().collect();
            let fenced = config
                .moving()
                .all(|(_, set)| Quorum::majority(&set.old).is_met(&have))
                && must.is_none_or(|n| installed.contains(&n));
            let everyone = installed.len() == targets.len();
            if everyone || (fenced && started.elapsed() > Duration::from_secs(3)) {
                return Ok(());
            }
            if started.elapsed() > INSTALL_FOR
                || (!barrier && started.elapsed() > Duration::from_secs(5))
            {
                let missing: Vec<NodeId> = targets
                    .keys()
                    .filter(|n| !installed.contains(n))
                    .copied()
                    .collect();
                if barrier && !fenced {
                    return Err(ClientError::unavailable(format!(
                        "configuration version {} is agreed, but nodes {missing:?} did not \
                         install it and without them some moving shard has no majority of its \
                         old replicas that did; run the same command again once they are up (it \
                         resumes)",
                        config.version
                    )));
                }
                if !barrier {
                    return Err(ClientError::unavailable(format!(
                        "nodes {missing:?} did not install configuration version {} yet",
                        config.version
                    )));
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Step 3: an identity round on every key of every moving shard, under `joint`. Starts
    /// where this node's last rescan of the same change stopped (recorded after every page).
    async fn rescan(
        &self,
        joint: &Config,
        coordinator: &Arc<Coordinator>,
    ) -> Result<u64, ClientError> {
        let storage = |e: StorageError| ClientError::unavailable(format!("storage: {e}"));
        let mut progress = self.store.rescan_progress(joint.version).map_err(storage)?;
        for (shard, _) in joint.moving() {
            progress.shards.entry(shard).or_default();
        }
        self.report(&progress);
        for (shard, set) in joint.moving() {
            let started = Instant::now();
            let mut done = progress.shards[&shard].clone();
            if done.done {
                continue;
            }
            if done.after.is_some() {
                tracing::info!(shard, after = ?done.after, copied = done.copied, "resuming the rescan");
            }
            loop {
                let (keys, next) = self
                    .page(joint, shard, &set.old, done.after.as_deref())
                    .await?;
                let mut inflight = FuturesUnordered::new();
                for key in keys {
                    if inflight.len() >= WINDOW {
                        if let Some(result) = inflight.next().await {
                            result?;
                            done.copied += 1;
                        }
                    }
                    inflight.push(identity(coordinator, shard, key));
                }
                while let Some(result) = inflight.next().await {
                    result?;
                    done.copied += 1;
                }
                match next {
                    Some(last) => done.after = Some(last),
                    None => done.done = true,
                }
                progress.shards.insert(shard, done.clone());
                self.store
                    .save_rescan_progress(&progress)
                    .map_err(storage)?;
                self.report(&progress);
                if done.done {
                    break;
                }
            }
            tracing::info!(
                shard,
                keys = done.copied,
                secs = started.elapsed().as_secs_f64(),
                version = joint.version,
                "shard rescanned through its joint quorum"
            );
        }
        Ok(progress.shards.values().map(|p| p.copied).sum())
    }

    /// Publishes the rescan's progress for `cluster status`.
    fn report(&self, progress: &RescanProgress) {
        let report = progress
            .shards
            .iter()
            .map(|(&shard, p)| RescanReport {
                shard,
                keys_copied: p.copied,
                done: p.done,
            })
            .collect();
        *self.progress.lock().expect("progress lock") = (progress.version, report);
    }

    /// The rescan this node drives, if its change is still under way (for `NodeStatus`).
    pub fn rescan_report(&self) -> Vec<RescanReport> {
        let (version, report) = self.progress.lock().expect("progress lock").clone();
        match self.config().pending {
            Some(_) if self.config().version == version => report,
            _ => Vec::new(),
        }
    }

    /// The next page of `shard`'s keys after `after`, from a majority of its `old` set: the
    /// keys up to the smallest last key of an unfinished page, and where the next page
    /// starts (`None`: this was the last).
    async fn page(
        &self,
        joint: &Config,
        shard: ShardId,
        old: &[NodeId],
        after: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), ClientError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let asks = old.iter().map(|&n| {
                let msg = Msg::ListKeys {
                    shard,
                    after: after.map(str::to_string),
                    limit: PAGE,
                    config: joint.version,
                };
                async move { (n, self.ask(n, joint.addr(n), msg).await) }
            });
            let mut answered = Vec::new();
            let mut pages = Vec::new();
            for (n, reply) in futures::future::join_all(asks).await {
                match reply {
                    Some(Msg::Keys { keys, done }) => {
                        answered.push(n);
                        pages.push((keys, done));
                    }
                    Some(Msg::StaleConfig(newer)) => {
                        let version = newer.version;
                        self.learn(*newer);
                        return Err(ClientError::unavailable(format!(
                            "the configuration changed during the move (version {version}); \
                             run the command again"
                        )));
                    }
                    Some(Msg::NeedConfig { .. }) => {
                        let _ = self
                            .ask(
                                n,
                                joint.addr(n),
                                Msg::InstallConfig(Box::new(joint.clone())),
                            )
                            .await;
                    }
                    _ => {}
                }
            }
            if Quorum::majority(old).is_met(&answered) {
                let bound: Option<String> = pages
                    .iter()
                    .filter(|(keys, done)| !done && !keys.is_empty())
                    .filter_map(|(keys, _)| keys.last().cloned())
                    .min();
                let keys: BTreeSet<String> = pages
                    .into_iter()
                    .flat_map(|(keys, _)| keys)
                    .filter(|k| bound.as_ref().is_none_or(|b| k <= b))
                    .collect();
                return Ok((keys.into_iter().collect(), bound));
            }
            if Instant::now() >= deadline {
                return Err(ClientError::unavailable(format!(
                    "cannot list shard {shard}'s keys: only nodes {answered:?} of its old replicas \
                     {old:?} answered; run the same command again once a majority is up (it \
                     resumes)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// An identity round on `key` (read it and write it back under the current, joint,
/// configuration), retried a few times.
async fn identity(
    coordinator: &Arc<Coordinator>,
    shard: ShardId,
    key: String,
) -> Result<(), ClientError> {
    let mut last = None;
    for attempt in 0..5u32 {
        match coordinator
            .identity(shard, key.clone(), Duration::from_secs(5))
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::debug!(key, attempt, error = %e, "identity round failed; retrying");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
            }
        }
    }
    Err(ClientError::unavailable(format!(
        "copying key {key:?} of shard {shard} failed ({}); run the same command again (it \
         resumes)",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// Whether `config` is the joint configuration of the change that adds `node`.
fn adds(config: &Config, node: NodeId) -> bool {
    matches!(&config.pending, Some(Change::AddNode { id, .. }) if *id == node)
        || matches!(&config.pending, Some(Change::ReplaceNode { new, .. }) if *new == node)
}

/// The node a change brings in, and its address.
fn joiner(change: &Change) -> Option<(NodeId, &str)> {
    match change {
        Change::AddNode { id, addr } => Some((*id, addr)),
        Change::ReplaceNode { new, addr, .. } => Some((*new, addr)),
        Change::RemoveNode { .. } => None,
    }
}

/// A failure of `what` storage (`configuration`, `acceptor`), logged and answered as
/// unavailable.
pub(crate) fn storage_failed(what: &str, e: StorageError) -> Msg {
    tracing::error!(error = %e, "{what} storage failed");
    Msg::Error(ClientError::unavailable(format!("storage: {e}")))
}
