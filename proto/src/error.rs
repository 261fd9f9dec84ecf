//! What a client is told when an operation did not succeed.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a client can be told when an operation did not succeed (docs/ARCHITECTURE.md, "Errors and exit statuses").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Bad input: never applied.
    Invalid,
    /// Definitely not applied: no quorum reachable before anything was sent.
    Unavailable,
    /// Sent, then timed out or lost: it may have been applied.
    Unknown,
    /// Refused by a condition of the command (a bound): nothing changed.
    Rejected,
    /// The request's session ended (or the request is older than what its key remembers): not
    /// applied by this attempt, but an earlier attempt may have been (or still be, if queued at
    /// a coordinator whose clock is behind), so its outcome, and that of every unanswered
    /// earlier request of the session, is unknown. Open a new session for new requests.
    Expired,
}

impl ErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Unknown => "unknown",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Expired => "expired",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error returned to a client, with a human message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ClientError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ClientError {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn unknown(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unknown, message)
    }
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Rejected, message)
    }
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Expired, message)
    }

    /// How this answer reads when an earlier attempt of the same request may have been
    /// applied: `unavailable` speaks for this attempt only, so it is `unknown` (for the router
    /// and the CLI, which retry). `None`: the answer stands (`expired` already says that the
    /// outcome is unknown).
    pub fn after_earlier_attempt(&self) -> Option<ClientError> {
        (self.kind == ErrorKind::Unavailable).then(|| {
            ClientError::unknown(format!(
                "an earlier attempt may have been applied; this one: {}: {}",
                self.kind, self.message
            ))
        })
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ClientError {}

/// Part of the message a node that is not a member (removed, or not added yet) answers a
/// command with: it applied nothing, so a client or router may try another node.
pub const NOT_A_MEMBER: &str = "is not a member of the cluster";

/// Part of the message a server answers a request with when it read the request after its
/// drain began (SIGTERM): it ran nothing of it, so the request may go to another server.
/// `counter-net`'s client turns this answer into "not sent" and drops the connection.
pub const DRAINING: &str = "is shutting down (draining) and ran nothing of this request";

/// Like [`DRAINING`], for a connection the server closes while the rest of it serves (idle too
/// long, or shed to make room for another): it ran nothing of the request.
pub const CLOSING: &str = "is closing this connection (idle) and ran nothing of this request";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_applied_now_is_unknown_after_an_earlier_attempt() {
        assert_eq!(
            ClientError::unavailable("no quorum")
                .after_earlier_attempt()
                .unwrap()
                .kind,
            ErrorKind::Unknown
        );
        assert_eq!(
            ClientError::expired("session").after_earlier_attempt(),
            None
        );
        assert_eq!(
            ClientError::invalid("empty key").after_earlier_attempt(),
            None
        );
        assert_eq!(
            ClientError::rejected("below-min").after_earlier_attempt(),
            None
        );
    }
}
