//! What `counter-node` and `counter-router` share as servers: their operational flags
//! (metrics, log format, connection limits, drain) and the drain at SIGTERM.
//!
//! A drain: `/readyz` turns 503, the listener closes (new connections are refused), no further
//! request is read from open connections, every request already read runs to its answer and
//! the answer is written; then the process exits 0. Every promise and accept is synced before
//! it is answered, so nothing is left to sync at the end. The drain waits at most
//! `--drain-timeout-secs` (default longer than a command's default budget, so that a command in
//! flight gets its own answer, even an honest `unknown`, rather than a closed connection).

use crate::logging::LogFormat;
use crate::telemetry::{Readiness, Telemetry};
use counter_net::ServerConfig;
use std::process::ExitCode;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The flags every server binary takes.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Serve Prometheus metrics (/metrics), /healthz and /readyz over HTTP on this address
    /// (off by default).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
    /// How log lines on stderr are written (RUST_LOG filters them).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// At SIGTERM or SIGINT, how long requests already read may take to be answered before
    /// the process exits anyway.
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    pub drain_timeout_secs: u64,
    /// Connections served at once; when all are taken, the longest-idle one is closed to make
    /// room.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,
    /// A connection with no request in flight is closed after this long without a request.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub idle_timeout_secs: u64,
    /// A frame must arrive whole within this long of its first byte, or its connection is
    /// closed.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub frame_timeout_secs: u64,
}

impl ServeArgs {
    /// The limits of the binary's server (`name`: `node` or `router`, in logs and metrics).
    pub fn server_config(&self, name: &'static str) -> ServerConfig {
        ServerConfig {
            max_connections: self.max_connections.max(1),
            frame_timeout: Duration::from_secs(self.frame_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            name,
            ..ServerConfig::default()
        }
    }

    /// Starts the metrics endpoint if asked for (see [`crate::telemetry`]); it serves until
    /// the process exits, so `/readyz` answers 503 during a drain.
    pub async fn start_telemetry(&self, ready: Readiness) -> Result<Option<Telemetry>, String> {
        crate::telemetry::start(
            self.metrics_listen.as_deref(),
            ready,
            CancellationToken::new(),
        )
        .await
    }
}

/// SIGTERM and SIGINT, listened for from the process's start: a signal that comes while
/// nothing awaits it (between start-up steps) is kept, not lost.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        }
    }

    /// Resolves at the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
}

/// Serves until SIGTERM or SIGINT, then drains: `stop` ends `server` (a task running
/// [`counter_net::server::serve_until`] with `stop`, and whatever else watches it), which is
/// given `--drain-timeout-secs` to answer what it has read; a second signal ends the drain at
/// once. The process's exit status: 0 after a drain, 1 if the server stopped on its own (a
/// supervisor restarts it).
pub async fn serve_then_drain(
    args: &ServeArgs,
    name: &str,
    server: JoinHandle<()>,
    stop: CancellationToken,
    telemetry: Option<&Telemetry>,
    signals: &mut Signals,
) -> ExitCode {
    let drain = Duration::from_secs(args.drain_timeout_secs);
    let mut server = server;
    tokio::select! {
        _ = &mut server => {
            tracing::error!("{name}: the server stopped on its own");
            return ExitCode::FAILURE;
        }
        _ = signals.recv() => {}
    }
    tracing::info!(
        "{name}: shutting down: no new connections or requests; answering the requests in \
         flight (at most {drain:?})"
    );
    if let Some(t) = telemetry {
        t.set_draining();
    }
    stop.cancel();
    tokio::select! {
        drained = tokio::time::timeout(drain, server) => match drained {
            Ok(_) => tracing::info!("{name}: drained; every request read was answered"),
            Err(_) => tracing::warn!(
                "{name}: drain deadline of {drain:?} reached with requests still in flight; exiting"
            ),
        },
        _ = signals.recv() => tracing::warn!(
            "{name}: a second signal: exiting without waiting for the requests in flight"
        ),
    }
    ExitCode::SUCCESS
}
