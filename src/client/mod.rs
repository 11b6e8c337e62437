//! The Rust client of the native protocol: submit, watch and cancel jobs on a running bqrt.
//!
//! ```no_run
//! # fn main() -> Result<(), bqrt::client::ClientError> {
//! use bqrt::client::Client;
//! let mut c = Client::connect("127.0.0.1:7472", None)?;
//! let job = c.submit("fib", "20", bqrt::protocol::LogSpec::OFF, false)?;
//! let result = c.result(job, None)?;
//! # Ok(()) }
//! ```
//!
//! Log records for this client's jobs can arrive between replies; they are kept in order and
//! handed out by [`Client::take_logs`].

use crate::protocol::native::{
    self, read_frame, write_frame, FrameError, JobResult, JobStatus, Reply, Request, TopView,
    CLIENT_VERSION, MAGIC, MAX_FRAME,
};
use crate::protocol::{Format, JobId, LogRecord, LogSpec};
use crate::token;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}; is `bqrt serve` running there? (it prints `bqrt ready HOST:PORT` when it is)")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr} is not a HOST:PORT address")]
    Address { addr: String },
    #[error("no token for {addr}: {detail}; pass --token-file PATH (the server printed its path at start) or set BQRT_TOKEN")]
    Token { addr: String, detail: String },
    #[error("{addr} does not speak the bqrt client protocol")]
    NotBqrt { addr: String },
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("the server is shutting down: {0}")]
    Shutdown(String),
    #[error("the server answered with an error: {0}")]
    Server(String),
    #[error("connection to the server failed: {0}")]
    Frame(#[from] FrameError),
    #[error("connection to the server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server sent an unexpected reply: {0}")]
    Unexpected(String),
    #[error("ARGS is not valid JSON: {0}")]
    Json(String),
}

/// Find the token for `addr`: `--token-file`, `BQRT_TOKEN`, `BQRT_TOKEN_FILE`, then the default
/// path for its port.
pub fn find_token(addr: &str, token_file: Option<&Path>) -> Result<String, ClientError> {
    let err = |detail: String| ClientError::Token {
        addr: addr.to_string(),
        detail,
    };
    let read = |p: &Path| {
        if let Some(w) = token::exposure(p) {
            crate::logging::eprint_line(&w);
        }
        token::read(p)
    };
    if let Some(p) = token_file {
        return read(p).map_err(|e| err(format!("{}: {e}", p.display())));
    }
    if let Ok(t) = std::env::var("BQRT_TOKEN") {
        return Ok(t.trim().to_string());
    }
    if let Some(p) = std::env::var_os("BQRT_TOKEN_FILE") {
        let p = PathBuf::from(p);
        return read(&p).map_err(|e| err(format!("BQRT_TOKEN_FILE {}: {e}", p.display())));
    }
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| ClientError::Address {
            addr: addr.to_string(),
        })?;
    let p = token::default_path(port).ok_or_else(|| err("HOME is not set".into()))?;
    read(&p).map_err(|e| err(format!("{}: {e}", p.display())))
}

pub struct Client {
    stream: TcpStream,
    logs: VecDeque<(JobId, LogRecord)>,
    progress: VecDeque<(JobId, JobStatus)>,
    workers: u32,
}

impl Client {
    /// Connect and authenticate. `token`: `None` looks it up with [`find_token`].
    pub fn connect(addr: &str, token: Option<String>) -> Result<Client, ClientError> {
        let token = match token {
            Some(t) => t,
            None => find_token(addr, None)?,
        };
        let sock = addr
            .to_socket_addrs()
            .map_err(|_| ClientError::Address {
                addr: addr.to_string(),
            })?
            .next()
            .ok_or_else(|| ClientError::Address {
                addr: addr.to_string(),
            })?;
        let mut stream =
            TcpStream::connect_timeout(&sock, Duration::from_secs(10)).map_err(|source| {
                ClientError::Connect {
                    addr: addr.to_string(),
                    source,
                }
            })?;
        stream.set_nodelay(true)?;
        let mut hello = MAGIC.to_vec();
        hello.push(CLIENT_VERSION);
        stream.write_all(&hello)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head = [0u8; 5];
        stream
            .read_exact(&mut head)
            .map_err(|_| ClientError::NotBqrt {
                addr: addr.to_string(),
            })?;
        if &head[..4] != MAGIC {
            return Err(ClientError::NotBqrt {
                addr: addr.to_string(),
            });
        }
        stream.set_read_timeout(None)?;
        let mut c = Client {
            stream,
            logs: VecDeque::new(),
            progress: VecDeque::new(),
            workers: 0,
        };
        c.send(&Request::Hello {
            token,
            client: format!("bqrt-client {}", env!("CARGO_PKG_VERSION")),
        })?;
        match c.reply()? {
            Reply::Welcome { workers, .. } => {
                c.workers = workers;
                Ok(c)
            }
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Workers of the runtime (when connected).
    pub fn workers(&self) -> u32 {
        self.workers
    }

    fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        write_frame(&mut self.stream, &native::encode(req))?;
        Ok(())
    }

    /// The next reply that is not a log record or a progress note (those are queued).
    fn reply(&mut self) -> Result<Reply, ClientError> {
        loop {
            let r = self.next_message()?;
            match r {
                Reply::Log { job, record } => self.logs.push_back((job, record)),
                Reply::Progress { job, status } => self.progress.push_back((job, status)),
                other => return Ok(other),
            }
        }
    }

    fn next_message(&mut self) -> Result<Reply, ClientError> {
        let Some(bytes) = read_frame(&mut self.stream, MAX_FRAME)? else {
            return Err(ClientError::Frame(FrameError::Closed));
        };
        match native::decode::<Reply>(&bytes)? {
            Reply::Refused { reason } => Err(ClientError::Refused(reason)),
            Reply::Shutdown { reason } => Err(ClientError::Shutdown(reason)),
            Reply::Error { message } => Err(ClientError::Server(message)),
            other => Ok(other),
        }
    }

    /// Submit `task` with JSON arguments. `detach`: the job survives this connection.
    pub fn submit(
        &mut self,
        task: &str,
        args_json: &str,
        log: LogSpec,
        detach: bool,
    ) -> Result<JobId, ClientError> {
        serde_json::from_str::<serde_json::Value>(args_json)
            .map_err(|e| ClientError::Json(e.to_string()))?;
        self.send(&Request::Submit {
            task: task.to_string(),
            args: args_json.as_bytes().to_vec(),
            format: Format::Json,
            log,
            detach,
        })?;
        match self.reply()? {
            Reply::Submitted { job } => Ok(job),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub fn status(&mut self, job: JobId) -> Result<JobStatus, ClientError> {
        self.send(&Request::Status { job })?;
        match self.reply()? {
            Reply::Status { status, .. } => Ok(status),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Wait for a job's result (`None`: no limit). `JobResult::Pending` on timeout.
    pub fn result(
        &mut self,
        job: JobId,
        timeout: Option<Duration>,
    ) -> Result<JobResult, ClientError> {
        self.send(&Request::Result {
            job,
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
        })?;
        match self.reply()? {
            Reply::Result { result, .. } => Ok(result),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Cancel a job and its task tree: `(cancelled, explanation)`.
    pub fn cancel(&mut self, job: JobId) -> Result<(bool, String), ClientError> {
        self.send(&Request::Cancel { job })?;
        match self.reply()? {
            Reply::Cancelled {
                cancelled, note, ..
            } => Ok((cancelled, note)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Stream a job's logs and progress to `on_event` until it ends; returns its last status.
    pub fn watch(
        &mut self,
        job: JobId,
        mut on_event: impl FnMut(WatchEvent<'_>),
    ) -> Result<JobStatus, ClientError> {
        self.send(&Request::Watch { job })?;
        loop {
            while let Some((j, r)) = self.logs.pop_front() {
                if j == job {
                    on_event(WatchEvent::Log(&r));
                }
            }
            while let Some((j, s)) = self.progress.pop_front() {
                if j == job {
                    on_event(WatchEvent::Progress(&s));
                    if !matches!(
                        s.state,
                        native::JobState::Queued | native::JobState::Running
                    ) {
                        return Ok(s);
                    }
                }
            }
            match self.next_message()? {
                Reply::Log { job: j, record } => self.logs.push_back((j, record)),
                Reply::Progress { job: j, status } => self.progress.push_back((j, status)),
                other => return Err(ClientError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    pub fn top(&mut self) -> Result<TopView, ClientError> {
        self.send(&Request::Top)?;
        match self.reply()? {
            Reply::Top(t) => Ok(t),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Stop the whole runtime in order. Returns once the server has said it is stopping.
    pub fn shutdown(&mut self) -> Result<String, ClientError> {
        self.send(&Request::Shutdown)?;
        loop {
            match self.next_message() {
                Err(ClientError::Shutdown(reason)) => return Ok(reason),
                Err(ClientError::Frame(FrameError::Closed)) => {
                    return Ok("connection closed".into())
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
    }

    /// Log records received so far, in order.
    pub fn take_logs(&mut self) -> Vec<(JobId, LogRecord)> {
        self.logs.drain(..).collect()
    }

    /// Say goodbye (dropping the client does the same).
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for Client {
    /// Say goodbye, so the server frees the connection at once (its jobs that were not
    /// detached are cancelled, as when the connection breaks).
    fn drop(&mut self) {
        let _ = self.send(&Request::Bye);
    }
}

/// What [`Client::watch`] reports.
pub enum WatchEvent<'a> {
    Log(&'a LogRecord),
    Progress(&'a JobStatus),
}
