//! The Python process a worker rank runs its BQSKit tasks in: started, spoken to over two
//! pipes, watched and ended. The frames are described in python/bqrt_child.py.
//!
//! The process is the environment's own interpreter (`python -c BOOT RANK`); the boot code reads
//! bqrt's Python sources from the first frame, so nothing has to be installed next to the
//! binary. It dies with its rank (`PR_SET_PDEATHSIG`), ignores SIGINT (the rank decides when
//! to stop) and, with a memory limit, cannot map more than the limit of private writable memory
//! (`RLIMIT_DATA`: Python raises `MemoryError`); its resident size is also watched while a task
//! runs, and a process over the limit is killed.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tokens::SharedTokens;

const CHILD_SRC: &str = include_str!("../../python/bqrt_child.py");
const WORKER_SRC: &str = include_str!("../../python/bqrt_worker.py");
const COMPILE_SRC: &str = include_str!("../../python/bqrt_compile.py");

/// Reads the first frame (bqrt's sources and the modules to warm up) and runs the child.
const BOOT: &str = "import os,struct,sys
def r(n):
    b=b''
    while len(b)<n:
        c=os.read(3,n-len(b))
        if not c: os._exit(0)
        b+=c
    return b
n,=struct.unpack('<I',r(4))
p=r(n).split(b'\\0')
g={'__name__':'bqrt_child'}
exec(compile(p[0].decode(),'<bqrt>/bqrt_child.py','exec'),g)
g['main'](p[1].decode(),p[2].decode(),[m for m in p[3].decode().split(',') if m],int(sys.argv[1]))
";

/// A message to the child.
pub enum ToChild<'a> {
    Start {
        tid: u64,
        depth: u32,
        envelope: &'a [u8],
    },
    All {
        tid: u64,
        single: bool,
        values: &'a [Vec<u8>],
    },
    Next {
        tid: u64,
        pairs: &'a [(usize, Vec<u8>)],
    },
    Close(u64),
    Messages(&'a [Vec<u8>]),
    /// The reply to a claim: `(slot, name, envelope)` of the child taken back, or none.
    Claimed(Option<(u32, &'a str, &'a [u8])>),
    Quit,
}

/// A message from the child.
#[derive(Debug, PartialEq)]
pub enum FromChild {
    /// Ready for its first task.
    Hello,
    Submit {
        mailbox: u64,
        single: bool,
        /// Keep the children in this worker's queue, where the task may claim them.
        local: bool,
        /// The tokens of the first children, one each, in order (decision 67).
        tokens: Vec<u32>,
        children: Vec<(String, Vec<u8>)>,
        /// Resources the children need, comma-separated (empty: none).
        needs: String,
    },
    /// Take back a child of this mailbox that still waits in the worker's queue (one reply).
    Claim(u64),
    Cancel(u64),
    Communicate(u64, Vec<u8>),
    GetMessages,
    Log {
        level: i64,
        name: String,
        text: String,
    },
    Done(Vec<u8>),
    Failed(String),
    Await {
        mailbox: u64,
        next: bool,
    },
}

/// How the process was started.
#[derive(Clone, Debug)]
pub struct Spec<'a> {
    pub python: &'a Path,
    pub rank: u32,
    /// Most private writable memory the process may map (bytes).
    pub memory_limit: Option<u64>,
    /// Modules imported before the process says it is ready.
    pub warm: &'a [&'a str],
}

/// One running child process.
pub struct Child {
    proc: std::process::Child,
    to: File,
    from: File,
    /// What was read from the child: the unread bytes are `buf[at..end]`; the rest is room
    /// for the next read (zeroed once, not before every read).
    buf: Vec<u8>,
    at: usize,
    end: usize,
    pub started: Instant,
    /// Whether its ready frame arrived.
    pub ready: bool,
    /// Killed by us, and why (the cause a task is told instead of the bare signal).
    killed: Option<String>,
    reaped: Option<ExitStatus>,
    /// When the last frame went to the child: a reply soon after is waited for by spinning.
    sent: Instant,
    /// The token table it shares (`python::tokens`), when one could be made.
    pub tokens: Option<Arc<SharedTokens>>,
    /// The bell it rings after frames to read at once (its descriptor 6), when one could be
    /// made; without it, every frame wakes the rank.
    bell: Option<OwnedFd>,
    /// How long the next wait on the bell sleeps at most before it looks at the pipe.
    lazy: Duration,
}

/// The least room a read from the child gets, and the largest buffer kept between frames.
const READ_ROOM: usize = 1 << 16;
const KEPT_ROOM: usize = 1 << 20;

/// How long a wait for the child's reply spins (polling the pipe, yielding the core) after a
/// frame went to it, before it sleeps in `poll`. A sleeping thread's wake-up costs ~20 us per
/// side on a virtual machine whose idle cores halt, more than most steps of a small task
/// (docs/decisions.md, 56); a longer step pays one spin and then sleeps as before.
pub const REPLY_SPIN: Duration = Duration::from_micros(100);

/// How often a wait past the reply spin looks at the pipe for frames the child sent without
/// ringing its bell: every [`LAZY`] after such a frame, backing off to [`LAZY_MOST`] while none
/// comes (a long computation).
pub const LAZY: Duration = Duration::from_millis(1);
pub const LAZY_MOST: Duration = Duration::from_millis(4);

/// Wait up to `wait` for `fd` to be readable: 1 readable (or hung up), 0 not, -1 interrupted.
fn wait_readable(fd: RawFd, wait: Duration) -> io::Result<i32> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: wait.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd and a valid timespec; no signal mask change
    let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(-1);
        }
        return Err(e);
    }
    Ok(n)
}

/// An eventfd the child rings after a frame the rank should read at once.
fn bell() -> io::Result<OwnedFd> {
    // SAFETY: eventfd returns a new descriptor or -1
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is new and owned by nobody else
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nobody else
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec copy of `fd` numbered 10 or above, so that moving it to 3 or 4 in the child
/// cannot overwrite the other pipe.
fn high(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: n is a new descriptor owned by nobody else
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Larger pipes: an envelope of a few hundred KiB goes in one write (best effort).
fn widen(fd: &OwnedFd) {
    // SAFETY: F_SETPIPE_SZ only resizes the pipe's buffer
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
}

impl Child {
    /// Start a child and send it its sources; it says it is ready, then imports `spec.warm`
    /// while it has nothing else to do.
    pub fn spawn(spec: &Spec<'_>) -> io::Result<Child> {
        let (child_in, to) = pipe()?;
        let (from, child_out) = pipe()?;
        widen(&to);
        let (child_in, child_out) = (high(child_in)?, high(child_out)?);
        let (fd_in, fd_out) = (child_in.as_raw_fd(), child_out.as_raw_fd());
        // without a token table, the process claims every child by message
        let tokens = match SharedTokens::new() {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                log::warn!("rank {}: no token table for its Python process ({e}); children are claimed by message", spec.rank);
                None
            }
        };
        let ring = bell().ok();
        // the copies the child gets as its descriptors 5 and 6 (numbered 10 or above, as the
        // pipes are)
        let table = tokens
            .as_ref()
            .map(|t| t.fd().try_clone_to_owned().and_then(high))
            .transpose()?;
        let ring_high = ring
            .as_ref()
            .map(|b| b.try_clone().and_then(high))
            .transpose()?;
        let moves = [
            (Some(fd_in), 3),
            (Some(fd_out), 4),
            (table.as_ref().map(|t| t.as_raw_fd()), 5),
            (ring_high.as_ref().map(|b| b.as_raw_fd()), 6),
        ];
        let limit = spec.memory_limit;
        let mut cmd = Command::new(spec.python);
        cmd.arg("-c")
            .arg(BOOT)
            .arg(spec.rank.to_string())
            .stdin(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec
        unsafe {
            cmd.pre_exec(move || {
                for (fd, to) in moves {
                    if let Some(fd) = fd {
                        if libc::dup2(fd, to) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                if let Some(bytes) = limit {
                    let rl = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    if libc::setrlimit(libc::RLIMIT_DATA, &rl) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let proc = cmd.spawn()?;
        drop((child_in, child_out, table, ring_high));
        let mut child = Child::over(proc, File::from(to), File::from(from));
        child.tokens = tokens;
        child.bell = ring;
        let mut boot = Vec::new();
        boot.extend_from_slice(CHILD_SRC.as_bytes());
        boot.push(0);
        boot.extend_from_slice(WORKER_SRC.as_bytes());
        boot.push(0);
        boot.extend_from_slice(COMPILE_SRC.as_bytes());
        boot.push(0);
        boot.extend_from_slice(spec.warm.join(",").as_bytes());
        let mut frame = (boot.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&boot);
        // a child that already died breaks the pipe; its exit status, read when it is found
        // gone, is the better cause
        let _ = child.to.write_all(&frame);
        Ok(child)
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// A child process `proc` spoken to through `to` and heard through `from`, not ready yet.
    fn over(proc: std::process::Child, to: File, from: File) -> Child {
        Child {
            proc,
            to,
            from,
            buf: vec![0; READ_ROOM],
            at: 0,
            end: 0,
            started: Instant::now(),
            ready: false,
            killed: None,
            reaped: None,
            sent: Instant::now(),
            tokens: None,
            bell: None,
            lazy: LAZY,
        }
    }

    /// Send one message (blocks only while the pipe is full; a dead child is an error).
    pub fn send(&mut self, msg: ToChild<'_>) -> io::Result<()> {
        let frame = encode(msg);
        self.to.write_all(&frame)?;
        self.sent = Instant::now();
        Ok(())
    }

    /// The next message, waiting at most `timeout` (`Ok(None)`: nothing yet). An error means the
    /// child is gone or spoke nonsense: see [`Child::end`].
    ///
    /// Past the reply spin, the wait sleeps on the child's bell, which it rings after the frames
    /// it then waits on (a claim, a step's end), and looks at the pipe every [`LAZY`] or so:
    /// the frames it sends in the middle of a step (submits, cancels, log records) wake nobody,
    /// so a step that submits thousands of children is not preempted by its own executor at
    /// each one.
    pub fn recv(&mut self, timeout: Duration) -> io::Result<Option<FromChild>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(msg) = self.parse()? {
                return Ok(Some(msg));
            }
            let spinning = self.sent.elapsed() < REPLY_SPIN;
            let left = deadline.saturating_duration_since(Instant::now());
            let (fd, wait) = match (spinning, &self.bell) {
                (true, _) => (self.from.as_raw_fd(), Duration::ZERO),
                (false, Some(bell)) => (bell.as_raw_fd(), left.min(self.lazy)),
                (false, None) => (self.from.as_raw_fd(), left),
            };
            let n = wait_readable(fd, wait)?;
            if spinning && n == 0 {
                std::thread::yield_now();
                continue;
            }
            if let Some(bell) = &self.bell {
                if !spinning {
                    let mut b = [0u8; 8];
                    // SAFETY: reading 8 bytes into our buffer; the eventfd does not block
                    unsafe { libc::read(bell.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
                }
            }
            if n < 0 {
                return Ok(None); // interrupted
            }
            let read = self.read_ready()?;
            if self.bell.is_some() && !spinning {
                self.lazy = match read {
                    true => LAZY,
                    false if n == 0 => (self.lazy * 2).min(LAZY_MOST),
                    false => self.lazy,
                };
            }
            if !read && left.is_zero() {
                return Ok(None);
            }
        }
    }

    /// Read what the pipe holds, without waiting; whether anything was read.
    fn read_ready(&mut self) -> io::Result<bool> {
        if wait_readable(self.from.as_raw_fd(), Duration::ZERO)? <= 0 {
            return Ok(false);
        }
        self.make_room();
        match self.from.read(&mut self.buf[self.end..]) {
            Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
            Ok(k) => {
                self.end += k;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// At least [`READ_ROOM`] free bytes after `end`: the unread bytes move to the front, and
    /// the buffer grows only for a frame larger than what it holds.
    fn make_room(&mut self) {
        if self.buf.len() - self.end >= READ_ROOM {
            return;
        }
        self.buf.copy_within(self.at..self.end, 0);
        self.end -= self.at;
        self.at = 0;
        if self.buf.len() - self.end < READ_ROOM {
            let len = (2 * self.buf.len()).max(self.end + READ_ROOM);
            self.buf.resize(len, 0);
        }
    }

    fn parse(&mut self) -> io::Result<Option<FromChild>> {
        let rest = &self.buf[self.at..self.end];
        if rest.len() < 4 {
            return Ok(None);
        }
        let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + n {
            return Ok(None);
        }
        let msg =
            decode(&rest[4..4 + n]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.at += 4 + n;
        if self.at == self.end {
            self.at = 0;
            self.end = 0;
            if self.buf.len() > KEPT_ROOM {
                // a large frame's room is given back once it is read
                self.buf = vec![0; READ_ROOM];
            }
        }
        Ok(Some(msg))
    }

    /// Its resident size in bytes (`/proc/PID/statm`), if it can be read.
    pub fn rss(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/statm", self.proc.id())).ok()?;
        let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        Some(pages * page)
    }

    /// Send a signal (a child already gone ignores it).
    pub fn signal(&self, sig: i32) {
        if self.reaped.is_none() {
            // SAFETY: kill with a pid of our own unreaped child
            unsafe { libc::kill(self.proc.id() as libc::pid_t, sig) };
        }
    }

    /// Kill it now, remembering why (the cause [`Child::end`] reports).
    pub fn kill(&mut self, why: impl Into<String>) {
        if self.killed.is_none() {
            self.killed = Some(why.into());
        }
        self.signal(libc::SIGKILL);
    }

    /// Whether it has exited (reaps it if so).
    pub fn exited(&mut self) -> bool {
        if self.reaped.is_none() {
            if let Ok(Some(st)) = self.proc.try_wait() {
                self.reaped = Some(st);
            }
        }
        self.reaped.is_some()
    }

    /// End it (killing it if it still runs after `grace`) and say how it ended.
    pub fn end(&mut self, grace: Duration) -> String {
        let until = Instant::now() + grace;
        while !self.exited() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        if !self.exited() {
            self.signal(libc::SIGKILL);
            if let Ok(st) = self.proc.wait() {
                self.reaped = Some(st);
            }
        }
        match (&self.killed, self.reaped) {
            (Some(why), _) => why.clone(),
            (None, Some(st)) => describe(st),
            (None, None) => "it could not be waited for".into(),
        }
    }

    /// Ask it to exit, then make sure it did (shutdown).
    pub fn quit(mut self, grace: Duration) {
        let _ = self.send(ToChild::Quit);
        self.end(grace);
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.exited() {
            self.signal(libc::SIGKILL);
            let _ = self.proc.wait();
        }
    }
}

/// How a process ended, for a task's error.
pub fn describe(st: ExitStatus) -> String {
    if let Some(sig) = st.signal() {
        let name = signal_name(sig);
        let more = match sig {
            libc::SIGKILL => {
                " (from outside the runtime; the kernel's out-of-memory killer sends it)"
            }
            libc::SIGSEGV | libc::SIGBUS => " (a crash, usually in a C extension)",
            libc::SIGABRT => " (an abort, usually in a C extension or a failed allocation)",
            _ => "",
        };
        return format!("killed by signal {sig} ({name}){more}");
    }
    match st.code() {
        Some(c) => format!("it exited with status {c}"),
        None => format!("it ended ({st})"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "a signal",
    }
}

fn put_u32(v: &mut Vec<u8>, n: usize) {
    v.extend_from_slice(&(n as u32).to_le_bytes());
}

fn encode(msg: ToChild<'_>) -> Vec<u8> {
    let mut v = vec![0u8; 4];
    match msg {
        ToChild::Start {
            tid,
            depth,
            envelope,
        } => {
            v.reserve(13 + envelope.len());
            v.push(b'S');
            v.extend_from_slice(&tid.to_le_bytes());
            v.extend_from_slice(&depth.to_le_bytes());
            v.extend_from_slice(envelope);
        }
        ToChild::All {
            tid,
            single,
            values,
        } => {
            v.push(b'A');
            v.extend_from_slice(&tid.to_le_bytes());
            v.push(single as u8);
            put_u32(&mut v, values.len());
            for b in values {
                put_u32(&mut v, b.len());
                v.extend_from_slice(b);
            }
        }
        ToChild::Next { tid, pairs } => {
            v.push(b'N');
            v.extend_from_slice(&tid.to_le_bytes());
            put_u32(&mut v, pairs.len());
            for (slot, b) in pairs {
                put_u32(&mut v, *slot);
                put_u32(&mut v, b.len());
                v.extend_from_slice(b);
            }
        }
        ToChild::Close(tid) => {
            v.push(b'X');
            v.extend_from_slice(&tid.to_le_bytes());
        }
        ToChild::Messages(msgs) => {
            v.push(b'G');
            put_u32(&mut v, msgs.len());
            for b in msgs {
                put_u32(&mut v, b.len());
                v.extend_from_slice(b);
            }
        }
        ToChild::Claimed(got) => {
            v.push(b'K');
            match got {
                None => v.extend_from_slice(&u32::MAX.to_le_bytes()),
                Some((slot, name, envelope)) => {
                    v.extend_from_slice(&slot.to_le_bytes());
                    put_u32(&mut v, name.len());
                    v.extend_from_slice(name.as_bytes());
                    v.extend_from_slice(envelope);
                }
            }
        }
        ToChild::Quit => v.push(b'Q'),
    }
    let n = (v.len() - 4) as u32;
    v[..4].copy_from_slice(&n.to_le_bytes());
    v
}

/// Reads a child's frame body.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("a frame ends {} bytes early", n - self.0.len()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn i32(&mut self) -> Result<i64, String> {
        let b = self.take(4)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn blob(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()?;
        self.take(n)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn decode(frame: &[u8]) -> Result<FromChild, String> {
    let mut c = Cursor(frame);
    let kind = c.u8()?;
    Ok(match kind {
        b'H' => FromChild::Hello,
        b's' => {
            let mailbox = c.u64()?;
            let flags = c.u8()?;
            let n = c.u32()?;
            let mut tokens = Vec::new();
            if flags & 8 != 0 {
                let k = c.u32()?;
                if k > n {
                    return Err(format!("a submit of {n} children with {k} tokens"));
                }
                for _ in 0..k {
                    let t = c.u32()?;
                    if t >= super::tokens::TOKENS as usize {
                        return Err(format!("token {t} is out of range"));
                    }
                    tokens.push(t as u32);
                }
            }
            let mut children = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                let name = text(c.blob()?);
                children.push((name, c.blob()?.to_vec()));
            }
            // an optional trailing blob: the resources the children need
            let needs = match c.0.is_empty() {
                true => String::new(),
                false => text(c.blob()?),
            };
            FromChild::Submit {
                mailbox,
                single: flags & 1 != 0,
                local: flags & 2 != 0,
                tokens,
                children,
                needs,
            }
        }
        b'k' => FromChild::Claim(c.u64()?),
        b'c' => FromChild::Cancel(c.u64()?),
        b'm' => {
            let mailbox = c.u64()?;
            FromChild::Communicate(mailbox, c.rest().to_vec())
        }
        b'g' => FromChild::GetMessages,
        b'l' => {
            let level = c.i32()?;
            let name = text(c.blob()?);
            FromChild::Log {
                level,
                name,
                text: text(c.rest()),
            }
        }
        b'd' => FromChild::Done(c.rest().to_vec()),
        b'e' => FromChild::Failed(text(c.rest())),
        b'a' => {
            let mailbox = c.u64()?;
            FromChild::Await {
                mailbox,
                next: c.u8()? != 0,
            }
        }
        k => return Err(format!("unknown frame kind {k}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_from_the_child_decode_and_bad_ones_are_errors() {
        let mut f = vec![b's'];
        f.extend_from_slice(&7u64.to_le_bytes());
        f.push(1);
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&2u32.to_le_bytes());
        f.extend_from_slice(b"fn");
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(b"abc");
        assert_eq!(
            decode(&f),
            Ok(FromChild::Submit {
                mailbox: 7,
                single: true,
                local: false,
                tokens: Vec::new(),
                children: vec![("fn".into(), b"abc".to_vec())],
                needs: String::new(),
            })
        );
        assert!(decode(&f[..f.len() - 1]).is_err());
        let mut with_needs = f.clone();
        with_needs.extend_from_slice(&3u32.to_le_bytes());
        with_needs.extend_from_slice(b"gpu");
        assert!(matches!(
            decode(&with_needs),
            Ok(FromChild::Submit { needs, .. }) if needs == "gpu"
        ));
        assert!(decode(&with_needs[..with_needs.len() - 1]).is_err());
        assert!(decode(b"z").is_err());
        assert!(decode(b"").is_err());
        let mut big = vec![b's'];
        big.extend_from_slice(&7u64.to_le_bytes());
        big.push(0);
        big.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            decode(&big).is_err(),
            "a huge count with no children is an error"
        );
    }

    #[test]
    fn messages_to_the_child_carry_their_length() {
        let v = encode(ToChild::Next {
            tid: 1,
            pairs: &[(2, b"xy".to_vec())],
        });
        assert_eq!(
            u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as usize,
            v.len() - 4
        );
        assert_eq!(v[4], b'N');
    }
}

#[cfg(test)]
mod process_tests {
    use super::*;

    fn python() -> std::path::PathBuf {
        std::env::var_os("PYO3_PYTHON")
            .map(Into::into)
            .unwrap_or_else(|| "python3".into())
    }

    fn ready(c: &mut Child) {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            match c.recv(Duration::from_millis(100)) {
                Ok(Some(FromChild::Hello)) => return,
                Ok(Some(m)) => panic!("before ready: {m:?}"),
                Ok(None) => {}
                Err(e) => panic!(
                    "the child died before ready: {e}: {}",
                    c.end(Duration::ZERO)
                ),
            }
        }
        panic!("no ready message within 30 s")
    }

    #[test]
    fn a_child_is_ready_before_its_warm_up_which_runs_while_idle_and_survives_a_bad_module() {
        // The first warm module blocks its import on a FIFO until the test opens it: the child
        // must say ready before that import ends, and run it while nothing waits on its pipe.
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(
            d.join("bqrt_gate_mod.py"),
            "import os\nd = os.path.dirname(__file__)\n\
             open(os.path.join(d, 'started'), 'w').close()\n\
             with open(os.path.join(d, 'gate')) as f:\n    f.read()\n",
        )
        .expect("module");
        std::fs::write(d.join("bqrt_bad_mod.py"), "raise ImportError('bad')\n").expect("module");
        std::fs::write(
            d.join("bqrt_after_mod.py"),
            "import os\nopen(os.path.join(os.path.dirname(__file__), 'after'), 'w').close()\n",
        )
        .expect("module");
        let gate =
            std::ffi::CString::new(d.join("gate").as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path
        assert_eq!(unsafe { libc::mkfifo(gate.as_ptr(), 0o600) }, 0);
        let wrapper = d.join("python");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nPYTHONPATH={} exec {} \"$@\"\n",
                d.display(),
                python().display()
            ),
        )
        .expect("wrapper");
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let spec = Spec {
            python: &wrapper,
            rank: 7,
            memory_limit: None,
            warm: &[
                "bqrt_gate_mod",
                "bqrt_bad_mod",
                "bqrt_no_such_module",
                "bqrt_after_mod",
            ],
        };
        let mut c = Child::spawn(&spec).expect("spawn");
        ready(&mut c);
        let appears = |name: &str| {
            let until = Instant::now() + Duration::from_secs(30);
            while !d.join(name).exists() {
                assert!(Instant::now() < until, "no {name} within 30 s");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        appears("started");
        // release the import; the modules that fail to import do not stop the ones after them
        std::fs::write(d.join("gate"), b"go").expect("open the gate");
        appears("after");
        c.send(ToChild::Quit).expect("send");
        assert_eq!(c.end(Duration::from_secs(30)), "it exited with status 0");
    }

    #[test]
    fn frames_larger_than_a_read_arrive_whole_and_their_room_is_given_back() {
        // what the process writes, played by the test; the process itself only has to exist
        let (from, theirs) = pipe().expect("pipe");
        let mut c = Child::over(
            Command::new("sleep").arg("30").spawn().expect("sleep"),
            File::create("/dev/null").expect("/dev/null"),
            File::from(from),
        );
        let big: Vec<u8> = (0..3 * KEPT_ROOM).map(|i| (i % 251) as u8).collect();
        let frame = |body: &[u8]| {
            let mut f = ((body.len()) as u32).to_le_bytes().to_vec();
            f.extend_from_slice(body);
            f
        };
        let mut bytes = frame(b"H");
        bytes.extend(frame(&[b"d".as_slice(), &big].concat()));
        bytes.extend(frame(b"dsmall"));
        bytes.extend(frame(&[b"d".as_slice(), &big[..READ_ROOM + 7]].concat()));
        // in odd pieces, so that frames and their length prefixes straddle reads
        let writer = std::thread::spawn(move || {
            let mut out = File::from(theirs);
            for piece in bytes.chunks(40_009) {
                out.write_all(piece).expect("write");
            }
        });
        let mut next = || loop {
            if let Some(m) = c.recv(Duration::from_secs(10)).expect("a frame") {
                return m;
            }
        };
        assert_eq!(next(), FromChild::Hello);
        assert!(
            next() == FromChild::Done(big.clone()),
            "the large frame, whole"
        );
        assert_eq!(next(), FromChild::Done(b"small".to_vec()));
        assert!(next() == FromChild::Done(big[..READ_ROOM + 7].to_vec()));
        writer.join().expect("writer");
        assert_eq!(
            c.buf.len(),
            READ_ROOM,
            "the large frame's room is given back"
        );
        c.kill("the test is over");
    }

    #[test]
    fn a_child_killed_by_a_signal_or_by_us_is_described_by_its_cause() {
        let py = python();
        let spec = Spec {
            python: &py,
            rank: 1,
            memory_limit: Some(256 << 20),
            warm: &[],
        };
        let mut c = Child::spawn(&spec).expect("spawn");
        ready(&mut c);
        c.signal(libc::SIGSEGV);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match c.recv(Duration::from_millis(50)) {
                Err(_) => break,
                Ok(_) => assert!(Instant::now() < until, "the child outlived SIGSEGV"),
            }
        }
        let cause = c.end(Duration::from_secs(1));
        assert!(cause.contains("SIGSEGV"), "{cause}");
        let mut d = Child::spawn(&spec).expect("spawn");
        ready(&mut d);
        d.kill("killed: over the memory limit");
        assert_eq!(
            d.end(Duration::from_secs(5)),
            "killed: over the memory limit"
        );
    }
}
