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
//! - The modules, everything in them re-exported here (`counter_proto::X` names it): `register`
//!   (the values above, [`RequestId`], [`Command`], [`Outcome`]), `error` ([`ErrorKind`],
//!   [`ClientError`]), `frame` ([`Msg`], [`Frame`], encoding, [`PROTOCOL_VERSION`],
//!   [`MAX_FRAME_LEN`]; its `tests` pin the wire's golden bytes), `validate` (input checks,
//!   [`unix_ms`]), [`identity`] and [`status`].
//!
//! Framing (the length prefix) belongs to `counter-net`; [`MAX_FRAME_LEN`] is the one limit both
//! sides agree on.

mod append;
mod config;
mod error;
mod frame;
mod register;
mod validate;

pub mod identity;
pub mod status;

pub use append::append_postcard;
pub use config::{Change, Config, Dedup, ShardSet, BOOTSTRAP_CONFIG_VERSION};
pub use error::{ClientError, ErrorKind, CLOSING, DRAINING, NOT_A_MEMBER};
pub use frame::{
    decode_frame, encode_frame, AcceptorMsg, BatchItem, DecodeError, EncodeError, Frame, Msg,
    MAX_BATCH, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
pub use identity::DataState;
pub use register::{Ballot, ClientEntry, Command, Op, Outcome, Register, RequestId};
pub use status::{ClusterStatus, MemberStatus, NodeStatus, RescanReport, ShardMove};
pub use validate::{
    max_request_seq, unix_ms, validate_command, validate_key, validate_register, MAX_KEY_LEN,
};

/// Identifies a storage node in the cluster file.
pub type NodeId = u32;

/// Index of a shard: `shard = stable_hash(key) % shards`.
pub type ShardId = u32;
