//! CPU time of processes (`--cpu NAME=PID`, and counter-bench itself), read from
//! `/proc/PID/stat` at the end of the warm-up and at the end of the run: CPU per operation is
//! far steadier on a shared machine than operations per second. With it, per operation: each
//! process's context switches (`/proc/PID/task/*/status`), the TCP segments sent on this
//! network namespace (`/proc/net/snmp`: every process's, so only meaningful on a machine doing
//! nothing else over TCP), and, with `--syscalls`, each process's system calls (`perf stat`
//! on the `raw_syscalls:sys_enter` tracepoint, which costs far less than `strace`).

use serde::Serialize;

/// Clock ticks per second of `/proc/PID/stat`'s times (`USER_HZ`: 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// A process whose CPU time is measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

/// Parses `NAME=PID`.
pub fn parse_watched(s: &str) -> Result<Watched, String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PID, got {s:?}"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("not a process id in {s:?}"))?;
    if name.is_empty() {
        return Err(format!("empty name in {s:?}"));
    }
    Ok(Watched {
        name: name.to_string(),
        pid,
    })
}

/// User plus system CPU seconds a process has used, all its threads (`None`: it is gone).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// utime + stime from the text of `/proc/PID/stat` (fields 14 and 15; the command name in
/// parentheses may hold spaces, so fields are counted after its closing parenthesis).
fn parse_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Voluntary plus involuntary context switches of every live thread of a process.
pub fn context_switches(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
            total += parse_switches(&status);
        }
    }
    Some(total)
}

/// The sum of `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` in a status file.
fn parse_switches(status: &str) -> u64 {
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// TCP segments sent so far on this network namespace (`OutSegs` of `/proc/net/snmp`).
pub fn tcp_segments_sent() -> Option<u64> {
    parse_out_segs(&std::fs::read_to_string("/proc/net/snmp").ok()?)
}

fn parse_out_segs(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let at = names.split_whitespace().position(|n| n == "OutSegs")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// One process's use over the measured window, in all and per measured ok operation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuUse {
    pub name: String,
    pub pid: u32,
    pub seconds: f64,
    /// Microseconds of CPU per measured ok operation.
    pub us_per_op: f64,
    /// Context switches (voluntary and not, every thread) per operation.
    pub switches_per_op: Option<f64>,
    /// System calls per operation (`--syscalls`).
    pub syscalls_per_op: Option<f64>,
}

/// What a process had used at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub cpu: Option<f64>,
    pub switches: Option<u64>,
}

/// What each watched process used between two samples, per operation; `syscalls`: each
/// one's system calls over the window, where counted.
pub fn usage(
    watched: &[Watched],
    before: &[Sample],
    after: &[Sample],
    syscalls: &[Option<u64>],
    ops: u64,
) -> Vec<CpuUse> {
    let per_op = |x: f64| if ops == 0 { 0.0 } else { x / ops as f64 };
    watched
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            let (b, a) = (before.get(i)?, after.get(i)?);
            let seconds = (a.cpu? - b.cpu?).max(0.0);
            let switches = a.switches.zip(b.switches).map(|(a, b)| a.saturating_sub(b));
            Some(CpuUse {
                name: w.name.clone(),
                pid: w.pid,
                seconds,
                us_per_op: per_op(seconds * 1e6),
                switches_per_op: switches.map(|s| per_op(s as f64)),
                syscalls_per_op: syscalls.get(i).copied().flatten().map(|s| per_op(s as f64)),
            })
        })
        .collect()
}

/// Samples every watched process now.
pub fn sample(watched: &[Watched]) -> Vec<Sample> {
    watched
        .iter()
        .map(|w| Sample {
            cpu: cpu_seconds(w.pid),
            switches: context_switches(w.pid),
        })
        .collect()
}

/// System calls of some processes, counted by one `perf stat` each from [`Syscalls::start`]
/// to [`Syscalls::stop`].
pub struct Syscalls {
    perfs: Vec<Option<(std::process::Child, std::path::PathBuf)>>,
}

impl Syscalls {
    /// Starts counting; a process perf cannot watch (perf missing, no permission) counts
    /// nothing and is reported without a figure (a warning says why).
    pub fn start(watched: &[Watched]) -> Syscalls {
        let perfs = watched
            .iter()
            .map(|w| {
                let out = std::env::temp_dir().join(format!(
                    "counter-bench-{}-perf-{}.csv",
                    std::process::id(),
                    w.pid
                ));
                std::process::Command::new("perf")
                    .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-o"])
                    .arg(&out)
                    .args(["-p", &w.pid.to_string()])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .map_err(|e| tracing::warn!(error = %e, "perf stat could not start: no system call counts"))
                    .ok()
                    .map(|child| (child, out))
            })
            .collect();
        Syscalls { perfs }
    }

    /// Stops every `perf stat` (SIGINT: it prints its counts) and reads its count.
    pub fn stop(self) -> Vec<Option<u64>> {
        self.perfs
            .into_iter()
            .map(|perf| {
                let (mut child, out) = perf?;
                let _ = std::process::Command::new("kill")
                    .args(["-INT", &child.id().to_string()])
                    .status();
                let _ = child.wait();
                let text = std::fs::read_to_string(&out).ok();
                let _ = std::fs::remove_file(&out);
                let text = text?;
                let count = parse_perf_count(&text);
                if count.is_none() {
                    tracing::warn!(output = %text.trim(), "perf stat counted no system calls");
                }
                count
            })
            .collect()
    }
}

/// The count of `perf stat -x ,`'s `raw_syscalls:sys_enter` line.
fn parse_perf_count(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.contains("raw_syscalls:sys_enter"))?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_parsed_after_the_command_name() {
        let line = "4242 (counter node) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0";
        assert_eq!(parse_stat(line), Some(3.0));
        assert_eq!(parse_stat("garbage"), None);
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn switches_segments_and_perf_counts_are_parsed() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(parse_switches(status), 127);
        assert!(context_switches(std::process::id()).is_some_and(|n| n > 0));
        let snmp = "Tcp: RtoAlgorithm InSegs OutSegs RetransSegs\nTcp: 1 10 42 0\n";
        assert_eq!(parse_out_segs(snmp), Some(42));
        assert_eq!(parse_out_segs("Udp: 1\n"), None);
        let perf = "# started on Tue\n\n20167,,raw_syscalls:sys_enter,2008489761,100.00,,\n";
        assert_eq!(parse_perf_count(perf), Some(20167));
        let unsupported = "<not supported>,,raw_syscalls:sys_enter,0,100.00,,\n";
        assert_eq!(parse_perf_count(unsupported), None);
    }

    #[test]
    fn usage_is_per_operation_and_skips_vanished_processes() {
        let w = |name: &str| Watched {
            name: name.into(),
            pid: 1,
        };
        let watched = [w("a"), w("gone")];
        let at = |cpu: Option<f64>, switches: u64| Sample {
            cpu,
            switches: Some(switches),
        };
        let u = usage(
            &watched,
            &[at(Some(1.0), 100), at(Some(1.0), 100)],
            &[at(Some(3.0), 2_100_100), at(None, 200)],
            &[Some(5_000_000)],
            1_000_000,
        );
        assert_eq!(u.len(), 1);
        assert_eq!((u[0].seconds, u[0].us_per_op), (2.0, 2.0));
        assert_eq!(
            (u[0].switches_per_op, u[0].syscalls_per_op),
            (Some(2.1), Some(5.0))
        );
        assert_eq!(
            parse_watched("node1=77"),
            Ok(Watched {
                name: "node1".into(),
                pid: 77
            })
        );
        assert!(parse_watched("77").is_err() && parse_watched("=7").is_err());
    }
}
