//! Messages between ranks: one enum per link direction.
//!
//! * [`Down`]: boss -> employee (server or manager to manager or worker).
//! * [`Up`]: employee -> boss.
//! * [`Peer`]: any rank -> any rank, addressed by a task's [`Address`]. Results, placement
//!   notices, cancels, logs and failures take the shortest path: straight to the rank that
//!   owns the mailbox or the job, never through the scheduling tree.
//!
//! Task arguments and results are opaque bytes here: only the worker that runs a task and the
//! job's owner interpret them.

use super::breadcrumbs::Breadcrumbs;
use super::ids::{Address, BatchSeq, JobId, MailboxAddr, Rank};
use serde::{Deserialize, Serialize};

/// How a payload (task arguments or result) is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    /// bincode 2 (standard config): between native tasks.
    Bincode,
    /// JSON text: at the edge, for clients and the command line.
    Json,
}

/// Log filter of a job, inherited by all its tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSpec {
    /// Records at this level or more severe are forwarded (1 = error .. 5 = trace; 0 = none).
    pub level: u8,
    /// Tasks deeper than this (root = 0) forward nothing; `None` = no limit.
    pub max_depth: Option<u32>,
}

impl LogSpec {
    /// Nothing is forwarded.
    pub const OFF: LogSpec = LogSpec {
        level: 0,
        max_depth: None,
    };
}

/// A task on the wire and in a worker's delayed queue: only its bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskMsg {
    /// Return address and system-wide id.
    pub addr: Address,
    pub job: JobId,
    /// The registered task function to run.
    pub function: String,
    /// Display name (`task_name`); `None` means the function name.
    pub label: Option<String>,
    pub args: Vec<u8>,
    /// Encoding of `args`; the result is encoded the same way.
    pub format: Format,
    /// Ancestors' addresses, root first; the length is the depth.
    pub breadcrumbs: Breadcrumbs,
    pub log: LogSpec,
    /// Log context, inherited and extended by children.
    pub context: Vec<(String, String)>,
    /// Resources a worker must offer to run it (bits of the runtime's resource names,
    /// `topology::groups::Resources`; 0: none, any worker).
    pub needs: u64,
}

impl TaskMsg {
    pub fn depth(&self) -> u32 {
        self.breadcrumbs.len()
    }
    /// The name shown to users.
    pub fn name(&self) -> &str {
        self.label.as_deref().unwrap_or(&self.function)
    }
}

/// A task's failure, reported to the job's owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Name of the task that failed.
    pub task: String,
    /// Its address.
    pub addr: Address,
    /// The error message (and traceback, where the task kind has one).
    pub message: String,
    /// Where it ran.
    pub rank: Rank,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "task '{}' {} on {} failed: {}",
            self.task, self.addr, self.rank, self.message
        )
    }
}

/// A log record forwarded from a task to its job's owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// 1 = error, 2 = warn, 3 = info, 4 = debug, 5 = trace.
    pub level: u8,
    pub target: String,
    pub message: String,
    pub task: String,
    pub depth: u32,
    pub rank: Rank,
    pub context: Vec<(String, String)>,
}

/// Boss -> employee.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Down {
    /// Run these tasks. A worker starts the last and delays the rest (LIFO). `overflow`: the
    /// boss knew of no idle slot for them (otherwise they were meant for idle workers, and a
    /// manager that has fewer idle workers than that sends the rest back up at once).
    /// `all_occupied`: the boss placed them while every worker it knows was occupied, so an
    /// occupied worker keeps them instead of handing them back (which would only bring them
    /// back to an occupied worker, over and over, until one is free).
    Assign {
        seq: BatchSeq,
        tasks: Vec<TaskMsg>,
        overflow: bool,
        all_occupied: bool,
    },
    /// Give back up to `max` delayed tasks (oldest first) with [`Up::Stolen`].
    Steal { max: u32 },
    /// Stop: finish nothing, exit. `error`: why, when the runtime stops because of a failure
    /// (the rank then exits with status 1).
    Shutdown { error: Option<String> },
}

/// Employee -> boss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Up {
    /// New tasks from below (children submitted by tasks), with how many delayed tasks the
    /// employee holds (a manager: its estimate for its group) after reading every batch up to
    /// `receipt`: the boss's backlog estimate is exact again at every submission.
    Submit {
        tasks: Vec<TaskMsg>,
        queued: u64,
        receipt: BatchSeq,
    },
    /// The employee's idle worker count changed. `receipt` is the last batch it has read, so the
    /// boss can discount batches still in flight.
    Waiting { idle: u32, receipt: BatchSeq },
    /// Answer to [`Down::Steal`]: delayed tasks handed back for placement elsewhere, and how
    /// many the employee still holds delayed (a manager: its estimate for its group) after
    /// reading every batch up to `receipt`, so the boss's backlog estimate is exact after every
    /// steal.
    Stolen {
        tasks: Vec<TaskMsg>,
        left: u64,
        receipt: BatchSeq,
    },
    /// `workers` of the employee's workers are now occupied: inside one task for longer than
    /// the runtime's threshold, so they take no new work (0: none any more). `tasks` are queued
    /// tasks they hand back for placement elsewhere.
    Occupied { workers: u32, tasks: Vec<TaskMsg> },
}

/// Any rank -> any rank, addressed by task or job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Peer {
    /// A task's result, sent to the rank of its return address, with the task counts of its
    /// subtree (so the root's result carries the job's exact totals).
    Result {
        addr: Address,
        value: Vec<u8>,
        tasks: Subtree,
    },
    /// Tasks of mailbox `mailbox` now live on rank `at` (sent by `at` when it receives them).
    Placed { mailbox: MailboxAddr, at: Rank },
    /// Cancel every task whose return address is in `mailbox`, and their descendants.
    Cancel { mailbox: MailboxAddr },
    /// A task failed; sent to the server, which fails the job.
    Failed { job: JobId, failure: Failure },
    /// A log record for the job's owner; sent to the server.
    Log { job: JobId, record: LogRecord },
    /// A message for the started tasks of `mailbox` (BQSKit's `communicate`), sent to the
    /// ranks holding them.
    Communicate { mailbox: MailboxAddr, msg: Vec<u8> },
    /// A node leader found a rank of its node dead (`silent` 0), or silent for `silent`
    /// seconds (stopped, or wedged); sent to the server.
    Lost {
        rank: Rank,
        role: String,
        node: u32,
        silent: u64,
    },
    /// A worker's counters since its last report, sent to the server: per job, tasks created
    /// and tasks finished; and the tasks queued on the worker now.
    Progress { queued: u32, jobs: Vec<JobProgress> },
    /// A sign of life, sent by every rank to the rank that watches it every
    /// heartbeat period (a sixth of the stuck time) (by the transport thread, so a rank computing a long task still sends it).
    Alive,
}

/// Task counts of a finished task's subtree: tasks created in it (itself included, cancelled
/// children counted once) and tasks finished in it (those whose results reached their parents).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subtree {
    pub spawned: u64,
    pub finished: u64,
}

/// Task counts of one job since the last report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub job: JobId,
    pub spawned: u64,
    pub finished: u64,
}

/// Everything a rank can receive from another rank.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    Down(Down),
    Up(Up),
    Peer(Peer),
}

/// Messages a rank wants sent: `(destination, message)`, in order per destination.
pub type Outbox = Vec<(Rank, Msg)>;
