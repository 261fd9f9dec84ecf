//! What an operator scrapes and probes: Prometheus metrics, `/healthz` and `/readyz`, served on
//! `--metrics-listen` by every node and router (off by default).
//!
//! - `GET /metrics`: the Prometheus text format. The metrics are recorded with the `metrics`
//!   crate's macros where things happen (`counter-net`'s server, the coordinator, the group
//!   commit) and rendered by `metrics-exporter-prometheus`; docs/CLI.md lists them. Without
//!   `--metrics-listen` no recorder is installed and every macro is a no-op.
//! - `GET /healthz`: 200 while the process runs and serves its port.
//! - `GET /readyz`: 200 when the process can do its job now: a node serves and reaches a
//!   majority of the replicas of every one of its shards; a router can reach a coordinator with
//!   a quorum for every shard. 503 with the reason otherwise, and from the moment a drain starts
//!   (SIGTERM; the port closes at the same moment, and requests read after it are answered
//!   "draining", so a load balancer that still sends is told to go elsewhere).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Whether the process can do its job: `Ok(what it checked)` or `Err(why not)`.
pub type Readiness = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Histogram buckets of durations, in seconds: 50 µs to 10 s.
const SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Histogram buckets of counts (commands per round, writes per sync).
const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// The metrics endpoint's state: the recorder's handle, the readiness check, and whether the
/// process is draining.
#[derive(Clone)]
pub struct Telemetry {
    handle: PrometheusHandle,
    ready: Readiness,
    draining: Arc<AtomicBool>,
}

impl Telemetry {
    /// Installs the process's metrics recorder. Histograms of durations (`*_seconds`) and of
    /// sizes (`*_commands`, `*_writes`) are true Prometheus histograms.
    pub fn install(ready: Readiness) -> Result<Telemetry, String> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_commands".into()), SIZES))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_writes".into()), SIZES))
            .map_err(|e| e.to_string())?
            .install_recorder()
            .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
        let upkeep = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        });
        metrics::gauge!("counter_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        Ok(Telemetry {
            handle,
            ready,
            draining: Arc::new(AtomicBool::new(false)),
        })
    }

    /// From now on `/readyz` answers 503: the process is draining.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop`.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken) {
        let app = axum::Router::new()
            .route("/metrics", get(render))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(self);
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    }
}

async fn render(State(t): State<Telemetry>) -> impl IntoResponse {
    set_process_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        t.handle.render(),
    )
}

async fn readyz(State(t): State<Telemetry>) -> impl IntoResponse {
    if t.draining.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining (shutting down)\n".to_string(),
        );
    }
    match (t.ready)().await {
        Ok(what) => (StatusCode::OK, format!("ready: {what}\n")),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// `process_resident_memory_bytes` and `process_open_fds`, read from /proc at each scrape.
fn set_process_gauges() {
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(pages) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<f64>().ok())
        {
            // 4 KiB pages: every Linux this runs on uses them for statm.
            metrics::gauge!("process_resident_memory_bytes").set(pages * 4096.0);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
}

/// Starts the endpoint on `listen` when given: binds now (an error is the caller's to report),
/// installs the recorder, and serves until `stop`.
pub async fn start(
    listen: Option<&str>,
    ready: Readiness,
    stop: CancellationToken,
) -> Result<Option<Telemetry>, String> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen} (--metrics-listen): {e}"))?;
    let telemetry = Telemetry::install(ready)?;
    tracing::info!(%listen, "metrics, /healthz and /readyz served");
    tokio::spawn(telemetry.clone().serve(listener, stop));
    Ok(Some(telemetry))
}
