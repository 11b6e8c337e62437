//! The job table of rank 0: every job as its clients see it (sans-IO).
//!
//! One table serves every client of a runtime: the gateway's native and BQSKit connections and
//! the batch runner of `bqrt run` (which is one connection, [`LOCAL`]). It is a plain state
//! machine in the style of `sched/`: requests from connections ([`JobTable::on_request`]),
//! events pushed by the server core ([`JobTable::on_event`]) and the passing of time
//! ([`JobTable::tick`]) go in, with the current time as an argument; what must be done comes
//! out as [`Effect`]s (replies to connections, commands to the server). It never blocks, never
//! reads a clock and never asks the server anything: status, task counts and whether an id was
//! ever handed out are all known here, because the server pushes a job's progress as events
//! (`Started`, `Progress`, `Finished`, `Log`) and job ids are handed out here.
//!
//! Records: a job belongs to the connection that submitted it unless submitted detached. A
//! result, once delivered, frees the record; a connection that closes has its unfinished jobs
//! cancelled and all its records freed. Ended jobs whose results nobody fetched are kept up to
//! [`MAX_ENDED`], oldest dropped first, and a detached job nobody watches keeps at most
//! [`KEPT_LOGS`] log records, so memory stays bounded whatever clients do.

use crate::protocol::native::{JobResult, JobState, JobStatus, Reply, Request};
use crate::protocol::{Format, JobId, LogRecord};
use crate::sched::{JobSpec, ServerEvent};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Ended jobs kept for clients that have not fetched their results.
pub const MAX_ENDED: usize = 10_000;
/// Log records kept for a detached job until someone watches it or fetches its result.
pub const KEPT_LOGS: usize = 1000;
/// How often watchers get a job's progress.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// A client connection, as the table knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// The connection of rank 0's own client thread (the batch runner, an in-process cluster).
pub const LOCAL: ConnId = ConnId(0);

/// What the table asks its caller to do, in order.
#[derive(Debug, PartialEq)]
pub enum Effect {
    /// Send this reply to this connection.
    Reply(ConnId, Reply),
    /// Hand the job to the server; then report with [`JobTable::submitted`] whether it took it.
    Submit {
        conn: ConnId,
        job: JobId,
        spec: JobSpec,
    },
    /// Cancel the job's whole task tree at the server.
    Cancel(JobId),
    /// Answer `conn` with a snapshot of the cluster (the server has it).
    Top(ConnId),
    /// A client asked the runtime to stop.
    Stop,
    /// The runtime is failing (a rank died): tell everyone this and stop.
    Fatal(String),
}

/// Where a job is.
#[derive(Clone, Debug, PartialEq)]
enum Stage {
    Queued,
    Running,
    Ended(JobResult, JobState),
}

#[derive(Debug)]
struct Entry {
    stage: Stage,
    owner: Option<ConnId>,
    spawned: u64,
    finished: u64,
    /// Why the job failed (the status note of an ended job).
    note: String,
    watchers: Vec<ConnId>,
    /// Connections waiting for the result, each until its deadline (none: no limit).
    waiters: Vec<(ConnId, Option<Instant>)>,
    /// Records of a detached job nobody has seen yet (at most [`KEPT_LOGS`], oldest dropped).
    logs: VecDeque<LogRecord>,
    /// When the job fails for running past the time limit.
    deadline: Option<Instant>,
}

impl Entry {
    fn status(&self) -> JobStatus {
        let state = match &self.stage {
            Stage::Queued => JobState::Queued,
            Stage::Running => JobState::Running,
            Stage::Ended(_, s) => *s,
        };
        JobStatus {
            state,
            spawned: self.spawned,
            finished: self.finished,
            note: self.note.clone(),
        }
    }

    fn ended(&self) -> bool {
        matches!(self.stage, Stage::Ended(..))
    }

    /// Everyone who sees the job's logs as they come: its watchers and its owner.
    fn audience(&self) -> Vec<ConnId> {
        let mut to = self.watchers.clone();
        if let Some(o) = self.owner.filter(|o| !to.contains(o)) {
            to.push(o);
        }
        to
    }
}

/// The job table. See the module documentation.
#[derive(Debug)]
pub struct JobTable {
    /// The highest job id handed out so far.
    last_job: u64,
    jobs: HashMap<JobId, Entry>,
    /// Ended jobs in the order they ended, for eviction.
    ended: VecDeque<JobId>,
    conns: HashSet<ConnId>,
    next_progress: Option<Instant>,
    /// How long a job may run (`--job-time-limit`).
    time_limit: Option<Duration>,
}

impl Default for JobTable {
    fn default() -> JobTable {
        JobTable::new()
    }
}

impl JobTable {
    pub fn new() -> JobTable {
        JobTable {
            last_job: 0,
            jobs: HashMap::new(),
            ended: VecDeque::new(),
            conns: HashSet::new(),
            next_progress: None,
            time_limit: None,
        }
    }

    /// Fail every job that runs longer than `limit` from its submission (its tasks are
    /// cancelled); none: no limit.
    pub fn set_time_limit(&mut self, limit: Option<Duration>) {
        self.time_limit = limit;
    }

    /// Connections open now.
    pub fn clients(&self) -> usize {
        self.conns.len()
    }

    /// Records held (running jobs and ended ones not yet fetched).
    pub fn records(&self) -> usize {
        self.jobs.len()
    }

    /// A connection opened.
    pub fn open(&mut self, conn: ConnId) {
        self.conns.insert(conn);
    }

    /// The earliest time [`JobTable::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let waiters = self
            .jobs
            .values()
            .flat_map(|e| e.waiters.iter().filter_map(|w| w.1))
            .min();
        let limits = self
            .jobs
            .values()
            .filter(|e| !e.ended())
            .filter_map(|e| e.deadline)
            .min();
        let watched = self
            .jobs
            .values()
            .any(|e| !e.ended() && !e.watchers.is_empty());
        let progress = self.next_progress.filter(|_| watched);
        waiters.into_iter().chain(progress).chain(limits).min()
    }

    /// A request from a connection.
    pub fn on_request(&mut self, conn: ConnId, req: Request, now: Instant, out: &mut Vec<Effect>) {
        match req {
            Request::Hello { .. } => reply(out, conn, error("already authenticated")),
            Request::Submit {
                task,
                args,
                format,
                log,
                detach,
            } => {
                let spec = JobSpec {
                    function: task,
                    label: None,
                    args,
                    format,
                    log,
                };
                self.submit(conn, spec, detach, now, out);
            }
            Request::Status { job } => {
                let status = self.status(job);
                reply(out, conn, Reply::Status { job, status });
            }
            Request::Result { job, timeout_ms } => self.result(conn, job, timeout_ms, now, out),
            Request::Cancel { job } => self.cancel(conn, job, out),
            Request::Watch { job } => self.watch(conn, job, now, out),
            Request::Top => out.push(Effect::Top(conn)),
            Request::Shutdown => out.push(Effect::Stop),
            Request::Bye => self.close(conn, out),
        }
    }

    /// Start a job for `conn` (a job of [`LOCAL`] or a detached one outlives no connection, but
    /// is not cancelled when one closes). Returns its id.
    pub fn submit(
        &mut self,
        conn: ConnId,
        spec: JobSpec,
        detach: bool,
        now: Instant,
        out: &mut Vec<Effect>,
    ) -> JobId {
        self.last_job += 1;
        let job = JobId(self.last_job);
        self.jobs.insert(
            job,
            Entry {
                stage: Stage::Queued,
                owner: (!detach).then_some(conn),
                spawned: 1,
                finished: 0,
                note: String::new(),
                watchers: Vec::new(),
                waiters: Vec::new(),
                logs: VecDeque::new(),
                deadline: self.time_limit.map(|l| now + l),
            },
        );
        out.push(Effect::Submit { conn, job, spec });
        job
    }

    /// Whether the server took the job of an [`Effect::Submit`]: the connection learns its id,
    /// or that the runtime is stopping.
    pub fn submitted(&mut self, conn: ConnId, job: JobId, accepted: bool, out: &mut Vec<Effect>) {
        if accepted {
            reply(out, conn, Reply::Submitted { job });
        } else {
            self.jobs.remove(&job);
            reply(out, conn, error("the runtime is stopping"));
        }
    }

    fn result(
        &mut self,
        conn: ConnId,
        job: JobId,
        timeout_ms: Option<u64>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        match self.jobs.get_mut(&job) {
            Some(e) if e.ended() => self.deliver(job, conn, out),
            Some(e) => {
                let deadline = timeout_ms.map(|ms| now + Duration::from_millis(ms));
                e.waiters.push((conn, deadline));
            }
            None => {
                let result = JobResult::Unknown(self.unknown_note(job));
                reply(out, conn, Reply::Result { job, result });
            }
        }
    }

    fn cancel(&mut self, conn: ConnId, job: JobId, out: &mut Vec<Effect>) {
        let (cancelled, note) = match self.jobs.get(&job).map(|e| e.status().state) {
            Some(JobState::Queued | JobState::Running) => {
                out.push(Effect::Cancel(job));
                self.end(job, JobResult::Cancelled, JobState::Cancelled, out);
                (true, "cancelled with its whole task tree".to_string())
            }
            Some(state) => (
                false,
                format!("{job} already ended ({state}); nothing to cancel"),
            ),
            None => (false, self.unknown_note(job)),
        };
        let r = Reply::Cancelled {
            job,
            cancelled,
            note,
        };
        reply(out, conn, r);
    }

    fn watch(&mut self, conn: ConnId, job: JobId, now: Instant, out: &mut Vec<Effect>) {
        let Some(e) = self.jobs.get_mut(&job) else {
            // the watch ends at once, in the job's terms (a client exits as for any unknown job)
            let status = self.status(job);
            return reply(out, conn, Reply::Progress { job, status });
        };
        if !e.watchers.contains(&conn) {
            e.watchers.push(conn);
        }
        for record in e.logs.drain(..) {
            out.push(Effect::Reply(conn, Reply::Log { job, record }));
        }
        let status = e.status();
        reply(out, conn, Reply::Progress { job, status });
        self.next_progress.get_or_insert(now + PROGRESS_EVERY);
    }

    /// A connection is gone: cancel its unfinished jobs and free its records.
    pub fn close(&mut self, conn: ConnId, out: &mut Vec<Effect>) {
        self.conns.remove(&conn);
        let owned: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, e)| e.owner == Some(conn))
            .map(|(j, _)| *j)
            .collect();
        for job in owned {
            if self.jobs.remove(&job).is_some_and(|e| !e.ended()) {
                out.push(Effect::Cancel(job));
            }
        }
        for e in self.jobs.values_mut() {
            e.watchers.retain(|&c| c != conn);
            e.waiters.retain(|&(c, _)| c != conn);
        }
    }

    /// An event from the server core.
    pub fn on_event(&mut self, ev: ServerEvent, out: &mut Vec<Effect>) {
        match ev {
            ServerEvent::Started { job } => {
                if let Some(e) = self.jobs.get_mut(&job).filter(|e| e.stage == Stage::Queued) {
                    e.stage = Stage::Running;
                }
            }
            ServerEvent::Progress {
                job,
                spawned,
                finished,
            } => {
                if let Some(e) = self.jobs.get_mut(&job).filter(|e| !e.ended()) {
                    e.spawned = spawned;
                    e.finished = finished;
                }
            }
            ServerEvent::Finished {
                job,
                outcome,
                spawned,
                finished,
            } => self.finished(job, outcome, spawned, finished, out),
            ServerEvent::Log { job, record } => self.log(job, record, out),
            ServerEvent::Lost { message } => out.push(Effect::Fatal(message)),
        }
    }

    fn finished(
        &mut self,
        job: JobId,
        outcome: Result<Vec<u8>, crate::protocol::Failure>,
        spawned: u64,
        finished: u64,
        out: &mut Vec<Effect>,
    ) {
        let Some(e) = self.jobs.get_mut(&job).filter(|e| !e.ended()) else {
            return; // cancelled meanwhile, or its connection left
        };
        e.spawned = spawned;
        e.finished = finished;
        let (result, state) = match outcome {
            Ok(value) => {
                let format = Format::Json;
                (JobResult::Done { value, format }, JobState::Done)
            }
            Err(f) => {
                e.note = f.to_string();
                (JobResult::Failed(f), JobState::Failed)
            }
        };
        self.end(job, result, state, out);
    }

    fn log(&mut self, job: JobId, record: LogRecord, out: &mut Vec<Effect>) {
        let Some(e) = self.jobs.get_mut(&job) else {
            return;
        };
        let to = e.audience();
        if to.is_empty() {
            if e.logs.len() >= KEPT_LOGS {
                e.logs.pop_front();
            }
            e.logs.push_back(record);
            return;
        }
        for c in to {
            let record = record.clone();
            out.push(Effect::Reply(c, Reply::Log { job, record }));
        }
    }

    /// Time passed: jobs past the time limit fail, waiters whose deadline passed get
    /// `Pending`; watchers get progress.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let mut late: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, e)| !e.ended() && e.deadline.is_some_and(|d| d <= now))
            .map(|(j, _)| *j)
            .collect();
        late.sort();
        for job in late {
            self.time_out(job, out);
        }
        for (&job, e) in &mut self.jobs {
            e.waiters.retain(|&(c, d)| {
                let late = d.is_some_and(|d| d <= now);
                if late {
                    let result = JobResult::Pending;
                    out.push(Effect::Reply(c, Reply::Result { job, result }));
                }
                !late
            });
        }
        if self.next_progress.is_some_and(|t| t <= now) {
            self.next_progress = Some(now + PROGRESS_EVERY);
            let mut watched: Vec<(&JobId, &Entry)> = self
                .jobs
                .iter()
                .filter(|(_, e)| !e.ended() && !e.watchers.is_empty())
                .collect();
            watched.sort_by_key(|(j, _)| **j);
            for (&job, e) in watched {
                let status = e.status();
                for &w in &e.watchers {
                    let status = status.clone();
                    out.push(Effect::Reply(w, Reply::Progress { job, status }));
                }
            }
        }
    }

    /// A job's status as a client sees it.
    pub fn status(&self, job: JobId) -> JobStatus {
        match self.jobs.get(&job) {
            Some(e) => e.status(),
            None => JobStatus {
                state: JobState::Unknown,
                spawned: 0,
                finished: 0,
                note: self.unknown_note(job),
            },
        }
    }

    fn unknown_note(&self, job: JobId) -> String {
        if job.0 == 0 || job.0 > self.last_job {
            format!("{job} was never submitted to this server")
        } else {
            format!("{job} has ended and its record was freed (its result was fetched, or its client disconnected)")
        }
    }

    /// A job ended: watchers learn it, the first waiter gets the result (and the record is
    /// freed), or the record waits for a client, oldest evicted first.
    /// A job ran past the time limit: it fails, and its task tree is cancelled.
    fn time_out(&mut self, job: JobId, out: &mut Vec<Effect>) {
        let Some(e) = self.jobs.get_mut(&job) else {
            return;
        };
        let secs = self.time_limit.map_or(0.0, |l| l.as_secs_f64());
        let failure = crate::protocol::Failure {
            task: "(job)".into(),
            addr: crate::protocol::Address {
                rank: crate::protocol::Rank(0),
                mailbox: crate::protocol::MailboxId(job.0),
                slot: 0,
            },
            message: format!(
                "time limit: the job ran longer than {secs} s (the server's --job-time-limit); its tasks were stopped"
            ),
            rank: crate::protocol::Rank(0),
        };
        e.note = failure.message.clone();
        out.push(Effect::Cancel(job));
        self.end(job, JobResult::Failed(failure), JobState::Failed, out);
    }

    fn end(&mut self, job: JobId, result: JobResult, state: JobState, out: &mut Vec<Effect>) {
        let Some(e) = self.jobs.get_mut(&job) else {
            return;
        };
        e.stage = Stage::Ended(result, state);
        let status = e.status();
        for &w in &e.watchers {
            let status = status.clone();
            out.push(Effect::Reply(w, Reply::Progress { job, status }));
        }
        if let Some(&(first, _)) = e.waiters.first() {
            return self.deliver(job, first, out);
        }
        self.ended.push_back(job);
        while self.ended.len() > MAX_ENDED {
            let Some(old) = self.ended.pop_front() else {
                break;
            };
            if self.jobs.get(&old).is_some_and(Entry::ended) {
                self.jobs.remove(&old);
            }
        }
    }

    /// Send an ended job's result to `conn` (and any other waiter) and free the record.
    fn deliver(&mut self, job: JobId, conn: ConnId, out: &mut Vec<Effect>) {
        let Some(e) = self.jobs.remove(&job) else {
            return;
        };
        let Stage::Ended(result, _) = e.stage else {
            return;
        };
        let mut to: Vec<ConnId> = e.waiters.iter().map(|w| w.0).collect();
        if !to.contains(&conn) {
            to.push(conn);
        }
        for record in e.logs {
            out.push(Effect::Reply(conn, Reply::Log { job, record }));
        }
        for c in to {
            let result = result.clone();
            out.push(Effect::Reply(c, Reply::Result { job, result }));
        }
    }
}

fn reply(out: &mut Vec<Effect>, conn: ConnId, r: Reply) {
    out.push(Effect::Reply(conn, r));
}

fn error(message: &str) -> Reply {
    Reply::Error {
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests;
