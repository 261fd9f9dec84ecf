//! `counter-node --id <ID> --cluster <FILE> --data-dir <DIR> [--listen <HOST:PORT>]
//! [--bootstrap-timeout-secs <SECS>]`, or, for a node joining a running cluster,
//! `counter-node --id <ID> --join <MEMBER_ADDR> --listen <HOST:PORT> --data-dir <DIR>`

/// mimalloc instead of glibc's malloc: in a profile of 64 clients on 10,000 keys, glibc's
/// malloc and free took about a tenth of all CPU (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use counter::bootstrap::{Asker, Phase, StartError, Starting};
use counter::membership::Membership;
use counter::node::Node;
use counter::serving::{serve_then_drain, ServeArgs, Signals};
use counter::status::Reporter;
use counter::telemetry::Readiness;
use counter_cluster::Cluster;
use counter_net::server::serve_until;
use counter_proto::{DataState, Msg};
use counter_storage::{ClusterConfig, DirContents, Identity, StorageError, Store};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Exit status of a refused start (EX_CONFIG): starting again does not help until the
/// operator acts, so a supervisor should not retry it (systemd: RestartPreventExitStatus=78).
const REFUSED: u8 = 78;

const GUARDS: &str = "\
Starting a node:
  - a new cluster: every member with the same cluster file (--cluster); they wait for each other;
  - a node joining a running cluster: --join <any member's address> --listen <its own address>
    (no --cluster). It waits until an admin runs `counter-cli cluster add-node ID ADDR` (or
    `cluster replace-node OLD_ID ID ADDR`), then serves;
  - a restart: the same command line as the first start (the data dir then decides).
Guards: counter-node refuses to start (exit status 78, one line on stderr, nothing written to
the data dir) when
  - the data dir belongs to another node id than --id;
  - the cluster file's members, replication or shards differ both from the configuration the
    data dir was created with and from the agreed configuration it runs. Members are changed
    with `counter-cli cluster add-node/remove-node/replace-node`, never by editing the file:
    restart with the original cluster file (or one listing the agreed members);
  - the data dir is empty but the cluster already counts this node as a member (its disk was
    lost or wiped): never start it empty under its old id. Restore the data dir it last ran
    with, or replace it: start a node with a NEW id with --join and run
    `counter-cli cluster replace-node OLD_ID NEW_ID NEW_ADDR`;
  - --join with an id the cluster removed (ids are never reused) or already counts as a member.
Creating a new cluster needs every member once: a node creates its empty data dir only after
every other member has answered that it has not served yet, and serves only after every member
has created its own. They wait for each other up to --bootstrap-timeout-secs, then exit 1 (an
empty data dir is left untouched; a created one resumes waiting at the next start). A node
whose data dir exists starts without its peers. A data dir of an earlier build (no identity
recorded) adopts the cluster file's at its first start.";

/// A storage node of the counter store.
#[derive(Parser)]
#[command(version, about, after_help = GUARDS)]
struct Args {
    /// This node's id.
    #[arg(long)]
    id: u32,
    /// The cluster file (TOML) of a new cluster (or of the cluster this node was created in).
    #[arg(long, required_unless_present = "join", conflicts_with = "join")]
    cluster: Option<PathBuf>,
    /// Join a running cluster through the member at this address (a new node; see below).
    #[arg(long, value_name = "MEMBER_ADDR")]
    join: Option<String>,
    /// Where this node keeps its RocksDB data.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to bind (default: this node's addr in the cluster file; required with --join:
    /// the address the other members reach it at).
    #[arg(long, required_if_eq_any = [("join", ".+")])]
    listen: Option<String>,
    /// How long a node of a new cluster waits for the other members (see Guards), or a joining
    /// node for the member it joins through, then exits 1.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    bootstrap_timeout_secs: u64,
    #[command(flatten)]
    serve: ServeArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let started = Instant::now();
    let args = Args::parse();
    counter::logging::init_with("info", args.serve.log_format);
    let mut signals = Signals::new();
    if let Some(seed) = args.join.clone() {
        return run_joining(&args, &seed, started, signals).await;
    }
    let cluster_file = args.cluster.clone().expect("clap: --cluster unless --join");
    let cluster = match Cluster::load(&cluster_file) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let Some(addr) = cluster.addr(args.id) else {
        return fail(format!(
            "node id {} is not in cluster file {}",
            args.id,
            cluster_file.display()
        ));
    };
    let listen = args.listen.clone().unwrap_or_else(|| addr.to_string());
    let me = Identity::new(
        args.id,
        ClusterConfig::bootstrap(
            cluster.replication as u32,
            cluster.shards,
            cluster.nodes.clone(),
        ),
    );
    // Read-only: a data dir of another node or another configuration is refused untouched.
    let state = match counter_storage::check(&args.data_dir, &me) {
        Ok(DirContents::Empty) => DataState::Empty,
        Ok(DirContents::Legacy { .. }) => DataState::Serving,
        Ok(DirContents::Identified { state, .. }) => state,
        Err(e) => return exit(storage_error(e)),
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot listen on {listen}: {e}")),
    };
    // Listening from here on: other members starting a new cluster ask this one who it is.
    let reporter = Arc::new(Reporter::new(
        args.id,
        listen.clone(),
        me.cluster_id,
        started,
    ));
    let bootstrap = Arc::new(cluster.bootstrap_config(me.cluster_id));
    let handler = Starting::new(
        args.id,
        me.cluster_id,
        state,
        reporter.clone(),
        bootstrap.clone(),
    );
    let ready: Readiness = {
        let handler = handler.clone();
        Arc::new(move || Box::pin(node_ready(handler.clone().handle(Msg::NodeStatus))))
    };
    let telemetry = match args.serve.start_telemetry(ready).await {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let stop = CancellationToken::new();
    let server = {
        let handler = handler.clone();
        tokio::spawn(serve_until(
            listener,
            node_server_config(&args),
            move |msg| handler.clone().handle(msg),
            stop.clone(),
        ))
    };
    let start = start(&args, &cluster, &me, state, &handler);
    let store = tokio::select! {
        started = start => match started {
            Ok(store) => store,
            Err(e) => return exit(e),
        },
        _ = signals.recv() => {
            tracing::info!("shutting down before serving");
            return ExitCode::SUCCESS;
        }
    };
    let membership = match Membership::open(args.id, store.clone(), Some((*bootstrap).clone())) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let config = membership.config();
    let node = Node::new(
        args.id,
        cluster.limits,
        store.clone(),
        membership.clone(),
        reporter,
    );
    if telemetry.is_some() {
        node.spawn_gauges();
    }
    handler.serve(node);
    membership.spawn_refresh();
    tracing::info!(
        id = args.id,
        %listen,
        epoch = store.epoch(),
        shards = config.shard_count(),
        replication = config.replication,
        config_version = config.version,
        member = config.is_member(args.id),
        cluster_id = %format!("{:016x}", config.cluster_id),
        "counter-node serving"
    );
    serve_then_drain(
        &args.serve,
        "counter-node",
        server,
        stop,
        telemetry.as_ref(),
        &mut signals,
    )
    .await
}

/// The node's server: its peers' acceptor and membership messages are still served during a
/// drain (see `counter_net::server`), client commands are not.
fn node_server_config(args: &Args) -> counter_net::ServerConfig {
    counter_net::ServerConfig {
        is_peer: |msg| {
            !matches!(
                msg,
                Msg::Command { .. }
                    | Msg::OpenSession { .. }
                    | Msg::Admin(_)
                    | Msg::Status
                    | Msg::GetPlacement
            )
        },
        ..args.serve.server_config("node")
    }
}

/// Ready when the node serves and reaches a majority of the replicas of each of its shards
/// (its `cluster status` report).
async fn node_ready(status: impl std::future::Future<Output = Msg>) -> Result<String, String> {
    match status.await {
        Msg::NodeStatusReply(s) if s.ready => Ok(format!(
            "serving {} shards, configuration version {}, peers up {:?}",
            s.shards, s.config_version, s.peers_up
        )),
        Msg::NodeStatusReply(s) if s.state != DataState::Serving => Err(format!(
            "the data dir is {} (not serving yet)",
            s.state.as_str()
        )),
        Msg::NodeStatusReply(s) => Err(format!(
            "no majority of replicas reachable for {} of its {} shards (peers up {:?})",
            s.shards_without_quorum, s.shards, s.peers_up
        )),
        other => Err(format!("unexpected status answer {other:?}")),
    }
}

/// Opens the data dir, creating it only as the bootstrap rules allow (`counter::bootstrap`).
async fn start(
    args: &Args,
    cluster: &Cluster,
    me: &Identity,
    state: DataState,
    handler: &Starting,
) -> Result<Arc<Store>, StartError> {
    let deadline = Instant::now() + Duration::from_secs(args.bootstrap_timeout_secs);
    let mut peers = cluster.nodes.clone();
    peers.remove(&args.id);
    let asker = Asker {
        me: args.id,
        cluster_id: me.cluster_id,
        dir: &args.data_dir,
    };
    if state == DataState::Empty {
        asker
            .wait(Phase::Create, &peers, deadline, args.bootstrap_timeout_secs)
            .await?;
        std::fs::create_dir_all(&args.data_dir).map_err(|e| {
            StartError::Failed(format!("cannot create {}: {e}", args.data_dir.display()))
        })?;
    }
    let store = Store::open_node(&args.data_dir, me).map_err(storage_error)?;
    if store.data_state() == DataState::Created {
        handler.set_state(DataState::Created);
        asker
            .wait(Phase::Serve, &peers, deadline, args.bootstrap_timeout_secs)
            .await?;
        store.mark_serving().map_err(storage_error)?;
    }
    Ok(Arc::new(store))
}

/// A node started with `--join`: its data dir is opened (created for a new member, after the
/// checks of [`counter::join`]), then it serves like any node.
async fn run_joining(args: &Args, seed: &str, started: Instant, mut signals: Signals) -> ExitCode {
    let listen = args.listen.clone().expect("clap: --listen with --join");
    let timeout = Duration::from_secs(args.bootstrap_timeout_secs);
    let store = match counter::join::open(args.id, seed, &args.data_dir, timeout).await {
        Ok(store) => store,
        Err(e) => return exit(e),
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot listen on {listen}: {e}")),
    };
    let membership = match Membership::open(args.id, store.clone(), None) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let config = membership.config();
    if let Some(addr) = config.addr(args.id) {
        if addr != listen {
            tracing::warn!(%listen, member_addr = addr, "listening on another address than the one the cluster knows this node by");
        }
    }
    let reporter = Arc::new(Reporter::new(
        args.id,
        listen.clone(),
        config.cluster_id,
        started,
    ));
    let node = Node::new(
        args.id,
        counter_core::membership::limits(&config),
        store.clone(),
        membership.clone(),
        reporter,
    );
    membership.spawn_refresh();
    tracing::info!(
        id = args.id,
        %listen,
        epoch = store.epoch(),
        config_version = config.version,
        member = config.is_member(args.id),
        cluster_id = %format!("{:016x}", config.cluster_id),
        "counter-node serving (joined through {seed}); a member once `cluster add-node` adds it"
    );
    let ready: Readiness = {
        let node = node.clone();
        Arc::new(move || Box::pin(node_ready(node.clone().handle(Msg::NodeStatus))))
    };
    let telemetry = match args.serve.start_telemetry(ready).await {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    if telemetry.is_some() {
        node.spawn_gauges();
    }
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve_until(
        listener,
        node_server_config(args),
        move |msg| node.clone().handle(msg),
        stop.clone(),
    ));
    serve_then_drain(
        &args.serve,
        "counter-node",
        server,
        stop,
        telemetry.as_ref(),
        &mut signals,
    )
    .await
}

fn storage_error(e: StorageError) -> StartError {
    match e {
        StorageError::WrongNode { .. }
        | StorageError::ConfigChanged { .. }
        | StorageError::ShardMismatch { .. } => StartError::Refused(e.to_string()),
        e => StartError::Failed(e.to_string()),
    }
}

fn exit(e: StartError) -> ExitCode {
    match e {
        StartError::Refused(message) => {
            eprintln!("counter-node: {message}");
            ExitCode::from(REFUSED)
        }
        StartError::Failed(message) => fail(message),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("counter-node: {e}");
    ExitCode::FAILURE
}
