//! The native client protocol (version [`CLIENT_VERSION`]), spoken on the gateway's TCP port.
//!
//! ```text
//! client -> server   "BQRT" + version byte           (5 bytes; the gateway tells protocols apart by them)
//! server -> client   "BQRT" + version byte
//! then frames both ways: u32 little-endian length, then that many bytes of bincode 2
//! (standard config) encoding one Request (client -> server) or one Reply (server -> client).
//! ```
//!
//! The first request must be `Hello` with the server's token. Frames larger than the limit
//! ([`MAX_FRAME`] by default), a stalled half frame, or bytes that do not decode end the
//! connection with a `Refused` reply naming the problem; nothing else is affected.

use super::{Failure, Format, JobId, LogRecord, LogSpec};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use thiserror::Error;

pub const MAGIC: &[u8; 4] = b"BQRT";
pub const CLIENT_VERSION: u8 = 1;
/// Default largest frame, either way.
pub const MAX_FRAME: usize = 16 << 20;

/// Client -> server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Must come first.
    Hello {
        token: String,
        client: String,
    },
    /// Start a job. `detach`: the job survives this connection (the CLI's `submit`); otherwise
    /// it is cancelled if the connection closes before its result is fetched.
    Submit {
        task: String,
        args: Vec<u8>,
        format: Format,
        log: LogSpec,
        detach: bool,
    },
    Status {
        job: JobId,
    },
    /// Wait for the result (at most `timeout_ms`, none = no limit). A delivered result frees the
    /// job's record.
    Result {
        job: JobId,
        timeout_ms: Option<u64>,
    },
    Cancel {
        job: JobId,
    },
    /// Stream this job's log records and progress to this connection until it ends.
    Watch {
        job: JobId,
    },
    /// A snapshot of the cluster.
    Top,
    /// Stop the whole runtime in order (every client is told; every rank exits 0).
    Shutdown,
    Bye,
}

/// Job states as clients see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
    Unknown,
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Queued => "QUEUED",
            JobState::Running => "RUNNING",
            JobState::Done => "DONE",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
            JobState::Unknown => "UNKNOWN",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    pub state: JobState,
    /// Tasks created so far (root included) and finished, as reported by workers.
    pub spawned: u64,
    pub finished: u64,
    /// Explanation for `Unknown` and the like.
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobResult {
    Done {
        value: Vec<u8>,
        format: Format,
    },
    Failed(Failure),
    Cancelled,
    Unknown(String),
    /// Not finished within the timeout; the job goes on.
    Pending,
}

/// Workers of one of the server's employees (a node's manager, or a worker on one node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchView {
    pub rank: u32,
    pub workers: u32,
    pub idle: u32,
}

/// One worker group on one node (`topology/groups.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerGroupView {
    pub node: u32,
    pub name: String,
    pub workers: u32,
    pub cores: u32,
    /// Resources each of its workers offers, as `gpu=1,ssd=2` (empty: none).
    pub offers: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopView {
    pub workers: u32,
    pub idle: u32,
    pub queued: u64,
    pub active_jobs: usize,
    pub finished_tasks: u64,
    pub clients: u32,
    pub branches: Vec<BranchView>,
    /// Worker groups per node (empty when the runtime did not say).
    pub groups: Vec<WorkerGroupView>,
}

/// Server -> client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Welcome {
        server: String,
        workers: u32,
    },
    /// The connection is closed after this.
    Refused {
        reason: String,
    },
    Submitted {
        job: JobId,
    },
    Status {
        job: JobId,
        status: JobStatus,
    },
    Result {
        job: JobId,
        result: JobResult,
    },
    Cancelled {
        job: JobId,
        cancelled: bool,
        note: String,
    },
    Log {
        job: JobId,
        record: LogRecord,
    },
    Progress {
        job: JobId,
        status: JobStatus,
    },
    Top(TopView),
    /// A request that could not be served (the connection stays open).
    Error {
        message: String,
    },
    /// The runtime is stopping; the connection is closed after this.
    Shutdown {
        reason: String,
    },
}

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame does not decode: {0}")]
    Decode(String),
    #[error("trailing bytes after a message in a frame")]
    Trailing,
    #[error("timed out in the middle of a frame")]
    Stalled,
    #[error(transparent)]
    Io(io::Error),
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Read one frame's bytes. `Ok(None)` when the peer closed cleanly between frames; a read timeout
/// between frames is returned as the io error so callers can keep waiting.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Closed),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) && got > 0 => return Err(FrameError::Stalled),
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Err(FrameError::Closed),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(FrameError::Stalled),
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(Some(buf))
}

/// Write one frame.
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()
}

/// Encode a message as a frame payload.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    match bincode::serde::encode_to_vec(msg, bincode::config::standard()) {
        Ok(v) => v,
        Err(e) => panic!("bqrt bug: encoding a client message failed: {e}"),
    }
}

/// Decode a frame payload (at most `MAX_FRAME` bytes are ever claimed).
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    let cfg = bincode::config::standard().with_limit::<MAX_FRAME>();
    let (v, used): (T, usize) = bincode::serde::decode_from_slice(bytes, cfg)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(FrameError::Trailing);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Address, MailboxId, Rank};
    use std::io::Cursor;

    fn requests() -> Vec<Request> {
        vec![
            Request::Hello {
                token: "t".into(),
                client: "test".into(),
            },
            Request::Submit {
                task: "fib".into(),
                args: b"20".to_vec(),
                format: Format::Json,
                log: LogSpec::OFF,
                detach: true,
            },
            Request::Status { job: JobId(3) },
            Request::Result {
                job: JobId(3),
                timeout_ms: Some(5),
            },
            Request::Cancel { job: JobId(3) },
            Request::Watch { job: JobId(3) },
            Request::Top,
            Request::Bye,
        ]
    }

    #[test]
    fn frames_round_trip() {
        let mut wire = Vec::new();
        for r in requests() {
            write_frame(&mut wire, &encode(&r)).unwrap();
        }
        let reply = Reply::Result {
            job: JobId(1),
            result: JobResult::Failed(Failure {
                task: "x".into(),
                addr: Address {
                    rank: Rank(1),
                    mailbox: MailboxId(2),
                    slot: 0,
                },
                message: "m".into(),
                rank: Rank(1),
            }),
        };
        write_frame(&mut wire, &encode(&reply)).unwrap();
        let mut cur = Cursor::new(wire);
        for r in requests() {
            let f = read_frame(&mut cur, MAX_FRAME).unwrap().unwrap();
            assert_eq!(decode::<Request>(&f).unwrap(), r);
        }
        let f = read_frame(&mut cur, MAX_FRAME).unwrap().unwrap();
        assert_eq!(decode::<Reply>(&f).unwrap(), reply);
        assert!(read_frame(&mut cur, MAX_FRAME).unwrap().is_none());
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let mut cur = Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            read_frame(&mut cur, MAX_FRAME),
            Err(FrameError::TooLarge {
                len: 4294967295,
                ..
            })
        ));
        let mut cur = Cursor::new(vec![10, 0, 0, 0, 1, 2]);
        assert!(matches!(
            read_frame(&mut cur, MAX_FRAME),
            Err(FrameError::Closed)
        ));
        let mut cur = Cursor::new(vec![10, 0]);
        assert!(matches!(
            read_frame(&mut cur, MAX_FRAME),
            Err(FrameError::Closed)
        ));
    }

    /// Random and mutated streams never panic and never allocate past the limit.
    #[test]
    fn random_and_mutated_frames_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let good: Vec<Vec<u8>> = requests().iter().map(encode).collect();
        for i in 0..30_000 {
            let mut b = good[i % good.len()].clone();
            if !b.is_empty() {
                for _ in 0..1 + rnd() % 3 {
                    let k = (rnd() as usize) % b.len();
                    b[k] = rnd() as u8;
                }
            }
            let _ = decode::<Request>(&b);
            let cut = (rnd() as usize) % (b.len() + 1);
            let _ = decode::<Request>(&b[..cut]);
            let n = (rnd() % 48) as usize;
            let r: Vec<u8> = (0..n).map(|_| rnd() as u8).collect();
            let _ = decode::<Request>(&r);
            let mut cur = Cursor::new(r);
            while let Ok(Some(f)) = read_frame(&mut cur, 1024) {
                let _ = decode::<Request>(&f);
            }
        }
    }
}
