//! Command-line arguments and the parsers of their values: op mixes, key distributions and
//! durations.

use clap::Parser;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Load generator of the counter store.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "Closed loop (default): each client sends its next op when the previous one \
answered. Open loop (--rate): op i is due at start + i/R and its latency counts from that due \
time, so a cluster (or a bench) that falls behind shows it.\n\
Exit status: 0 ok, 1 verification failed, 2 bad arguments, 3 no op succeeded."
)]
pub struct Args {
    /// A router's address; repeat it to spread clients over routers round-robin.
    #[arg(
        long = "router",
        value_name = "HOST:PORT",
        required_unless_present = "etcd"
    )]
    pub routers: Vec<String>,
    /// Run the workload against etcd v3 instead (`http://HOST:PORT` of a member's client URL;
    /// repeat it to spread clients over members): increments are compare-and-swap
    /// transactions, reads are ranges (see `tools/etcd-bench.sh`). Request ids, `--direct`
    /// and `--conns` do not apply.
    #[arg(long = "etcd", value_name = "URL", conflicts_with_all = ["routers", "direct"])]
    pub etcd: Vec<String>,
    /// Concurrent clients (each has one op in flight at a time).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,
    /// Number of distinct keys (at most 10 million: the bench keeps ~60 bytes per key).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub keys: u64,
    /// How keys are chosen: uniform, zipf:THETA (THETA > 0), or hot (every op on one key).
    #[arg(long, default_value = "uniform", value_name = "DIST")]
    pub distribution: Distribution,
    /// Op mix as weights, e.g. incr=90,get=10 (ops: incr, decr, get; each changes by 1).
    #[arg(long, default_value = "incr=100")]
    pub mix: Mix,
    /// How long to measure, after the warmup (e.g. 20s, 500ms, 2m). Default 10s.
    #[arg(long, value_parser = parse_duration, conflicts_with = "ops")]
    pub duration: Option<Duration>,
    /// Measure this many ops (after the warmup) instead of a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: Option<u64>,
    /// Send ops for this long first without measuring them (they are still verified).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Open loop: this many ops per second in total, spread evenly over time.
    #[arg(long, value_parser = parse_rate, value_name = "OPS_PER_S")]
    pub rate: Option<f64>,
    /// Budget of each op, retries included, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub timeout_ms: u32,
    /// TCP connections per router; clients are spread over them.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub conns: u32,
    /// Prefix of every key. Default: bench-<random hex>- so that each run starts from fresh
    /// keys at 0 (verification assumes that, unless `--base` says where they start).
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Also report the CPU time this process uses over the measured window, per operation
    /// (repeatable: e.g. `--cpu node1=1234 --cpu router=1240`; counter-bench's own is always
    /// reported). Read from /proc/PID/stat.
    #[arg(long = "cpu", value_name = "NAME=PID", value_parser = crate::cpu::parse_watched)]
    pub cpu: Vec<crate::cpu::Watched>,
    /// Also count each `--cpu` process's system calls over the measured window (one
    /// `perf stat -e raw_syscalls:sys_enter -p PID` each; needs `perf` and the right to trace
    /// those processes; root, or a low `perf_event_paranoid`).
    #[arg(long)]
    pub syscalls: bool,
    /// Send each op straight to a replica of its key, which coordinates it (placement fetched
    /// from the first router; one hop less), instead of through the routers. `--conns`
    /// connections per node.
    #[arg(long)]
    pub direct: bool,
    /// Send increments and decrements without request ids (an unknown outcome is then not
    /// retried): measures what exactly-once costs.
    #[arg(long)]
    pub no_request_ids: bool,
    /// Skip reading every touched key back at the end.
    #[arg(long)]
    pub no_verify: bool,
    /// Every key holds this value when the run starts (1 after a fill: `--distribution
    /// sequential --ops N --keys N` with the same `--key-prefix`); the check counts from it.
    #[arg(
        long,
        default_value_t = 0,
        allow_negative_numbers = true,
        requires = "key_prefix"
    )]
    pub base: i64,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Seed of the key and op choices (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads of the bench's runtime.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
}

/// When the measured part of a run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    Duration(Duration),
    Ops(u64),
}

impl Args {
    pub fn limit(&self) -> Limit {
        match (self.ops, self.duration) {
            (Some(n), _) => Limit::Ops(n),
            (None, Some(d)) => Limit::Duration(d),
            (None, None) => Limit::Duration(Duration::from_secs(10)),
        }
    }
}

/// The kinds of op a mix can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Incr,
    Decr,
    Get,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Incr, Kind::Decr, Kind::Get];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Incr => "incr",
            Kind::Decr => "decr",
            Kind::Get => "get",
        }
    }

    /// Position in [`Kind::ALL`], for per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Weights of the op kinds; an op is drawn with probability weight / total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 3],
    total: u32,
}

impl Mix {
    /// The kinds with a positive weight.
    pub fn kinds(&self) -> impl Iterator<Item = Kind> + '_ {
        Kind::ALL
            .into_iter()
            .filter(|k| self.weights[k.index()] > 0)
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    /// The kind drawn by `roll`, uniform in `0..total()`.
    pub fn pick(&self, roll: u32) -> Kind {
        let mut roll = roll;
        for kind in Kind::ALL {
            let w = self.weights[kind.index()];
            if roll < w {
                return kind;
            }
            roll -= w;
        }
        unreachable!("roll {roll} beyond the mix's total {}", self.total)
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut weights = [None::<u32>; 3];
        for item in s.split(',').map(str::trim) {
            let Some((op, weight)) = item.split_once('=') else {
                return Err(format!("`{item}` is not OP=WEIGHT (e.g. incr=90,get=10)"));
            };
            let kind = match op.trim() {
                "incr" => Kind::Incr,
                "decr" => Kind::Decr,
                "get" => Kind::Get,
                other => {
                    return Err(format!(
                        "unknown op `{other}` (the mix takes incr, decr and get)"
                    ))
                }
            };
            let weight: u32 = weight.trim().parse().map_err(|_| {
                format!(
                    "weight of {} is `{}`, not a whole number",
                    kind.name(),
                    weight.trim()
                )
            })?;
            if weights[kind.index()].replace(weight).is_some() {
                return Err(format!("{} appears twice in the mix", kind.name()));
            }
        }
        let weights = weights.map(|w| w.unwrap_or(0));
        let total = weights
            .iter()
            .try_fold(0u32, |sum, &w| sum.checked_add(w))
            .ok_or("the weights add up to more than 2^32")?;
        if total == 0 {
            return Err("the weights add up to 0: give at least one op a positive weight".into());
        }
        Ok(Mix { weights, total })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for kind in self.kinds() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{}={}", kind.name(), self.weights[kind.index()])?;
        }
        Ok(())
    }
}

/// How keys are chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    Uniform,
    /// Zipf over the keys with this exponent (> 0): key rank r is drawn with weight 1/r^theta.
    Zipf(f64),
    /// Every op on key 0.
    Hot,
    /// Keys 0, 1, 2, ... in turn across all clients (wrapping): `--ops N --keys N` touches
    /// every key once (a fill).
    Sequential,
}

impl FromStr for Distribution {
    type Err = String;

    fn from_str(s: &str) -> Result<Distribution, String> {
        match s.trim() {
            "uniform" => Ok(Distribution::Uniform),
            "hot" => Ok(Distribution::Hot),
            "sequential" => Ok(Distribution::Sequential),
            "zipf" => Err("zipf needs an exponent, e.g. zipf:0.99".into()),
            other => match other.strip_prefix("zipf:") {
                Some(theta) => match theta.trim().parse::<f64>() {
                    Ok(t) if t.is_finite() && t > 0.0 => Ok(Distribution::Zipf(t)),
                    Ok(_) => Err(format!(
                        "zipf exponent must be a finite number above 0, not {theta}"
                    )),
                    Err(_) => Err(format!("zipf exponent `{theta}` is not a number")),
                },
                None => Err(format!(
                    "unknown distribution `{other}` (uniform, zipf:THETA, hot or sequential)"
                )),
            },
        }
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Distribution::Uniform => f.write_str("uniform"),
            Distribution::Zipf(t) => write!(f, "zipf:{t}"),
            Distribution::Hot => f.write_str("hot"),
            Distribution::Sequential => f.write_str("sequential"),
        }
    }
}

/// A duration with a unit: `500ms`, `20s`, `2m`, `1h`, decimals allowed (`1.5s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{s}` has no unit (use ms, s, m or h, e.g. 20s)"))?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` does not start with a number"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit `{other}` in `{s}` (ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(number * scale).map_err(|e| format!("`{s}`: {e}"))
}

/// An op rate: a finite number of ops per second above 0.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("`{s}` is not a rate above 0 (ops per second)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_pick_by_weight() {
        let mix: Mix = "incr=90,get=10".parse().unwrap();
        assert_eq!(mix.total(), 100);
        assert_eq!(mix.pick(0), Kind::Incr);
        assert_eq!(mix.pick(89), Kind::Incr);
        assert_eq!(mix.pick(90), Kind::Get);
        assert_eq!(mix.pick(99), Kind::Get);
        assert_eq!(mix.kinds().collect::<Vec<_>>(), [Kind::Incr, Kind::Get]);
        assert_eq!(mix.to_string(), "incr=90,get=10");
        let mix: Mix = " decr = 1 , incr=3".parse().unwrap();
        assert_eq!(mix.pick(2), Kind::Incr);
        assert_eq!(mix.pick(3), Kind::Decr);
        assert_eq!(mix.to_string(), "incr=3,decr=1");
        // A zero weight leaves the kind out.
        let mix: Mix = "incr=100,get=0".parse().unwrap();
        assert_eq!(mix.kinds().collect::<Vec<_>>(), [Kind::Incr]);
    }

    #[test]
    fn bad_mixes_are_rejected_with_a_reason() {
        let err = |s: &str| s.parse::<Mix>().unwrap_err();
        assert!(err("incr=90,set=10").contains("unknown op `set`"));
        assert!(err("incr=0,get=0").contains("add up to 0"));
        assert!(err("incr=ninety").contains("not a whole number"));
        assert!(err("incr=-5").contains("not a whole number"));
        assert!(err("incr=1.5").contains("not a whole number"));
        assert!(err("incr").contains("not OP=WEIGHT"));
        assert!(err("").contains("not OP=WEIGHT"));
        assert!(err("incr=1,incr=2").contains("twice"));
        assert!(err("incr=4294967295,get=1").contains("more than"));
    }

    #[test]
    fn distributions_parse() {
        let d = |s: &str| s.parse::<Distribution>();
        assert_eq!(d("uniform"), Ok(Distribution::Uniform));
        assert_eq!(d("hot"), Ok(Distribution::Hot));
        assert_eq!(d("zipf:0.99"), Ok(Distribution::Zipf(0.99)));
        assert_eq!(d("zipf:1.2"), Ok(Distribution::Zipf(1.2)));
        assert!(d("zipf").unwrap_err().contains("needs an exponent"));
        assert!(d("zipf:0").unwrap_err().contains("above 0"));
        assert!(d("zipf:-1").unwrap_err().contains("above 0"));
        assert!(d("zipf:inf").unwrap_err().contains("above 0"));
        assert!(d("zipf:NaN").unwrap_err().contains("above 0"));
        assert!(d("zipf:abc").unwrap_err().contains("not a number"));
        assert!(d("gauss").unwrap_err().contains("unknown distribution"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("20").unwrap_err().contains("no unit"));
        assert!(parse_duration("20x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").unwrap_err().contains("number"));
        assert!(parse_duration("-1s").unwrap_err().contains("number"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("2000"), Ok(2000.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-3").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn arguments_parse_and_conflict() {
        let args =
            Args::try_parse_from(["counter-bench", "--router", "a:1", "--router", "b:2"]).unwrap();
        assert_eq!(args.routers, ["a:1", "b:2"]);
        assert_eq!(args.limit(), Limit::Duration(Duration::from_secs(10)));
        assert_eq!(args.mix, "incr=100".parse().unwrap());
        let args =
            Args::try_parse_from(["counter-bench", "--router", "a:1", "--ops", "500"]).unwrap();
        assert_eq!(args.limit(), Limit::Ops(500));
        let conflict = Args::try_parse_from([
            "counter-bench",
            "--router",
            "a:1",
            "--ops",
            "5",
            "--duration",
            "1s",
        ]);
        assert_eq!(
            conflict.unwrap_err().kind(),
            clap::error::ErrorKind::ArgumentConflict
        );
        let bad_mix = Args::try_parse_from(["counter-bench", "--router", "a:1", "--mix", "x=1"]);
        assert_eq!(
            bad_mix.unwrap_err().kind(),
            clap::error::ErrorKind::ValueValidation
        );
        assert!(
            Args::try_parse_from(["counter-bench"]).is_err(),
            "no router"
        );
    }
}
