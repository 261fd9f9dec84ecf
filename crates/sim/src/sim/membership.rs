//! Membership changes, as the node makes them (`counter-node`'s `membership.rs`, with the rules
//! of `counter_core::membership`): the configuration each node runs and installs (persisted,
//! dropping the data of shards it leaves), the fence every acceptor request passes, the
//! periodic refresh, and the mover: the admin command (`cluster add-node`, `remove-node`,
//! `replace-node`) run to its end and run again after any fault.
//!
//! The mover runs each command on a live member (its host), as the node's `admin` does:
//!
//! 1. learn the newest configuration; a command already done is done; a half-done one (its
//!    joint configuration records it) is resumed; otherwise plan the joint configuration and
//!    agree it (a node to add must be up and reachable: `check_joiner`);
//! 2. install it on every member until a majority of every moving shard's old set has (the
//!    barrier: then no round of an older version can complete on a moving shard);
//! 3. rescan each moving shard: list its keys from a majority of its old set (`ListKeys` under
//!    the joint version) and run an identity round on each through the host's coordinator
//!    (queued behind client commands like any other; up to 5 attempts per key);
//! 4. agree the final configuration, install it everywhere (best effort: nodes that miss it
//!    learn it by refresh); nodes that leave a shard drop its data when they install it.
//!
//! Any failure (the host crashes, a barrier or a listing times out, a key cannot be copied, no
//! quorum to agree) ends the run of the command; it is run again after a pause on a random
//! live member, and resumes from the agreed configuration.
//!
//! # Simplified: the configuration register
//!
//! The configuration register is one agreed sequence of configurations ([`Mover::register`]):
//! "agree C' after C" succeeds, atomically, when the register holds C (or C' already: a resumed
//! command) and a quorum of C's and C''s members ([`config_quorum`]) is up and reachable from
//! the host. The node runs a CASPaxos round on each member's `ConfigAcceptor` instead; with
//! one mover at a time both give the same sequence. Learning "the newest configuration" (the
//! node's `refresh` of the members) reads the register, which the node's refresh could lag:
//! it then plans the same joint configuration again, which `config_proposal` finds already
//! chosen, so the step is the same. A joining node starts from the register's configuration
//! (the node's `--join` asks a member).
//!
//! Everything else is the node's: data rounds carry the coordinator's version and meet the
//! fence, configurations travel in messages (with loss, duplication, delay, partitions), and
//! nodes learn them from pushes, refusals and their periodic refresh. The routers route by a
//! configuration they refresh as often (so they may send to a node that left, which answers
//! `NOT_A_MEMBER`: the router then learns the newest and tries another replica).
//!
//! Other differences from the node, none of which the safety argument leans on: a key `k{i}`
//! is in shard `i % shards` (the node hashes); all of a shard's keys fit in one `ListKeys`
//! page, and the answers of the old set's members are gathered across the mover's polls (the
//! node needs a majority within one round of asks); a phase ends at its timeout or at a
//! `StaleConfig`, not also when every replica answered; the mover starts a change's joiner
//! itself, and loses a replaced node (never restarted under its id) as the change starts.
//!
//! # Targeted faults
//!
//! Besides the setting's random faults, as the mover installs a joint configuration it cuts off,
//! half the time, one replica of a moving shard's old set (not its host) for a while, and when
//! that heals, half the time, one replica that stays in those shards ([`Sim::heal_then_cut`]).
//! The first makes a node that runs the older configuration for a while after it returns, which
//! the fence is for; the second makes a replica that misses writes, which, with single-member
//! moves (the only kind `plan` makes), a lost fence needs as well before a count is lost.

use super::{Event, Payload, Sim, SimNode, Waiter};
use crate::{Config, Mutation};
use counter_core::membership::{
    bootstrap as first_config, config_quorum, fence, finish, is_done, plan, Fence,
};
use counter_core::Quorum;
use counter_proto::{Change, Command, Config as ClusterConfig, NodeId, Op};
use std::collections::{BTreeMap, BTreeSet};

/// How often a node asks the members for a newer configuration (the node's 2 s, in ticks; a
/// phase times out after 120).
const REFRESH_EVERY: u64 = 250;
/// The mover's poll: resends of installs and listings (the node's 200 ms).
const POLL: u64 = 25;
/// A barrier met by a majority of each old set ends after this even if some member did not
/// install (the node's 3 s).
const FENCED_AFTER: u64 = 360;
/// How long installing may take before the command fails (20 s), or gives up quietly without
/// a barrier (5 s).
const INSTALL_FOR: u64 = 2_400;
const INSTALL_QUIETLY_FOR: u64 = 600;
/// How long listing a shard's keys may take (10 s).
const LIST_FOR: u64 = 1_200;
/// Attempts of an identity round before the command fails, and rounds in flight at once.
const IDENTITY_ATTEMPTS: u32 = 5;
const WINDOW: usize = 16;

/// An acceptor's refusal of a request of another configuration, or of a shard it does not
/// hold (the node's `StaleConfig`, `NeedConfig`, `Error`).
#[derive(Clone, Debug)]
pub(super) enum Refusal {
    /// The request's configuration is older: here is ours.
    Stale(Box<ClusterConfig>),
    /// Ours is older: send yours.
    Behind,
    /// Same version, but this node does not hold the key's shard.
    NotHeld,
}

/// The shard of a key: `k{i}` is in shard `i % shards` (the node hashes keys; the simulator's
/// keys are spread evenly instead).
pub(super) fn shard_of(cfg: &Config, key: &str) -> u32 {
    let i: usize = key[1..].parse().expect("keys are k{i}");
    (i % cfg.shards.max(1)) as u32
}

/// The replicas a round on `shard` sends to (both sets while it moves), and the quorum it
/// counts (the same, unless [`Mutation::OldVotesCount`] is planted).
pub(super) fn quorum(config: &ClusterConfig, shard: u32, mutation: Mutation) -> (Quorum, Quorum) {
    let set = config.shard(shard).expect("a shard of the configuration");
    let all = Quorum::joint(&set.old, &set.new);
    let counted = match mutation {
        Mutation::OldVotesCount if set.is_moving() => Quorum::majority(&set.old),
        _ => all.clone(),
    };
    (all, counted)
}

/// The configuration every node starts from: `shards` sets of `replication` nodes (every node
/// if 0), shard `s` on nodes `s+1, s+2, ...` (wrapping).
pub(super) fn bootstrap(cfg: &Config) -> ClusterConfig {
    let n = cfg.nodes;
    let r = if cfg.replication == 0 {
        n
    } else {
        cfg.replication.min(n)
    };
    let members = (1..=n as NodeId).map(|id| (id, addr(id))).collect();
    let sets = (0..cfg.shards.max(1))
        .map(|s| (0..r).map(|i| ((s + i) % n) as NodeId + 1).collect())
        .collect();
    first_config(
        0x5eed,
        r as u32,
        members,
        sets,
        counter_core::Limits::default(),
    )
}

fn addr(id: NodeId) -> String {
    format!("node{id}:7000")
}

/// One step of a command's run.
enum Step {
    /// Waiting to (re)start the command.
    Idle,
    /// Installing `config` on `targets` until the barrier is met (the joint configuration) or
    /// as far as it goes (the final one).
    Install {
        config: ClusterConfig,
        targets: BTreeSet<NodeId>,
        installed: BTreeSet<NodeId>,
        since: u64,
        barrier: bool,
    },
    /// Listing the keys of the `at`-th moving shard of `joint` from its old set.
    List {
        joint: ClusterConfig,
        at: usize,
        answered: BTreeMap<NodeId, Vec<String>>,
        since: u64,
    },
    /// Identity rounds on those keys: attempts so far, and `Some(when)` to (re)send one.
    Copy {
        joint: ClusterConfig,
        at: usize,
        keys: BTreeMap<String, (u32, KeyState)>,
    },
    /// Every change is done.
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyState {
    Due(u64),
    InFlight,
    Copied,
}

/// The admin commands of a run, and the configuration register.
pub(super) struct Mover {
    register: ClusterConfig,
    changes: Vec<Change>,
    /// The change under way.
    next: usize,
    /// Whether the change under way was prepared (its node started, the one it replaces lost).
    prepared: bool,
    /// The command's current run: timers and replies of earlier runs are ignored.
    run: u64,
    host: NodeId,
    host_epoch: u32,
    step: Step,
}

impl Mover {
    pub(super) fn new(register: ClusterConfig) -> Mover {
        Mover {
            register,
            changes: Vec::new(),
            next: 0,
            prepared: false,
            run: 0,
            host: 0,
            host_epoch: 0,
            step: Step::Idle,
        }
    }

    /// The newest agreed configuration (what the routers route by).
    pub(super) fn register(&self) -> &ClusterConfig {
        &self.register
    }

    pub(super) fn done(&self) -> bool {
        self.next >= self.changes.len()
    }
}

impl Sim {
    /// Plans the run's changes (an added node, an original one removed, another replaced, in
    /// a random order that keeps enough members) and starts the refreshes and the mover.
    pub(super) fn start_membership(&mut self) {
        let n = self.cfg.nodes as NodeId;
        let removed = self.rng.range(1, n as u64) as NodeId;
        let replaced = loop {
            let r = self.rng.range(1, n as u64) as NodeId;
            if r != removed {
                break r;
            }
        };
        let add = Change::AddNode {
            id: n + 1,
            addr: addr(n + 1),
        };
        let remove = Change::RemoveNode { id: removed };
        let replace = Change::ReplaceNode {
            old: replaced,
            new: n + 2,
            addr: addr(n + 2),
        };
        let replication = self.mover.register.replication as usize;
        let changes = loop {
            let mut order = vec![add.clone(), remove.clone(), replace.clone()];
            for i in (1..order.len()).rev() {
                let j = self.rng.range(0, i as u64) as usize;
                order.swap(i, j);
            }
            // A removal needs a member more than the replication factor.
            let mut members = self.cfg.nodes;
            let fine = order.iter().all(|c| match c {
                Change::AddNode { .. } => {
                    members += 1;
                    true
                }
                Change::RemoveNode { .. } => {
                    members -= 1;
                    members >= replication
                }
                Change::ReplaceNode { .. } => true,
            });
            if fine {
                break order;
            }
        };
        self.mover.changes = changes;
        for id in 1..=n {
            let at = self.rng.range(1, REFRESH_EVERY);
            self.schedule(at, Event::Refresh(id));
        }
        let at = self.rng.range(1, REFRESH_EVERY);
        self.schedule(at, Event::RouterRefresh);
        let start = self.rng.range(100, 1_500);
        self.schedule(start, Event::Mover { run: 0 });
    }

    /// The fence a Prepare, Accept, Read or ListKeys of `shard` sent under `version` meets at
    /// `node` (the node's `check_shard`): `None` to admit it.
    pub(super) fn fence(&self, node: NodeId, shard: u32, version: u64) -> Option<Refusal> {
        let config = &self.nodes[&node].config;
        match fence(config.version, version) {
            Fence::Stale if self.cfg.mutation != Mutation::NoFence => {
                return Some(Refusal::Stale(Box::new(config.clone())))
            }
            Fence::Behind => return Some(Refusal::Behind),
            Fence::Stale | Fence::Admit => {}
        }
        if !config.holds(node, shard) {
            return Some(Refusal::NotHeld);
        }
        None
    }

    /// Installs `config` at `node` if it is newer than the one it runs (the node's `install`,
    /// persisted first), and drops the data of the shards it leaves.
    pub(super) fn install(&mut self, node: NodeId, config: &ClusterConfig) -> bool {
        let early = self.cfg.mutation == Mutation::DropBeforeCommit;
        let n = self.nodes.get_mut(&node).expect("node");
        if config.version <= n.config.version {
            return false;
        }
        let old = std::mem::replace(&mut n.config, config.clone());
        for shard in 0..config.shard_count() {
            let leaves = old.holds(node, shard) && !config.holds(node, shard);
            // Planted: dropped as soon as a joint configuration moves the shard away.
            let leaving = early
                && config
                    .shard(shard)
                    .is_some_and(|s| s.is_moving() && !s.new.contains(&node));
            if leaves || (leaving && config.holds(node, shard)) {
                self.drop_shard(node, shard);
            }
        }
        true
    }

    /// The node's `open`: drops the data of shards its configuration says it does not hold.
    pub(super) fn drop_unheld(&mut self, node: NodeId) {
        let config = &self.nodes[&node].config;
        let unheld: Vec<u32> = (0..config.shard_count())
            .filter(|&s| !config.holds(node, s))
            .collect();
        for shard in unheld {
            self.drop_shard(node, shard);
        }
    }

    fn drop_shard(&mut self, node: NodeId, shard: u32) {
        let cfg = &self.cfg;
        let n = self.nodes.get_mut(&node).expect("node");
        n.durable.retain(|k, _| shard_of(cfg, k) != shard);
        n.volatile.retain(|k, _| shard_of(cfg, k) != shard);
    }

    /// A node asks the members of its configuration for theirs (the node's `refresh`).
    pub(super) fn refresh(&mut self, node: NodeId) {
        let n = &self.nodes[&node];
        if n.gone {
            return;
        }
        if n.up {
            let members: Vec<NodeId> = n.config.members.keys().copied().collect();
            for m in members.into_iter().filter(|&m| m != node) {
                self.send(node, m, Payload::GetConfig);
            }
        }
        self.schedule(REFRESH_EVERY, Event::Refresh(node));
    }

    /// The routers ask the nodes for their configurations and route by the newest (the
    /// router's `refresh`, every 2 s: between two, it may send to a node that left).
    pub(super) fn router_refresh(&mut self) {
        self.router_learn();
        self.schedule(REFRESH_EVERY, Event::RouterRefresh);
    }

    /// The routers' view moves to the newest configuration a live node runs.
    pub(super) fn router_learn(&mut self) {
        let newest = self
            .nodes
            .values()
            .filter(|n| n.up)
            .map(|n| &n.config)
            .max_by_key(|c| c.version);
        if let Some(newest) = newest.filter(|c| c.version > self.router.version) {
            self.router = newest.clone();
        }
    }

    /// Configuration messages, and the mover's.
    pub(super) fn deliver_membership(&mut self, from: NodeId, to: NodeId, payload: Payload) {
        match payload {
            Payload::InstallConfig(config) => {
                self.install(to, &config);
                let version = self.nodes[&to].config.version;
                self.send(to, from, Payload::ConfigInstalled { version });
            }
            Payload::ConfigInstalled { version } => {
                if self.mover.host != to {
                    return;
                }
                if let Step::Install {
                    config, installed, ..
                } = &mut self.mover.step
                {
                    if version >= config.version {
                        installed.insert(from);
                    }
                }
            }
            Payload::GetConfig => {
                let config = self.nodes[&to].config.clone();
                self.send(to, from, Payload::ConfigIs(Box::new(config)));
            }
            Payload::ConfigIs(config) => {
                self.install(to, &config);
            }
            Payload::ListKeys {
                shard,
                version,
                run,
            } => {
                let payload = match self.fence(to, shard, version) {
                    Some(why) => Payload::ListRefused { shard, run, why },
                    None => {
                        let cfg = &self.cfg;
                        let keys = self.nodes[&to]
                            .durable
                            .keys()
                            .filter(|k| shard_of(cfg, k) == shard)
                            .cloned()
                            .collect();
                        Payload::Keys { shard, keys, run }
                    }
                };
                self.send(to, from, payload);
            }
            Payload::Keys { shard, keys, run } => {
                if self.mover.host == to && self.mover.run == run {
                    self.listed(from, shard, keys);
                }
            }
            Payload::ListRefused { shard, run, why } => {
                let listing = match &self.mover.step {
                    Step::List { joint, at, .. } => joint.moving().nth(*at).map(|(s, _)| s),
                    _ => None,
                };
                if self.mover.host != to || self.mover.run != run || listing != Some(shard) {
                    return;
                }
                match why {
                    Refusal::Stale(newer) => {
                        self.install(to, &newer);
                        self.mover_fail();
                    }
                    Refusal::Behind => {
                        if let Step::List { joint, .. } = &self.mover.step {
                            let joint = Box::new(joint.clone());
                            self.send(to, from, Payload::InstallConfig(joint));
                        }
                    }
                    Refusal::NotHeld => {}
                }
            }
            _ => unreachable!("not a configuration message"),
        }
    }

    /// The mover's timer.
    pub(super) fn mover_tick(&mut self, run: u64) {
        if run != self.mover.run {
            return;
        }
        if matches!(self.mover.step, Step::Idle) {
            self.mover_start();
        } else if !matches!(self.mover.step, Step::Done) {
            let host = &self.nodes[&self.mover.host];
            if !host.up || host.epoch != self.mover.host_epoch {
                // The command's process died with its node: run it again.
                self.mover_fail();
                return;
            }
            match self.mover.step {
                Step::Install { .. } => self.install_poll(),
                Step::List { .. } => self.list_poll(),
                Step::Copy { .. } => self.copy_poll(),
                Step::Idle | Step::Done => {}
            }
        }
        let m = &self.mover;
        if m.run == run && !matches!(m.step, Step::Idle | Step::Done) {
            self.schedule(POLL, Event::Mover { run });
        }
    }

    /// Runs the command under way (again): learns the newest configuration, and resumes or
    /// starts the change (step 1).
    fn mover_start(&mut self) {
        let change = self.mover.changes[self.mover.next].clone();
        if !self.mover.prepared {
            self.mover.prepared = true;
            self.prepare_change(&change);
        }
        let hosts: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, n)| n.up && self.mover.register.is_member(**id))
            .map(|(&id, _)| id)
            .collect();
        if hosts.is_empty() {
            self.mover_fail();
            return;
        }
        let host = hosts[self.rng.range(0, hosts.len() as u64 - 1) as usize];
        self.mover.host = host;
        self.mover.host_epoch = self.nodes[&host].epoch;
        let cur = self.mover.register.clone();
        self.install(host, &cur);
        if is_done(&cur, &change) {
            self.change_done();
            return;
        }
        let joint = match &cur.pending {
            Some(pending) if *pending == change => cur,
            Some(other) => unreachable!("one mover, one change at a time: {other}"),
            None => {
                let joint = plan(&cur, &change).expect("the run's changes are valid");
                // check_joiner: the node to add answers.
                let joiner = match &change {
                    Change::AddNode { id, .. } | Change::ReplaceNode { new: id, .. } => Some(*id),
                    Change::RemoveNode { .. } => None,
                };
                if joiner.is_some_and(|j| !self.reachable(host).contains(&j)) {
                    self.mover_fail();
                    return;
                }
                if !self.agree(&cur, &joint) {
                    self.mover_fail();
                    return;
                }
                joint
            }
        };
        self.start_install(joint, true, &[]);
    }

    /// Starts the node a change adds (empty, joining with the newest configuration), and
    /// loses the one it replaces for good, disk included.
    fn prepare_change(&mut self, change: &Change) {
        if let Change::ReplaceNode { old, .. } = change {
            let n = self.nodes.get_mut(old).expect("a member");
            let config = n.config.clone();
            *n = SimNode {
                up: false,
                gone: true,
                ..SimNode::new(config, 0)
            };
            self.cut.remove(old);
        }
        if let Change::AddNode { id, .. } | Change::ReplaceNode { new: id, .. } = change {
            let clock_offset = self.rng.range(0, self.cfg.clock_skew);
            let node = SimNode::new(self.mover.register.clone(), clock_offset);
            self.nodes.insert(*id, node);
            let at = self.rng.range(1, REFRESH_EVERY);
            self.schedule(at, Event::Refresh(*id));
        }
    }

    /// Nodes the host can reach (itself only while it is cut off).
    fn reachable(&self, host: NodeId) -> Vec<NodeId> {
        if self.cut.contains(&host) {
            return vec![host];
        }
        self.nodes
            .iter()
            .filter(|(id, n)| n.up && !self.cut.contains(id))
            .map(|(&id, _)| id)
            .collect()
    }

    /// Agrees `wanted` after `cur` on the (simplified) configuration register and installs it
    /// at the host; `false` if no quorum of both member sets is reachable or the register moved.
    fn agree(&mut self, cur: &ClusterConfig, wanted: &ClusterConfig) -> bool {
        let host = self.mover.host;
        if !config_quorum(cur, wanted).is_met(&self.reachable(host)) {
            return false;
        }
        let reg = &mut self.mover.register;
        if reg.version != cur.version && reg != wanted {
            return false;
        }
        *reg = wanted.clone();
        self.install(host, wanted);
        true
    }

    fn start_install(&mut self, config: ClusterConfig, barrier: bool, extra: &[NodeId]) {
        if barrier {
            self.cut_off_one(&config);
        }
        let mut targets: BTreeSet<NodeId> = config.members.keys().copied().collect();
        targets.extend(extra);
        self.mover.step = Step::Install {
            config,
            targets,
            installed: BTreeSet::new(),
            since: self.now,
            barrier,
        };
        self.install_poll();
    }

    /// The fault a move is most sensitive to, half the time (when the fault budget allows):
    /// a replica of a moving shard's old set other than the host is cut off from the other
    /// nodes as the joint configuration is installed, for long enough that the barrier goes
    /// on without it. Clients may still reach it; when the cut heals it runs the older
    /// configuration until a refusal, a push or its refresh tells it of the newer one.
    fn cut_off_one(&mut self, joint: &ClusterConfig) {
        if !self.rng.chance(500) || !self.may_fault() {
            return;
        }
        let host = self.mover.host;
        let old: BTreeSet<NodeId> = joint
            .moving()
            .flat_map(|(_, set)| set.old.iter().copied())
            .filter(|&n| n != host && self.nodes[&n].up && !self.cut.contains(&n))
            .collect();
        let old: Vec<NodeId> = old.into_iter().collect();
        if old.is_empty() {
            return;
        }
        let victim = old[self.rng.range(0, old.len() as u64 - 1) as usize];
        // The replicas that stay in the victim's moving shards: the second fault.
        let then: Vec<NodeId> = joint
            .moving()
            .filter(|(_, set)| set.old.contains(&victim))
            .flat_map(|(_, set)| set.old.iter().filter(|n| set.new.contains(n)).copied())
            .filter(|&n| n != victim && n != host)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self.stats.partitions += 1;
        self.cut.insert(victim);
        let heal = self.rng.range(300, 1_500);
        self.schedule(heal, Event::HealThenCut { heal: victim, then });
    }

    /// Heals the node [`Sim::cut_off_one`] cut off, and half the time (when the fault budget
    /// allows) cuts off one of `then`, the replicas that stay in its moving shards, for a while.
    pub(super) fn heal_then_cut(&mut self, heal: NodeId, then: &[NodeId]) {
        self.cut.remove(&heal);
        if then.is_empty() || !self.rng.chance(500) || !self.may_fault() {
            return;
        }
        let victim = then[self.rng.range(0, then.len() as u64 - 1) as usize];
        if !self.nodes[&victim].up || self.cut.contains(&victim) {
            return;
        }
        self.stats.partitions += 1;
        self.cut.insert(victim);
        let back = self.rng.range(100, 600);
        self.schedule(back, Event::Heal(victim));
    }

    /// Step 2 (and the end of step 4): ends the install when every target has the
    /// configuration, or when the barrier is met and a while passed; else sends it again.
    fn install_poll(&mut self) {
        let now = self.now;
        let Step::Install {
            config,
            targets,
            installed,
            since,
            barrier,
        } = &self.mover.step
        else {
            return;
        };
        let have: Vec<NodeId> = installed.iter().copied().collect();
        let fenced = config
            .moving()
            .all(|(_, set)| Quorum::majority(&set.old).is_met(&have));
        let everyone = targets.iter().all(|n| installed.contains(n));
        let elapsed = now - since;
        let barrier = *barrier;
        let over = elapsed > INSTALL_FOR || (!barrier && elapsed > INSTALL_QUIETLY_FOR);
        if everyone || (fenced && elapsed > FENCED_AFTER) || over {
            if barrier && !fenced {
                self.mover_fail();
                return;
            }
            let config = config.clone();
            if !barrier {
                self.change_done();
            } else if self.cfg.mutation == Mutation::SkipRescan {
                self.finish_change(config);
            } else {
                self.start_list(config, 0);
            }
            return;
        }
        let host = self.mover.host;
        let missing: Vec<NodeId> = targets
            .iter()
            .filter(|n| !installed.contains(n))
            .copied()
            .collect();
        let config = Box::new(config.clone());
        for n in missing {
            self.send(host, n, Payload::InstallConfig(config.clone()));
        }
    }

    /// Step 3: lists the keys of the `at`-th moving shard (or finishes after the last one).
    fn start_list(&mut self, joint: ClusterConfig, at: usize) {
        if joint.moving().nth(at).is_none() {
            self.finish_change(joint);
            return;
        }
        self.mover.step = Step::List {
            joint,
            at,
            answered: BTreeMap::new(),
            since: self.now,
        };
        self.list_poll();
    }

    fn list_poll(&mut self) {
        let Step::List {
            joint,
            at,
            answered,
            since,
        } = &self.mover.step
        else {
            return;
        };
        if self.now - since > LIST_FOR {
            self.mover_fail();
            return;
        }
        let (shard, set) = joint.moving().nth(*at).expect("a moving shard");
        let ask: Vec<NodeId> = set
            .old
            .iter()
            .filter(|n| !answered.contains_key(n))
            .copied()
            .collect();
        let (host, run, version) = (self.mover.host, self.mover.run, joint.version);
        for n in ask {
            let payload = Payload::ListKeys {
                shard,
                version,
                run,
            };
            self.send(host, n, payload);
        }
    }

    /// A member of the old set listed its keys: with a majority of it, copy their union.
    fn listed(&mut self, from: NodeId, shard: u32, keys: Vec<String>) {
        let Step::List {
            joint,
            at,
            answered,
            ..
        } = &mut self.mover.step
        else {
            return;
        };
        let (moving, set) = joint.moving().nth(*at).expect("a moving shard");
        if moving != shard || !set.old.contains(&from) {
            return;
        }
        answered.insert(from, keys);
        let who: Vec<NodeId> = answered.keys().copied().collect();
        if !Quorum::majority(&set.old).is_met(&who) {
            return;
        }
        let all: BTreeSet<String> = answered.values().flatten().cloned().collect();
        let (joint, at) = (joint.clone(), *at);
        let now = self.now;
        self.mover.step = Step::Copy {
            joint,
            at,
            keys: all
                .into_iter()
                .map(|k| (k, (0, KeyState::Due(now))))
                .collect(),
        };
        self.copy_poll();
    }

    /// Sends the identity rounds that are due (at most [`WINDOW`] in flight); after the last
    /// key, the next shard.
    fn copy_poll(&mut self) {
        let now = self.now;
        let (host, run) = (self.mover.host, self.mover.run);
        let Step::Copy { joint, at, keys } = &mut self.mover.step else {
            return;
        };
        if keys.values().all(|(_, s)| *s == KeyState::Copied) {
            let (joint, at) = (joint.clone(), *at);
            self.start_list(joint, at + 1);
            return;
        }
        let mut inflight = keys
            .values()
            .filter(|(_, s)| *s == KeyState::InFlight)
            .count();
        let mut send = Vec::new();
        for (key, (_, state)) in keys.iter_mut() {
            if inflight >= WINDOW {
                break;
            }
            if matches!(*state, KeyState::Due(t) if t <= now) {
                *state = KeyState::InFlight;
                inflight += 1;
                send.push(key.clone());
            }
        }
        for key in send {
            self.stats.identity_rounds += 1;
            let waiter = Waiter::Mover {
                run,
                key: key.clone(),
            };
            self.enqueue(host, key, waiter, Command::from(Op::Get), true);
        }
    }

    /// An identity round ended: the key is copied, or tried again after a pause (the command
    /// fails after [`IDENTITY_ATTEMPTS`]).
    pub(super) fn identity_done(&mut self, run: u64, key: &str, ok: bool) {
        let now = self.now;
        if run != self.mover.run {
            return;
        }
        let Step::Copy { keys, .. } = &mut self.mover.step else {
            return;
        };
        let Some((attempts, state)) = keys.get_mut(key) else {
            return;
        };
        if ok {
            *state = KeyState::Copied;
        } else {
            *attempts += 1;
            if *attempts >= IDENTITY_ATTEMPTS {
                self.mover_fail();
                return;
            }
            *state = KeyState::Due(now + (12 << (*attempts).min(4)));
        }
        self.copy_poll();
    }

    /// Step 4: agrees the final configuration and installs it everywhere, on the nodes that
    /// left too (they drop their data when they install it).
    fn finish_change(&mut self, joint: ClusterConfig) {
        let done = finish(&joint);
        if !self.agree(&joint, &done) {
            self.mover_fail();
            return;
        }
        let left: Vec<NodeId> = joint
            .members
            .keys()
            .filter(|n| !done.is_member(**n))
            .copied()
            .collect();
        self.start_install(done, false, &left);
    }

    fn change_done(&mut self) {
        self.stats.changes += 1;
        let m = &mut self.mover;
        m.next += 1;
        m.prepared = false;
        m.run += 1;
        if m.done() {
            m.step = Step::Done;
            return;
        }
        m.step = Step::Idle;
        let run = m.run;
        let pause = self.rng.range(200, 2_000);
        self.schedule(pause, Event::Mover { run });
    }

    /// The command's run failed: the operator runs it again after a while (it resumes).
    fn mover_fail(&mut self) {
        self.stats.moves_retried += 1;
        let m = &mut self.mover;
        m.run += 1;
        m.step = Step::Idle;
        let run = m.run;
        let pause = self.rng.range(100, 1_000);
        self.schedule(pause, Event::Mover { run });
    }
}
