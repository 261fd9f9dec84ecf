//! The load: clients sending ops in a closed or open loop, and the read-back at the end.

use crate::client::{Client, Outcome};
use crate::config::{Kind, Limit, Mix};
use crate::keys::{KeyPicker, Keys};
use crate::schedule::{self, Mode, Schedule};
use crate::verify::{Applied, KeyTally, VerifySummary};
use counter_proto::ErrorKind;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything the clients share.
pub struct Load {
    pub mode: Mode,
    pub warmup: Duration,
    pub limit: Limit,
    /// The open-loop schedule (`None` in a closed loop).
    pub schedule: Option<Schedule>,
    pub keys: Keys,
    pub picker: KeyPicker,
    pub mix: Mix,
    pub request_ids: bool,
    /// The value every key held when the run started (`--base`).
    pub base: i64,
    /// Budget of one op.
    pub timeout: Duration,
    pub seed: u64,
    pub tallies: Vec<KeyTally>,
    /// Open loop: the next op's index. Closed loop by count: measured ops handed out.
    pub next: AtomicU64,
    /// Ops answered so far (for the progress bar).
    pub done: AtomicU64,
    /// Set to stop early (Ctrl-C).
    pub stop: AtomicBool,
}

/// Ops by how they ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub sent: u64,
    pub ok: u64,
    pub invalid: u64,
    pub unavailable: u64,
    pub rejected: u64,
    pub unknown: u64,
}

impl Counts {
    pub fn failed(&self) -> u64 {
        self.invalid + self.unavailable + self.rejected
    }

    pub fn add(&mut self, other: &Counts) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.invalid += other.invalid;
        self.unavailable += other.unavailable;
        self.rejected += other.rejected;
        self.unknown += other.unknown;
    }
}

/// What one client saw. Merged at the end: no lock is shared per op.
pub struct ClientStats {
    /// Latency (µs) of the measured ok answers, per kind.
    pub latency: [Histogram<u64>; 3],
    /// Open loop: how late (µs) measured ops were sent after their due time (early: 0).
    pub lag: Histogram<u64>,
    pub counts: Counts,
    pub retries: u64,
    /// Measured ok answers per kind.
    pub measured_ok: [u64; 3],
    /// When the last measured op was answered, after the start.
    pub last_done: Option<Duration>,
    pub first_error: Option<String>,
}

impl ClientStats {
    pub fn new() -> ClientStats {
        let hist = || Histogram::new(3).expect("3 significant figures are supported");
        ClientStats {
            latency: [hist(), hist(), hist()],
            lag: hist(),
            counts: Counts::default(),
            retries: 0,
            measured_ok: [0; 3],
            last_done: None,
            first_error: None,
        }
    }

    /// Folds `other` into this one.
    pub fn merge(&mut self, other: &ClientStats) {
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            mine.add(theirs).expect("auto-resizing histograms merge");
        }
        self.lag
            .add(&other.lag)
            .expect("auto-resizing histograms merge");
        self.counts.add(&other.counts);
        self.retries += other.retries;
        for (mine, theirs) in self.measured_ok.iter_mut().zip(other.measured_ok) {
            *mine += theirs;
        }
        self.last_done = self.last_done.max(other.last_done);
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// Records `d` in microseconds (at least 1), growing the histogram as needed. (hdrhistogram's
/// `saturating_record` clamps to the current range instead of growing an auto-resizing one.)
fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = d.as_micros().clamp(1, u128::from(u64::MAX / 2)) as u64;
    if h.record(us).is_err() {
        h.saturating_record(us);
    }
}

/// One client's loop: takes the next op (the next due one in an open loop), sends it, records.
pub async fn client_loop(
    load: Arc<Load>,
    mut client: Client,
    index: u32,
    start: Instant,
) -> (Client, ClientStats) {
    let mut stats = ClientStats::new();
    // Each client's choices come from the seed and its index: a run is reproducible.
    let mut rng =
        StdRng::seed_from_u64(load.seed ^ u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let end = load.warmup
        + match load.limit {
            Limit::Duration(d) => d,
            Limit::Ops(_) => Duration::MAX / 4,
        };
    loop {
        if load.stop.load(Relaxed) {
            break;
        }
        let (due, measured) = match (&load.schedule, load.limit) {
            (Some(schedule), _) => {
                let i = load.next.fetch_add(1, Relaxed);
                if !schedule.in_run(i) {
                    break;
                }
                // Clients that fell this far behind the schedule stop: the run stays bounded,
                // and the ops never sent are reported.
                if start.elapsed() > schedule.due(schedule.len()) + load.timeout {
                    break;
                }
                let due = schedule.due(i);
                tokio::time::sleep_until((start + schedule::wake_at(due)).into()).await;
                (due, schedule.is_measured(i))
            }
            (None, limit) => {
                let now = start.elapsed();
                let measured = now >= load.warmup;
                match limit {
                    Limit::Duration(_) if now >= end => break,
                    Limit::Ops(n) if measured && load.next.fetch_add(1, Relaxed) >= n => break,
                    _ => {}
                }
                (now, measured)
            }
        };
        let kind = load.mix.pick(rng.gen_range(0..load.mix.total()));
        let key = load.picker.pick(&mut rng);
        let tally = &load.tallies[key as usize];
        tally.touch();
        let sent = start.elapsed();
        let (outcome, retries) = client
            .execute(&load.keys, key, kind, load.request_ids)
            .await;
        let done = start.elapsed();
        load.done.fetch_add(1, Relaxed);
        stats.counts.sent += 1;
        stats.retries += u64::from(retries);
        let delta = match kind {
            Kind::Incr => 1,
            Kind::Decr => -1,
            Kind::Get => 0,
        };
        match outcome {
            Outcome::Ok(value) => {
                stats.counts.ok += 1;
                if kind == Kind::Get {
                    tally.got(value);
                } else {
                    tally.change(delta, Applied::Yes);
                }
                if measured {
                    let latency = schedule::latency(load.mode, due, sent, done);
                    record(&mut stats.latency[kind.index()], latency);
                    stats.measured_ok[kind.index()] += 1;
                    stats.last_done = stats.last_done.max(Some(done));
                }
            }
            Outcome::Failed(error, message) => {
                match error {
                    ErrorKind::Invalid => stats.counts.invalid += 1,
                    ErrorKind::Rejected => stats.counts.rejected += 1,
                    ErrorKind::Unavailable | ErrorKind::Unknown | ErrorKind::Expired => {
                        stats.counts.unavailable += 1
                    }
                }
                if kind != Kind::Get {
                    tally.change(delta, Applied::No);
                }
                stats
                    .first_error
                    .get_or_insert_with(|| format!("{}: {error}: {message}", kind.name()));
            }
            Outcome::Unknown(message) => {
                stats.counts.unknown += 1;
                if kind != Kind::Get {
                    tally.change(delta, Applied::Maybe);
                }
                stats
                    .first_error
                    .get_or_insert_with(|| format!("{}: unknown: {message}", kind.name()));
            }
        }
        if load.schedule.is_some() && measured {
            record(&mut stats.lag, sent.saturating_sub(due));
        }
    }
    (client, stats)
}

/// Reads every touched key back with as many clients as the load had, and checks each value.
/// `read` counts the keys read so far (for a progress bar).
pub async fn read_back(
    load: Arc<Load>,
    clients: Vec<Client>,
    read: Arc<AtomicU64>,
) -> VerifySummary {
    let touched: Arc<Vec<u64>> = Arc::new(
        (0..load.tallies.len() as u64)
            .filter(|&i| load.tallies[i as usize].is_touched())
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let (load, touched, next, read) =
                (load.clone(), touched.clone(), next.clone(), read.clone());
            tokio::spawn(async move {
                let mut values = Vec::new();
                loop {
                    let n = next.fetch_add(1, Relaxed);
                    let Some(&key) = touched.get(n) else { break };
                    let (outcome, _) = client.execute(&load.keys, key, Kind::Get, false).await;
                    let value = match outcome {
                        Outcome::Ok(v) => Ok(v),
                        Outcome::Failed(kind, e) => Err(format!("{kind}: {e}")),
                        Outcome::Unknown(e) => Err(format!("unknown: {e}")),
                    };
                    values.push((key, value));
                    read.fetch_add(1, Relaxed);
                }
                values
            })
        })
        .collect();
    let mut values = Vec::with_capacity(touched.len());
    for task in tasks {
        values.extend(task.await.expect("a read-back task panicked"));
    }
    values.sort_unstable_by_key(|(key, _)| *key);
    let mut summary = VerifySummary::default();
    for (key, value) in values {
        let expect = load.tallies[key as usize].expect(load.base);
        summary.add(|| load.keys.name(key), &expect, value);
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_grow_to_hold_long_latencies() {
        let mut stats = ClientStats::new();
        record(&mut stats.latency[0], Duration::from_micros(300));
        record(&mut stats.latency[0], Duration::from_secs(9));
        record(&mut stats.lag, Duration::ZERO);
        let h = &stats.latency[0];
        assert_eq!(h.len(), 2);
        assert!(h.max() >= 8_990_000, "{}", h.max());
        assert_eq!(stats.lag.len(), 1);
        let mut merged = ClientStats::new();
        merged.merge(&stats);
        assert!(merged.latency[0].max() >= 8_990_000);
    }
}
