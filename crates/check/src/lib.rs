//! A linearizability checker for counter histories.
//!
//! Keys are independent registers, so a history is checked key by key ([`check_history`]
//! splits it). For one key, [`check_key`] runs the Wing–Gong search as improved by Lowe
//! (and used by Porcupine): walk the calls in real-time order, tentatively linearize an
//! operation whose call comes before every pending return, backtrack when a return is reached
//! whose operation could not be placed, and memoize every (set of linearized operations,
//! counter value) already explored, so that each configuration is searched once.
//!
//! Outcomes: an `Ok` operation took effect exactly once between its call and its return and
//! returned what it says; a `Failed` one took no effect (dropped before the search); an
//! `Unknown` one took effect at most once, at any time after its call (its return is at
//! infinity and it may also never be linearized).

use std::collections::HashMap;
use std::fmt;

/// An operation on one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Incr(u64),
    Decr(u64),
    Get,
    Reset,
}

/// How an operation ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Succeeded, returning this value.
    Ok(i64),
    /// Definitely not applied.
    Failed,
    /// May or may not have been applied.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub key: String,
    pub kind: OpKind,
    /// When the client called it (any monotonic clock; only the order matters).
    pub call: u64,
    /// When the client saw its outcome (ignored for `Unknown`).
    pub ret: u64,
    pub outcome: Outcome,
    /// Free-form origin (client id, line number) for counterexamples.
    pub client: u32,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            OpKind::Incr(d) => format!("incr {d}"),
            OpKind::Decr(d) => format!("decr {d}"),
            OpKind::Get => "get".into(),
            OpKind::Reset => "reset".into(),
        };
        let outcome = match self.outcome {
            Outcome::Ok(v) => format!("-> {v}"),
            Outcome::Failed => "-> failed".into(),
            Outcome::Unknown => "-> unknown".into(),
        };
        let ret = match self.outcome {
            Outcome::Unknown => "∞".into(),
            _ => self.ret.to_string(),
        };
        write!(
            f,
            "[{}, {ret}] client {} {} {kind} {outcome}",
            self.call, self.client, self.key
        )
    }
}

/// The answer of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// Not linearizable: the shortest failing prefix's last operations, as a counterexample.
    Violation(Counterexample),
    /// The step budget ran out before an answer.
    Inconclusive {
        key: String,
        steps: u64,
    },
}

/// A window of a non-linearizable history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counterexample {
    pub key: String,
    /// Operations of the window, in call order. The history up to the last of them (by
    /// return) is not linearizable, while every shorter prefix is.
    pub window: Vec<Operation>,
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {:?}: no linearization of:", self.key)?;
        for op in &self.window {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}

/// Applies `kind` to `value`: the new value and what an `Ok` outcome must have returned.
/// `None` when the change would overflow (the store refuses it, so it never took effect).
fn step(value: i64, kind: OpKind) -> Option<(i64, i64)> {
    let next = match kind {
        OpKind::Incr(d) => value.checked_add_unsigned(d)?,
        OpKind::Decr(d) => value.checked_sub_unsigned(d)?,
        OpKind::Get => value,
        OpKind::Reset => 0,
    };
    Some((next, next))
}

/// Checks every key of `history` on its own; the first violation found is returned.
pub fn check_history(history: &[Operation], budget_per_key: u64) -> Verdict {
    let mut keys: Vec<&str> = history.iter().map(|o| o.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut inconclusive = None;
    for key in keys {
        let ops: Vec<Operation> = history.iter().filter(|o| o.key == key).cloned().collect();
        match check_key(&ops, budget_per_key) {
            Verdict::Linearizable => {}
            v @ Verdict::Violation(_) => return v,
            v @ Verdict::Inconclusive { .. } => inconclusive = Some(v),
        }
    }
    inconclusive.unwrap_or(Verdict::Linearizable)
}

/// Checks the operations of one key (all with the same `key`), starting from value 0.
pub fn check_key(ops: &[Operation], budget: u64) -> Verdict {
    let key = ops.first().map(|o| o.key.clone()).unwrap_or_default();
    // Failed operations took no effect; unknown reads took no effect and constrain nothing.
    let ops: Vec<Operation> = ops
        .iter()
        .filter(|o| match o.outcome {
            Outcome::Failed => false,
            Outcome::Unknown => o.kind != OpKind::Get,
            Outcome::Ok(_) => true,
        })
        .cloned()
        .collect();
    match search(&ops, budget) {
        Search::Ok => Verdict::Linearizable,
        Search::Budget(steps) => Verdict::Inconclusive { key, steps },
        Search::Fail => Verdict::Violation(Counterexample {
            window: minimal_window(&ops, budget),
            key,
        }),
    }
}

enum Search {
    Ok,
    Fail,
    Budget(u64),
}

/// The shortest prefix (by return order of `Ok` ops) that fails, reduced to the operations
/// overlapping its last return plus the few completed just before it.
fn minimal_window(ops: &[Operation], budget: u64) -> Vec<Operation> {
    let mut returns: Vec<u64> = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
        .map(|o| o.ret)
        .collect();
    returns.sort_unstable();
    returns.dedup();
    // Binary search for the first return time whose prefix fails (failure is monotone in the
    // prefix: a linearization of a longer prefix restricts to one of a shorter prefix).
    let prefix = |t: u64| -> Vec<Operation> {
        ops.iter()
            .filter(|o| o.call <= t && (o.outcome == Outcome::Unknown || o.ret <= t))
            .cloned()
            .collect()
    };
    let (mut lo, mut hi) = (0, returns.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        match search(&prefix(returns[mid]), budget) {
            Search::Fail => hi = mid,
            _ => lo = mid + 1,
        }
    }
    let Some(&t) = returns.get(lo) else {
        return ops.to_vec();
    };
    let mut window = prefix(t);
    window.sort_by_key(|o| o.call);
    // Keep the end of the story: the last operations up to the failing return.
    let keep = 12.min(window.len());
    window.split_off(window.len() - keep)
}

/// The Wing–Gong/Lowe search over one key.
fn search(ops: &[Operation], budget: u64) -> Search {
    let n = ops.len();
    if n == 0 {
        return Search::Ok;
    }
    // Entries: (time, is_return, op). Calls before returns at equal times: concurrent.
    #[derive(Clone, Copy)]
    struct Entry {
        op: usize,
        is_return: bool,
    }
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, false, i));
        if o.outcome != Outcome::Unknown {
            events.push((o.ret, true, i));
        }
    }
    events.sort_by_key(|&(t, r, i)| (t, r, i));
    let entries: Vec<Entry> = events
        .iter()
        .map(|&(_, r, i)| Entry {
            op: i,
            is_return: r,
        })
        .collect();
    let m = entries.len();
    // A doubly linked list over entries; index m is the head sentinel.
    let mut next: Vec<usize> = (1..=m).chain(std::iter::once(0)).collect();
    let mut prev: Vec<usize> = std::iter::once(m).chain(0..m).collect();
    next[m] = 0;
    prev[0] = m;
    const END: usize = usize::MAX;
    if m > 0 {
        next[m - 1] = END;
    }
    let mut call_at = vec![0; n];
    let mut ret_at = vec![END; n];
    for (idx, e) in entries.iter().enumerate() {
        if e.is_return {
            ret_at[e.op] = idx;
        } else {
            call_at[e.op] = idx;
        }
    }
    let mut pending_returns = ops.iter().filter(|o| o.outcome != Outcome::Unknown).count();
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = nx;
        if nx != END {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = i;
        if nx != END {
            prev[nx] = i;
        }
    };

    // Linearized sets, split in two: `Ok` ops (which must all be placed) and `Unknown` ones
    // (optional, and placeable at any time after their call). A configuration with the same
    // placed `Ok` ops and value as an explored one, and a superset of its placed unknown ops,
    // can do nothing the explored one could not: it is pruned (dominance), which keeps
    // histories with many unknown outcomes tractable.
    let mut slot = vec![(false, 0usize); n];
    let (mut n_ok, mut n_unknown) = (0, 0);
    for (i, o) in ops.iter().enumerate() {
        if o.outcome == Outcome::Unknown {
            slot[i] = (true, n_unknown);
            n_unknown += 1;
        } else {
            slot[i] = (false, n_ok);
            n_ok += 1;
        }
    }
    let mut ok_bits = vec![0u64; n_ok.div_ceil(64)];
    let mut unknown_bits = vec![0u64; n_unknown.div_ceil(64)];
    let mut cache: HashMap<(Vec<u64>, i64), Vec<Vec<u64>>> = HashMap::new();
    let toggle = |ok_bits: &mut Vec<u64>, unknown_bits: &mut Vec<u64>, op: usize| {
        let (unknown, i) = slot[op];
        let bits = if unknown { unknown_bits } else { ok_bits };
        bits[i / 64] ^= 1 << (i % 64);
    };
    // Records (ok, value, unknown) as explored; false if it is dominated by an explored one.
    let explore = |cache: &mut HashMap<(Vec<u64>, i64), Vec<Vec<u64>>>,
                   ok_bits: &Vec<u64>,
                   unknown_bits: &Vec<u64>,
                   value: i64| {
        let seen = cache.entry((ok_bits.clone(), value)).or_default();
        let subset = |a: &Vec<u64>, b: &Vec<u64>| a.iter().zip(b).all(|(x, y)| x & !y == 0);
        if seen.iter().any(|u| subset(u, unknown_bits)) {
            return false;
        }
        seen.retain(|u| !subset(unknown_bits, u));
        seen.push(unknown_bits.clone());
        true
    };
    // Stack of (op, value before it).
    let mut stack: Vec<(usize, i64)> = Vec::new();
    let mut value: i64 = 0;
    let mut cursor = next[m];
    let mut steps: u64 = 0;
    loop {
        if pending_returns == 0 {
            return Search::Ok;
        }
        steps += 1;
        if steps > budget {
            return Search::Budget(steps);
        }
        if cursor == END {
            // Only unknown calls remain ahead of... nothing: cannot happen while returns pend.
            return Search::Fail;
        }
        let e = entries[cursor];
        if !e.is_return {
            let op = &ops[e.op];
            let mut placed = false;
            if let Some((nv, answer)) = step(value, op.kind) {
                let matches = match op.outcome {
                    Outcome::Ok(v) => v == answer,
                    _ => true,
                };
                if matches {
                    toggle(&mut ok_bits, &mut unknown_bits, e.op);
                    if explore(&mut cache, &ok_bits, &unknown_bits, nv) {
                        stack.push((e.op, value));
                        value = nv;
                        unlink(&mut next, &mut prev, call_at[e.op]);
                        if ret_at[e.op] != END {
                            unlink(&mut next, &mut prev, ret_at[e.op]);
                            pending_returns -= 1;
                        }
                        cursor = next[m];
                        placed = true;
                    } else {
                        toggle(&mut ok_bits, &mut unknown_bits, e.op);
                    }
                }
            }
            if !placed {
                cursor = next[cursor];
            }
        } else {
            // A return whose operation is not placed: undo the last choice.
            let Some((op, before)) = stack.pop() else {
                return Search::Fail;
            };
            toggle(&mut ok_bits, &mut unknown_bits, op);
            value = before;
            if ret_at[op] != END {
                relink(&mut next, &mut prev, ret_at[op]);
                pending_returns += 1;
            }
            relink(&mut next, &mut prev, call_at[op]);
            cursor = next[call_at[op]];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u32, kind: OpKind, call: u64, ret: u64, outcome: Outcome) -> Operation {
        Operation {
            key: "k".into(),
            kind,
            call,
            ret,
            outcome,
            client,
        }
    }
    use OpKind::*;
    use Outcome::{Failed, Ok as Okv, Unknown};

    fn lin(ops: &[Operation]) -> bool {
        match check_key(ops, 1_000_000) {
            Verdict::Linearizable => true,
            Verdict::Violation(_) => false,
            Verdict::Inconclusive { .. } => panic!("budget"),
        }
    }

    #[test]
    fn sequential_histories() {
        assert!(lin(&[]));
        assert!(lin(&[
            op(1, Incr(1), 0, 1, Okv(1)),
            op(1, Incr(2), 2, 3, Okv(3)),
            op(1, Get, 4, 5, Okv(3)),
            op(1, Decr(5), 6, 7, Okv(-2)),
            op(1, Reset, 8, 9, Okv(0)),
            op(1, Get, 10, 11, Okv(0)),
        ]));
        assert!(!lin(&[op(1, Incr(1), 0, 1, Okv(2))]));
        assert!(!lin(&[op(1, Get, 0, 1, Okv(5))]));
    }

    #[test]
    fn concurrent_ops_may_take_either_order() {
        // Two overlapping increments may return 2 and 1 in either order.
        assert!(lin(&[
            op(1, Incr(1), 0, 10, Okv(2)),
            op(2, Incr(1), 1, 9, Okv(1)),
        ]));
        // But never the same value twice.
        assert!(!lin(&[
            op(1, Incr(1), 0, 10, Okv(1)),
            op(2, Incr(1), 1, 9, Okv(1)),
        ]));
    }

    #[test]
    fn wrong_only_because_of_real_time_order() {
        // Linearizable if the calls overlapped; not when the second started after the first ended.
        let overlapping = [op(1, Incr(1), 0, 5, Okv(2)), op(2, Incr(1), 4, 8, Okv(1))];
        assert!(lin(&overlapping));
        let ordered = [op(1, Incr(1), 0, 5, Okv(2)), op(2, Incr(1), 6, 8, Okv(1))];
        assert!(!lin(&ordered));
        // A stale read after a completed write.
        assert!(!lin(&[
            op(1, Incr(1), 0, 1, Okv(1)),
            op(2, Get, 2, 3, Okv(0))
        ]));
        // A read shown and then hidden (CASSANDRA-12126 class).
        assert!(!lin(&[
            op(1, Incr(1), 0, 100, Unknown),
            op(2, Get, 1, 2, Okv(1)),
            op(3, Get, 3, 4, Okv(0)),
        ]));
    }

    #[test]
    fn unknown_ops_may_apply_once_or_never() {
        let unknown = op(1, Incr(5), 0, 0, Unknown);
        assert!(lin(&[unknown.clone(), op(2, Get, 10, 11, Okv(0))]));
        assert!(lin(&[unknown.clone(), op(2, Get, 10, 11, Okv(5))]));
        // ... but not twice, and not before it was called.
        assert!(!lin(&[unknown.clone(), op(2, Get, 10, 11, Okv(10))]));
        assert!(!lin(&[
            op(2, Get, 0, 1, Okv(5)),
            op(1, Incr(5), 2, 0, Unknown),
        ]));
        // Failed ops never applied.
        assert!(!lin(&[
            op(1, Incr(5), 0, 1, Failed),
            op(2, Get, 2, 3, Okv(5)),
        ]));
    }

    #[test]
    fn wrong_only_because_of_an_unknown_op() {
        // The get saw 7 = 2 + 5: possible only if the unknown incr 5 applied. It did not, when
        // it is failed instead of unknown; with unknown, fine.
        let base = |o: Outcome| {
            vec![
                op(1, Incr(2), 0, 1, Okv(2)),
                op(2, Incr(5), 2, 3, o),
                op(3, Get, 4, 5, Okv(7)),
            ]
        };
        assert!(lin(&base(Unknown)));
        assert!(!lin(&base(Failed)));
        // An unknown op that would have to apply before its own call.
        assert!(!lin(&[
            op(3, Get, 0, 1, Okv(7)),
            op(2, Incr(7), 2, 3, Unknown),
        ]));
    }

    #[test]
    fn counterexample_is_a_short_window() {
        let mut ops: Vec<Operation> = (0..100)
            .map(|i| op(1, Incr(1), 2 * i, 2 * i + 1, Okv(i as i64 + 1)))
            .collect();
        ops.push(op(2, Get, 1000, 1001, Okv(5)));
        let Verdict::Violation(cx) = check_key(&ops, 1_000_000) else {
            panic!("must fail")
        };
        assert!(cx.window.len() <= 12);
        assert_eq!(cx.window.last().unwrap().kind, Get);
        assert!(cx.to_string().contains("get -> 5"));
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut a = op(1, Incr(1), 0, 1, Okv(1));
        let mut b = op(2, Incr(1), 2, 3, Okv(1));
        a.key = "a".into();
        b.key = "b".into();
        assert_eq!(check_history(&[a, b.clone()], 1000), Verdict::Linearizable);
        let mut c = b.clone();
        c.call = 4;
        c.ret = 5;
        assert!(matches!(
            check_history(&[b, c], 1000),
            Verdict::Violation(_)
        ));
    }

    #[test]
    fn ten_thousand_concurrent_ops_check_quickly() {
        // 8 clients, each with overlapping increments; answers consistent with a real order.
        let mut ops = Vec::new();
        let mut value = 0i64;
        for i in 0..10_000u64 {
            value += 1;
            // Each op overlaps its neighbours: called 3 steps before it is applied.
            ops.push(op((i % 8) as u32, Incr(1), i * 10, i * 10 + 35, Okv(value)));
        }
        // The step budget, not a clock, bounds the work (timing is for benchmarks).
        assert_eq!(check_key(&ops, 1_000_000), Verdict::Linearizable);
    }
}
