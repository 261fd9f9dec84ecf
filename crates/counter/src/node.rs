//! A storage node: acceptor of its shards, coordinator of the keys routed to it.

use crate::coordinator::Coordinator;
use crate::membership::Membership;
use crate::status::Reporter;
use counter_cluster::{placement_msg, shard_of};
use counter_core::change::MAX_CLIENTS_LIMIT;
use counter_core::{AcceptorReply, Limits};
use counter_proto::{
    validate_command, validate_key, validate_register, AcceptorMsg, ClientError, Command, Msg,
    NodeId, Outcome, NOT_A_MEMBER,
};
use counter_router::forward::{msg_name, record_command, DEFAULT_TIMEOUT_MS};
use counter_storage::Store;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

pub struct Node {
    id: NodeId,
    store: Arc<Store>,
    membership: Arc<Membership>,
    coordinator: Arc<Coordinator>,
    /// Answers `NodeStatus`.
    reporter: Arc<Reporter>,
}

impl Node {
    /// Node `id`, serving from `store` under `membership`'s configuration; `limits`: what
    /// registers keep of their clients' requests (the cluster file's).
    pub fn new(
        id: NodeId,
        limits: Limits,
        store: Arc<Store>,
        membership: Arc<Membership>,
        reporter: Arc<Reporter>,
    ) -> Arc<Node> {
        let coordinator = Coordinator::new(id, store.clone(), membership.clone(), limits);
        Arc::new(Node {
            id,
            store,
            membership,
            coordinator,
            reporter,
        })
    }

    /// Sets the node's gauges every second while the node lives (`--metrics-listen`).
    pub fn spawn_gauges(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(node) = this.upgrade() {
                let (queued, warm) = node.coordinator.sizes();
                let (synced, pending) = node.store.cache_sizes();
                let config = node.membership.config();
                metrics::gauge!("counter_coordinator_queued_keys").set(queued as f64);
                metrics::gauge!("counter_cache_keys", "cache" => "prepared_rounds")
                    .set(warm as f64);
                metrics::gauge!("counter_cache_keys", "cache" => "synced_states")
                    .set(synced as f64);
                metrics::gauge!("counter_cache_keys", "cache" => "pending_writes")
                    .set(pending as f64);
                metrics::gauge!("counter_node_epoch").set(f64::from(node.store.epoch()));
                metrics::gauge!("counter_config_version").set(config.version as f64);
                metrics::gauge!("counter_member").set(if config.is_member(node.id) {
                    1.0
                } else {
                    0.0
                });
                metrics::gauge!("counter_shards_moving").set(config.moving().count() as f64);
                drop(node);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Runs a client's command (validated here: a node is a front door too) as its
    /// coordinator.
    async fn command(&self, key: String, command: Command, timeout_ms: u32) -> Msg {
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
        let config = self.membership.config();
        if !config.is_member(self.id) {
            return Msg::Error(ClientError::unavailable(format!(
                "node {} {NOT_A_MEMBER} (configuration version {}); \
                 send commands to a member",
                self.id, config.version
            )));
        }
        // Any member coordinates any key: its rounds go to the key's replicas.
        let shard = shard_of(&key, config.shard_count());
        let timeout_ms = if timeout_ms == 0 {
            DEFAULT_TIMEOUT_MS
        } else {
            timeout_ms
        };
        let budget = Duration::from_millis(u64::from(timeout_ms));
        // The router's span carries the request at info; the node's is a debug span.
        let span = tracing::debug_span!(
            "request",
            op = command.op.name(),
            key,
            request = ?command.request.map(|r| (r.client, r.seq))
        );
        let submitted = self.coordinator.submit(shard, key, command, budget);
        match submitted.instrument(span).await {
            Ok(outcome) => outcome_msg(outcome, &command),
            Err(e) => Msg::Error(e),
        }
    }

    /// Answers another node's coordinator: the fence first (the key's shard, the
    /// configuration), then the acceptor's rules.
    async fn acceptor(&self, msg: AcceptorMsg) -> Msg {
        let (shard, key, config) = msg.target();
        let refusal = match key {
            Some(key) => self.membership.check_key(shard, key, config),
            None => self.membership.check_shard(shard, config),
        };
        if let Some(refusal) = refusal {
            return refusal;
        }
        let store = &self.store;
        match msg {
            AcceptorMsg::Read { shard, key, .. } => match store.read_durable(shard, &key) {
                Ok(accepted) => Msg::ReadReply { accepted },
                Err(e) => storage_failed(e),
            },
            AcceptorMsg::Prepare {
                shard, key, ballot, ..
            } => to_msg(store.prepare(shard, &key, ballot).await),
            AcceptorMsg::Accept {
                shard,
                key,
                ballot,
                register,
                next,
                ..
            } => {
                if let Err(e) = validate_register(&register, MAX_CLIENTS_LIMIT) {
                    return Msg::Error(e);
                }
                to_msg(store.accept(shard, &key, ballot, register, next).await)
            }
            AcceptorMsg::PromiseFloor { shard, ballot, .. } => {
                to_msg(store.promise_floor(shard, ballot).await)
            }
            AcceptorMsg::ReadAtFloor {
                shard, key, ballot, ..
            } => to_msg(store.read_at_floor(shard, &key, ballot).await),
        }
    }

    /// Answers one message from a router, a client or another node's coordinator.
    pub async fn handle(self: Arc<Self>, msg: Msg) -> Msg {
        match msg {
            Msg::Command {
                key,
                command,
                timeout_ms,
            } => {
                let started = std::time::Instant::now();
                let reply = self.command(key, command, timeout_ms).await;
                record_command("node", &command, &reply, started);
                reply
            }
            Msg::Acceptor(m) => self.acceptor(m).await,
            Msg::OpenSession { lifetime_ms } => counter_router::forward::session_opened(
                &self.coordinator.limits(),
                lifetime_ms,
                counter_proto::unix_ms(),
            ),
            Msg::GetPlacement => placement_msg(&self.membership.config()),
            Msg::GetConfig => Msg::ConfigIs(Box::new((*self.membership.config()).clone())),
            Msg::InstallConfig(config) => {
                self.membership.learn(*config);
                Msg::ConfigInstalled {
                    version: self.membership.config().version,
                }
            }
            Msg::ConfigPrepare { ballot } => self.membership.on_config_prepare(ballot),
            Msg::ConfigAccept { ballot, config } => {
                self.membership.on_config_accept(ballot, *config)
            }
            Msg::ListKeys {
                shard,
                after,
                limit,
                config,
            } => self
                .membership
                .list_keys(shard, after.as_deref(), limit, config),
            Msg::Admin(change) => match self.membership.admin(change, &self.coordinator).await {
                Ok(done) => Msg::AdminDone(done),
                Err(e) => Msg::Error(e),
            },
            // Another node checks, before creating its empty data dir, that it is not one
            // whose disk was lost (`bootstrap`): this node serves, so it says so.
            Msg::Identify => match self.store.identity() {
                Some(identity) => Msg::Identity {
                    cluster_id: identity.cluster_id,
                    node: self.id,
                    config_version: self.membership.config().version,
                    state: self.store.data_state(),
                },
                None => Msg::Error(ClientError::unavailable(
                    "this node's data dir records no identity",
                )),
            },
            Msg::NodeStatus => Msg::NodeStatusReply(
                self.reporter
                    .report(
                        self.store.data_state(),
                        &self.membership.config(),
                        Some(self.store.epoch()),
                        self.membership.rescan_report(),
                    )
                    .await,
            ),
            other => Msg::Error(ClientError::invalid(format!(
                "a node does not take {} messages",
                msg_name(&other)
            ))),
        }
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
        Err(e) => storage_failed(e),
    }
}

fn storage_failed(e: counter_storage::StorageError) -> Msg {
    crate::membership::storage_failed("acceptor", e)
}
