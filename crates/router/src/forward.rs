//! The router: forwards client commands to a key's coordinator, failing over only while that
//! is safe.

use counter_cluster::{Cluster, Placement};
use counter_net::{CallError, Pool};
use counter_proto::{
    validate_command, validate_key, Change, ClientError, Command, Config, ErrorKind, Msg, NodeId,
    ShardId, NOT_A_MEMBER,
};
use dashmap::DashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How long a node that refused a connection is tried last.
const DOWN_FOR: Duration = Duration::from_secs(1);
/// Longest pause between two passes over a key's coordinators.
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// First pause between two passes.
const RETRY_BACKOFF_START: Duration = Duration::from_millis(10);
/// Default budget of a command whose sender gave none.
pub const DEFAULT_TIMEOUT_MS: u32 = 10_000;

/// How often the router asks the members for a newer configuration.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How long an admin command may run on the node that drives it.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3600);

/// The configuration the router places keys with, and its placement.
pub struct View {
    pub config: Config,
    pub placement: Placement,
}

/// A stateless router: it keeps no data, only the newest configuration the members told it.
pub struct Router {
    /// The cluster file: where to ask first, and the limits of sessions.
    cluster: Cluster,
    view: RwLock<Arc<View>>,
    pool: Pool,
    /// Nodes that recently could not be reached, and since when.
    down: DashMap<NodeId, Instant>,
    /// Wakes the refresh task early.
    refresh_now: Arc<tokio::sync::Notify>,
}

impl Router {
    /// A router for the cluster `cluster` describes. Until a member answers, it places keys as
    /// the file's bootstrap configuration does; [`Router::spawn_refresh`] keeps it current.
    pub fn new(cluster: Cluster) -> Router {
        // Cluster id 0: not known yet (the members' answers carry it).
        let config = cluster.bootstrap_config(0);
        let placement = Placement::from_config(&config);
        Router {
            cluster,
            view: RwLock::new(Arc::new(View { config, placement })),
            pool: Pool::new(Duration::from_millis(500)),
            down: DashMap::new(),
            refresh_now: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The configuration and placement the router uses now.
    pub fn view(&self) -> Arc<View> {
        self.view.read().expect("view lock").clone()
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Asks every member (of the current configuration and of the cluster file) for its
    /// configuration, and moves to the newest.
    pub async fn refresh(&self) {
        let view = self.view();
        let mut addrs: Vec<String> = view.config.members.values().cloned().collect();
        for addr in self.cluster.nodes.values() {
            if !addrs.contains(addr) {
                addrs.push(addr.clone());
            }
        }
        let asks = addrs.iter().map(|addr| async move {
            match self
                .pool
                .call(addr, Msg::GetConfig, Duration::from_millis(800))
                .await
            {
                Ok(Msg::ConfigIs(config)) => Some(*config),
                _ => None,
            }
        });
        let newest = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .max_by_key(|c| c.version);
        if let Some(newest) = newest {
            let current = &view.config;
            let unknown_yet = current.cluster_id == 0;
            if newest.version > current.version || (unknown_yet && newest.cluster_id != 0) {
                if !unknown_yet && newest.cluster_id != current.cluster_id {
                    tracing::warn!(
                        cluster_id = %format!("{:016x}", newest.cluster_id),
                        "a member answered with another cluster's configuration; ignored"
                    );
                    return;
                }
                tracing::info!(
                    version = newest.version,
                    moving = newest.moving().count(),
                    "configuration changed"
                );
                let placement = Placement::from_config(&newest);
                *self.view.write().expect("view lock") = Arc::new(View {
                    config: newest,
                    placement,
                });
            }
        }
    }

    /// Asks for the newest configuration in the background (a node said it left).
    fn refresh_soon(&self) {
        self.refresh_now.notify_one();
    }

    /// Refreshes the configuration now and every [`REFRESH_EVERY`] (or sooner when asked),
    /// while the router lives.
    pub fn spawn_refresh(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(router) = this.upgrade() else { return };
                router.refresh().await;
                let wake = router.refresh_now.clone();
                drop(router);
                let _ = tokio::time::timeout(REFRESH_EVERY, wake.notified()).await;
            }
        });
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Answers one message from a client.
    pub async fn handle(&self, msg: Msg) -> Msg {
        match msg {
            Msg::Command {
                key,
                command,
                timeout_ms,
            } => {
                let started = Instant::now();
                let span = request_span(&key, &command);
                let reply = match self
                    .forward(key, command, timeout_ms)
                    .instrument(span)
                    .await
                {
                    Ok(reply) => reply,
                    Err(e) => Msg::Error(e),
                };
                record_command("router", &command, &reply, started);
                reply
            }
            // A session's end is set by a server's clock (never the client's).
            Msg::OpenSession { lifetime_ms } => {
                session_opened(&self.cluster.limits, lifetime_ms, counter_proto::unix_ms())
            }
            Msg::GetPlacement => counter_cluster::placement_msg(&self.view().config),
            Msg::GetConfig => Msg::ConfigIs(Box::new(self.view().config.clone())),
            Msg::Status => Msg::ClusterStatus(self.status().await),
            Msg::Admin(change) => self.admin(change).await,
            other => Msg::Error(ClientError::invalid(format!(
                "a router only takes commands, not {}",
                msg_name(&other)
            ))),
        }
    }

    /// Hands an admin command to a member (the first that answers), which drives it to its
    /// end. A member that cannot be reached gets the next; one that took the command answers.
    async fn admin(&self, change: Change) -> Msg {
        self.refresh().await;
        let view = self.view();
        let mut errors = Vec::new();
        for (&node, addr) in &view.config.members {
            match self
                .pool
                .call(addr, Msg::Admin(change.clone()), ADMIN_TIMEOUT)
                .await
            {
                Ok(reply) => {
                    // The change is agreed: place keys by it at once.
                    self.refresh().await;
                    return reply;
                }
                Err(CallError::NotSent(e)) => errors.push(format!("node {node}: {e}")),
                Err(CallError::Lost(e)) => {
                    return Msg::Error(ClientError::unavailable(format!(
                        "node {node}, which was running the command, {e}; run the same command \
                         again (it resumes)"
                    )))
                }
            }
        }
        Msg::Error(ClientError::unavailable(format!(
            "no member could take the command: {}",
            errors.join("; ")
        )))
    }

    /// The key's replicas in preference order, recently unreachable nodes last.
    fn order(&self, view: &View, key: &str) -> (ShardId, Vec<NodeId>) {
        let shard = view.placement.shard_of(key);
        let mut order: Vec<NodeId> = view.placement.replicas(shard).to_vec();
        order.sort_by_key(|n| {
            self.down
                .get(n)
                .is_some_and(|since| since.elapsed() < DOWN_FOR)
        });
        (shard, order)
    }

    /// Sends `command` to the key's coordinators until one answers.
    ///
    /// Failing over is always safe while nothing was sent. Once a coordinator may have started
    /// the command (the connection was lost, or it answered `unknown`), only a command that is
    /// safe to run twice (a read, or one with a request id: the key's register remembers it)
    /// is sent again, to the next replica and then round again with backoff, until the deadline.
    async fn forward(
        &self,
        key: String,
        command: Command,
        timeout_ms: u32,
    ) -> Result<Msg, ClientError> {
        validate_key(&key)?;
        validate_command(&command)?;
        let timeout_ms = if timeout_ms == 0 {
            DEFAULT_TIMEOUT_MS
        } else {
            timeout_ms
        };
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        let retry_safe = command.op.is_read() || command.request.is_some();
        let mut errors = Vec::new();
        let mut unknown: Option<ClientError> = None;
        for pass in 0u32.. {
            let view = self.view();
            let (shard, order) = self.order(&view, &key);
            for node in order {
                let Some(addr) = view.config.addr(node) else {
                    continue;
                };
                let left = deadline.saturating_duration_since(Instant::now());
                if left < Duration::from_millis(5) {
                    break;
                }
                // The node gets most of what is left, so its answer arrives before we give up.
                let budget = (left.as_millis() as u32).saturating_mul(9) / 10;
                let msg = Msg::Command {
                    key: key.clone(),
                    command,
                    timeout_ms: budget.max(1),
                };
                match self.pool.call(addr, msg, left).await {
                    // A node that left the cluster (the router has not heard yet): it applied
                    // nothing, so the next replica may take the command.
                    Ok(Msg::Error(e))
                        if e.kind == ErrorKind::Unavailable && e.message.contains(NOT_A_MEMBER) =>
                    {
                        self.refresh_soon();
                        errors.push(format!("node {node}: {}", e.message));
                    }
                    Ok(Msg::Error(e)) if e.kind == ErrorKind::Unknown && retry_safe => {
                        tracing::info!(node, error = %e, "coordinator answered unknown; retrying the request");
                        unknown = Some(e);
                    }
                    // "Not applied" after an attempt that may have been applied: still unknown.
                    Ok(Msg::Error(e))
                        if unknown.is_some() && e.after_earlier_attempt().is_some() =>
                    {
                        tracing::debug!(node, error = %e, "retry not applied; retrying again");
                        unknown = e.after_earlier_attempt();
                    }
                    Ok(reply) => {
                        self.down.remove(&node);
                        return Ok(reply);
                    }
                    Err(CallError::NotSent(e)) => {
                        // Nothing left this process: trying the next replica cannot apply it twice.
                        tracing::debug!(node, error = %e, "coordinator unreachable; failing over");
                        self.down.insert(node, Instant::now());
                        errors.push(format!("node {node}: {e}"));
                    }
                    Err(CallError::Lost(e)) if retry_safe => {
                        tracing::info!(node, error = %e, "coordinator lost; retrying the request");
                        self.down.insert(node, Instant::now());
                        unknown = Some(ClientError::unknown(format!(
                            "node {node} took the command and then {e}; it may have been applied"
                        )));
                    }
                    Err(CallError::Lost(e)) => {
                        // The command may be running or applied: a retry elsewhere could count twice.
                        return Err(ClientError::unknown(format!(
                            "node {node} took the command and then {e}; it may have been applied"
                        )));
                    }
                }
            }
            let Some(last) = &unknown else {
                // Every failure was "not sent": the command was certainly not applied.
                return Err(ClientError::unavailable(format!(
                    "no replica of shard {shard} could be reached: {}",
                    if errors.is_empty() {
                        "deadline reached".to_string()
                    } else {
                        errors.join("; ")
                    }
                )));
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(5) {
                return Err(ClientError::unknown(format!(
                    "no coordinator decided before the deadline; last: {}",
                    last.message
                )));
            }
            let pause = counter_net::backoff(pass, RETRY_BACKOFF_START, RETRY_BACKOFF_MAX);
            tokio::time::sleep(pause.min(left)).await;
        }
        unreachable!("the pass loop only ends by returning")
    }
}

/// The span of one client command: its operation, key and request id (`client/seq`), carried
/// by every log line written while it runs (`--log-format json` shows them as fields).
pub fn request_span(key: &str, command: &Command) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        op = command.op.name(),
        key,
        request = tracing::field::Empty
    );
    if let Some(r) = command.request {
        span.record(
            "request",
            tracing::field::display(format_args!("{:016x}/{}", r.client, r.seq)),
        );
    }
    span
}

/// Counts a client command's answer by operation and outcome (`ok` or the error kind), and
/// its latency, as seen by `server` (`router` or `node`). The metric handles are looked up
/// once per label combination and kept: the `metrics` macros build and hash a key at every
/// call, which cost about 1.5 µs per increment at W3.
pub fn record_command(server: &'static str, command: &Command, reply: &Msg, started: Instant) {
    const OPS: usize = 6;
    const OUTCOMES: usize = 6;
    static COUNTERS: [[[OnceLock<metrics::Counter>; OUTCOMES]; OPS]; 2] =
        [const { [const { [const { OnceLock::new() }; OUTCOMES] }; OPS] }; 2];
    static LATENCIES: [[OnceLock<metrics::Histogram>; OPS]; 2] =
        [const { [const { OnceLock::new() }; OPS] }; 2];
    let (outcome, o) = match reply {
        Msg::Error(e) => (
            e.kind.as_str(),
            match e.kind {
                ErrorKind::Invalid => 1,
                ErrorKind::Unavailable => 2,
                ErrorKind::Unknown => 3,
                ErrorKind::Rejected => 4,
                ErrorKind::Expired => 5,
            },
        ),
        _ => ("ok", 0),
    };
    let op = command.op.name();
    let i = match command.op {
        counter_proto::Op::Incr(_) => 0,
        counter_proto::Op::Decr(_) => 1,
        counter_proto::Op::Get => 2,
        counter_proto::Op::Reset => 3,
        counter_proto::Op::Set(_) => 4,
        counter_proto::Op::Cas { .. } => 5,
    };
    let s = usize::from(server == "router");
    COUNTERS[s][i][o]
        .get_or_init(|| {
            metrics::counter!("counter_requests_total", "server" => server, "command" => op, "outcome" => outcome)
        })
        .increment(1);
    LATENCIES[s][i]
        .get_or_init(|| {
            metrics::histogram!("counter_request_duration_seconds", "server" => server, "command" => op)
        })
        .record(started.elapsed().as_secs_f64());
}

/// The answer to `OpenSession` at `now_ms` by this server's clock: the session's end, and when
/// the client should move to a new one.
pub fn session_opened(limits: &counter_core::Limits, lifetime_ms: u64, now_ms: u64) -> Msg {
    let (expires_ms, renew_after_ms) = limits.open_session(now_ms, lifetime_ms);
    Msg::Session {
        expires_ms,
        renew_after_ms,
    }
}

/// A message's variant name, for error texts.
pub fn msg_name(msg: &Msg) -> &'static str {
    match msg {
        Msg::Command { .. } => "Command",
        Msg::Value(_) => "Value",
        Msg::Swapped { .. } => "Swapped",
        Msg::Error(_) => "Error",
        Msg::Acceptor(m) => m.name(),
        Msg::Promise { .. } => "Promise",
        Msg::Accepted { .. } => "Accepted",
        Msg::Reject { .. } => "Reject",
        Msg::ReadReply { .. } => "ReadReply",
        Msg::OpenSession { .. } => "OpenSession",
        Msg::Session { .. } => "Session",
        Msg::Identify => "Identify",
        Msg::Identity { .. } => "Identity",
        Msg::GetPlacement => "GetPlacement",
        Msg::Placement { .. } => "Placement",
        Msg::Status => "Status",
        Msg::ClusterStatus(_) => "ClusterStatus",
        Msg::NodeStatus => "NodeStatus",
        Msg::NodeStatusReply(_) => "NodeStatusReply",
        Msg::StaleConfig(_) => "StaleConfig",
        Msg::NeedConfig { .. } => "NeedConfig",
        Msg::GetConfig => "GetConfig",
        Msg::ConfigIs(_) => "ConfigIs",
        Msg::InstallConfig(_) => "InstallConfig",
        Msg::ConfigInstalled { .. } => "ConfigInstalled",
        Msg::ConfigPrepare { .. } => "ConfigPrepare",
        Msg::ConfigPromise { .. } => "ConfigPromise",
        Msg::ConfigAccept { .. } => "ConfigAccept",
        Msg::ListKeys { .. } => "ListKeys",
        Msg::Keys { .. } => "Keys",
        Msg::Admin(_) => "Admin",
        Msg::AdminDone(_) => "AdminDone",
        Msg::Batch(_) => "Batch",
    }
}
