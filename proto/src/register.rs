//! The values the Paxos core reasons about: ballots, the replicated register of a key with its
//! clients' last requests, and the commands applied to it. They live here because they cross
//! the wire (and the register is also the disk format); `counter-core` builds its rules on them.

use crate::NodeId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A Paxos ballot. Ordered lexicographically by `(round, node, epoch)`.
///
/// `round` carries the ordering; `node` makes ballots of different coordinators distinct;
/// `epoch` is the coordinator's incarnation (a counter its node bumps and syncs at every start),
/// so that a coordinator restarted without memory of the rounds it used never issues the same
/// ballot twice, whatever its acceptor had persisted. `Ballot::ZERO` is below every real ballot.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    pub round: u64,
    pub node: NodeId,
    pub epoch: u32,
}

impl Ballot {
    /// Below every ballot a coordinator can issue (real rounds start at 1).
    pub const ZERO: Ballot = Ballot {
        round: 0,
        node: 0,
        epoch: 0,
    };
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.round, self.node, self.epoch)
    }
}

/// The replicated register of one key. Every round rewrites it whole.
///
/// Besides the counter it carries what makes retries safe: per client session, the highest
/// request sequence applied and its outcome ([`ClientEntry`]), and the `floor` and `horizon`
/// below which requests of sessions no longer listed are refused as expired (`counter-core`'s
/// `change` module has the rules and the size bound).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Register {
    /// The counter's value.
    pub value: i64,
    /// Number of changes applied since the key was created. Two registers with the same version
    /// accepted under the same ballot are the same register.
    pub version: u64,
    /// Recent clients' last applied request, sorted by client id, at most the configured bound.
    pub clients: Vec<ClientEntry>,
    /// Highest sequence number of any dropped entry of a request id without a session
    /// (`expires_ms == 0`, `--request-id CLIENT:SEQ`): such a request of a client not listed
    /// with a sequence at or below it may have been applied already.
    pub horizon: u64,
    /// Latest session expiry (`RequestId::expires_ms`) of any dropped session entry: a request
    /// of a session not listed that expires at or before it may have been applied already.
    pub floor: u64,
}

impl Register {
    /// A register holding `value` at `version`, with no client entries.
    pub fn new(value: i64, version: u64) -> Register {
        Register {
            value,
            version,
            ..Register::default()
        }
    }
}

/// Identifies one mutating request of one client session: retries carry the same id.
///
/// A session is `(client, expires_ms)`: `client` random (64 bits) for each session, and
/// `expires_ms` the end of the session's life by a server's clock, handed out by a router or
/// node ([`Msg::OpenSession`]) so that the client's own clock never matters. A session sends
/// one request at a time, numbered 1, 2, 3, ... (`seq`), and no new request after it expired.
/// `expires_ms == 0` is a request id without a session (`--request-id CLIENT:SEQ`): its `seq`
/// must be time-like (microseconds since the Unix epoch).
///
/// [`Msg::OpenSession`]: crate::Msg::OpenSession
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct RequestId {
    /// Random for each session (or given by `--request-id`).
    pub client: u64,
    /// Increases with every new request of the session (or client, without a session).
    pub seq: u64,
    /// When the session ends, in milliseconds since the Unix epoch by the clock of the server
    /// that opened it; 0: no session.
    pub expires_ms: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.expires_ms {
            0 => write!(f, "{}:{}", self.client, self.seq),
            e => write!(
                f,
                "{}:{} (session expiring at {e} ms)",
                self.client, self.seq
            ),
        }
    }
}

/// A client session's last applied request on one key, kept in the [`Register`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientEntry {
    pub client: u64,
    pub seq: u64,
    /// What the request was answered: a replay gets it again.
    pub outcome: Outcome,
    /// When the entry may be dropped (ms since the Unix epoch): the session's expiry, or for a
    /// request id without a session, the applying coordinator's clock plus the idle bound.
    pub expires_ms: u64,
    /// The request id had no session (`expires_ms == 0` in the request): dropping the entry
    /// raises the register's `horizon` instead of its `floor`.
    pub sessionless: bool,
}

/// What one command yielded. Kept in the register for replays, so it is part of the wire and
/// disk formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied (or read): the counter's value afterwards.
    Value(i64),
    /// A compare-and-set: the value held afterwards, and whether it swapped.
    Cas { value: i64, swapped: bool },
    /// Refused, nothing changed: the result would not fit in an i64.
    Overflow { value: i64 },
    /// Refused, nothing changed: the result `would` be below `min`.
    BelowMin { value: i64, would: i64, min: i64 },
    /// Refused, nothing changed: the result `would` be above `max`.
    AboveMax { value: i64, would: i64, max: i64 },
    /// Not applied by this attempt: the request is older than what the register remembers of
    /// its session, or of another session, or its session ended. An earlier attempt may have
    /// applied it (or, still queued at a coordinator whose clock is behind, may yet), so its
    /// outcome is unknown. Never stored.
    Expired,
}

/// A client's operation on one counter.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Op {
    Incr(u64),
    Decr(u64),
    #[default]
    Get,
    Reset,
    /// Sets the value.
    Set(i64),
    /// Sets the value to `new` if it is `expected`.
    Cas {
        expected: i64,
        new: i64,
    },
}

impl Op {
    /// True for operations that never change the register.
    pub fn is_read(&self) -> bool {
        matches!(self, Op::Get)
    }

    /// The operation's name as the CLI spells it (`incr`, `get`, ...), for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Incr(_) => "incr",
            Op::Decr(_) => "decr",
            Op::Get => "get",
            Op::Reset => "reset",
            Op::Set(_) => "set",
            Op::Cas { .. } => "cas",
        }
    }
}

/// An operation with its conditions and its request id: what a coordinator applies.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Command {
    pub op: Op,
    /// Refuse (nothing changes) if the result would be below this.
    pub min: Option<i64>,
    /// Refuse (nothing changes) if the result would be above this.
    pub max: Option<i64>,
    /// Makes retries of a mutating command safe: applied at most once per key.
    pub request: Option<RequestId>,
}

impl From<Op> for Command {
    fn from(op: Op) -> Command {
        Command {
            op,
            ..Command::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_node_then_epoch() {
        let b = |round, node, epoch| Ballot { round, node, epoch };
        assert!(b(2, 1, 1) > b(1, 9, 9));
        assert!(b(1, 2, 0) > b(1, 1, 9));
        assert!(b(1, 1, 2) > b(1, 1, 1));
        assert!(b(1, 1, 1) > Ballot::ZERO);
    }
}
