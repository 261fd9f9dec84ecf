//! The CLI's commands (CLI.md): `incr KEY [DELTA]`, `decr KEY [DELTA]`, `get KEY`, `reset KEY`.

use counter_proto::{validate_key, validate_op, ClientError, Op};
use std::ffi::OsString;

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub key: String,
    pub op: Op,
}

/// Parses a command from its words (as they came: a key may not be UTF-8).
pub fn parse(words: &[OsString]) -> Result<Command, ClientError> {
    let text = |w: &OsString, what: &str| {
        w.to_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::invalid(format!("{what} is not valid UTF-8")))
    };
    let Some((name, args)) = words.split_first() else {
        return Err(ClientError::invalid(
            "empty command (expected incr, decr, get or reset)",
        ));
    };
    let name = text(name, "command")?;
    let usage = |u: &str| ClientError::invalid(format!("usage: {u}"));
    let (op, rest) = match name.as_str() {
        "incr" | "decr" => {
            let u = if name == "incr" {
                "incr KEY [DELTA]"
            } else {
                "decr KEY [DELTA]"
            };
            let delta = match args.len() {
                1 => 1,
                2 => parse_delta(&text(&args[1], "delta")?)?,
                _ => return Err(usage(u)),
            };
            let op = if name == "incr" {
                Op::Incr(delta)
            } else {
                Op::Decr(delta)
            };
            (op, args)
        }
        "get" | "reset" => {
            if args.len() != 1 {
                return Err(usage(&format!("{name} KEY")));
            }
            (if name == "get" { Op::Get } else { Op::Reset }, args)
        }
        other => {
            return Err(ClientError::invalid(format!(
                "unknown command {other:?} (expected incr, decr, get or reset)"
            )))
        }
    };
    let key = text(&rest[0], "key")?;
    validate_key(&key)?;
    validate_op(&op)?;
    Ok(Command { key, op })
}

/// Parses one line of pipe mode (words separated by whitespace).
pub fn parse_line(line: &[u8]) -> Result<Command, ClientError> {
    let line =
        std::str::from_utf8(line).map_err(|_| ClientError::invalid("line is not valid UTF-8"))?;
    let words: Vec<OsString> = line.split_whitespace().map(OsString::from).collect();
    parse(&words)
}

fn parse_delta(s: &str) -> Result<u64, ClientError> {
    match s.parse::<u64>() {
        Ok(0) => Err(ClientError::invalid("delta must be positive, got 0")),
        Ok(d) => Ok(d),
        Err(_) => Err(ClientError::invalid(format!(
            "delta must be a positive 64-bit integer, got {s:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use counter_proto::ErrorKind;

    fn words(s: &str) -> Vec<OsString> {
        s.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(parse(&words("incr a")).unwrap().op, Op::Incr(1));
        assert_eq!(parse(&words("incr a 5")).unwrap().op, Op::Incr(5));
        assert_eq!(parse(&words("decr a 7")).unwrap().op, Op::Decr(7));
        assert_eq!(parse(&words("get a")).unwrap().op, Op::Get);
        assert_eq!(parse(&words("reset a")).unwrap().op, Op::Reset);
        assert_eq!(
            parse(&words("incr a 18446744073709551615")).unwrap().op,
            Op::Incr(u64::MAX)
        );
    }

    #[test]
    fn bad_input_is_invalid() {
        for bad in [
            "",
            "incr",
            "incr a 0",
            "incr a -1",
            "incr a x",
            "incr a 1 2",
            "get",
            "get a b",
            "frob a",
            "incr a 18446744073709551616",
        ] {
            let err = parse_line(bad.as_bytes()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Invalid, "{bad:?}");
        }
        let long = format!("incr {}", "k".repeat(1025));
        assert!(parse_line(long.as_bytes()).is_err());
        assert!(parse_line(format!("incr {}", "k".repeat(1024)).as_bytes()).is_ok());
        assert!(parse_line(b"incr \xff\xfe").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let key = OsString::from_vec(vec![0xff, 0xfe]);
            let err = parse(&[OsString::from("incr"), key]).unwrap_err();
            assert!(err.message.contains("UTF-8"));
        }
    }
}
