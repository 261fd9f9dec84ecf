//! The results: one serializable report, printed as a table or as JSON.

use crate::config::Kind;
use crate::run::{ClientStats, Counts};
use crate::verify::VerifySummary;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The run's settings, as given or chosen.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub routers: Vec<String>,
    pub clients: u32,
    pub conns_per_router: u32,
    pub keys: u64,
    pub distribution: String,
    pub mix: String,
    /// "closed" or "open".
    pub mode: &'static str,
    pub rate: Option<f64>,
    pub duration_s: Option<f64>,
    pub ops: Option<u64>,
    pub warmup_s: f64,
    pub timeout_ms: u32,
    pub request_ids: bool,
    pub key_prefix: String,
    /// The value every key held when the run started (`--base`).
    pub base: i64,
    pub seed: u64,
    pub threads: u32,
    /// Ops sent straight to a replica of their key (placement-aware), not through a router.
    pub direct: bool,
    /// The ops went to etcd (`--etcd`; `routers` holds its members' URLs).
    pub etcd: bool,
}

impl Config {
    /// The configuration in one line.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{}{} {} x {} conns, {} clients, {} keys {}, mix {}, ",
            if self.direct {
                "direct to replicas (placement from) "
            } else {
                ""
            },
            self.routers.len(),
            if self.etcd {
                "etcd member(s)"
            } else {
                "router(s)"
            },
            self.conns_per_router,
            self.clients,
            self.keys,
            self.distribution,
            self.mix
        );
        match self.rate {
            Some(rate) => {
                let _ = write!(s, "open loop at {rate} ops/s, ");
            }
            None => s.push_str("closed loop, "),
        }
        match (self.duration_s, self.ops) {
            (_, Some(ops)) => {
                let _ = write!(s, "{ops} ops");
            }
            (Some(d), None) => {
                let _ = write!(s, "{d}s");
            }
            (None, None) => {}
        }
        let _ = write!(
            s,
            " after {}s warmup, timeout {}ms, request ids {}, seed {}, key prefix {}",
            self.warmup_s,
            self.timeout_ms,
            if self.request_ids { "on" } else { "off" },
            self.seed,
            self.key_prefix
        );
        if self.base != 0 {
            let _ = write!(s, " (keys start at {})", self.base);
        }
        s
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    /// Ok answers per second over the measured window.
    pub ops_per_s: f64,
    /// Of which increments.
    pub incr_per_s: f64,
    pub decr_per_s: f64,
    pub get_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub config: Config,
    /// Connections opened to routers (conns per router, or fewer with fewer clients).
    pub connections: usize,
    /// From the warmup's end to the last measured answer.
    pub measured_s: f64,
    pub throughput: Throughput,
    /// Latency of the measured ok answers; in an open loop, from each op's due time.
    pub latency_ms: Latency,
    /// Per op kind, when the mix has several.
    pub latency_by_kind_ms: BTreeMap<&'static str, Latency>,
    /// Open loop: how late measured ops were sent after their due time.
    pub send_lag_ms: Option<Latency>,
    /// Every op sent, warmup included.
    pub counts: Counts,
    pub failed: u64,
    pub retries: u64,
    /// Open loop: scheduled ops never sent, because the clients fell behind by more than the
    /// op timeout (or the run was interrupted).
    pub unsent: u64,
    pub first_error: Option<String>,
    pub interrupted: bool,
    pub verify: Option<VerifySummary>,
    /// CPU over the measured window, per process (`--cpu`, and counter-bench itself).
    pub cpu: Vec<crate::cpu::CpuUse>,
    /// TCP segments sent on this network namespace per measured operation (every process's:
    /// meaningful on a machine doing nothing else over TCP).
    pub tcp_segments_per_op: Option<f64>,
}

/// Builds the report from the merged client stats.
pub fn build(
    config: Config,
    connections: usize,
    stats: &ClientStats,
    warmup_s: f64,
    interrupted: bool,
    verify: Option<VerifySummary>,
) -> Report {
    let measured_s = stats
        .last_done
        .map_or(0.0, |d| (d.as_secs_f64() - warmup_s).max(0.0));
    let per_s = |n: u64| {
        if measured_s > 0.0 {
            n as f64 / measured_s
        } else {
            0.0
        }
    };
    let mut all = Histogram::<u64>::new(3).expect("3 significant figures are supported");
    for h in &stats.latency {
        all.add(h).expect("auto-resizing histograms merge");
    }
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| !stats.latency[k.index()].is_empty())
        .collect();
    let latency_by_kind_ms = if kinds.len() > 1 {
        kinds
            .iter()
            .map(|k| (k.name(), Latency::of(&stats.latency[k.index()])))
            .collect()
    } else {
        BTreeMap::new()
    };
    let ok = |k: Kind| stats.measured_ok[k.index()];
    Report {
        connections,
        measured_s,
        throughput: Throughput {
            ops_per_s: per_s(stats.measured_ok.iter().sum()),
            incr_per_s: per_s(ok(Kind::Incr)),
            decr_per_s: per_s(ok(Kind::Decr)),
            get_per_s: per_s(ok(Kind::Get)),
        },
        latency_ms: Latency::of(&all),
        latency_by_kind_ms,
        send_lag_ms: config.rate.map(|_| Latency::of(&stats.lag)),
        counts: stats.counts,
        failed: stats.counts.failed(),
        retries: stats.retries,
        unsent: 0,
        first_error: stats.first_error.clone(),
        interrupted,
        verify,
        cpu: Vec::new(),
        tcp_segments_per_op: None,
        config,
    }
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "config       {}", self.config.line());
        if self.interrupted {
            let _ = writeln!(
                w,
                "interrupted  (Ctrl-C): the numbers cover the run until then"
            );
        }
        let _ = writeln!(w, "measured     {:.2} s", self.measured_s);
        let t = &self.throughput;
        let mut kinds = String::new();
        for (name, rate) in [
            ("incr", t.incr_per_s),
            ("decr", t.decr_per_s),
            ("get", t.get_per_s),
        ] {
            if rate > 0.0 {
                let _ = write!(kinds, ", {name} {rate:.0}/s");
            }
        }
        let _ = writeln!(w, "throughput   {:.0} ok ops/s{kinds}", t.ops_per_s);
        let _ = writeln!(
            w,
            "latency ms   {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "count", "p50", "p90", "p99", "p99.9", "max"
        );
        let row = |w: &mut String, name: &str, l: &Latency| {
            let _ = writeln!(
                w,
                "  {name:<10} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                l.count, l.p50, l.p90, l.p99, l.p999, l.max
            );
        };
        row(w, "all", &self.latency_ms);
        for (name, l) in &self.latency_by_kind_ms {
            row(w, name, l);
        }
        if let Some(lag) = &self.send_lag_ms {
            row(w, "send lag", lag);
        }
        let c = &self.counts;
        let _ = writeln!(
            w,
            "ops          {} sent, {} ok, {} failed (invalid {}, unavailable {}, rejected {}), {} unknown, {} retries",
            c.sent, c.ok, self.failed, c.invalid, c.unavailable, c.rejected, c.unknown, self.retries
        );
        if self.unsent > 0 {
            let _ = writeln!(
                w,
                "unsent       {} scheduled ops were never sent: the clients fell behind \
                 (try more --clients)",
                self.unsent
            );
        }
        let _ = writeln!(w, "connections  {}", self.connections);
        if !self.cpu.is_empty() {
            let each: Vec<String> = self
                .cpu
                .iter()
                .map(|c| format!("{} {:.1}", c.name, c.us_per_op))
                .collect();
            let servers: f64 = self
                .cpu
                .iter()
                .filter(|c| c.name != "bench")
                .map(|c| c.us_per_op)
                .sum();
            let _ = writeln!(w, "cpu µs/op    {} (servers {servers:.1})", each.join(", "));
            let per_op = |f: fn(&crate::cpu::CpuUse) -> Option<f64>| -> Vec<String> {
                self.cpu
                    .iter()
                    .filter_map(|c| Some(format!("{} {:.1}", c.name, f(c)?)))
                    .collect()
            };
            let switches = per_op(|c| c.switches_per_op);
            if !switches.is_empty() {
                let _ = writeln!(w, "switches/op  {}", switches.join(", "));
            }
            let syscalls = per_op(|c| c.syscalls_per_op);
            if !syscalls.is_empty() {
                let _ = writeln!(w, "syscalls/op  {}", syscalls.join(", "));
            }
        }
        if let Some(segments) = self.tcp_segments_per_op {
            let _ = writeln!(
                w,
                "tcp segs/op  {segments:.1} (sent, every process on this host)"
            );
        }
        if let Some(e) = &self.first_error {
            let _ = writeln!(w, "first error  {e}");
        }
        match &self.verify {
            Some(v) => {
                for line in v.lines() {
                    let _ = writeln!(w, "{line}");
                }
            }
            None => {
                let _ = writeln!(w, "verify: skipped (--no-verify)");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> Config {
        Config {
            routers: vec!["127.0.0.1:7100".into()],
            clients: 2,
            conns_per_router: 1,
            keys: 10,
            distribution: "uniform".into(),
            mix: "incr=90,get=10".into(),
            mode: "closed",
            rate: None,
            duration_s: Some(1.0),
            ops: None,
            warmup_s: 1.0,
            timeout_ms: 1000,
            request_ids: true,
            key_prefix: "bench-x-".into(),
            base: 0,
            seed: 5,
            threads: 2,
            direct: false,
            etcd: false,
        }
    }

    #[test]
    fn throughput_and_percentiles_cover_the_measured_window() {
        let mut stats = ClientStats::new();
        for us in 1..=1000 {
            stats.latency[Kind::Incr.index()].record(us).unwrap();
        }
        stats.latency[Kind::Get.index()].record(5000).unwrap();
        stats.measured_ok = [1000, 0, 4];
        // Warmup ends at 1s, the last measured answer came at 5s: a 4s window.
        stats.last_done = Some(Duration::from_secs(5));
        let r = build(config(), 1, &stats, 1.0, false, None);
        assert_eq!(r.measured_s, 4.0);
        assert_eq!(r.throughput.ops_per_s, 251.0);
        assert_eq!(r.throughput.incr_per_s, 250.0);
        assert_eq!(r.latency_ms.count, 1001);
        assert!(
            (r.latency_ms.p50 - 0.5).abs() < 0.01,
            "{}",
            r.latency_ms.p50
        );
        assert!((r.latency_ms.max - 5.0).abs() < 0.01);
        assert_eq!(r.latency_by_kind_ms.len(), 2);
        assert!(r.latency_by_kind_ms["incr"].max < 1.01);
        let table = r.table();
        assert!(
            table.contains("throughput   251 ok ops/s, incr 250/s, get 1/s"),
            "{table}"
        );
        assert!(table.contains("verify: skipped"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["throughput"]["ops_per_s"], 251.0);
        assert_eq!(json["config"]["seed"], 5);
    }
}
