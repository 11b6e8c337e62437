//! The gateway: rank 0's TCP front door for clients.
//!
//! An acceptor thread takes connections and gives each a connection thread ([`conn`]).
//! Connections send requests to the [`hub`], which runs on the rank's client thread: it feeds
//! them to the job table (`crate::jobs`, owned by the server handle) and routes the table's
//! replies and the server's events (results, logs, progress) to the connections that own or
//! watch each job.
//!
//! # Limits (a shared node's other users can reach a loopback port)
//! * At most `max_connections` connections of any protocol are served; [`RESERVE`] more are
//!   kept for native clients, which must prove the token before they get anything, so the
//!   owner's `bqrt shutdown`/`top`/`status` get in when unauthenticated connections fill the
//!   cap. Past both the acceptor closes a connection before building any state for it. Threads
//!   are one or two per connection, so bounded by the cap (threads, not multiplexing: a
//!   connection's work is a few blocking reads, and the cap is a few hundred).
//! * Frames are read by [`frame`]: bounded size, memory committed as bytes arrive, one budget
//!   for all partially received frames, and one deadline per started frame.
//! * BQSKit's protocol is served on loopback only to the runtime's own user ([`peer`]); the
//!   same check can guard the native protocol too, beside its token.

pub mod bell;
mod conn;
pub use conn::same_user;
pub mod frame;
mod hub;
pub mod peer;

pub use crate::jobs::ConnId;
use crate::protocol::native::{Reply, Request};
use crate::runtime::ServerHandle;
use crossbeam::channel::{unbounded, Receiver, Sender};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Another client protocol sharing the gateway's port. It is offered every connection whose
/// first five bytes are not the native header, and talks to the hub through a [`Link`] with the
/// same requests and replies as a native client (translating its own messages).
pub trait ForeignProtocol: Send + Sync {
    /// Whether the connection's first five bytes look like this protocol.
    fn accepts(&self, head: &[u8; 5]) -> bool;
    /// Serve the connection until it ends (runs on the connection's own thread). `head` holds
    /// the bytes already read; `admit` says what the gateway decided about the connection.
    fn serve(&self, stream: std::net::TcpStream, head: [u8; 5], link: Link, admit: &Admission);
}

/// What the gateway tells a foreign protocol about a new connection.
pub struct Admission {
    /// Why it must be refused, if it must (the protocol says so in its own terms).
    pub refuse: Option<String>,
    /// The receive budget and the frame deadline, for its reads.
    pub budget: Arc<frame::Budget>,
    pub frame_timeout: Duration,
    /// A connection with no job and no request outstanding is closed after this.
    pub idle_timeout: Duration,
}

/// Connections beyond `max_connections` kept for native clients (which authenticate first).
pub const RESERVE: usize = 16;
/// Connections the acceptor lets through before any thread is started for one: the cap and
/// the reserve, plus room for connections that have closed but whose threads have not yet
/// counted themselves out.
const HARD_SLACK: usize = 64;

/// A foreign-protocol connection's handle on the hub.
pub struct Link {
    id: ConnId,
    hub: Sender<HubIn>,
    opened: bool,
}

impl Link {
    /// Register with the hub; replies for this connection arrive on the returned channel, and
    /// the hub rings `bell` after each.
    pub fn open(&mut self, bell: Arc<bell::Bell>) -> Receiver<Reply> {
        let (tx, rx) = crossbeam::channel::bounded(4096);
        let outlet = Outlet {
            tx,
            bell: Some(bell),
        };
        self.opened = self
            .hub
            .send(HubIn::Open {
                conn: self.id,
                outlet,
            })
            .is_ok();
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
    /// A new connection must send its protocol header, and a native one its `Hello`, within
    /// this.
    pub handshake_timeout: Duration,
    /// Bytes of partially received frames, over all connections.
    pub budget: Arc<frame::Budget>,
    /// Native connections must come from loopback and the runtime's own user too.
    pub same_user: bool,
    /// A BQSKit connection with no job and no request outstanding is closed after this.
    pub idle_timeout: Duration,
}

/// Default receive budget (`--receive-budget`, MiB).
pub const BUDGET_MIB: usize = 512;

impl GatewayConfig {
    pub fn new(token: String) -> GatewayConfig {
        GatewayConfig {
            token,
            foreign: None,
            max_connections: 256,
            max_frame: crate::protocol::native::MAX_FRAME,
            frame_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            budget: Arc::new(frame::Budget::new(BUDGET_MIB << 20)),
            same_user: false,
            idle_timeout: Duration::from_secs(900),
        }
    }
}

#[derive(Debug, Error)]
pub enum GatewayError {
    #[error("--listen {addr}: {source}; {}", bind_hint(.source))]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("--listen {0}: not a HOST:PORT address")]
    Address(String),
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "is another bqrt (or another program) using it? choose another port with --listen HOST:PORT (port 0 picks a free one)",
        std::io::ErrorKind::AddrNotAvailable => "that address is not one of this machine's: use 127.0.0.1, 0.0.0.0 or an address of this node",
        std::io::ErrorKind::PermissionDenied => "ports below 1024 need privileges: choose a port of 1024 or more",
        _ => "choose another address with --listen HOST:PORT",
    }
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

/// Serve clients until `stop` is set (or a client asks the runtime to stop, or a rank is
/// lost); then tell every client why and return the error, if the runtime is failing.
pub fn serve(
    listener: TcpListener,
    cfg: GatewayConfig,
    handle: &mut ServerHandle,
    stop: Arc<AtomicBool>,
    reason: &str,
) -> Option<String> {
    frame::return_large_buffers();
    let cfg = Arc::new(cfg);
    let (hub_tx, hub_rx) = unbounded::<HubIn>();
    let workers = handle.cluster().map(|c| c.workers).unwrap_or(0);
    if let Err(e) = accept(
        listener,
        Arc::clone(&cfg),
        hub_tx,
        Arc::clone(&stop),
        workers,
    ) {
        log::error!(target: "bqrt::gateway", "cannot start the accept thread: {e}");
        return Some(format!("cannot start the accept thread: {e}"));
    }
    hub::Hub::new(handle).run(&hub_rx, &stop, reason)
}

/// The acceptor thread: each connection gets its own thread, where the cap is applied with the
/// protocol's own refusal; past the hard limit it is closed here, before any state exists.
fn accept(
    listener: TcpListener,
    cfg: Arc<GatewayConfig>,
    hub: Sender<HubIn>,
    stop: Arc<AtomicBool>,
    workers: u32,
) -> std::io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let body = move || {
        let mut next = 0u64;
        for stream in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            next += 1;
            active.fetch_add(1, Ordering::SeqCst);
            // After a burst of connections whose peers already left, their threads may not have
            // counted themselves out yet (on a loaded machine, hundreds of them): a client
            // arriving then must not be closed for them, so wait for the reaping first.
            let hard = cfg.max_connections + RESERVE + HARD_SLACK;
            if over_cap_within(&active, hard, HARD_GRACE) {
                let n = active.fetch_sub(1, Ordering::SeqCst);
                log::debug!(target: "bqrt::gateway", "connection closed at once: {n} open");
                drop(stream);
                continue;
            }
            let c = conn::Conn {
                id: ConnId(next),
                stream,
                cfg: Arc::clone(&cfg),
                hub: hub.clone(),
                active: Arc::clone(&active),
                workers,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("bqrt-gw-r{next}"))
                .spawn(move || c.run());
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    };
    std::thread::Builder::new()
        .name("bqrt-gw-accept".into())
        .spawn(body)
        .map(drop)
}

/// How long a connection past the cap waits for connections whose peers already left to be
/// reaped before it is refused (after a burst, their threads may not have run yet).
const CAP_GRACE: Duration = Duration::from_millis(200);

/// How long the acceptor waits for finished connections to be reaped before it closes one past
/// the hard limit. Longer than [`CAP_GRACE`]: this close gives no reason, and only a flood of
/// live connections meets it (whose extra connections wait in the listen queue meanwhile).
const HARD_GRACE: Duration = Duration::from_secs(1);

/// Whether the connections counted in `active` (this one included) are more than `cap`, once
/// finished ones had [`CAP_GRACE`] to leave.
pub(crate) fn over_cap(active: &AtomicUsize, cap: usize) -> bool {
    over_cap_within(active, cap, CAP_GRACE)
}

/// [`over_cap`] with its own grace.
fn over_cap_within(active: &AtomicUsize, cap: usize, grace: Duration) -> bool {
    let until = std::time::Instant::now() + grace;
    while active.load(Ordering::SeqCst) > cap && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    active.load(Ordering::SeqCst) > cap
}

/// Where the hub sends a connection's replies: its queue, and the bell of a connection whose
/// thread waits on its socket and its replies at once.
pub struct Outlet {
    tx: Sender<Reply>,
    bell: Option<Arc<bell::Bell>>,
}

impl Outlet {
    /// Queue a reply (and ring). False if the queue is full: the connection does not read its
    /// replies. (A connection already gone takes nothing and is not full.)
    fn send(&self, reply: Reply) -> bool {
        match self.tx.try_send(reply) {
            Ok(()) => {
                if let Some(b) = &self.bell {
                    b.ring();
                }
                true
            }
            Err(crossbeam::channel::TrySendError::Full(_)) => false,
            Err(crossbeam::channel::TrySendError::Disconnected(_)) => true,
        }
    }

    /// Replies queued and not yet taken.
    fn pending(&self) -> bool {
        !self.tx.is_empty()
    }

    /// The hub lets go of the connection: its queue closes, and a thread waiting on the bell
    /// wakes to find it closed.
    fn close(self) {
        let Outlet { tx, bell } = self;
        drop(tx);
        if let Some(b) = bell {
            b.ring();
        }
    }
}

/// What connection threads tell the hub.
pub enum HubIn {
    Open {
        conn: ConnId,
        outlet: Outlet,
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
