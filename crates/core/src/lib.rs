//! The safety rules of the counter store: per-key single-slot Paxos (CASPaxos style).
//!
//! Pure: no I/O, no clocks, no randomness. The node drives these state machines and does the
//! persisting and sending; the simulator and the model checker drive the very same types.
//!
//! # Layout
//!
//! - [`acceptor`]: what an acceptor does with a Prepare or an Accept (and what it must persist
//!   before it may reply).
//! - [`proposer`]: one round of a coordinator, as a state machine fed with replies.
//! - [`change`]: the change functions (incr, decr, reset, set, cas, read; bounds; exactly-once
//!   request ids) applied to a register.
//! - [`ballot`]: choosing the next ballot.
//! - [`floor`]: a shard's floor, one promise for every key of a shard: a key's first round
//!   under it reads in phase 1 instead of writing.
//! - [`read`]: answering a read in one round trip when a majority agree.
//! - [`quorum`]: who must answer: a majority of a key's replicas, or of both sets during a move.

pub mod acceptor;
pub mod ballot;
pub mod change;
pub mod decider;
pub mod floor;
pub mod membership;
pub mod proposer;
pub mod quorum;
pub mod read;
pub mod record;

pub use acceptor::{AcceptorReply, AcceptorState};
pub use ballot::next_ballot;
pub use change::{apply, apply_all, Ctx, Limits};
pub use counter_proto::{Ballot, Command, NodeId, Op, Outcome, Register};
pub use decider::{Action, Decider, Failure};
pub use floor::{promise_floor, FloorLease, FloorPolicy, FloorSlot, FloorUse};
pub use proposer::{next_proposal, Round, Step, Warm};
pub use quorum::Quorum;
pub use read::{QuietRead, ReadStep};
