//! When ops are due and what their latency is.
//!
//! Closed loop: a client sends its next op as soon as the previous one answered; an op's latency
//! runs from its send to its answer. Open loop: op `i` is due at `start + i / rate`, whoever sends
//! it; its latency runs from the due time, so time an op spent waiting for a free client (because
//! the cluster, or the bench, fell behind) counts too. That is the correction for coordinated
//! omission: a stall delays every op scheduled behind it, and each of them shows it.

use crate::config::Limit;
use std::time::Duration;

/// Closed or open loop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Closed,
    /// Ops per second, in total.
    Open {
        rate: f64,
    },
}

/// The open-loop schedule: which op is due when, which are measured, which are the last.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    rate: f64,
    /// Index of the first op counted in the measurements.
    first_measured: u64,
    /// Number of ops in the run.
    len: u64,
}

impl Schedule {
    pub fn new(rate: f64, warmup: Duration, limit: Limit) -> Schedule {
        assert!(rate.is_finite() && rate > 0.0, "rate must be above 0");
        let mut s = Schedule {
            rate,
            first_measured: 0,
            len: 0,
        };
        s.first_measured = s.first_due_from(warmup);
        s.len = match limit {
            Limit::Duration(d) => s.first_due_from(warmup + d),
            Limit::Ops(n) => s.first_measured.saturating_add(n),
        };
        s
    }

    /// The first op due at or after `t`: ceil(t * rate), with the float rounding settled against
    /// `due` itself so that both agree exactly.
    fn first_due_from(&self, t: Duration) -> u64 {
        let mut first = (t.as_secs_f64() * self.rate).ceil() as u64;
        while self.due(first) < t {
            first += 1;
        }
        while first > 0 && self.due(first - 1) >= t {
            first -= 1;
        }
        first
    }

    /// When op `i` (counted from 0, warmup included) is due, after the start: `i / rate`.
    pub fn due(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// Whether op `i` is counted in the measurements (it is due after the warmup).
    pub fn is_measured(&self, i: u64) -> bool {
        i >= self.first_measured
    }

    /// How many ops the run has, warmup included.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether op `i` belongs to the run at all.
    pub fn in_run(&self, i: u64) -> bool {
        i < self.len
    }
}

/// How early a client wakes for a due op. The timer rounds every wake-up up to its next
/// millisecond tick: waking for `due` itself would send (and count from `due`) up to 1 ms late
/// at every rate above 1000/s. Waking up to 1 ms early sends on time on average; an op sent
/// early counts from its send (see [`latency`]).
pub const TIMER_SLACK: Duration = Duration::from_millis(1);

/// When a client should wake up to send an op due at `due`.
pub fn wake_at(due: Duration) -> Duration {
    due.saturating_sub(TIMER_SLACK)
}

/// The latency to record for an op due at `due`, sent at `sent` and answered at `done`, all as
/// offsets from the run's start. Closed loop: from the send. Open loop: from the due time (an
/// op sent late counts its wait for a free client), or from the send if that was earlier.
pub fn latency(mode: Mode, due: Duration, sent: Duration, done: Duration) -> Duration {
    match mode {
        Mode::Closed => done.saturating_sub(sent),
        Mode::Open { .. } => done.saturating_sub(due.min(sent)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn op_i_is_due_at_i_over_rate() {
        let s = Schedule::new(2000.0, Duration::ZERO, Limit::Ops(10));
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(1), Duration::from_micros(500));
        assert_eq!(s.due(2000), Duration::from_secs(1));
        assert_eq!(s.due(3001), Duration::from_micros(1_500_500));
        let slow = Schedule::new(0.5, Duration::ZERO, Limit::Ops(10));
        assert_eq!(slow.due(3), Duration::from_secs(6));
        // Evenly spread: every gap is 1/rate.
        let s = Schedule::new(3.0, Duration::ZERO, Limit::Ops(10));
        for i in 1..1000u64 {
            let gap = s.due(i) - s.due(i - 1);
            assert!(gap.abs_diff(Duration::from_nanos(333_333_333)) <= Duration::from_nanos(1));
        }
    }

    #[test]
    fn warmup_and_limits_cut_the_schedule() {
        // 1000 ops/s, 2s warmup, 3s measured: ops 0..2000 warm up, 2000..5000 are measured.
        let s = Schedule::new(
            1000.0,
            Duration::from_secs(2),
            Limit::Duration(3 * 1000 * MS),
        );
        assert_eq!(s.first_measured, 2000);
        assert!(!s.is_measured(1999));
        assert!(s.is_measured(2000));
        assert!(s.in_run(4999));
        assert!(!s.in_run(5000));
        assert_eq!(s.len(), 5000);
        // By count: 7 measured ops after a warmup of 1.0005s at 1000/s (ops 0..=1000 warm up).
        let s = Schedule::new(1000.0, Duration::from_micros(1_000_500), Limit::Ops(7));
        assert_eq!(s.first_measured, 1001);
        assert!(s.in_run(1007));
        assert!(!s.in_run(1008));
        // No warmup: everything is measured.
        let s = Schedule::new(10.0, Duration::ZERO, Limit::Ops(3));
        assert_eq!(s.first_measured, 0);
        assert!(s.in_run(2) && !s.in_run(3));
    }

    #[test]
    fn open_loop_latency_counts_from_the_due_time() {
        let open = Mode::Open { rate: 1000.0 };
        // Op 5 at 1000/s is due at 5ms; no client was free until 8ms; answered at 9ms.
        let s = Schedule::new(1000.0, Duration::ZERO, Limit::Ops(10));
        let due = s.due(5);
        assert_eq!(due, 5 * MS);
        assert_eq!(latency(open, due, 8 * MS, 9 * MS), 4 * MS);
        // Closed loop: from the send.
        assert_eq!(latency(Mode::Closed, due, 8 * MS, 9 * MS), MS);
        // Sent on time: both agree.
        assert_eq!(latency(open, due, due, 7 * MS), 2 * MS);
        // Sent early (the timer's slack): counted from the send, never shortened.
        assert_eq!(latency(open, due, 4 * MS, 6 * MS), 2 * MS);
        assert_eq!(wake_at(due), 4 * MS);
        assert_eq!(wake_at(Duration::ZERO), Duration::ZERO);
    }
}
