//! The router: forwards client commands to a key's coordinator, failing over only while that
//! is safe.

use crate::cluster::Cluster;
use crate::placement::Placement;
use counter_net::{CallError, Pool};
use counter_proto::{validate_key, validate_op, ClientError, Msg, NodeId};
use dashmap::DashMap;
use std::time::{Duration, Instant};

/// How long a node that refused a connection is tried last.
const DOWN_FOR: Duration = Duration::from_secs(1);
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

    /// Answers one message from a client.
    pub async fn handle(&self, msg: Msg) -> Msg {
        match msg {
            Msg::Command {
                key,
                op,
                timeout_ms,
            } => match self.forward(key, op, timeout_ms).await {
                Ok(reply) => reply,
                Err(e) => Msg::Error(e),
            },
            other => Msg::Error(ClientError::invalid(format!(
                "a router only takes commands, not {}",
                msg_name(&other)
            ))),
        }
    }

    async fn forward(
        &self,
        key: String,
        op: counter_proto::Op,
        timeout_ms: u32,
    ) -> Result<Msg, ClientError> {
        validate_key(&key)?;
        validate_op(&op)?;
        let timeout_ms = if timeout_ms == 0 {
            DEFAULT_TIMEOUT_MS
        } else {
            timeout_ms
        };
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        let shard = self.placement.shard_of(&key);
        // Preference order, with recently unreachable nodes moved to the back.
        let mut order: Vec<NodeId> = self.placement.replicas(shard).to_vec();
        order.sort_by_key(|n| {
            self.down
                .get(n)
                .is_some_and(|since| since.elapsed() < DOWN_FOR)
        });
        let mut errors = Vec::new();
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
            let cmd = Msg::Command {
                key: key.clone(),
                op,
                timeout_ms: budget.max(1),
            };
            match self.pool.call(addr, cmd, left).await {
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
                Err(CallError::Lost(e)) => {
                    // The command may be running or applied: a retry elsewhere could count twice.
                    return Err(ClientError::unknown(format!(
                        "node {node} took the command and then {e}; it may have been applied"
                    )));
                }
            }
        }
        Err(ClientError::unavailable(format!(
            "no replica of shard {shard} could be reached: {}",
            if errors.is_empty() {
                "deadline reached".to_string()
            } else {
                errors.join("; ")
            }
        )))
    }
}

/// A message's variant name, for error texts.
pub fn msg_name(msg: &Msg) -> &'static str {
    match msg {
        Msg::Command { .. } => "Command",
        Msg::Value(_) => "Value",
        Msg::Error(_) => "Error",
        Msg::Prepare { .. } => "Prepare",
        Msg::Promise { .. } => "Promise",
        Msg::Accept { .. } => "Accept",
        Msg::Accepted { .. } => "Accepted",
        Msg::Reject { .. } => "Reject",
    }
}
