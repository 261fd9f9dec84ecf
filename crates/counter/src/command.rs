//! The CLI's commands (docs/CLI.md: the v1 contract and its additions):
//!
//! ```text
//! incr KEY [DELTA] [--min M] [--max M]     decr KEY [DELTA] [--min M] [--max M]
//! get KEY     reset KEY     set KEY VALUE     cas KEY EXPECTED NEW
//! ```

use counter_proto::{validate_command, validate_key, ClientError, Command, Op, RequestId};
use std::ffi::OsString;

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub key: String,
    pub command: Command,
}

const EXPECTED: &str = "expected incr, decr, get, reset, set or cas";

/// Parses a command from its words (as they came: a key may not be UTF-8).
pub fn parse(words: &[OsString]) -> Result<Parsed, ClientError> {
    let text = |w: &OsString, what: &str| {
        w.to_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::invalid(format!("{what} is not valid UTF-8")))
    };
    let Some((name, rest)) = words.split_first() else {
        return Err(ClientError::invalid(format!("empty command ({EXPECTED})")));
    };
    let name = text(name, "command")?;
    let usage = |u: &str| ClientError::invalid(format!("usage: {u}"));
    // Bounds (--min M, --max M) may come anywhere after the command's name.
    let mut args = Vec::with_capacity(rest.len());
    let (mut min, mut max) = (None, None);
    let mut words = rest.iter();
    while let Some(w) = words.next() {
        let flag = match w.to_str() {
            Some(f @ ("--min" | "--max")) => f,
            _ => {
                args.push(w);
                continue;
            }
        };
        let value = words
            .next()
            .ok_or_else(|| ClientError::invalid(format!("{flag} needs a value")))?;
        let bound = Some(parse_int(&text(value, flag)?, flag)?);
        if flag == "--min" {
            min = bound;
        } else {
            max = bound;
        }
    }
    let bounded = matches!(name.as_str(), "incr" | "decr");
    if !bounded && (min.is_some() || max.is_some()) {
        return Err(ClientError::invalid(format!(
            "{name} takes no --min or --max (incr and decr do)"
        )));
    }
    let op = match name.as_str() {
        "incr" | "decr" => {
            let u = format!("{name} KEY [DELTA] [--min M] [--max M]");
            let delta = match args.len() {
                1 => 1,
                2 => parse_delta(&text(args[1], "delta")?)?,
                _ => return Err(usage(&u)),
            };
            if name == "incr" {
                Op::Incr(delta)
            } else {
                Op::Decr(delta)
            }
        }
        "get" | "reset" => {
            if args.len() != 1 {
                return Err(usage(&format!("{name} KEY")));
            }
            if name == "get" {
                Op::Get
            } else {
                Op::Reset
            }
        }
        "set" => match args.as_slice() {
            [_, value] => Op::Set(parse_int(&text(value, "value")?, "value")?),
            _ => return Err(usage("set KEY VALUE")),
        },
        "cas" => match args.as_slice() {
            [_, expected, new] => Op::Cas {
                expected: parse_int(&text(expected, "expected value")?, "expected value")?,
                new: parse_int(&text(new, "new value")?, "new value")?,
            },
            _ => return Err(usage("cas KEY EXPECTED NEW")),
        },
        other => {
            return Err(ClientError::invalid(format!(
                "unknown command {other:?} ({EXPECTED})"
            )))
        }
    };
    let key = text(args[0], "key")?;
    validate_key(&key)?;
    let command = Command {
        op,
        min,
        max,
        request: None,
    };
    validate_command(&command)?;
    Ok(Parsed { key, command })
}

/// Parses `--request-id CLIENT:SEQ` (two unsigned 64-bit integers).
pub fn parse_request_id(s: &str) -> Result<RequestId, ClientError> {
    let bad = || {
        ClientError::invalid(format!(
            "request id must be CLIENT:SEQ (unsigned 64-bit integers), got {s:?}"
        ))
    };
    let (client, seq) = s.split_once(':').ok_or_else(bad)?;
    Ok(RequestId {
        client: client.parse().map_err(|_| bad())?,
        seq: seq.parse().map_err(|_| bad())?,
        expires_ms: 0,
    })
}

/// Parses one line of pipe mode (words separated by whitespace).
pub fn parse_line(line: &[u8]) -> Result<Parsed, ClientError> {
    let line =
        std::str::from_utf8(line).map_err(|_| ClientError::invalid("line is not valid UTF-8"))?;
    let words: Vec<OsString> = line.split_whitespace().map(OsString::from).collect();
    parse(&words)
}

fn parse_int(s: &str, what: &str) -> Result<i64, ClientError> {
    s.parse::<i64>().map_err(|_| {
        ClientError::invalid(format!("{what} must be a signed 64-bit integer, got {s:?}"))
    })
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

    fn op(s: &str) -> Op {
        parse(&words(s)).unwrap().command.op
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(op("incr a"), Op::Incr(1));
        assert_eq!(op("incr a 5"), Op::Incr(5));
        assert_eq!(op("decr a 7"), Op::Decr(7));
        assert_eq!(op("get a"), Op::Get);
        assert_eq!(op("reset a"), Op::Reset);
        assert_eq!(op("incr a 18446744073709551615"), Op::Incr(u64::MAX));
        assert_eq!(op("set a -5"), Op::Set(-5));
        assert_eq!(
            op("cas a -1 7"),
            Op::Cas {
                expected: -1,
                new: 7
            }
        );
    }

    #[test]
    fn bounds_go_anywhere_after_the_name() {
        let p = parse(&words("decr a 5 --min 0")).unwrap();
        assert_eq!(
            (p.command.op, p.command.min, p.command.max),
            (Op::Decr(5), Some(0), None)
        );
        let p = parse(&words("incr --max -3 a")).unwrap();
        assert_eq!((p.key.as_str(), p.command.max), ("a", Some(-3)));
        let p = parse(&words("incr a --min -10 --max 10")).unwrap();
        assert_eq!((p.command.min, p.command.max), (Some(-10), Some(10)));
    }

    #[test]
    fn request_ids() {
        assert_eq!(
            parse_request_id("7:42").unwrap(),
            RequestId {
                client: 7,
                seq: 42,
                expires_ms: 0
            }
        );
        for bad in ["", "7", "7:", ":1", "a:1", "1:-2", "1:2:3"] {
            assert!(parse_request_id(bad).is_err(), "{bad:?}");
        }
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
            "incr a --min",
            "incr a --max x",
            "incr a --min 5 --max 4",
            "get a --min 0",
            "reset a --max 1",
            "set a",
            "set a 1.5",
            "set a 9223372036854775808",
            "cas a 1",
            "cas a 1 2 3",
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
