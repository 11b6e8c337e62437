//! A worker rank's supervision of its Python process ([`super::child`]): one process per
//! executor thread, started as the worker starts, replaced when it dies.
//!
//! Every BQSKit task on the worker has its coroutine in the current process and is a
//! *member* of it. When the process ends (it crashed, was killed over its memory limit, or was
//! killed because a cancelled task did not stop), the task whose step was running fails with
//! the cause (or ends as cancelled), every other member is woken and starts over from its
//! envelope in the next process (a BQSKit task is a function of its arguments; at most
//! [`MAX_RESTARTS`] times), and a fresh process is started at once, so that it has imported
//! BQSKit by the time it is needed. A process that dies before it is ready
//! [`MAX_FAILED_STARTS`] times in a row is not started again: the rank's BQSKit tasks then fail
//! with the cause.

use super::child::{Child, FromChild, Spec, ToChild};
use crate::executor::{Ctx, RawChild, RawFuture, TaskWaker};
use crate::protocol::Format;
use crate::sched::{Token, Tokens};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How often a waiting step looks at its cancel flag and its process's memory.
const TICK: Duration = Duration::from_millis(10);
/// Times a task starts over because its process died while it waited.
pub const MAX_RESTARTS: u32 = 3;
/// Deaths before the ready message, in a row, after which no process is started again.
pub const MAX_FAILED_STARTS: u32 = 3;
/// What a cancelled process gets to exit by itself before it is killed (`Quit`, shutdown).
const QUIT_GRACE: Duration = Duration::from_millis(500);

/// Settings of the supervised processes (`bqrt serve` flags).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most private memory a process may map, and most it may keep resident (bytes).
    pub memory: Option<u64>,
    /// How long a cancelled task that does not stop may run before its process is killed.
    pub cancel_grace: Duration,
    /// The environment's interpreter.
    pub python: std::path::PathBuf,
}

static LIMITS: OnceLock<Limits> = OnceLock::new();

/// Remember the settings (every rank, before MPI starts).
pub fn configure(limits: Limits) {
    let _ = LIMITS.set(limits);
}

fn limits() -> Option<&'static Limits> {
    LIMITS.get()
}

/// The memory limit of the Python processes, if any.
pub fn memory_limit() -> Option<u64> {
    limits().and_then(|l| l.memory)
}

/// The modules a fresh process imports once it is ready, in this order, one at a time while
/// no frame waits (python/bqrt_child.py): what `bqskit.compile`'s passes need on a worker.
const WARM: &[&str] = &["bqskit.compiler.compile", "bqskit.passes"];

/// A child future of a task: the mailbox the Python side named, and whether it is one task.
pub struct PyFuture {
    pub fut: RawFuture,
    pub single: bool,
}

/// How one step of a task ended.
pub enum StepEnd {
    Done(Vec<u8>),
    Failed(String),
    Await {
        mailbox: u64,
        next: bool,
    },
    /// The task was cancelled while it ran (it stopped, or its process was killed).
    Cancelled,
    /// Its process died while it ran: the cause.
    Crashed(String),
}

/// Why a task could not start in the process.
pub enum NoStart {
    Cancelled,
    Failed(String),
}

/// The supervisor of this executor thread's process.
pub struct Supervisor {
    child: Option<Child>,
    /// Bumped each time a process ends; a member of an older generation starts over.
    generation: u64,
    /// How the last process ended.
    last_cause: String,
    next_tid: u64,
    members: HashMap<u64, TaskWaker>,
    failed_starts: u32,
    broken: Option<String>,
    rank: u32,
}

thread_local! {
    static SUPERVISOR: RefCell<Option<Supervisor>> = const { RefCell::new(None) };
}

/// Run `f` with this thread's supervisor (created on first use).
pub fn with<R>(rank: u32, f: impl FnOnce(&mut Supervisor) -> R) -> R {
    SUPERVISOR.with(|s| {
        let mut s = s.borrow_mut();
        let sup = s.get_or_insert_with(|| Supervisor::new(rank));
        f(sup)
    })
}

/// Start the process of this worker ahead of its first task (the registry's warm-up, on the
/// executor thread: the process dies with the thread that started it).
pub fn prestart(rank: u32) {
    with(rank, |s| {
        if s.child.is_none() && s.broken.is_none() {
            s.spawn();
        }
    });
}

/// This thread's generation, if it has a supervisor.
pub fn generation() -> u64 {
    SUPERVISOR.with(|s| s.borrow().as_ref().map_or(0, |s| s.generation))
}

impl Supervisor {
    fn new(rank: u32) -> Supervisor {
        Supervisor {
            child: None,
            generation: 0,
            last_cause: String::new(),
            next_tid: 0,
            members: HashMap::new(),
            failed_starts: 0,
            broken: None,
            rank,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn last_cause(&self) -> &str {
        &self.last_cause
    }

    fn spawn(&mut self) {
        let Some(l) = limits() else {
            self.broken = Some("bqrt: no Python environment is configured on this rank".into());
            return;
        };
        let spec = Spec {
            python: &l.python,
            rank: self.rank,
            memory_limit: l.memory,
            warm: WARM,
        };
        match Child::spawn(&spec) {
            Ok(c) => {
                log::debug!("rank {}: Python process {} started", self.rank, c.pid());
                self.child = Some(c);
            }
            Err(e) => {
                self.failed_starts += 1;
                self.last_cause = format!("{} could not be started: {e}", l.python.display());
                self.check_broken();
            }
        }
    }

    fn check_broken(&mut self) {
        if self.failed_starts >= MAX_FAILED_STARTS && self.broken.is_none() {
            let msg = format!(
                "bqrt: the Python process of rank {} failed to start {} times in a row (last: {}); this rank runs no more BQSKit tasks. Check the environment (--python, VIRTUAL_ENV) and the rank's stderr",
                self.rank, self.failed_starts, self.last_cause
            );
            log::error!("{msg}");
            self.broken = Some(msg);
        }
    }

    /// The current process has ended (or must): reap it, start the next generation, wake the
    /// members so that they start over, start a fresh process. Returns the cause.
    fn lose(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return self.last_cause.clone();
        };
        let cause = child.end(Duration::from_millis(200));
        if child.ready {
            self.failed_starts = 0;
        } else {
            self.failed_starts += 1;
        }
        log::warn!(
            "rank {}: its Python process {} ended: {cause}",
            self.rank,
            child.pid()
        );
        self.generation += 1;
        self.last_cause = cause.clone();
        for (_, w) in self.members.drain() {
            w.wake();
        }
        self.check_broken();
        if self.broken.is_none() {
            self.spawn();
        }
        cause
    }

    /// Make the process ready and make `ctx`'s task a member: its id in the process.
    pub fn join(&mut self, ctx: &Ctx) -> Result<u64, NoStart> {
        loop {
            if let Some(b) = &self.broken {
                return Err(NoStart::Failed(b.clone()));
            }
            if self.child.is_none() {
                self.spawn();
                continue;
            }
            let Some(child) = self.child.as_mut() else {
                continue;
            };
            if child.ready {
                break;
            }
            match child.recv(TICK) {
                Ok(Some(FromChild::Hello)) => {
                    child.ready = true;
                    self.failed_starts = 0;
                }
                Ok(Some(other)) => {
                    child.kill(format!("it spoke before it was ready ({other:?})"));
                    self.lose();
                }
                Ok(None) => {
                    if ctx.is_cancelled() {
                        return Err(NoStart::Cancelled);
                    }
                }
                Err(_) => {
                    self.lose();
                }
            }
        }
        self.next_tid += 1;
        self.members.insert(self.next_tid, ctx.waker());
        Ok(self.next_tid)
    }

    /// A member's coroutine is no longer needed (it finished, failed, or its future was
    /// dropped): forget it, and close the coroutine if it is still in the process.
    pub fn leave(&mut self, tid: u64, generation: u64, close: bool) {
        if generation != self.generation {
            return;
        }
        self.members.remove(&tid);
        if close {
            if let Some(c) = self.child.as_mut() {
                if c.send(ToChild::Close(tid)).is_err() {
                    c.kill("its pipe broke");
                }
            }
        }
    }

    /// Send `msg` (a start or a resume of task `tid`) and serve the task's calls until its step
    /// ends. Blocks the executor like any computing task; watches the cancel flag and the
    /// memory limit meanwhile.
    /// Children the task submits are tasks of `function`.
    pub fn step(
        &mut self,
        ctx: &Ctx,
        function: &str,
        msg: ToChild<'_>,
        boxes: &mut HashMap<u64, PyFuture>,
    ) -> StepEnd {
        let grace = limits().map_or(Duration::from_secs(1), |l| l.cancel_grace);
        let memory = limits().and_then(|l| l.memory);
        let Some(child) = self.child.as_mut() else {
            return StepEnd::Crashed(self.last_cause.clone());
        };
        if child.send(msg).is_err() {
            let cause = self.lose();
            return StepEnd::Crashed(cause);
        }
        let mut cancel_by: Option<Instant> = None;
        let mut call_error: Option<String> = None;
        let mut last_check = Instant::now();
        loop {
            let got = child.recv(TICK);
            let cancelled = cancel_by.is_some();
            match got {
                Ok(Some(m)) => match m {
                    FromChild::Done(b) if !cancelled => {
                        return match call_error {
                            Some(e) => StepEnd::Failed(e),
                            None => StepEnd::Done(b),
                        }
                    }
                    FromChild::Failed(t) if !cancelled => return StepEnd::Failed(t),
                    FromChild::Await { mailbox, next } if !cancelled => {
                        return match call_error {
                            Some(e) => StepEnd::Failed(e),
                            None => StepEnd::Await { mailbox, next },
                        }
                    }
                    FromChild::Done(_) | FromChild::Failed(_) | FromChild::Await { .. } => {
                        return StepEnd::Cancelled
                    }
                    FromChild::Submit {
                        mailbox,
                        single,
                        local,
                        tokens,
                        children,
                        needs,
                    } => {
                        let names: Vec<&str> = needs.split(',').filter(|n| !n.is_empty()).collect();
                        let needs = match crate::topology::resources::needs(&names) {
                            Ok(m) => m,
                            Err(e) => {
                                call_error
                                    .get_or_insert_with(|| format!("bqrt: submit failed: {e}"));
                                continue;
                            }
                        };
                        let table: Option<Arc<dyn Tokens>> =
                            child.tokens.clone().map(|t| t as Arc<dyn Tokens>);
                        let raw = children
                            .into_iter()
                            .enumerate()
                            .map(|(i, (name, args))| RawChild {
                                function: function.to_string(),
                                args,
                                format: Format::Bincode,
                                label: Some(name),
                                context: Vec::new(),
                                needs,
                                token: match (&table, tokens.get(i)) {
                                    (Some(table), Some(&index)) => Some(Token {
                                        tokens: table.clone(),
                                        index,
                                    }),
                                    _ => None,
                                },
                            })
                            .collect();
                        let submitted = match local {
                            true => ctx.submit_raw_local(raw),
                            false => ctx.submit_raw(raw),
                        };
                        match submitted {
                            Ok(fut) => {
                                boxes.insert(mailbox, PyFuture { fut, single });
                            }
                            Err(e) => {
                                call_error.get_or_insert_with(|| {
                                    format!("bqrt: submit failed: {}", e.message())
                                });
                            }
                        }
                    }
                    FromChild::Claim(mailbox) => {
                        let got = match boxes.get(&mailbox) {
                            Some(b) => ctx.claim_raw(&b.fut).ok().flatten(),
                            None => None,
                        };
                        let reply = got
                            .as_ref()
                            .map(|c| (c.slot, c.label.as_deref().unwrap_or(""), c.args.as_slice()));
                        if child.send(ToChild::Claimed(reply)).is_err() {
                            child.kill("its pipe broke");
                        }
                    }
                    FromChild::Cancel(mailbox) => {
                        if let Some(b) = boxes.remove(&mailbox) {
                            ctx.cancel(b.fut);
                        }
                    }
                    FromChild::Communicate(mailbox, bytes) => {
                        if let Some(b) = boxes.get(&mailbox) {
                            if let Err(e) = ctx.communicate_raw(&b.fut, bytes) {
                                call_error.get_or_insert_with(|| {
                                    format!("bqrt: communicate failed: {}", e.message())
                                });
                            }
                        }
                    }
                    FromChild::GetMessages => {
                        let msgs = ctx.take_messages_raw();
                        if child.send(ToChild::Messages(&msgs)).is_err() {
                            child.kill("its pipe broke");
                        }
                    }
                    FromChild::Log { level, name, text } => {
                        ctx.log_raw(super::level::to_bqrt(level), &name, text);
                    }
                    FromChild::Hello => {}
                },
                Ok(None) => {}
                Err(_) => {
                    let cause = self.lose();
                    return match cancelled {
                        true => StepEnd::Cancelled,
                        false => StepEnd::Crashed(cause),
                    };
                }
            }
            if last_check.elapsed() < TICK {
                continue;
            }
            last_check = Instant::now();
            if ctx.is_cancelled() {
                match cancel_by {
                    None => {
                        // cooperative first: TaskCancelled is raised in the task
                        child.signal(libc::SIGUSR1);
                        cancel_by = Some(Instant::now() + grace);
                    }
                    Some(t) if Instant::now() >= t => child.kill(format!(
                        "killed: its task was cancelled and did not stop within {:.1} s",
                        grace.as_secs_f64()
                    )),
                    Some(_) => {}
                }
            }
            if let Some(limit) = memory {
                if let Some(rss) = child.rss().filter(|&r| r > limit) {
                    child.kill(format!(
                        "killed: over the memory limit ({} resident, the limit is {}: --memory-limit)",
                        super::size::show(rss),
                        super::size::show(limit)
                    ));
                }
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            c.quit(QUIT_GRACE);
        }
    }
}
