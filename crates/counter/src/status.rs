//! A node's answer to `NodeStatus` (`counter-cli cluster status`; the rules are in
//! `counter_proto::status`): who it is, how far its data dir is, and whether it reaches a
//! majority of the replicas of each of its shards, which it finds out by asking every peer
//! `Identify` when asked (a question that writes nothing), with a short timeout.

use counter_cluster::Placement;
use counter_net::Pool;
use counter_proto::{Config, DataState, Msg, NodeId, NodeStatus, RescanReport};
use counter_router::status::{peer_is_up, shards_without_quorum, PEER_TIMEOUT};
use std::collections::BTreeSet;
use std::time::Instant;

/// What a node knows about itself from its start, to report its status at any moment.
pub struct Reporter {
    id: NodeId,
    listen: String,
    cluster_id: u64,
    pool: Pool,
    started: Instant,
}

impl Reporter {
    /// `started`: when the process started (uptime counts from it).
    pub fn new(id: NodeId, listen: String, cluster_id: u64, started: Instant) -> Reporter {
        Reporter {
            id,
            listen,
            cluster_id,
            pool: Pool::new(PEER_TIMEOUT),
            started,
        }
    }

    /// The peers of `config` that answer `Identify` as serving members of this cluster, now.
    async fn peers_up(&self, config: &Config) -> BTreeSet<NodeId> {
        let asks = config
            .members
            .iter()
            .filter(|(&peer, _)| peer != self.id)
            .map(|(&peer, addr)| async move {
                let answer = self.pool.call(addr, Msg::Identify, PEER_TIMEOUT).await;
                let up = answer.is_ok_and(|msg| peer_is_up(peer, self.cluster_id, &msg));
                (peer, up)
            });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|(peer, up)| up.then_some(peer))
            .collect()
    }

    /// This node's status: its data dir is in `state`, it runs `config`, opened with `epoch`
    /// (`None`: not open yet); `rescan`: the rescan it drives, if any.
    pub async fn report(
        &self,
        state: DataState,
        config: &Config,
        epoch: Option<u32>,
        rescan: Vec<RescanReport>,
    ) -> NodeStatus {
        let up = self.peers_up(config).await;
        let serving = state == DataState::Serving;
        let placement = Placement::from_config(config);
        let without = shards_without_quorum(&placement, self.id, serving, &up);
        NodeStatus {
            node: self.id,
            listen: self.listen.clone(),
            cluster_id: self.cluster_id,
            config_version: config.version,
            state,
            epoch,
            shards: placement.shards_of(self.id).count() as u32,
            shards_total: placement.shards(),
            replication: config.replication,
            uptime_secs: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            peers_up: up.into_iter().collect(),
            shards_without_quorum: without,
            rescan,
            ready: serving && without == 0,
        }
    }
}
