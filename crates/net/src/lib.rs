//! Framed TCP between clients, routers and nodes.
//!
//! # Layout
//!
//! - [`codec`]: bytes ⇄ [`Frame`]s: a 4-byte big-endian length prefix (tokio-util's
//!   `LengthDelimitedCodec`, capped at [`MAX_FRAME_LEN`]) around the versioned postcard body.
//! - [`client`]: one multiplexed connection: many requests in flight, paired with their replies
//!   by request id, each with its own timeout; writes are batched.
//! - [`pool`]: connections by address, (re)connected on demand.
//! - [`backoff`]: randomized exponential backoff for every retry loop.
//! - [`server`]: accept loop and per-connection handling; a bad frame gets an error reply and
//!   closes that connection only.
//!
//! [`Frame`]: counter_proto::Frame
//! [`MAX_FRAME_LEN`]: counter_proto::MAX_FRAME_LEN

pub mod backoff;
pub mod client;
pub mod codec;
pub mod pool;
pub mod server;

pub use backoff::backoff;
pub use client::{CallError, Conn};
pub use codec::{FrameCodec, NetError};
pub use pool::Pool;
pub use server::{serve, ServerConfig};
