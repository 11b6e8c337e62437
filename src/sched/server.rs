//! The server's state machine (sans-IO): jobs and the top of the scheduling tree.
//!
//! A job is a root task whose return address is a server mailbox `(0, job, 0)`. The server
//! places tasks on its employees (managers, or workers directly on one node), tracks where each
//! job's root task lives (from `Placed`), and turns the root's result or any task's failure into
//! a [`ServerEvent`]. A failure fails the job and cancels its whole tree. Job records are freed
//! as soon as the job ends; later messages for it are dropped (or, for `Placed`, answered with a
//! cancel).

use super::boss::Boss;
use super::idmap::IdMap;
use crate::protocol::Outbox;
use crate::protocol::{
    Address, Failure, Format, JobId, LogRecord, LogSpec, MailboxAddr, MailboxId, Msg, Peer, Rank,
    TaskMsg, Up,
};

/// What a client asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    pub function: String,
    pub label: Option<String>,
    pub args: Vec<u8>,
    pub format: Format,
    pub log: LogSpec,
}

/// What the server pushes to the job table of rank 0 (`crate::jobs`): a job's progress, as it
/// happens, so the table never has to ask.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerEvent {
    /// A worker holds the job's root task.
    Started {
        job: JobId,
    },
    /// A job's task counts changed (at most once per tick per job).
    Progress {
        job: JobId,
        spawned: u64,
        finished: u64,
    },
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
    /// Ranks that hold (or held) the root task: where a cancel goes.
    locations: Vec<Rank>,
    /// Tasks created so far (the root included) and finished, as reported by workers.
    spawned: u64,
    finished: u64,
    /// The counts changed since the last [`ServerEvent::Progress`].
    changed: bool,
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
    jobs: IdMap<JobId, Job>,
    /// Jobs whose counts changed since the last [`ServerCore::report_progress`].
    changed: Vec<JobId>,
    events: Vec<ServerEvent>,
    queued: IdMap<Rank, u32>,
    finished_tasks: u64,
}

impl ServerCore {
    /// `employees`: the ranks directly under the server with the workers under each.
    pub fn new(employees: &[(Rank, u32)], seed: u64) -> ServerCore {
        ServerCore {
            boss: Boss::new(employees, seed),
            jobs: IdMap::default(),
            changed: Vec::new(),
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

    /// Start a job (its id given by the job table): its root task goes to the scheduling tree.
    /// A job id already running is a bug of the caller and is refused.
    pub fn submit(&mut self, job: JobId, spec: JobSpec, out: &mut Outbox) -> bool {
        if self.jobs.contains_key(&job) {
            log::error!("server: {job} submitted twice; the second is dropped");
            return false;
        }
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
            needs: 0,
        };
        self.jobs.insert(
            job,
            Job {
                locations: Vec::new(),
                spawned: 1,
                finished: 0,
                changed: false,
            },
        );
        self.boss.place_root(task, out);
        true
    }

    /// Push the counts of jobs that changed since the last call (called on a timer, so a busy
    /// job costs one event per period, not one per worker report).
    pub fn report_progress(&mut self) {
        for job in std::mem::take(&mut self.changed) {
            if let Some(j) = self.jobs.get_mut(&job).filter(|j| j.changed) {
                j.changed = false;
                self.events.push(ServerEvent::Progress {
                    job,
                    spawned: j.spawned,
                    finished: j.finished,
                });
            }
        }
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
                    Up::Submit {
                        tasks,
                        queued,
                        receipt,
                    } => {
                        self.boss.on_submit(e, queued, receipt);
                        self.boss.place_all(tasks, out);
                    }
                    Up::Waiting { idle, receipt } => self.boss.on_waiting(e, idle, receipt),
                    Up::Stolen {
                        tasks,
                        left,
                        receipt,
                    } => {
                        self.boss.on_stolen(e, left, receipt);
                        self.boss.place_all(tasks, out);
                    }
                    Up::Occupied { workers, tasks } => {
                        self.boss.on_occupied(e, workers, tasks.len());
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
                        if j.locations.is_empty() {
                            self.events.push(ServerEvent::Started {
                                job: JobId(mailbox.mailbox.0),
                            });
                        }
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
                        if !j.changed {
                            j.changed = true;
                            self.changed.push(p.job);
                        }
                    }
                }
            }
            Msg::Peer(Peer::Lost { .. } | Peer::Communicate { .. } | Peer::Alive) => {} // handled by the rank's driver, or not for the server
            Msg::Peer(Peer::Cancel { .. }) | Msg::Down(_) => {
                log::error!("server: unexpected message from {from}; dropped");
            }
        }
        self.boss.plan_steals(self.boss.idle_total(), out);
    }
}
