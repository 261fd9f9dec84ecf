//! The clients: one request at a time, through a random live node (the router's job), in
//! sessions and with resends of unknown outcomes in exactly-once mode, each recorded in the
//! history that `counter-check` judges.

use super::{Event, Failed, Payload, Sim, SimSession, CLIENT_BASE};
use counter_check::{OpKind, Operation, Outcome};
use counter_proto::{Command, NodeId, Op, RequestId};

impl Sim {
    /// The request id of client `c`'s next mutating request: in its session, or in a new one
    /// (opened at a random live node, by that node's clock) once it is time to renew.
    fn next_request(&mut self, c: usize) -> RequestId {
        let now = self.now;
        // The client library's rule: a session takes a new request only if the request's
        // whole deadline ends before the session's renewal time.
        let deadline = match self.cfg.mutation {
            crate::Mutation::RenewLate => 0,
            _ => self.cfg.request_deadline,
        };
        let renew = self.clients[c]
            .session
            .is_none_or(|s| now.saturating_add(deadline) >= s.renew_at);
        if renew {
            let live: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.up)
                .map(|(&id, _)| id)
                .collect();
            let opener = if live.is_empty() {
                1
            } else {
                live[self.rng.range(0, live.len() as u64 - 1) as usize]
            };
            // The opener's answer to OpenSession (router.rs, node.rs: Limits::open_session).
            let (expires_ms, renew_after) = self.cfg.limits.open_session(self.clock(opener), 0);
            let cl = &mut self.clients[c];
            cl.sessions_opened += 1;
            cl.session = Some(SimSession {
                id: ((c as u64) << 32) | cl.sessions_opened,
                expires_ms,
                renew_at: now + renew_after,
                seq: 0,
            });
            self.stats.sessions += 1;
        }
        let s = self.clients[c].session.as_mut().expect("a session");
        s.seq += 1;
        RequestId {
            client: s.id,
            seq: s.seq,
            expires_ms: s.expires_ms,
        }
    }

    pub(super) fn client_next(&mut self, c: usize) {
        let (key, op) = if c == self.cfg.clients {
            // The last reader (`membership` setting): every key once more after the changes,
            // each until a read is answered.
            match self.final_keys.as_ref().and_then(|keys| keys.first()) {
                Some(key) => (key.clone(), Op::Get),
                None => return,
            }
        } else {
            if self.clients[c].done >= self.cfg.ops_per_client {
                return;
            }
            let key = format!("k{}", self.rng.range(0, self.cfg.keys as u64 - 1));
            let op = match self.rng.range(0, 99) {
                0..=59 => Op::Incr(self.rng.range(1, 3)),
                60..=74 => Op::Decr(1),
                75..=94 => Op::Get,
                _ => Op::Reset,
            };
            (key, op)
        };
        let req = self.clients[c].next_req;
        self.clients[c].next_req += 1;
        self.clients[c].done += 1;
        let request = (self.cfg.request_ids && !op.is_read()).then(|| self.next_request(c));
        let cmd = Command {
            op,
            request,
            ..Command::default()
        };
        let index = self.history.len();
        self.history.push(Operation {
            key: key.clone(),
            kind: match op {
                Op::Incr(d) => OpKind::Incr(d),
                Op::Decr(d) => OpKind::Decr(d),
                Op::Get => OpKind::Get,
                Op::Reset => OpKind::Reset,
                Op::Set(_) | Op::Cas { .. } => unreachable!("not generated"),
            },
            call: self.now,
            ret: u64::MAX,
            outcome: Outcome::Unknown,
            client: c as u32,
        });
        self.clients[c].pending = Some((req, index));
        self.clients[c].current = Some((key, cmd));
        self.clients[c].sends = 0;
        self.clients[c].first_sent = self.now;
        self.dispatch(c, true);
    }

    /// The client sends its pending request again (same request id) after an unknown outcome.
    pub(super) fn resend(&mut self, c: usize) {
        let cl = &self.clients[c];
        if self.now >= cl.first_sent.saturating_add(self.cfg.request_deadline) {
            // The deadline passed: the outcome stays unknown (and open-ended: an attempt may
            // still be applied later, so the history keeps no return time).
            self.clients[c].pending = None;
            self.stats.unknown += 1;
            let pause = self.rng.range(1, 30);
            self.schedule(pause, Event::ClientNext(c));
            return;
        }
        self.stats.resent += 1;
        self.dispatch(c, false);
    }

    /// Sends the client's pending request through a random live node (the router's job).
    /// `first`: never sent before, so "no live node" means it was not applied.
    fn dispatch(&mut self, c: usize, first: bool) {
        let (req, index) = self.clients[c].pending.expect("a pending request");
        let Some(to) = self.pick(c) else {
            if !first {
                // Sent before, so it may have been applied: keep trying later.
                self.schedule(10, Event::ClientTimeout { client: c, req });
                return;
            }
            self.clients[c].pending = None;
            self.history[index].outcome = Outcome::Failed;
            self.history[index].ret = self.now;
            self.stats.failed += 1;
            self.schedule(10, Event::ClientNext(c));
            return;
        };
        let timeout = self.cfg.client_timeout;
        self.schedule(timeout, Event::ClientTimeout { client: c, req });
        self.send_request(c, to);
    }

    /// The router's choice for client `c`'s pending request: a live replica of the key's shard
    /// in the configuration it knows (both sets while the shard moves), at random.
    fn pick(&mut self, c: usize) -> Option<NodeId> {
        let (key, _) = self.clients[c].current.as_ref().expect("a current command");
        let shard = super::membership::shard_of(&self.cfg, key);
        let replicas = self.router.shard(shard).expect("a shard").nodes();
        let live: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, n)| {
                n.up && replicas.contains(id)
                    && (self.cfg.coordinators.is_empty() || self.cfg.coordinators.contains(id))
            })
            .map(|(&id, _)| id)
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(live[self.rng.range(0, live.len() as u64 - 1) as usize])
    }

    fn send_request(&mut self, c: usize, to: NodeId) {
        let (req, _) = self.clients[c].pending.expect("a pending request");
        let (key, cmd) = self.clients[c].current.clone().expect("a current command");
        self.clients[c].sends += 1;
        self.send(
            CLIENT_BASE + c as NodeId,
            to,
            Payload::Request {
                client: c,
                req,
                key,
                cmd,
            },
        );
    }

    pub(super) fn client_answer(
        &mut self,
        client: usize,
        req: u64,
        mut result: Result<i64, Failed>,
    ) {
        let Some((pending, index)) = self.clients[client].pending else {
            return;
        };
        if pending != req {
            return; // a duplicate, or an answer after the client gave up
        }
        if result == Err(Failed::NotAMember) {
            // That node ran nothing: the router learns the newest configuration and sends the
            // request to another replica, within the client's same call (router.rs).
            self.router_learn();
            self.clients[client].sends = self.clients[client].sends.saturating_sub(1);
            match self.pick(client) {
                Some(to) => {
                    self.send_request(client, to);
                    return;
                }
                None => result = Err(Failed::NotApplied),
            }
        }
        // With request ids an unknown outcome is retried. So is "not applied" once the request
        // was sent before: that attempt did not apply it, an earlier one may have.
        let maybe_applied = result == Err(Failed::Ambiguous)
            || (result == Err(Failed::NotApplied) && self.clients[client].sends > 1);
        if self.cfg.request_ids && maybe_applied {
            self.resend(client);
            return;
        }
        self.clients[client].pending = None;
        let op = &mut self.history[index];
        // An expired answer bounds nothing: another attempt may still be applied by a
        // coordinator whose clock has not reached the session's end.
        if result != Err(Failed::Expired) {
            op.ret = self.now;
        }
        op.outcome = match result {
            Ok(v) => {
                self.stats.ok += 1;
                if let Some(keys) = self
                    .final_keys
                    .as_mut()
                    .filter(|_| client == self.cfg.clients)
                {
                    keys.retain(|k| *k != op.key);
                    self.stats.last_reads += 1;
                }
                Outcome::Ok(v)
            }
            Err(Failed::NotApplied) => {
                self.stats.failed += 1;
                Outcome::Failed
            }
            Err(Failed::Ambiguous) => {
                self.stats.unknown += 1;
                Outcome::Unknown
            }
            Err(Failed::NotAMember) => unreachable!("the router tried another replica"),
            Err(Failed::Expired) => {
                // Its outcome is unknown, and the session is over: the next request opens a
                // new one (the client library's rule).
                self.stats.expired += 1;
                self.clients[client].session = None;
                Outcome::Unknown
            }
        };
        let pause = self.rng.range(0, 20);
        self.schedule(pause, Event::ClientNext(client));
    }
}
