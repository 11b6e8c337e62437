//! The worker's executor: a single thread that polls task futures.
//!
//! The worker's [`WorkerCore`] and its outbox live in a [`WorkerState`] behind a mutex that the
//! executor thread and the rank's transport thread share. The transport thread hands every
//! message to the core itself, at once, even while a task computes: a steal takes queued tasks
//! away from a worker stuck in a long computation, a cancel removes queued tasks at once, and a
//! result is recorded. It then wakes the executor, which runs what became ready. The executor
//! holds the lock only for the core's own steps and a task's runtime calls (`submit`, `wait`,
//! ...), never while a task computes. Whatever the core produces goes into the shared outbox;
//! the transport thread drains it after handling messages, and the executor takes it after each
//! of its steps and hands it over the channel (so a child submitted before an `await` leaves at
//! once). The two paths keep each thread's messages in order; between them, only messages with
//! no order to keep can overtake each other (a thread's own reports, placement notices made
//! before any result of their tasks; see docs/decisions.md, 24). Tasks are plain futures polled
//! with a no-op waker: a task only ever waits on its own mailboxes, and the core queues it again
//! when a result it waits for arrives.
//!
//! A cancel that reaches the running task (its own return mailbox, or any ancestor's) also sets
//! the task's cancel flag at once through [`LiveTasks`]; the future is dropped when the executor
//! next gets control. A task that ends with its flag raised is abandoned, not finished: the
//! cancel of an ancestor can reach its rank before the cancel of its own parent's mailbox (sent
//! on by the parent's rank), and what it returned then, a failure above all, is not its job's.

mod cache;
mod ctx;
mod task;

pub use cache::Cache;
pub use ctx::{
    Cancel, Ctx, Mailboxed, MapFuture, Next, Options, RawChild, RawFuture, TaskFuture, TaskWaker,
};
pub use task::{decode, encode, Registry, TaskError, TaskResult};

use crate::protocol::MailboxAddr;
use crate::protocol::Outbox;
use crate::sched::idmap::IdMap;
use crate::sched::{Ready, TaskKey, WorkerCore};
use crossbeam::channel::{Receiver, RecvTimeoutError, TryRecvError};
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use task::BoxFuture;

/// A worker's core and the messages it wants sent, shared by the executor thread and the
/// transport thread (see the module documentation).
pub struct WorkerState {
    pub core: WorkerCore,
    pub out: Outbox,
}

/// The lock on a [`WorkerState`], shared by the two threads of a worker rank.
pub type SharedState = Arc<Mutex<WorkerState>>;

/// Lock the worker's state. A panic while it was held is a runtime bug that already ended the
/// process (the panic hook aborts), so a poisoned lock is taken as is.
pub fn lock_state(state: &Mutex<WorkerState>) -> MutexGuard<'_, WorkerState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared by the executor loop and the `Ctx` of every task on this worker.
pub(crate) struct Shared {
    state: SharedState,
    /// This thread holds `state` now (a future dropped while the executor holds it must not
    /// lock it again).
    held: Cell<bool>,
    pub(crate) cache: RefCell<Cache>,
    pub(crate) current: Cell<Option<TaskKey>>,
    /// The executor's channel to the transport thread, for what a task's runtime call must send
    /// before its step ends ([`Shared::send_now`]).
    outbound: crate::transport::LocalSender<Outbox>,
    /// The task being polled, as the transport thread sees it.
    running: Arc<LiveTasks>,
}

impl Shared {
    /// The running task starts a child it claimed, inside its own poll: as at the start of a
    /// task, the worker is not occupied (it serves its queue) and the poll's clock restarts.
    pub(crate) fn claimed(&self, s: &mut WorkerState) {
        self.running.restart();
        s.core.set_occupied(false, &mut s.out);
    }

    /// Hand what the core wants sent to the transport thread now, in the middle of a step (on
    /// the executor's own channel, so its messages keep their order): a long step that keeps
    /// children in the worker's queue reports it at once, so an idle worker can steal them.
    /// Children submitted to the boss stay until the step ends, or until the transport
    /// thread's tick finds them there a second time (decision 70): a cancel in the same step
    /// still takes them back before they leave.
    pub(crate) fn send_now(&self, s: &mut WorkerState) {
        let leaves = |m: &crate::protocol::Msg| !matches!(m, crate::protocol::Msg::Up(crate::protocol::Up::Submit { tasks, .. }) if !tasks.is_empty());
        if !s.out.iter().any(|(_, m)| leaves(m)) {
            return;
        }
        let (now, later): (Outbox, Outbox) = std::mem::take(&mut s.out)
            .into_iter()
            .partition(|(_, m)| leaves(m));
        s.out = later;
        let _ = self.outbound.send(now);
    }
}

/// [`Shared::lock`]'s guard.
pub(crate) struct Held<'a> {
    guard: MutexGuard<'a, WorkerState>,
    held: &'a Cell<bool>,
}

impl std::ops::Deref for Held<'_> {
    type Target = WorkerState;
    fn deref(&self) -> &WorkerState {
        &self.guard
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut WorkerState {
        &mut self.guard
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.held.set(false);
    }
}

impl Shared {
    /// Lock the worker's state (waits while the transport thread holds it).
    pub(crate) fn lock(&self) -> Held<'_> {
        let guard = lock_state(&self.state);
        self.held.set(true);
        Held {
            guard,
            held: &self.held,
        }
    }

    /// Lock the worker's state unless this thread already holds it.
    pub(crate) fn lock_unless_held(&self) -> Option<Held<'_>> {
        (!self.held.get()).then(|| self.lock())
    }
}

impl crate::logging::TaskSink for Shared {
    fn log(&self, level: u8, target: &str, message: String) -> bool {
        let Some(key) = self.current.get() else {
            return false;
        };
        let Some(mut s) = self.lock_unless_held() else {
            return false;
        };
        let s = &mut *s;
        s.core.log(key, level, target, message, &mut s.out);
        true
    }
}

/// How often a worker reports task counts to the server: every 100 ms, stretched on large
/// runtimes so the server receives at most about 10,000 reports a second in total.
pub fn progress_interval(ranks: u32) -> Duration {
    Duration::from_millis(100) * (ranks / 1000).max(1)
}

/// What the transport thread may see of this worker's tasks: the one being polled right now
/// (for cancel flags), and the inboxes of every started task (for `communicate`).
#[derive(Default)]
pub struct LiveTasks {
    slot: Mutex<Option<RunningTask>>,
    inboxes: Mutex<IdMap<MailboxAddr, Vec<(TaskKey, Inbox)>>>,
}

/// Messages sent to a started task with `communicate`, in arrival order.
pub(crate) type Inbox = Arc<Mutex<Vec<Vec<u8>>>>;

struct RunningTask {
    key: TaskKey,
    lineage: Lineage,
    flag: Arc<AtomicBool>,
    /// When this poll began.
    since: Instant,
}

/// The return mailboxes of a task and of its ancestors: a cancel of any of them concerns it.
#[derive(Clone, Default)]
struct Lineage {
    own: Option<MailboxAddr>,
    ancestors: crate::protocol::Breadcrumbs,
}

impl Lineage {
    fn contains(&self, mailbox: &MailboxAddr) -> bool {
        self.own.as_ref() == Some(mailbox) || self.ancestors.has_mailbox(*mailbox)
    }
}

impl LiveTasks {
    /// Called by the transport thread for each `Cancel` it receives, after the core handled it.
    pub fn on_cancel(&self, mailbox: MailboxAddr) {
        if let Ok(slot) = self.slot.lock() {
            if let Some(t) = slot.as_ref() {
                if t.lineage.contains(&mailbox) {
                    t.flag.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// How long the task being polled now has been running (none: the executor is between
    /// polls).
    pub fn busy_for(&self) -> Option<Duration> {
        let slot = self.slot.lock().ok()?;
        slot.as_ref().map(|t| t.since.elapsed())
    }

    /// The task being polled now and when its poll began.
    pub fn current(&self) -> Option<(TaskKey, Instant)> {
        let slot = self.slot.lock().ok()?;
        slot.as_ref().map(|t| (t.key, t.since))
    }

    /// The running task began another task inside its poll (a claimed child): the poll counts
    /// from now for the occupied threshold and the stall warning.
    fn restart(&self) {
        if let Ok(mut slot) = self.slot.lock() {
            if let Some(t) = slot.as_mut() {
                t.since = Instant::now();
            }
        }
    }

    /// Raise the running task's cancel flag (shutdown: cooperative tasks end early).
    pub fn cancel_current(&self) {
        if let Ok(slot) = self.slot.lock() {
            if let Some(t) = slot.as_ref() {
                t.flag.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Called by the transport thread for each `Communicate`: the message goes to every
    /// started task of that mailbox at once, even one that is computing.
    pub fn on_communicate(&self, mailbox: MailboxAddr, msg: &[u8]) {
        if let Ok(map) = self.inboxes.lock() {
            for (_, inbox) in map.get(&mailbox).into_iter().flatten() {
                if let Ok(mut v) = inbox.lock() {
                    v.push(msg.to_vec());
                }
            }
        }
    }

    fn register(&self, ret: MailboxAddr, key: TaskKey, inbox: Inbox) {
        if let Ok(mut map) = self.inboxes.lock() {
            map.entry(ret).or_default().push((key, inbox));
        }
    }

    fn unregister(&self, ret: MailboxAddr, key: TaskKey) {
        if let Ok(mut map) = self.inboxes.lock() {
            if let Some(v) = map.get_mut(&ret) {
                v.retain(|(k, _)| *k != key);
                if v.is_empty() {
                    map.remove(&ret);
                }
            }
        }
    }

    /// The executor is about to poll `key`. Called under the core's lock, in the step where
    /// the core hands the task out: a cancel the core handles after that step finds the task
    /// here (the transport calls [`LiveTasks::on_cancel`] after handing the core its messages),
    /// and one handled before it kept the core from handing the task out.
    fn enter(&self, key: TaskKey, lineage: &Lineage, flag: &Arc<AtomicBool>) {
        self.set(Some(RunningTask {
            key,
            lineage: lineage.clone(),
            flag: Arc::clone(flag),
            since: Instant::now(),
        }));
    }

    fn set(&self, t: Option<RunningTask>) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = t;
        }
    }
}

/// What the transport thread tells the executor.
pub enum Inbound {
    /// The core may have something to run (a message was handled).
    Wake,
    Stop,
}

struct Slot {
    fut: BoxFuture,
    flag: Arc<AtomicBool>,
    lineage: Lineage,
}

/// The executor of one worker.
pub struct Executor {
    shared: Rc<Shared>,
    registry: Registry,
    futures: IdMap<TaskKey, Slot>,
    inbound: Receiver<Inbound>,
    /// What the core wants sent, to the transport thread.
    outbound: crate::transport::LocalSender<Outbox>,
    running: Arc<LiveTasks>,
    last_progress: Instant,
    progress_every: Duration,
    stats: Arc<Mutex<Option<crate::sched::WorkerStats>>>,
}

impl Executor {
    pub fn new(
        state: SharedState,
        registry: Registry,
        inbound: Receiver<Inbound>,
        outbound: crate::transport::LocalSender<Outbox>,
        running: Arc<LiveTasks>,
        stats: Arc<Mutex<Option<crate::sched::WorkerStats>>>,
        progress_every: Duration,
    ) -> Executor {
        let shared = Rc::new(Shared {
            state,
            held: Cell::new(false),
            cache: RefCell::new(Cache::default()),
            current: Cell::new(None),
            outbound: outbound.clone(),
            running: Arc::clone(&running),
        });
        Executor {
            shared,
            registry,
            futures: IdMap::default(),
            inbound,
            outbound,
            running,
            last_progress: Instant::now(),
            progress_every,
            stats,
        }
    }

    /// Run until told to stop or the transport goes away.
    pub fn run(mut self) {
        let rank = self.shared.lock().core.rank();
        self.registry.start_warm_ups(rank);
        loop {
            loop {
                match self.inbound.try_recv() {
                    Ok(Inbound::Wake) => {}
                    Ok(Inbound::Stop) | Err(TryRecvError::Disconnected) => return self.stop(),
                    Err(TryRecvError::Empty) => break,
                }
            }
            // one lock for the core's step: cancelled futures, what runs next, and (while the
            // core still holds that task) the task the transport's cancels see as running
            let (dropped, next, started, pending) = {
                let mut s = self.shared.lock();
                let s = &mut *s;
                let dropped = s.core.take_dropped();
                let next = s.core.next_ready(&mut s.out);
                let started = match &next {
                    Some(Ready::Start { key, .. }) => {
                        let lineage = lineage_of(&s.core, *key);
                        let flag = Arc::new(AtomicBool::new(false));
                        self.running.enter(*key, &lineage, &flag);
                        Some((lineage, flag))
                    }
                    Some(Ready::Resume(key)) => {
                        if let Some(slot) = self.futures.get(key) {
                            self.running.enter(*key, &slot.lineage, &slot.flag);
                        }
                        None
                    }
                    None => None,
                };
                (dropped, next, started, std::mem::take(&mut s.out))
            };
            self.reap(dropped);
            self.send(pending);
            match next {
                Some(Ready::Start {
                    key,
                    function,
                    args,
                    format,
                }) => {
                    if let Some((lineage, flag)) = started {
                        self.start(key, &function, args, format, lineage, flag);
                    }
                    self.poll(key);
                }
                Some(Ready::Resume(key)) => self.poll(key),
                None => match self.wait_inbound() {
                    Some(Inbound::Wake) => {}
                    Some(Inbound::Stop) | None => return self.stop(),
                },
            }
        }
    }

    fn stop(mut self) {
        self.futures.clear();
        self.flush();
        let stats = self.shared.lock().core.stats().clone();
        if let Ok(mut slot) = self.stats.lock() {
            *slot = Some(stats);
        }
    }

    /// Spin briefly (a result often comes back within microseconds), then block.
    fn wait_inbound(&mut self) -> Option<Inbound> {
        let spin_until = Instant::now() + Duration::from_micros(50);
        loop {
            match self.inbound.try_recv() {
                Ok(m) => return Some(m),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            if Instant::now() >= spin_until {
                break;
            }
            std::thread::yield_now();
        }
        loop {
            match self.inbound.recv_timeout(self.progress_every) {
                Ok(m) => return Some(m),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => {
                    // idle: deliver the counts of the tasks that just finished, then sleep on
                    self.last_progress = Instant::now();
                    {
                        let mut s = self.shared.lock();
                        let s = &mut *s;
                        s.core.report_progress(&mut s.out);
                    }
                    self.flush();
                }
            }
        }
    }

    /// Drop the futures of tasks the core cancelled.
    fn reap(&mut self, dropped: Vec<TaskKey>) {
        for key in dropped {
            if let Some(slot) = self.futures.remove(&key) {
                slot.flag.store(true, Ordering::Relaxed);
                if let Some(ret) = slot.lineage.own {
                    self.running.unregister(ret, key);
                }
                drop(slot);
            }
        }
    }

    /// Hand what the core wants sent to the transport thread.
    fn flush(&mut self) {
        let out = std::mem::take(&mut self.shared.lock().out);
        self.send(out);
    }

    fn send(&self, out: Outbox) {
        if !out.is_empty() {
            // the transport only goes away at shutdown
            let _ = self.outbound.send(out);
        }
    }

    fn start(
        &mut self,
        key: TaskKey,
        function: &str,
        args: Vec<u8>,
        format: crate::protocol::Format,
        lineage: Lineage,
        flag: Arc<AtomicBool>,
    ) {
        let inbox: Inbox = Arc::default();
        if let Some(ret) = lineage.own {
            self.running.register(ret, key, Arc::clone(&inbox));
        }
        let ctx = Ctx {
            shared: Rc::clone(&self.shared),
            key,
            cancel: Arc::clone(&flag),
            inbox,
        };
        let fut = self.registry.start(function, ctx, args, format);
        self.futures.insert(key, Slot { fut, flag, lineage });
    }

    fn poll(&mut self, key: TaskKey) {
        let Some(slot) = self.futures.get_mut(&key) else {
            self.running.set(None);
            return;
        };
        self.shared.current.set(Some(key));
        crate::logging::enter_task(Rc::clone(&self.shared) as Rc<dyn crate::logging::TaskSink>);
        let mut cx = Context::from_waker(Waker::noop());
        IN_TASK.with(|t| t.set(true));
        let polled = catch_unwind(AssertUnwindSafe(|| slot.fut.as_mut().poll(&mut cx)));
        IN_TASK.with(|t| t.set(false));
        crate::logging::leave_task();
        self.running.set(None);
        let outcome = match polled {
            Ok(Poll::Pending) => None,
            Ok(Poll::Ready(r)) => Some(r.map_err(|e| e.into_message())),
            Err(panic) => Some(Err(format!("panicked: {}", panic_message(&panic)))),
        };
        // a task that ends with its cancel flag raised ended because of the cancel
        let mut abandoned = false;
        if outcome.is_some() {
            // drop the future first: un-awaited child futures cancel themselves on drop
            if let Some(slot) = self.futures.remove(&key) {
                abandoned = slot.flag.load(Ordering::Relaxed);
                if let Some(ret) = slot.lineage.own {
                    self.running.unregister(ret, key);
                }
                drop(slot);
            }
        }
        self.shared.current.set(None);
        let report = self.last_progress.elapsed() >= self.progress_every;
        if report {
            self.last_progress = Instant::now();
        }
        // one lock for the core's side of the poll
        let pending = {
            let mut s = self.shared.lock();
            let s = &mut *s;
            s.core.set_occupied(false, &mut s.out);
            match outcome {
                None => s.core.keep_one_for_self(&mut s.out),
                Some(_) if abandoned => s.core.abandon(key, &mut s.out),
                Some(outcome) => s.core.finish(key, outcome, &mut s.out),
            }
            if report {
                s.core.report_progress(&mut s.out);
            }
            std::mem::take(&mut s.out)
        };
        self.send(pending);
    }
}

/// The return mailboxes of a started task and of its ancestors.
fn lineage_of(core: &WorkerCore, key: TaskKey) -> Lineage {
    match core.task(key) {
        Some(t) => Lineage {
            own: Some(t.addr.mailbox_addr()),
            ancestors: t.breadcrumbs.clone(),
        },
        None => Lineage::default(),
    }
}

thread_local! {
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Install a panic hook that stays quiet for panics inside tasks (they become the task's failure
/// and reach the job's owner) and reports every other panic as the runtime bug it is. With
/// `abort`, such a panic also ends the process at once, so the rest of the runtime sees a lost
/// rank instead of a rank with a dead thread (the binary does this; tests do not).
pub fn install_panic_hook(abort: bool) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !IN_TASK.with(|t| t.get()) {
            default(info);
            if abort {
                std::process::abort();
            }
        }
    }));
}

/// The text of a panic payload.
pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}
