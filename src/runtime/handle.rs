//! [`ServerHandle`]: how threads of rank 0 (batch runner, gateway, in-process users) talk to the
//! server core running on the transport thread.

use super::roles::Command;
use crate::core::{ClusterView, JobInfo, JobSpec, ServerEvent};
use crate::protocol::{Failure, Format, JobId, LogRecord, LogSpec};
use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender};
use std::collections::HashMap;
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
    commands: Sender<Command>,
    events: Receiver<ServerEvent>,
    finished: HashMap<JobId, Outcome>,
    logs: Vec<(JobId, LogRecord)>,
}

impl ServerHandle {
    pub(crate) fn new(commands: Sender<Command>, events: Receiver<ServerEvent>) -> ServerHandle {
        ServerHandle {
            commands,
            events,
            finished: HashMap::new(),
            logs: Vec::new(),
        }
    }

    /// Submit a job. `None` if the runtime has stopped.
    pub fn submit(&self, spec: JobSpec) -> Option<JobId> {
        let (tx, rx) = bounded(1);
        self.commands
            .send(Command::Submit { spec, reply: tx })
            .ok()?;
        rx.recv().ok()
    }

    /// Submit `task(args)` with JSON arguments.
    pub fn submit_json(&self, task: &str, args_json: &str, log: LogSpec) -> Option<JobId> {
        self.submit(JobSpec {
            function: task.to_string(),
            label: None,
            args: args_json.as_bytes().to_vec(),
            format: Format::Json,
            log,
        })
    }

    /// Cancel a job; false if unknown or ended.
    pub fn cancel(&self, job: JobId) -> bool {
        let (tx, rx) = bounded(1);
        if self
            .commands
            .send(Command::Cancel { job, reply: tx })
            .is_err()
        {
            return false;
        }
        rx.recv().unwrap_or(false)
    }

    /// Wait for a job to end, handing its log records to `on_log` as they come.
    /// `None` on timeout or if the runtime stopped.
    pub fn wait(
        &mut self,
        job: JobId,
        timeout: Duration,
        mut on_log: impl FnMut(&LogRecord),
    ) -> Option<Outcome> {
        let deadline = Instant::now() + timeout;
        for (j, r) in std::mem::take(&mut self.logs) {
            if j == job {
                on_log(&r);
            } else {
                self.logs.push((j, r));
            }
        }
        loop {
            if let Some(o) = self.finished.remove(&job) {
                return Some(o);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.events.recv_timeout(left) {
                Ok(ServerEvent::Finished {
                    job: j, outcome, ..
                }) => {
                    let o = match outcome {
                        Ok(v) => Outcome::Done(v),
                        Err(f) => Outcome::Failed(f),
                    };
                    self.finished.insert(j, o);
                }
                Ok(ServerEvent::Log { job: j, record }) => {
                    if j == job {
                        on_log(&record);
                    } else {
                        self.logs.push((j, record));
                    }
                }
                Ok(ServerEvent::Lost { message }) => return Some(Outcome::RuntimeFailed(message)),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// State of a job that has not ended, and the last job id handed out.
    pub fn job_info(&self, job: JobId) -> Option<(Option<JobInfo>, JobId)> {
        let (tx, rx) = bounded(1);
        self.commands
            .send(Command::JobInfo { job, reply: tx })
            .ok()?;
        rx.recv().ok()
    }

    /// Monitoring snapshot of the cluster.
    pub fn cluster(&self) -> Option<ClusterView> {
        let (tx, rx) = bounded(1);
        self.commands.send(Command::Cluster { reply: tx }).ok()?;
        rx.recv().ok()
    }

    /// The raw event stream (for a single consumer that routes events itself, like the gateway).
    pub fn events(&self) -> &Receiver<ServerEvent> {
        &self.events
    }

    /// Stop every rank.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}
