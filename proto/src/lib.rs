//! Wire messages of the counter store.
//!
//! # Layout
//!
//! - [`Ballot`], [`Register`], [`Op`]: the values the Paxos core reasons about; they live here
//!   because they cross the wire, and `counter-core` builds its rules on them.
//! - [`Msg`]: every message on a connection, requests and replies alike, each carried in a
//!   [`Frame`] with a request id so that many requests share one connection.
//! - [`encode_frame`] / [`decode_frame`]: the byte encoding (postcard), led by the protocol
//!   version so that an unknown version is recognised before anything else is parsed.
//!
//! Framing (the length prefix) belongs to `counter-net`; [`MAX_FRAME_LEN`] is the one limit both
//! sides agree on.

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod identity;
pub mod status;
pub use identity::{DataState, BOOTSTRAP_CONFIG_VERSION};
pub use status::{ClusterStatus, MemberStatus, NodeStatus, ShardMove};

/// Version of the wire protocol. Bumped on any incompatible change of [`Msg`].
pub const PROTOCOL_VERSION: u16 = 3;

/// Largest frame body accepted or produced, in bytes. A frame is at most one key (1 KiB), a
/// register and a little framing; 64 KiB leaves room while bounding what a peer can make us buffer.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Longest key, in bytes of UTF-8 (docs/CLI.md).
pub const MAX_KEY_LEN: usize = 1024;

/// Identifies a storage node in the cluster file.
pub type NodeId = u32;

/// Index of a shard: `shard = stable_hash(key) % shards`.
pub type ShardId = u32;

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

impl RequestId {
    /// The next request of `client` after sequence `last`: the microseconds since the Unix
    /// epoch, or `last + 1` if the clock has not moved past `last` (strictly increasing).
    pub fn next(client: u64, last: u64) -> RequestId {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        RequestId {
            client,
            seq: now.max(last.saturating_add(1)),
            expires_ms: 0,
        }
    }
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
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ClientError {}

/// Every message exchanged on a connection. Requests and their replies share one enum so that
/// one codec serves clients, routers and nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Client (or router) asks for `command` on `key`; `timeout_ms` is the caller's remaining
    /// budget.
    Command {
        key: String,
        command: Command,
        timeout_ms: u32,
    },
    /// Answer to `Command`: the counter's value after the operation.
    Value(i64),
    /// Answer to a compare-and-set: the value held afterwards and whether it swapped.
    Swapped { value: i64, swapped: bool },
    /// Answer to `Command` when it did not succeed.
    Error(ClientError),
    /// Phase 1 of a round, coordinator to acceptor.
    Prepare {
        shard: ShardId,
        key: String,
        ballot: Ballot,
    },
    /// The acceptor promised `ballot`; it carries what it had accepted.
    Promise {
        ballot: Ballot,
        accepted: Option<(Ballot, Register)>,
    },
    /// Phase 2 of a round, coordinator to acceptor. `next`, if above `ballot`, is also
    /// promised by an acceptor that accepts: phase 1 of the coordinator's next round on the
    /// key, piggybacked, so that in steady state a change takes one round trip.
    Accept {
        shard: ShardId,
        key: String,
        ballot: Ballot,
        register: Register,
        next: Option<Ballot>,
    },
    /// The acceptor accepted `ballot`, and promised `next` if it says so.
    Accepted {
        ballot: Ballot,
        next: Option<Ballot>,
    },
    /// The acceptor refused `ballot` because it has promised `promised` (>= ballot).
    Reject { ballot: Ballot, promised: Ballot },
    /// A read's first try, coordinator to acceptor: report what is durably accepted, change
    /// nothing, write nothing.
    Read { shard: ShardId, key: String },
    /// Answer to `Read`: the durably accepted ballot and value, if any.
    ReadReply { accepted: Option<(Ballot, i64)> },
    /// Client to router or node: start a session, asking for `lifetime_ms` (0: the longest).
    /// The server grants between 4 × the clock skew allowed and `dedup_idle_secs`.
    OpenSession { lifetime_ms: u64 },
    /// Answer to `OpenSession`: when the session ends, by the server's clock (ms since the Unix
    /// epoch), and how long after receiving this the client stops sending new requests in it
    /// (by its own monotonic clock: the client's wall clock never matters).
    Session {
        expires_ms: u64,
        renew_after_ms: u64,
    },
    /// A node asks another who it is and what its data dir holds (before creating an empty
    /// data dir: see [`identity`]). A node of an older build refuses the frame (another
    /// protocol version), which the asker counts as no answer.
    Identify,
    /// Answer to `Identify`: the cluster the node's data dir belongs to (for an empty data
    /// dir: the one its cluster file describes), its id, the configuration version it runs
    /// and how far its data dir is.
    Identity {
        cluster_id: u64,
        node: NodeId,
        config_version: u64,
        state: DataState,
    },
    /// A client asks a router (or node) where keys live, to send commands straight to a
    /// replica of each key (`counter-client`'s direct mode).
    GetPlacement,
    /// Answer to `GetPlacement`: the cluster's shards, replication and members (id, address);
    /// placement is computed from them exactly as the router does.
    Placement {
        shards: u32,
        replication: u32,
        nodes: Vec<(NodeId, String)>,
    },
    /// Client to router: how is the cluster? (`counter-cli cluster status`; see [`status`]).
    Status,
    /// Answer to `Status`: every member's report or the error reaching it, and which shards
    /// can be served.
    ClusterStatus(ClusterStatus),
    /// Router to node: report yourself (the node asks its peers first, briefly).
    NodeStatus,
    /// Answer to `NodeStatus`.
    NodeStatusReply(NodeStatus),
}

/// One message with the id that pairs a reply with its request (0 for connection-level errors).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub id: u64,
    pub msg: Msg,
}

/// Why bytes could not be turned into a [`Frame`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnknownVersion(u16),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge(usize),
}

/// Why a [`Frame`] could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge(usize),
    #[error("encoding failed: {0}")]
    Postcard(#[from] postcard::Error),
}

/// Appends the encoding of `frame` (version, then the frame) to `out`.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let mut buf = std::mem::take(out);
    buf = postcard::to_extend(&PROTOCOL_VERSION, buf)?;
    buf = postcard::to_extend(frame, buf)?;
    let len = buf.len() - start;
    *out = buf;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLarge(len));
    }
    Ok(())
}

/// Decodes one frame body. Never panics, whatever the bytes.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, DecodeError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let (version, rest) = postcard::take_from_bytes::<u16>(bytes)
        .map_err(|e| DecodeError::Malformed(format!("no protocol version: {e}")))?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (frame, rest) = postcard::take_from_bytes::<Frame>(rest)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(frame)
}

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

impl ClientError {
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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    now.saturating_add(86_400 * 1_000_000)
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

    fn sample() -> Frame {
        Frame {
            id: 42,
            msg: Msg::Accept {
                shard: 7,
                key: "page_views".into(),
                ballot: Ballot {
                    round: 3,
                    node: 2,
                    epoch: 1,
                },
                register: Register {
                    value: -5,
                    version: 9,
                    clients: vec![ClientEntry {
                        client: 7,
                        seq: 11,
                        outcome: Outcome::BelowMin {
                            value: 1,
                            would: -1,
                            min: 0,
                        },
                        expires_ms: 1_700_000_000_000,
                        sessionless: false,
                    }],
                    horizon: 3,
                    floor: 1_600_000_000_000,
                },
                next: Some(Ballot {
                    round: 4,
                    node: 2,
                    epoch: 1,
                }),
            },
        }
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encode_frame(&sample(), &mut buf).unwrap();
        assert_eq!(decode_frame(&buf).unwrap(), sample());
    }

    #[test]
    fn identity_messages_are_appended_and_round_trip() {
        for msg in [
            Msg::Identify,
            Msg::Identity {
                cluster_id: u64::MAX - 3,
                node: 2,
                config_version: 1,
                state: DataState::Created,
            },
        ] {
            let frame = Frame { id: 9, msg };
            let mut buf = Vec::new();
            encode_frame(&frame, &mut buf).unwrap();
            assert_eq!(decode_frame(&buf).unwrap(), frame);
        }
        // Variant indexes are the encoding: the old ones must not move (postcard: version,
        // frame id, then the variant index as a varint).
        let index = |msg: Msg| {
            let mut buf = Vec::new();
            encode_frame(&Frame { id: 1, msg }, &mut buf).unwrap();
            buf[2]
        };
        assert_eq!(
            index(Msg::Read {
                shard: 0,
                key: "k".into()
            }),
            9
        );
        assert_eq!(index(Msg::ReadReply { accepted: None }), 10);
        assert_eq!(index(Msg::Identify), 13);
        // The status messages come after every older variant.
        assert_eq!(index(Msg::GetPlacement), 15);
        assert_eq!(index(Msg::Status), 17);
        assert_eq!(index(Msg::NodeStatusReply(sample_node_status())), 20);
    }

    /// One message of every variant, with its exact bytes: reordering a variant or a field,
    /// or changing a type, must not silently change the wire. A deliberate change updates
    /// these bytes and bumps [`PROTOCOL_VERSION`].
    fn golden() -> Vec<(Msg, &'static str)> {
        let b = Ballot {
            round: 300,
            node: 2,
            epoch: 1,
        };
        let register = Register {
            value: -5,
            version: 9,
            clients: vec![ClientEntry {
                client: 7,
                seq: 11,
                outcome: Outcome::Cas {
                    value: 1,
                    swapped: true,
                },
                expires_ms: 1_000,
                sessionless: false,
            }],
            horizon: 3,
            floor: 4,
        };
        vec![
            (
                Msg::Command {
                    key: "k".into(),
                    command: Command {
                        op: Op::Decr(2),
                        min: Some(-1),
                        max: None,
                        request: Some(RequestId {
                            client: 5,
                            seq: 6,
                            expires_ms: 200,
                        }),
                    },
                    timeout_ms: 1_000,
                },
                "030100016b0102010100010506c801e807",
            ),
            (Msg::Value(-2), "03010103"),
            (
                Msg::Swapped {
                    value: 3,
                    swapped: true,
                },
                "0301020601",
            ),
            (Msg::Error(ClientError::expired("x")), "030103040178"),
            (
                Msg::Prepare {
                    shard: 7,
                    key: "k".into(),
                    ballot: b,
                },
                "03010407016bac020201",
            ),
            (
                Msg::Promise {
                    ballot: b,
                    accepted: Some((b, register.clone())),
                },
                "030105ac02020101ac020201090901070b010201e807000304",
            ),
            (
                Msg::Accept {
                    shard: 1,
                    key: "k".into(),
                    ballot: b,
                    register: Register::new(1, 2),
                    next: Some(b),
                },
                "03010601016bac020201020200000001ac020201",
            ),
            (
                Msg::Accepted {
                    ballot: b,
                    next: None,
                },
                "030107ac02020100",
            ),
            (
                Msg::Reject {
                    ballot: b,
                    promised: b,
                },
                "030108ac020201ac020201",
            ),
            (
                Msg::Read {
                    shard: 1,
                    key: "k".into(),
                },
                "03010901016b",
            ),
            (
                Msg::ReadReply {
                    accepted: Some((b, -1)),
                },
                "03010a01ac02020101",
            ),
            (Msg::OpenSession { lifetime_ms: 1 }, "03010b01"),
            (
                Msg::Session {
                    expires_ms: 2,
                    renew_after_ms: 1,
                },
                "03010c0201",
            ),
            (Msg::Identify, "03010d"),
            (
                Msg::Identity {
                    cluster_id: 1,
                    node: 2,
                    config_version: 3,
                    state: DataState::Created,
                },
                "03010e01020301",
            ),
            (Msg::GetPlacement, "03010f"),
            (
                Msg::Placement {
                    shards: 8,
                    replication: 3,
                    nodes: vec![(1, "a:1".into())],
                },
                "0301100803010103613a31",
            ),
            (Msg::Status, "030111"),
            (
                Msg::ClusterStatus(sample_cluster_status()),
                "0301120176010305020101020203683a31000203683a31010102010304050306017602010300010303683a32010178040104010101010102010177",
            ),
            (Msg::NodeStatus, "030113"),
            (
                Msg::NodeStatusReply(sample_node_status()),
                "0301140203683a3101010201030405030601760201030001",
            ),
        ]
    }

    fn sample_node_status() -> NodeStatus {
        NodeStatus {
            node: 2,
            listen: "h:1".into(),
            cluster_id: 1,
            config_version: 1,
            state: DataState::Serving,
            epoch: Some(3),
            shards: 4,
            shards_total: 5,
            replication: 3,
            uptime_secs: 6,
            version: "v".into(),
            peers_up: vec![1, 3],
            shards_without_quorum: 0,
            ready: true,
        }
    }

    fn sample_cluster_status() -> ClusterStatus {
        ClusterStatus {
            router_version: "v".into(),
            config_version: 1,
            replication: 3,
            shards: 5,
            nodes: 2,
            nodes_reachable: 1,
            nodes_ready: 1,
            members: vec![
                MemberStatus {
                    node: 2,
                    addr: "h:1".into(),
                    status: Ok(sample_node_status()),
                },
                MemberStatus {
                    node: 3,
                    addr: "h:2".into(),
                    status: Err("x".into()),
                },
            ],
            shards_available: 4,
            unavailable_shards: vec![4],
            moves: vec![ShardMove {
                shard: 1,
                from: vec![1],
                to: vec![2],
            }],
            warnings: vec!["w".into()],
        }
    }

    #[test]
    fn golden_bytes_of_every_message() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut wrong = Vec::new();
        for (msg, expected) in golden() {
            let frame = Frame { id: 1, msg };
            let mut buf = Vec::new();
            encode_frame(&frame, &mut buf).unwrap();
            if hex(&buf) != expected {
                wrong.push(format!("{:?}: {}", frame.msg, hex(&buf)));
            }
            assert_eq!(decode_frame(&buf).unwrap(), frame);
        }
        assert!(wrong.is_empty(), "encodings changed:\n{}", wrong.join("\n"));
    }

    #[test]
    fn unknown_version_is_recognised_before_the_body() {
        let mut buf = postcard::to_stdvec(&(PROTOCOL_VERSION + 1)).unwrap();
        buf.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(
            decode_frame(&buf),
            Err(DecodeError::UnknownVersion(PROTOCOL_VERSION + 1))
        );
    }

    #[test]
    fn garbage_and_truncations_are_errors_not_panics() {
        let mut buf = Vec::new();
        encode_frame(&sample(), &mut buf).unwrap();
        for cut in 0..buf.len() {
            assert!(decode_frame(&buf[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let mut trailing = buf.clone();
        trailing.push(0);
        assert!(matches!(
            decode_frame(&trailing),
            Err(DecodeError::Malformed(_))
        ));
        assert!(decode_frame(&[0xff; 64]).is_err());
        assert!(matches!(
            decode_frame(&vec![0; MAX_FRAME_LEN + 1]),
            Err(DecodeError::TooLarge(_))
        ));
    }

    #[test]
    fn ballots_order_by_round_then_node_then_epoch() {
        let b = |round, node, epoch| Ballot { round, node, epoch };
        assert!(b(2, 1, 1) > b(1, 9, 9));
        assert!(b(1, 2, 0) > b(1, 1, 9));
        assert!(b(1, 1, 2) > b(1, 1, 1));
        assert!(b(1, 1, 1) > Ballot::ZERO);
    }

    #[test]
    fn request_ids_increase_even_when_the_clock_does_not() {
        let far = u64::MAX - 1;
        assert_eq!(RequestId::next(7, far).seq, u64::MAX);
        let a = RequestId::next(7, 0);
        let b = RequestId::next(7, a.seq);
        assert!(b.seq > a.seq && b.client == 7);
    }

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
        assert!(validate_command(&with_seq(RequestId::next(1, 0).seq)).is_ok());
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
