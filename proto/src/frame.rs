//! Every message on a connection ([`Msg`]), the [`Frame`] that pairs it with a request id, and
//! their byte encoding (postcard), led by the protocol version.

use crate::{
    Ballot, Change, ClientError, ClusterStatus, Command, Config, DataState, NodeId, NodeStatus,
    Register, ShardId,
};
use serde::{Deserialize, Serialize};

/// Version of the wire protocol. Bumped on any incompatible change of [`Msg`].
pub const PROTOCOL_VERSION: u16 = 7;

/// Largest frame body accepted or produced, in bytes. A frame is at most one key (1 KiB), a
/// register and a little framing; 64 KiB leaves room while bounding what a peer can make us buffer.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

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
    /// Coordinator to acceptor: a round's phase 1 or 2, or a quiet read's question.
    Acceptor(AcceptorMsg),
    /// The acceptor promised `ballot`; it carries what it had accepted.
    Promise {
        ballot: Ballot,
        accepted: Option<(Ballot, Register)>,
    },
    /// The acceptor accepted `ballot`, and promised `next` if it says so.
    Accepted {
        ballot: Ballot,
        next: Option<Ballot>,
    },
    /// The acceptor refused `ballot` because it has promised `promised` (>= ballot).
    Reject { ballot: Ballot, promised: Ballot },
    /// Answer to [`AcceptorMsg::Read`]: the durably accepted ballot and value, if any.
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
    ///
    /// [`identity`]: crate::identity
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
        /// The configuration version it comes from.
        config: u64,
        /// Every member (id, address).
        nodes: Vec<(NodeId, String)>,
        /// `shards[s]`: the nodes holding shard `s` (both sets while it moves).
        shards: Vec<Vec<NodeId>>,
    },
    /// Client to router: how is the cluster? (`counter-cli cluster status`; see [`status`]).
    ///
    /// [`status`]: crate::status
    Status,
    /// Answer to `Status`: every member's report or the error reaching it, and which shards
    /// can be served.
    ClusterStatus(ClusterStatus),
    /// Router to node: report yourself (the node asks its peers first, briefly).
    NodeStatus,
    /// Answer to `NodeStatus`.
    NodeStatusReply(NodeStatus),
    /// An acceptor's refusal: the message's configuration is older than the acceptor's, which
    /// it carries; the coordinator installs it and retries under it.
    StaleConfig(Box<Config>),
    /// An acceptor's refusal: the message's configuration is newer than the acceptor's
    /// (version `have`); the coordinator sends it (`InstallConfig`) and retries.
    NeedConfig { have: u64 },
    /// Anyone to a node: which configuration do you hold?
    GetConfig,
    /// Answer to `GetConfig`: the newest agreed configuration the node holds.
    ConfigIs(Box<Config>),
    /// Install this agreed configuration if it is newer than yours (persisted before the
    /// answer).
    InstallConfig(Box<Config>),
    /// Answer to `InstallConfig`: the version the node holds now.
    ConfigInstalled { version: u64 },
    /// Phase 1 on the configuration register (see [`Config`]).
    ConfigPrepare { ballot: Ballot },
    /// The acceptor promised `ballot`; what it had accepted on the configuration register.
    ConfigPromise {
        ballot: Ballot,
        accepted: Option<(Ballot, Box<Config>)>,
    },
    /// Phase 2 on the configuration register; answered `Accepted` (with no `next`) or `Reject`.
    ConfigAccept { ballot: Ballot, config: Box<Config> },
    /// Mover to a replica of `shard`: up to `limit` keys of the shard after `after`, in
    /// order. Refused (`StaleConfig`/`NeedConfig`) unless the node runs version `config`.
    ListKeys {
        shard: ShardId,
        after: Option<String>,
        limit: u32,
        config: u64,
    },
    /// Answer to `ListKeys`: the keys, and whether the shard has no more after them.
    Keys { keys: Vec<String>, done: bool },
    /// Client to router or node: change the membership (`counter-cli cluster add-node` ...).
    /// Answered `AdminDone` when the change is complete, or `Error`.
    Admin(Change),
    /// Answer to `Admin`: what was done, one line.
    AdminDone(String),
    /// Coordinator to acceptor: up to [`MAX_BATCH`] acceptor messages (of any keys) in one
    /// frame, each with its own request id (the batch's own frame id is 0 and answered by
    /// nothing). The acceptor runs them together (one task, so their writes meet in one group
    /// commit) and answers each on its own, in a frame with its id, exactly as if it had come
    /// alone: a key's round is decided as before, and a reply never outgrows a frame. Only
    /// acceptor messages can be written into a batch ([`AcceptorMsg`]): a batch cannot hold a
    /// batch, so decoding never recurses. Sent by `counter-net`'s connections whenever two or
    /// more acceptor messages wait to be written at once (protocol version 5 on).
    Batch(Vec<BatchItem>),
}

/// Most messages in one [`Msg::Batch`]; a larger batch is a bad frame.
pub const MAX_BATCH: usize = 256;

/// One message of a [`Msg::Batch`] and the request id its answer carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItem {
    pub id: u64,
    pub msg: AcceptorMsg,
}

/// What a coordinator asks of an acceptor ([`Msg::Acceptor`]); a [`Msg::Batch`] carries only
/// these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AcceptorMsg {
    /// Phase 1 of a round.
    Prepare {
        shard: ShardId,
        key: String,
        ballot: Ballot,
        /// The configuration version the coordinator runs (see [`Config`]).
        config: u64,
    },
    /// Phase 2 of a round. `next`, if above `ballot`, is also promised by an acceptor that
    /// accepts: phase 1 of the coordinator's next round on the key, piggybacked, so that in
    /// steady state a change takes one round trip.
    Accept {
        shard: ShardId,
        key: String,
        ballot: Ballot,
        register: Register,
        next: Option<Ballot>,
        config: u64,
    },
    /// A read's first try: report what is durably accepted, change nothing, write nothing.
    Read {
        shard: ShardId,
        key: String,
        config: u64,
    },
    /// Promise `ballot` to every key of the shard at once: raise the shard's floor to it
    /// (`counter-core`'s `floor` module). Answered with [`Msg::Promise`] (nothing accepted)
    /// or [`Msg::Reject`] (the floor is already at or above it). Protocol version 7 on.
    PromiseFloor {
        shard: ShardId,
        ballot: Ballot,
        config: u64,
    },
    /// Phase 1 of a round at the shard's floor `ballot`: the promise a Prepare would get, read
    /// without a write ([`Msg::Promise`] or [`Msg::Reject`]). Protocol version 7 on.
    ReadAtFloor {
        shard: ShardId,
        key: String,
        ballot: Ballot,
        config: u64,
    },
}

impl AcceptorMsg {
    /// The shard, the key (none for a message to the whole shard) and the configuration
    /// version the message is sent under.
    pub fn target(&self) -> (ShardId, Option<&str>, u64) {
        match self {
            AcceptorMsg::Prepare {
                shard, key, config, ..
            }
            | AcceptorMsg::Accept {
                shard, key, config, ..
            }
            | AcceptorMsg::Read { shard, key, config }
            | AcceptorMsg::ReadAtFloor {
                shard, key, config, ..
            } => (*shard, Some(key), *config),
            AcceptorMsg::PromiseFloor { shard, config, .. } => (*shard, None, *config),
        }
    }

    /// The message's name, for logs and error texts.
    pub fn name(&self) -> &'static str {
        match self {
            AcceptorMsg::Prepare { .. } => "Prepare",
            AcceptorMsg::Accept { .. } => "Accept",
            AcceptorMsg::Read { .. } => "Read",
            AcceptorMsg::PromiseFloor { .. } => "PromiseFloor",
            AcceptorMsg::ReadAtFloor { .. } => "ReadAtFloor",
        }
    }
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
    crate::append_postcard(&PROTOCOL_VERSION, out)?;
    crate::append_postcard(frame, out)?;
    let len = out.len() - start;
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

#[cfg(test)]
mod tests;
