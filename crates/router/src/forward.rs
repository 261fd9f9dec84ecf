//! The router: forwards client commands to a key's coordinator, failing over only while that
//! is safe.

use counter_cluster::{Cluster, Placement};
use counter_net::{CallError, Pool};
use counter_proto::{
    validate_command, validate_key, ClientError, Command, ErrorKind, Msg, NodeId, ShardId,
};
use dashmap::DashMap;
use std::time::{Duration, Instant};

/// How long a node that refused a connection is tried last.
const DOWN_FOR: Duration = Duration::from_secs(1);
/// Longest pause between two passes over a key's coordinators.
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// First pause between two passes.
const RETRY_BACKOFF_START: Duration = Duration::from_millis(10);
/// Default budget of a command whose sender gave none.
pub const DEFAULT_TIMEOUT_MS: u32 = 10_000;

/// A stateless router.
pub struct Router {
    cluster: Cluster,
    placement: Placement,
    pool: Pool,
    /// Nodes that recently could not be reached, and since when.
    down: DashMap<NodeId, Instant>,
}

impl Router {
    pub fn new(cluster: Cluster) -> Router {
        let placement = Placement::new(&cluster);
        Router {
            cluster,
            placement,
            pool: Pool::new(Duration::from_millis(500)),
            down: DashMap::new(),
        }
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
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
            } => match self.forward(key, command, timeout_ms).await {
                Ok(reply) => reply,
                Err(e) => Msg::Error(e),
            },
            // A session's end is set by a server's clock (never the client's).
            Msg::OpenSession { lifetime_ms } => {
                session_opened(&self.cluster.limits, lifetime_ms, counter_proto::unix_ms())
            }
            Msg::GetPlacement => self.cluster.placement_msg(),
            Msg::Status => Msg::ClusterStatus(self.status().await),
            other => Msg::Error(ClientError::invalid(format!(
                "a router only takes commands, not {}",
                msg_name(&other)
            ))),
        }
    }

    /// The key's replicas in preference order, recently unreachable nodes last.
    fn order(&self, key: &str) -> (ShardId, Vec<NodeId>) {
        let shard = self.placement.shard_of(key);
        let mut order: Vec<NodeId> = self.placement.replicas(shard).to_vec();
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
            let (shard, order) = self.order(&key);
            for node in order {
                let Some(addr) = self.cluster.addr(node) else {
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
        Msg::Prepare { .. } => "Prepare",
        Msg::Promise { .. } => "Promise",
        Msg::Accept { .. } => "Accept",
        Msg::Accepted { .. } => "Accepted",
        Msg::Reject { .. } => "Reject",
        Msg::Read { .. } => "Read",
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
    }
}
