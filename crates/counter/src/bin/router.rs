//! `counter-router --cluster <FILE> --listen <HOST:PORT> [--metrics-listen <HOST:PORT>] ...`

/// mimalloc instead of glibc's malloc: in a profile of 64 clients on 10,000 keys, glibc's
/// malloc and free took about a tenth of all CPU (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use counter::serving::{serve_then_drain, ServeArgs, Signals};
use counter::telemetry::Readiness;
use counter_cluster::Cluster;
use counter_net::server::serve_until;
use counter_router::Router;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The stateless router of the counter store.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The cluster file (TOML).
    #[arg(long)]
    cluster: PathBuf,
    /// Address to bind.
    #[arg(long)]
    listen: String,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    resp: RespArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    counter::logging::init_with("info", args.serve.log_format);
    let mut signals = Signals::new();
    let cluster = match Cluster::load(&args.cluster) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("counter-router: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("counter-router: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let router = Arc::new(Router::new(cluster));
    let ready: Readiness = {
        let router = router.clone();
        Arc::new(move || {
            let router = router.clone();
            Box::pin(async move { router_ready(&router).await })
        })
    };
    let telemetry = match args.serve.start_telemetry(ready).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("counter-router: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = %args.listen, nodes = router.cluster().nodes.len(), "counter-router serving");
    router.spawn_refresh();
    let stop = CancellationToken::new();
    let resp = match args.resp.spawn(&router, &stop).await {
        Ok(resp) => resp,
        Err(e) => {
            eprintln!("counter-router: {e}");
            return ExitCode::FAILURE;
        }
    };
    let native = {
        let router = router.clone();
        tokio::spawn(serve_until(
            listener,
            args.serve.server_config("router"),
            move |msg| {
                let router = router.clone();
                async move { router.handle(msg).await }
            },
            stop.clone(),
        ))
    };
    // The drain waits for both front doors; either ending on its own ends the process.
    let server = tokio::spawn(async move {
        match resp {
            Some(resp) => {
                let (native, resp) = (std::pin::pin!(native), std::pin::pin!(resp));
                let (_, other) = futures::future::select(native, resp).await.factor_first();
                let _ = other.await;
            }
            None => {
                let _ = native.await;
            }
        }
    });
    serve_then_drain(
        &args.serve,
        "counter-router",
        server,
        stop,
        telemetry.as_ref(),
        &mut signals,
    )
    .await
}

/// Ready when every shard has a replica that serves and reaches a majority of the shard's
/// replicas: then every key can be served.
async fn router_ready(router: &Router) -> Result<String, String> {
    let status = router.status().await;
    if status.shards_available == status.shards {
        Ok(format!(
            "{}/{} nodes ready, {}/{} shards available",
            status.nodes_ready, status.nodes, status.shards_available, status.shards
        ))
    } else {
        Err(format!(
            "{}/{} shards available ({}/{} nodes reachable, {} ready)",
            status.shards_available,
            status.shards,
            status.nodes_reachable,
            status.nodes,
            status.nodes_ready
        ))
    }
}

/// The Redis-protocol front door (`counter_router::resp`; docs/CLI.md).
#[derive(clap::Args)]
struct RespArgs {
    /// Also serve Redis clients (RESP2) on this address (off by default).
    #[arg(long, value_name = "HOST:PORT")]
    resp_listen: Option<String>,
    /// Most RESP connections; a new one sheds the connection idle the longest.
    #[arg(long, default_value_t = 1024)]
    resp_max_clients: usize,
    /// A RESP connection silent this long is closed.
    #[arg(long, default_value_t = 300)]
    resp_idle_timeout_secs: u64,
    /// A RESP frame begun and not finished within this long closes its connection.
    #[arg(long, default_value_t = 30_000)]
    resp_frame_timeout_ms: u64,
}

impl RespArgs {
    /// Binds `--resp-listen` (if given) and serves it in the background until `stop` (then
    /// it drains; the task ends when it has).
    async fn spawn(
        &self,
        router: &Arc<Router>,
        stop: &CancellationToken,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
        let Some(addr) = &self.resp_listen else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (--resp-listen): {e}"))?;
        let config = counter_router::resp::RespConfig {
            max_clients: self.resp_max_clients.max(1),
            idle_timeout: std::time::Duration::from_secs(self.resp_idle_timeout_secs.max(1)),
            frame_timeout: std::time::Duration::from_millis(self.resp_frame_timeout_ms.max(1)),
            ..Default::default()
        };
        tracing::info!(listen = %addr, "counter-router serving the Redis protocol");
        Ok(Some(tokio::spawn(counter_router::resp::serve_until(
            listener,
            router.clone(),
            config,
            stop.clone(),
        ))))
    }
}
