//! What the bench knows of each key, and the check of the values read back at the end.
//!
//! Keys start at 0 (fresh prefix), or at `--base` (keys a fill left at that value); the ranges
//! below are counted from there. An increment or decrement answered ok was applied exactly
//! once; one answered invalid, unavailable or rejected was not applied; one whose outcome stayed
//! unknown may or may not have been. So a key's final value must lie in
//! `[acked - unknown_down, acked + unknown_up]`, and every `get` answer in between the extremes
//! the key could ever have reached: `[-(acked_down + unknown_down), acked_up + unknown_up]`.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

/// How many failing keys a report lists.
pub const MAX_LISTED: usize = 10;

/// One key's accounting, updated by every client that touches it.
pub struct KeyTally {
    touched: AtomicBool,
    acked_up: AtomicU64,
    acked_down: AtomicU64,
    unknown_up: AtomicU64,
    unknown_down: AtomicU64,
    get_min: AtomicI64,
    get_max: AtomicI64,
}

impl Default for KeyTally {
    fn default() -> Self {
        KeyTally {
            touched: AtomicBool::new(false),
            acked_up: AtomicU64::new(0),
            acked_down: AtomicU64::new(0),
            unknown_up: AtomicU64::new(0),
            unknown_down: AtomicU64::new(0),
            get_min: AtomicI64::new(i64::MAX),
            get_max: AtomicI64::new(i64::MIN),
        }
    }
}

/// What happened to one change (a signed delta) of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Yes,
    No,
    Maybe,
}

impl KeyTally {
    /// An op is about to be sent on this key.
    pub fn touch(&self) {
        if !self.touched.load(Relaxed) {
            self.touched.store(true, Relaxed);
        }
    }

    pub fn is_touched(&self) -> bool {
        self.touched.load(Relaxed)
    }

    /// Records the outcome of a change by `delta` (positive: increment).
    pub fn change(&self, delta: i64, applied: Applied) {
        let (up, down) = match applied {
            Applied::Yes => (&self.acked_up, &self.acked_down),
            Applied::Maybe => (&self.unknown_up, &self.unknown_down),
            Applied::No => return,
        };
        if delta >= 0 {
            up.fetch_add(delta.unsigned_abs(), Relaxed);
        } else {
            down.fetch_add(delta.unsigned_abs(), Relaxed);
        }
    }

    /// Records a `get` answer.
    pub fn got(&self, value: i64) {
        self.get_min.fetch_min(value, Relaxed);
        self.get_max.fetch_max(value, Relaxed);
    }

    /// A snapshot, once the load is over, of a key that held `base` when the run started.
    pub fn expect(&self, base: i64) -> Expect {
        Expect {
            base,
            acked_up: self.acked_up.load(Relaxed),
            acked_down: self.acked_down.load(Relaxed),
            unknown_up: self.unknown_up.load(Relaxed),
            unknown_down: self.unknown_down.load(Relaxed),
            gets: match (self.get_min.load(Relaxed), self.get_max.load(Relaxed)) {
                (min, max) if min <= max => Some((min, max)),
                _ => None,
            },
        }
    }
}

/// What a key's value may be, from the outcomes of the changes sent to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// The key's value when the run started.
    pub base: i64,
    pub acked_up: u64,
    pub acked_down: u64,
    pub unknown_up: u64,
    pub unknown_down: u64,
    /// Smallest and largest `get` answer seen during the load, if any.
    pub gets: Option<(i64, i64)>,
}

impl Expect {
    /// The value the acknowledged changes lead to: `base` plus their sum.
    pub fn acked(&self) -> i64 {
        self.base + self.acked_up as i64 - self.acked_down as i64
    }

    /// Number of changes (each of delta 1) whose outcome stayed unknown.
    pub fn unknown(&self) -> u64 {
        self.unknown_up + self.unknown_down
    }

    /// The final values allowed: the acknowledged sum, widened by the unknown outcomes.
    pub fn final_range(&self) -> (i64, i64) {
        let acked = self.acked();
        (
            acked - self.unknown_down as i64,
            acked + self.unknown_up as i64,
        )
    }

    /// The values the key could have held at any time during the run.
    pub fn ever_range(&self) -> (i64, i64) {
        (
            self.base - (self.acked_down + self.unknown_down) as i64,
            self.base + (self.acked_up + self.unknown_up) as i64,
        )
    }
}

/// How one key's read-back compares with what the bench expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Equal to the acknowledged sum.
    Exact,
    /// Not equal to it, but within the range the unknown outcomes allow.
    WithinUnknown,
    /// Outside the allowed range.
    Mismatch,
    /// A `get` during the load answered a value the key can never have held.
    BadGet { value: i64 },
}

/// Judges a key whose final value read back is `value`.
pub fn judge(expect: &Expect, value: i64) -> Verdict {
    let (lo, hi) = expect.final_range();
    if let Some((min, max)) = expect.gets {
        let (ever_lo, ever_hi) = expect.ever_range();
        if min < ever_lo {
            return Verdict::BadGet { value: min };
        }
        if max > ever_hi {
            return Verdict::BadGet { value: max };
        }
    }
    if value == expect.acked() {
        Verdict::Exact
    } else if lo <= value && value <= hi {
        Verdict::WithinUnknown
    } else {
        Verdict::Mismatch
    }
}

/// A key that failed the check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub key: String,
    /// The value read back, if it could be read.
    pub read: Option<i64>,
    /// The value the acknowledged changes lead to (from `--base`).
    pub acked: i64,
    pub unknown_up: u64,
    pub unknown_down: u64,
    pub reason: String,
}

/// The result of the whole check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifySummary {
    pub keys: u64,
    pub exact: u64,
    pub within_unknown: u64,
    /// Unknown outcomes on the keys that were within range without being exact.
    pub unknown_outcomes: u64,
    pub failed: u64,
    /// The first [`MAX_LISTED`] failures, by key index.
    pub failures: Vec<Failure>,
}

impl VerifySummary {
    pub fn passed(&self) -> bool {
        self.failed == 0
    }

    /// Adds one key: the value read back, or why it could not be read.
    pub fn add(
        &mut self,
        key: impl FnOnce() -> String,
        expect: &Expect,
        read: Result<i64, String>,
    ) {
        self.keys += 1;
        let (lo, hi) = expect.final_range();
        let reason = match &read {
            Err(e) => format!("could not be read back: {e}"),
            Ok(value) => match judge(expect, *value) {
                Verdict::Exact => {
                    self.exact += 1;
                    return;
                }
                Verdict::WithinUnknown => {
                    self.within_unknown += 1;
                    self.unknown_outcomes += expect.unknown();
                    return;
                }
                Verdict::Mismatch if lo == hi => {
                    format!("read {value}, acknowledged changes lead to {lo}")
                }
                Verdict::Mismatch => format!("read {value}, outside [{lo}, {hi}]"),
                Verdict::BadGet { value: got } => {
                    let (ever_lo, ever_hi) = expect.ever_range();
                    format!("a get answered {got}, outside [{ever_lo}, {ever_hi}]")
                }
            },
        };
        self.failed += 1;
        if self.failures.len() < MAX_LISTED {
            self.failures.push(Failure {
                key: key(),
                read: read.ok(),
                acked: expect.acked(),
                unknown_up: expect.unknown_up,
                unknown_down: expect.unknown_down,
                reason,
            });
        }
    }

    /// The verdict in one line (plus one line per listed failure).
    pub fn lines(&self) -> Vec<String> {
        if self.passed() {
            let mut line = format!(
                "verify: {} keys read back, all equal the acknowledged increments",
                self.keys
            );
            if self.within_unknown > 0 {
                line += &format!(
                    " ({} keys within the range allowed by {} unknown outcomes)",
                    self.within_unknown, self.unknown_outcomes
                );
            }
            return vec![line];
        }
        let mut lines = vec![format!(
            "verify: FAILED: {} of {} keys read back do not match the acknowledged changes{}:",
            self.failed,
            self.keys,
            if self.failed as usize > self.failures.len() {
                format!(" (first {})", self.failures.len())
            } else {
                String::new()
            }
        )];
        for f in &self.failures {
            lines.push(format!(
                "  {}: {} (acked {}, unknown +{}/-{})",
                f.key, f.reason, f.acked, f.unknown_up, f.unknown_down
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(up: u64, down: u64) -> Expect {
        Expect {
            acked_up: up,
            acked_down: down,
            ..Expect::default()
        }
    }

    #[test]
    fn equal_passes_and_off_by_one_fails() {
        let e = acked(10, 3);
        assert_eq!(judge(&e, 7), Verdict::Exact);
        assert_eq!(judge(&e, 8), Verdict::Mismatch);
        assert_eq!(judge(&e, 6), Verdict::Mismatch);
        assert_eq!(judge(&Expect::default(), 0), Verdict::Exact);
        assert_eq!(judge(&Expect::default(), 1), Verdict::Mismatch);
    }

    #[test]
    fn unknown_outcomes_widen_the_range_in_their_direction() {
        // 5 acked increments, 2 unknown increments: 5..=7 allowed.
        let up = Expect {
            unknown_up: 2,
            ..acked(5, 0)
        };
        assert_eq!(judge(&up, 5), Verdict::Exact);
        assert_eq!(judge(&up, 6), Verdict::WithinUnknown);
        assert_eq!(judge(&up, 7), Verdict::WithinUnknown);
        assert_eq!(judge(&up, 8), Verdict::Mismatch);
        assert_eq!(judge(&up, 4), Verdict::Mismatch);
        // Unknown decrements widen downwards only.
        let down = Expect {
            unknown_down: 2,
            ..acked(5, 0)
        };
        assert_eq!(judge(&down, 3), Verdict::WithinUnknown);
        assert_eq!(judge(&down, 2), Verdict::Mismatch);
        assert_eq!(judge(&down, 6), Verdict::Mismatch);
    }

    #[test]
    fn get_answers_must_be_values_the_key_could_hold() {
        let e = Expect {
            gets: Some((0, 4)),
            unknown_up: 1,
            ..acked(3, 0)
        };
        assert_eq!(judge(&e, 3), Verdict::Exact);
        let too_high = Expect {
            gets: Some((0, 5)),
            ..e
        };
        assert_eq!(judge(&too_high, 3), Verdict::BadGet { value: 5 });
        let negative = Expect {
            gets: Some((-1, 2)),
            ..e
        };
        assert_eq!(judge(&negative, 3), Verdict::BadGet { value: -1 });
        // With decrements a negative answer is possible.
        let mixed = Expect {
            gets: Some((-2, 1)),
            ..acked(1, 2)
        };
        assert_eq!(judge(&mixed, -1), Verdict::Exact);
    }

    #[test]
    fn tallies_feed_the_expectation() {
        let t = KeyTally::default();
        assert!(!t.is_touched());
        t.touch();
        assert!(t.is_touched());
        t.change(1, Applied::Yes);
        t.change(1, Applied::Yes);
        t.change(-1, Applied::Yes);
        t.change(1, Applied::Maybe);
        t.change(-1, Applied::No);
        let e = t.expect(0);
        assert_eq!(e.acked(), 1);
        assert_eq!(e.final_range(), (1, 2));
        assert_eq!(e.gets, None);
        t.got(2);
        t.got(0);
        assert_eq!(t.expect(0).gets, Some((0, 2)));
    }

    /// Keys a fill left at 1 (`--base 1`): every bound moves by the base.
    #[test]
    fn a_base_moves_every_bound() {
        let e = Expect {
            base: 1,
            unknown_up: 1,
            gets: Some((1, 3)),
            ..acked(2, 0)
        };
        assert_eq!(judge(&e, 3), Verdict::Exact);
        assert_eq!(judge(&e, 4), Verdict::WithinUnknown);
        assert_eq!(judge(&e, 2), Verdict::Mismatch);
        assert_eq!(judge(&e, 5), Verdict::Mismatch);
        let below = Expect {
            gets: Some((0, 3)),
            ..e
        };
        assert_eq!(judge(&below, 3), Verdict::BadGet { value: 0 });
    }

    #[test]
    fn the_summary_counts_and_lists() {
        let mut s = VerifySummary::default();
        s.add(|| "k0".into(), &acked(2, 0), Ok(2));
        let unknown = Expect {
            unknown_up: 3,
            ..acked(2, 0)
        };
        s.add(|| "k1".into(), &unknown, Ok(4));
        assert!(s.passed());
        assert_eq!(
            s.lines(),
            [
                "verify: 2 keys read back, all equal the acknowledged increments \
              (1 keys within the range allowed by 3 unknown outcomes)"
            ]
        );
        s.add(|| "k2".into(), &acked(2, 0), Ok(3));
        s.add(|| "k3".into(), &acked(2, 0), Err("timed out".into()));
        assert!(!s.passed());
        assert_eq!(s.failed, 2);
        let lines = s.lines();
        assert!(lines[0].starts_with("verify: FAILED: 2 of 4 keys"));
        assert!(lines[1].contains("k2: read 3, acknowledged changes lead to 2"));
        assert!(lines[2].contains("k3: could not be read back: timed out"));
        for i in 0..20 {
            s.add(|| format!("x{i}"), &acked(0, 0), Ok(1));
        }
        assert_eq!(s.failures.len(), MAX_LISTED);
        assert_eq!(s.failed, 22);
    }
}
