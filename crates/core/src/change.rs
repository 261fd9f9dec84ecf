//! Change functions: what a command does to a register.
//!
//! # Rules
//!
//! - Overflow is refused, never wrapped; a bound (`min`, `max`) refuses a result outside it. A
//!   refused command changes nothing but its client's entry (below).
//! - **At most once.** A mutating command with a request id `(client, seq, expires_ms)` is
//!   looked up in the register's client entries (at most one per client: its highest applied
//!   `seq`, and that request's outcome):
//!   - an entry of the same client id but another session (another `expires_ms`, or one with
//!     a session and one without): [`Outcome::Expired`] (client ids are per session; this may
//!     be an old request of a session the key forgot);
//!   - `seq` equal to the entry's: a replay; answered with the recorded outcome, nothing applied;
//!   - `seq` below the entry's: [`Outcome::Expired`] (its outcome is no longer kept);
//!   - no entry, and the request's session ends at or before the register's `floor` (or, for a
//!     request id without a session, `seq <= horizon`): [`Outcome::Expired`] (the client's
//!     entry may have been dropped after applying it);
//!   - the session has ended (`expires_ms <= now`): [`Outcome::Expired`] (a session takes no
//!     new request after its end: this is what lets its entries go);
//!   - otherwise: applied, and the entry becomes `(client, seq, outcome, expires_ms)`.
//! - **Bounded.** After a batch that recorded a request, entries whose session ended
//!   (`expires_ms <= now`) are dropped, then those ending first until at most
//!   [`Limits::max_clients`] remain; the batch's own clients are never dropped (a batch holds
//!   at most `max_clients` of them: [`batch_len`]). Every drop raises `floor` to the dropped
//!   entry's expiry (`horizon` to its `seq`, for a request id without a session). So a
//!   request once applied either finds its entry (replay or expired) or is refused by `floor`
//!   (or `horizon`): never applied twice, **whatever the clocks say**: clocks only decide when
//!   entries go, never whether a request is applied twice.
//!
//! # Why a live client is never refused
//!
//! A session's end is set by the server that opened it (its clock, plus at most
//! [`Limits::idle_ms`]), never by the client's clock, and a client opens a new session well
//! before its current one ends. Entries are dropped only when their session ended or when a key
//! has more than `max_clients` sessions at once, and then the one ending first goes. So a
//! request of a live session is refused only if the servers' clocks disagree by more than the
//! margin the client keeps ([`Limits::skew_ms`]), or if more than `max_clients` sessions that
//! end later wrote the key. Nothing compares one client's numbers with another's.
//!
//! A register's size is bounded by `max_clients` entries of at most [`MAX_ENTRY_BYTES`] each
//! (checked in tests), so that a key plus its register always fits in one frame.

use counter_proto::{
    ClientEntry, ClientError, Command, Op, Outcome, Register, MAX_FRAME_LEN, MAX_KEY_LEN,
};

/// Most client entries a register may be configured to keep: with a key of the longest length,
/// a register of this many entries still fits in one frame.
pub const MAX_CLIENTS_LIMIT: usize = 1024;

/// Largest encoding of one [`ClientEntry`] (postcard varints: three u64 of at most 10 bytes,
/// the largest outcome: a tag and three i64, and a bool).
pub const MAX_ENTRY_BYTES: usize = 3 * 10 + 1 + 3 * 10 + 1;

const _: () = assert!(MAX_CLIENTS_LIMIT * MAX_ENTRY_BYTES + MAX_KEY_LEN + 256 <= MAX_FRAME_LEN);

/// Tests only: a client entry whose encoding is the longest ([`MAX_ENTRY_BYTES`]).
#[cfg(test)]
pub(crate) fn longest_entry() -> ClientEntry {
    ClientEntry {
        client: u64::MAX,
        seq: u64::MAX,
        outcome: Outcome::BelowMin {
            value: i64::MIN,
            would: i64::MIN,
            min: i64::MIN,
        },
        expires_ms: u64::MAX,
        sessionless: true,
    }
}

/// Default of [`Limits::skew_ms`]: how far apart the servers' clocks may be.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// How much of its clients' history a register keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Most client entries per key (1..=[`MAX_CLIENTS_LIMIT`]).
    pub max_clients: usize,
    /// Longest session life, and how long an entry of a request id without a session is kept
    /// (the cluster file's `dedup_idle_secs`).
    pub idle_ms: u64,
    /// How far apart the servers' clocks (nodes and routers) may be without refusing a live
    /// client: a session may end at most this much after `now + idle_ms` by the clock of the
    /// node that checks it, and clients open a new session twice this long before theirs ends.
    pub skew_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_clients: 256,
            idle_ms: 3_600_000,
            skew_ms: MAX_CLOCK_SKEW_MS,
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
        if self.skew_ms == 0 || self.idle_ms < 4 * self.skew_ms {
            return Err(format!(
                "dedup_idle_secs must be at least {} s: sessions last that long and are \
                 renewed {} s before their end (twice the clock skew allowed)",
                (4 * self.skew_ms).div_ceil(1000),
                (2 * self.skew_ms).div_ceil(1000)
            ));
        }
        Ok(())
    }

    /// The life of a session opened now that asked for `lifetime_ms` (0: the longest): at
    /// least four times the clock skew allowed, at most `idle_ms`.
    pub fn session_life(&self, lifetime_ms: u64) -> u64 {
        let shortest = 4 * self.skew_ms;
        match lifetime_ms {
            0 => self.idle_ms,
            l => l.clamp(shortest.min(self.idle_ms), self.idle_ms),
        }
    }

    /// How long after opening a session of `life_ms` (by the client's own monotonic clock) the
    /// client stops sending new requests in it and opens another: twice the clock skew before
    /// its end, so that a server whose clock is that far ahead, and the last request's
    /// retries, still find it open.
    pub fn renew_after_ms(&self, life_ms: u64) -> u64 {
        life_ms.saturating_sub(2 * self.skew_ms)
    }

    /// A session opened at `now_ms` by the opening server's clock, asking for `lifetime_ms`:
    /// its end (`expires_ms`) and how long after opening the client renews it. What routers
    /// and nodes answer to `OpenSession`, and what the simulator's clients get.
    pub fn open_session(&self, now_ms: u64, lifetime_ms: u64) -> (u64, u64) {
        let life = self.session_life(lifetime_ms);
        (now_ms.saturating_add(life), self.renew_after_ms(life))
    }
}

/// What a change may depend on besides the register: the coordinator's clock and the bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ctx {
    /// Milliseconds since the Unix epoch, by the coordinator's clock (only ends sessions).
    pub now_ms: u64,
    pub limits: Limits,
}

/// Checks a request id against this node's clock before it is queued: a session may not end
/// further ahead than the longest session life plus the clock skew allowed (an end far in the
/// future would, once dropped, raise a key's floor past every live session). The refusal is
/// `expired`, never `invalid` or `unavailable`: an earlier attempt, through a node whose clock
/// agreed (or before the limits were lowered), may have applied the request, and the client
/// must leave the session.
pub fn check_request(cmd: &Command, ctx: &Ctx) -> Result<(), ClientError> {
    let Some(id) = cmd.request else {
        return Ok(());
    };
    let latest = ctx
        .now_ms
        .saturating_add(ctx.limits.idle_ms)
        .saturating_add(ctx.limits.skew_ms);
    if id.expires_ms > latest {
        return Err(ClientError::expired(format!(
            "request {id} belongs to a session ending {} ms after this node's clock, more than \
             the longest session ({} ms) plus the clock skew allowed ({} ms): open sessions \
             through a router or node, and keep the servers' clocks in step",
            id.expires_ms - ctx.now_ms,
            ctx.limits.idle_ms,
            ctx.limits.skew_ms
        )));
    }
    Ok(())
}

/// How many of `cmds` (in order) one round may take: at most `max_clients` distinct request
/// clients, so that no command's entry is dropped by its own batch. At least one.
pub fn batch_len(cmds: impl ExactSizeIterator<Item = Command>, limits: &Limits) -> usize {
    let bound = limits.max_clients.max(1);
    // The common case, on every round: no more commands than the bound, so no more clients.
    if cmds.len() <= bound {
        return cmds.len().max(1);
    }
    let mut clients = std::collections::HashSet::with_capacity(bound);
    let mut n = 0;
    for cmd in cmds {
        if let Some(id) = cmd.request.filter(|_| !cmd.op.is_read()) {
            if !clients.contains(&id.client) {
                if clients.len() >= bound {
                    break;
                }
                clients.insert(id.client);
            }
        }
        n += 1;
    }
    n.max(1)
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

/// Applies `cmd` to `reg` in place and returns what to answer and whether a client entry was
/// written (the register's entries then need [`expire`]).
fn apply_one(cmd: &Command, reg: &mut Register, ctx: &Ctx) -> (Outcome, bool) {
    let request = match cmd.request {
        Some(id) if !cmd.op.is_read() => id,
        _ => {
            let (target, outcome) = evaluate_bounded(cmd, reg.value);
            if let Some(v) = target {
                reg.value = v;
                reg.version = reg.version.wrapping_add(1);
            }
            return (outcome, false);
        }
    };
    let sessionless = request.expires_ms == 0;
    let slot = reg
        .clients
        .binary_search_by_key(&request.client, |e| e.client);
    // An entry is one session's: the same client id in another session (or without one) is
    // not this entry's client, and may be an old request of a session already forgotten.
    let other_session = |e: &ClientEntry| {
        e.sessionless != sessionless || (!sessionless && e.expires_ms != request.expires_ms)
    };
    match slot {
        Ok(i) if other_session(&reg.clients[i]) => return (Outcome::Expired, false),
        Ok(i) if request.seq == reg.clients[i].seq => return (reg.clients[i].outcome, false),
        Ok(i) if request.seq < reg.clients[i].seq => return (Outcome::Expired, false),
        Ok(_) => {}
        Err(_) if sessionless && request.seq <= reg.horizon => return (Outcome::Expired, false),
        Err(_) if !sessionless && request.expires_ms <= reg.floor => {
            return (Outcome::Expired, false)
        }
        Err(_) => {}
    }
    if !sessionless && request.expires_ms <= ctx.now_ms {
        return (Outcome::Expired, false);
    }
    let (target, outcome) = evaluate_bounded(cmd, reg.value);
    if let Some(v) = target {
        reg.value = v;
    }
    let expires_ms = if sessionless {
        ctx.now_ms.saturating_add(ctx.limits.idle_ms)
    } else {
        request.expires_ms
    };
    let entry = ClientEntry {
        client: request.client,
        seq: request.seq,
        outcome,
        expires_ms,
        sessionless,
    };
    match slot {
        Ok(i) => reg.clients[i] = entry,
        Err(i) => reg.clients.insert(i, entry),
    }
    reg.version = reg.version.wrapping_add(1);
    (outcome, true)
}

/// Applies `cmd` to `reg` in place and returns what to answer (see the module's rules).
pub fn apply(cmd: &Command, reg: &mut Register, ctx: &Ctx) -> Outcome {
    let (outcome, recorded) = apply_one(cmd, reg, ctx);
    if recorded {
        expire(reg, std::slice::from_ref(cmd), ctx);
    }
    outcome
}

/// Drops the entries of ended sessions, then those ending first beyond the bound, raising the
/// floor (horizon, for request ids without a session) over each dropped one. The clients of
/// `batch` (the commands just applied) are never dropped.
fn expire(reg: &mut Register, batch: &[Command], ctx: &Ctx) {
    let bound = ctx.limits.max_clients.max(1);
    // The common case, on every round: nothing to drop, so nothing to allocate.
    if reg.clients.len() <= bound && reg.clients.iter().all(|e| e.expires_ms > ctx.now_ms) {
        return;
    }
    let mut keep: Vec<u64> = batch
        .iter()
        .filter(|c| !c.op.is_read())
        .filter_map(|c| c.request.map(|id| id.client))
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let (mut floor, mut horizon) = (reg.floor, reg.horizon);
    let mut drop_entry = |e: &ClientEntry| match e.sessionless {
        true => horizon = horizon.max(e.seq),
        false => floor = floor.max(e.expires_ms),
    };
    let kept = |e: &ClientEntry| keep.binary_search(&e.client).is_ok();
    reg.clients.retain(|e| {
        if e.expires_ms <= ctx.now_ms && !kept(e) {
            drop_entry(e);
            return false;
        }
        true
    });
    if reg.clients.len() > bound {
        // The entries that may go, those ending first first; drop as many as the bound needs
        // (fewer only if the batch alone is over the bound: see batch_len).
        let mut candidates: Vec<(u64, u64)> = reg
            .clients
            .iter()
            .filter(|e| !kept(e))
            .map(|e| (e.expires_ms, e.client))
            .collect();
        candidates.sort_unstable();
        candidates.truncate(reg.clients.len() - bound);
        let mut gone: Vec<u64> = candidates.into_iter().map(|(_, c)| c).collect();
        gone.sort_unstable();
        reg.clients.retain(|e| {
            if gone.binary_search(&e.client).is_ok() {
                drop_entry(e);
                return false;
            }
            true
        });
    }
    reg.floor = floor;
    reg.horizon = horizon;
}

/// True when applying `cmd` a second time on a register that may already hold its effect is
/// safe: reads, and commands with a request id (the register remembers them).
pub fn is_retry_safe(cmd: &Command) -> bool {
    cmd.op.is_read() || cmd.request.is_some()
}

/// Applies `cmds` in order (one coalesced round): each sees the previous ones' effect, and a
/// refused one changes nothing but its client's entry. Returns the final register; `results`
/// gets each command's answer. `cmds` should hold at most `max_clients` request clients
/// ([`batch_len`]); beyond that the register may exceed its bound.
pub fn apply_all(
    cmds: &[Command],
    reg: Register,
    ctx: &Ctx,
    results: &mut Vec<Outcome>,
) -> Register {
    let mut reg = reg;
    let mut recorded = false;
    for cmd in cmds {
        let (outcome, wrote) = apply_one(cmd, &mut reg, ctx);
        recorded |= wrote;
        results.push(outcome);
    }
    if recorded {
        expire(&mut reg, cmds, ctx);
    }
    reg
}

#[cfg(test)]
mod tests {
    use super::*;
    use counter_proto::{AcceptorMsg, Msg, RequestId};

    fn reg(value: i64) -> Register {
        Register::new(value, 3)
    }

    fn ctx(now_ms: u64) -> Ctx {
        Ctx {
            now_ms,
            limits: Limits {
                max_clients: 3,
                idle_ms: 1000,
                skew_ms: 100,
            },
        }
    }

    /// Applies a plain op and returns (outcome, register).
    fn run(op: Op, value: i64) -> (Outcome, Register) {
        let mut r = reg(value);
        let out = apply(&op.into(), &mut r, &ctx(0));
        (out, r)
    }

    /// A request of session `client` (ending at 10,000 ms, unless said otherwise).
    fn with_id(op: Op, client: u64, seq: u64) -> Command {
        in_session(op, client, seq, 10_000)
    }

    fn in_session(op: Op, client: u64, seq: u64, expires_ms: u64) -> Command {
        Command {
            op,
            request: Some(RequestId {
                client,
                seq,
                expires_ms,
            }),
            ..Command::default()
        }
    }

    /// A request id without a session (`--request-id CLIENT:SEQ`).
    fn sessionless(op: Op, client: u64, seq: u64) -> Command {
        in_session(op, client, seq, 0)
    }

    fn clients(r: &Register) -> Vec<u64> {
        r.clients.iter().map(|e| e.client).collect()
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
    fn ended_sessions_are_dropped_and_raise_the_floor() {
        let mut r = reg(0);
        apply(&in_session(Op::Incr(1), 1, 1, 500), &mut r, &ctx(0));
        // At 500 ms session 1 has ended: another client's change drops its entry.
        apply(&with_id(Op::Incr(1), 2, 1), &mut r, &ctx(500));
        assert_eq!(clients(&r), vec![2]);
        assert_eq!(r.floor, 500);
        let before = r.clone();
        // Its retry can no longer be recognised: refused, not applied again.
        assert_eq!(
            apply(&in_session(Op::Incr(1), 1, 1, 500), &mut r, &ctx(501)),
            Outcome::Expired
        );
        assert_eq!(r, before);
        // A session ending after the floor is served, whatever its numbers.
        assert_eq!(
            apply(&in_session(Op::Incr(1), 9, 1, 501), &mut r, &ctx(300)),
            Outcome::Value(3)
        );
    }

    #[test]
    fn an_ended_session_takes_no_new_request() {
        let mut r = reg(0);
        assert_eq!(
            apply(&in_session(Op::Incr(1), 1, 1, 500), &mut r, &ctx(499)),
            Outcome::Value(1)
        );
        let before = r.clone();
        assert_eq!(
            apply(&in_session(Op::Incr(1), 1, 2, 500), &mut r, &ctx(500)),
            Outcome::Expired
        );
        assert_eq!(r, before);
        // Its last answer is still replayed while the entry is kept.
        assert_eq!(
            apply(&in_session(Op::Incr(1), 1, 1, 500), &mut r, &ctx(500)),
            Outcome::Value(1)
        );
    }

    #[test]
    fn the_session_ending_first_goes_past_the_bound() {
        let mut r = reg(0);
        for (client, ends) in [(5, 4000), (3, 2000), (9, 3000)] {
            apply(&in_session(Op::Incr(1), client, 1, ends), &mut r, &ctx(0));
        }
        assert_eq!(r.clients.len(), 3);
        apply(&in_session(Op::Incr(1), 7, 1, 1500), &mut r, &ctx(40));
        assert_eq!(
            clients(&r),
            vec![5, 7, 9],
            "sorted by client; 3 (ends at 2000) dropped"
        );
        assert_eq!(r.floor, 2000);
        assert_eq!(
            apply(&in_session(Op::Incr(1), 3, 1, 2000), &mut r, &ctx(41)),
            Outcome::Expired
        );
        // Client 7 was kept although its session ends first: it is the one being served.
        assert!(r.clients.iter().any(|e| e.client == 7));
    }

    /// Found by review: entries were found by client id alone, so a caller reusing a client id
    /// in another session (or with and without one) could have an old, forgotten request
    /// applied again. A request of another session than the entry's is refused.
    #[test]
    fn a_client_id_reused_in_another_session_is_refused_not_applied_again() {
        let one = Limits {
            max_clients: 1,
            ..ctx(0).limits
        };
        let at = |now_ms| Ctx {
            now_ms,
            limits: one,
        };
        let mut r = reg(0);
        assert_eq!(
            apply(&in_session(Op::Incr(1), 7, 5, 500), &mut r, &at(0)),
            Outcome::Value(1)
        );
        // Another session pushes it out: floor 500.
        apply(&in_session(Op::Incr(1), 8, 1, 9000), &mut r, &at(1));
        assert_eq!(r.floor, 500);
        // Client id 7 again, in a session ending later, with a lower number: applied (new).
        assert_eq!(
            apply(&in_session(Op::Incr(1), 7, 3, 5000), &mut r, &at(2)),
            Outcome::Value(3)
        );
        // The first session's request again: not this entry's session, so refused.
        let before = r.clone();
        assert_eq!(
            apply(&in_session(Op::Incr(1), 7, 5, 500), &mut r, &at(3)),
            Outcome::Expired
        );
        assert_eq!(r, before);
        // The same with a request id without a session and a session sharing a client id.
        let mut r = reg(0);
        apply(&sessionless(Op::Incr(1), 9, 50), &mut r, &at(0));
        apply(&in_session(Op::Incr(1), 8, 1, 9000), &mut r, &at(1));
        assert_eq!(r.horizon, 50);
        assert_eq!(
            apply(&in_session(Op::Incr(1), 9, 2, 5000), &mut r, &at(2)),
            Outcome::Value(3)
        );
        let before = r.clone();
        assert_eq!(
            apply(&sessionless(Op::Incr(1), 9, 50), &mut r, &at(3)),
            Outcome::Expired
        );
        assert_eq!(r, before);
    }

    /// A full register and a batch of as many new clients: every old entry goes in one pass
    /// (one scan per dropped entry took 210 ms here), none of the batch's.
    #[test]
    fn a_full_register_makes_room_for_a_full_batch_in_one_pass() {
        let limits = Limits {
            max_clients: MAX_CLIENTS_LIMIT,
            ..ctx(0).limits
        };
        let c = Ctx { now_ms: 0, limits };
        let mut full = reg(0);
        let old: Vec<Command> = (0..MAX_CLIENTS_LIMIT as u64)
            .map(|i| in_session(Op::Incr(1), 1_000_000 + i, 1, 9_000 + i))
            .collect();
        full = apply_all(&old, full, &c, &mut Vec::new());
        let batch: Vec<Command> = (0..MAX_CLIENTS_LIMIT as u64)
            .map(|i| in_session(Op::Incr(1), i, 1, 50_000))
            .collect();
        let after = apply_all(&batch, full, &c, &mut Vec::new());
        assert_eq!(after.clients.len(), MAX_CLIENTS_LIMIT);
        assert!(after.clients.iter().all(|e| e.client < 1_000_000));
        assert_eq!(after.floor, 9_000 + MAX_CLIENTS_LIMIT as u64 - 1);
    }

    /// Defect 2 of the exactly-once review: one horizon compared with every client's numbers
    /// refused live clients whose numbers were low (a lagging clock, a late request). Numbers
    /// are now per session: nothing compares them across clients.
    #[test]
    fn a_live_session_is_never_refused_for_its_numbers_or_its_clock() {
        let mut r = reg(0);
        // Hundreds of sessions, far more than the bound, each numbering from 1.
        for client in 1..=300u64 {
            let out = apply(
                &in_session(Op::Incr(1), client, 1, 5000 + client),
                &mut r,
                &ctx(0),
            );
            assert_eq!(out, Outcome::Value(client as i64), "client {client}");
        }
        assert_eq!(r.clients.len(), 3);
        // A session that wrote long ago and ends later than the dropped ones is served.
        assert_eq!(
            apply(&in_session(Op::Incr(1), 1000, 1, 9000), &mut r, &ctx(10)),
            Outcome::Value(301)
        );
    }

    #[test]
    fn requests_without_a_session_use_the_horizon() {
        let mut r = reg(0);
        apply(&sessionless(Op::Incr(1), 1, 50), &mut r, &ctx(0));
        assert_eq!(r.clients[0].expires_ms, 1000, "kept for idle_ms");
        // 1000 ms later another client's change drops client 1's entry.
        apply(&with_id(Op::Incr(1), 2, 7), &mut r, &ctx(1000));
        assert_eq!(clients(&r), vec![2]);
        assert_eq!((r.horizon, r.floor), (50, 0), "only the horizon rises");
        let before = r.clone();
        assert_eq!(
            apply(&sessionless(Op::Incr(1), 1, 50), &mut r, &ctx(1002)),
            Outcome::Expired
        );
        assert_eq!(r, before);
        assert_eq!(
            apply(&sessionless(Op::Incr(1), 1, 51), &mut r, &ctx(1003)),
            Outcome::Value(3)
        );
    }

    /// Defect 1 of the exactly-once review, third way: a batch of more clients than the bound
    /// dropped its own entries, and its retry answered applied requests as expired.
    #[test]
    fn a_batch_never_drops_its_own_entries_and_its_retry_replays_them() {
        let limits = ctx(0).limits;
        let cmds: Vec<Command> = (1..=5u64).map(|c| with_id(Op::Incr(1), c, 1)).collect();
        let n = batch_len(cmds.iter().copied(), &limits);
        assert_eq!(n, 3, "at most max_clients clients per batch");
        let mut results = Vec::new();
        let first = apply_all(&cmds[..n], reg(0), &ctx(0), &mut results);
        assert_eq!(first.clients.len(), 3);
        // The retry of the same batch onto its own register replays every answer.
        let mut again = Vec::new();
        let second = apply_all(&cmds[..n], first.clone(), &ctx(1), &mut again);
        assert_eq!(again, results);
        assert_eq!(second.value, first.value);
        // Reads and repeated clients do not count against the bound.
        let mixed = [
            with_id(Op::Incr(1), 1, 1),
            Op::Get.into(),
            with_id(Op::Incr(1), 1, 2),
            Op::Incr(1).into(),
            with_id(Op::Incr(1), 2, 1),
            with_id(Op::Incr(1), 3, 1),
            with_id(Op::Incr(1), 4, 1),
        ];
        assert_eq!(batch_len(mixed.iter().copied(), &limits), 6);
        assert_eq!(batch_len(std::iter::empty(), &limits), 1);
        // A full register of sessions ending later than the batch's: the others go, never the
        // batch's own entries.
        let mut full = reg(0);
        for c in 10..13 {
            apply(&in_session(Op::Incr(1), c, 1, 50_000), &mut full, &ctx(0));
        }
        let mut out = Vec::new();
        let after = apply_all(&cmds[..n], full, &ctx(0), &mut out);
        assert_eq!(clients(&after), vec![1, 2, 3]);
        assert_eq!(after.floor, 50_000);
        assert_eq!(
            out,
            vec![Outcome::Value(4), Outcome::Value(5), Outcome::Value(6)]
        );
    }

    #[test]
    fn sessions_ending_too_far_ahead_are_refused_before_they_are_queued() {
        let c = ctx(1000);
        // now + idle + skew = 2100.
        assert!(check_request(&in_session(Op::Incr(1), 1, 1, 2100), &c).is_ok());
        let err = check_request(&in_session(Op::Incr(1), 1, 1, 2101), &c).unwrap_err();
        assert!(err.message.contains("clock skew"), "{err}");
        // An earlier attempt may have applied it: its own kind, never "not applied".
        assert_eq!(err.kind, counter_proto::ErrorKind::Expired);
        assert!(check_request(&sessionless(Op::Incr(1), 1, u64::MAX), &c).is_ok());
        assert!(check_request(&Op::Incr(1).into(), &c).is_ok());
    }

    #[test]
    fn session_life_and_renewal() {
        let l = Limits::default();
        assert_eq!(l.session_life(0), l.idle_ms);
        assert_eq!(l.session_life(1), 4 * l.skew_ms);
        assert_eq!(l.session_life(u64::MAX), l.idle_ms);
        assert_eq!(l.renew_after_ms(l.idle_ms), l.idle_ms - 2 * l.skew_ms);
        assert_eq!(
            l.open_session(1_000, 1),
            (1_000 + 4 * l.skew_ms, 2 * l.skew_ms)
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
        let worst = longest_entry();
        assert_eq!(postcard::to_stdvec(&worst).unwrap().len(), MAX_ENTRY_BYTES);
        let full = Register {
            value: i64::MIN,
            version: u64::MAX,
            clients: vec![worst; MAX_CLIENTS_LIMIT],
            horizon: u64::MAX,
            floor: u64::MAX,
        };
        let frame = counter_proto::Frame {
            id: u64::MAX,
            msg: Msg::Acceptor(AcceptorMsg::Accept {
                shard: u32::MAX,
                key: "k".repeat(MAX_KEY_LEN),
                ballot: counter_proto::Ballot::default(),
                register: full,
                next: None,
                config: u64::MAX,
            }),
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
