//! The gateway: rank 0's TCP front door for clients.
//!
//! An acceptor thread takes connections (at most `max_connections` at once; more are refused
//! with a reason) and gives each a connection thread ([`conn`]). Connections send requests to
//! the **hub**, which runs on the rank's client thread: it owns the server handle and the job
//! table, answers requests, and routes the server's events (results, logs) to the connections
//! that own or watch each job.
//!
//! Job records: a job belongs to the connection that submitted it unless submitted detached. A
//! result, once delivered, frees the record; a connection that closes has its unfinished jobs
//! cancelled and all its records freed. Ended detached jobs whose results nobody fetches are kept
//! up to [`MAX_ENDED`], oldest dropped first, so memory stays bounded.

mod conn;
pub mod token;

use crate::core::ServerEvent;
use crate::protocol::client::{GroupView, JobResult, JobState, JobStatus, Reply, Request, TopView};
use crate::protocol::{Format, JobId};
use crate::runtime::ServerHandle;
use crossbeam::channel::{select, unbounded, Receiver, Sender, TrySendError};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Ended jobs kept for clients that have not fetched their results.
pub const MAX_ENDED: usize = 10_000;

/// Another client protocol sharing the gateway's port. It is offered every connection whose
/// first five bytes are not the native header, and talks to the hub through a [`Link`] with the
/// same requests and replies as a native client (translating its own messages).
pub trait ForeignProtocol: Send + Sync {
    /// Whether the connection's first five bytes look like this protocol.
    fn accepts(&self, head: &[u8; 5]) -> bool;
    /// Serve the connection until it ends (runs on the connection's own thread). `head` holds
    /// the bytes already read.
    fn serve(&self, stream: std::net::TcpStream, head: [u8; 5], link: Link);
}

/// A foreign-protocol connection's handle on the hub.
pub struct Link {
    id: ConnId,
    hub: Sender<HubIn>,
    opened: bool,
}

impl Link {
    /// Register with the hub; replies for this connection arrive on the returned channel.
    pub fn open(&mut self) -> Receiver<Reply> {
        let (tx, rx) = crossbeam::channel::bounded(4096);
        self.opened = self.hub.send(HubIn::Open { conn: self.id, tx }).is_ok();
        rx
    }
    /// Send a request as if it came from a native client.
    pub fn request(&self, req: Request) -> bool {
        self.hub.send(HubIn::Request { conn: self.id, req }).is_ok()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if self.opened {
            let _ = self.hub.send(HubIn::Closed { conn: self.id });
        }
    }
}

#[derive(Clone)]
pub struct GatewayConfig {
    pub token: String,
    /// Another protocol on the same port (BQSKit's, with the `python` feature).
    pub foreign: Option<Arc<dyn ForeignProtocol>>,
    pub max_connections: usize,
    pub max_frame: usize,
    /// A frame started must complete within this.
    pub frame_timeout: Duration,
    /// A new connection must send its protocol header within this.
    pub handshake_timeout: Duration,
}

impl GatewayConfig {
    pub fn new(token: String) -> GatewayConfig {
        GatewayConfig {
            token,
            foreign: None,
            max_connections: 256,
            max_frame: crate::protocol::client::MAX_FRAME,
            frame_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Error)]
pub enum GatewayError {
    #[error("--listen {addr}: {source}; is another bqrt (or another program) using it? choose another port with --listen HOST:PORT (port 0 picks a free one)")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("--listen {0}: not a HOST:PORT address")]
    Address(String),
}

/// Bind the listener (before MPI start-up finishes, so a bad address fails fast).
pub fn bind(listen: &str) -> Result<(TcpListener, SocketAddr), GatewayError> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|_| GatewayError::Address(listen.into()))?
        .collect();
    let first = addrs
        .first()
        .ok_or_else(|| GatewayError::Address(listen.into()))?;
    let listener = TcpListener::bind(first).map_err(|source| GatewayError::Bind {
        addr: listen.into(),
        source,
    })?;
    let local = listener.local_addr().map_err(|source| GatewayError::Bind {
        addr: listen.into(),
        source,
    })?;
    Ok((listener, local))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

pub enum HubIn {
    Open {
        conn: ConnId,
        tx: Sender<Reply>,
    },
    Request {
        conn: ConnId,
        req: Request,
    },
    /// The connection broke the protocol: tell it why, then it closes.
    Fatal {
        conn: ConnId,
        reason: String,
    },
    Closed {
        conn: ConnId,
    },
}

/// Log records kept for a detached job until someone watches it or fetches its result.
const KEPT_LOGS: usize = 1000;

struct Entry {
    /// Records of a detached job nobody has seen yet (at most [`KEPT_LOGS`], oldest dropped).
    logs: VecDeque<crate::protocol::LogRecord>,
    owner: Option<ConnId>,
    watchers: Vec<ConnId>,
    ended: Option<(JobResult, JobStatus)>,
    waiters: Vec<(ConnId, Option<Instant>)>,
}

/// Serve clients until `stop` is set; then tell every client and return.
pub fn serve(
    listener: TcpListener,
    cfg: GatewayConfig,
    handle: &ServerHandle,
    stop: Arc<AtomicBool>,
    reason: &str,
) -> Option<String> {
    let cfg = Arc::new(cfg);
    let (hub_tx, hub_rx) = unbounded::<HubIn>();
    let active = Arc::new(AtomicUsize::new(0));
    let workers = handle.cluster().map(|c| c.workers).unwrap_or(0);
    {
        let cfg = Arc::clone(&cfg);
        let active = Arc::clone(&active);
        let stop = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("bqrt-gw-accept".into())
            .spawn(move || {
                let mut next = 0u64;
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    next += 1;
                    let over_cap = active.fetch_add(1, Ordering::SeqCst) >= cfg.max_connections;
                    let c = conn::Conn {
                        id: ConnId(next),
                        stream,
                        cfg: Arc::clone(&cfg),
                        hub: hub_tx.clone(),
                        active: Arc::clone(&active),
                        over_cap,
                        workers,
                    };
                    if std::thread::Builder::new()
                        .name(format!("bqrt-gw-r{next}"))
                        .spawn(move || c.run())
                        .is_err()
                    {
                        active.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            });
        if let Err(e) = spawned {
            log::error!(target: "bqrt::gateway", "cannot start the accept thread: {e}");
            return Some(format!("cannot start the accept thread: {e}"));
        }
    }
    let mut hub = Hub {
        handle,
        conns: HashMap::new(),
        jobs: HashMap::new(),
        ended: VecDeque::new(),
        last_progress: Instant::now(),
        fatal: None,
        stop_requested: false,
    };
    hub.run(&hub_rx, &stop);
    let reason = match (&hub.fatal, hub.stop_requested) {
        (Some(f), _) => f.clone(),
        (None, true) => "a client asked the runtime to stop".to_string(),
        (None, false) => reason.to_string(),
    };
    for tx in hub.conns.values() {
        let _ = tx.try_send(Reply::Shutdown {
            reason: reason.clone(),
        });
    }
    // give writers a moment to deliver the notice
    let deadline = Instant::now() + Duration::from_millis(500);
    while hub.conns.values().any(|tx| !tx.is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    hub.fatal
}

/// After a stop signal, how long the hub keeps listening for a lost-rank report (a launcher
/// signals every rank when one dies; the clients should learn about the death, not the signal).
const SIGNAL_SETTLE: Duration = Duration::from_millis(600);

struct Hub<'h> {
    handle: &'h ServerHandle,
    conns: HashMap<ConnId, Sender<Reply>>,
    jobs: HashMap<JobId, Entry>,
    ended: VecDeque<JobId>,
    last_progress: Instant,
    /// The runtime is failing (a rank died): why.
    fatal: Option<String>,
    /// A client asked the runtime to stop.
    stop_requested: bool,
}

impl Hub<'_> {
    fn run(&mut self, hub_rx: &Receiver<HubIn>, stop: &AtomicBool) {
        let events = self.handle.events().clone();
        let mut settle: Option<Instant> = None;
        while self.fatal.is_none() && !self.stop_requested {
            if stop.load(Ordering::SeqCst) {
                let until = *settle.get_or_insert_with(|| Instant::now() + SIGNAL_SETTLE);
                if Instant::now() >= until {
                    return;
                }
            }
            select! {
                recv(hub_rx) -> m => match m {
                    Ok(m) => self.on_conn(m),
                    Err(_) => return,
                },
                recv(events) -> ev => match ev {
                    Ok(ev) => self.on_event(ev),
                    Err(_) => return,
                },
                default(Duration::from_millis(50)) => {}
            }
            self.tick();
        }
    }

    fn send(&mut self, conn: ConnId, reply: Reply) {
        if let Some(tx) = self.conns.get(&conn) {
            if let Err(TrySendError::Full(_)) = tx.try_send(reply) {
                // a client that does not read its replies is cut off rather than buffered forever
                log::warn!(target: "bqrt::gateway", "connection {} does not read its replies; closing it", conn.0);
                self.close(conn);
            }
        }
    }

    fn on_conn(&mut self, m: HubIn) {
        match m {
            HubIn::Open { conn, tx } => {
                self.conns.insert(conn, tx);
            }
            HubIn::Request { conn, req } => self.on_request(conn, req),
            HubIn::Fatal { conn, reason } => {
                self.send(conn, Reply::Refused { reason });
                self.close(conn);
            }
            HubIn::Closed { conn } => self.close(conn),
        }
    }

    /// A connection is gone: cancel its unfinished jobs and free its records.
    fn close(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        let owned: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, e)| e.owner == Some(conn))
            .map(|(j, _)| *j)
            .collect();
        for job in owned {
            if let Some(e) = self.jobs.remove(&job) {
                if e.ended.is_none() {
                    self.handle.cancel(job);
                }
            }
        }
        for e in self.jobs.values_mut() {
            e.watchers.retain(|&c| c != conn);
            e.waiters.retain(|&(c, _)| c != conn);
        }
    }

    fn on_request(&mut self, conn: ConnId, req: Request) {
        match req {
            Request::Hello { .. } => self.send(
                conn,
                Reply::Error {
                    message: "already authenticated".into(),
                },
            ),
            Request::Submit {
                task,
                args,
                format,
                log,
                detach,
            } => {
                let spec = crate::core::JobSpec {
                    function: task,
                    label: None,
                    args,
                    format,
                    log,
                };
                match self.handle.submit(spec) {
                    Some(job) => {
                        let owner = if detach { None } else { Some(conn) };
                        self.jobs.insert(
                            job,
                            Entry {
                                logs: VecDeque::new(),
                                owner,
                                watchers: Vec::new(),
                                ended: None,
                                waiters: Vec::new(),
                            },
                        );
                        self.send(conn, Reply::Submitted { job });
                    }
                    None => self.send(
                        conn,
                        Reply::Error {
                            message: "the runtime is stopping".into(),
                        },
                    ),
                }
            }
            Request::Status { job } => {
                let status = self.status(job);
                self.send(conn, Reply::Status { job, status });
            }
            Request::Result { job, timeout_ms } => match self.jobs.get_mut(&job) {
                Some(e) if e.ended.is_some() => self.deliver(job, conn),
                Some(e) => e.waiters.push((
                    conn,
                    timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
                )),
                None => {
                    let note = self.unknown_note(job);
                    self.send(
                        conn,
                        Reply::Result {
                            job,
                            result: JobResult::Unknown(note),
                        },
                    );
                }
            },
            Request::Cancel { job } => {
                let (cancelled, note) = match self
                    .jobs
                    .get(&job)
                    .map(|e| e.ended.as_ref().map(|(_, s)| s.state))
                {
                    Some(None) => {
                        let ok = self.handle.cancel(job);
                        let status = self.counts(job, JobState::Cancelled);
                        self.end(job, JobResult::Cancelled, status);
                        (
                            ok,
                            if ok {
                                "cancelled with its whole task tree".to_string()
                            } else {
                                "it ended meanwhile".into()
                            },
                        )
                    }
                    Some(Some(state)) => (
                        false,
                        format!("{job} already ended ({state}); nothing to cancel"),
                    ),
                    None => (false, self.unknown_note(job)),
                };
                self.send(
                    conn,
                    Reply::Cancelled {
                        job,
                        cancelled,
                        note,
                    },
                );
            }
            Request::Watch { job } => match self.jobs.get_mut(&job) {
                Some(e) => {
                    if !e.watchers.contains(&conn) {
                        e.watchers.push(conn);
                    }
                    let kept: Vec<_> = e.logs.drain(..).collect();
                    for record in kept {
                        self.send(conn, Reply::Log { job, record });
                    }
                    let status = self.status(job);
                    self.send(conn, Reply::Progress { job, status });
                }
                None => {
                    let note = self.unknown_note(job);
                    self.send(conn, Reply::Error { message: note });
                }
            },
            Request::Top => {
                let c = self.handle.cluster().unwrap_or_default();
                let top = TopView {
                    workers: c.workers,
                    idle: c.idle,
                    queued: c.queued,
                    active_jobs: c.active_jobs,
                    finished_tasks: c.finished_tasks,
                    clients: self.conns.len() as u32,
                    groups: c
                        .employees
                        .iter()
                        .map(|&(r, w, i)| GroupView {
                            rank: r.0,
                            workers: w,
                            idle: i,
                        })
                        .collect(),
                };
                self.send(conn, Reply::Top(top));
            }
            Request::Shutdown => {
                log::warn!(target: "bqrt::gateway", "connection {} asked the runtime to stop", conn.0);
                self.stop_requested = true;
            }
            Request::Bye => self.close(conn),
        }
    }

    fn counts(&self, job: JobId, state: JobState) -> JobStatus {
        let (spawned, finished) = match self.handle.job_info(job) {
            Some((Some(i), _)) => (i.spawned, i.finished),
            _ => (0, 0),
        };
        JobStatus {
            state,
            spawned,
            finished,
            note: String::new(),
        }
    }

    fn status(&self, job: JobId) -> JobStatus {
        if let Some(e) = self.jobs.get(&job) {
            if let Some((_, s)) = &e.ended {
                return s.clone();
            }
            return match self.handle.job_info(job) {
                Some((Some(i), _)) => JobStatus {
                    state: if i.started {
                        JobState::Running
                    } else {
                        JobState::Queued
                    },
                    spawned: i.spawned,
                    finished: i.finished,
                    note: String::new(),
                },
                _ => JobStatus {
                    state: JobState::Running,
                    spawned: 0,
                    finished: 0,
                    note: "ending".into(),
                },
            };
        }
        JobStatus {
            state: JobState::Unknown,
            spawned: 0,
            finished: 0,
            note: self.unknown_note(job),
        }
    }

    fn unknown_note(&self, job: JobId) -> String {
        let last = self
            .handle
            .job_info(job)
            .map(|(_, l)| l)
            .unwrap_or(JobId(0));
        if job.0 == 0 || job.0 > last.0 {
            format!("{job} was never submitted to this server")
        } else {
            format!("{job} has ended and its record was freed (its result was fetched, or its client disconnected)")
        }
    }

    fn end(&mut self, job: JobId, result: JobResult, status: JobStatus) {
        let Some(e) = self.jobs.get_mut(&job) else {
            return;
        };
        e.ended = Some((result, status.clone()));
        let watchers = e.watchers.clone();
        for w in watchers {
            self.send(
                w,
                Reply::Progress {
                    job,
                    status: status.clone(),
                },
            );
        }
        let waiters: Vec<ConnId> = self
            .jobs
            .get(&job)
            .map(|e| e.waiters.iter().map(|w| w.0).collect())
            .unwrap_or_default();
        if let Some(&first) = waiters.first() {
            self.deliver(job, first);
            return;
        }
        self.ended.push_back(job);
        while self.ended.len() > MAX_ENDED {
            if let Some(old) = self.ended.pop_front() {
                if self.jobs.get(&old).is_some_and(|e| e.ended.is_some()) {
                    self.jobs.remove(&old);
                }
            }
        }
    }

    /// Send an ended job's result to `conn` (and any other waiter) and free the record.
    fn deliver(&mut self, job: JobId, conn: ConnId) {
        let Some(e) = self.jobs.remove(&job) else {
            return;
        };
        let Some((result, _)) = e.ended else { return };
        let mut to: Vec<ConnId> = e.waiters.iter().map(|w| w.0).collect();
        if !to.contains(&conn) {
            to.push(conn);
        }
        for record in e.logs {
            self.send(conn, Reply::Log { job, record });
        }
        for c in to {
            self.send(
                c,
                Reply::Result {
                    job,
                    result: result.clone(),
                },
            );
        }
    }

    fn on_event(&mut self, ev: ServerEvent) {
        match ev {
            ServerEvent::Finished {
                job,
                outcome,
                spawned,
                finished,
            } => {
                let (result, state) = match outcome {
                    Ok(value) => (
                        JobResult::Done {
                            value,
                            format: Format::Json,
                        },
                        JobState::Done,
                    ),
                    Err(f) => (JobResult::Failed(f), JobState::Failed),
                };
                let note = match &result {
                    JobResult::Failed(f) => f.to_string(),
                    _ => String::new(),
                };
                self.end(
                    job,
                    result,
                    JobStatus {
                        state,
                        spawned,
                        finished,
                        note,
                    },
                );
            }
            ServerEvent::Lost { message } => {
                log::error!(target: "bqrt::gateway", "{message}");
                self.fatal = Some(message);
            }
            ServerEvent::Log { job, record } => {
                let Some(e) = self.jobs.get_mut(&job) else {
                    return;
                };
                if e.owner.is_none() && e.watchers.is_empty() {
                    if e.logs.len() >= KEPT_LOGS {
                        e.logs.pop_front();
                    }
                    e.logs.push_back(record);
                    return;
                }
                let mut to = e.watchers.clone();
                if let Some(o) = e.owner {
                    if !to.contains(&o) {
                        to.push(o);
                    }
                }
                for c in to {
                    self.send(
                        c,
                        Reply::Log {
                            job,
                            record: record.clone(),
                        },
                    );
                }
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for (job, e) in &mut self.jobs {
            e.waiters.retain(|&(c, d)| {
                let late = d.is_some_and(|d| d <= now);
                if late {
                    expired.push((*job, c));
                }
                !late
            });
        }
        for (job, c) in expired {
            self.send(
                c,
                Reply::Result {
                    job,
                    result: JobResult::Pending,
                },
            );
        }
        if self.last_progress.elapsed() >= Duration::from_millis(250) {
            self.last_progress = now;
            let watched: Vec<(JobId, Vec<ConnId>)> = self
                .jobs
                .iter()
                .filter(|(_, e)| e.ended.is_none() && !e.watchers.is_empty())
                .map(|(j, e)| (*j, e.watchers.clone()))
                .collect();
            for (job, ws) in watched {
                let status = self.status(job);
                for w in ws {
                    self.send(
                        w,
                        Reply::Progress {
                            job,
                            status: status.clone(),
                        },
                    );
                }
            }
        }
    }
}
