//! Doorbells: a rank asleep in its idle back-off wakes at once when a rank of its own node
//! sends it a packet, instead of at its next poll (up to [`super::MAX_SLEEP`] later after a long
//! idle period: measured, the first job after a second of quiet waited 50 ms per hop).
//!
//! Each rank binds a Unix datagram socket in the abstract namespace, named by the runtime's key
//! and its rank; a thread blocks on it and turns each ring into a wake of the transport loop's
//! idle wait. A sender rings a peer of its node after a send when it sent that peer nothing for
//! [`QUIET`]: a rank keeps spinning for [`super::SPIN`] after its last activity, so a peer that
//! got a packet from us less than `QUIET` ago is still awake, and a busy exchange rings never.
//! Ranks on other nodes are not rung (their packets are seen at the next poll). A doorbell that
//! cannot be opened leaves the rank polling as before.

use crate::protocol::Rank;
use crossbeam::channel::{bounded, Receiver};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// A peer that had a packet from this rank less recently than this is rung.
pub const QUIET: Duration = Duration::from_micros(150);

/// This rank's side: the peers it may ring.
pub struct Doorbell {
    out: UnixDatagram,
    /// What the bell's thread sends the transport loop at a ring.
    wake: crossbeam::channel::Sender<()>,
    /// Per rank: the peer's address if it shares this node, and when it last had a packet.
    peers: Vec<Option<(SocketAddr, Option<Instant>)>>,
}

fn name(key: &str, rank: Rank) -> String {
    format!("{key}-{}", rank.0)
}

impl Doorbell {
    /// Bind `me`'s bell (`key` names the runtime) and start the thread that turns rings into
    /// wakes; `mates`: every rank of this node. Returns the doorbell and the wakes.
    pub fn open(
        key: &str,
        me: Rank,
        mates: &[Rank],
        ranks: u32,
    ) -> io::Result<(Doorbell, Receiver<()>)> {
        let addr = SocketAddr::from_abstract_name(name(key, me).as_bytes())?;
        let bell = UnixDatagram::bind_addr(&addr)?;
        let out = UnixDatagram::unbound()?;
        out.set_nonblocking(true)?;
        let mut peers: Vec<Option<(SocketAddr, Option<Instant>)>> = vec![None; ranks as usize];
        for &m in mates.iter().filter(|&&m| m != me) {
            if let Some(slot) = peers.get_mut(m.0 as usize) {
                *slot = Some((
                    SocketAddr::from_abstract_name(name(key, m).as_bytes())?,
                    None,
                ));
            }
        }
        let (tx, rx) = bounded::<()>(1);
        let wake = tx.clone();
        std::thread::Builder::new()
            .name("bqrt-doorbell".into())
            .spawn(move || {
                let mut buf = [0u8; 16];
                // ends with the process (or when the transport loop is gone)
                while bell.recv(&mut buf).is_ok() {
                    if let Err(crossbeam::channel::TrySendError::Disconnected(_)) = tx.try_send(())
                    {
                        break;
                    }
                }
            })?;
        Ok((Doorbell { out, wake, peers }, rx))
    }

    /// A function that wakes this rank's own transport loop, as a ring from a mate does: for a
    /// thread of this rank that needs the loop awake at once.
    pub fn waker(&self) -> impl Fn() + Send + 'static {
        let wake = self.wake.clone();
        move || {
            // a full channel means a wake is pending already
            let _ = wake.try_send(());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_from_a_mate_wakes_the_rank() {
        let key = format!("bqrt-test-{}", std::process::id());
        let mates = [Rank(0), Rank(1)];
        let (mut a, _wa) = Doorbell::open(&key, Rank(0), &mates, 3).unwrap();
        let (_b, wb) = Doorbell::open(&key, Rank(1), &mates, 3).unwrap();
        a.sent(Rank(1));
        assert!(
            wb.recv_timeout(Duration::from_secs(5)).is_ok(),
            "the mate woke"
        );
        a.sent(Rank(2)); // on another node: never rung, nothing fails
        assert!(
            Doorbell::open(&key, Rank(0), &mates, 3).is_err(),
            "one bell per rank and key"
        );
    }

    #[test]
    fn quick_sends_do_not_ring_and_other_nodes_are_never_rung() {
        let key = format!("bqrt-test-quiet-{}", std::process::id());
        let (mut a, _wa) = Doorbell::open(&key, Rank(0), &[Rank(0), Rank(1)], 3).unwrap();
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
