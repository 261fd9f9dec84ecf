//! Checks of what arrives from the network or the command line, and the clock they (and
//! sessions) go by.

use crate::{ClientError, Command, Op, Register};

/// Longest key, in bytes of UTF-8 (docs/CLI.md).
pub const MAX_KEY_LEN: usize = 1024;

/// Checks a key against docs/CLI.md's rule: 1..=1024 bytes of UTF-8 (UTF-8 is the type's own promise).
pub fn validate_key(key: &str) -> Result<(), ClientError> {
    if key.is_empty() {
        return Err(ClientError::invalid("empty key"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ClientError::invalid(format!(
            "key of {} bytes is longer than {MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch by this machine's clock (0 if it is before the epoch):
/// ends sessions and ages entries, never decides whether a request is applied twice.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Largest request sequence number a node takes, relative to its clock: a day ahead of
/// microseconds since the Unix epoch. A sequence far ahead would, once its client's entry is
/// dropped, raise a key's expiry horizon past every other client's requests.
pub fn max_request_seq() -> u64 {
    unix_ms()
        .saturating_mul(1000)
        .saturating_add(86_400 * 1_000_000)
}

/// Checks a register from the network: client entries strictly sorted by id, at most
/// `max_clients` of them (the change rules rely on both).
pub fn validate_register(register: &Register, max_clients: usize) -> Result<(), ClientError> {
    if register.clients.len() > max_clients {
        return Err(ClientError::invalid(format!(
            "register with {} client entries (at most {max_clients})",
            register.clients.len()
        )));
    }
    if register
        .clients
        .windows(2)
        .any(|w| w[0].client >= w[1].client)
    {
        return Err(ClientError::invalid(
            "register client entries are not strictly sorted by client id",
        ));
    }
    Ok(())
}

/// Checks a command's arguments: deltas are positive, bounds are ordered, reads have no
/// conditions, request sequences are positive and not far ahead of this clock.
pub fn validate_command(command: &Command) -> Result<(), ClientError> {
    if let Some(id) = command.request {
        if id.seq == 0 {
            return Err(ClientError::invalid("request sequence numbers start at 1"));
        }
        // `unavailable`, not `invalid`: a retry through a node whose clock is a little behind
        // the one that took the first attempt must not read as "never applied".
        if id.expires_ms == 0 && id.seq > max_request_seq() {
            return Err(ClientError::unavailable(format!(
                "request sequence {} is more than a day ahead of this node's clock \
                 (use microseconds since the Unix epoch)",
                id.seq
            )));
        }
    }
    match command.op {
        Op::Incr(0) | Op::Decr(0) => return Err(ClientError::invalid("delta must be positive")),
        Op::Get if command.min.is_some() || command.max.is_some() => {
            return Err(ClientError::invalid("get takes no --min or --max"))
        }
        _ => {}
    }
    if let (Some(min), Some(max)) = (command.min, command.max) {
        if min > max {
            return Err(ClientError::invalid(format!(
                "--min {min} is above --max {max}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientEntry, Outcome, RequestId};

    #[test]
    fn key_rules() {
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(validate_command(&Op::Incr(0).into()).is_err());
        assert!(validate_command(&Op::Decr(1).into()).is_ok());
        let bounded = |min, max| Command {
            op: Op::Decr(1),
            min,
            max,
            request: None,
        };
        assert!(validate_command(&bounded(Some(0), Some(10))).is_ok());
        assert!(validate_command(&bounded(Some(10), Some(0))).is_err());
        let read = Command {
            op: Op::Get,
            min: Some(0),
            ..Command::default()
        };
        assert!(validate_command(&read).is_err());
        let with_seq = |seq| Command {
            op: Op::Incr(1),
            request: Some(RequestId {
                client: 1,
                seq,
                expires_ms: 0,
            }),
            ..Command::default()
        };
        assert!(validate_command(&with_seq(0)).is_err());
        assert!(validate_command(&with_seq(u64::MAX)).is_err());
        assert!(validate_command(&with_seq(1)).is_ok());
        // A time-like sequence (microseconds now) is taken; a day and a minute ahead is not.
        let now_us = unix_ms() * 1000;
        assert!(validate_command(&with_seq(now_us)).is_ok());
        let ahead = validate_command(&with_seq(now_us + 86_460 * 1_000_000)).unwrap_err();
        // A retry through a node whose clock is behind must not read as "never applied".
        assert_eq!(ahead.kind, crate::ErrorKind::Unavailable);
        let entry = |client| ClientEntry {
            client,
            seq: 1,
            outcome: Outcome::Value(1),
            expires_ms: 0,
            sessionless: false,
        };
        let reg = |clients| Register {
            clients,
            ..Register::default()
        };
        assert!(validate_register(&reg(vec![entry(1), entry(2)]), 2).is_ok());
        assert!(validate_register(&reg(vec![entry(2), entry(1)]), 2).is_err());
        assert!(validate_register(&reg(vec![entry(1), entry(1)]), 2).is_err());
        assert!(validate_register(&reg(vec![entry(1), entry(2), entry(3)]), 2).is_err());
    }
}
