//! The handle a running task uses: submit, map, next, cancel, cache, logs, cancel flag.
//!
//! Futures returned by `submit`/`map` belong to the task that created them: they are not
//! `Send`, not serialisable (so they cannot be passed to another task as arguments), and the
//! worker refuses to let another task await one. Dropping a future that was not awaited cancels
//! its tasks; a task that finishes cancels every child it did not await.

use super::task::{decode, encode, TaskError, TaskResult};
use super::{Cache, Shared};
use crate::protocol::{Address, Format, JobId, MailboxId, Rank};
use crate::sched::{CallError, ChildSpec, TaskKey, WaitKind, WaitPoll};
use serde::{de::DeserializeOwned, Serialize};
use std::cell::RefMut;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Display name, log context and needed resources for submitted tasks.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub name: Option<String>,
    pub context: Vec<(String, String)>,
    /// Resources a worker must offer to run the tasks (names of worker groups' `offers`).
    pub needs: Vec<String>,
}

impl Options {
    pub fn new() -> Options {
        Options::default()
    }
    /// Display name (defaults to the task function's name).
    pub fn name(mut self, name: impl Into<String>) -> Options {
        self.name = Some(name.into());
        self
    }
    /// Add a log-context entry; children inherit and extend their parent's context.
    pub fn context(mut self, key: impl Into<String>, value: impl Into<String>) -> Options {
        self.context.push((key.into(), value.into()));
        self
    }
    /// Run only on workers that offer `resource` (for example `gpu`); submitting fails with a
    /// clear error when no worker of the runtime offers it.
    pub fn needs(mut self, resource: impl Into<String>) -> Options {
        self.needs.push(resource.into());
        self
    }
}

/// The mask of the resources `opts` needs, or why no worker can meet them.
fn needs_of(opts: &Options) -> TaskResult<u64> {
    crate::topology::resources::needs(&opts.needs).map_err(TaskError::new)
}

/// The running task's handle to the runtime.
#[derive(Clone)]
pub struct Ctx {
    pub(crate) shared: Rc<Shared>,
    pub(crate) key: TaskKey,
    pub(crate) cancel: Arc<AtomicBool>,
    pub(crate) inbox: super::Inbox,
}

impl Ctx {
    fn spec<A: Serialize>(&self, task: &str, args: &A, opts: &Options) -> TaskResult<ChildSpec> {
        let bytes = encode(args, Format::Bincode).map_err(|e| {
            TaskError::new(format!("arguments for task '{task}' do not encode: {e}"))
        })?;
        Ok(ChildSpec {
            function: task.to_string(),
            label: opts.name.clone(),
            args: bytes,
            format: Format::Bincode,
            context: opts.context.clone(),
            needs: 0,
            token: None,
        })
    }

    fn submit_specs(&self, specs: Vec<ChildSpec>) -> TaskResult<MailboxId> {
        let mut s = self.shared.lock();
        let s = &mut *s;
        Ok(s.core.submit(self.key, specs, &mut s.out)?)
    }

    /// Run `task(args)` as a child; await the returned future for its result.
    pub fn submit<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        args: A,
    ) -> TaskResult<TaskFuture<R>> {
        self.submit_with(task, args, Options::new())
    }

    /// [`Ctx::submit`] with a display name and log context.
    pub fn submit_with<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        args: A,
        opts: Options,
    ) -> TaskResult<TaskFuture<R>> {
        let mut spec = self.spec(task, &args, &opts)?;
        spec.needs = needs_of(&opts)?;
        let mailbox = self.submit_specs(vec![spec])?;
        Ok(TaskFuture {
            handle: Handle::new(self, mailbox),
            _r: PhantomData,
        })
    }

    /// Run `task` once per argument; one future yields all results in input order.
    pub fn map<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        args: impl IntoIterator<Item = A>,
    ) -> TaskResult<MapFuture<R>> {
        self.map_with(task, args, Options::new())
    }

    /// [`Ctx::map`] with a display name and log context shared by all the tasks.
    pub fn map_with<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        args: impl IntoIterator<Item = A>,
        opts: Options,
    ) -> TaskResult<MapFuture<R>> {
        let needs = needs_of(&opts)?;
        let specs = args
            .into_iter()
            .map(|a| {
                let mut s = self.spec(task, &a, &opts)?;
                s.needs = needs;
                Ok(s)
            })
            .collect::<TaskResult<Vec<_>>>()?;
        let len = specs.len();
        let mailbox = self.submit_specs(specs)?;
        Ok(MapFuture {
            handle: Handle::new(self, mailbox),
            len,
            _r: PhantomData,
        })
    }

    /// Results of `fut` that arrived since the last call, as `(index, value)`; waits only if
    /// none did. Returns an empty list once every result has been returned.
    pub fn next<'a, R: DeserializeOwned>(&self, fut: &'a mut MapFuture<R>) -> Next<'a, R> {
        Next { fut }
    }

    /// Submit children whose arguments are already encoded, for task kinds that are not Rust
    /// functions (e.g. Python coroutines). One mailbox, one slot per child in order.
    pub fn submit_raw(&self, children: Vec<RawChild>) -> TaskResult<RawFuture> {
        self.submit_raw_to(children, false)
    }

    /// [`Ctx::submit_raw`], keeping the children in this worker's queue, where the task may
    /// [`claim`](Ctx::claim_raw) them to run them itself and idle workers steal them meanwhile.
    pub fn submit_raw_local(&self, children: Vec<RawChild>) -> TaskResult<RawFuture> {
        self.submit_raw_to(children, true)
    }

    /// Take back a child of `fut` that still waits in this worker's queue, to run it inside this
    /// task (its slot then counts as done, with an empty value), or `None` when none waits
    /// here.
    pub fn claim_raw(&self, fut: &RawFuture) -> TaskResult<Option<crate::sched::Claimed>> {
        let mut s = self.shared.lock();
        let s = &mut *s;
        let got = s.core.claim(self.key, fut.handle.mailbox, &mut s.out)?;
        if got.is_some() {
            self.shared.claimed(s);
        }
        // what the step produced so far (log records above all) leaves now, as it would at the
        // end of a task
        self.shared.send_now(s);
        Ok(got)
    }

    fn submit_raw_to(&self, children: Vec<RawChild>, local: bool) -> TaskResult<RawFuture> {
        let len = children.len();
        let specs = children
            .into_iter()
            .map(|c| ChildSpec {
                function: c.function,
                label: c.label,
                args: c.args,
                format: c.format,
                context: c.context,
                needs: c.needs,
                token: c.token,
            })
            .collect();
        let mailbox = match local {
            false => self.submit_specs(specs)?,
            true => {
                let mut s = self.shared.lock();
                let s = &mut *s;
                let mailbox = s.core.submit_local(self.key, specs, &mut s.out)?;
                self.shared.send_now(s);
                mailbox
            }
        };
        Ok(RawFuture {
            handle: Handle::new(self, mailbox),
            len,
        })
    }

    /// Log a record for the job's owner from code that does not use the `log` crate (it goes
    /// through the job's level and depth filter like any other record).
    pub fn log_raw(&self, level: u8, target: &str, message: String) {
        if let Some(mut s) = self.shared.lock_unless_held() {
            let s = &mut *s;
            s.core.log(self.key, level, target, message, &mut s.out);
        }
    }

    /// The task's job-wide settings: log filter and context.
    pub fn log_spec(&self) -> Option<(crate::protocol::LogSpec, Vec<(String, String)>)> {
        self.shared
            .lock()
            .core
            .task(self.key)
            .map(|t| (t.log, t.context.clone()))
    }

    /// Send `msg` to the tasks of `fut` that have started, wherever they run (BQSKit's
    /// `communicate`): each finds it with [`Ctx::messages`]. Tasks not started yet, still being
    /// placed, or finished miss it.
    pub fn communicate<T: Serialize>(&self, fut: &impl Mailboxed, msg: &T) -> TaskResult<()> {
        let bytes = encode(msg, Format::Bincode)
            .map_err(|e| TaskError::new(format!("message does not encode: {e}")))?;
        self.communicate_raw(fut, bytes)
    }

    /// [`Ctx::communicate`] with an already encoded message.
    pub fn communicate_raw(&self, fut: &impl Mailboxed, msg: Vec<u8>) -> TaskResult<()> {
        let mut s = self.shared.lock();
        let s = &mut *s;
        Ok(s.core
            .communicate(self.key, fut.mailbox(), msg, &mut s.out)?)
    }

    /// Messages sent to this task with `communicate` since the last call (they arrive even
    /// while the task computes).
    pub fn messages<T: DeserializeOwned>(&self) -> TaskResult<Vec<T>> {
        self.take_messages_raw()
            .iter()
            .map(|b| {
                decode(b, Format::Bincode)
                    .map_err(|e| TaskError::new(format!("a message does not decode: {e}")))
            })
            .collect()
    }

    /// [`Ctx::messages`] as encoded bytes.
    pub fn take_messages_raw(&self) -> Vec<Vec<u8>> {
        self.inbox
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Cancel a future's tasks and their descendants, wherever they run. Returns at once.
    pub fn cancel(&self, fut: impl Cancel) {
        fut.cancel_now();
    }

    /// True once this task has been cancelled. Long computations should check it.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// This worker's cache (persists across tasks and jobs on this worker).
    pub fn cache(&self) -> RefMut<'_, Cache> {
        self.shared.cache.borrow_mut()
    }

    /// This task's display name.
    pub fn name(&self) -> String {
        self.shared
            .lock()
            .core
            .task(self.key)
            .map(|t| t.name().to_string())
            .unwrap_or_default()
    }

    /// Depth in the job's task tree (the root is 0).
    pub fn depth(&self) -> u32 {
        self.shared
            .lock()
            .core
            .task(self.key)
            .map(|t| t.depth())
            .unwrap_or(0)
    }

    /// This task's address (its system-wide id).
    pub fn address(&self) -> Option<Address> {
        self.shared.lock().core.task(self.key).map(|t| t.addr)
    }

    pub fn job(&self) -> Option<JobId> {
        self.shared.lock().core.task(self.key).map(|t| t.job)
    }

    /// The worker's rank.
    pub fn rank(&self) -> Rank {
        self.shared.lock().core.rank()
    }

    /// A handle that makes the executor poll this task again, for a task that waits on
    /// something besides its own futures (the BQSKit task: its Python process dying).
    pub fn waker(&self) -> TaskWaker {
        TaskWaker {
            shared: Rc::clone(&self.shared),
            key: self.key,
        }
    }
}

/// See [`Ctx::waker`]. Waking a task that already finished does nothing.
#[derive(Clone)]
pub struct TaskWaker {
    shared: Rc<Shared>,
    key: TaskKey,
}

impl TaskWaker {
    pub fn wake(&self) {
        if let Some(mut s) = self.shared.lock_unless_held() {
            s.core.wake(self.key);
        }
    }
}

/// Mailbox ownership shared by both future kinds.
struct Handle {
    shared: Rc<Shared>,
    owner: TaskKey,
    mailbox: MailboxId,
    live: bool,
}

impl Handle {
    fn new(ctx: &Ctx, mailbox: MailboxId) -> Handle {
        Handle {
            shared: Rc::clone(&ctx.shared),
            owner: ctx.key,
            mailbox,
            live: true,
        }
    }

    fn wait(&mut self, kind: WaitKind) -> Result<WaitPoll, CallError> {
        let Some(current) = self.shared.current.get() else {
            return Err(CallError::NotOwner);
        };
        let mut s = self.shared.lock();
        let s = &mut *s;
        let r = s.core.wait(current, self.mailbox, kind, &mut s.out);
        if matches!(r, Ok(WaitPoll::All(_)) | Err(CallError::Gone)) {
            self.live = false;
        }
        r
    }

    fn cancel(&mut self) {
        if !self.live {
            return;
        }
        self.live = false;
        // During teardown the executor may hold the state (the task is being dropped by the
        // worker); then the worker cancels the task's mailboxes itself.
        if let Some(mut s) = self.shared.lock_unless_held() {
            let s = &mut *s;
            let _ = s.core.cancel(self.owner, self.mailbox, &mut s.out);
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Future of one submitted task.
pub struct TaskFuture<R> {
    handle: Handle,
    _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> Future for TaskFuture<R> {
    type Output = TaskResult<R>;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.handle.wait(WaitKind::All) {
            Ok(WaitPoll::All(mut v)) => Poll::Ready(decode_one(v.pop().unwrap_or_default())),
            Ok(_) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

/// Future of a `map`: all results in input order.
pub struct MapFuture<R> {
    handle: Handle,
    len: usize,
    _r: PhantomData<fn() -> R>,
}

impl<R> MapFuture<R> {
    /// Number of tasks in the map.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<R: DeserializeOwned> Future for MapFuture<R> {
    type Output = TaskResult<Vec<R>>;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.handle.wait(WaitKind::All) {
            Ok(WaitPoll::All(v)) => Poll::Ready(v.into_iter().map(decode_one).collect()),
            Ok(_) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

/// Future of [`Ctx::next`].
pub struct Next<'a, R> {
    fut: &'a mut MapFuture<R>,
}

impl<R: DeserializeOwned> Future for Next<'_, R> {
    type Output = TaskResult<Vec<(usize, R)>>;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.fut.handle.wait(WaitKind::Next) {
            Ok(WaitPoll::Next(pairs)) => Poll::Ready(
                pairs
                    .into_iter()
                    .map(|(i, b)| decode_one(b).map(|v| (i as usize, v)))
                    .collect(),
            ),
            Ok(_) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

fn decode_one<R: DeserializeOwned>(bytes: Vec<u8>) -> TaskResult<R> {
    decode(&bytes, Format::Bincode).map_err(|e| {
        TaskError::new(format!(
            "a child's result does not decode as the expected type: {e}"
        ))
    })
}

/// A child for [`Ctx::submit_raw`].
#[derive(Clone, Debug)]
pub struct RawChild {
    pub function: String,
    pub args: Vec<u8>,
    pub format: Format,
    pub label: Option<String>,
    pub context: Vec<(String, String)>,
    /// Resources needed (a mask from [`crate::topology::resources::needs`]; 0: none).
    pub needs: u64,
    /// Its token, when the submitting task may take it back without a message
    /// ([`crate::sched::Tokens`]).
    pub token: Option<crate::sched::Token>,
}

/// A result with its slot: `(slot, encoded value)`.
pub type Slot = (usize, Vec<u8>);

/// Future of [`Ctx::submit_raw`], polled by hand (for coroutine steppers). Values are the
/// children's encoded results. Dropping it before it is consumed cancels its tasks.
pub struct RawFuture {
    handle: Handle,
    len: usize,
}

impl RawFuture {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// All results in slot order, once every one arrived (consumes the mailbox).
    pub fn poll_all(&mut self) -> Poll<TaskResult<Vec<Vec<u8>>>> {
        match self.handle.wait(WaitKind::All) {
            Ok(WaitPoll::All(v)) => Poll::Ready(Ok(v)),
            Ok(_) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
    /// Results that arrived since the last call, `(slot, value)`; pending only if none did.
    pub fn poll_next(&mut self) -> Poll<TaskResult<Vec<Slot>>> {
        match self.handle.wait(WaitKind::Next) {
            Ok(WaitPoll::Next(p)) => {
                Poll::Ready(Ok(p.into_iter().map(|(i, v)| (i as usize, v)).collect()))
            }
            Ok(_) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
    /// Whether the future still has a live mailbox (not consumed or cancelled).
    pub fn is_live(&self) -> bool {
        self.handle.live
    }
}

impl Cancel for RawFuture {
    fn cancel_now(mut self) {
        self.handle.cancel();
    }
}

/// Futures that name a mailbox (for [`Ctx::communicate`]).
pub trait Mailboxed {
    fn mailbox(&self) -> MailboxId;
}

impl<R> Mailboxed for TaskFuture<R> {
    fn mailbox(&self) -> MailboxId {
        self.handle.mailbox
    }
}

impl<R> Mailboxed for MapFuture<R> {
    fn mailbox(&self) -> MailboxId {
        self.handle.mailbox
    }
}

impl Mailboxed for RawFuture {
    fn mailbox(&self) -> MailboxId {
        self.handle.mailbox
    }
}

/// Futures that can be cancelled.
pub trait Cancel {
    fn cancel_now(self);
}

impl<R> Cancel for TaskFuture<R> {
    fn cancel_now(mut self) {
        self.handle.cancel();
    }
}

impl<R> Cancel for MapFuture<R> {
    fn cancel_now(mut self) {
        self.handle.cancel();
    }
}
