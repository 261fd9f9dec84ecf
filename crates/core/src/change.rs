//! Change functions: what a command does to a register.
//!
//! # Rules
//!
//! - Overflow is refused, never wrapped; a bound (`min`, `max`) refuses a result outside it. A
//!   refused command changes nothing but its client's entry (below).
//! - **At most once.** A mutating command with a request id `(client, seq)` is looked up in the
//!   register's client entries (at most one per client: its highest applied `seq`, and that
//!   request's outcome):
//!   - `seq` equal to the entry's: a replay; answered with the recorded outcome, nothing applied;
//!   - `seq` below the entry's: [`Outcome::Expired`] (its outcome is no longer kept);
//!   - no entry, and `seq <= horizon`: [`Outcome::Expired`] (the client's entry may have been
//!     dropped after applying it);
//!   - otherwise: applied, and the entry becomes `(client, seq, outcome, now)`.
//! - **Bounded.** After a change, entries idle for longer than [`Limits::idle_ms`] are dropped,
//!   then the least recently used ones until at most [`Limits::max_clients`] remain. Every drop
//!   raises `horizon` to at least the dropped `seq`. So a request once applied either finds its
//!   entry (replay or expired) or has `seq <= horizon` (expired): never applied twice.
//!
//! A register's size is bounded by `max_clients` entries of at most [`MAX_ENTRY_BYTES`] each
//! (checked in tests), so that a key plus its register always fits in one frame.

use counter_proto::{ClientEntry, Command, Op, Outcome, Register, MAX_FRAME_LEN, MAX_KEY_LEN};

/// Most client entries a register may be configured to keep: with a key of the longest length,
/// a register of this many entries still fits in one frame.
pub const MAX_CLIENTS_LIMIT: usize = 1024;

/// Largest encoding of one [`ClientEntry`] (postcard varints: three u64 of at most 10 bytes, and
/// the largest outcome: a tag and three i64).
pub const MAX_ENTRY_BYTES: usize = 3 * 10 + 1 + 3 * 10;

const _: () = assert!(MAX_CLIENTS_LIMIT * MAX_ENTRY_BYTES + MAX_KEY_LEN + 256 <= MAX_FRAME_LEN);

/// How much of its clients' history a register keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Most client entries per key (1..=[`MAX_CLIENTS_LIMIT`]).
    pub max_clients: usize,
    /// An entry not refreshed for this long is dropped at the key's next change.
    pub idle_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_clients: 256,
            idle_ms: 3_600_000,
        }
    }
}

impl Limits {
    /// Checks the configured bounds, saying what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_CLIENTS_LIMIT).contains(&self.max_clients) {
            return Err(format!(
                "dedup_clients must be 1..={MAX_CLIENTS_LIMIT}, not {}",
                self.max_clients
            ));
        }
        if self.idle_ms == 0 {
            return Err("dedup_idle_secs must be positive".into());
        }
        Ok(())
    }
}

/// What a change may depend on besides the register: the coordinator's clock and the bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ctx {
    /// Milliseconds since the Unix epoch, by the coordinator's clock (only ages entries).
    pub now_ms: u64,
    pub limits: Limits,
}

/// The value `op` would leave on `value`, and the outcome to answer, before bounds.
/// `None`: the value stays.
fn evaluate(op: Op, value: i64) -> (Option<i64>, Outcome) {
    let target = match op {
        Op::Get => return (None, Outcome::Value(value)),
        Op::Incr(d) => value.checked_add_unsigned(d),
        Op::Decr(d) => value.checked_sub_unsigned(d),
        Op::Reset => Some(0),
        Op::Set(v) => Some(v),
        Op::Cas { expected, new } => {
            if value != expected {
                let unchanged = Outcome::Cas {
                    value,
                    swapped: false,
                };
                return (None, unchanged);
            }
            let swapped = Outcome::Cas {
                value: new,
                swapped: true,
            };
            return (Some(new), swapped);
        }
    };
    match target {
        Some(v) => (Some(v), Outcome::Value(v)),
        None => (None, Outcome::Overflow { value }),
    }
}

/// Applies the command's operation and bounds to `value`, ignoring its request id.
fn evaluate_bounded(cmd: &Command, value: i64) -> (Option<i64>, Outcome) {
    let (target, outcome) = evaluate(cmd.op, value);
    let Some(would) = target else {
        return (None, outcome);
    };
    if let Some(min) = cmd.min.filter(|&min| would < min) {
        return (None, Outcome::BelowMin { value, would, min });
    }
    if let Some(max) = cmd.max.filter(|&max| would > max) {
        return (None, Outcome::AboveMax { value, would, max });
    }
    (Some(would), outcome)
}

/// Applies `cmd` to `reg` in place and returns what to answer (see the module's rules).
pub fn apply(cmd: &Command, reg: &mut Register, ctx: &Ctx) -> Outcome {
    let request = match cmd.request {
        Some(id) if !cmd.op.is_read() => id,
        _ => {
            let (target, outcome) = evaluate_bounded(cmd, reg.value);
            if let Some(v) = target {
                reg.value = v;
                reg.version = reg.version.wrapping_add(1);
            }
            return outcome;
        }
    };
    let slot = reg
        .clients
        .binary_search_by_key(&request.client, |e| e.client);
    match slot {
        Ok(i) if request.seq == reg.clients[i].seq => return reg.clients[i].outcome,
        Ok(i) if request.seq < reg.clients[i].seq => return Outcome::Expired,
        Err(_) if request.seq <= reg.horizon => return Outcome::Expired,
        _ => {}
    }
    let (target, outcome) = evaluate_bounded(cmd, reg.value);
    if let Some(v) = target {
        reg.value = v;
    }
    let entry = ClientEntry {
        client: request.client,
        seq: request.seq,
        outcome,
        at_ms: ctx.now_ms,
    };
    match slot {
        Ok(i) => reg.clients[i] = entry,
        Err(i) => reg.clients.insert(i, entry),
    }
    expire(reg, request.client, ctx);
    reg.version = reg.version.wrapping_add(1);
    outcome
}

/// Drops idle entries, then the least recently used beyond the bound, raising the horizon
/// over each dropped one. `keep` (the client just served) is never dropped.
fn expire(reg: &mut Register, keep: u64, ctx: &Ctx) {
    let mut horizon = reg.horizon;
    reg.clients.retain(|e| {
        let idle = ctx.now_ms.saturating_sub(e.at_ms) > ctx.limits.idle_ms;
        if idle && e.client != keep {
            horizon = horizon.max(e.seq);
            return false;
        }
        true
    });
    let bound = ctx.limits.max_clients.max(1);
    while reg.clients.len() > bound {
        let oldest = reg
            .clients
            .iter()
            .enumerate()
            .filter(|(_, e)| e.client != keep)
            .min_by_key(|(_, e)| (e.at_ms, e.client))
            .map(|(i, _)| i);
        // Only a malformed register (one client listed twice) has none to drop.
        let Some(oldest) = oldest else { break };
        horizon = horizon.max(reg.clients.remove(oldest).seq);
    }
    reg.horizon = horizon;
}

/// True when applying `cmd` a second time on a register that may already hold its effect is
/// safe: reads, and commands with a request id (the register remembers them).
pub fn is_retry_safe(cmd: &Command) -> bool {
    cmd.op.is_read() || cmd.request.is_some()
}

/// Applies `cmds` in order (one coalesced round): each sees the previous ones' effect, and a
/// refused one changes nothing but its client's entry. Returns the final register; `results`
/// gets each command's answer.
pub fn apply_all(
    cmds: &[Command],
    reg: Register,
    ctx: &Ctx,
    results: &mut Vec<Outcome>,
) -> Register {
    let mut reg = reg;
    results.extend(cmds.iter().map(|cmd| apply(cmd, &mut reg, ctx)));
    reg
}

#[cfg(test)]
mod tests {
    use super::*;
    use counter_proto::RequestId;

    fn reg(value: i64) -> Register {
        Register::new(value, 3)
    }

    fn ctx(now_ms: u64) -> Ctx {
        Ctx {
            now_ms,
            limits: Limits {
                max_clients: 3,
                idle_ms: 1000,
            },
        }
    }

    /// Applies a plain op and returns (outcome, register).
    fn run(op: Op, value: i64) -> (Outcome, Register) {
        let mut r = reg(value);
        let out = apply(&op.into(), &mut r, &ctx(0));
        (out, r)
    }

    fn with_id(op: Op, client: u64, seq: u64) -> Command {
        Command {
            op,
            request: Some(RequestId { client, seq }),
            ..Command::default()
        }
    }

    #[test]
    fn incr_decr_reset_get_set() {
        assert_eq!(run(Op::Incr(5), 1).0, Outcome::Value(6));
        assert_eq!(run(Op::Decr(5), 1).0, Outcome::Value(-4));
        assert_eq!(run(Op::Reset, 9).0, Outcome::Value(0));
        assert_eq!(run(Op::Set(-7), 9).0, Outcome::Value(-7));
        assert_eq!(run(Op::Get, 9), (Outcome::Value(9), reg(9)));
    }

    #[test]
    fn every_change_bumps_the_version_and_reads_do_not() {
        assert_eq!(run(Op::Incr(1), 0).1.version, 4);
        assert_eq!(run(Op::Reset, 0).1.version, 4);
        assert_eq!(run(Op::Get, 0).1.version, 3);
    }

    #[test]
    fn overflow_is_refused_and_changes_nothing() {
        assert_eq!(
            run(Op::Incr(1), i64::MAX),
            (Outcome::Overflow { value: i64::MAX }, reg(i64::MAX))
        );
        assert_eq!(
            run(Op::Decr(1), i64::MIN).0,
            Outcome::Overflow { value: i64::MIN }
        );
        assert_eq!(run(Op::Incr(u64::MAX), 0).0, Outcome::Overflow { value: 0 });
        // A delta above i64::MAX is fine when the result fits.
        assert_eq!(
            run(Op::Incr(i64::MAX as u64 + 1), -1).0,
            Outcome::Value(i64::MAX)
        );
        assert_eq!(
            run(Op::Decr(i64::MAX as u64 + 1), 0).0,
            Outcome::Value(i64::MIN)
        );
    }

    #[test]
    fn cas_swaps_only_on_the_expected_value() {
        let cas = Op::Cas {
            expected: 5,
            new: 9,
        };
        let (out, r) = run(cas, 5);
        assert_eq!(
            out,
            Outcome::Cas {
                value: 9,
                swapped: true
            }
        );
        assert_eq!((r.value, r.version), (9, 4));
        let (out, r) = run(cas, 4);
        assert_eq!(
            out,
            Outcome::Cas {
                value: 4,
                swapped: false
            }
        );
        assert_eq!(r, reg(4), "a failed cas changes nothing");
    }

    #[test]
    fn bounds_refuse_and_change_nothing() {
        let bounded = |op, min, max| Command {
            op,
            min,
            max,
            request: None,
        };
        let mut r = reg(3);
        let out = apply(&bounded(Op::Decr(5), Some(0), None), &mut r, &ctx(0));
        assert_eq!(
            out,
            Outcome::BelowMin {
                value: 3,
                would: -2,
                min: 0
            }
        );
        assert_eq!(r, reg(3));
        let out = apply(&bounded(Op::Incr(8), None, Some(10)), &mut r, &ctx(0));
        assert_eq!(
            out,
            Outcome::AboveMax {
                value: 3,
                would: 11,
                max: 10
            }
        );
        assert_eq!(r, reg(3));
        // Exactly at the bound is within it.
        assert_eq!(
            apply(&bounded(Op::Decr(3), Some(0), None), &mut r, &ctx(0)),
            Outcome::Value(0)
        );
        assert_eq!(
            apply(&bounded(Op::Incr(10), None, Some(10)), &mut r, &ctx(0)),
            Outcome::Value(10)
        );
        // Bounds apply to set and a swapping cas too.
        assert!(matches!(
            apply(&bounded(Op::Set(-1), Some(0), None), &mut r, &ctx(0)),
            Outcome::BelowMin { .. }
        ));
        let cas = Op::Cas {
            expected: 10,
            new: 11,
        };
        assert!(matches!(
            apply(&bounded(cas, None, Some(10)), &mut r, &ctx(0)),
            Outcome::AboveMax { .. }
        ));
        assert_eq!(r.value, 10);
    }

    #[test]
    fn a_replayed_request_gets_its_first_outcome_and_is_not_applied_again() {
        let mut r = reg(0);
        let first = apply(&with_id(Op::Incr(5), 1, 10), &mut r, &ctx(0));
        assert_eq!(first, Outcome::Value(5));
        apply(&with_id(Op::Incr(1), 2, 10), &mut r, &ctx(0));
        let version = r.version;
        let again = apply(&with_id(Op::Incr(5), 1, 10), &mut r, &ctx(1));
        assert_eq!(
            again,
            Outcome::Value(5),
            "the original answer, not the current value"
        );
        assert_eq!((r.value, r.version), (6, version), "nothing applied");
        // The next request of the same client is applied.
        assert_eq!(
            apply(&with_id(Op::Incr(5), 1, 11), &mut r, &ctx(2)),
            Outcome::Value(11)
        );
        // A refusal is remembered too: its replay is refused the same way even if it would fit now.
        let bounded = Command {
            max: Some(11),
            ..with_id(Op::Incr(1), 3, 1)
        };
        let refused = apply(&bounded, &mut r, &ctx(3));
        assert!(matches!(refused, Outcome::AboveMax { .. }));
        apply(&Op::Set(0).into(), &mut r, &ctx(3));
        assert_eq!(apply(&bounded, &mut r, &ctx(4)), refused);
        assert_eq!(r.value, 0);
    }

    #[test]
    fn an_older_request_than_the_one_kept_is_expired_never_applied() {
        let mut r = reg(0);
        apply(&with_id(Op::Incr(1), 1, 10), &mut r, &ctx(0));
        apply(&with_id(Op::Incr(1), 1, 11), &mut r, &ctx(0));
        let before = r.clone();
        assert_eq!(
            apply(&with_id(Op::Incr(1), 1, 10), &mut r, &ctx(0)),
            Outcome::Expired
        );
        assert_eq!(r, before);
    }

    #[test]
    fn idle_entries_expire_and_raise_the_horizon() {
        let mut r = reg(0);
        apply(&with_id(Op::Incr(1), 1, 50), &mut r, &ctx(0));
        // 1001 ms later another client's change drops client 1's idle entry.
        apply(&with_id(Op::Incr(1), 2, 7), &mut r, &ctx(1001));
        assert_eq!(
            r.clients.iter().map(|e| e.client).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(r.horizon, 50);
        let before = r.clone();
        // Client 1's retry can no longer be recognised: refused, not applied again.
        assert_eq!(
            apply(&with_id(Op::Incr(1), 1, 50), &mut r, &ctx(1002)),
            Outcome::Expired
        );
        assert_eq!(r, before);
        // A newer request of any client (sequence above the horizon) is served.
        assert_eq!(
            apply(&with_id(Op::Incr(1), 1, 51), &mut r, &ctx(1003)),
            Outcome::Value(3)
        );
        // Not idle yet at exactly idle_ms.
        apply(&with_id(Op::Incr(1), 3, 60), &mut r, &ctx(2003));
        assert!(r.clients.iter().any(|e| e.client == 1));
    }

    #[test]
    fn the_least_recently_used_entry_goes_past_the_bound() {
        let mut r = reg(0);
        for (client, now) in [(5, 10), (3, 20), (9, 30)] {
            apply(
                &with_id(Op::Incr(1), client, 100 + client),
                &mut r,
                &ctx(now),
            );
        }
        assert_eq!(r.clients.len(), 3);
        apply(&with_id(Op::Incr(1), 7, 1), &mut r, &ctx(40));
        let kept: Vec<u64> = r.clients.iter().map(|e| e.client).collect();
        assert_eq!(
            kept,
            vec![3, 7, 9],
            "sorted by client; 5 (used at 10) dropped"
        );
        assert_eq!(r.horizon, 105);
        assert_eq!(
            apply(&with_id(Op::Incr(1), 5, 105), &mut r, &ctx(41)),
            Outcome::Expired
        );
        // Client 7's own low sequence stays servable: it is listed.
        assert_eq!(
            apply(&with_id(Op::Incr(1), 7, 1), &mut r, &ctx(42)),
            Outcome::Value(4)
        );
    }

    #[test]
    fn reads_and_requests_without_id_leave_the_client_entries_alone() {
        let mut r = reg(0);
        apply(&with_id(Op::Get, 1, 1), &mut r, &ctx(0));
        apply(&Op::Incr(1).into(), &mut r, &ctx(0));
        assert!(r.clients.is_empty());
        assert!(is_retry_safe(&Op::Get.into()));
        assert!(!is_retry_safe(&Op::Incr(1).into()));
        assert!(is_retry_safe(&with_id(Op::Incr(1), 1, 1)));
    }

    #[test]
    fn a_full_register_fits_in_a_frame() {
        let worst = ClientEntry {
            client: u64::MAX,
            seq: u64::MAX,
            outcome: Outcome::BelowMin {
                value: i64::MIN,
                would: i64::MIN,
                min: i64::MIN,
            },
            at_ms: u64::MAX,
        };
        assert_eq!(postcard::to_stdvec(&worst).unwrap().len(), MAX_ENTRY_BYTES);
        let full = Register {
            value: i64::MIN,
            version: u64::MAX,
            clients: vec![worst; MAX_CLIENTS_LIMIT],
            horizon: u64::MAX,
        };
        let frame = counter_proto::Frame {
            id: u64::MAX,
            msg: counter_proto::Msg::Accept {
                shard: u32::MAX,
                key: "k".repeat(MAX_KEY_LEN),
                ballot: counter_proto::Ballot::default(),
                register: full,
                next: None,
            },
        };
        let mut out = Vec::new();
        counter_proto::encode_frame(&frame, &mut out).expect("fits");
    }

    #[test]
    fn apply_all_threads_the_register_and_skips_refused_ops() {
        let mut results = Vec::new();
        let cmds = [Op::Incr(2), Op::Incr(u64::MAX), Op::Decr(1), Op::Get].map(Command::from);
        let out = apply_all(&cmds, reg(0), &ctx(0), &mut results);
        assert_eq!((out.value, out.version), (1, 5));
        assert_eq!(
            results,
            vec![
                Outcome::Value(2),
                Outcome::Overflow { value: 2 },
                Outcome::Value(1),
                Outcome::Value(1)
            ]
        );
    }

    #[test]
    fn limits_are_checked() {
        assert!(Limits::default().validate().is_ok());
        let zero = Limits {
            max_clients: 0,
            ..Limits::default()
        };
        assert!(zero.validate().is_err());
        let many = Limits {
            max_clients: MAX_CLIENTS_LIMIT + 1,
            ..Limits::default()
        };
        assert!(many.validate().is_err());
        let instant = Limits {
            idle_ms: 0,
            ..Limits::default()
        };
        assert!(instant.validate().is_err());
    }
}
