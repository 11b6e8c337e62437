//! One client connection: protocol detection, authentication, a reader and a writer thread.
//!
//! The reader turns frames into hub requests; the writer sends the hub's replies. A bad frame,
//! a stalled half frame, a wrong token or an unknown protocol ends this connection only, with a
//! reply naming the problem where the protocol allows one.

use super::{ConnId, GatewayConfig, HubIn};
use crate::protocol::native::{
    self, read_frame, write_frame, FrameError, Reply, Request, CLIENT_VERSION, MAGIC,
};
use crossbeam::channel::{bounded, Receiver, Sender};
use std::io::{Read, Write};
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
    pub over_cap: bool,
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
        let mut stream = self.stream;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(self.cfg.handshake_timeout));
        let mut head = [0u8; 5];
        if let Err(e) = stream.read_exact(&mut head) {
            log::debug!(target: "bqrt::gateway", "{peer}: no protocol header ({e}); closed");
            return;
        }
        if &head[..4] != MAGIC {
            if let Some(foreign) = self.cfg.foreign.as_ref().filter(|f| f.accepts(&head)) {
                let _ = stream.set_read_timeout(None);
                let link = super::Link {
                    id: self.id,
                    hub: self.hub.clone(),
                    opened: false,
                };
                foreign.serve(stream, head, link);
                return;
            }
            let msg = "bqrt: unrecognised protocol on this port (expected the bqrt client protocol); connection closed\n";
            let _ = stream.write_all(msg.as_bytes());
            let _ = stream.shutdown(Shutdown::Both);
            log::info!(target: "bqrt::gateway", "{peer}: unrecognised protocol; closed");
            return;
        }
        let mut hello = MAGIC.to_vec();
        hello.push(CLIENT_VERSION);
        if stream.write_all(&hello).is_err() {
            return;
        }
        let refuse = |stream: &mut TcpStream, reason: String| {
            log::info!(target: "bqrt::gateway", "{peer}: refused: {reason}");
            let _ = write_frame(stream, &native::encode(&Reply::Refused { reason }));
            let _ = stream.shutdown(Shutdown::Both);
        };
        if head[4] != CLIENT_VERSION {
            refuse(&mut stream, format!("client protocol version {} is not supported (this server speaks {CLIENT_VERSION}); use a matching bqrt client", head[4]));
            return;
        }
        if self.over_cap {
            refuse(
                &mut stream,
                format!(
                    "too many connections (limit {}); retry later or raise --max-connections",
                    self.cfg.max_connections
                ),
            );
            return;
        }
        let _ = stream.set_read_timeout(Some(self.cfg.frame_timeout));
        // authentication: the first frame is Hello with the token
        match read_request(&mut stream, self.cfg.max_frame) {
            Ok(Some(Request::Hello { token, .. })) if constant_time_eq(token.as_bytes(), self.cfg.token.as_bytes()) => {}
            Ok(Some(Request::Hello { .. })) => {
                return refuse(&mut stream, "wrong token: read it from the token file the server printed at start (or pass --token-file / BQRT_TOKEN)".into())
            }
            Ok(Some(_)) => return refuse(&mut stream, "the first request must be Hello with the server's token".into()),
            Ok(None) => return,
            Err(e) => return refuse(&mut stream, describe(&e, &self.cfg)),
        }
        let Ok(write_half) = stream.try_clone() else {
            return;
        };
        let (tx, rx) = bounded::<Reply>(WRITE_QUEUE);
        if tx
            .send(Reply::Welcome {
                server: format!("bqrt {}", env!("CARGO_PKG_VERSION")),
                workers: self.workers,
            })
            .is_err()
        {
            return;
        }
        let writer = std::thread::Builder::new()
            .name(format!("bqrt-gw-w{}", self.id.0))
            .spawn(move || write_loop(write_half, rx));
        if writer.is_err() {
            return;
        }
        if self.hub.send(HubIn::Open { conn: self.id, tx }).is_err() {
            return;
        }
        loop {
            match read_request(&mut stream, self.cfg.max_frame) {
                Ok(Some(Request::Bye)) | Ok(None) => break,
                Ok(Some(Request::Hello { .. })) => {
                    let _ = self.hub.send(HubIn::Request {
                        conn: self.id,
                        req: Request::Hello {
                            token: String::new(),
                            client: String::new(),
                        },
                    });
                }
                Ok(Some(req)) => {
                    if self
                        .hub
                        .send(HubIn::Request { conn: self.id, req })
                        .is_err()
                    {
                        break;
                    }
                }
                Err(FrameError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    let _ = self.hub.send(HubIn::Fatal {
                        conn: self.id,
                        reason: describe(&e, &self.cfg),
                    });
                    break;
                }
            }
        }
        let _ = self.hub.send(HubIn::Closed { conn: self.id });
    }
}

fn read_request(stream: &mut TcpStream, max: usize) -> Result<Option<Request>, FrameError> {
    match read_frame(stream, max)? {
        None => Ok(None),
        Some(bytes) => native::decode(&bytes).map(Some),
    }
}

fn describe(e: &FrameError, cfg: &GatewayConfig) -> String {
    match e {
        FrameError::Stalled => format!(
            "a frame stalled half-way for {:?}; closing",
            cfg.frame_timeout
        ),
        FrameError::TooLarge { len, max } => {
            format!("frame of {len} bytes is over the {max}-byte limit; closing")
        }
        other => format!("{other}; closing"),
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
