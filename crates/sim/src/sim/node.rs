//! What a node does with a message, as `counter-node` does: its intake check, the acceptor
//! rules (persisting before replying), and the coordinator's batches driven through
//! `counter-core`'s `Decider` and `QuietRead`; planted bugs ([`Mutation`]) change it here.

use super::{Event, Failed, Lead, Payload, Sim, CLIENT_BASE};
use crate::Mutation;
use counter_core::{AcceptorReply, AcceptorState, Action, Decider, Failure, QuietRead, ReadStep};
use counter_proto::{Ballot, NodeId, Op};

impl Sim {
    /// Runs `f` on the lead of `key` at `node` if it is still the one the timer was for.
    pub(super) fn with_lead(
        &mut self,
        node: NodeId,
        key: &str,
        gen: u64,
        f: impl FnOnce(&mut Lead) -> Option<Action>,
    ) -> Option<Action> {
        let n = self.nodes.get_mut(&node)?;
        if !n.up {
            return None;
        }
        let lead = n.leads.get_mut(key)?;
        if lead.gen != gen {
            return None;
        }
        f(lead)
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
            Payload::Request {
                client,
                req,
                key,
                mut cmd,
            } => {
                if self.cfg.mutation == Mutation::ForgetRequestIds {
                    cmd.request = None;
                }
                if self.cfg.mutation == Mutation::ReadOneReplica && cmd.op == Op::Get {
                    let v = self.nodes[&to]
                        .volatile
                        .get(&key)
                        .and_then(|s| s.accepted.as_ref())
                        .map(|(_, r)| r.value)
                        .unwrap_or(0);
                    self.respond(to, client, req, Ok(v));
                    return;
                }
                // The node's intake check of the request id, by its own clock: `expired`
                // (node.rs).
                if counter_core::change::check_request(&cmd, &self.ctx(to)).is_err() {
                    self.respond(to, client, req, Err(Failed::Expired));
                    return;
                }
                let node = self.nodes.get_mut(&to).expect("node");
                node.queues
                    .entry(key.clone())
                    .or_default()
                    .push((client, req, cmd));
                if !node.leads.contains_key(&key) {
                    self.start_lead(to, &key);
                }
            }
            Payload::Prepare { key, ballot } => {
                let reply = self.acceptor(to, &key, |s| s.prepare(ballot), true);
                self.send(to, from, Payload::Reply { key, reply });
            }
            Payload::Accept {
                key,
                ballot,
                register,
                next,
            } => {
                let reply = self.acceptor(to, &key, |s| s.accept(ballot, register, next), false);
                self.send(to, from, Payload::Reply { key, reply });
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
            Payload::Read { key } => {
                let accepted = self.nodes[&to]
                    .durable
                    .get(&key)
                    .and_then(|s| s.accepted.as_ref())
                    .map(|(b, r)| (*b, r.value));
                self.send(to, from, Payload::ReadReply { key, accepted });
            }
            Payload::ReadReply { key, accepted } => self.on_read_reply(to, from, &key, accepted),
            Payload::Response { .. } => {}
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
        let replicas = self.replicas();
        let deadline = self.now + self.cfg.coordinator_deadline;
        let ctx = self.ctx(node);
        let n = self.nodes.get_mut(&node).expect("node");
        let Some(mut queue) = n.queues.remove(key).filter(|q| !q.is_empty()) else {
            return;
        };
        // The node's batching: at most as many request clients as a register keeps.
        let len = counter_core::change::batch_len(queue.iter().map(|q| q.2), &ctx.limits);
        let rest = queue.split_off(len);
        let batch = queue;
        if !rest.is_empty() {
            n.queues.insert(key.to_string(), rest);
        }
        let seen = n
            .volatile
            .get(key)
            .map(|s| s.highest())
            .unwrap_or(Ballot::ZERO);
        let ops = batch.iter().map(|&(_, _, op)| op).collect();
        let decider = Decider::new(node, n.epoch, &replicas, ops, seen, ctx);
        let reads = batch.iter().all(|(_, _, cmd)| cmd.op.is_read());
        let mut lead = Lead {
            decider,
            quiet: None,
            waiters: batch.iter().map(|&(c, r, _)| (c, r)).collect(),
            deadline,
            gen: 0,
        };
        if reads {
            lead.quiet = Some(QuietRead::new(&replicas));
            lead.gen = 1;
            n.leads.insert(key.to_string(), lead);
            let payload = Payload::Read { key: key.into() };
            self.start_phase(node, key, 1, payload);
            return;
        }
        let action = match n.warm.remove(key) {
            Some(warm) => lead.decider.start_warm(warm),
            None => lead.decider.start_round(),
        };
        if matches!(action, Action::Accept(..)) {
            self.stats.warm_rounds += 1;
        }
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
    ) {
        let any_reply = self.cfg.mutation == Mutation::QuietReadAnyReply;
        let Some(lead) = self.nodes.get_mut(&node).and_then(|n| n.leads.get_mut(key)) else {
            return;
        };
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
                for (client, req) in lead.waiters {
                    self.respond(node, client, req, Ok(v));
                }
            }
            ReadStep::Disagree => {
                lead.quiet = None;
                let action = lead.decider.start_round();
                self.act(node, key, action);
            }
        }
    }

    pub(super) fn act(&mut self, node: NodeId, key: &str, action: Action) {
        let gen = {
            let lead = self
                .nodes
                .get_mut(&node)
                .and_then(|n| n.leads.get_mut(key))
                .expect("acting on a live lead");
            lead.gen += 1;
            lead.gen
        };
        match action {
            Action::Prepare(ballot) => {
                let payload = Payload::Prepare {
                    key: key.into(),
                    ballot,
                };
                self.start_phase(node, key, gen, payload);
            }
            Action::Accept(ballot, register, next) => {
                let payload = Payload::Accept {
                    key: key.into(),
                    ballot,
                    register,
                    next,
                };
                self.start_phase(node, key, gen, payload);
            }
            Action::Retry { attempt } => {
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
                if let Some(warm) = n.leads.get(key).and_then(|l| l.decider.warm()) {
                    n.warm.insert(key.to_string(), warm);
                }
                let lead = self.finish_lead(node, key);
                for (&(client, req), outcome) in lead.waiters.iter().zip(results) {
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
                    self.respond(node, client, req, result);
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
                    for (&(c, r), op) in lead.waiters.iter().zip(ops) {
                        q.insert(0, (c, r, op));
                    }
                } else {
                    for &(client, req) in &lead.waiters {
                        self.respond(node, client, req, Err(kind));
                    }
                }
            }
        }
    }

    /// Answers a client's request.
    fn respond(&mut self, node: NodeId, client: usize, req: u64, result: Result<i64, Failed>) {
        let payload = Payload::Response {
            client,
            req,
            result,
        };
        self.send(node, CLIENT_BASE + client as NodeId, payload);
    }

    /// Sends a phase's request to every replica and arms the phase's timeout.
    fn start_phase(&mut self, node: NodeId, key: &str, gen: u64, payload: Payload) {
        for to in self.replicas() {
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
