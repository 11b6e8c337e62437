//! The worker's scheduling state machine (sans-IO).
//!
//! It owns the tasks this worker has started, its delayed queue, and the mailboxes that tasks
//! here created. An executor (native futures, Python coroutines, or the simulator's scripted
//! tasks) drives it: it asks [`WorkerCore::next_ready`] what to run, and reports what the running
//! task does (`submit`, `wait`, `cancel`, `finish`). Messages from other ranks go to
//! [`WorkerCore::handle`]. Nothing here touches MPI, threads or clocks.
//!
//! # Invariants
//! * A task is *delayed* (bytes only, in `delayed`) or *started* (in `tasks`), never both, and
//!   leaves both exactly once: finished, cancelled or stolen.
//! * Each mailbox belongs to the started task that created it and dies with it: when a task
//!   finishes, its mailboxes that were not awaited are cancelled.
//! * `locations` of a mailbox is every rank that told us (`Placed`) it received tasks of that
//!   mailbox. A cancel goes only there. A `Placed` for a mailbox that no longer exists is answered
//!   with a `Cancel`, which closes every race between placement, stealing and cancellation
//!   without tombstones: a `Cancel` for tasks a rank does not hold is a no-op.
//! * A task that receives its last awaited result is queued once (`waiting` is cleared on wake).
//! * A delayed child with a [`Token`] leaves the queue only through its token: whichever side
//!   takes it first runs the child (this worker, or the task that submitted it, inside its own
//!   step); a child found with its token taken counts as run there.

use super::idmap::{IdMap, IdSet};
use crate::protocol::Outbox;
use crate::protocol::{
    Address, BatchSeq, Down, Failure, Format, JobId, LogRecord, LogSpec, MailboxAddr, MailboxId,
    Msg, Peer, Rank, Subtree, TaskMsg, Up,
};
use std::collections::VecDeque;
use std::sync::Arc;
use thiserror::Error;

/// A queue the boss counts at this many tasks or more is reported again each time it halves;
/// smaller ones only when they drain (measured: decision 36).
const REPORT_HALVING_FROM: u64 = 4;

/// A started task on this worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey(pub u64);

/// Errors a task gets back from runtime calls.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CallError {
    #[error("this future was cancelled or already consumed")]
    Gone,
    #[error("a future can only be awaited by the task that created it")]
    NotOwner,
    #[error("map needs at least one task")]
    EmptyMap,
    #[error("the calling task is no longer running (cancelled)")]
    TaskGone,
}

/// One child to create with `submit`/`map`.
#[derive(Clone, Debug)]
pub struct ChildSpec {
    pub function: String,
    pub label: Option<String>,
    pub args: Vec<u8>,
    pub format: Format,
    pub context: Vec<(String, String)>,
    /// Resources the child needs (`TaskMsg::needs`).
    pub needs: u64,
    /// Its token, when the submitting task may take it back without a message.
    pub token: Option<Token>,
}

/// The tokens of children that the task submitting them may take back without a message: the
/// process running that task shares them with this worker (decision 67). A child with a token
/// runs where its token was taken first.
pub trait Tokens: Send + Sync + std::fmt::Debug {
    /// Take token `index`: true when this worker now owns its child, false when the other side
    /// took it first (it runs the child inside its step).
    fn take(&self, index: u32) -> bool;
    /// This worker holds no more reference to token `index` (the other side may reuse it).
    fn release(&self, index: u32);
}

/// A child's token: its index in the table the submitting task's process shares.
#[derive(Clone, Debug)]
pub struct Token {
    pub tokens: Arc<dyn Tokens>,
    pub index: u32,
}

/// An end of the delayed queue: thieves take the oldest, the worker itself runs the newest.
#[derive(Clone, Copy)]
enum End {
    Oldest,
    Newest,
}

/// What the executor should run next.
#[derive(Debug)]
pub enum Ready {
    /// Start a task: create its future from the function and arguments.
    Start {
        key: TaskKey,
        function: String,
        args: Vec<u8>,
        format: Format,
    },
    /// Poll a suspended task again: a mailbox it waits on has what it wanted.
    Resume(TaskKey),
}

/// How a task waits on a mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitKind {
    /// Every result, in slot order; the mailbox is consumed.
    All,
    /// Results that arrived since the last `Next`, with their slots.
    Next,
}

/// Outcome of [`WorkerCore::wait`].
#[derive(Debug, PartialEq)]
pub enum WaitPoll {
    /// `All`: the values in slot order. `Next`: fresh `(slot, value)` pairs (empty when the
    /// mailbox is complete and everything was already returned).
    All(Vec<Vec<u8>>),
    Next(Vec<(u32, Vec<u8>)>),
    /// Not yet: the task is woken when it is.
    Pending,
}

#[derive(Debug)]
struct Started {
    msg: TaskMsg,
    owned: Vec<MailboxId>,
    /// Counts of this task's subtree so far (itself included).
    tasks: Subtree,
}

#[derive(Debug)]
struct Mailbox {
    owner: TaskKey,
    results: Vec<Option<Vec<u8>>>,
    received: u32,
    fresh: Vec<u32>,
    waiting: Option<WaitKind>,
    locations: Vec<Rank>,
    /// Messages sent with `communicate`, replayed to ranks learned about later (a task can start
    /// before its placement notice reaches this rank).
    sent: Vec<Vec<u8>>,
}

impl Mailbox {
    /// Record that tasks live on `at`; a rank learned about only now gets the messages it missed.
    fn add_location(&mut self, at: Rank, target: MailboxAddr, out: &mut Outbox) {
        if self.locations.contains(&at) {
            return;
        }
        self.locations.push(at);
        for msg in &self.sent {
            out.push((
                at,
                Msg::Peer(Peer::Communicate {
                    mailbox: target,
                    msg: msg.clone(),
                }),
            ));
        }
    }
}

impl Mailbox {
    fn complete(&self) -> bool {
        self.received as usize == self.results.len()
    }
}

/// Counters for tests, `top` and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub started: u64,
    pub finished: u64,
    pub failed: u64,
    pub cancelled_started: u64,
    pub cancelled_delayed: u64,
    pub stolen_from: u64,
    pub received: u64,
    /// Children kept by their submitting worker (work-first).
    pub kept: u64,
    /// Most tasks ever waiting in the delayed queue at once.
    pub max_delayed: u64,
    /// Child tasks created by tasks on this worker.
    pub submitted: u64,
}

/// A child its parent took back from the worker's queue ([`WorkerCore::claim`]).
#[derive(Debug, PartialEq)]
pub struct Claimed {
    pub slot: u32,
    pub label: Option<String>,
    pub args: Vec<u8>,
}

#[derive(Debug)]
pub struct WorkerCore {
    rank: Rank,
    boss: Rank,
    next_key: u64,
    next_mailbox: u64,
    tasks: IdMap<TaskKey, Started>,
    by_parent: IdMap<MailboxAddr, Vec<TaskKey>>,
    delayed: VecDeque<TaskMsg>,
    /// The tokens of delayed children that have one, by address.
    tokens: IdMap<Address, Token>,
    ready: VecDeque<TaskKey>,
    mailboxes: IdMap<MailboxId, Mailbox>,
    receipt: BatchSeq,
    last_waiting: Option<BatchSeq>,
    dropped: Vec<TaskKey>,
    /// Started tasks cancelled while they may still be running (their thread is computing):
    /// kept until the executor takes them from `dropped`, so what they log still reaches
    /// their job.
    cancelled: IdMap<TaskKey, TaskMsg>,
    /// Inside one task for longer than the threshold (told by the driver): queued tasks are
    /// handed back to the boss, and so is whatever arrives meanwhile.
    occupied: bool,
    /// The delayed tasks the boss counts here: the last count this worker reported, plus the
    /// overflow assigned since. The worker reports again when its queue drains or holds half of
    /// that or less (from [`REPORT_HALVING_FROM`]), so the boss's steals go where tasks wait, and
    /// when it holds more than that as a resumption runs (a child kept here waits behind it).
    told: u64,
    progress: IdMap<JobId, (u64, u64)>,
    reported_queued: u32,
    /// Resources this worker offers (`TaskMsg::needs` bits).
    offers: u64,
    /// Some task that needs resources reached the delayed queue: steals then hand back only
    /// tasks that need none (a thief may not offer what they need).
    bound: bool,
    /// A steal found less here than it asked for since the last local submit: some worker is
    /// idle for want of tasks, so the next local submit goes to the boss instead, which places
    /// it on idle workers at once.
    hungry: bool,
    pub stats: WorkerStats,
}

impl WorkerCore {
    pub fn new(rank: Rank, boss: Rank) -> WorkerCore {
        WorkerCore {
            rank,
            boss,
            next_key: 0,
            next_mailbox: 0,
            tasks: IdMap::default(),
            by_parent: IdMap::default(),
            delayed: VecDeque::new(),
            tokens: IdMap::default(),
            ready: VecDeque::new(),
            mailboxes: IdMap::default(),
            receipt: BatchSeq(0),
            last_waiting: None,
            dropped: Vec::new(),
            cancelled: IdMap::default(),
            occupied: false,
            told: 0,
            progress: IdMap::default(),
            reported_queued: 0,
            offers: 0,
            bound: false,
            hungry: false,
            stats: WorkerStats::default(),
        }
    }

    pub fn rank(&self) -> Rank {
        self.rank
    }

    /// A started task's description (arguments already handed to the executor), also while a
    /// cancelled one is still running.
    pub fn task(&self, key: TaskKey) -> Option<&TaskMsg> {
        self.tasks
            .get(&key)
            .map(|t| &t.msg)
            .or_else(|| self.cancelled.get(&key))
    }

    /// Started tasks cancelled since the last call: the executor drops their futures.
    pub fn take_dropped(&mut self) -> Vec<TaskKey> {
        for key in &self.dropped {
            self.cancelled.remove(key);
        }
        std::mem::take(&mut self.dropped)
    }

    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// Nothing started, delayed or owned: the state a worker must return to when idle.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.cancelled.is_empty()
            && self.delayed.is_empty()
            && self.mailboxes.is_empty()
            && self.by_parent.is_empty()
    }

    pub fn delayed_len(&self) -> usize {
        self.delayed.len()
    }

    /// The addresses of the delayed tasks, oldest first.
    pub fn delayed_addrs(&self) -> impl Iterator<Item = Address> + '_ {
        self.delayed.iter().map(|t| t.addr)
    }

    pub fn started_len(&self) -> usize {
        self.tasks.len()
    }

    pub fn mailboxes_len(&self) -> usize {
        self.mailboxes.len()
    }

    /// A message from another rank.
    pub fn handle(&mut self, msg: Msg, out: &mut Outbox) {
        match msg {
            Msg::Down(Down::Assign {
                seq,
                tasks,
                overflow,
                all_occupied,
            }) => {
                if overflow {
                    self.told += tasks.len() as u64;
                }
                self.on_assign(seq, tasks, all_occupied, out)
            }
            Msg::Down(Down::Steal { max }) => {
                let (tasks, left) = match self.bound {
                    false => {
                        let mut tasks = Vec::new();
                        while tasks.len() < max as usize {
                            let Some(t) = self.pop_owned(End::Oldest) else {
                                break;
                            };
                            tasks.push(t);
                        }
                        (tasks, self.delayed.len() as u64)
                    }
                    true => self.steal_free(max as usize),
                };
                self.told = self.delayed.len() as u64;
                self.stats.stolen_from += tasks.len() as u64;
                self.hungry = tasks.len() < max as usize;
                let stolen = Up::Stolen {
                    tasks,
                    left,
                    receipt: self.receipt,
                };
                out.push((self.boss, Msg::Up(stolen)));
            }
            Msg::Down(Down::Shutdown { .. }) => {}
            Msg::Up(_) => {
                log::error!(
                    "{}: a worker got a message meant for a boss; ignored",
                    self.rank
                )
            }
            Msg::Peer(Peer::Result { addr, value, tasks }) => self.deposit(addr, value, tasks),
            Msg::Peer(Peer::Placed { mailbox, at }) => self.on_placed(mailbox.mailbox, at, out),
            Msg::Peer(Peer::Cancel { mailbox }) => self.cancel_closure(vec![mailbox], out),
            // delivered by the driver straight into the started tasks' inboxes; signs of life
            // are the driver's too
            Msg::Peer(Peer::Communicate { .. } | Peer::Alive) => {}
            Msg::Peer(
                Peer::Failed { .. } | Peer::Log { .. } | Peer::Progress { .. } | Peer::Lost { .. },
            ) => {
                log::error!(
                    "{}: a worker got a message meant for the server; ignored",
                    self.rank
                )
            }
        }
    }

    /// The resources this worker offers (its group's, `topology::resources`).
    pub fn set_offers(&mut self, offers: u64) {
        self.offers = offers;
    }

    /// A steal when some delayed task needs resources: the oldest `max` tasks that need none,
    /// and how many such tasks are left (the others stay here, in order).
    fn steal_free(&mut self, max: usize) -> (Vec<TaskMsg>, u64) {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.delayed.len());
        for t in std::mem::take(&mut self.delayed) {
            match t.needs == 0 && taken.len() < max {
                true => {
                    if self.own(&t) {
                        taken.push(t);
                    }
                }
                false => kept.push_back(t),
            }
        }
        self.delayed = kept;
        let left = self.delayed.iter().filter(|t| t.needs == 0).count() as u64;
        (taken, left)
    }

    fn on_assign(
        &mut self,
        seq: BatchSeq,
        tasks: Vec<TaskMsg>,
        all_occupied: bool,
        out: &mut Outbox,
    ) {
        self.receipt = seq;
        self.stats.received += tasks.len() as u64;
        self.delayed.reserve_exact(tasks.len());
        let mut told: IdSet<MailboxAddr> = IdSet::default();
        for task in tasks {
            let parent = task.addr.mailbox_addr();
            if parent.rank == self.rank {
                match self.mailboxes.get_mut(&parent.mailbox) {
                    Some(mb) => mb.add_location(self.rank, parent, out),
                    None => {
                        // its parent's future is gone: it must never start
                        self.stats.cancelled_delayed += 1;
                        continue;
                    }
                }
            } else if told.insert(parent) {
                out.push((
                    parent.rank,
                    Msg::Peer(Peer::Placed {
                        mailbox: parent,
                        at: self.rank,
                    }),
                ));
            }
            if task.needs != 0 {
                self.bound = true;
                if task.needs & !self.offers != 0 {
                    log::error!(
                        "{}: placed a task that needs resources this worker does not offer (needs {:#x}, offers {:#x}): a runtime bug",
                        self.rank,
                        task.needs,
                        self.offers
                    );
                }
            }
            self.delayed.push_back(task);
        }
        self.stats.max_delayed = self.stats.max_delayed.max(self.delayed.len() as u64);
        // placed here while every worker was occupied: kept (a free worker steals them)
        if self.occupied && !all_occupied {
            self.hand_back(out);
        }
    }

    /// The driver's view of the executor: `occupied` when it has been inside one task for
    /// longer than the runtime's threshold. Becoming occupied hands every queued task back to
    /// the boss (with `Up::Occupied`), so nothing waits behind the long task; the boss then
    /// queues nothing here until the worker is free again, unless every worker is occupied.
    pub fn set_occupied(&mut self, occupied: bool, out: &mut Outbox) {
        if occupied == self.occupied {
            return;
        }
        self.occupied = occupied;
        if occupied {
            self.hand_back(out);
        } else {
            // ahead of what the long step itself produced (its children, say): by the time the
            // boss places those, this worker is free again
            let free = Up::Occupied {
                workers: 0,
                tasks: Vec::new(),
            };
            out.insert(0, (self.boss, Msg::Up(free)));
        }
    }

    /// Whether the driver said this worker is inside a long task.
    pub fn is_occupied(&self) -> bool {
        self.occupied
    }

    fn hand_back(&mut self, out: &mut Outbox) {
        let all: Vec<TaskMsg> = self.delayed.drain(..).collect();
        let tasks: Vec<TaskMsg> = all.into_iter().filter(|t| self.own(t)).collect();
        self.told = 0;
        self.stats.stolen_from += tasks.len() as u64;
        let msg = Up::Occupied { workers: 1, tasks };
        out.push((self.boss, Msg::Up(msg)));
    }

    fn on_placed(&mut self, mailbox: MailboxId, at: Rank, out: &mut Outbox) {
        let target = MailboxAddr {
            rank: self.rank,
            mailbox,
        };
        match self.mailboxes.get_mut(&mailbox) {
            Some(mb) => mb.add_location(at, target, out),
            None => {
                let mailbox = MailboxAddr {
                    rank: self.rank,
                    mailbox,
                };
                if at == self.rank {
                    self.cancel_closure(vec![mailbox], out);
                } else {
                    out.push((at, Msg::Peer(Peer::Cancel { mailbox })));
                }
            }
        }
    }

    fn deposit(&mut self, addr: Address, value: Vec<u8>, tasks: Subtree) {
        let Some(mb) = self.mailboxes.get_mut(&addr.mailbox) else {
            return; // cancelled: the result is dropped
        };
        let Some(slot) = mb.results.get_mut(addr.slot as usize) else {
            panic!(
                "bqrt bug: result for slot {} of a {}-slot mailbox",
                addr.slot,
                mb.results.len()
            );
        };
        assert!(
            slot.is_none(),
            "bqrt bug: task {addr} delivered two results (ran twice)"
        );
        *slot = Some(value);
        mb.received += 1;
        let owner = mb.owner;
        if let Some(t) = self.tasks.get_mut(&owner) {
            // the child was counted once when submitted
            t.tasks.spawned += tasks.spawned.saturating_sub(1);
            t.tasks.finished += tasks.finished;
        }
        let Some(mb) = self.mailboxes.get_mut(&addr.mailbox) else {
            return;
        };
        mb.fresh.push(addr.slot);
        let wake = match mb.waiting {
            Some(WaitKind::Next) => true,
            Some(WaitKind::All) => mb.complete(),
            None => false,
        };
        if wake {
            mb.waiting = None;
            self.ready.push_back(mb.owner);
        }
    }

    /// Tell the boss how many tasks are delayed here: `Waiting { idle: 0 }` when none (busy, and
    /// drained), otherwise a submission of no task, which carries the count.
    fn report_queued(&mut self, out: &mut Outbox) {
        self.told = self.delayed.len() as u64;
        // either message makes the boss count this worker busy (`Boss::on_submit`): its next
        // idle moment must say so again, even without a batch read since the last
        self.last_waiting = None;
        let msg = match self.told {
            0 => Up::Waiting {
                idle: 0,
                receipt: self.receipt,
            },
            queued => Up::Submit {
                tasks: Vec::new(),
                queued,
                receipt: self.receipt,
            },
        };
        out.push((self.boss, Msg::Up(msg)));
    }

    /// What to run next. When there is nothing, tells the boss this worker is idle (once per
    /// batch read) and returns `None`.
    pub fn next_ready(&mut self, out: &mut Outbox) -> Option<Ready> {
        while let Some(key) = self.ready.pop_front() {
            if self.tasks.contains_key(&key) {
                if self.delayed.len() as u64 > self.told {
                    // a child kept here (work-first) now waits behind this resumption, and the
                    // boss does not count it: say so, so that an idle worker can take it
                    self.report_queued(out);
                }
                return Some(Ready::Resume(key));
            }
        }
        if let Some(mut msg) = self.pop_owned(End::Newest) {
            // busy, and the queue drained, or went down by half or more since the boss last
            // heard: its estimate becomes exact again, so its steals go where tasks wait
            self.report_shrunk(out);
            self.next_key += 1;
            let key = TaskKey(self.next_key);
            let args = std::mem::take(&mut msg.args);
            let function = msg.function.clone();
            let format = msg.format;
            self.by_parent
                .entry(msg.addr.mailbox_addr())
                .or_default()
                .push(key);
            self.tasks.insert(
                key,
                Started {
                    msg,
                    owned: Vec::new(),
                    tasks: Subtree {
                        spawned: 1,
                        finished: 1,
                    },
                },
            );
            self.stats.started += 1;
            return Some(Ready::Start {
                key,
                function,
                args,
                format,
            });
        }
        if self.last_waiting != Some(self.receipt) {
            self.last_waiting = Some(self.receipt);
            out.push((
                self.boss,
                Msg::Up(Up::Waiting {
                    idle: 1,
                    receipt: self.receipt,
                }),
            ));
        }
        None
    }

    /// Queue a started task to be polled again although nothing it awaits arrived (it waits on
    /// something outside the runtime too).
    pub fn wake(&mut self, key: TaskKey) {
        if self.tasks.contains_key(&key) && !self.ready.contains(&key) {
            self.ready.push_back(key);
        }
    }

    /// Work-first: the running task just suspended and this worker has nothing else to run, so
    /// instead of sending every child it submitted to the boss and idling, keep the last one
    /// submitted (the one a batch would start first) and run it here. Saves a round trip per
    /// level of nesting and keeps the subtree's data on this worker. Called by the executor after
    /// a poll that returned pending, with that poll's unsent messages.
    pub fn keep_one_for_self(&mut self, out: &mut Outbox) {
        if self.has_ready() {
            return;
        }
        let boss = self.boss;
        let Some(i) = out
            .iter()
            .rposition(|(to, m)| *to == boss && matches!(m, Msg::Up(Up::Submit { .. })))
        else {
            return;
        };
        let offers = self.offers;
        let task = match &mut out[i].1 {
            // a child that needs what this worker does not offer goes to the boss
            Msg::Up(Up::Submit { tasks, .. })
                if tasks.last().is_some_and(|t| t.needs & !offers == 0) =>
            {
                tasks.pop()
            }
            _ => None,
        };
        if matches!(&out[i].1, Msg::Up(Up::Submit { tasks, .. }) if tasks.is_empty()) {
            out.remove(i);
        }
        if let Some(task) = task {
            let target = task.addr.mailbox_addr();
            if let Some(mb) = self.mailboxes.get_mut(&task.addr.mailbox) {
                mb.add_location(self.rank, target, out);
                self.stats.kept += 1;
                self.bound |= task.needs != 0;
                self.delayed.push_back(task);
            }
        }
    }

    /// Send the server the task counts gathered since the last report, and the queue length, if
    /// anything changed. The driver calls it on a timer (the executor every
    /// [`crate::executor::progress_interval`]), so the server's load from reports is bounded by
    /// the number of workers, not by the number of tasks.
    pub fn report_progress(&mut self, out: &mut Outbox) {
        let queued = self.delayed.len() as u32;
        if self.progress.is_empty() && queued == self.reported_queued {
            return;
        }
        self.reported_queued = queued;
        let jobs = self
            .progress
            .drain()
            .map(|(job, (spawned, finished))| crate::protocol::JobProgress {
                job,
                spawned,
                finished,
            })
            .collect();
        out.push((Rank::SERVER, Msg::Peer(Peer::Progress { queued, jobs })));
    }

    /// True when `next_ready` would return something.
    pub fn has_ready(&self) -> bool {
        !self.delayed.is_empty() || self.ready.iter().any(|k| self.tasks.contains_key(k))
    }

    /// A running task submits children; they go to the boss for placement. Returns the new
    /// mailbox, which has one slot per child in order.
    pub fn submit(
        &mut self,
        parent: TaskKey,
        children: Vec<ChildSpec>,
        out: &mut Outbox,
    ) -> Result<MailboxId, CallError> {
        self.submit_to(parent, children, false, out)
    }

    /// A running task submits children and keeps them in this worker's queue (those it can
    /// run; the others go to the boss), where it may [`claim`](Self::claim) them back to run
    /// them inside its own step, and where idle workers steal them meanwhile: the boss hears of
    /// the queue when it counted none here. What the Python layer submits (decision 64).
    pub fn submit_local(
        &mut self,
        parent: TaskKey,
        children: Vec<ChildSpec>,
        out: &mut Outbox,
    ) -> Result<MailboxId, CallError> {
        self.submit_to(parent, children, true, out)
    }

    fn submit_to(
        &mut self,
        parent: TaskKey,
        children: Vec<ChildSpec>,
        local: bool,
        out: &mut Outbox,
    ) -> Result<MailboxId, CallError> {
        if children.is_empty() {
            return Err(CallError::EmptyMap);
        }
        let rank = self.rank;
        let Some(p) = self.tasks.get_mut(&parent) else {
            return Err(CallError::TaskGone);
        };
        self.next_mailbox += 1;
        let mailbox = MailboxId(self.next_mailbox);
        p.owned.push(mailbox);
        let breadcrumbs = p.msg.breadcrumbs.pushed(p.msg.addr);
        let n = children.len();
        self.stats.submitted += n as u64;
        p.tasks.spawned += n as u64;
        self.progress.entry(p.msg.job).or_default().0 += n as u64;
        let mut tokens: Vec<Option<Token>> = Vec::with_capacity(n);
        let tasks: Vec<TaskMsg> = children
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                tokens.push(c.token);
                let mut context = p.msg.context.clone();
                for (k, v) in c.context {
                    match context.iter_mut().find(|(ek, _)| *ek == k) {
                        Some(e) => e.1 = v,
                        None => context.push((k, v)),
                    }
                }
                TaskMsg {
                    addr: Address {
                        rank,
                        mailbox,
                        slot: i as u32,
                    },
                    job: p.msg.job,
                    function: c.function,
                    label: c.label,
                    args: c.args,
                    format: c.format,
                    breadcrumbs: breadcrumbs.clone(),
                    log: p.msg.log,
                    context,
                    needs: c.needs,
                }
            })
            .collect();
        self.mailboxes.insert(
            mailbox,
            Mailbox {
                owner: parent,
                results: (0..n).map(|_| None).collect(),
                received: 0,
                fresh: Vec::new(),
                waiting: None,
                locations: Vec::new(),
                sent: Vec::new(),
            },
        );
        let tasks: Vec<(TaskMsg, Option<Token>)> = tasks.into_iter().zip(tokens).collect();
        let hungry = std::mem::take(&mut self.hungry);
        let up = match local {
            false => tasks,
            true => {
                // After a steal found the queue short, children go to the boss, placed on idle
                // workers at once; not those with a token: their task may take them back and
                // go on computing, and what goes to the boss leaves only as its step ends (a
                // cancel in the same step takes it back before it leaves). Idle workers steal
                // those instead.
                let offers = self.offers;
                let (kept, up): (Vec<_>, Vec<_>) = tasks
                    .into_iter()
                    .partition(|(t, token)| t.needs & !offers == 0 && (!hungry || token.is_some()));
                let report = up.is_empty();
                let kept = kept
                    .into_iter()
                    .map(|(t, token)| {
                        if let Some(token) = token {
                            self.tokens.insert(t.addr, token);
                        }
                        t
                    })
                    .collect();
                self.keep(mailbox, kept, report, out);
                up
            }
        };
        // a child that leaves this worker is this worker's only once it took its token
        let tasks: Vec<TaskMsg> = up
            .into_iter()
            .filter_map(|(t, token)| match token {
                Some(token) => self.own_token(&t, token).then_some(t),
                None => Some(t),
            })
            .collect();
        if tasks.is_empty() {
            return Ok(mailbox);
        }
        self.told = self.delayed.len() as u64;
        self.last_waiting = None; // as in `report_queued`
        let submit = Up::Submit {
            tasks,
            queued: self.told,
            receipt: self.receipt,
        };
        out.push((self.boss, Msg::Up(submit)));
        Ok(mailbox)
    }

    /// Put a running task's children of `mailbox` in this worker's queue (where it may claim
    /// them, and idle workers steal them); with `report`, tell the boss when it counts no task
    /// here.
    fn keep(&mut self, mailbox: MailboxId, kept: Vec<TaskMsg>, report: bool, out: &mut Outbox) {
        if kept.is_empty() {
            return;
        }
        let rank = self.rank;
        let target = MailboxAddr { rank, mailbox };
        if let Some(mb) = self.mailboxes.get_mut(&mailbox) {
            mb.add_location(rank, target, out);
        }
        self.stats.kept += kept.len() as u64;
        self.bound |= kept.iter().any(|t| t.needs != 0);
        self.delayed.extend(kept);
        let n = self.delayed.len() as u64;
        self.stats.max_delayed = self.stats.max_delayed.max(n);
        if report && self.told == 0 {
            // the boss counts no task here: an idle worker's steal should come here (a report
            // at each growth kept the transport thread busy beside the step: decision 64)
            self.report_queued(out);
        }
    }

    /// Whether this worker may take the delayed child `t` out of its queue to run or send it:
    /// yes when it has no token or this worker took its token; otherwise the task that
    /// submitted it took it, to run it inside its step, and it counts as run there.
    fn own(&mut self, t: &TaskMsg) -> bool {
        if self.tokens.is_empty() {
            return true;
        }
        match self.tokens.remove(&t.addr) {
            Some(token) => self.own_token(t, token),
            None => true,
        }
    }

    /// The oldest or newest delayed child this worker may take ([`own`](Self::own)); the
    /// children passed over on the way ran inside their task and leave the queue.
    fn pop_owned(&mut self, end: End) -> Option<TaskMsg> {
        loop {
            let t = match end {
                End::Oldest => self.delayed.pop_front(),
                End::Newest => self.delayed.pop_back(),
            }?;
            if self.own(&t) {
                return Some(t);
            }
        }
    }

    fn own_token(&mut self, t: &TaskMsg, token: Token) -> bool {
        let mine = token.tokens.take(token.index);
        token.tokens.release(token.index);
        if !mine {
            if let Some(owner) = self.mailboxes.get(&t.addr.mailbox).map(|mb| mb.owner) {
                self.ran_inside(owner, t.addr.mailbox, t);
            }
        }
        mine
    }

    /// Before its owner claims from, awaits or cancels `mailbox`: its delayed children whose
    /// tokens the owner took ran inside its step and leave the queue; the others are this
    /// worker's from now on (their tokens taken here).
    fn settle(&mut self, mailbox: MailboxId, out: &mut Outbox) {
        if self.tokens.is_empty() {
            return;
        }
        let rank = self.rank;
        let ours = |t: &TaskMsg| t.addr.rank == rank && t.addr.mailbox == mailbox;
        if !self
            .delayed
            .iter()
            .any(|t| ours(t) && self.tokens.contains_key(&t.addr))
        {
            return;
        }
        for t in std::mem::take(&mut self.delayed) {
            if !ours(&t) || self.own(&t) {
                self.delayed.push_back(t);
            }
        }
        // the boss's count of this queue stays true, as after a claim
        self.report_shrunk(out);
    }

    /// A child of `mailbox` ran inside the step of its owner `task` (claimed, or taken back by its token).
    fn ran_inside(&mut self, task: TaskKey, mailbox: MailboxId, child: &TaskMsg) {
        let Some(mb) = self.mailboxes.get_mut(&mailbox) else {
            return;
        };
        match mb.results.get_mut(child.addr.slot as usize) {
            Some(r) if r.is_none() => *r = Some(Vec::new()),
            _ => panic!("bqrt bug: claimed task {} was already done", child.addr),
        }
        mb.received += 1;
        self.stats.started += 1;
        self.stats.finished += 1;
        self.progress.entry(child.job).or_default().1 += 1;
        if let Some(t) = self.tasks.get_mut(&task) {
            t.tasks.finished += 1;
        }
    }

    /// A running task takes back the last child of its own mailbox that still waits in this
    /// worker's queue, to run it inside its own step: `(slot, name, args)`, or `None` when
    /// none waits here (they started, were stolen or handed back). The slot counts as received
    /// with an empty value (the task has the real one) and the child as started and finished.
    pub fn claim(
        &mut self,
        task: TaskKey,
        mailbox: MailboxId,
        out: &mut Outbox,
    ) -> Result<Option<Claimed>, CallError> {
        let rank = self.rank;
        let mb = self.mailboxes.get(&mailbox).ok_or(CallError::Gone)?;
        if mb.owner != task {
            return Err(CallError::NotOwner);
        }
        self.settle(mailbox, out);
        let Some(at) = self
            .delayed
            .iter()
            .rposition(|t| t.addr.rank == rank && t.addr.mailbox == mailbox)
        else {
            return Ok(None);
        };
        let Some(child) = self.delayed.remove(at) else {
            return Ok(None);
        };
        let slot = child.addr.slot;
        self.ran_inside(task, mailbox, &child);
        self.report_shrunk(out);
        Ok(Some(Claimed {
            slot,
            label: child.label,
            args: child.args,
        }))
    }

    /// The queue shrank: tell the boss when it drained or holds half or less of what the boss
    /// counts, so its estimate is exact again and its steals go where tasks wait.
    fn report_shrunk(&mut self, out: &mut Outbox) {
        let left = self.delayed.len() as u64;
        let halved = self.told >= REPORT_HALVING_FROM && left <= self.told / 2;
        if self.told > 0 && (left == 0 || halved) {
            self.report_queued(out);
        }
    }

    /// A running task awaits a mailbox.
    pub fn wait(
        &mut self,
        task: TaskKey,
        mailbox: MailboxId,
        kind: WaitKind,
        out: &mut Outbox,
    ) -> Result<WaitPoll, CallError> {
        let Some(mb) = self.mailboxes.get_mut(&mailbox) else {
            return Err(CallError::Gone);
        };
        if mb.owner != task {
            return Err(CallError::NotOwner);
        }
        self.settle(mailbox, out);
        let Some(mb) = self.mailboxes.get_mut(&mailbox) else {
            return Err(CallError::Gone);
        };
        match kind {
            WaitKind::All if mb.complete() => {
                let mb = self.mailboxes.remove(&mailbox).ok_or(CallError::Gone)?;
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.owned.retain(|&m| m != mailbox);
                }
                let values = mb
                    .results
                    .into_iter()
                    .map(|r| r.unwrap_or_default())
                    .collect();
                Ok(WaitPoll::All(values))
            }
            WaitKind::Next if !mb.fresh.is_empty() || mb.complete() => {
                let fresh = std::mem::take(&mut mb.fresh);
                let pairs = fresh
                    .into_iter()
                    .map(|s| (s, mb.results[s as usize].clone().unwrap_or_default()))
                    .collect();
                Ok(WaitPoll::Next(pairs))
            }
            _ => {
                mb.waiting = Some(kind);
                Ok(WaitPoll::Pending)
            }
        }
    }

    /// A running task sends `msg` to the tasks of one of its futures, wherever they run (the
    /// ranks that reported holding them; tasks still in flight miss it, as do delayed and
    /// finished ones, which is BQSKit's `communicate` semantics).
    pub fn communicate(
        &mut self,
        task: TaskKey,
        mailbox: MailboxId,
        msg: Vec<u8>,
        out: &mut Outbox,
    ) -> Result<(), CallError> {
        let mb = self.mailboxes.get_mut(&mailbox).ok_or(CallError::Gone)?;
        if mb.owner != task {
            return Err(CallError::NotOwner);
        }
        let target = MailboxAddr {
            rank: self.rank,
            mailbox,
        };
        for &at in &mb.locations {
            out.push((
                at,
                Msg::Peer(Peer::Communicate {
                    mailbox: target,
                    msg: msg.clone(),
                }),
            ));
        }
        mb.sent.push(msg);
        Ok(())
    }

    /// A running task cancels one of its futures: its mailbox goes away now (later results are
    /// dropped) and the cancel goes to every rank holding its tasks.
    pub fn cancel(
        &mut self,
        task: TaskKey,
        mailbox: MailboxId,
        out: &mut Outbox,
    ) -> Result<(), CallError> {
        match self.mailboxes.get(&mailbox) {
            None => return Err(CallError::Gone),
            Some(mb) if mb.owner != task => return Err(CallError::NotOwner),
            Some(_) => {}
        }
        self.settle(mailbox, out);
        if let Some(t) = self.tasks.get_mut(&task) {
            t.owned.retain(|&m| m != mailbox);
        }
        let mut local = Vec::new();
        self.drop_mailbox(mailbox, &mut local, out);
        self.cancel_closure(local, out);
        Ok(())
    }

    /// Remove a mailbox and send its cancel where its tasks live (`local` collects this rank).
    fn drop_mailbox(&mut self, mailbox: MailboxId, local: &mut Vec<MailboxAddr>, out: &mut Outbox) {
        if let Some(mb) = self.mailboxes.remove(&mailbox) {
            let target = MailboxAddr {
                rank: self.rank,
                mailbox,
            };
            if mb.locations.is_empty() {
                // its tasks may not have left yet (submitted and cancelled in one step): they
                // never go out, rather than travel to a boss and back to be dropped
                self.unsubmit(target, out);
            }
            for at in mb.locations {
                if at == self.rank {
                    local.push(target);
                } else {
                    out.push((at, Msg::Peer(Peer::Cancel { mailbox: target })));
                }
            }
        }
    }

    /// Take the tasks of `mailbox` out of the submissions not yet sent.
    fn unsubmit(&mut self, mailbox: MailboxAddr, out: &mut Outbox) {
        let boss = self.boss;
        let mut removed = 0;
        out.retain_mut(|(to, m)| match m {
            Msg::Up(Up::Submit { tasks, .. }) if *to == boss => {
                let before = tasks.len();
                tasks.retain(|t| t.addr.mailbox_addr() != mailbox);
                removed += before - tasks.len();
                !tasks.is_empty()
            }
            _ => true,
        });
        self.stats.cancelled_delayed += removed as u64;
    }

    /// Cancel, on this rank, every task whose return address is in one of `roots` and every
    /// descendant reachable from them; remote descendants get a `Cancel` message.
    fn cancel_closure(&mut self, roots: Vec<MailboxAddr>, out: &mut Outbox) {
        if roots.is_empty() {
            return; // the common case on every finish: nothing to scan
        }
        let mut work = roots;
        let mut all: IdSet<MailboxAddr> = IdSet::default();
        while let Some(mb) = work.pop() {
            if !all.insert(mb) {
                continue;
            }
            for key in self.by_parent.remove(&mb).unwrap_or_default() {
                if let Some(t) = self.tasks.remove(&key) {
                    self.stats.cancelled_started += 1;
                    self.dropped.push(key);
                    self.cancelled.insert(key, t.msg);
                    for m in t.owned {
                        self.drop_mailbox(m, &mut work, out);
                    }
                }
            }
        }
        let before = self.delayed.len();
        self.delayed
            .retain(|t| !all.contains(&t.addr.mailbox_addr()));
        if !self.tokens.is_empty() {
            self.tokens.retain(|a, token| {
                let keep = !all.contains(&a.mailbox_addr());
                if !keep {
                    token.tokens.release(token.index);
                }
                keep
            });
        }
        self.stats.cancelled_delayed += (before - self.delayed.len()) as u64;
    }

    /// A started task finished. Its un-awaited children are cancelled; its result goes to its
    /// return address, or its failure to the server.
    pub fn finish(&mut self, key: TaskKey, outcome: Result<Vec<u8>, String>, out: &mut Outbox) {
        let Some(t) = self.retire(key, out) else {
            return; // cancelled while running: the result is dropped
        };
        match outcome {
            Ok(value) => {
                self.stats.finished += 1;
                self.progress.entry(t.msg.job).or_default().1 += 1;
                if t.msg.addr.rank == self.rank {
                    self.deposit(t.msg.addr, value, t.tasks);
                } else {
                    if t.msg.addr.rank == Rank::SERVER {
                        // the server sees the job's live counts before its end
                        self.report_progress(out);
                    }
                    out.push((
                        t.msg.addr.rank,
                        Msg::Peer(Peer::Result {
                            addr: t.msg.addr,
                            value,
                            tasks: t.tasks,
                        }),
                    ));
                }
            }
            Err(message) => {
                self.stats.failed += 1;
                let failure = Failure {
                    task: t.msg.name().to_string(),
                    addr: t.msg.addr,
                    message,
                    rank: self.rank,
                };
                out.push((
                    Rank::SERVER,
                    Msg::Peer(Peer::Failed {
                        job: t.msg.job,
                        failure,
                    }),
                ));
            }
        }
    }

    /// A started task ended after a cancel reached it through the transport (of its own return
    /// mailbox or an ancestor's) but before the core removed it: its subtree is being cancelled
    /// and nothing waits for it, so its end, a failure above all (`TaskCancelled`, or whatever
    /// the cancel made it raise), is not its job's. The core's own cancel follows (the
    /// ancestor's rank sends it); until then the task is only retired here.
    pub fn abandon(&mut self, key: TaskKey, out: &mut Outbox) {
        if self.retire(key, out).is_some() {
            self.stats.cancelled_started += 1;
        }
    }

    /// Take a started task out of the core; its mailboxes are dropped and their tasks
    /// cancelled.
    fn retire(&mut self, key: TaskKey, out: &mut Outbox) -> Option<Started> {
        let mut t = self.tasks.remove(&key)?;
        let parent = t.msg.addr.mailbox_addr();
        if let Some(v) = self.by_parent.get_mut(&parent) {
            v.retain(|&k| k != key);
            if v.is_empty() {
                self.by_parent.remove(&parent);
            }
        }
        let mut local = Vec::new();
        for m in std::mem::take(&mut t.owned) {
            self.drop_mailbox(m, &mut local, out);
        }
        self.cancel_closure(local, out);
        Some(t)
    }

    /// A log record from a running task, if its job's filter lets it through.
    pub fn log(
        &mut self,
        key: TaskKey,
        level: u8,
        target: &str,
        message: String,
        out: &mut Outbox,
    ) {
        let Some(msg) = self
            .tasks
            .get(&key)
            .map(|t| &t.msg)
            .or_else(|| self.cancelled.get(&key))
        else {
            return;
        };
        if !log_enabled(&msg.log, msg.depth(), level) {
            return;
        }
        let record = LogRecord {
            level,
            target: target.to_string(),
            message,
            task: msg.name().to_string(),
            depth: msg.depth(),
            rank: self.rank,
            context: msg.context.clone(),
        };
        out.push((
            Rank::SERVER,
            Msg::Peer(Peer::Log {
                job: msg.job,
                record,
            }),
        ));
    }

    /// The job and log filter of a started task.
    pub fn log_filter(&self, key: TaskKey) -> Option<(JobId, LogSpec, u32)> {
        self.tasks
            .get(&key)
            .map(|t| (t.msg.job, t.msg.log, t.msg.depth()))
    }
}

/// Whether a record at `level` from a task at `depth` passes the job's filter.
pub fn log_enabled(spec: &LogSpec, depth: u32, level: u8) -> bool {
    level != 0 && level <= spec.level && spec.max_depth.is_none_or(|d| depth <= d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MailboxId;

    fn root_task(_rank: Rank) -> TaskMsg {
        TaskMsg {
            addr: Address {
                rank: Rank::SERVER,
                mailbox: MailboxId(1),
                slot: 0,
            },
            job: JobId(1),
            function: "root".into(),
            label: None,
            args: vec![],
            format: Format::Bincode,
            breadcrumbs: crate::protocol::Breadcrumbs::new(),
            log: LogSpec {
                level: 3,
                max_depth: Some(0),
            },
            context: vec![],
            needs: 0,
        }
    }

    fn child() -> ChildSpec {
        ChildSpec {
            function: "c".into(),
            label: None,
            args: vec![],
            format: Format::Bincode,
            context: vec![],
            needs: 0,
            token: None,
        }
    }

    /// A worker running the root task; returns (core, root key).
    fn running() -> (WorkerCore, TaskKey) {
        let mut w = WorkerCore::new(Rank(1), Rank::SERVER);
        let mut out = Outbox::new();
        w.handle(
            Msg::Down(Down::Assign {
                seq: BatchSeq(1),
                tasks: vec![root_task(Rank(1))],
                overflow: false,
                all_occupied: false,
            }),
            &mut out,
        );
        match w.next_ready(&mut out) {
            Some(Ready::Start { key, .. }) => (w, key),
            r => panic!("{r:?}"),
        }
    }

    /// A worker running the root task, which just mapped `n` children.
    fn running_with_map(n: usize) -> (WorkerCore, TaskKey, MailboxId, Outbox) {
        let (mut w, root) = running();
        let mut out = Outbox::new();
        let m = w
            .submit(root, (0..n).map(|_| child()).collect(), &mut out)
            .unwrap();
        (w, root, m, out)
    }

    fn result(mailbox: MailboxId, slot: u32, v: u8) -> Msg {
        Msg::Peer(Peer::Result {
            addr: Address {
                rank: Rank(1),
                mailbox,
                slot,
            },
            value: vec![v],
            tasks: Subtree::default(),
        })
    }

    #[test]
    fn children_cancelled_in_the_step_that_submitted_them_never_leave() {
        let (mut w, root, m, mut out) = running_with_map(3);
        w.cancel(root, m, &mut out).unwrap();
        assert!(
            !out.iter()
                .any(|(_, m)| matches!(m, Msg::Up(Up::Submit { .. }))),
            "{out:?}"
        );
        assert_eq!(w.stats().cancelled_delayed, 3);
    }

    #[test]
    fn next_returns_results_that_already_arrived_without_waiting() {
        let (mut w, root, m, mut out) = running_with_map(3);
        w.handle(result(m, 2, 20), &mut out);
        w.handle(result(m, 0, 0), &mut out);
        assert_eq!(
            w.wait(root, m, WaitKind::Next, &mut out),
            Ok(WaitPoll::Next(vec![(2, vec![20]), (0, vec![0])]))
        );
        assert_eq!(
            w.wait(root, m, WaitKind::Next, &mut out),
            Ok(WaitPoll::Pending)
        );
        w.handle(result(m, 1, 10), &mut out);
        assert!(
            matches!(w.next_ready(&mut out), Some(Ready::Resume(k)) if k == root),
            "woken by the arrival"
        );
        assert_eq!(
            w.wait(root, m, WaitKind::Next, &mut out),
            Ok(WaitPoll::Next(vec![(1, vec![10])]))
        );
        assert_eq!(
            w.wait(root, m, WaitKind::Next, &mut out),
            Ok(WaitPoll::Next(vec![])),
            "complete and consumed"
        );
        assert_eq!(
            w.wait(root, m, WaitKind::All, &mut out),
            Ok(WaitPoll::All(vec![vec![0], vec![10], vec![20]]))
        );
        assert_eq!(
            w.wait(root, m, WaitKind::All, &mut out),
            Err(CallError::Gone)
        );
    }

    #[test]
    fn only_the_owner_may_wait_and_cancelled_futures_are_gone() {
        let (mut w, root) = running();
        let mut out = Outbox::new();
        let m = w.submit(root, vec![child()], &mut out).unwrap();
        assert_eq!(
            w.wait(TaskKey(999), m, WaitKind::All, &mut out),
            Err(CallError::NotOwner)
        );
        w.cancel(root, m, &mut out).unwrap();
        assert_eq!(
            w.wait(root, m, WaitKind::All, &mut out),
            Err(CallError::Gone)
        );
        w.handle(result(m, 0, 1), &mut out); // a late result is dropped
        assert!(
            w.submit(root, vec![], &mut out).is_err(),
            "empty map refused"
        );
    }

    #[test]
    fn a_placed_notice_for_a_dead_mailbox_is_answered_with_cancel() {
        let (mut w, root) = running();
        let mut out = Outbox::new();
        let m = w.submit(root, vec![child()], &mut out).unwrap();
        w.cancel(root, m, &mut out).unwrap();
        out.clear();
        let mailbox = MailboxAddr {
            rank: Rank(1),
            mailbox: m,
        };
        w.handle(
            Msg::Peer(Peer::Placed {
                mailbox,
                at: Rank(7),
            }),
            &mut out,
        );
        assert_eq!(out, vec![(Rank(7), Msg::Peer(Peer::Cancel { mailbox }))]);
    }

    /// The root, with one child placed on each of `at` (told by `Placed`).
    fn running_with_placed(at: &[u32]) -> (WorkerCore, TaskKey, MailboxAddr, Outbox) {
        let (mut w, root) = running();
        let mut out = Outbox::new();
        let children = at.iter().map(|_| child()).collect();
        let m = w.submit(root, children, &mut out).unwrap();
        let mailbox = MailboxAddr {
            rank: Rank(1),
            mailbox: m,
        };
        for &r in at {
            w.handle(
                Msg::Peer(Peer::Placed {
                    mailbox,
                    at: Rank(r),
                }),
                &mut out,
            );
        }
        out.clear();
        (w, root, mailbox, out)
    }

    #[test]
    fn finishing_cancels_unawaited_children_where_they_were_placed() {
        let (mut w, root, mailbox, mut out) = running_with_placed(&[3, 4]);
        w.finish(root, Ok(vec![9]), &mut out);
        assert!(out.contains(&(Rank(3), Msg::Peer(Peer::Cancel { mailbox }))));
        assert!(out.contains(&(Rank(4), Msg::Peer(Peer::Cancel { mailbox }))));
        assert!(out
            .iter()
            .any(|(to, m)| *to == Rank::SERVER && matches!(m, Msg::Peer(Peer::Result { .. }))));
        assert!(w.is_empty());
    }

    #[test]
    fn an_abandoned_task_reports_nothing_and_cancels_its_children() {
        let (mut w, root, mailbox, mut out) = running_with_placed(&[3]);
        w.abandon(root, &mut out);
        assert_eq!(out, vec![(Rank(3), Msg::Peer(Peer::Cancel { mailbox }))]);
        assert!(w.is_empty());
        assert_eq!(w.stats().cancelled_started, 1);
        // the cancel that follows, and a late finish, find nothing
        out.clear();
        w.finish(root, Err("cancelled".into()), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_worker_about_to_idle_keeps_one_child() {
        let (mut w, root, m, mut out) = running_with_map(3);
        assert_eq!(
            w.wait(root, m, WaitKind::All, &mut out),
            Ok(WaitPoll::Pending)
        );
        w.keep_one_for_self(&mut out);
        match &out[..] {
            [(to, Msg::Up(Up::Submit { tasks, .. }))] => {
                assert_eq!(*to, Rank::SERVER);
                assert_eq!(
                    tasks.iter().map(|t| t.addr.slot).collect::<Vec<_>>(),
                    vec![0, 1]
                );
            }
            o => panic!("{o:?}"),
        }
        assert!(
            matches!(w.next_ready(&mut out), Some(Ready::Start { .. })),
            "runs the kept child here"
        );
    }

    #[test]
    fn a_message_reaches_ranks_learned_about_later() {
        let (mut w, root, m, mut out) = running_with_map(2);
        let mailbox = MailboxAddr {
            rank: Rank(1),
            mailbox: m,
        };
        let placed = |at: u32| {
            Msg::Peer(Peer::Placed {
                mailbox,
                at: Rank(at),
            })
        };
        let message_to = |at: u32| {
            vec![(
                Rank(at),
                Msg::Peer(Peer::Communicate {
                    mailbox,
                    msg: vec![7],
                }),
            )]
        };
        w.handle(placed(3), &mut out);
        out.clear();
        w.communicate(root, m, vec![7], &mut out).unwrap();
        assert_eq!(out, message_to(3));
        out.clear();
        // a task that started on rank 4 before its placement notice arrived gets it too
        w.handle(placed(4), &mut out);
        assert_eq!(out, message_to(4));
        out.clear();
        w.handle(placed(4), &mut out);
        assert!(out.is_empty(), "once per rank");
        assert_eq!(
            w.communicate(TaskKey(99), m, vec![1], &mut out),
            Err(CallError::NotOwner)
        );
    }

    #[test]
    fn log_filter_by_level_and_depth() {
        let spec = LogSpec {
            level: 3,
            max_depth: Some(1),
        };
        assert!(log_enabled(&spec, 0, 1));
        assert!(log_enabled(&spec, 1, 3));
        assert!(!log_enabled(&spec, 1, 4));
        assert!(!log_enabled(&spec, 2, 1));
        assert!(!log_enabled(&LogSpec::OFF, 0, 1));
    }

    /// Batch `seq` to `w`: `n` root tasks of mailboxes 10, 11, ...
    fn assign_roots(w: &mut WorkerCore, seq: u64, n: u64, overflow: bool, out: &mut Outbox) {
        let tasks: Vec<TaskMsg> = (0..n)
            .map(|i| {
                let mut t = root_task(Rank(1));
                t.addr.mailbox = MailboxId(10 + i);
                t
            })
            .collect();
        let assign = Down::Assign {
            seq: BatchSeq(seq),
            tasks,
            overflow,
            all_occupied: false,
        };
        w.handle(Msg::Down(assign), out);
    }

    #[test]
    fn a_steal_hands_back_only_tasks_that_need_nothing() {
        let mut w = WorkerCore::new(Rank(2), Rank(1));
        w.set_offers(1);
        let mut out = Outbox::new();
        let tasks: Vec<TaskMsg> = (0..6)
            .map(|i| TaskMsg {
                needs: if i % 2 == 0 { 1 } else { 0 },
                ..root_task(Rank(2))
            })
            .collect();
        w.handle(
            Msg::Down(Down::Assign {
                seq: BatchSeq(1),
                tasks,
                overflow: true,
                all_occupied: false,
            }),
            &mut out,
        );
        out.clear();
        w.handle(Msg::Down(Down::Steal { max: 2 }), &mut out);
        match &out[..] {
            [(_, Msg::Up(Up::Stolen { tasks, left, .. }))] => {
                assert_eq!(tasks.len(), 2);
                assert!(tasks.iter().all(|t| t.needs == 0));
                assert_eq!(*left, 1, "one more that needs nothing");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(w.delayed_len(), 4);
    }

    #[test]
    fn a_worker_keeps_no_child_it_cannot_run() {
        let (mut w, key) = running();
        let needing = || ChildSpec {
            needs: 4,
            ..child()
        };
        let mut out = Outbox::new();
        w.submit(key, vec![needing()], &mut out).unwrap();
        w.keep_one_for_self(&mut out);
        assert_eq!(w.delayed_len(), 0, "it offers nothing");
        assert!(out
            .iter()
            .any(|(_, m)| matches!(m, Msg::Up(Up::Submit { tasks, .. }) if tasks.len() == 1)));
        w.set_offers(4);
        let mut out = Outbox::new();
        w.submit(key, vec![needing()], &mut out).unwrap();
        w.keep_one_for_self(&mut out);
        assert_eq!(w.delayed_len(), 1, "now it offers it");
    }

    #[test]
    fn local_children_wait_here_are_claimed_last_first_and_stolen_oldest_first() {
        let (mut w, root) = running();
        let mut out = Outbox::new();
        let m = w
            .submit_local(root, (0..3).map(|_| child()).collect(), &mut out)
            .unwrap();
        assert!(
            !out.iter()
                .any(|(_, m)| matches!(m, Msg::Up(Up::Submit { tasks, .. }) if !tasks.is_empty())),
            "nothing goes to the boss: {out:?}"
        );
        assert_eq!(queue_reports(&out), vec![3], "the boss hears of the queue");
        assert_eq!(w.delayed_len(), 3);
        out.clear();
        let claimed = w.claim(root, m, &mut out).unwrap().map(|c| c.slot);
        assert_eq!(claimed, Some(2), "the last child first");
        w.handle(Msg::Down(Down::Steal { max: 1 }), &mut out);
        assert_eq!(stolen_slots(&out), vec![0], "a thief takes the oldest");
        assert_eq!(w.claim(root, m, &mut out).unwrap().map(|c| c.slot), Some(1));
        assert_eq!(
            w.claim(root, m, &mut out).unwrap(),
            None,
            "slot 0 was stolen"
        );
        // the claimed slots count as done: the stolen child's result completes the mailbox
        assert_eq!(
            w.wait(root, m, WaitKind::All, &mut out),
            Ok(WaitPoll::Pending)
        );
        w.handle(result(m, 0, 7), &mut out);
        assert_eq!(
            w.wait(root, m, WaitKind::All, &mut out),
            Ok(WaitPoll::All(vec![vec![7], vec![], vec![]]))
        );
        assert_eq!(
            (w.stats().started, w.stats().finished),
            (3, 2),
            "root + 2 claimed"
        );
    }

    fn stolen_slots(out: &Outbox) -> Vec<u32> {
        out.iter()
            .flat_map(|(_, m)| match m {
                Msg::Up(Up::Stolen { tasks, .. }) => tasks.iter().map(|t| t.addr.slot).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// A token table whose other side (the task's process) takes with `took`.
    #[derive(Debug, Default)]
    struct FakeTokens {
        taken: std::sync::Mutex<Vec<bool>>,
        released: std::sync::Mutex<Vec<u32>>,
    }

    impl FakeTokens {
        fn new(n: usize) -> Arc<FakeTokens> {
            Arc::new(FakeTokens {
                taken: std::sync::Mutex::new(vec![false; n]),
                released: std::sync::Mutex::new(Vec::new()),
            })
        }
        /// The task's process takes a token: true when it got it.
        fn took(&self, i: u32) -> bool {
            self.take(i)
        }
    }

    impl Tokens for FakeTokens {
        fn take(&self, i: u32) -> bool {
            let mut t = self.taken.lock().unwrap();
            !std::mem::replace(&mut t[i as usize], true)
        }
        fn release(&self, i: u32) {
            self.released.lock().unwrap().push(i);
        }
    }

    fn with_tokens(tokens: &Arc<FakeTokens>, n: u32) -> Vec<ChildSpec> {
        (0..n)
            .map(|i| ChildSpec {
                token: Some(Token {
                    tokens: tokens.clone(),
                    index: i,
                }),
                ..child()
            })
            .collect()
    }

    #[test]
    fn a_child_with_a_token_runs_once_where_its_token_was_taken_first() {
        let (mut w, root) = running();
        let mut out = Outbox::new();
        let tokens = FakeTokens::new(4);
        let m = w
            .submit_local(root, with_tokens(&tokens, 4), &mut out)
            .unwrap();
        assert_eq!(w.delayed_len(), 4);
        // the task takes slots 3 and 0 back without a message; a thief then asks for two
        assert!(tokens.took(3) && tokens.took(0));
        out.clear();
        w.handle(Msg::Down(Down::Steal { max: 2 }), &mut out);
        assert_eq!(
            stolen_slots(&out),
            vec![1, 2],
            "slot 0 ran inside its parent"
        );
        assert!(
            !tokens.took(1) && !tokens.took(2),
            "the thief's are the worker's"
        );
        // the task awaits what it did not run: its two count as run there
        assert_eq!(
            w.wait(root, m, WaitKind::All, &mut out),
            Ok(WaitPoll::Pending)
        );
        assert_eq!(w.delayed_len(), 0);
        w.handle(result(m, 1, 1), &mut out);
        w.handle(result(m, 2, 2), &mut out);
        assert_eq!(
            w.wait(root, m, WaitKind::All, &mut out),
            Ok(WaitPoll::All(vec![vec![], vec![1], vec![2], vec![]]))
        );
        let mut released = tokens.released.lock().unwrap().clone();
        released.sort();
        assert_eq!(released, vec![0, 1, 2, 3], "every token released once");
    }

    #[test]
    fn a_child_whose_token_its_task_took_is_never_started_sent_or_handed_back() {
        let (mut w, root) = running();
        let mut out = Outbox::new();
        let tokens = FakeTokens::new(2);
        let m = w
            .submit_local(root, with_tokens(&tokens, 2), &mut out)
            .unwrap();
        assert!(tokens.took(1));
        // the worker runs its queue: slot 1 ran inside, slot 0 starts here
        match w.next_ready(&mut out) {
            Some(Ready::Start { .. }) => {}
            r => panic!("{r:?}"),
        }
        assert_eq!(w.delayed_len(), 0);
        assert!(!tokens.took(0));
        assert_eq!(
            w.wait(root, m, WaitKind::All, &mut out),
            Ok(WaitPoll::Pending)
        );
        // becoming occupied hands back only what is the worker's
        let fresh = FakeTokens::new(2);
        let m3 = w
            .submit_local(root, with_tokens(&fresh, 2), &mut out)
            .unwrap();
        assert!(fresh.took(0));
        out.clear();
        w.set_occupied(true, &mut out);
        let handed: Vec<(MailboxId, u32)> = out
            .iter()
            .flat_map(|(_, m)| match m {
                Msg::Up(Up::Occupied { tasks, .. }) => tasks
                    .iter()
                    .map(|t| (t.addr.mailbox, t.addr.slot))
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        assert!(
            handed.contains(&(m3, 1)) && !handed.contains(&(m3, 0)),
            "{handed:?}"
        );
        // after a steal that found too little, a submit goes to the boss, but children with a
        // token stay (their task may take them back and compute on; thieves steal them)
        w.set_occupied(false, &mut out);
        w.handle(Msg::Down(Down::Steal { max: 9 }), &mut out);
        let more = FakeTokens::new(3);
        let mut children = with_tokens(&more, 3);
        children.push(child());
        out.clear();
        w.submit_local(root, children, &mut out).unwrap();
        let sent: Vec<u32> = out
            .iter()
            .flat_map(|(_, m)| match m {
                Msg::Up(Up::Submit { tasks, .. }) => tasks.iter().map(|t| t.addr.slot).collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(sent, vec![3], "only the child without a token");
        assert_eq!(w.delayed_len(), 3);
    }

    /// A worker whose root said it was idle while it waited for its one child, then resumed
    /// there with that child's result, without a batch read since.
    fn resumed_after_it_said_idle() -> (WorkerCore, TaskKey, Outbox) {
        let (mut w, root) = running();
        let mut out = Outbox::new();
        let m = w.submit(root, vec![child()], &mut out).unwrap();
        assert_eq!(
            w.wait(root, m, WaitKind::All, &mut out),
            Ok(WaitPoll::Pending)
        );
        out.clear();
        assert!(w.next_ready(&mut out).is_none());
        assert!(matches!(
            out[..],
            [(_, Msg::Up(Up::Waiting { idle: 1, .. }))]
        ));
        w.handle(result(m, 0, 1), &mut out);
        assert!(matches!(w.next_ready(&mut out), Some(Ready::Resume(_))));
        out.clear();
        (w, root, out)
    }

    #[test]
    fn a_worker_that_said_it_drained_says_again_when_it_idles() {
        // the root claims a local child, and its queue drains (idle: 0 at the boss); idle
        // again, it must say so again
        let (mut w, root, mut out) = resumed_after_it_said_idle();
        let m2 = w.submit_local(root, vec![child()], &mut out).unwrap();
        assert!(w.claim(root, m2, &mut out).unwrap().is_some());
        assert!(matches!(
            out.last(),
            Some((_, Msg::Up(Up::Waiting { idle: 0, .. })))
        ));
        w.finish(root, Ok(vec![]), &mut out);
        out.clear();
        assert!(w.next_ready(&mut out).is_none());
        assert!(
            matches!(out[..], [(_, Msg::Up(Up::Waiting { idle: 1, .. }))]),
            "{out:?}"
        );
    }

    #[test]
    fn a_worker_that_submitted_after_it_said_idle_says_again_when_it_idles() {
        // the boss counts a worker that submits busy (`Boss::on_submit`)
        for local in [false, true] {
            // the root submits again: children to the boss, or kept here (the boss hears of
            // the queue)
            let (mut w, root, mut out) = resumed_after_it_said_idle();
            let m2 = match local {
                false => w.submit(root, vec![child()], &mut out),
                true => w.submit_local(root, vec![child()], &mut out),
            };
            assert!(m2.is_ok());
            assert!(
                out.iter()
                    .any(|(_, m)| matches!(m, Msg::Up(Up::Submit { .. }))),
                "{out:?}"
            );
            // it ends (what it did not await is cancelled, a kept child too)
            w.finish(root, Ok(vec![]), &mut out);
            out.clear();
            assert!(w.next_ready(&mut out).is_none());
            assert!(
                matches!(out[..], [(_, Msg::Up(Up::Waiting { idle: 1, .. }))]),
                "local {local}: {out:?}"
            );
        }
    }

    #[test]
    fn after_a_steal_found_too_little_the_next_local_submit_goes_to_the_boss() {
        let (mut w, root) = running();
        let mut out = Outbox::new();
        // a steal that found what it asked for leaves local submits local
        w.submit_local(root, vec![child(), child()], &mut out)
            .unwrap();
        w.handle(Msg::Down(Down::Steal { max: 1 }), &mut out);
        out.clear();
        w.submit_local(root, vec![child()], &mut out).unwrap();
        assert_eq!(w.delayed_len(), 2);
        w.handle(Msg::Down(Down::Steal { max: 4 }), &mut out);
        out.clear();
        // some worker was idle: the boss places these at once
        let m = w
            .submit_local(root, vec![child(), child()], &mut out)
            .unwrap();
        assert!(
            matches!(&out[..], [(_, Msg::Up(Up::Submit { tasks, .. }))] if tasks.len() == 2),
            "{out:?}"
        );
        assert_eq!(w.claim(root, m, &mut out).unwrap(), None);
        // and the next one stays here again
        out.clear();
        w.submit_local(root, vec![child()], &mut out).unwrap();
        assert_eq!(w.delayed_len(), 1);
    }

    #[test]
    fn only_the_owner_claims_and_children_it_cannot_run_go_to_the_boss() {
        let (mut w, root) = running();
        let mut out = Outbox::new();
        let mut gpu = child();
        gpu.needs = 1;
        let m = w.submit_local(root, vec![child(), gpu], &mut out).unwrap();
        match &out[..] {
            [(_, Msg::Up(Up::Submit { tasks, .. }))] => {
                assert_eq!(
                    tasks.iter().map(|t| t.addr.slot).collect::<Vec<_>>(),
                    vec![1]
                );
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(w.claim(TaskKey(99), m, &mut out), Err(CallError::NotOwner));
        assert_eq!(w.claim(root, m, &mut out).unwrap().map(|c| c.slot), Some(0));
        assert_eq!(w.claim(root, m, &mut out).unwrap(), None);
        w.cancel(root, m, &mut out).unwrap();
        assert_eq!(w.claim(root, m, &mut out), Err(CallError::Gone));
    }

    #[test]
    fn steal_hands_back_the_oldest_delayed_tasks() {
        let mut w = WorkerCore::new(Rank(1), Rank::SERVER);
        let mut out = Outbox::new();
        assign_roots(&mut w, 1, 4, false, &mut out);
        out.clear();
        w.handle(Msg::Down(Down::Steal { max: 2 }), &mut out);
        match &out[..] {
            [(
                _,
                Msg::Up(Up::Stolen {
                    tasks,
                    left,
                    receipt,
                }),
            )] => {
                assert_eq!(
                    tasks.iter().map(|t| t.addr.mailbox.0).collect::<Vec<_>>(),
                    vec![10, 11]
                );
                assert_eq!((*left, *receipt), (2, BatchSeq(1)), "what it still holds");
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(w.delayed_len(), 2);
    }
    /// What the worker told its boss about its queue, in order (`Waiting { idle: 0 }` is 0).
    fn queue_reports(out: &Outbox) -> Vec<u64> {
        out.iter()
            .filter_map(|(_, m)| match m {
                Msg::Up(Up::Submit { tasks, queued, .. }) if tasks.is_empty() => Some(*queued),
                Msg::Up(Up::Waiting { idle: 0, .. }) => Some(0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_queue_that_halves_is_reported() {
        let (mut w, _root) = running();
        let mut out = Outbox::new();
        assign_roots(&mut w, 2, 8, true, &mut out);
        out.clear();
        for _ in 0..8 {
            assert!(matches!(w.next_ready(&mut out), Some(Ready::Start { .. })));
        }
        // the boss counted 8: told at 4 and 2 (halvings from REPORT_HALVING_FROM) and when
        // drained, not at every start
        assert_eq!(queue_reports(&out), vec![4, 2, 0], "{out:?}");
    }

    #[test]
    fn a_kept_child_waiting_behind_a_resumption_is_reported() {
        let (mut w, root, m, mut out) = running_with_map(2);
        assert_eq!(
            w.wait(root, m, WaitKind::Next, &mut out),
            Ok(WaitPoll::Pending)
        );
        w.keep_one_for_self(&mut out);
        // a result arrives before the kept child starts: the root resumes first
        w.handle(result(m, 0, 7), &mut out);
        out.clear();
        assert!(matches!(w.next_ready(&mut out), Some(Ready::Resume(k)) if k == root));
        assert_eq!(
            queue_reports(&out),
            vec![1],
            "the boss learns of the kept child"
        );
        out.clear();
        assert!(matches!(w.next_ready(&mut out), Some(Ready::Start { .. })));
        assert_eq!(queue_reports(&out), vec![0], "and that it started");
    }
}
