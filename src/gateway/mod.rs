//! The gateway: rank 0's TCP front door for clients.
//!
//! An acceptor thread takes connections (at most `max_connections` at once; more are refused
//! with a reason) and gives each a connection thread ([`conn`]). Connections send requests to
//! the [`hub`], which runs on the rank's client thread: it feeds them to the job table
//! (`crate::jobs`, owned by the server handle) and routes the table's replies and the server's
//! events (results, logs, progress) to the connections that own or watch each job.

mod conn;
mod hub;

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
            max_frame: crate::protocol::native::MAX_FRAME,
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

/// Serve clients until `stop` is set (or a client asks the runtime to stop, or a rank is
/// lost); then tell every client why and return the error, if the runtime is failing.
pub fn serve(
    listener: TcpListener,
    cfg: GatewayConfig,
    handle: &mut ServerHandle,
    stop: Arc<AtomicBool>,
    reason: &str,
) -> Option<String> {
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

/// The acceptor thread: each connection gets its own thread; past the cap it is refused there.
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
            let over_cap = over_cap(&active, cfg.max_connections);
            let c = conn::Conn {
                id: ConnId(next),
                stream,
                cfg: Arc::clone(&cfg),
                hub: hub.clone(),
                active: Arc::clone(&active),
                over_cap,
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

/// Whether the connections counted in `active` (this one included) are more than `cap`, once
/// finished ones had [`CAP_GRACE`] to leave.
fn over_cap(active: &AtomicUsize, cap: usize) -> bool {
    let until = std::time::Instant::now() + CAP_GRACE;
    while active.load(Ordering::SeqCst) > cap && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    active.load(Ordering::SeqCst) > cap
}

/// What connection threads tell the hub.
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
