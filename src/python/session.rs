//! BQSKit's client protocol on the gateway's port: `multiprocessing.connection` frames (4-byte
//! big-endian length, then a pickled `(RuntimeMessage, payload)`; no authentication).
//!
//! Each BQSKit connection is translated into hub requests, like a native client's: CONNECT ->
//! READY; SUBMIT(CompilationTask) -> a `bqskit` job (not detached: it is cancelled if the
//! client goes away); STATUS -> `CompilationStatus`; REQUEST -> RESULT, or ERROR with the
//! failing task's traceback; CANCEL -> acknowledgement; DISCONNECT -> the connection closes.
//!
//! BQSKit's client reads log records correctly only while it waits for a reply, so LOG
//! messages are sent while a request is outstanding and held (bounded) otherwise; they are
//! flushed before the reply. Frames are decoded with the meaning of a restricted unpickler
//! (python/bqrt_codec.py) that imports and runs nothing of the client's: in Rust where
//! [`unpickle`] is sure of the answer, else by that unpickler itself; the SUBMIT frame
//! itself travels to a worker unopened. Only loopback peers of the runtime's own user (or
//! peers on `--bqskit-allow`) are served, because the protocol carries pickled code: see
//! docs/operations.md, "Who can connect".
//!
//! The first frame (CONNECT: the client's `sys.path`) may be at most [`FIRST_FRAME`] bytes,
//! later ones [`MAX_FRAME`]; frames are read through the gateway's bounded reader, and a
//! connection with no job and nothing outstanding is closed after the idle timeout.
//!
//! One thread serves a connection: it waits on the client's socket and on its [`Bell`] (rung by
//! the hub with each reply) at once, and reads the next frame only when it has handled the
//! last. A client that sends without reading its replies therefore fills TCP's buffers, never
//! rank 0's memory; while a frame is being received (within the frame deadline) the replies
//! wait in their bounded queue.

use super::interp;
use super::pickle::{self, msg, Status};
use super::unpickle::{self, ClientMsg, Verdict};
use crate::gateway::bell::{Bell, Wake};
use crate::gateway::frame::{self, Budget, Limits, Prefix, ReadError};
use crate::gateway::{Admission, ForeignProtocol, Link};
use crate::protocol::native::{JobResult, JobState, Reply, Request};
use crate::protocol::{Format, JobId, LogSpec};
use crossbeam::channel::{Receiver, TryRecvError};
use ipnet::IpNet;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest BQSKit frame accepted (a CompilationTask carries the whole circuit).
pub const MAX_FRAME: usize = 256 << 20;
/// Largest first frame: BQSKit's CONNECT carries the client's `sys.path`, a few KiB.
pub const FIRST_FRAME: usize = 1 << 20;
/// Log records held for a client between its requests; older ones are dropped.
const HELD_LOGS: usize = 10_000;

/// Peers allowed besides loopback: addresses or `ADDR/PREFIX` networks.
#[derive(Clone, Debug, Default)]
pub struct AllowList(Vec<IpNet>);

impl AllowList {
    /// Parse `IP[/PREFIX],...`.
    pub fn parse(spec: &str) -> Result<AllowList, String> {
        let mut v = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = match item.split_once('/') {
                None => item.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    format!("--bqskit-allow: '{item}' is not an IP address or ADDR/PREFIX network")
                })?,
                Some((addr, _)) => {
                    addr.parse::<IpAddr>().map_err(|_| {
                        format!(
                            "--bqskit-allow: '{item}' is not an IP address or ADDR/PREFIX network"
                        )
                    })?;
                    item.parse::<IpNet>()
                        .map_err(|_| format!("--bqskit-allow: '{item}' has a bad prefix length"))?
                }
            };
            v.push(net);
        }
        Ok(AllowList(v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` may speak BQSKit's protocol.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        ip.is_loopback() || self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The [`ForeignProtocol`] for BQSKit clients.
pub struct BqskitProtocol {
    pub allow: AllowList,
    /// Serve loopback clients of any local user (`--bqskit-any-user`).
    pub any_user: bool,
}

impl BqskitProtocol {
    /// Why this connection may not speak BQSKit's protocol, if it may not.
    fn refusal(&self, stream: &TcpStream) -> Option<String> {
        let ip = stream.peer_addr().ok()?.ip().to_canonical();
        if !ip.is_loopback() {
            return match self.allow.admits(ip) {
                true => None,
                false => Some("bqrt refuses BQSKit clients from this address: BQSKit's protocol carries pickled code and has no authentication. Start the server with --bqskit-allow ADDR to admit it.".into()),
            };
        }
        if self.any_user {
            return None;
        }
        crate::gateway::same_user(stream).err().map(|why| {
            format!("bqrt refuses this BQSKit client: {why}. BQSKit's protocol carries pickled code and has no authentication, so only the runtime's own user may use it (the runtime's owner can start it with --bqskit-any-user to admit every local user)")
        })
    }
}

impl ForeignProtocol for BqskitProtocol {
    fn accepts(&self, head: &[u8; 5]) -> bool {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        head[4] == 0x80 && len >= 2
    }

    fn serve(&self, stream: TcpStream, head: [u8; 5], link: Link, admit: &Admission) {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        let refusal = admit.refuse.clone().or_else(|| self.refusal(&stream));
        let mut s = Session::new(stream, peer, link, admit);
        if let Some(why) = refusal {
            log::warn!(target: "bqrt::gateway", "{}: BQSKit client refused: {why}", s.peer);
            let _ = s.read_rest(head);
            s.write(&pickle::error(&why));
            return;
        }
        s.run(head);
    }
}

/// A client frame: read without the interpreter when [`unpickle`] is sure of it, refused when
/// it would cost the unpickler memory out of proportion, else read by the restricted
/// unpickler, which also words the errors.
fn decode(frame: &[u8]) -> Result<ClientMsg, String> {
    match unpickle::judge(frame) {
        Verdict::Read(m) => Ok(m),
        Verdict::Refused(why) => Err(why),
        Verdict::Unsure => decode_in_python(frame),
    }
}

/// A client frame read by the restricted unpickler (python/bqrt_codec.py).
#[doc(hidden)]
pub fn decode_in_python(frame: &[u8]) -> Result<ClientMsg, String> {
    interp::start()?;
    Python::with_gil(|py| {
        let codec = interp::codec(py).map_err(|e| interp::describe(py, &e))?;
        let r = codec
            .getattr("decode")
            .and_then(|f| f.call1((PyBytes::new_bound(py, frame),)))
            .map_err(|e| e.value_bound(py).to_string())?;
        let parsed = (|| -> PyResult<ClientMsg> {
            let kind: i64 = r.get_item(0)?.extract()?;
            let p = r.get_item(1)?;
            Ok(match kind {
                msg::CONNECT => ClientMsg::Connect(p.extract()?),
                msg::DISCONNECT => ClientMsg::Disconnect,
                msg::SUBMIT => {
                    let (id, level, depth): (String, i64, i64) = p.extract()?;
                    ClientMsg::Submit { id, level, depth }
                }
                msg::STATUS_REQ => ClientMsg::Status(p.extract()?),
                msg::REQUEST => ClientMsg::Request(p.extract()?),
                msg::CANCEL_REQ => ClientMsg::Cancel(p.extract()?),
                other => ClientMsg::Other(other),
            })
        })();
        parsed.map_err(|e| interp::describe(py, &e))
    })
}

/// Decode one client frame as the session does (for the fuzzer): `Ok` with the message kind,
/// or the error a client would be told.
#[doc(hidden)]
pub fn decode_for_fuzzing(frame: &[u8]) -> Result<i64, String> {
    decode(frame).map(|m| match m {
        ClientMsg::Connect(_) => msg::CONNECT,
        ClientMsg::Disconnect => msg::DISCONNECT,
        ClientMsg::Submit { .. } => msg::SUBMIT,
        ClientMsg::Status(_) => msg::STATUS_REQ,
        ClientMsg::Request(_) => msg::REQUEST,
        ClientMsg::Cancel(_) => msg::CANCEL_REQ,
        ClientMsg::Other(n) => n,
    })
}

/// The reply a synchronous client request waits for.
enum Waiting {
    Status,
    Result(String),
    Cancel,
}

struct Session {
    stream: TcpStream,
    peer: String,
    link: Link,
    budget: Arc<Budget>,
    frame_timeout: Duration,
    idle_timeout: Duration,
    paths: Vec<String>,
    jobs: HashMap<String, JobId>,
    held: VecDeque<Vec<u8>>,
    dropped_logs: u64,
    waiting: Option<Waiting>,
    broken: bool,
}

impl Session {
    fn new(stream: TcpStream, peer: String, link: Link, admit: &Admission) -> Session {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
        Session {
            stream,
            peer,
            link,
            budget: Arc::clone(&admit.budget),
            frame_timeout: admit.frame_timeout,
            idle_timeout: admit.idle_timeout,
            paths: Vec::new(),
            jobs: HashMap::new(),
            held: VecDeque::new(),
            dropped_logs: 0,
            waiting: None,
            broken: false,
        }
    }

    /// The rest of the first frame, whose first five bytes were read by the gateway.
    fn read_rest(&mut self, head: [u8; 5]) -> Result<Vec<u8>, String> {
        quick_ack(&self.stream);
        let limits = Limits {
            max: FIRST_FRAME,
            deadline: self.frame_timeout,
            poll: None,
        };
        let frame = frame::read(&mut self.stream, Prefix::Big, limits, &self.budget, &head)
            .map_err(|e| format!("first frame: {e}"))?
            .ok_or_else(|| "first frame: connection closed".to_string())?;
        quick_ack(&self.stream);
        Ok(frame)
    }

    fn write(&mut self, frame: &[u8]) {
        if self.broken {
            return;
        }
        let mut buf = Vec::with_capacity(frame.len() + 4);
        buf.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        buf.extend_from_slice(frame);
        if self.stream.write_all(&buf).is_err() {
            self.broken = true;
        }
    }

    /// The client now waits for a reply, and reads log records meanwhile: the held ones go
    /// at once.
    fn wait_for(&mut self, w: Waiting) {
        self.waiting = Some(w);
        self.flush_logs();
    }

    /// A reply to the outstanding request: held logs go first.
    fn reply(&mut self, frame: &[u8]) {
        self.waiting = None;
        self.flush_logs();
        self.write(frame);
    }

    /// The client's bytes cannot be served (`why`): tell it, before the connection closes.
    fn close_over(&mut self, why: &str) {
        log::info!(target: "bqrt::gateway", "{}: {why}; closing", self.peer);
        self.write(&pickle::error(&format!(
            "bqrt: {why}; closing the connection"
        )));
    }

    fn flush_logs(&mut self) {
        if self.dropped_logs > 0 {
            let note = format!(
                "bqrt: {} log records were dropped while the client was not waiting for a reply",
                self.dropped_logs
            );
            self.dropped_logs = 0;
            self.write(&pickle::log("bqrt", 30, &note));
        }
        while let Some(f) = self.held.pop_front() {
            self.write(&f);
        }
    }

    fn run(mut self, head: [u8; 5]) {
        let first = match self.read_rest(head) {
            Ok(f) => f,
            Err(e) => return self.close_over(&e),
        };
        let bell = match Bell::new() {
            Ok(b) => Arc::new(b),
            Err(e) => {
                log::warn!(target: "bqrt::gateway", "{}: cannot make the connection's bell ({e}); closed", self.peer);
                self.write(&pickle::error(&format!(
                    "bqrt: the server cannot serve this connection ({e}); closing it"
                )));
                return;
            }
        };
        let replies = self.link.open(Arc::clone(&bell));
        log::info!(target: "bqrt::gateway", "{}: BQSKit client connected", self.peer);
        let limits = Limits {
            max: MAX_FRAME,
            deadline: self.frame_timeout,
            poll: None,
        };
        let mut next = Some(first);
        let mut last = Instant::now();
        while !self.broken {
            // the client's frames are read here, one when the last is handled: a client that
            // sends faster than its requests are served waits in TCP, not in this process
            if let Some(frame) = next.take() {
                last = Instant::now();
                match decode(&frame) {
                    Ok(m) => {
                        if !self.on_client(m, frame, &replies) {
                            break;
                        }
                    }
                    Err(e) => {
                        self.close_over(&e);
                        break;
                    }
                }
            }
            bell.clear();
            let mut open = true;
            loop {
                match replies.try_recv() {
                    Ok(r) => {
                        last = Instant::now();
                        if !self.on_reply(r) {
                            open = false;
                            break;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        // the hub let go of this connection (it did not read its replies)
                        self.flush_logs();
                        self.write(&pickle::error(
                            "bqrt: the server closed this connection: it did not read its replies",
                        ));
                        open = false;
                        break;
                    }
                }
            }
            if !open || self.broken {
                break;
            }
            let idle = self.jobs.is_empty() && self.waiting.is_none();
            if idle && last.elapsed() >= self.idle_timeout {
                log::info!(target: "bqrt::gateway", "{}: idle for {:?} with no job; closing", self.peer, self.idle_timeout);
                self.write(&pickle::error(&format!(
                    "bqrt: this connection had no job and sent nothing for {:?}; closing it (the runtime's owner sets --idle-timeout)",
                    self.idle_timeout
                )));
                break;
            }
            let tick = match idle {
                true => self.idle_timeout.saturating_sub(last.elapsed()),
                false => self.idle_timeout,
            };
            match bell.wait(&self.stream, tick) {
                Wake::Socket => {}
                Wake::Bell | Wake::Timeout => continue,
                Wake::Failed(e) => {
                    log::warn!(target: "bqrt::gateway", "{}: cannot wait on the connection ({e}); closing", self.peer);
                    break;
                }
            }
            match read_frame(&mut self.stream, limits, &self.budget) {
                Ok(Some(f)) => next = Some(f),
                Ok(None) => break,
                Err(e) => {
                    self.close_over(&e);
                    break;
                }
            }
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        log::info!(target: "bqrt::gateway", "{}: BQSKit client gone", self.peer);
    }

    /// Handle one client message; false ends the connection.
    fn on_client(&mut self, m: ClientMsg, frame: Vec<u8>, replies: &Receiver<Reply>) -> bool {
        match m {
            ClientMsg::Connect(paths) => {
                self.paths = paths;
                self.reply(&pickle::empty(msg::READY));
            }
            ClientMsg::Disconnect => return false,
            ClientMsg::Submit { id, level, depth } => {
                let header = serde_json::json!({
                    "path": self.paths, "level": level, "max_depth": depth, "context": {},
                });
                let header = header.to_string();
                let mut args = Vec::with_capacity(frame.len() + header.len() + 5);
                args.push(b'R');
                args.extend_from_slice(&(header.len() as u32).to_le_bytes());
                args.extend_from_slice(header.as_bytes());
                args.extend_from_slice(&frame);
                drop(frame);
                let log = LogSpec {
                    level: super::level::to_bqrt(level),
                    max_depth: u32::try_from(depth).ok(),
                };
                if !self.link.request(Request::Submit {
                    task: super::task::FUNCTION.into(),
                    args,
                    format: Format::Bincode,
                    log,
                    detach: false,
                }) {
                    return false;
                }
                // SUBMIT has no reply; wait for the job id before reading on
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match replies.recv_timeout(left) {
                        Ok(Reply::Submitted { job }) => {
                            self.jobs.insert(id, job);
                            break;
                        }
                        Ok(Reply::Error { message }) => {
                            log::warn!(target: "bqrt::gateway", "{}: submit refused: {message}", self.peer);
                            break;
                        }
                        Ok(other) => {
                            if !self.on_reply(other) {
                                return false;
                            }
                        }
                        Err(_) => return false,
                    }
                }
            }
            ClientMsg::Status(id) => match self.jobs.get(&id) {
                Some(&job) => {
                    self.wait_for(Waiting::Status);
                    return self.link.request(Request::Status { job });
                }
                None => self.reply(&pickle::status(Status::Unknown)),
            },
            ClientMsg::Request(id) => match self.jobs.get(&id) {
                Some(&job) => {
                    self.wait_for(Waiting::Result(id));
                    return self.link.request(Request::Result {
                        job,
                        timeout_ms: None,
                    });
                }
                None => self.reply(&pickle::error("Unknown task.")),
            },
            ClientMsg::Cancel(id) => match self.jobs.remove(&id) {
                Some(job) => {
                    self.wait_for(Waiting::Cancel);
                    return self.link.request(Request::Cancel { job });
                }
                None => self.reply(&pickle::empty(msg::CANCEL)),
            },
            ClientMsg::Other(n) => {
                log::info!(target: "bqrt::gateway", "{}: unexpected BQSKit message {n}; closing", self.peer);
                self.write(&pickle::error(&format!(
                    "bqrt: a client may not send message {n}; closing the connection"
                )));
                return false;
            }
        }
        true
    }

    /// Handle one hub reply; false ends the connection.
    fn on_reply(&mut self, r: Reply) -> bool {
        match r {
            Reply::Log { record, .. } => {
                let f = pickle::log(
                    &record.target,
                    super::level::to_python(record.level),
                    &record.message,
                );
                if self.waiting.is_some() {
                    self.flush_logs();
                    self.write(&f);
                } else {
                    if self.held.len() >= HELD_LOGS {
                        self.held.pop_front();
                        self.dropped_logs += 1;
                    }
                    self.held.push_back(f);
                }
            }
            Reply::Status { status, .. } => {
                let s = match status.state {
                    JobState::Queued | JobState::Running => Status::Running,
                    // a failed job is finished: requesting its result raises its error
                    JobState::Done | JobState::Failed => Status::Done,
                    JobState::Cancelled | JobState::Unknown => Status::Unknown,
                };
                self.reply(&pickle::status(s));
            }
            Reply::Result { result, .. } => {
                if let Some(Waiting::Result(id)) = self.waiting.take() {
                    self.jobs.remove(&id);
                }
                let frame = match result {
                    JobResult::Done { value, .. } => pickle::result(&value).unwrap_or_else(|| {
                        pickle::error("bqrt: the job's result is not a protocol-3 pickle")
                    }),
                    JobResult::Failed(f) => pickle::error(&format!(
                        "{}\n(bqrt: task '{}' {} on {} failed)",
                        f.message.trim_end(),
                        f.task,
                        f.addr,
                        f.rank
                    )),
                    JobResult::Cancelled => pickle::error("bqrt: the job was cancelled"),
                    JobResult::Unknown(note) => pickle::error(&format!("Unknown task. ({note})")),
                    JobResult::Pending => pickle::error("bqrt: the job has not finished"),
                };
                self.reply(&frame);
            }
            Reply::Cancelled { .. } => self.reply(&pickle::empty(msg::CANCEL)),
            Reply::Error { message } => {
                if self.waiting.is_some() {
                    self.reply(&pickle::error(&format!("bqrt: {message}")));
                }
            }
            Reply::Shutdown { reason } | Reply::Refused { reason } => {
                self.flush_logs();
                self.write(&pickle::error(&format!(
                    "bqrt runtime is stopping: {reason}"
                )));
                return false;
            }
            Reply::Submitted { .. }
            | Reply::Progress { .. }
            | Reply::Welcome { .. }
            | Reply::Top(_) => {}
        }
        !self.broken
    }
}

/// One frame; `Ok(None)` on a clean close between frames.
fn read_frame(
    stream: &mut TcpStream,
    limits: Limits,
    budget: &Budget,
) -> Result<Option<Vec<u8>>, String> {
    let f = frame::read(stream, Prefix::Big, limits, budget, &[]);
    quick_ack(stream);
    match f {
        Ok(f) => Ok(f),
        Err(ReadError::Io(_)) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Acknowledge what was read at once. BQSKit's client never sets TCP_NODELAY, so a request
/// sent right after another (SUBMIT then REQUEST, a frame's payload after its length) waits in
/// the client's kernel (Nagle) for the ACK of the first, which Linux delays up to 40 ms when
/// the receiver has nothing to send back. Quick-ACK mode is not sticky: set after every read.
fn quick_ack(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option of the size given.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                &on as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list() {
        let a = AllowList::parse("10.0.0.0/8, 192.168.1.7").unwrap();
        assert!(a.admits("127.0.0.1".parse().unwrap()));
        assert!(a.admits("::1".parse().unwrap()));
        assert!(a.admits("10.3.4.5".parse().unwrap()));
        assert!(a.admits("192.168.1.7".parse().unwrap()));
        assert!(!a.admits("192.168.1.8".parse().unwrap()));
        assert!(AllowList::parse("nope").is_err());
        assert!(AllowList::parse("10.0.0.0/40").is_err());
    }
}
