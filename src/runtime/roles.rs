//! Each role's [`Logic`] for the transport loop: the glue between a sans-IO core and the
//! threads of its rank, plus liveness watching and shutdown.

use super::liveness::{Heartbeat, Lost, Watcher};
use super::stop;
use crate::executor::{lock_state, Inbound, LiveTasks, SharedState};
use crate::protocol::{Down, JobId, MailboxId, Msg, Outbox, Peer, Rank, Up};
use crate::sched::{ClusterView, JobSpec, ManagerCore, ServerCore, ServerEvent};
use crate::transport::{Flow, Logic};
use crossbeam::channel::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests from client-side threads of rank 0.
pub enum Command {
    /// Start a job (its id comes from the job table).
    Submit {
        job: JobId,
        spec: JobSpec,
    },
    /// Cancel a job's whole task tree (nothing if it already ended).
    Cancel {
        job: JobId,
    },
    Cluster {
        reply: Sender<ClusterView>,
    },
    /// Stop every rank.
    Shutdown,
}

pub(crate) struct ServerLogic {
    pub(crate) core: ServerCore,
    pub(crate) events: Sender<ServerEvent>,
    pub(crate) employees: Vec<Rank>,
    /// Every rank of the runtime (for stopping them all when the tree is broken).
    pub(crate) ranks: u32,
    pub(crate) watcher: Option<Watcher>,
    pub(crate) heartbeat: Heartbeat,
    pub(crate) lost: Vec<Lost>,
    pub(crate) lost_at: Option<Instant>,
}

impl ServerLogic {
    fn forward_events(&mut self) {
        for ev in self.core.take_events() {
            // the client side going away only means nobody listens any more
            let _ = self.events.send(ev);
        }
    }

    fn shutdown(&self, out: &mut Outbox) {
        let error = self.lost.first().map(|l| l.to_string());
        if error.is_some() {
            // the tree may be broken: tell every live rank directly
            for r in 1..self.ranks {
                if !self.lost.iter().any(|l| l.rank.0 == r) {
                    out.push((
                        Rank(r),
                        Msg::Down(Down::Shutdown {
                            error: error.clone(),
                        }),
                    ));
                }
            }
        } else {
            for &e in &self.employees {
                out.push((e, Msg::Down(Down::Shutdown { error: None })));
            }
        }
    }

    fn on_lost(&mut self, lost: Lost, out: &mut Outbox) {
        if self.lost.iter().any(|l| l.rank == lost.rank) {
            return;
        }
        crate::eline!("bqrt: {lost}; stopping the runtime");
        let _ = self.events.send(ServerEvent::Lost {
            message: format!("{lost}; the runtime is stopping"),
        });
        self.lost.push(lost);
        self.lost_at.get_or_insert_with(Instant::now);
        self.shutdown(out);
    }
}

impl Logic for ServerLogic {
    type Local = Command;

    fn on_message(&mut self, from: Rank, msg: Msg, out: &mut Outbox) -> Flow {
        if let Msg::Peer(Peer::Lost {
            rank,
            role,
            node,
            silent,
        }) = &msg
        {
            let role = match role.as_str() {
                "manager" => "manager",
                "server" => "server",
                _ => "worker",
            };
            let lost = Lost {
                rank: *rank,
                role,
                node: *node,
                silent: *silent,
            };
            self.on_lost(lost, out);
            return Flow::Continue;
        }
        if heard(&mut self.watcher, from, &msg) {
            return Flow::Continue;
        }
        self.core.handle(from, msg, out);
        self.forward_events();
        Flow::Continue
    }

    fn on_local(&mut self, cmd: Command, out: &mut Outbox) -> Flow {
        match cmd {
            Command::Submit { job, spec } => {
                self.core.submit(job, spec, out);
            }
            Command::Cancel { job } => {
                self.core.cancel(job, out);
            }
            Command::Cluster { reply } => {
                let _ = reply.send(self.core.cluster());
            }
            Command::Shutdown => {
                self.shutdown(out);
                return Flow::Stop;
            }
        }
        self.forward_events();
        Flow::Continue
    }

    fn on_tick(&mut self, out: &mut Outbox) -> Flow {
        let found = self
            .watcher
            .as_mut()
            .map(Watcher::check)
            .unwrap_or_default();
        for l in found {
            self.on_lost(l, out);
        }
        self.heartbeat.beat(out);
        self.core.report_progress();
        self.forward_events();
        if self
            .lost_at
            .is_some_and(|t| t.elapsed() >= stop::LOST_DEADLINE)
        {
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// The client thread (gateway or batch runner) stops the runtime in order; only if it has
    /// not within [`stop::SERVER_GRACE`] does the server stop the tree itself.
    fn on_signal(&mut self, waited: Duration, out: &mut Outbox) -> Flow {
        if waited >= stop::SERVER_GRACE {
            self.shutdown(out);
            return Flow::Stop;
        }
        Flow::Continue
    }
}

fn is_log(msg: &Msg) -> bool {
    matches!(msg, Msg::Peer(Peer::Log { .. }))
}

/// A sign of life for this rank's watcher: noted, and the message needs nothing else.
fn heard(watcher: &mut Option<Watcher>, from: Rank, msg: &Msg) -> bool {
    if !matches!(msg, Msg::Peer(Peer::Alive)) {
        return false;
    }
    if let Some(w) = watcher {
        w.heard(from);
    }
    true
}

/// A watcher's liveness report and this rank's sign of life, for managers and workers.
/// Returns `Stop` when the server itself was lost: then this rank stops every other rank.
fn report_lost(
    me: Rank,
    ranks: u32,
    watcher: &mut Option<Watcher>,
    heartbeat: &mut Heartbeat,
    exit_code: &mut i32,
    out: &mut Outbox,
) -> Flow {
    heartbeat.beat(out);
    for l in watcher.as_mut().map(Watcher::check).unwrap_or_default() {
        crate::eline!("bqrt: {l}");
        if l.rank == Rank::SERVER {
            let error = Some(format!("{l}; the runtime is stopping"));
            for r in (1..ranks).filter(|&r| r != me.0) {
                out.push((
                    Rank(r),
                    Msg::Down(Down::Shutdown {
                        error: error.clone(),
                    }),
                ));
            }
            stopping_with(me, &error, exit_code);
            return Flow::Stop;
        }
        out.push((
            Rank::SERVER,
            Msg::Peer(Peer::Lost {
                rank: l.rank,
                role: l.role.to_string(),
                node: l.node,
                silent: l.silent,
            }),
        ));
    }
    Flow::Continue
}

/// Note an error shutdown on this rank.
fn stopping_with(me: Rank, error: &Option<String>, exit_code: &mut i32) {
    if let (Some(e), 0) = (error, *exit_code) {
        crate::eline!("bqrt: rank {} stopping: {e}", me.0);
        *exit_code = 1;
    }
}

pub(crate) struct ManagerLogic {
    pub(crate) me: Rank,
    pub(crate) core: ManagerCore,
    pub(crate) employees: Vec<Rank>,
    pub(crate) watcher: Option<Watcher>,
    pub(crate) heartbeat: Heartbeat,
    pub(crate) exit_code: i32,
    pub(crate) ranks: u32,
}

impl Logic for ManagerLogic {
    type Local = ();

    fn on_message(&mut self, from: Rank, msg: Msg, out: &mut Outbox) -> Flow {
        if let Msg::Down(Down::Shutdown { error }) = msg {
            stopping_with(self.me, &error, &mut self.exit_code);
            for &e in &self.employees {
                out.push((
                    e,
                    Msg::Down(Down::Shutdown {
                        error: error.clone(),
                    }),
                ));
            }
            return Flow::Stop;
        }
        if heard(&mut self.watcher, from, &msg) {
            return Flow::Continue;
        }
        self.core.handle(from, msg, out);
        Flow::Continue
    }

    fn on_local(&mut self, _: (), _: &mut Outbox) -> Flow {
        Flow::Continue
    }

    fn on_tick(&mut self, out: &mut Outbox) -> Flow {
        report_lost(
            self.me,
            self.ranks,
            &mut self.watcher,
            &mut self.heartbeat,
            &mut self.exit_code,
            out,
        )
    }

    fn on_signal(&mut self, waited: Duration, _out: &mut Outbox) -> Flow {
        unattended_stop(waited)
    }
}

/// A worker inside one task for this long is **occupied**: it hands back its queued tasks and
/// takes no new work until the task ends (checked every [`stop::WATCH_EVERY`]). Well above a
/// quick task (microseconds to a few milliseconds), well below a slow synthesis step.
pub(crate) const OCCUPIED_AFTER: Duration = Duration::from_millis(50);

/// The transport side of a worker: it hands every message to the worker's core itself (under
/// the lock it shares with the executor), so steals, cancels and results take effect even while
/// a task computes, then wakes the executor. What the core produces meanwhile leaves at once;
/// the executor sends its own over the channel (`on_local`).
pub(crate) struct WorkerLogic {
    pub(crate) me: Rank,
    pub(crate) state: SharedState,
    pub(crate) inbound: Sender<Inbound>,
    pub(crate) running: Arc<LiveTasks>,
    pub(crate) watcher: Option<Watcher>,
    pub(crate) heartbeat: Heartbeat,
    pub(crate) stall: super::stall::Stall,
    pub(crate) exit_code: i32,
    pub(crate) ranks: u32,
    /// The mailboxes of the children a long step had submitted to the boss at the last tick,
    /// still held for the step's end (see `on_tick`).
    pub(crate) held: Vec<MailboxId>,
}

/// The mailbox of the children an `Up::Submit` carries.
fn submitted(msg: &Msg) -> Option<MailboxId> {
    match msg {
        Msg::Up(Up::Submit { tasks, .. }) => tasks.first().map(|t| t.addr.mailbox),
        _ => None,
    }
}

impl Logic for WorkerLogic {
    type Local = Outbox;

    fn on_message(&mut self, from: Rank, msg: Msg, out: &mut Outbox) -> Flow {
        self.on_messages(from, vec![msg], out)
    }

    /// A packet's messages: those for the driver first, then the rest handed to the core under
    /// one lock, and the executor woken once.
    fn on_messages(&mut self, from: Rank, msgs: Vec<Msg>, out: &mut Outbox) -> Flow {
        let mut for_core = Vec::with_capacity(msgs.len());
        let mut cancels = Vec::new();
        let mut shutdown = None;
        for msg in msgs {
            if heard(&mut self.watcher, from, &msg) {
                continue;
            }
            if let Msg::Peer(Peer::Cancel { mailbox }) = &msg {
                cancels.push(*mailbox);
            }
            if let Msg::Peer(Peer::Communicate { mailbox, msg }) = &msg {
                self.running.on_communicate(*mailbox, msg);
                continue;
            }
            if let Msg::Down(Down::Shutdown { error }) = msg {
                shutdown = Some(error);
                break;
            }
            for_core.push(msg);
        }
        if !for_core.is_empty() {
            {
                let mut s = lock_state(&self.state);
                let s = &mut *s;
                for msg in for_core {
                    s.core.handle(msg, &mut s.out);
                }
                out.append(&mut s.out);
            }
            // after the core: a task it handed out before these cancels is the running one by
            // now (see `LiveTasks::enter`), and one it removed never starts
            for mailbox in cancels {
                self.running.on_cancel(mailbox);
            }
            let _ = self.inbound.send(Inbound::Wake);
        }
        match shutdown {
            Some(error) => {
                stopping_with(self.me, &error, &mut self.exit_code);
                self.stop_executor();
                Flow::Stop
            }
            None => Flow::Continue,
        }
    }

    /// The executor's messages.
    fn on_local(&mut self, mut msgs: Outbox, out: &mut Outbox) -> Flow {
        out.append(&mut msgs);
        Flow::Continue
    }

    fn on_tick(&mut self, out: &mut Outbox) -> Flow {
        // a task computing for long takes no new work, and hands back what waits behind it
        if self.running.busy_for().is_some_and(|d| d >= OCCUPIED_AFTER) {
            let mut s = lock_state(&self.state);
            let s = &mut *s;
            if !s.core.is_occupied() {
                // only the hand-back goes now; what the long step produces so far waits for it
                let mut handed = Outbox::new();
                s.core.set_occupied(true, &mut handed);
                out.append(&mut handed);
            }
        }
        if let Some((key, since)) = self.running.current() {
            // the log records of a step that blocks leave now, not when it ends; the rest of
            // what it produced waits (work-first may keep a child it submitted, and a child
            // cancelled in the same step never leaves), up to its aged submits (below). Only
            // once the step has run for OCCUPIED_AFTER: what the executor sent before it began
            // was taken from the channel earlier in this turn (`drive`), so records keep their
            // order across tasks.
            let mut s = lock_state(&self.state);
            if since.elapsed() >= OCCUPIED_AFTER && s.out.iter().any(|(_, m)| is_log(m)) {
                let (logs, rest) = std::mem::take(&mut s.out)
                    .into_iter()
                    .partition::<Outbox, _>(|(_, m)| is_log(m));
                s.out = rest;
                out.extend(logs);
            }
            // Children the step submitted to the boss that were held at the last tick too leave
            // now, with what the step produced before them, in order: a step that computes
            // after a submit must not keep its children from idle workers until it ends. A
            // cancel within a tick of its submit still takes the children back before they
            // leave (decision 70).
            if since.elapsed() >= OCCUPIED_AFTER {
                let aged = s.out.iter().rposition(|(_, m)| {
                    submitted(m).is_some_and(|mailbox| self.held.contains(&mailbox))
                });
                if let Some(last) = aged {
                    let rest = s.out.split_off(last + 1);
                    out.extend(std::mem::replace(&mut s.out, rest));
                }
                self.held = s.out.iter().filter_map(|(_, m)| submitted(m)).collect();
            } else {
                self.held.clear();
            }
            drop(s);
            if let Some(text) = self.stall.check(key, since) {
                let mut s = lock_state(&self.state);
                let s = &mut *s;
                let name = s.core.task(key).map(|t| t.name().to_string());
                let name = name.unwrap_or_default();
                let msg = format!("bqrt: task '{name}' on rank {} {text}", self.me.0);
                log::warn!(target: "bqrt::runtime", "{msg}");
                let mut logged = Outbox::new();
                s.core.log(key, 2, "bqrt", msg, &mut logged);
                out.append(&mut logged);
            }
        }
        let flow = report_lost(
            self.me,
            self.ranks,
            &mut self.watcher,
            &mut self.heartbeat,
            &mut self.exit_code,
            out,
        );
        if flow == Flow::Stop {
            self.stop_executor();
        }
        flow
    }

    fn on_signal(&mut self, waited: Duration, _out: &mut Outbox) -> Flow {
        let flow = unattended_stop(waited);
        if flow == Flow::Stop {
            self.stop_executor();
        }
        flow
    }
}

impl WorkerLogic {
    /// Raise the running task's cancel flag (cooperative tasks end early) and stop the executor.
    fn stop_executor(&self) {
        self.running.cancel_current();
        let _ = self.inbound.send(Inbound::Stop);
    }
}

/// A rank other than the server that saw a stop signal stops by itself once the server's
/// shutdown has not come within [`stop::GRACE`].
fn unattended_stop(waited: Duration) -> Flow {
    if waited >= stop::GRACE {
        Flow::Stop
    } else {
        Flow::Continue
    }
}
