//! Doorbells: a rank asleep in its idle back-off wakes at once when a rank of its own node
//! sends it a packet, or a thread of its own process hands its loop an event, instead of at its
//! next poll (up to [`super::MAX_SLEEP`] later after a long idle period: measured, the first job
//! after a second of quiet waited 50 ms per hop).
//!
//! Each rank binds a Unix datagram socket in the abstract namespace, named by the runtime's key
//! and its rank: its [`Bell`]. The transport loop sleeps on that socket itself (`ppoll`), so a
//! ring wakes the one thread that acts on it (a thread in between cost a second wake-up per hop,
//! ~40 us on a virtual machine whose idle cores halt; decision 58). A sender rings a peer of its
//! node after a send when it sent that peer nothing for [`QUIET`]: a rank keeps spinning for
//! [`super::SPIN`] after its last activity, so a peer that got a packet from us less than
//! `QUIET` ago is still awake, and a busy exchange rings never. Ranks on other nodes are not rung
//! (their packets are seen at the next poll). A thread of the rank's own process that hands the
//! loop an event rings through a [`Waker`], only while the loop sleeps. A doorbell that cannot
//! be opened leaves the rank polling as before.

use crate::protocol::Rank;
use std::io;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A peer that had a packet from this rank less recently than this is rung.
pub const QUIET: Duration = Duration::from_micros(150);

/// This rank's side: the peers it may ring, and its own bell.
pub struct Doorbell {
    /// The socket rings go out from (shared with this rank's wakers).
    out: Arc<UnixDatagram>,
    /// None when this rank's bell could not be bound: it then polls, and still rings its mates.
    bell: Option<Arc<Bell>>,
    /// Per rank: the peer's address if it shares this node, and when it last had a packet.
    peers: Vec<Option<(SocketAddr, Option<Instant>)>>,
}

/// The socket a rank's transport loop sleeps on, and whether it sleeps.
pub struct Bell {
    socket: UnixDatagram,
    addr: SocketAddr,
    sleeping: AtomicBool,
    /// Every rank of the runtime shares this node, so every packet to this rank rings it.
    covers_all: bool,
}

/// What a thread of this rank calls after handing the transport loop an event: rings the bell
/// if the loop sleeps (cheap otherwise: one atomic load).
#[derive(Clone)]
pub struct Waker {
    bell: Arc<Bell>,
    out: Arc<UnixDatagram>,
}

fn name(key: &str, rank: Rank) -> String {
    format!("{key}-{}", rank.0)
}

impl Doorbell {
    /// Bind `me`'s bell (`key` names the runtime); `mates`: every rank of this node. An error
    /// means this rank cannot ring its mates either; a bell that cannot be bound only leaves
    /// this rank without one (it polls), because its mates may sleep until they are rung.
    pub fn open(key: &str, me: Rank, mates: &[Rank], ranks: u32) -> io::Result<Doorbell> {
        let out = UnixDatagram::unbound()?;
        out.set_nonblocking(true)?;
        let out = Arc::new(out);
        let mut peers: Vec<Option<(SocketAddr, Option<Instant>)>> = vec![None; ranks as usize];
        for &m in mates.iter().filter(|&&m| m != me) {
            if let Some(slot) = peers.get_mut(m.0 as usize) {
                *slot = Some((
                    SocketAddr::from_abstract_name(name(key, m).as_bytes())?,
                    None,
                ));
            }
        }
        let covers_all = (0..ranks).all(|r| mates.contains(&Rank(r)));
        let bind = || -> io::Result<Bell> {
            let addr = SocketAddr::from_abstract_name(name(key, me).as_bytes())?;
            let socket = UnixDatagram::bind_addr(&addr)?;
            socket.set_nonblocking(true)?;
            Ok(Bell {
                socket,
                addr,
                sleeping: AtomicBool::new(false),
                covers_all,
            })
        };
        let bell = match bind() {
            Ok(b) => Some(Arc::new(b)),
            Err(e) => {
                log::debug!(target: "bqrt::transport", "{me}: no doorbell of its own ({e}); polling");
                None
            }
        };
        Ok(Doorbell { out, bell, peers })
    }

    /// This rank's bell, for its transport loop to sleep on (None: it polls).
    pub fn bell(&self) -> Option<Arc<Bell>> {
        self.bell.clone()
    }

    /// A waker of this rank's own loop, for a thread of this rank (None without a bell).
    pub fn waker(&self) -> Option<Waker> {
        Some(Waker {
            bell: Arc::clone(self.bell.as_ref()?),
            out: Arc::clone(&self.out),
        })
    }

    /// A packet went to `to`: ring it if it shares this node and may be asleep.
    pub fn sent(&mut self, to: Rank) {
        if self.due(to, Instant::now()) {
            if let Some(Some((addr, _))) = self.peers.get(to.0 as usize) {
                // a full socket buffer means rings are pending already
                let _ = self.out.send_to_addr(&[1], addr);
            }
        }
    }

    /// Whether a packet to `to` at `now` rings it: it shares this node and had no packet from
    /// this rank for [`QUIET`].
    fn due(&mut self, to: Rank, now: Instant) -> bool {
        let Some(Some((_, last))) = self.peers.get_mut(to.0 as usize) else {
            return false;
        };
        let ring = last.is_none_or(|t| now.duration_since(t) >= QUIET);
        *last = Some(now);
        ring
    }
}

impl Bell {
    /// Whether every rank of the runtime rings this one when it sends it a packet (they all
    /// share its node): the loop then need not wake to look for packets on its own.
    pub fn covers_all(&self) -> bool {
        self.covers_all
    }

    /// Sleep until the bell rings or `timeout` passes, unless `ready` (asked after this bell
    /// says it sleeps, so that a waker that handed over an event before then is seen here, and
    /// one after it rings). Returns whether it rang; rings that piled up are taken.
    pub fn sleep(&self, timeout: Duration, ready: impl Fn() -> bool) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let mut rang = false;
        if !ready() {
            let mut pfd = libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ts = libc::timespec {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            // SAFETY: one valid pollfd, a valid timespec, no signal mask
            let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
            rang = n > 0;
        }
        self.sleeping.store(false, Ordering::SeqCst);
        let mut buf = [0u8; 16];
        while self.socket.recv(&mut buf).is_ok() {
            rang = true;
        }
        rang
    }
}

impl Waker {
    /// Ring this rank's bell if its loop sleeps (call after handing it the event).
    pub fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.bell.sleeping.load(Ordering::SeqCst) {
            // a full socket buffer means rings are pending already
            let _ = self.out.send_to_addr(&[1], &self.bell.addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_from_a_mate_wakes_the_rank() {
        let key = format!("bqrt-test-{}", std::process::id());
        let mates = [Rank(0), Rank(1)];
        let mut a = Doorbell::open(&key, Rank(0), &mates, 3).unwrap();
        let b = Doorbell::open(&key, Rank(1), &mates, 3).unwrap();
        let bell = b.bell().unwrap();
        a.sent(Rank(1));
        let t0 = Instant::now();
        assert!(
            bell.sleep(Duration::from_secs(5), || false),
            "the mate woke"
        );
        assert!(t0.elapsed() < Duration::from_secs(5), "at the ring");
        assert!(!bell.covers_all(), "rank 2 is on another node");
        let c = Doorbell::open(&format!("{key}-one"), Rank(0), &[Rank(0), Rank(1)], 2).unwrap();
        assert!(c.bell().unwrap().covers_all(), "every rank on this node");
        a.sent(Rank(2)); // on another node: never rung, nothing fails
        let mut again = Doorbell::open(&key, Rank(0), &mates, 3).unwrap();
        assert!(again.bell().is_none(), "one bell per rank and key");
        assert!(again.waker().is_none());
        again.sent(Rank(1)); // without a bell of its own, it still rings its mates
        assert!(
            bell.sleep(Duration::from_secs(5), || false),
            "rung by a rank without a bell"
        );
    }

    #[test]
    fn a_waker_rings_a_sleeping_loop_and_not_an_awake_one() {
        let key = format!("bqrt-test-waker-{}", std::process::id());
        let a = Doorbell::open(&key, Rank(0), &[Rank(0)], 1).unwrap();
        let bell = a.bell().unwrap();
        let waker = a.waker().unwrap();
        waker.wake(); // the loop is awake: no ring
        assert!(
            !bell.sleep(Duration::from_millis(1), || false),
            "nothing rang while the loop was awake"
        );
        let handed = Arc::new(AtomicBool::new(false));
        let (h, w) = (Arc::clone(&handed), waker.clone());
        let t = std::thread::spawn(move || {
            // hand over once the loop sleeps
            while !w.bell.sleeping.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            h.store(true, Ordering::SeqCst);
            w.wake();
        });
        let t0 = Instant::now();
        let rang = bell.sleep(Duration::from_secs(5), || handed.load(Ordering::SeqCst));
        assert!(
            rang || handed.load(Ordering::SeqCst),
            "the loop saw the event or its ring"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "woken, not timed out"
        );
        t.join().unwrap();
        let t1 = Instant::now();
        bell.sleep(Duration::from_secs(5), || handed.load(Ordering::SeqCst));
        assert!(
            t1.elapsed() < Duration::from_secs(4),
            "an event already there is seen without sleeping"
        );
    }

    #[test]
    fn quick_sends_do_not_ring_and_other_nodes_are_never_rung() {
        let key = format!("bqrt-test-quiet-{}", std::process::id());
        let mut a = Doorbell::open(&key, Rank(0), &[Rank(0), Rank(1)], 3).unwrap();
        let t0 = Instant::now();
        assert!(a.due(Rank(1), t0), "the first packet rings");
        assert!(
            !a.due(Rank(1), t0 + QUIET / 2),
            "a busy exchange does not ring"
        );
        assert!(
            a.due(Rank(1), t0 + QUIET / 2 + QUIET),
            "a packet after a quiet spell rings"
        );
        assert!(!a.due(Rank(2), t0), "another node's rank");
        assert!(!a.due(Rank(0), t0), "itself");
        assert!(!a.due(Rank(9), t0), "no such rank");
    }
}
