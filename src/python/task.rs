//! The `bqskit` task: runs one BQSKit task (a Python coroutine) in the worker's supervised
//! Python process ([`super::supervisor`]).
//!
//! The task's bytes are an envelope (see python/bqrt_worker.py) that only the Python process
//! opens. The rank starts the coroutine there and steps it: a step ends with the result, a
//! failure (a traceback), or an await on a mailbox of the task's children, which the rank then
//! polls here (`poll_next` when the future carries BQSKit's `_next_flag`) and whose results
//! (pickled bytes) it sends back in. Children the coroutine submits arrive during its step and
//! go out through [`Ctx::submit_raw`] as `bqskit` tasks.
//!
//! If the process dies while this task's step runs, the task fails with the cause; if it dies
//! while the task waits, the task starts over from its envelope in the next process.

use super::child::ToChild;
use super::supervisor::{self, NoStart, PyFuture, StepEnd};
use crate::executor::{Ctx, TaskError, TaskResult};
use std::collections::HashMap;
use std::future::poll_fn;
use std::task::Poll;

/// The registered name of BQSKit tasks.
pub const FUNCTION: &str = "bqskit";

/// The worker's Python process, started as the worker starts, so that it has imported BQSKit
/// (about a second) by the time the first task arrives.
pub fn warm_up(rank: crate::protocol::Rank) {
    supervisor::prestart(rank.0);
}

/// How one run of the task in one process ended.
enum Attempt {
    Finished(TaskResult<Vec<u8>>),
    /// Its process died while it waited: start over (the cause).
    Lost(String),
}

/// What the next step sends.
enum Resume {
    Start,
    All(Vec<Vec<u8>>, bool),
    Next(Vec<(usize, Vec<u8>)>),
}

/// Leaves the process when the attempt ends, however it ends (a dropped future: cancelled).
struct Member {
    rank: u32,
    tid: u64,
    generation: u64,
    /// Whether the coroutine is still in the process (closed when this is dropped).
    open: bool,
}

impl Drop for Member {
    fn drop(&mut self) {
        let (tid, generation, open) = (self.tid, self.generation, self.open);
        supervisor::with(self.rank, |s| s.leave(tid, generation, open));
    }
}

/// Run one BQSKit task to its end.
pub async fn run(ctx: Ctx, envelope: Vec<u8>) -> TaskResult<Vec<u8>> {
    let mut restarts = 0;
    loop {
        match attempt(&ctx, &envelope).await {
            Attempt::Finished(r) => return r,
            Attempt::Lost(cause) => {
                restarts += 1;
                let name = ctx.name();
                let rank = ctx.rank().0;
                if restarts > supervisor::MAX_RESTARTS {
                    return Err(TaskError::new(format!(
                        "bqrt: task '{name}' lost its Python process on rank {rank} {restarts} times while it waited (last: {cause})"
                    )));
                }
                ctx.log_raw(
                    2,
                    "bqrt",
                    format!("bqrt: task '{name}' starts over: the Python process of rank {rank} ended while it waited ({cause})"),
                );
            }
        }
    }
}

async fn attempt(ctx: &Ctx, envelope: &[u8]) -> Attempt {
    let rank = ctx.rank().0;
    let joined = supervisor::with(rank, |s| s.join(ctx).map(|tid| (tid, s.generation())));
    let (tid, generation) = match joined {
        Ok(v) => v,
        Err(NoStart::Cancelled) => return Attempt::Finished(Err(cancelled())),
        Err(NoStart::Failed(e)) => return Attempt::Finished(Err(TaskError::new(e))),
    };
    let mut member = Member {
        rank,
        tid,
        generation,
        open: true,
    };
    let depth = ctx.depth();
    let mut boxes: HashMap<u64, PyFuture> = HashMap::new();
    let mut resume = Resume::Start;
    loop {
        let end = supervisor::with(rank, |s| {
            let msg = match &resume {
                Resume::Start => ToChild::Start {
                    tid,
                    depth,
                    envelope,
                },
                Resume::All(values, single) => ToChild::All {
                    tid,
                    single: *single,
                    values,
                },
                Resume::Next(pairs) => ToChild::Next { tid, pairs },
            };
            s.step(ctx, FUNCTION, msg, &mut boxes)
        });
        let (mailbox, next) = match end {
            StepEnd::Await { mailbox, next } => (mailbox, next),
            other => {
                member.open = matches!(other, StepEnd::Cancelled);
                return Attempt::Finished(match other {
                    StepEnd::Done(bytes) => Ok(bytes),
                    StepEnd::Failed(text) => Err(TaskError::new(explain(text))),
                    StepEnd::Crashed(cause) => Err(TaskError::new(format!(
                        "bqrt: the Python process running task '{}' on rank {rank} died: {cause}. This task fails; the rank's other tasks go on in a fresh process",
                        ctx.name()
                    ))),
                    _ => Err(cancelled()),
                });
            }
        };
        let Some(mb) = boxes.get_mut(&mailbox) else {
            return Attempt::Finished(Err(TaskError::new(
                "RuntimeError: Cannot await on a canceled task.",
            )));
        };
        let polled = poll_fn(|_| {
            if supervisor::generation() != generation {
                return Poll::Ready(None);
            }
            let p = match next {
                true => mb.fut.poll_next().map(|r| r.map(Resume::Next)),
                false => {
                    let single = mb.single;
                    mb.fut.poll_all().map(|r| r.map(|v| Resume::All(v, single)))
                }
            };
            p.map(Some)
        })
        .await;
        resume = match polled {
            None => {
                member.open = false;
                let cause = supervisor::with(rank, |s| s.last_cause().to_string());
                return Attempt::Lost(cause);
            }
            Some(Err(e)) => return Attempt::Finished(Err(e)),
            Some(Ok(r)) => r,
        };
        if matches!(resume, Resume::All(..)) {
            boxes.remove(&mailbox);
        }
    }
}

fn cancelled() -> TaskError {
    TaskError::new("bqrt: the task was cancelled")
}

/// A task's failure, with the memory limit named when it ran out of memory under one.
fn explain(text: String) -> String {
    match supervisor::memory_limit() {
        Some(limit) if text.contains("MemoryError") => format!(
            "{text}\nbqrt: this worker's Python process may use at most {} (--memory-limit)",
            super::size::show(limit)
        ),
        _ => text,
    }
}
