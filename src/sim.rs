//! Deterministic simulation of a whole cluster in one process.
//!
//! The real server, manager and worker state machines ([`crate::sched`]) run against a virtual
//! clock. Every message goes through the wire codec and is delivered after a seeded random delay;
//! delivery order is FIFO per (sender, receiver) link, as MPI guarantees, and arbitrary across
//! links. Tasks are scripts ([`Script`]) carried in their own arguments: they compute for a while
//! (the worker is busy), submit or map children, await them (`All` or a `Next` loop), cancel
//! them, abandon them, or fail. Each task returns the number of tasks in its awaited subtree, so
//! a job's result checks that nothing was lost or counted twice.
//!
//! [`Sim::check_quiescent`] verifies the end state: no task, mailbox or job record left anywhere,
//! and every boss's idle accounting back to "all idle".

use crate::jobs::{Effect, JobTable, LOCAL};
use crate::protocol::native::{JobResult, Reply, Request};
use crate::protocol::Outbox;
use crate::protocol::{codec, Address, Format, JobId, LogSpec, MailboxId, Msg, Rank};
use crate::sched::{
    ChildSpec, JobSpec, ManagerCore, Ready, ServerCore, ServerEvent, TaskKey, WaitKind, WaitPoll,
    WorkerCore,
};
use crate::topology::{layout, Role};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

/// A scripted task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    /// Virtual time it computes before acting.
    pub work: u32,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Leaf,
    /// Map the children, await all.
    MapAll(Vec<Script>),
    /// Map the children, collect with `next` until all arrived, then await.
    MapNext(Vec<Script>),
    /// Submit each child separately, await each in order.
    SubmitEach(Vec<Script>),
    /// Map the children and cancel the future at once.
    CancelMap(Vec<Script>),
    /// Map the children and finish without awaiting (they are cancelled).
    Abandon(Vec<Script>),
    /// Fail the job.
    Fail,
    /// Run the script only on a worker that offers these resources (`TaskMsg::needs`); the
    /// simulation checks that it does.
    Needing(u64, Box<Script>),
}

impl Script {
    pub fn leaf(work: u32) -> Script {
        Script {
            work,
            action: Action::Leaf,
        }
    }

    /// The job result this script must produce, or `None` if it fails.
    pub fn expected(&self) -> Option<u64> {
        if let Action::Needing(_, s) = &self.action {
            return s.expected();
        }
        Some(
            1 + match &self.action {
                Action::Leaf | Action::CancelMap(_) | Action::Abandon(_) => 0,
                Action::MapAll(c) | Action::MapNext(c) | Action::SubmitEach(c) => {
                    let mut s = 0;
                    for x in c {
                        s += x.expected()?;
                    }
                    s
                }
                Action::Fail => return None,
                Action::Needing(..) => unreachable!("handled above"),
            },
        )
    }

    /// Tasks that certainly run (awaited subtrees).
    pub fn size(&self) -> u64 {
        if let Action::Needing(_, s) = &self.action {
            return s.size();
        }
        1 + match &self.action {
            Action::MapAll(c)
            | Action::MapNext(c)
            | Action::SubmitEach(c)
            | Action::CancelMap(c)
            | Action::Abandon(c) => c.iter().map(Script::size).sum(),
            _ => 0,
        }
    }

    /// A random tree of about `budget` tasks. `fail`: allow failing tasks.
    pub fn random(seed: u64, budget: u64, fail: bool) -> Script {
        let mut rng = SimRng::new(seed);
        Self::gen(&mut rng, budget, 0, fail, &[])
    }

    /// [`Script::random`] where about a third of the tasks below the root need one of `masks`.
    pub fn random_needing(seed: u64, budget: u64, fail: bool, masks: &[u64]) -> Script {
        let mut rng = SimRng::new(seed);
        Self::gen(&mut rng, budget, 0, fail, masks)
    }

    /// The resources this script's task needs.
    pub fn needs(&self) -> u64 {
        match &self.action {
            Action::Needing(m, _) => *m,
            _ => 0,
        }
    }

    fn gen(rng: &mut SimRng, budget: u64, depth: u32, fail: bool, masks: &[u64]) -> Script {
        let work = rng.below(20) as u32;
        if budget <= 1 || depth > 12 {
            return Script::leaf(work);
        }
        let k = 1 + rng.below(budget.min(16)) as usize;
        let per = (budget - 1) / k as u64;
        let kind = rng.below(100);
        // a failure under a cancelled subtree may or may not run: keep the outcome determined
        let mut kids = |f: bool| -> Vec<Script> {
            (0..k)
                .map(|_| {
                    let s = Self::gen(rng, per.max(1), depth + 1, f, masks);
                    match masks.is_empty() || rng.below(3) != 0 {
                        true => s,
                        false => Script {
                            work: 0,
                            action: Action::Needing(
                                masks[rng.below(masks.len() as u64) as usize],
                                Box::new(s),
                            ),
                        },
                    }
                })
                .collect()
        };
        let action = match kind {
            0..=39 => Action::MapAll(kids(fail)),
            40..=59 => Action::MapNext(kids(fail)),
            60..=79 => Action::SubmitEach(kids(fail)),
            80..=89 => Action::CancelMap(kids(false)),
            90..=97 => Action::Abandon(kids(false)),
            _ if fail => Action::Fail,
            _ => Action::MapAll(kids(fail)),
        };
        Script { work, action }
    }

    fn encode(&self) -> Vec<u8> {
        match bincode::serde::encode_to_vec(self, bincode::config::standard()) {
            Ok(v) => v,
            Err(e) => panic!("script encodes: {e}"),
        }
    }
}

/// The simulation's randomness (the same seeded generator as the schedulers').
struct SimRng(crate::sched::rng::Rng);
impl SimRng {
    fn new(seed: u64) -> SimRng {
        SimRng(crate::sched::rng::Rng::new(seed))
    }
    /// In `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }
}

/// Shape and randomness of a simulated cluster.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub workers: u32,
    /// Workers per node (a node also gets a manager rank when there are several nodes).
    pub per_node: u32,
    pub fanout: u32,
    pub seed: u64,
    /// Largest extra delivery delay in ticks (0 = every message takes 1 tick).
    pub max_delay: u64,
    /// Encode and decode every message (checks the codec; slower).
    pub codec: bool,
    /// Workers keep one child when they would otherwise idle (as the executor does).
    pub keep_local: bool,
    /// Ticks between a worker's progress reports to the server.
    pub progress_every: u64,
    /// A worker inside one task this many ticks is occupied, as the runtime's driver decides
    /// (0: never).
    pub occupied_after: u64,
    /// Resources the workers of each node offer, by their index on the node (cycled; empty:
    /// none).
    pub offers: Vec<u64>,
}

impl SimConfig {
    pub fn new(workers: u32, per_node: u32, seed: u64) -> SimConfig {
        SimConfig {
            workers,
            per_node,
            fanout: 4,
            seed,
            max_delay: 10,
            codec: true,
            keep_local: true,
            progress_every: 100,
            occupied_after: 50,
            offers: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct SimTask {
    script: Script,
    stage: u32,
    mailboxes: Vec<MailboxId>,
    acc: u64,
    got: usize,
}

enum Node {
    Server(ServerCore),
    Manager(ManagerCore),
    Worker(Box<SimWorker>),
}

struct SimWorker {
    core: WorkerCore,
    last_progress: u64,
    tasks: HashMap<TaskKey, SimTask>,
    busy_until: u64,
    wake_pending: bool,
    /// Nothing to run and not computing, and since when.
    idle: bool,
    idle_since: u64,
    /// Tasks queued behind this worker's computation, with the time each began to wait.
    waiting: HashMap<Address, u64>,
    /// The child the current step kept for this worker (work-first): it runs next, right after
    /// the step, so it does not wait behind a computation.
    kept: Option<Address>,
    /// Resources it offers.
    offers: u64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Deliver {
        from: u32,
        to: u32,
        idx: usize,
    },
    Wake {
        rank: u32,
    },
    /// The driver looks at a worker that began a long task ending at `until`.
    Occupy {
        rank: u32,
        until: u64,
    },
}

/// Counts from one simulation run.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub messages: u64,
    pub server_messages_in: u64,
    pub server_messages_out: u64,
    pub tasks_started: u64,
    pub tasks_finished: u64,
    pub steals: u64,
    pub end_time: u64,
    /// Wall time spent inside the server's state machine.
    pub server_nanos: u128,
    /// Messages the server received, by kind.
    pub server_in_by_kind: std::collections::BTreeMap<&'static str, u64>,
    /// The longest time one task waited in the queue of a worker that was computing while one
    /// other worker was idle the whole time (over every such pair of task and idle worker).
    pub max_wait_beside_idle: u64,
    /// Tasks that needed resources, started (each on a worker that offers them).
    pub needing_started: u64,
}

/// A simulated cluster.
pub struct Sim {
    cfg: SimConfig,
    nodes: Vec<Node>,
    now: u64,
    /// The real instant simulated time 0 stands for (the job table takes instants).
    epoch: std::time::Instant,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    in_flight: Vec<Option<Msg>>,
    free: Vec<usize>,
    link_last: HashMap<(u32, u32), u64>,
    rng: SimRng,
    started: HashSet<Address>,
    finished: HashSet<Address>,
    /// Rank 0's job table: jobs are submitted and cancelled through it, and the server's events
    /// go into it, as under MPI.
    table: JobTable,
    results: HashMap<JobId, Result<u64, String>>,
    /// Jobs the server reported ended (each once).
    server_ended: HashSet<JobId>,
    finished_counts: HashMap<JobId, u64>,
    /// Links from the server to its deepest worker.
    levels: u64,
    /// When each idle worker became idle, and when each task queued behind a computation began
    /// to wait (multisets: time -> how many).
    idle_since: BTreeMap<u64, u32>,
    waiting_since: BTreeMap<u64, u32>,
    pub stats: SimStats,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        // rank 0 on node 0 with the first node's ranks; several nodes get a manager each
        let nodes_n = cfg.workers.div_ceil(cfg.per_node.max(1));
        let mut node_of = vec![0u32];
        for nd in 0..nodes_n {
            let here = cfg.per_node.min(cfg.workers - nd * cfg.per_node);
            let extra = if nodes_n > 1 { 1 } else { 0 };
            for _ in 0..here + extra {
                node_of.push(nd);
            }
        }
        let lay = match layout(&node_of, cfg.fanout) {
            Ok(l) => l,
            Err(e) => panic!("simulated layout: {e}"),
        };
        let parents: Vec<Option<Rank>> = lay.roles.iter().map(|r| r.parent()).collect();
        let levels = (0..parents.len())
            .map(|mut r| {
                let mut hops = 0;
                while let Some(p) = parents[r] {
                    hops += 1;
                    r = p.0 as usize;
                }
                hops
            })
            .max()
            .unwrap_or(0);
        // each worker's mask: by its index among its node's workers
        let mut on_node: HashMap<u32, usize> = HashMap::new();
        let masks: Vec<u64> = lay
            .roles
            .iter()
            .enumerate()
            .map(|(r, role)| match (role, cfg.offers.is_empty()) {
                (Role::Worker { .. }, false) => {
                    let i = on_node.entry(lay.node_of[r]).or_default();
                    *i += 1;
                    cfg.offers[(*i - 1) % cfg.offers.len()]
                }
                _ => 0,
            })
            .collect();
        let classes = |employees: &[(Rank, u32)]| -> Vec<Vec<(u64, u32)>> {
            employees
                .iter()
                .map(|e| crate::topology::resources::classes_under(&lay, e.0 .0 as usize, &masks))
                .collect()
        };
        let resourced = masks.iter().any(|&m| m != 0);
        let nodes: Vec<Node> = lay
            .roles
            .iter()
            .enumerate()
            .map(|(r, role)| match role {
                Role::Server { employees } => {
                    let mut s = ServerCore::new(employees, cfg.seed);
                    s.boss.set_managers(&lay.managers(employees));
                    if resourced {
                        s.boss.set_classes(classes(employees));
                    }
                    Node::Server(s)
                }
                Role::Manager {
                    parent, employees, ..
                } => {
                    let mut m =
                        ManagerCore::new(Rank(r as u32), *parent, employees, cfg.seed ^ r as u64);
                    m.boss.set_managers(&lay.managers(employees));
                    if resourced {
                        m.boss.set_classes(classes(employees));
                    }
                    Node::Manager(m)
                }
                Role::Worker { parent } => Node::Worker(Box::new(SimWorker {
                    core: {
                        let mut w = WorkerCore::new(Rank(r as u32), *parent);
                        w.set_offers(masks[r]);
                        w
                    },
                    offers: masks[r],
                    last_progress: 0,
                    tasks: HashMap::new(),
                    busy_until: 0,
                    wake_pending: false,
                    idle: true,
                    idle_since: 0,
                    waiting: HashMap::new(),
                    kept: None,
                })),
            })
            .collect();
        let rng = SimRng::new(cfg.seed ^ 0x9E37_79B9_7F4A_7C15);
        let workers = nodes
            .iter()
            .filter(|n| matches!(n, Node::Worker(_)))
            .count();
        Sim {
            cfg,
            nodes,
            now: 0,
            epoch: std::time::Instant::now(),
            seq: 0,
            queue: BinaryHeap::new(),
            in_flight: Vec::new(),
            free: Vec::new(),
            link_last: HashMap::new(),
            rng,
            started: HashSet::new(),
            finished: HashSet::new(),
            table: JobTable::new(),
            results: HashMap::new(),
            server_ended: HashSet::new(),
            finished_counts: HashMap::new(),
            levels,
            idle_since: BTreeMap::from([(0, workers as u32)]),
            waiting_since: BTreeMap::new(),
            stats: SimStats::default(),
        }
    }

    pub fn ranks(&self) -> usize {
        self.nodes.len()
    }

    /// Links from the server down to its deepest worker.
    pub fn levels(&self) -> u64 {
        self.levels
    }

    fn server(&mut self) -> &mut ServerCore {
        match &mut self.nodes[0] {
            Node::Server(s) => s,
            _ => unreachable!("rank 0 is the server"),
        }
    }

    /// Submit a job running `script`.
    pub fn submit(&mut self, script: &Script) -> JobId {
        let mut out = Outbox::new();
        let spec = JobSpec {
            function: "script".into(),
            label: None,
            args: script.encode(),
            format: Format::Bincode,
            log: LogSpec::OFF,
        };
        let mut fx = Vec::new();
        let now = self.instant();
        let job = self.table.submit(LOCAL, spec, false, now, &mut fx);
        let result = Request::Result {
            job,
            timeout_ms: None,
        };
        self.table.on_request(LOCAL, result, now, &mut fx);
        self.carry_out(fx, &mut out);
        self.send_all(0, out);
        job
    }

    /// Cancel a job from the client side.
    pub fn cancel(&mut self, job: JobId) -> bool {
        let mut out = Outbox::new();
        let mut fx = Vec::new();
        let now = self.instant();
        self.table
            .on_request(LOCAL, Request::Cancel { job }, now, &mut fx);
        let ok = fx.iter().any(|e| {
            matches!(
                e,
                Effect::Reply(
                    _,
                    Reply::Cancelled {
                        cancelled: true,
                        ..
                    }
                )
            )
        });
        self.carry_out(fx, &mut out);
        self.send_all(0, out);
        ok
    }

    /// Simulated time as the job table sees it.
    fn instant(&self) -> std::time::Instant {
        self.epoch + std::time::Duration::from_nanos(self.now)
    }

    /// Do what the job table asks: submit and cancel at the server, note results.
    fn carry_out(&mut self, fx: Vec<Effect>, out: &mut Outbox) {
        for e in fx {
            match e {
                Effect::Submit { conn, job, spec } => {
                    let ok = self.server().submit(job, spec, out);
                    let mut more = Vec::new();
                    self.table.submitted(conn, job, ok, &mut more);
                    self.carry_out(more, out);
                }
                Effect::Cancel(job) => {
                    self.server().cancel(job, out);
                }
                Effect::Reply(_, Reply::Result { job, result }) => {
                    let r = match result {
                        JobResult::Done { value, .. } => Ok(decode_u64(&value)),
                        JobResult::Failed(f) => Err(f.message),
                        JobResult::Cancelled => Err("cancelled".into()),
                        other => Err(format!("{other:?}")),
                    };
                    let prev = self.results.insert(job, r);
                    assert!(prev.is_none(), "{job} delivered twice");
                }
                Effect::Reply(..) | Effect::Top(_) | Effect::Stop | Effect::Fatal(_) => {}
            }
        }
    }

    /// Tasks the server reported finished for an ended job.
    pub fn finished_count(&self, job: JobId) -> Option<u64> {
        self.finished_counts.get(&job).copied()
    }

    pub fn result(&self, job: JobId) -> Option<&Result<u64, String>> {
        self.results.get(&job)
    }

    fn push(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    fn send_all(&mut self, from: u32, out: Outbox) {
        for (to, msg) in out {
            self.stats.messages += 1;
            if from == 0 {
                self.stats.server_messages_out += 1;
            }
            let msg = if self.cfg.codec {
                let bytes = codec::encode(std::slice::from_ref(&msg));
                match codec::decode(&bytes) {
                    Ok(mut v) if v.len() == 1 => v.remove(0),
                    other => panic!("codec round trip failed: {other:?}"),
                }
            } else {
                msg
            };
            let delay = 1 + if self.cfg.max_delay > 0 {
                self.rng.below(self.cfg.max_delay + 1)
            } else {
                0
            };
            let last = self.link_last.entry((from, to.0)).or_insert(0);
            let at = (self.now + delay).max(*last);
            *last = at;
            let idx = match self.free.pop() {
                Some(i) => {
                    self.in_flight[i] = Some(msg);
                    i
                }
                None => {
                    self.in_flight.push(Some(msg));
                    self.in_flight.len() - 1
                }
            };
            self.push(
                at,
                Event::Deliver {
                    from,
                    to: to.0,
                    idx,
                },
            );
        }
    }

    /// Run until nothing is left to happen, or `limit` events. Returns events processed.
    pub fn run(&mut self, limit: u64) -> u64 {
        self.run_until(u64::MAX, limit)
    }

    /// Run events up to virtual time `t` (inclusive).
    pub fn run_until(&mut self, t: u64, limit: u64) -> u64 {
        let mut n = 0;
        while n < limit {
            match self.queue.peek() {
                Some(Reverse((at, _, _))) if *at <= t => {}
                _ => break,
            }
            let Some(Reverse((at, _, ev))) = self.queue.pop() else {
                break;
            };
            self.now = at;
            n += 1;
            match ev {
                Event::Deliver { from, to, idx } => {
                    let Some(msg) = self.in_flight[idx].take() else {
                        panic!("message delivered twice")
                    };
                    self.free.push(idx);
                    self.deliver(from, to, msg);
                }
                Event::Wake { rank } => self.wake(rank),
                Event::Occupy { rank, until } => self.occupy(rank, until),
            }
        }
        self.stats.end_time = self.now;
        n
    }

    fn deliver(&mut self, from: u32, to: u32, msg: Msg) {
        let mut out = Outbox::new();
        if to == 0 {
            self.stats.server_messages_in += 1;
        }
        if matches!(msg, Msg::Down(crate::protocol::Down::Steal { .. })) {
            self.stats.steals += 1;
        }
        let now = self.now;
        match &mut self.nodes[to as usize] {
            Node::Server(s) => {
                let kind = kind_of(&msg);
                *self.stats.server_in_by_kind.entry(kind).or_insert(0) += 1;
                let t = std::time::Instant::now();
                s.handle(Rank(from), msg, &mut out);
                self.stats.server_nanos += t.elapsed().as_nanos();
                s.report_progress();
                let events = s.take_events();
                let mut fx = Vec::new();
                for ev in events {
                    if let ServerEvent::Finished { job, finished, .. } = &ev {
                        self.finished_counts.insert(*job, *finished);
                        assert!(self.server_ended.insert(*job), "{job} finished twice");
                    }
                    self.table.on_event(ev, &mut fx);
                }
                self.carry_out(fx, &mut out);
            }
            Node::Manager(m) => m.handle(Rank(from), msg, &mut out),
            Node::Worker(w) => {
                w.core.handle(msg, &mut out);
                for k in w.core.take_dropped() {
                    w.tasks.remove(&k);
                }
                let wake = !w.wake_pending;
                if wake {
                    w.wake_pending = true;
                }
                let at = w.busy_until.max(now);
                self.note_worker(to);
                self.send_all(to, out);
                if wake {
                    self.push(at, Event::Wake { rank: to });
                }
                return;
            }
        }
        self.send_all(to, out);
    }

    /// Recount worker `rank`'s state for the wait-beside-idle measure: which of its tasks wait
    /// behind its computation, and whether it is idle. A pair of a waiting task and an idle
    /// worker overlaps from the later of their starts until the first of them ends, so each
    /// pair is measured when one of the two ends, against the earliest start still open on
    /// the other side.
    fn note_worker(&mut self, rank: u32) {
        let now = self.now;
        let Node::Worker(w) = &mut self.nodes[rank as usize] else {
            return;
        };
        let computing = w.busy_until > now;
        let idle = !computing && !w.core.has_ready();
        let kept = w.kept;
        let queued: HashSet<Address> = match computing {
            true => w
                .core
                .delayed_addrs()
                .filter(|a| Some(*a) != kept)
                .collect(),
            false => HashSet::new(),
        };
        let mut ended = Vec::new();
        w.waiting.retain(|a, since| {
            let keep = queued.contains(a);
            if !keep {
                ended.push(*since);
            }
            keep
        });
        for a in queued {
            if let std::collections::hash_map::Entry::Vacant(v) = w.waiting.entry(a) {
                v.insert(now);
                *self.waiting_since.entry(now).or_insert(0) += 1;
            }
        }
        let idle_ended = match (w.idle, idle) {
            (false, true) => {
                w.idle = true;
                w.idle_since = now;
                *self.idle_since.entry(now).or_insert(0) += 1;
                None
            }
            (true, false) => {
                w.idle = false;
                Some(w.idle_since)
            }
            _ => None,
        };
        for since in ended {
            take_one(&mut self.waiting_since, since);
            if let Some((&idle_from, _)) = self.idle_since.first_key_value() {
                let overlap = now - since.max(idle_from);
                self.stats.max_wait_beside_idle = self.stats.max_wait_beside_idle.max(overlap);
            }
        }
        if let Some(since) = idle_ended {
            take_one(&mut self.idle_since, since);
            if let Some((&waiting_from, _)) = self.waiting_since.first_key_value() {
                let overlap = now - since.max(waiting_from);
                self.stats.max_wait_beside_idle = self.stats.max_wait_beside_idle.max(overlap);
            }
        }
    }

    /// The driver's look at a worker inside a long task: still in it, it becomes occupied.
    fn occupy(&mut self, rank: u32, until: u64) {
        let now = self.now;
        let Node::Worker(w) = &mut self.nodes[rank as usize] else {
            return;
        };
        if w.busy_until != until || until <= now {
            return; // that task is over
        }
        let mut out = Outbox::new();
        w.core.set_occupied(true, &mut out);
        self.note_worker(rank);
        self.send_all(rank, out);
    }

    fn wake(&mut self, rank: u32) {
        let now = self.now;
        let Node::Worker(w) = &mut self.nodes[rank as usize] else {
            return;
        };
        w.wake_pending = false;
        if w.busy_until > now {
            w.wake_pending = true;
            let at = w.busy_until;
            self.push(at, Event::Wake { rank });
            return;
        }
        // the step is over: a child it kept waits from now on like any other
        w.kept = None;
        let mut out = Outbox::new();
        // the computation is over: as the executor does after a poll
        w.core.set_occupied(false, &mut out);
        if now >= w.last_progress + self.cfg.progress_every {
            w.last_progress = now;
            w.core.report_progress(&mut out);
        }
        let Some(ready) = w.core.next_ready(&mut out) else {
            self.note_worker(rank);
            self.send_all(rank, out);
            return;
        };
        let (key, elapsed) = match ready {
            Ready::Start {
                key,
                function,
                args,
                ..
            } => {
                assert_eq!(function, "script");
                let script: Script =
                    match bincode::serde::decode_from_slice(&args, bincode::config::standard()) {
                        Ok((s, _)) => s,
                        Err(e) => panic!("script args: {e}"),
                    };
                let addr = w.core.task(key).map(|t| t.addr);
                if let Some(addr) = addr {
                    assert!(self.started.insert(addr), "task {addr} started twice");
                }
                let script = match script.action {
                    Action::Needing(needs, inner) => {
                        assert_eq!(
                            needs & !w.offers,
                            0,
                            "task {addr:?} needing {needs:#x} started on rank {rank} offering {:#x}",
                            w.offers
                        );
                        self.stats.needing_started += 1;
                        *inner
                    }
                    _ => script,
                };
                self.stats.tasks_started += 1;
                let work = u64::from(script.work);
                w.tasks.insert(
                    key,
                    SimTask {
                        script,
                        stage: 0,
                        mailboxes: Vec::new(),
                        acc: 0,
                        got: 0,
                    },
                );
                (key, work)
            }
            Ready::Resume(key) => (key, 1),
        };
        let addr = w.core.task(key).map(|t| t.addr);
        let done = step(&mut w.core, &mut w.tasks, key, &mut out);
        let before = w.core.delayed_len();
        if done.is_none() && self.cfg.keep_local {
            w.core.keep_one_for_self(&mut out);
        }
        w.kept = match w.core.delayed_len() > before {
            true => w.core.delayed_addrs().last(),
            false => None,
        };
        if let (Some(done), Some(addr)) = (done, addr) {
            w.tasks.remove(&key);
            if done.is_ok() {
                assert!(self.finished.insert(addr), "task {addr} finished twice");
                self.stats.tasks_finished += 1;
            }
            w.core.finish(key, done.map(encode_u64), &mut out);
        }
        for k in w.core.take_dropped() {
            w.tasks.remove(&k);
        }
        w.busy_until = now + elapsed;
        let at = w.busy_until;
        w.wake_pending = true;
        let after = self.cfg.occupied_after;
        if after > 0 && elapsed > after {
            self.push(now + after, Event::Occupy { rank, until: at });
        }
        self.note_worker(rank);
        self.send_all(rank, out);
        self.push(at, Event::Wake { rank });
    }

    /// Panics unless the cluster is back to its initial state: no task, mailbox or job left.
    pub fn check_quiescent(&mut self) {
        assert!(self.queue.is_empty(), "events still queued");
        for (r, node) in self.nodes.iter().enumerate() {
            match node {
                Node::Server(s) => {
                    assert_eq!(s.active_jobs(), 0, "server keeps job records");
                    assert_eq!(self.table.records(), 0, "the job table keeps records");
                    assert_eq!(s.idle_workers(), s.workers(), "server idle accounting");
                }
                Node::Manager(m) => {
                    assert_eq!(
                        m.boss.idle_total(),
                        m.workers(),
                        "manager {r} idle accounting"
                    );
                }
                Node::Worker(w) => {
                    assert!(
                        w.core.is_empty(),
                        "worker {r} leaks: {} started, {} delayed, {} mailboxes",
                        w.core.started_len(),
                        w.core.delayed_len(),
                        w.core.mailboxes_len()
                    );
                    assert!(w.tasks.is_empty(), "worker {r} keeps task state");
                }
            }
        }
    }

    /// Each boss's view of its employees' idle workers: `rank: [(employee, idle/workers)]`.
    pub fn accounting(&self) -> String {
        let mut s = String::new();
        for (r, node) in self.nodes.iter().enumerate() {
            let boss = match node {
                Node::Server(x) => &x.boss,
                Node::Manager(m) => &m.boss,
                Node::Worker(_) => continue,
            };
            s += &format!("rank {r}:");
            for e in &boss.employees {
                s += &format!(" {}={}/{}", e.rank.0, e.idle, e.workers);
            }
            s += "\n";
        }
        s
    }

    /// Per-worker counters (started tasks).
    pub fn worker_started(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter_map(|n| match n {
                Node::Worker(w) => Some(w.core.stats.started),
                _ => None,
            })
            .collect()
    }

    /// Virtual time now.
    pub fn now(&self) -> u64 {
        self.now
    }
}

/// Remove one occurrence of `at` from a multiset.
fn take_one(set: &mut BTreeMap<u64, u32>, at: u64) {
    match set.get_mut(&at) {
        Some(n) if *n > 1 => *n -= 1,
        Some(_) => {
            set.remove(&at);
        }
        None => panic!("simulation bug: {at} not in the multiset"),
    }
}

fn kind_of(m: &Msg) -> &'static str {
    use crate::protocol::{Down, Peer, Up};
    match m {
        Msg::Up(Up::Submit { .. }) => "submit",
        Msg::Up(Up::Waiting { .. }) => "waiting",
        Msg::Up(Up::Stolen { .. }) => "stolen",
        Msg::Up(Up::Occupied { .. }) => "occupied",
        Msg::Peer(Peer::Result { .. }) => "result",
        Msg::Peer(Peer::Placed { .. }) => "placed",
        Msg::Peer(Peer::Progress { .. }) => "progress",
        Msg::Peer(Peer::Failed { .. }) => "failed",
        Msg::Peer(Peer::Log { .. }) => "log",
        Msg::Peer(_) => "other peer",
        Msg::Down(Down::Assign { .. } | Down::Steal { .. } | Down::Shutdown { .. }) => "down",
    }
}

fn encode_u64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn decode_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn children(c: &[Script]) -> Vec<ChildSpec> {
    c.iter()
        .map(|s| ChildSpec {
            function: "script".into(),
            label: None,
            args: s.encode(),
            format: Format::Bincode,
            context: Vec::new(),
            needs: s.needs(),
            token: None,
        })
        .collect()
}

/// Advance a scripted task until it blocks (`None`) or ends (`Some`).
fn step(
    core: &mut WorkerCore,
    tasks: &mut HashMap<TaskKey, SimTask>,
    key: TaskKey,
    out: &mut Outbox,
) -> Option<Result<u64, String>> {
    let t = tasks.get_mut(&key)?;
    let call = |r: Result<WaitPoll, crate::sched::CallError>| match r {
        Ok(p) => p,
        Err(e) => panic!("runtime call failed in a scripted task: {e}"),
    };
    match t.script.action.clone() {
        Action::Leaf => Some(Ok(1)),
        Action::Needing(..) => unreachable!("unwrapped when the task started"),
        Action::Fail => Some(Err("scripted failure".into())),
        Action::CancelMap(c) | Action::Abandon(c) => {
            let cancel = matches!(t.script.action, Action::CancelMap(_));
            let m = core.submit(key, children(&c), out).ok()?;
            if cancel {
                if let Err(e) = core.cancel(key, m, out) {
                    panic!("cancel: {e}");
                }
            }
            Some(Ok(1))
        }
        Action::MapAll(c) => {
            if t.stage == 0 {
                t.mailboxes.push(core.submit(key, children(&c), out).ok()?);
                t.stage = 1;
            }
            match call(core.wait(key, t.mailboxes[0], WaitKind::All, out)) {
                WaitPoll::All(v) => Some(Ok(1 + v.iter().map(|b| decode_u64(b)).sum::<u64>())),
                _ => None,
            }
        }
        Action::MapNext(c) => {
            if t.stage == 0 {
                t.mailboxes.push(core.submit(key, children(&c), out).ok()?);
                t.stage = 1;
            }
            loop {
                if t.got == c.len() {
                    match call(core.wait(key, t.mailboxes[0], WaitKind::All, out)) {
                        WaitPoll::All(v) => {
                            let all: u64 = v.iter().map(|b| decode_u64(b)).sum();
                            assert_eq!(all, t.acc, "next and await disagree");
                            return Some(Ok(1 + t.acc));
                        }
                        other => panic!("complete mailbox not ready: {other:?}"),
                    }
                }
                match call(core.wait(key, t.mailboxes[0], WaitKind::Next, out)) {
                    WaitPoll::Next(pairs) => {
                        assert!(!pairs.is_empty(), "next returned nothing before completion");
                        t.got += pairs.len();
                        t.acc += pairs.iter().map(|(_, b)| decode_u64(b)).sum::<u64>();
                    }
                    WaitPoll::Pending => return None,
                    WaitPoll::All(_) => unreachable!(),
                }
            }
        }
        Action::SubmitEach(c) => {
            if t.stage == 0 {
                for s in &c {
                    t.mailboxes.push(
                        core.submit(key, children(std::slice::from_ref(s)), out)
                            .ok()?,
                    );
                }
                t.stage = 1;
            }
            while (t.got) < c.len() {
                match call(core.wait(key, t.mailboxes[t.got], WaitKind::All, out)) {
                    WaitPoll::All(v) => {
                        t.acc += decode_u64(&v[0]);
                        t.got += 1;
                    }
                    _ => return None,
                }
            }
            Some(Ok(1 + t.acc))
        }
    }
}
