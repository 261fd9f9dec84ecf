//! Change functions: what an operation does to a register. Overflow is refused, never wrapped.

use counter_proto::{Op, Register};

/// Why an operation cannot be applied. Nothing changes when this is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeError {
    /// The result would not fit in an i64.
    Overflow { value: i64, op: Op },
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::Overflow { value, op } => {
                write!(
                    f,
                    "{op:?} on value {value} would overflow a signed 64-bit counter"
                )
            }
        }
    }
}

impl std::error::Error for ChangeError {}

/// Applies `op` to `reg`: the new register and the value to answer with.
pub fn apply(op: Op, reg: Register) -> Result<(Register, i64), ChangeError> {
    let value = match op {
        Op::Get => return Ok((reg, reg.value)),
        Op::Incr(d) => reg.value.checked_add_unsigned(d),
        Op::Decr(d) => reg.value.checked_sub_unsigned(d),
        Op::Reset => Some(0),
    }
    .ok_or(ChangeError::Overflow {
        value: reg.value,
        op,
    })?;
    let next = Register {
        value,
        version: reg.version.wrapping_add(1),
    };
    Ok((next, value))
}

/// Applies `ops` in order (one coalesced round): each op sees the previous ones' effect, and a
/// refused op changes nothing. Returns the final register and each op's answer.
pub fn apply_all(
    ops: impl IntoIterator<Item = Op>,
    reg: Register,
    results: &mut Vec<Result<i64, ChangeError>>,
) -> Register {
    let mut reg = reg;
    for op in ops {
        match apply(op, reg) {
            Ok((next, value)) => {
                reg = next;
                results.push(Ok(value));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    reg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(value: i64) -> Register {
        Register { value, version: 3 }
    }

    #[test]
    fn incr_decr_reset_get() {
        assert_eq!(apply(Op::Incr(5), reg(1)).unwrap().1, 6);
        assert_eq!(apply(Op::Decr(5), reg(1)).unwrap().1, -4);
        assert_eq!(apply(Op::Reset, reg(9)).unwrap().1, 0);
        assert_eq!(apply(Op::Get, reg(9)).unwrap(), (reg(9), 9));
    }

    #[test]
    fn every_change_bumps_the_version_and_reads_do_not() {
        assert_eq!(apply(Op::Incr(1), reg(0)).unwrap().0.version, 4);
        assert_eq!(apply(Op::Reset, reg(0)).unwrap().0.version, 4);
        assert_eq!(apply(Op::Get, reg(0)).unwrap().0.version, 3);
    }

    #[test]
    fn overflow_errors_say_what_overflowed() {
        let e = apply(Op::Incr(1), reg(i64::MAX)).unwrap_err();
        assert!(
            e.to_string().contains("overflow") && e.to_string().contains(&i64::MAX.to_string())
        );
    }

    #[test]
    fn overflow_is_refused() {
        assert!(apply(Op::Incr(1), reg(i64::MAX)).is_err());
        assert!(apply(Op::Decr(1), reg(i64::MIN)).is_err());
        assert!(apply(Op::Incr(u64::MAX), reg(0)).is_err());
        // A delta above i64::MAX is fine when the result fits.
        assert_eq!(
            apply(Op::Incr(i64::MAX as u64 + 1), reg(-1)).unwrap().1,
            i64::MAX
        );
        assert_eq!(
            apply(Op::Decr(i64::MAX as u64 + 1), reg(0)).unwrap().1,
            i64::MIN
        );
    }

    #[test]
    fn apply_all_threads_the_register_and_skips_refused_ops() {
        let mut results = Vec::new();
        let out = apply_all(
            [Op::Incr(2), Op::Incr(u64::MAX), Op::Decr(1), Op::Get],
            reg(0),
            &mut results,
        );
        assert_eq!(out.value, 1);
        assert_eq!(out.version, 5);
        assert_eq!(results[0], Ok(2));
        assert!(results[1].is_err());
        assert_eq!(results[2], Ok(1));
        assert_eq!(results[3], Ok(1));
    }
}
