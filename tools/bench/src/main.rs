//! `counter-bench --router <HOST:PORT> [--clients N] [--keys K] [--distribution D] [--mix M]
//! [--duration T | --ops N] [--warmup T] [--rate R] ...`: load-tests a counter store cluster
//! through its routers, reports throughput and latency, and checks at the end that every key
//! holds exactly the acknowledged increments.
//!
//! # Layout
//!
//! - [`config`]: arguments and the parsers of mixes, distributions and durations.
//! - [`schedule`]: the open-loop schedule and which instant latency counts from.
//! - [`keys`]: key names and the key chosen for each op.
//! - [`client`]: one client: its connection, request ids, an op and its retries.
//! - [`run`]: the clients' loop and the read-back.
//! - [`verify`]: per-key accounting and the check of the values read back.
//! - [`report`]: the table and the JSON object.
//! - [`cpu`]: CPU time of the watched processes (`--cpu`), per operation.

mod client;
mod config;
mod cpu;
mod etcd;
mod keys;
mod report;
mod run;
mod schedule;
mod verify;

use clap::{CommandFactory, Parser};
use client::{Client, Link};
use config::{Args, Limit};
use counter_net::Pool;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keys::{KeyPicker, Keys};
use rand::Rng;
use run::{ClientStats, Load};
use schedule::{Mode, Schedule};
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use verify::KeyTally;

/// Exit status when verification failed.
const EXIT_VERIFY_FAILED: u8 = 1;
/// Exit status when not one op succeeded.
const EXIT_NOTHING_SUCCEEDED: u8 = 3;
/// Longest wait for a connection to a router.
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    let args = Args::parse();
    let prefix = args
        .key_prefix
        .clone()
        .unwrap_or_else(|| format!("bench-{:012x}-", rand::thread_rng().gen::<u64>() >> 16));
    if Keys::longest(&prefix, args.keys) > counter_proto::MAX_KEY_LEN {
        Args::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "keys would be longer than {} bytes: shorten --key-prefix",
                    counter_proto::MAX_KEY_LEN
                ),
            )
            .exit();
    }
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().gen());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads as usize)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(bench(args, prefix, seed))
}

async fn bench(args: Args, prefix: String, seed: u64) -> ExitCode {
    let timeout = Duration::from_millis(u64::from(args.timeout_ms));
    let limit = args.limit();
    let mode = match args.rate {
        Some(rate) => Mode::Open { rate },
        None => Mode::Closed,
    };
    let config = report::Config {
        routers: if args.etcd.is_empty() {
            args.routers.clone()
        } else {
            args.etcd.clone()
        },
        clients: args.clients,
        conns_per_router: args.conns,
        keys: args.keys,
        distribution: args.distribution.to_string(),
        mix: args.mix.to_string(),
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        rate: args.rate,
        duration_s: match limit {
            Limit::Duration(d) => Some(d.as_secs_f64()),
            Limit::Ops(_) => None,
        },
        ops: args.ops,
        warmup_s: args.warmup.as_secs_f64(),
        timeout_ms: args.timeout_ms,
        request_ids: !args.no_request_ids,
        key_prefix: prefix.clone(),
        base: args.base,
        seed,
        threads: args.threads,
        direct: args.direct,
        etcd: !args.etcd.is_empty(),
    };
    eprintln!("counter-bench: {}", config.line());

    // Clients spread over routers round-robin, and over each router's connections.
    let pools: Vec<Arc<Pool>> = (0..args.conns)
        .map(|_| Arc::new(Pool::new(timeout.min(CONNECT_TIMEOUT_MAX))))
        .collect();
    let mut links = BTreeSet::new();
    let mut clients = Vec::with_capacity(args.clients as usize);
    let direct = match args.direct {
        true => match client::fetch_directory(&args.routers[0], timeout).await {
            Ok(d) => Some(Arc::new(d)),
            Err(e) => {
                eprintln!("counter-bench: --direct: {e}");
                return ExitCode::from(3);
            }
        },
        false => None,
    };
    if !args.etcd.is_empty() {
        for j in 0..args.clients as usize {
            let url = &args.etcd[j % args.etcd.len()];
            let mut c = Client::new(Link::new(pools[0].clone(), url.clone()), timeout);
            match etcd::Etcd::new(url) {
                Ok(e) => c.use_etcd(e),
                Err(e) => {
                    eprintln!("counter-bench: {e}");
                    return ExitCode::from(2);
                }
            }
            clients.push(c);
        }
    }
    for j in (0..args.clients as usize).filter(|_| args.etcd.is_empty()) {
        let router = j % args.routers.len();
        let pool = (j / args.routers.len()) % pools.len();
        links.insert((router, pool));
        let mut c = Client::new(
            Link::new(pools[pool].clone(), args.routers[router].clone()),
            timeout,
        );
        if let Some(d) = &direct {
            c.go_direct(d.clone(), pools[pool].clone());
        }
        clients.push(c);
    }
    // Connect before the clock starts, so that the first ops do not pay for it.
    let connects: Vec<_> = links
        .iter()
        .map(|&(router, pool)| {
            let mut link = Link::new(pools[pool].clone(), args.routers[router].clone());
            let addr = args.routers[router].clone();
            tokio::spawn(async move {
                if let Err(e) = link.connect(timeout.min(CONNECT_TIMEOUT_MAX)).await {
                    tracing::warn!(router = %addr, error = %e, "cannot connect (yet)");
                }
            })
        })
        .collect();
    for c in connects {
        let _ = c.await;
    }

    let keys = Keys::new(&prefix, args.keys);
    let tallies: Vec<KeyTally> = (0..args.keys).map(|_| KeyTally::default()).collect();
    let load = Arc::new(Load {
        mode,
        warmup: args.warmup,
        limit,
        schedule: args
            .rate
            .map(|rate| Schedule::new(rate, args.warmup, limit)),
        keys,
        picker: KeyPicker::new(args.distribution, args.keys),
        mix: args.mix.clone(),
        request_ids: !args.no_request_ids,
        base: args.base,
        timeout,
        seed,
        tallies,
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let interrupted = Arc::new(AtomicBool::new(false));
    tokio::spawn(stop_on_ctrl_c(load.clone(), interrupted.clone()));

    let start = Instant::now();
    // CPU of the watched processes and of this one, sampled at the end of the warm-up and
    // when the last client is done.
    let mut watched = args.cpu.clone();
    watched.push(cpu::Watched {
        name: "bench".into(),
        pid: std::process::id(),
    });
    let cpu_before = {
        let watched = watched.clone();
        let warmup = args.warmup;
        let syscalls = args.syscalls;
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            let perf = syscalls.then(|| cpu::Syscalls::start(&watched));
            (cpu::sample(&watched), cpu::tcp_segments_sent(), perf)
        })
    };
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| tokio::spawn(run::client_loop(load.clone(), client, i as u32, start)))
        .collect();
    let finished = Arc::new(AtomicBool::new(false));
    let progress = tokio::spawn(show_progress(load.clone(), start, finished.clone()));
    let mut stats = ClientStats::new();
    let mut clients = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (client, s) = task.await.expect("a client task panicked");
        stats.merge(&s);
        clients.push(client);
    }
    let (cpu_after, segments_after) = (cpu::sample(&watched), cpu::tcp_segments_sent());
    let (cpu_before, segments_before, perf) = cpu_before.await.expect("the sampling task");
    let syscalls = perf.map(cpu::Syscalls::stop).unwrap_or_default();
    finished.store(true, Relaxed);
    let _ = progress.await;

    let verify = if args.no_verify {
        None
    } else {
        let read = Arc::new(AtomicU64::new(0));
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
        bar.set_style(
            ProgressStyle::with_template("{spinner} verify: {pos} keys read back").unwrap(),
        );
        let ticker = {
            let (bar, read) = (bar.clone(), read.clone());
            tokio::spawn(async move {
                loop {
                    bar.set_position(read.load(Relaxed));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        let summary = run::read_back(load.clone(), clients, read).await;
        ticker.abort();
        bar.finish_and_clear();
        Some(summary)
    };

    let scheduled = load.schedule.map(|s| s.len());
    let mut report = report::build(
        config,
        links.len(),
        &stats,
        args.warmup.as_secs_f64(),
        interrupted.load(Relaxed),
        verify,
    );
    report.unsent = scheduled.map_or(0, |n| n.saturating_sub(report.counts.sent));
    let measured_ops = stats.measured_ok.iter().sum();
    report.cpu = cpu::usage(&watched, &cpu_before, &cpu_after, &syscalls, measured_ops);
    report.tcp_segments_per_op = segments_after
        .zip(segments_before)
        .filter(|_| measured_ops > 0)
        .map(|(a, b)| a.saturating_sub(b) as f64 / measured_ops as f64);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serializes")
        );
    } else {
        print!("{}", report.table());
    }
    if report.counts.ok == 0 {
        ExitCode::from(EXIT_NOTHING_SUCCEEDED)
    } else if report.verify.as_ref().is_some_and(|v| !v.passed()) {
        ExitCode::from(EXIT_VERIFY_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// First Ctrl-C: stop sending and report what was measured. Second: exit at once.
async fn stop_on_ctrl_c(load: Arc<Load>, interrupted: Arc<AtomicBool>) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    interrupted.store(true, Relaxed);
    load.stop.store(true, Relaxed);
    eprintln!("counter-bench: stopping (Ctrl-C again to quit at once)");
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
}

/// The progress bar on stderr: time (or measured ops) against the total, ops, current ops/s.
async fn show_progress(load: Arc<Load>, start: Instant, finished: Arc<AtomicBool>) {
    let warmup = load.warmup.as_secs_f64();
    let (len, by_time) = match load.limit {
        Limit::Duration(d) => (((warmup + d.as_secs_f64()) * 10.0) as u64, true),
        Limit::Ops(n) => (n, false),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(
        ProgressStyle::with_template("[{bar:30}] {msg}")
            .unwrap()
            .progress_chars("=> "),
    );
    let tick = Duration::from_millis(250);
    let (mut last_done, mut last_at) = (0u64, Instant::now());
    let mut measured_from = None;
    while !finished.load(Relaxed) {
        tokio::time::sleep(tick).await;
        let elapsed = start.elapsed().as_secs_f64();
        let done = load.done.load(Relaxed);
        let rate = (done - last_done) as f64 / last_at.elapsed().as_secs_f64();
        (last_done, last_at) = (done, Instant::now());
        let warming = elapsed < warmup;
        if !warming && measured_from.is_none() {
            measured_from = Some(done);
        }
        let position = if by_time {
            (elapsed * 10.0) as u64
        } else {
            done - measured_from.unwrap_or(done)
        };
        bar.set_position(position.min(len));
        bar.set_message(format!(
            "{elapsed:.1}s{}, {done} ops, {rate:.0} ops/s{}",
            match load.limit {
                Limit::Duration(d) => format!("/{:.1}s", warmup + d.as_secs_f64()),
                Limit::Ops(n) => format!(", {position}/{n} measured"),
            },
            if warming { " (warmup)" } else { "" }
        ));
    }
    bar.finish_and_clear();
}
