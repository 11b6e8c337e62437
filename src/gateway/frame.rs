//! Reading clients' length-prefixed frames with bounded memory and time, for both protocols.
//!
//! * A frame's length is checked against the limit before anything is allocated, and memory is
//!   committed as bytes arrive ([`CHUNK`] at a time, the buffer growing by doubling, so at most
//!   twice what arrived), never from the header alone.
//! * Every allocation for a frame larger than one chunk is taken from one [`Budget`] shared by
//!   all connections, so the memory of partially received frames is bounded across the gateway,
//!   however many peers start one (frames of one chunk or less are bounded by the connection
//!   cap, and get through even when large ones exhaust the budget).
//! * A started frame must complete within one overall deadline from its first byte (not per
//!   read: a peer trickling a byte at a time is dropped on time).

use std::io::{self, ErrorKind, Read};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Memory is committed this much at a time.
pub const CHUNK: usize = 64 << 10;

/// Bytes of partially received frames, over all connections.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    fn take(&self, n: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur + n > self.limit {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes taken now (for tests and `top`).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Make buffers of [`CHUNK`] and more their own mappings, returned to the kernel when freed.
/// Otherwise glibc's allocator keeps freed frame buffers in per-thread arenas and raises its
/// mapping threshold after each large free, so the resident memory of a gateway that many
/// connections sent large frames grows past the receive budget, though the live bytes stay
/// within it (measured: 65 MiB over a 32 MiB budget; with this, within it).
pub fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; CHUNK fits in a c_int.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, CHUNK as libc::c_int);
    }
}

/// The byte order of a protocol's 4-byte length prefix.
#[derive(Clone, Copy, Debug)]
pub enum Prefix {
    /// bqrt's native protocol.
    Little,
    /// BQSKit's (`multiprocessing.connection`).
    Big,
}

/// The rules one read follows.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest frame accepted.
    pub max: usize,
    /// A started frame must complete within this.
    pub deadline: Duration,
    /// How long to wait for a frame to start before [`ReadError::Idle`] (`None`: for ever).
    pub poll: Option<Duration>,
}

#[derive(Debug, Error)]
pub enum ReadError {
    /// Nothing arrived within the socket's read timeout (between frames: not an error).
    #[error("no frame started")]
    Idle,
    #[error("connection closed in the middle of a frame")]
    Closed,
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("a frame stalled: not complete {0:?} after its first byte")]
    Stalled(Duration),
    #[error("the server is receiving too many large frames at once; retry later")]
    Busy,
    #[error(transparent)]
    Io(io::Error),
}

/// Returns what it took from the budget when dropped.
struct Taken<'a> {
    budget: &'a Budget,
    n: usize,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.budget.give(self.n);
    }
}

/// What frames are read from: a socket (or, for the fuzzer, bytes in memory).
pub trait Source: Read {
    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()>;
}

impl Source for TcpStream {
    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
}

impl<T: AsRef<[u8]>> Source for io::Cursor<T> {
    fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

/// Read one frame: `Ok(None)` when the peer closed between frames, [`ReadError::Idle`] when no
/// byte arrived within the socket's current read timeout (the caller decides whether to wait
/// on). `head` holds bytes of the frame already read (a protocol's detection bytes).
pub fn read(
    stream: &mut impl Source,
    prefix: Prefix,
    limits: Limits,
    budget: &Budget,
    head: &[u8],
) -> Result<Option<Vec<u8>>, ReadError> {
    let _ = stream.set_read_timeout(limits.poll);
    let mut len = [0u8; 4];
    let pre = head.len().min(4);
    len[..pre].copy_from_slice(&head[..pre]);
    let mut got = pre;
    let mut deadline = (got > 0).then(|| Instant::now() + limits.deadline);
    while got < 4 {
        match read_some(stream, &mut len[got..], deadline, limits.deadline)? {
            0 if got == 0 => return Ok(None),
            0 => return Err(ReadError::Closed),
            n => {
                got += n;
                deadline.get_or_insert_with(|| Instant::now() + limits.deadline);
            }
        }
    }
    let deadline = deadline.unwrap_or_else(|| Instant::now() + limits.deadline);
    let n = match prefix {
        Prefix::Little => u32::from_le_bytes(len),
        Prefix::Big => u32::from_be_bytes(len),
    } as usize;
    if n > limits.max {
        return Err(ReadError::TooLarge {
            len: n,
            max: limits.max,
        });
    }
    let rest = &head[pre..];
    let mut taken = Taken { budget, n: 0 };
    let mut buf: Vec<u8> = Vec::new();
    let first = rest.len().min(n);
    buf.extend_from_slice(&rest[..first]);
    while buf.len() < n {
        if buf.len() == buf.capacity() {
            // grow geometrically (no quadratic copying for a large frame), and count what is
            // allocated, not only what arrived
            let want = (buf.capacity() * 2).max(CHUNK).min(n);
            let extra = want - buf.capacity();
            // a frame of one chunk or less is not counted: connections are capped, so those
            // are bounded anyway, and a small request always gets through a flood of large ones
            if n > CHUNK {
                if !budget.take(extra) {
                    return Err(ReadError::Busy);
                }
                taken.n += extra;
            }
            buf.reserve_exact(want - buf.len());
        }
        let chunk = CHUNK.min(n - buf.len()).min(buf.capacity() - buf.len());
        let start = buf.len();
        buf.resize(start + chunk, 0);
        let mut filled = 0;
        while filled < chunk {
            match read_some(
                stream,
                &mut buf[start + filled..start + chunk],
                Some(deadline),
                limits.deadline,
            )? {
                0 => return Err(ReadError::Closed),
                k => filled += k,
            }
        }
    }
    Ok(Some(buf))
}

/// Read exactly `buf` (a protocol's header) within `within` of starting: a peer trickling bytes
/// is cut off on time, as in a frame.
pub fn read_exact(
    stream: &mut impl Source,
    buf: &mut [u8],
    within: Duration,
) -> Result<(), ReadError> {
    let deadline = Instant::now() + within;
    let mut got = 0;
    while got < buf.len() {
        match read_some(stream, &mut buf[got..], Some(deadline), within)? {
            0 => return Err(ReadError::Closed),
            n => got += n,
        }
    }
    Ok(())
}

/// One read. With a deadline, the socket's timeout is the time left (a frame in progress);
/// without, the socket's own timeout applies and its expiry is [`ReadError::Idle`].
fn read_some(
    stream: &mut impl Source,
    buf: &mut [u8],
    deadline: Option<Instant>,
    whole: Duration,
) -> Result<usize, ReadError> {
    loop {
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadError::Stalled(whole));
            }
            let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        }
        match stream.read(buf) {
            Ok(k) => return Ok(k),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if deadline.is_none() {
                    return Err(ReadError::Idle);
                }
            }
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    const LIMITS: Limits = Limits {
        max: 1 << 20,
        deadline: Duration::from_millis(300),
        poll: Some(Duration::from_millis(20)),
    };

    #[test]
    fn a_frame_arrives_whole_and_its_budget_is_returned() {
        let (mut a, mut b) = pair();
        let budget = Budget::new(1 << 20);
        let body = vec![7u8; 200_000];
        a.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        a.write_all(&body).unwrap();
        let f = read(&mut b, Prefix::Big, LIMITS, &budget, &[]).unwrap();
        assert_eq!(f, Some(body));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_header_claiming_too_much_allocates_nothing() {
        let (mut a, mut b) = pair();
        let budget = Budget::new(1 << 20);
        a.write_all(&(2u32 << 20).to_le_bytes()).unwrap();
        let e = read(&mut b, Prefix::Little, LIMITS, &budget, &[]).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn a_trickling_peer_is_dropped_at_the_frame_deadline() {
        let (mut a, mut b) = pair();
        let budget = Budget::new(1 << 20);
        // the header is there before the read starts (a frame has begun); the body would take
        // 5 s at one byte per 50 ms
        a.write_all(&100u32.to_le_bytes()).unwrap();
        let t = std::thread::spawn(move || {
            for _ in 0..100 {
                if a.write_all(&[1]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let start = Instant::now();
        let e = read(&mut b, Prefix::Little, LIMITS, &budget, &[]).unwrap_err();
        assert!(matches!(e, ReadError::Stalled(_)), "{e}");
        // dropped at the 300 ms deadline, not after the whole body
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        drop(b);
        t.join().unwrap();
    }

    #[test]
    fn partial_frames_share_one_budget() {
        let (mut a1, mut b1) = pair();
        let (mut a2, mut b2) = pair();
        let budget = Budget::new(CHUNK + CHUNK / 2);
        // the first peer's frame holds a chunk and a bit while it waits for its last 10 bytes
        a1.write_all(&(CHUNK as u32 + 10).to_le_bytes()).unwrap();
        a1.write_all(&vec![0u8; CHUNK]).unwrap();
        a2.write_all(&((CHUNK as u32) * 2).to_le_bytes()).unwrap();
        let slow = Limits {
            deadline: Duration::from_secs(5),
            ..LIMITS
        };
        std::thread::scope(|s| {
            let first = s.spawn(|| read(&mut b1, Prefix::Little, slow, &budget, &[]));
            // wait until the first has taken its chunk
            let until = Instant::now() + Duration::from_secs(5);
            while budget.used() < CHUNK + 10 && Instant::now() < until {
                std::thread::yield_now();
            }
            let e = read(&mut b2, Prefix::Little, slow, &budget, &[]).unwrap_err();
            assert!(matches!(e, ReadError::Busy), "{e}");
            drop(a1);
            assert!(first.join().unwrap().is_err());
        });
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn nothing_sent_is_idle_not_an_error() {
        let (_a, mut b) = pair();
        let budget = Budget::new(CHUNK);
        let e = read(&mut b, Prefix::Little, LIMITS, &budget, &[]).unwrap_err();
        assert!(matches!(e, ReadError::Idle), "{e}");
    }
}
