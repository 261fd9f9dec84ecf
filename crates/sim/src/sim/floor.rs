//! Shard floors (`counter_core::floor`) as `counter-node` runs them: the acceptor's durable
//! floor per shard, and the coordinator's lease of one (raised when a key without a prepared
//! round finds none, given up after a run of refused rounds, raised again when full).

use super::membership::quorum;
use super::{Event, Payload, Sim};
use crate::Mutation;
use counter_core::{next_ballot, promise_floor, AcceptorReply, FloorLease, Round, Step};
use counter_proto::{Ballot, Command, NodeId};

/// Rounds at a floor refused in a row after which the lease is given up (the node's
/// `FLOOR_MISSES`, smaller here).
const FLOOR_MISSES: u32 = 4;

/// Where a coordinator stands with a shard's floor (the node's `FloorSlot`).
pub(super) enum SimFloor {
    /// Raise `gen` in flight, counted by `round`, under configuration `version`.
    Raising {
        round: Box<Round>,
        gen: u64,
        version: u64,
    },
    Leased {
        lease: FloorLease,
        misses: u32,
    },
    Idle {
        retry_at: u64,
        above: Ballot,
    },
}

impl Sim {
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
    /// raise when the shard has none usable.
    pub(super) fn floor_for(
        &mut self,
        node: NodeId,
        key: &str,
        shard: u32,
        version: u64,
        seen: Ballot,
        ops: &[Command],
    ) -> Option<Ballot> {
        if !ops.iter().all(counter_core::change::is_retry_safe) {
            return None;
        }
        let now = self.now;
        let n = self.nodes.get_mut(&node).expect("node");
        let slot = n.leases.entry(shard).or_insert(SimFloor::Idle {
            retry_at: now,
            above: Ballot::ZERO,
        });
        let above = match slot {
            SimFloor::Leased { lease, .. } if lease.version() == version && !lease.is_full() => {
                if seen > lease.ballot() {
                    return None;
                }
                return lease.take(key, version);
            }
            SimFloor::Leased { lease, .. } => lease.ballot(),
            SimFloor::Raising { .. } => return None,
            SimFloor::Idle { retry_at, .. } if now < *retry_at => return None,
            SimFloor::Idle { above, .. } => *above,
        };
        self.raise_floor(node, shard, above);
        None
    }

    /// Sends PromiseFloor to the shard's replicas, above `above` and the node's own floor.
    fn raise_floor(&mut self, node: NodeId, shard: u32, above: Ballot) {
        self.phases += 1;
        let gen = self.phases;
        let own = self.floor_of(node, shard);
        let n = self.nodes.get_mut(&node).expect("node");
        let ballot = next_ballot(node, n.epoch, own.max(above));
        let version = n.config.version;
        let (targets, counted) = quorum(&n.config, shard, self.cfg.mutation);
        n.leases.insert(
            shard,
            SimFloor::Raising {
                round: Box::new(Round::new(ballot, counted)),
                gen,
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
        let floor_keys = self.cfg.floor_keys;
        let retry = self.now + self.cfg.floor_retry;
        let Some(n) = self.nodes.get_mut(&node).filter(|n| n.up) else {
            return;
        };
        let Some(SimFloor::Raising {
            round,
            gen: raising,
            version,
        }) = n.leases.get_mut(&shard)
        else {
            return;
        };
        if *raising != gen {
            return;
        }
        let step = match reply {
            AcceptorReply::Promise { ballot, accepted } => round.on_promise(from, ballot, accepted),
            AcceptorReply::Reject { ballot, promised } => round.on_reject(from, ballot, promised),
            AcceptorReply::Accepted { .. } => Step::Pending,
        };
        let slot = match step {
            Step::Promised { .. } => SimFloor::Leased {
                lease: FloorLease::new(round.ballot(), *version, floor_keys),
                misses: 0,
            },
            Step::Preempted { seen } => SimFloor::Idle {
                retry_at: retry,
                above: seen,
            },
            _ => return,
        };
        if matches!(slot, SimFloor::Leased { .. }) {
            self.stats.floors_leased += 1;
        }
        n.leases.insert(shard, slot);
    }

    pub(super) fn floor_timeout(&mut self, node: NodeId, shard: u32, gen: u64) {
        let retry = self.now + self.cfg.floor_retry;
        let Some(n) = self.nodes.get_mut(&node) else {
            return;
        };
        if let Some(SimFloor::Raising {
            round,
            gen: raising,
            ..
        }) = n.leases.get(&shard)
        {
            if *raising == gen {
                let above = round.seen();
                n.leases.insert(
                    shard,
                    SimFloor::Idle {
                        retry_at: retry,
                        above,
                    },
                );
            }
        }
    }

    /// A round at `floor` was decided without a retry.
    pub(super) fn floor_held(&mut self, node: NodeId, shard: u32, floor: Ballot) {
        let n = self.nodes.get_mut(&node).expect("node");
        if let Some(SimFloor::Leased { lease, misses }) = n.leases.get_mut(&shard) {
            if lease.ballot() == floor {
                *misses = 0;
            }
        }
    }

    /// A round at `floor` failed: after [`FLOOR_MISSES`] in a row the lease is given up.
    pub(super) fn floor_missed(&mut self, node: NodeId, shard: u32, floor: Ballot) {
        let retry = self.now + self.cfg.floor_retry;
        let n = self.nodes.get_mut(&node).expect("node");
        if let Some(SimFloor::Leased { lease, misses }) = n.leases.get_mut(&shard) {
            if lease.ballot() == floor {
                *misses += 1;
                if *misses >= FLOOR_MISSES {
                    n.leases.insert(
                        shard,
                        SimFloor::Idle {
                            retry_at: retry,
                            above: floor,
                        },
                    );
                }
            }
        }
    }
}
