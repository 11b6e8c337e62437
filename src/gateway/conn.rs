//! One client connection: protocol detection, authentication, a reader and a writer thread.
//!
//! The reader turns frames into hub requests; the writer sends the hub's replies. A bad frame,
//! a stalled half frame, a wrong token or an unknown protocol ends this connection only, with a
//! reply naming the problem where the protocol allows one.

use super::frame::{self, Limits, Prefix, ReadError};
use super::{over_cap, peer, Admission, ConnId, GatewayConfig, HubIn, Outlet, RESERVE};
use crate::protocol::native::{self, write_frame, Reply, Request, CLIENT_VERSION, MAGIC};
use crossbeam::channel::{bounded, Receiver, Sender};
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Replies a slow client may have pending before it is disconnected.
const WRITE_QUEUE: usize = 4096;

pub(super) struct Conn {
    pub id: ConnId,
    pub stream: TcpStream,
    pub cfg: Arc<GatewayConfig>,
    pub hub: Sender<HubIn>,
    pub active: Arc<AtomicUsize>,
    pub workers: u32,
}

impl Conn {
    pub fn run(self) {
        let active = Arc::clone(&self.active);
        self.serve();
        active.fetch_sub(1, Ordering::SeqCst);
    }

    fn serve(self) {
        let peer = self
            .stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        let Some(mut stream) = self.handshake(&peer) else {
            return;
        };
        if !self.authenticate(&mut stream, &peer) {
            return;
        }
        let Some(tx) = self.start_writer(&stream) else {
            return;
        };
        let outlet = Outlet { tx, bell: None };
        if self
            .hub
            .send(HubIn::Open {
                conn: self.id,
                outlet,
            })
            .is_err()
        {
            return;
        }
        self.read_requests(&mut stream);
        let _ = self.hub.send(HubIn::Closed { conn: self.id });
    }

    /// Read the protocol header. A native client gets the server's header back and the stream;
    /// another protocol's connection is served by it here; anything else is told so and closed.
    fn handshake(&self, peer: &str) -> Option<TcpStream> {
        let mut stream = self.stream.try_clone().ok()?;
        let _ = stream.set_nodelay(true);
        let mut head = [0u8; 5];
        if let Err(e) = frame::read_exact(&mut stream, &mut head, self.cfg.handshake_timeout) {
            log::debug!(target: "bqrt::gateway", "{peer}: no protocol header ({e}); closed");
            return None;
        }
        if &head[..4] != MAGIC {
            if let Some(foreign) = self.cfg.foreign.as_ref().filter(|f| f.accepts(&head)) {
                let refuse = over_cap(&self.active, self.cfg.max_connections).then(|| {
                    format!(
                        "bqrt: too many connections (limit {}); retry later, or ask the runtime's owner to raise --max-connections",
                        self.cfg.max_connections
                    )
                });
                let admit = Admission {
                    refuse,
                    budget: Arc::clone(&self.cfg.budget),
                    frame_timeout: self.cfg.frame_timeout,
                    idle_timeout: self.cfg.idle_timeout,
                };
                let link = super::Link {
                    id: self.id,
                    hub: self.hub.clone(),
                    opened: false,
                };
                foreign.serve(stream, head, link, &admit);
                return None;
            }
            let msg = "bqrt: unrecognised protocol on this port (expected the bqrt client protocol); connection closed\n";
            let _ = stream.write_all(msg.as_bytes());
            let _ = stream.shutdown(Shutdown::Both);
            log::info!(target: "bqrt::gateway", "{peer}: unrecognised protocol; closed");
            return None;
        }
        let mut hello = MAGIC.to_vec();
        hello.push(CLIENT_VERSION);
        stream.write_all(&hello).ok()?;
        if head[4] != CLIENT_VERSION {
            refuse(&mut stream, peer, format!("client protocol version {} is not supported (this server speaks {CLIENT_VERSION}); use a matching bqrt client", head[4]));
            return None;
        }
        Some(stream)
    }

    /// The connection cap (with the native reserve), the same-user check if on, then the first
    /// frame within the handshake time: `Hello` with the token.
    fn authenticate(&self, stream: &mut TcpStream, peer: &str) -> bool {
        if over_cap(&self.active, self.cfg.max_connections + RESERVE) {
            let reason = format!(
                "too many connections (limit {}, and {RESERVE} more for clients with the token); retry later or raise --max-connections",
                self.cfg.max_connections
            );
            refuse(stream, peer, reason);
            return false;
        }
        if self.cfg.same_user {
            if let Err(reason) = same_user(stream) {
                refuse(stream, peer, reason);
                return false;
            }
        }
        let limits = Limits {
            max: self.cfg.max_frame,
            deadline: self.cfg.frame_timeout,
            poll: Some(self.cfg.handshake_timeout),
        };
        let reason = match read_request(stream, limits, &self.cfg) {
            Ok(Some(Request::Hello { token, .. })) if constant_time_eq(token.as_bytes(), self.cfg.token.as_bytes()) => return true,
            Ok(Some(Request::Hello { .. })) => "wrong token: read it from the token file the server printed at start (or pass --token-file / BQRT_TOKEN)".to_string(),
            Ok(Some(_)) => "the first request must be Hello with the server's token".to_string(),
            Ok(None) => return false,
            Err(Bad::Read(ReadError::Idle)) => format!(
                "no Hello within {:?} of connecting; closing",
                self.cfg.handshake_timeout
            ),
            Err(e) => describe(&e),
        };
        refuse(stream, peer, reason);
        false
    }

    /// The writer thread, with `Welcome` queued first; the hub's replies go to the returned queue.
    fn start_writer(&self, stream: &TcpStream) -> Option<Sender<Reply>> {
        let write_half = stream.try_clone().ok()?;
        let (tx, rx) = bounded::<Reply>(WRITE_QUEUE);
        let welcome = Reply::Welcome {
            server: format!("bqrt {}", env!("CARGO_PKG_VERSION")),
            workers: self.workers,
        };
        tx.send(welcome).ok()?;
        std::thread::Builder::new()
            .name(format!("bqrt-gw-w{}", self.id.0))
            .spawn(move || write_loop(write_half, rx))
            .ok()?;
        Some(tx)
    }

    /// Frames to hub requests until the client says goodbye, goes away or breaks the protocol.
    fn read_requests(&self, stream: &mut TcpStream) {
        let limits = Limits {
            max: self.cfg.max_frame,
            deadline: self.cfg.frame_timeout,
            poll: Some(self.cfg.frame_timeout),
        };
        loop {
            let req = match read_request(stream, limits, &self.cfg) {
                Ok(Some(Request::Bye)) | Ok(None) => return,
                // a second Hello is answered by the hub (without the token)
                Ok(Some(Request::Hello { .. })) => Request::Hello {
                    token: String::new(),
                    client: String::new(),
                },
                Ok(Some(req)) => req,
                Err(Bad::Read(ReadError::Idle)) => continue,
                Err(e) => {
                    let reason = describe(&e);
                    let _ = self.hub.send(HubIn::Fatal {
                        conn: self.id,
                        reason,
                    });
                    return;
                }
            };
            if self
                .hub
                .send(HubIn::Request { conn: self.id, req })
                .is_err()
            {
                return;
            }
        }
    }
}

/// Tell the client why it is refused, then close.
fn refuse(stream: &mut TcpStream, peer: &str, reason: String) {
    log::info!(target: "bqrt::gateway", "{peer}: refused: {reason}");
    let _ = write_frame(stream, &native::encode(&Reply::Refused { reason }));
    let _ = stream.shutdown(Shutdown::Both);
}

/// Why a request could not be read.
enum Bad {
    Read(ReadError),
    Decode(native::FrameError),
}

fn read_request(
    stream: &mut TcpStream,
    limits: Limits,
    cfg: &GatewayConfig,
) -> Result<Option<Request>, Bad> {
    match frame::read(stream, Prefix::Little, limits, &cfg.budget, &[]).map_err(Bad::Read)? {
        None => Ok(None),
        Some(bytes) => native::decode(&bytes).map(Some).map_err(Bad::Decode),
    }
}

fn describe(e: &Bad) -> String {
    match e {
        Bad::Read(e) => format!("{e}; closing"),
        Bad::Decode(e) => format!("{e}; closing"),
    }
}

/// The same-user check on a connection: loopback, and the peer socket owned by this user.
pub fn same_user(stream: &TcpStream) -> Result<(), String> {
    let (Ok(local), Ok(remote)) = (stream.local_addr(), stream.peer_addr()) else {
        return Err("cannot read the connection's addresses".into());
    };
    if !remote.ip().to_canonical().is_loopback() {
        return Err(format!(
            "this server serves only its own user's processes on this machine, and {remote} is not on loopback"
        ));
    }
    let me = peer::my_uid();
    match peer::owner_uid(local, remote) {
        Ok(Some(uid)) if uid == me => Ok(()),
        Ok(Some(uid)) => Err(format!(
            "this server serves only its own user (uid {me}); the connecting process runs as uid {uid}"
        )),
        Ok(None) => Err("the connecting socket's owner could not be found in /proc/net/tcp; refused".into()),
        Err(e) => Err(format!("cannot read /proc/net/tcp to check the connecting user: {e}; refused")),
    }
}

fn write_loop(mut stream: TcpStream, rx: Receiver<Reply>) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    while let Ok(reply) = rx.recv() {
        let last = matches!(reply, Reply::Refused { .. } | Reply::Shutdown { .. });
        if write_frame(&mut stream, &native::encode(&reply)).is_err() || last {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
