//! The bootstrap check: may this node create an empty data dir, and may it serve?
//!
//! A node whose data dir is empty cannot tell from its own disk whether it is new, or an
//! existing member whose disk was lost or wiped. Started empty under its old id, the latter
//! would forget its promises and acceptances (Paxos amnesia) and could lose acknowledged
//! counts. Its peers can tell, so it asks every other member of the cluster file
//! ([`Msg::Identify`]) before it creates anything. Each answers its cluster id and how far its
//! data dir is ([`DataState`]): `empty`, `created` (for a new cluster, not served yet) or
//! `serving` (has served, or may have).
//!
//! # The rules
//!
//! 1. **Before creating** an empty data dir, every other member must have answered `empty` or
//!    `created`. Any `serving` answer refuses: that member has served while this node was a
//!    member, so this node's data dir existed (rule 2) and is lost. Members that do not answer
//!    are waited for (a new cluster needs every member once); a timeout exits, nothing written.
//! 2. **Before serving** the first time, a node whose data dir is `created` waits until every
//!    other member answered `created` or `serving`, then records `serving` (synced) and serves.
//!
//! Rule 2 is what makes rule 1 sound when all members start together: a member answers
//! `serving` only after every other member had created its data dir, so an `empty` node that
//! hears `serving` had a data dir and lost it; it cannot be a slow member of the same new
//! cluster. (With rule 1 alone, a node that created its data dir and served before a slower
//! member asked would make that member refuse, falsely.) A node that stops while `created`
//! resumes at rule 2 when started again; its data dir is not empty, so it never reruns rule 1.
//!
//! Any answer with another cluster id (another cluster file) or from another node id than the
//! cluster file places at that address refuses too, in both rules. A node whose data dir is
//! `serving` (or of an earlier build, adopted as `serving`) starts without asking anyone: a
//! restart after a crash works with every peer down.
//!
//! While it checks, the node already listens, and answers only `Identify` (other members check
//! too) and `NodeStatus` (`cluster status`); everything else gets `unavailable` until it
//! serves ([`Starting`]).

use crate::node::Node;
use crate::status::Reporter;
use counter_net::{CallError, Pool};
use counter_proto::{ClientError, Config, DataState, Msg, NodeId};
use counter_router::forward::msg_name;
use counter_storage::BOOTSTRAP_CONFIG_VERSION;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Pause between two rounds of questions to the members that have not answered as needed.
const RETRY: Duration = Duration::from_millis(250);
/// How long one question waits for its answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the members still waited for are logged (and whenever that list changes).
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Which rule a node is waiting on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Rule 1: the data dir is empty; every other member must be `empty` or `created`.
    Create,
    /// Rule 2: the data dir is `created`; every other member must be `created` or `serving`.
    Serve,
}

/// Why a start stopped: a refusal (exit status 78: starting again will not help until the
/// operator acts), or a failure (exit status 1: starting again may).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartError {
    Refused(String),
    Failed(String),
}

/// One member's answer, judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// As the phase needs.
    Ready,
    /// Not yet (why).
    Waiting(String),
    /// The start must be refused (the message).
    Refuse(String),
}

/// What this node is, for judging the answers.
pub struct Asker<'a> {
    pub me: NodeId,
    pub cluster_id: u64,
    pub dir: &'a Path,
}

impl Asker<'_> {
    /// Judges member `peer`'s (at `addr`) answer to `Identify` in `phase`.
    pub fn judge(
        &self,
        phase: Phase,
        peer: NodeId,
        addr: &str,
        answer: Result<Msg, CallError>,
    ) -> Verdict {
        let (cluster_id, node, state) = match answer {
            Ok(Msg::Identity {
                cluster_id,
                node,
                config_version: _,
                state,
            }) => (cluster_id, node, state),
            Ok(Msg::Error(e)) => return Verdict::Waiting(format!("answered {e}")),
            Ok(other) => return Verdict::Waiting(format!("answered {}", msg_name(&other))),
            Err(e) => return Verdict::Waiting(e.to_string()),
        };
        let me = self.me;
        let dir = self.dir.display();
        if node != peer {
            return Verdict::Refuse(format!(
                "{addr}, node {peer}'s address in the cluster file, is answered by node {node}: \
                 check the addresses in the cluster file (every member must run with the same \
                 file)"
            ));
        }
        if cluster_id != self.cluster_id {
            return Verdict::Refuse(format!(
                "node {peer} ({addr}) runs with another cluster configuration (cluster id \
                 {cluster_id:016x}, its data dir {state}; this node's cluster file describes \
                 cluster {:016x}): every member must run with the same cluster file. Members \
                 cannot be added or changed by editing the cluster file; restore the original \
                 one, and change members with `counter-cli cluster add-node/remove-node/\
                 replace-node`",
                self.cluster_id
            ));
        }
        match (phase, state) {
            (Phase::Create, DataState::Serving) => Verdict::Refuse(format!(
                "data dir {dir} is empty but the cluster already has data for node {me} (its \
                 disk was lost or wiped?): node {peer} ({addr}) has served with node {me} as a \
                 member. Starting it empty would forget promises and acceptances and can lose \
                 acknowledged counts. Do not start it with an empty data dir; restore the data \
                 dir it last ran with (e.g. a snapshot taken after it stopped: an older copy \
                 forgets what came after it too), or replace the node: start a node with a new \
                 id (`counter-node --id NEW_ID --join {addr} --listen NEW_ADDR --data-dir DIR`) \
                 and run `counter-cli cluster replace-node {me} NEW_ID NEW_ADDR`. Meanwhile the \
                 cluster serves without node {me} while a majority of each key's replicas is up"
            )),
            (Phase::Create, DataState::Empty | DataState::Created) => Verdict::Ready,
            (Phase::Serve, DataState::Empty) => {
                Verdict::Waiting("its data dir is still empty".into())
            }
            (Phase::Serve, DataState::Created | DataState::Serving) => Verdict::Ready,
            // A node started with --join answers so; it is not a member of a cluster being
            // created from a cluster file.
            (_, DataState::Joining) => Verdict::Refuse(format!(
                "node {peer} ({addr}) was started with --join (it waits to be added to a running \
                 cluster), but this node's cluster file lists it as a member of a new cluster: \
                 start every member of a new cluster with the same cluster file"
            )),
        }
    }

    /// Asks the `peers` (id → addr, this node excluded) until every one has answered as
    /// `phase` needs, one answer refuses, or `deadline` passes.
    pub async fn wait(
        &self,
        phase: Phase,
        peers: &BTreeMap<NodeId, String>,
        deadline: Instant,
        timeout_flag_secs: u64,
    ) -> Result<(), StartError> {
        let pool = Pool::new(Duration::from_millis(500));
        let mut waiting: BTreeMap<NodeId, String> = peers
            .keys()
            .map(|&id| (id, "not asked yet".to_string()))
            .collect();
        let mut logged = String::new();
        let mut logged_at = Instant::now();
        loop {
            let asks = waiting.keys().map(|&id| {
                let addr = peers[&id].clone();
                let pool = &pool;
                async move {
                    let answer = pool.call(&addr, Msg::Identify, CALL_TIMEOUT).await;
                    (id, self.judge(phase, id, &addr, answer))
                }
            });
            for (id, verdict) in futures::future::join_all(asks).await {
                match verdict {
                    Verdict::Ready => {
                        waiting.remove(&id);
                    }
                    Verdict::Waiting(why) => {
                        waiting.insert(id, why);
                    }
                    Verdict::Refuse(message) => return Err(StartError::Refused(message)),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            let list = waiting
                .iter()
                .map(|(id, why)| format!("node {id} ({}: {why})", peers[id]))
                .collect::<Vec<_>>()
                .join(", ");
            if Instant::now() >= deadline {
                let dir = self.dir.display();
                return Err(StartError::Failed(match phase {
                    Phase::Create => format!(
                        "data dir {dir} is empty, so this node would create a new cluster, and \
                         creating one needs every member of the cluster file to answer once; \
                         after {timeout_flag_secs}s (--bootstrap-timeout-secs) still no answer \
                         from {list}. Start every member (they wait for each other), or check \
                         the addresses; nothing was written to {dir}"
                    ),
                    Phase::Serve => format!(
                        "data dir {dir} was created for a new cluster, but after \
                         {timeout_flag_secs}s (--bootstrap-timeout-secs) not every member has \
                         created its own ({list}); a node serves only once all have. Start \
                         every member; this node resumes waiting when started again"
                    ),
                }));
            }
            if list != logged || logged_at.elapsed() >= LOG_EVERY {
                match phase {
                    Phase::Create => tracing::info!(
                        "data dir is empty: waiting for every other member to answer that it \
                         has not served yet before creating it (a new cluster); waiting for {list}"
                    ),
                    Phase::Serve => tracing::info!(
                        "data dir created for a new cluster: waiting for every other member to \
                         create its own before serving; waiting for {list}"
                    ),
                }
                logged = list;
                logged_at = Instant::now();
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// A node's request handler from the moment it listens: while it starts, it answers only
/// `Identify` (with its data dir's state); once it serves, its [`Node`] answers everything.
pub struct Starting {
    id: NodeId,
    cluster_id: u64,
    state: Mutex<DataState>,
    node: OnceLock<Arc<Node>>,
    /// Answers `NodeStatus` while starting (`cluster status` shows a starting node too).
    reporter: Arc<Reporter>,
    /// The cluster file's configuration, reported while starting.
    bootstrap: Arc<Config>,
}

impl Starting {
    pub fn new(
        id: NodeId,
        cluster_id: u64,
        state: DataState,
        reporter: Arc<Reporter>,
        bootstrap: Arc<Config>,
    ) -> Arc<Starting> {
        Arc::new(Starting {
            id,
            cluster_id,
            state: Mutex::new(state),
            node: OnceLock::new(),
            reporter,
            bootstrap,
        })
    }

    /// The data dir's state, as `Identify` answers it until the node serves.
    pub fn set_state(&self, state: DataState) {
        *self.state.lock().expect("state lock") = state;
    }

    /// From now on `node` answers everything.
    pub fn serve(&self, node: Arc<Node>) {
        let _ = self.node.set(node);
    }

    pub async fn handle(self: Arc<Self>, msg: Msg) -> Msg {
        if let Some(node) = self.node.get() {
            return node.clone().handle(msg).await;
        }
        match msg {
            Msg::Identify => Msg::Identity {
                cluster_id: self.cluster_id,
                node: self.id,
                config_version: BOOTSTRAP_CONFIG_VERSION,
                state: *self.state.lock().expect("state lock"),
            },
            Msg::NodeStatus => {
                let state = *self.state.lock().expect("state lock");
                Msg::NodeStatusReply(
                    self.reporter
                        .report(state, &self.bootstrap, None, Vec::new())
                        .await,
                )
            }
            other => Msg::Error(ClientError::unavailable(format!(
                "node {} is starting (waiting for the other members of a new cluster); \
                 it does not take {} messages yet",
                self.id,
                msg_name(&other)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(cluster_id: u64, node: NodeId, state: DataState) -> Result<Msg, CallError> {
        Ok(Msg::Identity {
            cluster_id,
            node,
            config_version: 1,
            state,
        })
    }

    #[test]
    fn answers_are_judged_by_the_rules() {
        let asker = Asker {
            me: 1,
            cluster_id: 7,
            dir: Path::new("/data/node-1"),
        };
        let judge = |phase, answer| asker.judge(phase, 2, "h:2", answer);
        use DataState::*;
        use Phase::*;
        assert_eq!(judge(Create, identity(7, 2, Empty)), Verdict::Ready);
        assert_eq!(judge(Create, identity(7, 2, Created)), Verdict::Ready);
        let Verdict::Refuse(amnesia) = judge(Create, identity(7, 2, Serving)) else {
            panic!("an empty node must refuse when a member has served")
        };
        assert!(
            amnesia.starts_with(
                "data dir /data/node-1 is empty but the cluster already has data for node 1"
            ),
            "{amnesia}"
        );
        assert!(matches!(
            judge(Serve, identity(7, 2, Empty)),
            Verdict::Waiting(_)
        ));
        assert_eq!(judge(Serve, identity(7, 2, Created)), Verdict::Ready);
        assert_eq!(judge(Serve, identity(7, 2, Serving)), Verdict::Ready);
        for phase in [Create, Serve] {
            for state in [Empty, Created, Serving] {
                let Verdict::Refuse(other) = judge(phase, identity(8, 2, state)) else {
                    panic!("another cluster id must refuse")
                };
                assert!(other.contains("another cluster configuration"), "{other}");
                assert!(matches!(
                    judge(phase, identity(7, 3, state)),
                    Verdict::Refuse(_)
                ));
            }
            assert!(matches!(
                judge(phase, Err(CallError::NotSent("refused".into()))),
                Verdict::Waiting(_)
            ));
            assert!(matches!(
                judge(phase, Ok(Msg::Error(ClientError::invalid("?")))),
                Verdict::Waiting(_)
            ));
        }
    }
}
