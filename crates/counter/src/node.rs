//! A storage node: acceptor of its shards, coordinator of the keys routed to it.

use crate::coordinator::Coordinator;
use crate::status::Reporter;
use counter_cluster::{Cluster, Placement};
use counter_core::change::MAX_CLIENTS_LIMIT;
use counter_core::AcceptorReply;
use counter_proto::{
    validate_command, validate_key, validate_register, ClientError, Command, Msg, NodeId, Outcome,
    ShardId,
};
use counter_router::forward::{msg_name, DEFAULT_TIMEOUT_MS};
use counter_storage::Store;
use std::sync::Arc;
use std::time::Duration;

pub struct Node {
    id: NodeId,
    /// The answer to `GetPlacement` (the cluster file's shards, replication and members).
    placement_msg: Msg,
    placement: Placement,
    /// Replica set of every shard (shared with rounds without copying).
    replicas: Vec<Arc<[NodeId]>>,
    store: Arc<Store>,
    coordinator: Arc<Coordinator>,
    /// Answers `NodeStatus`.
    reporter: Arc<Reporter>,
}

impl Node {
    /// Node `id` of `cluster`, serving from `store`; `reporter` knows its placement.
    pub fn new(
        id: NodeId,
        cluster: &Cluster,
        store: Arc<Store>,
        reporter: Arc<Reporter>,
    ) -> Arc<Node> {
        let placement = reporter.placement().clone();
        let replicas = (0..placement.shards())
            .map(|s| Arc::from(placement.replicas(s)))
            .collect();
        let coordinator =
            Coordinator::new(id, store.clone(), cluster.nodes.clone(), cluster.limits);
        Arc::new(Node {
            id,
            placement_msg: cluster.placement_msg(),
            placement,
            replicas,
            store,
            coordinator,
            reporter,
        })
    }

    fn is_replica(&self, shard: ShardId) -> bool {
        self.replicas
            .get(shard as usize)
            .is_some_and(|set| set.contains(&self.id))
    }

    /// Answers one message from a router, a client or another node's coordinator.
    pub async fn handle(self: Arc<Self>, msg: Msg) -> Msg {
        match msg {
            Msg::Command {
                key,
                command,
                timeout_ms,
            } => {
                if let Err(e) = validate_key(&key).and_then(|_| validate_command(&command)) {
                    return Msg::Error(e);
                }
                let ctx = counter_core::Ctx {
                    now_ms: counter_proto::unix_ms(),
                    limits: self.coordinator.limits(),
                };
                if let Err(e) = counter_core::change::check_request(&command, &ctx) {
                    return Msg::Error(e);
                }
                let shard = self.placement.shard_of(&key);
                if !self.is_replica(shard) {
                    return Msg::Error(ClientError::unavailable(format!(
                        "node {} is not a replica of shard {shard} (replicas {:?}); \
                         is the cluster file the same everywhere?",
                        self.id,
                        self.placement.replicas(shard)
                    )));
                }
                let timeout_ms = if timeout_ms == 0 {
                    DEFAULT_TIMEOUT_MS
                } else {
                    timeout_ms
                };
                let budget = Duration::from_millis(u64::from(timeout_ms));
                let replicas = self.replicas[shard as usize].clone();
                match self
                    .coordinator
                    .submit(shard, replicas, key, command, budget)
                    .await
                {
                    Ok(outcome) => outcome_msg(outcome, &command),
                    Err(e) => Msg::Error(e),
                }
            }
            Msg::Read { shard, key } => {
                if let Some(refusal) = self.check_acceptor(shard, &key) {
                    return refusal;
                }
                match self.store.read_durable(shard, &key) {
                    Ok(accepted) => Msg::ReadReply { accepted },
                    Err(e) => {
                        tracing::error!(error = %e, "acceptor storage failed");
                        Msg::Error(ClientError::unavailable(format!("storage: {e}")))
                    }
                }
            }
            Msg::Prepare { shard, key, ballot } => {
                if let Some(refusal) = self.check_acceptor(shard, &key) {
                    return refusal;
                }
                to_msg(self.store.prepare(shard, &key, ballot).await)
            }
            Msg::Accept {
                shard,
                key,
                ballot,
                register,
                next,
            } => {
                if let Some(refusal) = self.check_acceptor(shard, &key) {
                    return refusal;
                }
                if let Err(e) = validate_register(&register, MAX_CLIENTS_LIMIT) {
                    return Msg::Error(e);
                }
                to_msg(self.store.accept(shard, &key, ballot, register, next).await)
            }
            Msg::OpenSession { lifetime_ms } => counter_router::forward::session_opened(
                &self.coordinator.limits(),
                lifetime_ms,
                counter_proto::unix_ms(),
            ),
            Msg::GetPlacement => self.placement_msg.clone(),
            // Another member checks, before creating its empty data dir, that it is not one
            // whose disk was lost (`bootstrap`): this node serves, so it says so.
            Msg::Identify => match self.store.identity() {
                Some(identity) => Msg::Identity {
                    cluster_id: identity.cluster_id,
                    node: self.id,
                    config_version: identity.config.version,
                    state: self.store.data_state(),
                },
                None => Msg::Error(ClientError::unavailable(
                    "this node's data dir records no identity",
                )),
            },
            Msg::NodeStatus => {
                let config_version = self
                    .store
                    .identity()
                    .map_or(counter_proto::BOOTSTRAP_CONFIG_VERSION, |i| {
                        i.config.version
                    });
                Msg::NodeStatusReply(
                    self.reporter
                        .report(
                            self.store.data_state(),
                            config_version,
                            Some(self.store.epoch()),
                        )
                        .await,
                )
            }
            other => Msg::Error(ClientError::invalid(format!(
                "a node does not take {} messages",
                msg_name(&other)
            ))),
        }
    }

    /// Refuses acceptor requests for keys this node does not replicate (or in the wrong shard).
    fn check_acceptor(&self, shard: ShardId, key: &str) -> Option<Msg> {
        if let Err(e) = validate_key(key) {
            return Some(Msg::Error(e));
        }
        if self.placement.shard_of(key) != shard || !self.is_replica(shard) {
            return Some(Msg::Error(ClientError::invalid(format!(
                "node {} does not replicate key {key:?} in shard {shard}",
                self.id
            ))));
        }
        None
    }
}

/// The answer to a client for a command's outcome.
pub fn outcome_msg(outcome: Outcome, cmd: &Command) -> Msg {
    let error = match outcome {
        Outcome::Value(v) => return Msg::Value(v),
        Outcome::Cas { value, swapped } => return Msg::Swapped { value, swapped },
        Outcome::Overflow { value } => ClientError::invalid(format!(
            "{:?} on value {value} would overflow a signed 64-bit counter; nothing changed",
            cmd.op
        )),
        Outcome::BelowMin { value, would, min } => ClientError::rejected(format!(
            "below-min: the result {would} would be below the minimum {min}; the value stays {value}"
        )),
        Outcome::AboveMax { value, would, max } => ClientError::rejected(format!(
            "above-max: the result {would} would be above the maximum {max}; the value stays {value}"
        )),
        Outcome::Expired => ClientError::expired(format!(
            "request {} is older than what this key remembers of its session, or its session \
             ended: not applied by this attempt, but an earlier attempt may have been or may \
             yet be (its outcome, and that of the session's earlier unanswered requests, is \
             unknown); send new requests in a new session",
            cmd.request.unwrap_or_default()
        )),
    };
    Msg::Error(error)
}

fn to_msg(reply: Result<AcceptorReply, counter_storage::StorageError>) -> Msg {
    match reply {
        Ok(AcceptorReply::Promise { ballot, accepted }) => Msg::Promise { ballot, accepted },
        Ok(AcceptorReply::Accepted { ballot, next }) => Msg::Accepted { ballot, next },
        Ok(AcceptorReply::Reject { ballot, promised }) => Msg::Reject { ballot, promised },
        Err(e) => {
            tracing::error!(error = %e, "acceptor storage failed");
            Msg::Error(ClientError::unavailable(format!("storage: {e}")))
        }
    }
}
