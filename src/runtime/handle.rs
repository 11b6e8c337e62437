//! [`ServerHandle`]: how threads of rank 0 (the gateway, the batch runner, in-process users)
//! reach the server core that runs on the transport thread.
//!
//! The handle owns rank 0's one [`JobTable`] and carries out its effects: commands go to the
//! server core over a channel, and the server's events come back on another. Nothing here waits
//! for the server to answer except [`ServerHandle::cluster`] (a monitoring snapshot).

use super::roles::Command;
use crate::executor::Registry;
use crate::jobs::{ConnId, Effect, JobTable, LOCAL};
use crate::protocol::native::{BranchView, JobResult, Reply, Request, TopView, WorkerGroupView};
use crate::protocol::{Failure, Format, JobId, LogRecord, LogSpec};
use crate::sched::{ClusterView, JobSpec, ServerEvent};
use crossbeam::channel::{bounded, Receiver, RecvTimeoutError};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A job's end as the client sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Done(Vec<u8>),
    Failed(Failure),
    /// The runtime stopped because a rank died (the error names it).
    RuntimeFailed(String),
}

/// Client-side access to the server.
pub struct ServerHandle {
    commands: crate::transport::LocalSender<Command>,
    events: Receiver<ServerEvent>,
    /// The tasks of this runtime: a client's submit is checked against it.
    registry: Registry,
    table: JobTable,
    /// Replies for [`LOCAL`] not yet taken.
    local: VecDeque<Reply>,
    /// The runtime is failing (a rank died): why.
    fatal: Option<String>,
    /// A client asked the runtime to stop.
    stop_requested: bool,
    /// Worker groups per node, for `top`.
    worker_groups: Vec<WorkerGroupView>,
}

impl ServerHandle {
    pub(crate) fn new(
        commands: crate::transport::LocalSender<Command>,
        events: Receiver<ServerEvent>,
        registry: Registry,
    ) -> ServerHandle {
        let mut table = JobTable::new();
        table.open(LOCAL);
        ServerHandle {
            commands,
            events,
            registry,
            table,
            local: VecDeque::new(),
            fatal: None,
            stop_requested: false,
            worker_groups: Vec::new(),
        }
    }

    /// The worker groups per node, for `top`.
    pub fn set_worker_groups(&mut self, groups: Vec<WorkerGroupView>) {
        self.worker_groups = groups;
    }

    /// Fail jobs that run longer than `limit` (`--job-time-limit`).
    pub fn set_time_limit(&mut self, limit: Option<std::time::Duration>) {
        self.table.set_time_limit(limit);
    }

    /// The job table (read-only; change it through the methods below).
    pub fn table(&self) -> &JobTable {
        &self.table
    }

    /// The server's events, for a caller that waits on several channels at once (the gateway):
    /// hand each to [`ServerHandle::on_event`].
    pub fn events(&self) -> &Receiver<ServerEvent> {
        &self.events
    }

    /// Why the runtime is failing, once a rank was lost.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// Whether a client asked the runtime to stop.
    pub fn stop_requested(&self) -> bool {
        self.stop_requested
    }

    /// A connection opened.
    pub fn open(&mut self, conn: ConnId) {
        self.table.open(conn);
    }

    /// A request from a connection; the replies for other connections than [`LOCAL`] are
    /// pushed to `replies`. A submit of a task this runtime does not have, or with arguments
    /// that do not decode into the task's argument type, is refused at once.
    pub fn request(
        &mut self,
        conn: ConnId,
        req: Request,
        now: Instant,
        replies: &mut Vec<(ConnId, Reply)>,
    ) {
        if let Request::Submit {
            task, args, format, ..
        } = &req
        {
            if let Err(message) = self.registry.check(task, args, *format) {
                let r = Reply::Error { message };
                return self.carry_out(vec![Effect::Reply(conn, r)], replies);
            }
        }
        let mut fx = Vec::new();
        self.table.on_request(conn, req, now, &mut fx);
        self.carry_out(fx, replies);
    }

    /// A connection is gone: its unfinished jobs are cancelled, its records freed.
    pub fn close(&mut self, conn: ConnId, replies: &mut Vec<(ConnId, Reply)>) {
        let mut fx = Vec::new();
        self.table.close(conn, &mut fx);
        self.carry_out(fx, replies);
    }

    /// An event from the server.
    pub fn on_event(&mut self, ev: ServerEvent, replies: &mut Vec<(ConnId, Reply)>) {
        let mut fx = Vec::new();
        self.table.on_event(ev, &mut fx);
        self.carry_out(fx, replies);
    }

    /// Time passed (result timeouts, watchers' progress).
    pub fn tick(&mut self, now: Instant, replies: &mut Vec<(ConnId, Reply)>) {
        let mut fx = Vec::new();
        self.table.tick(now, &mut fx);
        self.carry_out(fx, replies);
    }

    fn carry_out(&mut self, fx: Vec<Effect>, replies: &mut Vec<(ConnId, Reply)>) {
        let mut queue: VecDeque<Effect> = fx.into();
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Reply(c, r) if c == LOCAL => self.local.push_back(r),
                Effect::Reply(c, r) => replies.push((c, r)),
                Effect::Submit { conn, job, spec } => {
                    let accepted = self.commands.send(Command::Submit { job, spec }).is_ok();
                    let mut more = Vec::new();
                    self.table.submitted(conn, job, accepted, &mut more);
                    queue.extend(more);
                }
                Effect::Cancel(job) => {
                    let _ = self.commands.send(Command::Cancel { job });
                }
                Effect::Top(conn) => {
                    let top = self.top();
                    queue.push_back(Effect::Reply(conn, Reply::Top(top)));
                }
                Effect::Stop => self.stop_requested = true,
                Effect::Fatal(message) => {
                    self.fatal.get_or_insert(message);
                }
            }
        }
    }

    fn top(&self) -> TopView {
        let c = self.cluster().unwrap_or_default();
        TopView {
            workers: c.workers,
            idle: c.idle,
            queued: c.queued,
            active_jobs: c.active_jobs,
            finished_tasks: c.finished_tasks,
            clients: self.table.clients() as u32,
            branches: c
                .employees
                .iter()
                .map(|&(r, w, i)| BranchView {
                    rank: r.0,
                    workers: w,
                    idle: i,
                })
                .collect(),
            groups: self.worker_groups.clone(),
        }
    }

    /// Submit a job for rank 0's own client. `None` if the runtime has stopped.
    pub fn submit(&mut self, spec: JobSpec) -> Option<JobId> {
        let mut fx = Vec::new();
        self.table
            .submit(LOCAL, spec, false, std::time::Instant::now(), &mut fx);
        self.carry_out(fx, &mut Vec::new());
        match self.take_local(|r| matches!(r, Reply::Submitted { .. } | Reply::Error { .. })) {
            Some(Reply::Submitted { job }) => Some(job),
            _ => None,
        }
    }

    /// Submit `task(args)` with JSON arguments.
    pub fn submit_json(&mut self, task: &str, args_json: &str, log: LogSpec) -> Option<JobId> {
        self.submit(JobSpec {
            function: task.to_string(),
            label: None,
            args: args_json.as_bytes().to_vec(),
            format: Format::Json,
            log,
        })
    }

    /// Cancel a job; false if unknown or ended.
    pub fn cancel(&mut self, job: JobId) -> bool {
        self.request(
            LOCAL,
            Request::Cancel { job },
            Instant::now(),
            &mut Vec::new(),
        );
        matches!(
            self.take_local(|r| matches!(r, Reply::Cancelled { job: j, .. } if *j == job)),
            Some(Reply::Cancelled {
                cancelled: true,
                ..
            })
        )
    }

    /// Wait for a job of rank 0's own client to end, handing its log records to `on_log` as they
    /// come. `None` on timeout (the job goes on) or if the runtime stopped.
    pub fn wait(
        &mut self,
        job: JobId,
        timeout: Duration,
        mut on_log: impl FnMut(&LogRecord),
    ) -> Option<Outcome> {
        let now = Instant::now();
        let deadline = now.checked_add(timeout);
        let timeout_ms = deadline.map(|_| timeout.as_millis().min(u128::from(u64::MAX)) as u64);
        self.request(
            LOCAL,
            Request::Result { job, timeout_ms },
            now,
            &mut Vec::new(),
        );
        loop {
            let mine = |r: &Reply| matches!(r, Reply::Log { job: j, .. } | Reply::Result { job: j, .. } if *j == job);
            while let Some(r) = self.take_local(mine) {
                match r {
                    Reply::Log { record, .. } => on_log(&record),
                    Reply::Result { result, .. } => return outcome(result),
                    _ => {}
                }
            }
            if let Some(m) = &self.fatal {
                return Some(Outcome::RuntimeFailed(m.clone()));
            }
            let ev = match deadline {
                Some(d) => self
                    .events
                    .recv_timeout(d.saturating_duration_since(Instant::now())),
                None => self
                    .events
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match ev {
                Ok(ev) => self.on_event(ev, &mut Vec::new()),
                Err(RecvTimeoutError::Timeout) => {
                    let now = deadline.map_or_else(Instant::now, |d| Instant::now().max(d));
                    self.tick(now, &mut Vec::new())
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The first local reply `wanted` picks; the others stay queued.
    fn take_local(&mut self, wanted: impl Fn(&Reply) -> bool) -> Option<Reply> {
        let i = self.local.iter().position(wanted)?;
        self.local.remove(i)
    }

    /// Monitoring snapshot of the cluster (asks the server and waits for its answer).
    pub fn cluster(&self) -> Option<ClusterView> {
        let (tx, rx) = bounded(1);
        self.commands.send(Command::Cluster { reply: tx }).ok()?;
        rx.recv().ok()
    }

    /// Stop every rank.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

fn outcome(result: JobResult) -> Option<Outcome> {
    match result {
        JobResult::Done { value, .. } => Some(Outcome::Done(value)),
        JobResult::Failed(f) => Some(Outcome::Failed(f)),
        JobResult::Pending | JobResult::Cancelled | JobResult::Unknown(_) => None,
    }
}
