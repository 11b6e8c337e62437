//! Each role's [`Logic`] for the transport loop: the glue between a sans-IO core and the
//! threads of its rank.

use crate::core::{ClusterView, JobInfo, JobSpec, ManagerCore, Outbox, ServerCore, ServerEvent};
use crate::executor::{Inbound, Running};
use crate::protocol::{Down, JobId, Msg, Peer, Rank};
use crate::transport::{Flow, Logic};
use crossbeam::channel::Sender;
use std::sync::Arc;

/// Requests from client-side threads of rank 0.
pub enum Command {
    Submit {
        spec: JobSpec,
        reply: Sender<JobId>,
    },
    Cancel {
        job: JobId,
        reply: Sender<bool>,
    },
    /// State of a job that has not ended, and the last job id handed out.
    JobInfo {
        job: JobId,
        reply: Sender<(Option<JobInfo>, JobId)>,
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
}

impl ServerLogic {
    fn forward_events(&mut self) {
        for ev in self.core.take_events() {
            // the client side going away only means nobody listens any more
            let _ = self.events.send(ev);
        }
    }
}

impl Logic for ServerLogic {
    type Local = Command;

    /// The client thread (gateway or batch runner) stops the runtime in order; only if it has
    /// not within three grace periods does the server stop the tree itself.
    fn on_signal(&mut self, waited: std::time::Duration, out: &mut Outbox) -> Flow {
        if waited >= 3 * super::signals::GRACE {
            for &e in &self.employees {
                out.push((e, Msg::Down(Down::Shutdown)));
            }
            return Flow::Stop;
        }
        Flow::Continue
    }

    fn on_message(&mut self, from: Rank, msg: Msg, out: &mut Outbox) -> Flow {
        self.core.handle(from, msg, out);
        self.forward_events();
        Flow::Continue
    }

    fn on_local(&mut self, cmd: Command, out: &mut Outbox) -> Flow {
        match cmd {
            Command::Submit { spec, reply } => {
                let job = self.core.submit(spec, out);
                let _ = reply.send(job);
            }
            Command::Cancel { job, reply } => {
                let ok = self.core.cancel(job, out);
                let _ = reply.send(ok);
            }
            Command::JobInfo { job, reply } => {
                let _ = reply.send((self.core.job(job), self.core.last_job()));
            }
            Command::Cluster { reply } => {
                let _ = reply.send(self.core.cluster());
            }
            Command::Shutdown => {
                for &e in &self.employees {
                    out.push((e, Msg::Down(Down::Shutdown)));
                }
                return Flow::Stop;
            }
        }
        self.forward_events();
        Flow::Continue
    }
}

pub(crate) struct ManagerLogic {
    pub(crate) core: ManagerCore,
    pub(crate) employees: Vec<Rank>,
}

impl Logic for ManagerLogic {
    type Local = ();

    fn on_message(&mut self, from: Rank, msg: Msg, out: &mut Outbox) -> Flow {
        if let Msg::Down(Down::Shutdown) = msg {
            for &e in &self.employees {
                out.push((e, Msg::Down(Down::Shutdown)));
            }
            return Flow::Stop;
        }
        self.core.handle(from, msg, out);
        Flow::Continue
    }

    fn on_local(&mut self, _: (), _: &mut Outbox) -> Flow {
        Flow::Continue
    }
}

/// The transport side of a worker: messages go to the executor thread; what the executor
/// wants sent comes back as local events.
pub(crate) struct WorkerLogic {
    pub(crate) inbound: Sender<Inbound>,
    pub(crate) running: Arc<Running>,
}

impl Logic for WorkerLogic {
    type Local = Outbox;

    fn on_message(&mut self, _from: Rank, msg: Msg, _out: &mut Outbox) -> Flow {
        if let Msg::Peer(Peer::Cancel { mailbox }) = &msg {
            self.running.on_cancel(*mailbox);
        }
        if let Msg::Down(Down::Shutdown) = msg {
            self.running.cancel_current();
            let _ = self.inbound.send(Inbound::Stop);
            return Flow::Stop;
        }
        let _ = self.inbound.send(Inbound::Msg(msg));
        Flow::Continue
    }

    fn on_local(&mut self, msgs: Outbox, out: &mut Outbox) -> Flow {
        out.extend(msgs);
        Flow::Continue
    }
}
