//! Shard floors (`counter_core::floor`) as `counter-node` runs them: the acceptor's durable
//! floor per shard, and the coordinator's `FloorSlot` per shard (the node's state machine,
//! with the simulator's ticks as its clock and smaller limits).

use super::membership::quorum;
use super::{Event, Payload, Sim};
use crate::Mutation;
use counter_core::{next_ballot, promise_floor, AcceptorReply, FloorPolicy, FloorUse, Round, Step};
use counter_proto::{Ballot, Command, NodeId};

/// A raise of a shard's floor in flight at a coordinator: its name, its replies so far, and
/// the configuration version it runs under.
pub(super) struct Raise {
    gen: u64,
    round: Round,
    version: u64,
}

impl Sim {
    fn floor_policy(&self) -> FloorPolicy {
        FloorPolicy {
            lease_bytes: self.cfg.floor_lease_bytes,
            retry_after: self.cfg.floor_retry,
            // The node's is 16.
            max_misses: 4,
        }
    }

    /// The floor of `shard` a Prepare or an Accept at `node` is judged under (none under the
    /// planted `FloorNoPromise`).
    pub(super) fn promised_floor(&self, node: NodeId, shard: u32) -> Ballot {
        match self.cfg.mutation {
            Mutation::FloorNoPromise => Ballot::ZERO,
            _ => self.floor_of(node, shard),
        }
    }

    /// The durable floor of `shard` at `node`'s acceptor.
    pub(super) fn floor_of(&self, node: NodeId, shard: u32) -> Ballot {
        self.nodes[&node]
            .floors
            .get(&shard)
            .copied()
            .unwrap_or(Ballot::ZERO)
    }

    /// The floor a key's first round can run at (the coordinator's `at_floor`), starting a
    /// raise when the shard has none usable. `own`: the highest ballot the node's acceptor has
    /// seen for the key.
    pub(super) fn floor_for(
        &mut self,
        node: NodeId,
        key: &str,
        shard: u32,
        version: u64,
        own: Ballot,
        ops: &[Command],
    ) -> Option<Ballot> {
        if !ops.iter().all(counter_core::change::is_retry_safe) {
            return None;
        }
        let policy = self.floor_policy();
        let local_floor = self.floor_of(node, shard);
        let now = self.now;
        let n = self.nodes.get_mut(&node).expect("node");
        let slot = n.leases.entry(shard).or_default();
        match slot.use_for(key, version, own, local_floor, now, &policy) {
            FloorUse::At(floor) => Some(floor),
            FloorUse::Ordinary => None,
            FloorUse::Raise { above } => {
                self.raise_floor(node, shard, above);
                None
            }
        }
    }

    /// Sends PromiseFloor to the shard's replicas, above `above`.
    fn raise_floor(&mut self, node: NodeId, shard: u32, above: Ballot) {
        self.phases += 1;
        let gen = self.phases;
        let n = self.nodes.get_mut(&node).expect("node");
        let ballot = next_ballot(node, n.epoch, above);
        let version = n.config.version;
        let (targets, counted) = quorum(&n.config, shard, self.cfg.mutation);
        let round = Round::new(ballot, counted);
        n.raises.insert(
            shard,
            Raise {
                gen,
                round,
                version,
            },
        );
        for to in targets.members().to_vec() {
            let payload = Payload::PromiseFloor {
                shard,
                ballot,
                version,
                gen,
            };
            self.send(node, to, payload);
        }
        let t = self.cfg.phase_timeout;
        self.schedule(t, Event::FloorTimeout { node, shard, gen });
    }

    /// An acceptor's handling of PromiseFloor: fenced as any acceptor request (a refusal is
    /// not answered here: the raise just counts no reply), persisted before the reply.
    pub(super) fn on_promise_floor(
        &mut self,
        node: NodeId,
        from: NodeId,
        shard: u32,
        ballot: Ballot,
        version: u64,
        gen: u64,
    ) {
        if self.fence(node, shard, version).is_some() {
            return;
        }
        let (raised, reply) = promise_floor(self.floor_of(node, shard), ballot);
        if let Some(floor) = raised {
            let n = self.nodes.get_mut(&node).expect("node");
            n.floors.insert(shard, floor);
        }
        self.send(node, from, Payload::FloorReply { shard, gen, reply });
    }

    pub(super) fn on_floor_reply(
        &mut self,
        node: NodeId,
        from: NodeId,
        shard: u32,
        gen: u64,
        reply: AcceptorReply,
    ) {
        let Some(raise) = self
            .nodes
            .get_mut(&node)
            .filter(|n| n.up)
            .and_then(|n| n.raises.get_mut(&shard))
            .filter(|r| r.gen == gen)
        else {
            return;
        };
        let step = match reply {
            AcceptorReply::Promise { ballot, accepted } => {
                raise.round.on_promise(from, ballot, accepted)
            }
            AcceptorReply::Reject { ballot, promised } => {
                raise.round.on_reject(from, ballot, promised)
            }
            AcceptorReply::Accepted { .. } => Step::Pending,
        };
        let outcome = match step {
            Step::Promised { .. } => Ok((raise.round.ballot(), raise.version)),
            Step::Preempted { seen } => Err(seen),
            _ => return,
        };
        self.end_raise(node, shard, outcome);
    }

    pub(super) fn floor_timeout(&mut self, node: NodeId, shard: u32, gen: u64) {
        let seen = self
            .nodes
            .get(&node)
            .and_then(|n| n.raises.get(&shard))
            .filter(|r| r.gen == gen)
            .map(|r| r.round.seen());
        if let Some(seen) = seen {
            self.end_raise(node, shard, Err(seen));
        }
    }

    fn end_raise(&mut self, node: NodeId, shard: u32, outcome: Result<(Ballot, u64), Ballot>) {
        let policy = self.floor_policy();
        let now = self.now;
        if outcome.is_ok() {
            self.stats.floors_leased += 1;
        }
        let n = self.nodes.get_mut(&node).expect("node");
        n.raises.remove(&shard);
        n.leases
            .entry(shard)
            .or_default()
            .raised(outcome, now, &policy);
    }

    /// A round at `floor` ended: decided without a retry (`held`) or not.
    pub(super) fn floor_round_ended(
        &mut self,
        node: NodeId,
        shard: u32,
        floor: Ballot,
        held: bool,
    ) {
        let policy = self.floor_policy();
        let now = self.now;
        let n = self.nodes.get_mut(&node).expect("node");
        if let Some(slot) = n.leases.get_mut(&shard) {
            match held {
                true => slot.held(floor),
                false => slot.missed(floor, now, &policy),
            }
        }
    }
}
