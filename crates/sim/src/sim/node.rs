//! What a node does with a message, as `counter-node` does: its intake check, the fence every
//! acceptor request passes, the acceptor rules (persisting before replying), and the
//! coordinator's batches driven through `counter-core`'s `Decider` and `QuietRead`, under the
//! configuration the node runs; planted bugs ([`Mutation`]) change it here.

use super::membership::{quorum, shard_of, Refusal};
use super::{Event, Failed, Lead, Payload, Queued, Sim, Waiter, CLIENT_BASE};
use crate::Mutation;
use counter_core::{AcceptorReply, AcceptorState, Action, Decider, Failure, QuietRead, ReadStep};
use counter_proto::{Ballot, Command, NodeId, Op};

impl Sim {
    /// Runs `f` on the lead of `key` at `node` if it is still the one the timer was for.
    pub(super) fn with_lead<T>(
        &mut self,
        node: NodeId,
        key: &str,
        gen: u64,
        f: impl FnOnce(&mut Lead) -> T,
    ) -> Option<T> {
        let n = self.nodes.get_mut(&node)?;
        if !n.up {
            return None;
        }
        let lead = n.leads.get_mut(key)?;
        if lead.gen != gen {
            return None;
        }
        Some(f(lead))
    }

    pub(super) fn deliver(&mut self, from: NodeId, to: NodeId, payload: Payload) {
        if to >= CLIENT_BASE {
            if let Payload::Response {
                client,
                req,
                result,
            } = payload
            {
                self.client_answer(client, req, result);
            }
            return;
        }
        if !self.nodes[&to].up {
            return;
        }
        match payload {
            // Each message of a batch is handled as if it had come alone, in order.
            Payload::Batch(items) => {
                for payload in items {
                    self.deliver(from, to, payload);
                }
            }
            Payload::Request {
                client,
                req,
                key,
                mut cmd,
            } => {
                if self.cfg.mutation == Mutation::ForgetRequestIds {
                    cmd.request = None;
                }
                let waiter = Waiter::Client(client, req);
                if self.cfg.mutation == Mutation::ReadOneReplica && cmd.op == Op::Get {
                    let v = self.nodes[&to]
                        .volatile
                        .get(&key)
                        .and_then(|s| s.accepted.as_ref())
                        .map(|(_, r)| r.value)
                        .unwrap_or(0);
                    self.respond(to, waiter, Ok(v));
                    return;
                }
                // The node's intake check of the request id, by its own clock: `expired`
                // (node.rs).
                if counter_core::change::check_request(&cmd, &self.ctx(to)).is_err() {
                    self.respond(to, waiter, Err(Failed::Expired));
                    return;
                }
                // Only a member coordinates (node.rs: `NOT_A_MEMBER`).
                if !self.nodes[&to].config.is_member(to) {
                    self.respond(to, waiter, Err(Failed::NotAMember));
                    return;
                }
                self.enqueue(to, key, waiter, cmd, false);
            }
            Payload::Prepare {
                key,
                ballot,
                version,
                gen,
            } => {
                if let Some(why) = self.fence(to, shard_of(&self.cfg, &key), version) {
                    self.send(to, from, Payload::Refused { key, gen, why });
                    return;
                }
                let floor = self.promised_floor(to, shard_of(&self.cfg, &key));
                let reply = self.acceptor(to, &key, |s| s.prepare_over(ballot, floor), true);
                self.send(to, from, Payload::Reply { key, reply });
            }
            Payload::Accept {
                key,
                ballot,
                register,
                next,
                version,
                gen,
            } => {
                if let Some(why) = self.fence(to, shard_of(&self.cfg, &key), version) {
                    self.send(to, from, Payload::Refused { key, gen, why });
                    return;
                }
                let floor = self.promised_floor(to, shard_of(&self.cfg, &key));
                let rule = |s: &AcceptorState| s.accept_over(ballot, register, next, floor);
                let reply = self.acceptor(to, &key, rule, false);
                self.send(to, from, Payload::Reply { key, reply });
            }
            Payload::ReadAtFloor {
                key,
                ballot,
                version,
                gen,
            } => {
                let shard = shard_of(&self.cfg, &key);
                if let Some(why) = self.fence(to, shard, version) {
                    self.send(to, from, Payload::Refused { key, gen, why });
                    return;
                }
                let floor = self.floor_of(to, shard);
                let rule = |s: &AcceptorState| (None, s.read_at_floor(ballot, floor));
                let reply = self.acceptor(to, &key, rule, false);
                self.send(to, from, Payload::Reply { key, reply });
            }
            Payload::PromiseFloor {
                shard,
                ballot,
                version,
                gen,
            } => self.on_promise_floor(to, from, shard, ballot, version, gen),
            Payload::FloorReply { shard, gen, reply } => {
                self.on_floor_reply(to, from, shard, gen, reply)
            }
            Payload::Reply { key, reply } => {
                let action = self
                    .nodes
                    .get_mut(&to)
                    .and_then(|n| n.leads.get_mut(&key))
                    .and_then(|l| l.decider.on_reply(from, reply));
                if let Some(action) = action {
                    self.act(to, &key, action);
                }
            }
            Payload::Read {
                key,
                version,
                gen,
                read,
            } => {
                if let Some(why) = self.fence(to, shard_of(&self.cfg, &key), version) {
                    self.send(to, from, Payload::Refused { key, gen, why });
                    return;
                }
                let accepted = self.nodes[&to]
                    .durable
                    .get(&key)
                    .and_then(|s| s.accepted.as_ref())
                    .map(|(b, r)| (*b, r.value));
                self.send(
                    to,
                    from,
                    Payload::ReadReply {
                        key,
                        accepted,
                        read,
                    },
                );
            }
            Payload::ReadReply {
                key,
                accepted,
                read,
            } => self.on_read_reply(to, from, &key, accepted, read),
            Payload::Refused { key, gen, why } => self.on_refused(to, from, &key, gen, why),
            Payload::Response { .. } => {}
            Payload::InstallConfig(_)
            | Payload::ConfigInstalled { .. }
            | Payload::GetConfig
            | Payload::ConfigIs(_)
            | Payload::ListKeys { .. }
            | Payload::Keys { .. }
            | Payload::ListRefused { .. } => self.deliver_membership(from, to, payload),
        }
    }

    /// A refusal of a round's or a quiet read's request (the coordinator's `refused`): a newer
    /// configuration is installed and ends the round's phase at once (what it sent stays in
    /// doubt; the retry runs under the new quorum); a replica behind is sent ours.
    fn on_refused(&mut self, node: NodeId, from: NodeId, key: &str, gen: u64, why: Refusal) {
        match why {
            Refusal::Stale(config) => {
                self.install(node, &config);
                // Only a round's phase ends: a quiet read just does not count the reply.
                let action = self
                    .nodes
                    .get_mut(&node)
                    .and_then(|n| n.leads.get_mut(key))
                    .filter(|l| l.gen == gen && l.quiet.is_none())
                    .and_then(|l| l.decider.on_phase_timeout());
                if let Some(action) = action {
                    self.act(node, key, action);
                }
            }
            Refusal::Behind => {
                let config = self.nodes[&node].config.clone();
                self.send(node, from, Payload::InstallConfig(Box::new(config)));
            }
            Refusal::NotHeld => {}
        }
    }

    /// Queues `cmd` on `key` at coordinator `node`, starting a lead if none runs.
    pub(super) fn enqueue(
        &mut self,
        node: NodeId,
        key: String,
        waiter: Waiter,
        cmd: Command,
        write_back: bool,
    ) {
        let n = self.nodes.get_mut(&node).expect("node");
        n.queues.entry(key.clone()).or_default().push(Queued {
            waiter,
            cmd,
            write_back,
        });
        if !n.leads.contains_key(&key) {
            self.start_lead(node, &key);
        }
    }

    /// Applies an acceptor rule at `node`, persisting the change before the reply (unless the
    /// `PromiseNotPersisted` bug is planted and this is a promise).
    fn acceptor(
        &mut self,
        node: NodeId,
        key: &str,
        rule: impl FnOnce(&AcceptorState) -> (Option<AcceptorState>, AcceptorReply),
        is_prepare: bool,
    ) -> AcceptorReply {
        let planted = self.cfg.mutation == Mutation::PromiseNotPersisted;
        let n = self.nodes.get_mut(&node).expect("node");
        let current = n.volatile.get(key).cloned().unwrap_or_default();
        let (next, reply) = rule(&current);
        if let Some(state) = next {
            match &state.accepted {
                // The planted bug forgets promises: a Prepare's, and the one an Accept carries.
                _ if planted && is_prepare => {}
                Some((ballot, _)) if planted => {
                    let forgetful = AcceptorState {
                        promised: *ballot,
                        ..state.clone()
                    };
                    n.durable.insert(key.to_string(), forgetful);
                }
                _ => {
                    n.durable.insert(key.to_string(), state.clone());
                }
            }
            n.volatile.insert(key.to_string(), state);
        }
        reply
    }

    fn start_lead(&mut self, node: NodeId, key: &str) {
        let deadline = self.now + self.cfg.coordinator_deadline;
        let ctx = self.ctx(node);
        let shard = shard_of(&self.cfg, key);
        let mutation = self.cfg.mutation;
        let n = self.nodes.get_mut(&node).expect("node");
        let Some(mut queue) = n.queues.remove(key).filter(|q| !q.is_empty()) else {
            return;
        };
        // The node's batching: at most as many request clients as a register keeps.
        let len = counter_core::change::batch_len(queue.iter().map(|q| q.cmd), &ctx.limits);
        let rest = queue.split_off(len);
        let batch = queue;
        if !rest.is_empty() {
            n.queues.insert(key.to_string(), rest);
        }
        // Its acceptor's floor of the shard is a promise of the key too.
        let floor = n.floors.get(&shard).copied().unwrap_or(Ballot::ZERO);
        let own = n.volatile.get(key).map_or(Ballot::ZERO, |s| s.highest());
        let seen = own.max(floor);
        // The key's replicas under the configuration the node runs now.
        let version = n.config.version;
        let (targets, counted) = quorum(&n.config, shard, mutation);
        let ops = batch.iter().map(|q| q.cmd).collect();
        let decider = Decider::new(node, n.epoch, counted.clone(), ops, seen, ctx);
        let reads = batch.iter().all(|q| q.cmd.op.is_read() && !q.write_back);
        let mut lead = Lead {
            decider,
            quiet: None,
            waiters: batch.into_iter().map(|q| q.waiter).collect(),
            deadline,
            gen: 0,
            read: 0,
            shard,
            version,
            targets: targets.members().to_vec(),
            at_floor: None,
        };
        if reads {
            lead.quiet = Some(QuietRead::new(counted));
            self.phases += 1;
            lead.read = self.phases;
            lead.gen = self.phases;
            let read = lead.read;
            self.nodes
                .get_mut(&node)
                .expect("node")
                .leads
                .insert(key.to_string(), lead);
            let payload = Payload::Read {
                key: key.into(),
                version,
                gen: read,
                read,
            };
            self.start_phase(node, key, read, payload);
            return;
        }
        // A prepared round is used only under the configuration it was prepared under, and not
        // below the acceptor's floor (it would be refused).
        let warm = match n.warm.remove(key) {
            Some((at, warm)) if at == version && warm.ballot >= floor => Some(warm),
            _ => None,
        };
        let action = match warm {
            Some(warm) => lead.decider.start_warm(warm),
            None => match self.floor_for(node, key, shard, version, own, lead.decider.ops()) {
                Some(floor) => lead.decider.start_at_floor(floor),
                None => lead.decider.start_round(),
            },
        };
        match action {
            Action::Accept(..) => self.stats.warm_rounds += 1,
            Action::ReadAtFloor(floor) => {
                self.stats.floor_rounds += 1;
                lead.at_floor = Some(floor);
            }
            _ => {}
        }
        let n = self.nodes.get_mut(&node).expect("node");
        n.leads.insert(key.to_string(), lead);
        self.act(node, key, action);
    }

    /// Feeds an acceptor's report to a quiet read: answers the batch, or goes to a full round.
    fn on_read_reply(
        &mut self,
        node: NodeId,
        from: NodeId,
        key: &str,
        accepted: Option<(Ballot, i64)>,
        read: u64,
    ) {
        let any_reply = self.cfg.mutation == Mutation::QuietReadAnyReply;
        let Some(lead) = self.nodes.get_mut(&node).and_then(|n| n.leads.get_mut(key)) else {
            return;
        };
        if lead.read != read {
            // An answer to an earlier read of the key: its call is gone.
            return;
        }
        let Some(quiet) = lead.quiet.as_mut() else {
            return;
        };
        let step = match quiet.on_reply(from, accepted) {
            ReadStep::Pending if any_reply => ReadStep::Value(accepted.map_or(0, |(_, v)| v)),
            step => step,
        };
        match step {
            ReadStep::Pending => {}
            ReadStep::Value(v) => {
                let lead = self.finish_lead(node, key);
                for waiter in lead.waiters {
                    self.respond(node, waiter, Ok(v));
                }
            }
            ReadStep::Disagree => {
                lead.quiet = None;
                let action = self.start_round(node, key);
                self.act(node, key, action);
            }
        }
    }

    /// Starts a round of the lead of `key` at `node` (between rounds), under the configuration
    /// the node runs now: a newer one than the lead's changes the quorum (the coordinator's
    /// `set_quorum` before a retry).
    pub(super) fn start_round(&mut self, node: NodeId, key: &str) -> Action {
        let mutation = self.cfg.mutation;
        let n = self.nodes.get_mut(&node).expect("node");
        let lead = n.leads.get_mut(key).expect("a live lead");
        if lead.version != n.config.version {
            let (targets, counted) = quorum(&n.config, lead.shard, mutation);
            lead.version = n.config.version;
            lead.targets = targets.members().to_vec();
            lead.decider.set_quorum(counted);
        }
        lead.decider.start_round()
    }

    pub(super) fn act(&mut self, node: NodeId, key: &str, action: Action) {
        // Every phase is named uniquely in the run, so that a late refusal or timer of an
        // earlier lead's phase never acts on a later lead's (in the node each is tied to its
        // own call or future).
        self.phases += 1;
        let (gen, version) = {
            let lead = self
                .nodes
                .get_mut(&node)
                .and_then(|n| n.leads.get_mut(key))
                .expect("acting on a live lead");
            lead.gen = self.phases;
            (lead.gen, lead.version)
        };
        match action {
            Action::Prepare(ballot) => {
                let payload = Payload::Prepare {
                    key: key.into(),
                    ballot,
                    version,
                    gen,
                };
                self.start_phase(node, key, gen, payload);
            }
            Action::ReadAtFloor(ballot) => {
                let payload = Payload::ReadAtFloor {
                    key: key.into(),
                    ballot,
                    version,
                    gen,
                };
                self.start_phase(node, key, gen, payload);
            }
            Action::Accept(ballot, register, next) => {
                let payload = Payload::Accept {
                    key: key.into(),
                    ballot,
                    register,
                    next,
                    version,
                    gen,
                };
                self.start_phase(node, key, gen, payload);
            }
            Action::Retry { attempt } => {
                let floor = self
                    .nodes
                    .get_mut(&node)
                    .and_then(|n| n.leads.get_mut(key))
                    .and_then(|l| l.at_floor.take());
                if let Some(floor) = floor {
                    let shard = shard_of(&self.cfg, key);
                    self.floor_round_ended(node, shard, floor, false);
                }
                let cap = (2u64 << attempt.min(6)).min(100);
                let wait = self.rng.range(1, cap);
                self.schedule(
                    wait,
                    Event::Retry {
                        node,
                        key: key.into(),
                        gen,
                    },
                );
            }
            Action::Done(results) => {
                self.stats.chosen_values += 1;
                let n = self.nodes.get_mut(&node).expect("node");
                let mut held = None;
                if let Some(lead) = n.leads.get(key) {
                    if let Some(warm) = lead.decider.warm() {
                        n.warm.insert(key.to_string(), (lead.version, warm));
                    }
                    held = lead.at_floor.map(|f| (lead.shard, f));
                }
                if let Some((shard, floor)) = held {
                    self.floor_round_ended(node, shard, floor, true);
                }
                let lead = self.finish_lead(node, key);
                for (waiter, outcome) in lead.waiters.into_iter().zip(results) {
                    // What the node answers (node.rs, outcome_msg): expired is its own kind.
                    let result = match outcome {
                        counter_proto::Outcome::Value(v) => Ok(v),
                        counter_proto::Outcome::Expired
                            if self.cfg.mutation == Mutation::ExpiredMeansNotApplied =>
                        {
                            Err(Failed::NotApplied)
                        }
                        counter_proto::Outcome::Expired => Err(Failed::Expired),
                        _ => Err(Failed::NotApplied),
                    };
                    self.respond(node, waiter, result);
                }
            }
            Action::Failed(f) => {
                let kind = match f {
                    Failure::NotApplied(_) => Failed::NotApplied,
                    Failure::Ambiguous(_) => Failed::Ambiguous,
                };
                let lead = self.finish_lead(node, key);
                if kind == Failed::Ambiguous && self.cfg.mutation == Mutation::RetryAmbiguous {
                    // Planted bug: put the ops back in the queue as if nothing had happened.
                    let ops = lead.decider.ops().to_vec();
                    let n = self.nodes.get_mut(&node).expect("node");
                    let q = n.queues.entry(key.to_string()).or_default();
                    for (waiter, cmd) in lead.waiters.into_iter().zip(ops) {
                        let write_back = matches!(waiter, Waiter::Mover { .. });
                        q.insert(
                            0,
                            Queued {
                                waiter,
                                cmd,
                                write_back,
                            },
                        );
                    }
                } else {
                    for waiter in lead.waiters {
                        self.respond(node, waiter, Err(kind));
                    }
                }
            }
        }
    }

    /// Answers a client's request, or tells the mover how its identity round ended.
    fn respond(&mut self, node: NodeId, waiter: Waiter, result: Result<i64, Failed>) {
        match waiter {
            Waiter::Client(client, req) => {
                let payload = Payload::Response {
                    client,
                    req,
                    result,
                };
                self.send(node, CLIENT_BASE + client as NodeId, payload);
            }
            Waiter::Mover { run, key } => {
                let ok = result.is_ok();
                self.schedule(0, Event::IdentityDone { run, key, ok });
            }
        }
    }

    /// Sends a phase's request to every replica of the round and arms the phase's timeout.
    fn start_phase(&mut self, node: NodeId, key: &str, gen: u64, payload: Payload) {
        let targets = self.nodes[&node].leads[key].targets.clone();
        for to in targets {
            self.send(node, to, payload.clone());
        }
        let t = self.cfg.phase_timeout;
        let key = key.to_string();
        self.schedule(t, Event::PhaseTimeout { node, key, gen });
    }

    /// Removes the finished lead and starts the next batch of the key, if any.
    fn finish_lead(&mut self, node: NodeId, key: &str) -> Lead {
        let lead = self
            .nodes
            .get_mut(&node)
            .and_then(|n| n.leads.remove(key))
            .expect("finishing a live lead");
        if self.nodes[&node]
            .queues
            .get(key)
            .is_some_and(|q| !q.is_empty())
        {
            self.start_lead(node, key);
        }
        lead
    }
}
