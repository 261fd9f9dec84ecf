//! CPU time of processes (`--cpu NAME=PID`, and counter-bench itself), read from
//! `/proc/PID/stat` at the end of the warm-up and at the end of the run: CPU per operation is
//! far steadier on a shared machine than operations per second.

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

/// One process's CPU over the measured window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuUse {
    pub name: String,
    pub pid: u32,
    pub seconds: f64,
    /// Microseconds of CPU per measured ok operation.
    pub us_per_op: f64,
}

/// The CPU each watched process used between two samples, per operation.
pub fn usage(
    watched: &[Watched],
    before: &[Option<f64>],
    after: &[Option<f64>],
    ops: u64,
) -> Vec<CpuUse> {
    watched
        .iter()
        .zip(before.iter().zip(after))
        .filter_map(|(w, (b, a))| {
            let seconds = (a.as_ref()? - b.as_ref()?).max(0.0);
            Some(CpuUse {
                name: w.name.clone(),
                pid: w.pid,
                seconds,
                us_per_op: if ops == 0 {
                    0.0
                } else {
                    seconds * 1e6 / ops as f64
                },
            })
        })
        .collect()
}

/// Samples every watched process now.
pub fn sample(watched: &[Watched]) -> Vec<Option<f64>> {
    watched.iter().map(|w| cpu_seconds(w.pid)).collect()
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
    fn usage_is_per_operation_and_skips_vanished_processes() {
        let w = |name: &str| Watched {
            name: name.into(),
            pid: 1,
        };
        let watched = [w("a"), w("gone")];
        let u = usage(
            &watched,
            &[Some(1.0), Some(1.0)],
            &[Some(3.0), None],
            1_000_000,
        );
        assert_eq!(u.len(), 1);
        assert_eq!((u[0].seconds, u[0].us_per_op), (2.0, 2.0));
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
