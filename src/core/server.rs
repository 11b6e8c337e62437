//! The server's state machine (sans-IO): jobs and the top of the scheduling tree.
//!
//! A job is a root task whose return address is a server mailbox `(0, job, 0)`. The server
//! places tasks on its employees (managers, or workers directly on one node), tracks where each
//! job's root task lives (from `Placed`), and turns the root's result or any task's failure into
//! a [`ServerEvent`]. A failure fails the job and cancels its whole tree. Job records are freed
//! as soon as the job ends; later messages for it are dropped (or, for `Placed`, answered with a
//! cancel).

use super::boss::{Boss, Outbox};
use super::idmap::IdMap;
use crate::protocol::{
    Address, Failure, Format, JobId, LogRecord, LogSpec, MailboxAddr, MailboxId, Msg, Peer, Rank,
    TaskMsg, Up,
};

/// What a client asks for.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub function: String,
    pub label: Option<String>,
    pub args: Vec<u8>,
    pub format: Format,
    pub log: LogSpec,
}

/// What the server reports to the job owners' side (gateway or batch runner).
#[derive(Clone, Debug, PartialEq)]
pub enum ServerEvent {
    /// A job ended; `spawned` and `finished` are its task counts as last reported.
    Finished {
        job: JobId,
        outcome: Result<Vec<u8>, Failure>,
        spawned: u64,
        finished: u64,
    },
    Log {
        job: JobId,
        record: LogRecord,
    },
    /// A rank died; the runtime is stopping with this error.
    Lost {
        message: String,
    },
}

#[derive(Debug)]
struct Job {
    locations: Vec<Rank>,
    spawned: u64,
    finished: u64,
}

/// A running job as the server sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// False until a worker reported holding the root task.
    pub started: bool,
    /// Tasks created so far (the root included) and tasks finished, as reported by workers.
    pub spawned: u64,
    pub finished: u64,
}

/// The cluster as the server sees it, for monitoring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub workers: u32,
    pub idle: u32,
    /// Tasks waiting in workers' queues (last reports).
    pub queued: u64,
    pub active_jobs: usize,
    /// Tasks finished since start (reported).
    pub finished_tasks: u64,
    /// The server's employees: `(rank, workers, idle)`.
    pub employees: Vec<(Rank, u32, u32)>,
}

#[derive(Debug)]
pub struct ServerCore {
    pub(crate) boss: Boss,
    next_job: u64,
    jobs: IdMap<JobId, Job>,
    events: Vec<ServerEvent>,
    queued: IdMap<Rank, u32>,
    finished_tasks: u64,
}

impl ServerCore {
    /// `employees`: the ranks directly under the server with the workers under each.
    pub fn new(employees: &[(Rank, u32)], seed: u64) -> ServerCore {
        ServerCore {
            boss: Boss::new(employees, seed),
            next_job: 0,
            jobs: IdMap::default(),
            events: Vec::new(),
            queued: IdMap::default(),
            finished_tasks: 0,
        }
    }

    pub fn workers(&self) -> u32 {
        self.boss.workers_total()
    }

    pub fn idle_workers(&self) -> u32 {
        self.boss.idle_total()
    }

    /// Jobs not yet finished.
    pub fn active_jobs(&self) -> usize {
        self.jobs.len()
    }

    pub fn take_events(&mut self) -> Vec<ServerEvent> {
        std::mem::take(&mut self.events)
    }

    /// Start a job: its root task goes to the scheduling tree.
    pub fn submit(&mut self, spec: JobSpec, out: &mut Outbox) -> JobId {
        self.next_job += 1;
        let job = JobId(self.next_job);
        let task = TaskMsg {
            addr: Address {
                rank: Rank::SERVER,
                mailbox: MailboxId(job.0),
                slot: 0,
            },
            job,
            function: spec.function,
            label: spec.label,
            args: spec.args,
            format: spec.format,
            breadcrumbs: crate::protocol::Breadcrumbs::new(),
            log: spec.log,
            context: Vec::new(),
        };
        self.jobs.insert(
            job,
            Job {
                locations: Vec::new(),
                spawned: 1,
                finished: 0,
            },
        );
        self.boss.place_all(vec![task], out);
        job
    }

    /// The state of a job that has not ended.
    pub fn job(&self, job: JobId) -> Option<JobInfo> {
        self.jobs.get(&job).map(|j| JobInfo {
            started: !j.locations.is_empty(),
            spawned: j.spawned,
            finished: j.finished,
        })
    }

    /// The highest job id handed out so far.
    pub fn last_job(&self) -> JobId {
        JobId(self.next_job)
    }

    /// Monitoring snapshot.
    pub fn cluster(&self) -> ClusterView {
        ClusterView {
            workers: self.boss.workers_total(),
            idle: self.boss.idle_total(),
            queued: self.queued.values().map(|&q| u64::from(q)).sum(),
            active_jobs: self.jobs.len(),
            finished_tasks: self.finished_tasks,
            employees: self
                .boss
                .employees
                .iter()
                .map(|e| (e.rank, e.workers, e.idle))
                .collect(),
        }
    }

    /// Cancel a running job and its whole tree. False if the job is unknown or already ended.
    pub fn cancel(&mut self, job: JobId, out: &mut Outbox) -> bool {
        match self.jobs.remove(&job) {
            Some(j) => {
                Self::cancel_root(job, j, out);
                true
            }
            None => false,
        }
    }

    fn cancel_root(job: JobId, j: Job, out: &mut Outbox) {
        let mailbox = MailboxAddr {
            rank: Rank::SERVER,
            mailbox: MailboxId(job.0),
        };
        for at in j.locations {
            out.push((at, Msg::Peer(Peer::Cancel { mailbox })));
        }
    }

    /// A message from another rank.
    pub fn handle(&mut self, from: Rank, msg: Msg, out: &mut Outbox) {
        match msg {
            Msg::Up(up) => {
                let Some(e) = self.boss.employee(from) else {
                    log::error!("server: {from} is not an employee of the server; message dropped");
                    return;
                };
                match up {
                    Up::Submit { tasks } => self.boss.place_all(tasks, out),
                    Up::Waiting { idle, receipt } => self.boss.on_waiting(e, idle, receipt),
                    Up::Stolen { tasks } => {
                        self.boss.on_stolen(e, tasks.len());
                        self.boss.place_all(tasks, out);
                    }
                }
            }
            Msg::Peer(Peer::Result { addr, value, tasks }) => {
                let job = JobId(addr.mailbox.0);
                if let Some(j) = self.jobs.remove(&job) {
                    self.events.push(ServerEvent::Finished {
                        job,
                        outcome: Ok(value),
                        spawned: tasks.spawned.max(j.spawned),
                        finished: tasks.finished,
                    });
                }
            }
            Msg::Peer(Peer::Placed { mailbox, at }) => {
                match self.jobs.get_mut(&JobId(mailbox.mailbox.0)) {
                    Some(j) => {
                        if !j.locations.contains(&at) {
                            j.locations.push(at);
                        }
                    }
                    None => out.push((at, Msg::Peer(Peer::Cancel { mailbox }))),
                }
            }
            Msg::Peer(Peer::Failed { job, failure }) => {
                if let Some(j) = self.jobs.remove(&job) {
                    let (spawned, finished) = (j.spawned, j.finished);
                    Self::cancel_root(job, j, out);
                    self.events.push(ServerEvent::Finished {
                        job,
                        outcome: Err(failure),
                        spawned,
                        finished,
                    });
                }
            }
            Msg::Peer(Peer::Log { job, record }) => {
                if self.jobs.contains_key(&job) {
                    self.events.push(ServerEvent::Log { job, record });
                }
            }
            Msg::Peer(Peer::Progress { queued, jobs }) => {
                self.queued.insert(from, queued);
                for p in jobs {
                    self.finished_tasks += p.finished;
                    if let Some(j) = self.jobs.get_mut(&p.job) {
                        j.spawned += p.spawned;
                        j.finished += p.finished;
                    }
                }
            }
            Msg::Peer(Peer::Lost { .. } | Peer::Communicate { .. }) => {} // handled by the rank's driver, or not for the server
            Msg::Peer(Peer::Cancel { .. }) | Msg::Down(_) => {
                log::error!("server: unexpected message from {from}; dropped");
            }
        }
        self.boss.plan_steals(self.boss.idle_total(), out);
    }
}
