//! `counter-node --id <ID> --cluster <FILE> --data-dir <DIR> [--listen <HOST:PORT>]`

/// mimalloc instead of glibc's malloc: in a profile of 64 clients on 10,000 keys, glibc's
/// malloc and free took about a tenth of all CPU (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use counter::node::Node;
use counter_net::{serve, ServerConfig};
use counter_router::Cluster;
use counter_storage::Store;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// A storage node of the counter store.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// This node's id in the cluster file.
    #[arg(long)]
    id: u32,
    /// The cluster file (TOML).
    #[arg(long)]
    cluster: PathBuf,
    /// Where this node keeps its RocksDB data.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to bind (default: this node's addr in the cluster file).
    #[arg(long)]
    listen: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    counter::logging::init("info");
    let args = Args::parse();
    let cluster = match Cluster::load(&args.cluster) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let Some(addr) = cluster.addr(args.id) else {
        return fail(format!(
            "node id {} is not in cluster file {}",
            args.id,
            args.cluster.display()
        ));
    };
    let listen = args.listen.clone().unwrap_or_else(|| addr.to_string());
    if let Err(e) = std::fs::create_dir_all(&args.data_dir) {
        return fail(format!("cannot create {}: {e}", args.data_dir.display()));
    }
    let store = match Store::open(&args.data_dir, cluster.shards) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(e),
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot listen on {listen}: {e}")),
    };
    let node = Node::new(args.id, &cluster, store.clone());
    tracing::info!(
        id = args.id,
        %listen,
        epoch = store.epoch(),
        shards = cluster.shards,
        replication = cluster.replication,
        "counter-node serving"
    );
    tokio::select! {
        _ = serve(listener, ServerConfig::default(), move |msg| node.clone().handle(msg)) => {}
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    tracing::error!("{e}");
    eprintln!("counter-node: {e}");
    ExitCode::FAILURE
}
