//! What a run simulates: fault and workload settings ([`Config`], its presets), planted bugs
//! ([`Mutation`]), and the command that replays a seed of a setting.

use counter_core::Limits;
use counter_proto::NodeId;

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
    /// Acceptor messages a node sends one peer within this many ticks of the first travel
    /// together, as one batch (`counter-net`'s `Msg::Batch`); 0: each alone.
    pub batch_window: u64,
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
    /// Bytes of keys that have their first round at one floor of a shard before the
    /// coordinator raises it again (the node's 256 KiB, kept small here so that floors are
    /// raised often: 3 keys of the simulator's names, `k0`..).
    pub floor_lease_bytes: usize,
    /// How long after a failed raise of a floor before the next (the node's `FLOOR_RETRY`).
    pub floor_retry: u64,
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
    /// Every node but the first down at once (no quorum anywhere): at this tick, for this long.
    /// Clients retry through it and give up at their deadline; after it, none may be answered
    /// expired.
    pub blackout: Option<(u64, u64)>,
    /// Shards keys are split into (`k{i}` is in shard `i % shards`) and the nodes each is
    /// replicated on (0: every node). The presets but `membership` have one shard on every node.
    pub shards: usize,
    pub replication: usize,
    /// Membership changes during the run (the `membership` setting): a mover adds a node,
    /// removes an original one and replaces another (lost for good with its disk), retrying
    /// after faults like the admin command; after it, every key is read once more.
    pub membership: bool,
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
    /// Clients keep using a session until its renewal time, whatever their request's deadline
    /// (without the client library's rule), so a request's retries may outlive the session.
    RenewLate,
    /// The mover switches from the joint configuration to the final one without the rescan's
    /// identity rounds.
    SkipRescan,
    /// Rounds and quiet reads on a moving shard count a majority of its old set alone as a
    /// quorum (they still send to both sets), instead of a majority of each set. (The other
    /// way to get it wrong, a majority of the union of both sets, cannot lose a count with the
    /// moves `plan` makes, one member of a set at a time: 3 of 4 nodes always hold 2 of each
    /// 3-node set.)
    OldVotesCount,
    /// A node drops a shard's data when it installs the joint configuration that moves the
    /// shard away from it, instead of the final one.
    DropBeforeCommit,
    /// Acceptors admit messages sent under an older configuration version.
    NoFence,
    /// Acceptors forget their shard's floor when they judge a Prepare or an Accept (they still
    /// answer reads at it): the floor is no promise.
    FloorNoPromise,
}

impl Mutation {
    /// Every mutation with its `--mutation` name.
    pub const ALL: [(&'static str, Mutation); 13] = [
        ("none", Mutation::None),
        ("promise-not-persisted", Mutation::PromiseNotPersisted),
        ("retry-ambiguous", Mutation::RetryAmbiguous),
        ("read-one-replica", Mutation::ReadOneReplica),
        ("forget-request-ids", Mutation::ForgetRequestIds),
        ("quiet-read-any-reply", Mutation::QuietReadAnyReply),
        (
            "expired-means-not-applied",
            Mutation::ExpiredMeansNotApplied,
        ),
        ("renew-late", Mutation::RenewLate),
        ("skip-rescan", Mutation::SkipRescan),
        ("old-votes-count", Mutation::OldVotesCount),
        ("drop-before-commit", Mutation::DropBeforeCommit),
        ("no-fence", Mutation::NoFence),
        ("floor-no-promise", Mutation::FloorNoPromise),
    ];

    /// The mutation named `name` (`--mutation`).
    pub fn named(name: &str) -> Option<Mutation> {
        Mutation::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, m)| m)
    }
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
            batch_window: 8,
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
            floor_lease_bytes: 3 * 51,
            floor_retry: 200,
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
            blackout: None,
            shards: 1,
            replication: 0,
            membership: false,
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

    /// A preset by name (`cluster`, `hostile`, `sessions`, `crowded`, `outage`, `membership`,
    /// `cold`).
    pub fn setting(name: &str, nodes: usize) -> Option<Config> {
        Some(match name {
            "cluster" => Config::cluster(nodes),
            "hostile" => Config::hostile(nodes),
            "sessions" => Config::sessions(nodes),
            "crowded" => Config::crowded(nodes),
            "outage" => Config::outage(nodes),
            "membership" => Config::membership(nodes),
            "cold" => Config::cold(nodes),
            _ => return None,
        })
    }

    /// Like [`Config::sessions`], with a request deadline longer than the clock skew allowed
    /// and every node down at once for twice that deadline: requests in flight end unknown
    /// (their deadline passes), and, by the client library's rule, no request's retries
    /// outlive its session, so nothing may be answered expired when the cluster returns.
    pub fn outage(nodes: usize) -> Config {
        Config {
            setting: "outage",
            // A deadline longer than the skew, so that only the library's rule (a session
            // takes a request only if its deadline ends before the renewal time) keeps its
            // retries inside the session; sessions short enough to renew within a run, long
            // enough that a client has at most 3 with entries at once (expects_no_expired).
            request_deadline: 2_250,
            limits: Limits {
                max_clients: 24,
                idle_ms: 10_500,
                skew_ms: 1_500,
            },
            clock_skew: 1_500,
            // Around the sessions' first renewal (7,500).
            blackout: Some((6_500, 2_500)),
            ..Config::sessions(nodes)
        }
    }

    /// True when no request may be answered expired: request ids in sessions, clocks within
    /// the skew the limits allow, and keys that keep every session that writes them. A
    /// session takes new requests for `renew_after - deadline` and keeps its entries for its
    /// whole life, so a client may have `life / (renew_after - deadline) + 1` sessions with
    /// entries at once (2 with production's defaults: an hour's life, a 10 s timeout).
    pub fn expects_no_expired(&self) -> bool {
        let life = self.limits.session_life(0);
        let usable = self
            .limits
            .renew_after_ms(life)
            .saturating_sub(self.request_deadline)
            .max(1);
        let per_client = life.div_ceil(usable) as usize + 1;
        self.request_ids
            && self.clock_skew <= self.limits.skew_ms
            && self.limits.max_clients >= per_client * self.clients
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

    /// Membership changes under the cluster's faults: keys in a few shards of 3 replicas each,
    /// and a mover that adds a node, removes an original one and replaces another (lost for
    /// good) while clients count, with faults aimed at the moves as well (`sim/membership.rs`).
    /// Every history must stay linearizable, with a last read of every key once the changes
    /// are done.
    pub fn membership(nodes: usize) -> Config {
        Config {
            setting: "membership",
            clients: 4,
            keys: 6,
            ops_per_client: 20,
            shards: 3,
            replication: 3,
            membership: true,
            ..Config::cluster(nodes)
        }
    }

    /// First touches: many keys, each written a few times, so that most batches find no
    /// prepared round and run at their shard's floor (`counter_core::floor`), which leases
    /// of a few keys each keep raising; two coordinators compete for the floor while the
    /// other nodes (pure acceptors) crash often and restart quickly, as in
    /// [`Config::hostile`].
    pub fn cold(nodes: usize) -> Config {
        Config {
            setting: "cold",
            clients: 6,
            keys: 60,
            ops_per_client: 15,
            floor_lease_bytes: 6 * 51,
            request_ids: true,
            ..Config::hostile(nodes)
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
    if preset
        .as_ref()
        .is_some_and(|p| p.batch_window != cfg.batch_window)
    {
        flags += &format!(" --batch-window {}", cfg.batch_window);
    }
    format!("cargo run --release -p counter-sim -- {flags} --seed {seed} --verbose")
}
