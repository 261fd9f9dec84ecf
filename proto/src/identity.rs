//! What a node says about its data dir when another node asks who it is ([`Msg::Identify`]).
//!
//! A node about to create an empty data dir asks every other member first: if one of them has
//! served with this node as a member, this node's disk was lost or wiped, and starting it empty
//! would forget its promises and acceptances (Paxos amnesia). `counter-node`'s bootstrap check
//! (`crates/counter/src/bootstrap.rs`) has the rules.
//!
//! [`Msg::Identify`]: crate::Msg::Identify

use serde::{Deserialize, Serialize};

/// How far a node's data dir is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataState {
    /// The data dir is empty: the node has never held acceptor state.
    Empty,
    /// Created for a new cluster; the node waits for every other member to have created its
    /// data dir too, and has not served yet (it holds no promise or acceptance).
    Created,
    /// The node serves, or has served: its data dir may hold promises and acceptances.
    Serving,
    /// Created by `counter-node --join` for a node that is not a member yet: it holds no
    /// promise or acceptance, and waits for `cluster add-node` (or `replace-node`) to add it.
    Joining,
}

impl DataState {
    pub fn as_str(&self) -> &'static str {
        match self {
            DataState::Empty => "empty",
            DataState::Created => "created",
            DataState::Serving => "serving",
            DataState::Joining => "joining",
        }
    }
}

impl std::fmt::Display for DataState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
