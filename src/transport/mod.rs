//! Moving packets between ranks, kept apart from scheduling.
//!
//! A [`Fabric`] sends and receives packets (bytes) between ranks: [`mpi::MpiFabric`] under a
//! launcher, [`local::LocalFabric`] for an in-process cluster. [`drive`] is the one progress
//! loop per rank: it receives packets, decodes them, hands each message to the rank's
//! [`Logic`], groups what the logic wants sent by destination (one packet per destination per
//! turn) and sends it.
//!
//! # Idle policy
//! A turn that moved nothing counts as idle. The loop spins (yielding the core) for
//! [`SPIN`] after the last activity, so a busy rank answers in microseconds. Then it sleeps,
//! each sleep a twentieth of the time since the last activity (at least 20 us, at most
//! [`MAX_SLEEP`]): a packet that arrives after an idle gap waits at most ~5% of that gap, and a
//! rank idle for long polls 20 times a second (a poll of Open MPI costs tens of microseconds
//! here, see docs/performance.md). Local events (a worker's executor, a client) wake the sleep at
//! once because the sleep is a wait on their channel; packets from other ranks are seen at the
//! next turn.

pub mod local;
pub mod mpi;

use crate::core::Outbox;
use crate::protocol::{codec, Msg, Rank};
use crossbeam::channel::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long a rank keeps spinning after its last activity.
pub const SPIN: Duration = Duration::from_micros(200);
/// Longest sleep of an idle rank (the worst added latency for the first packet after a long
/// idle period).
pub const MAX_SLEEP: Duration = Duration::from_millis(50);
/// Shortest sleep, and the divisor of the idle time that sets the sleep.
const MIN_SLEEP: Duration = Duration::from_micros(20);
const SLEEP_FRACTION: u32 = 20;
/// How long a stopping rank keeps trying to complete its sends.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("{rank}: packet from {from}: {source}")]
    Codec {
        rank: Rank,
        from: Rank,
        source: codec::CodecError,
    },
}

/// Point-to-point packets between ranks.
pub trait Fabric {
    fn rank(&self) -> Rank;
    fn size(&self) -> u32;
    /// Start sending a packet; it is owned by the fabric until sent.
    fn send(&mut self, to: Rank, packet: Vec<u8>);
    /// A received packet, if any.
    fn try_recv(&mut self) -> Option<(Rank, Vec<u8>)>;
    /// Advance pending sends; true if some are still pending.
    fn progress(&mut self) -> bool;
}

/// Continue or stop the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// A rank's behaviour, driven by [`drive`].
pub trait Logic {
    /// Events from threads of this process (executor, clients).
    type Local;
    fn on_message(&mut self, from: Rank, msg: Msg, out: &mut Outbox) -> Flow;
    fn on_local(&mut self, event: Self::Local, out: &mut Outbox) -> Flow;
    /// Called about every [`crate::runtime::liveness::TICK`], and at once when a stop signal
    /// arrives (liveness checks).
    fn on_tick(&mut self, _out: &mut Outbox) -> Flow {
        Flow::Continue
    }
    /// A stop signal arrived `waited` ago and the loop is still running. By default a rank stops
    /// by itself after [`crate::runtime::signals::GRACE`] (the server's shutdown did not come).
    fn on_signal(&mut self, waited: Duration, _out: &mut Outbox) -> Flow {
        if waited >= crate::runtime::signals::GRACE {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }
}

/// Group messages by destination, keeping order per destination, and send one packet each.
pub fn send_grouped<F: Fabric>(fabric: &mut F, out: &mut Outbox) {
    if out.is_empty() {
        return;
    }
    if out.len() == 1 {
        if let Some((to, msg)) = out.pop() {
            fabric.send(to, codec::encode(std::slice::from_ref(&msg)));
        }
        return;
    }
    let mut dests: Vec<Rank> = Vec::new();
    let mut groups: Vec<Vec<Msg>> = Vec::new();
    for (to, msg) in out.drain(..) {
        match dests.iter().position(|&d| d == to) {
            Some(i) => groups[i].push(msg),
            None => {
                dests.push(to);
                groups.push(vec![msg]);
            }
        }
    }
    for (to, msgs) in dests.into_iter().zip(groups) {
        fabric.send(to, codec::encode(&msgs));
    }
}

/// Run a rank until its logic says stop, then finish sending (bounded by [`FLUSH_TIMEOUT`]).
pub fn drive<F: Fabric, L: Logic>(
    fabric: &mut F,
    logic: &mut L,
    local: &Receiver<L::Local>,
) -> Result<(), TransportError> {
    let mut out = Outbox::new();
    let mut last_active = Instant::now();
    let me = fabric.rank();
    let mut signalled: Option<Instant> = None;
    let mut last_tick = Instant::now();
    loop {
        let mut active = false;
        let mut stop = false;
        let first_signal = signalled.is_none() && crate::runtime::signals::requested();
        if first_signal || last_tick.elapsed() >= crate::runtime::liveness::TICK {
            last_tick = Instant::now();
            if logic.on_tick(&mut out) == Flow::Stop {
                stop = true;
            }
        }
        if crate::runtime::signals::requested() {
            let since = *signalled.get_or_insert_with(Instant::now);
            if logic.on_signal(since.elapsed(), &mut out) == Flow::Stop {
                stop = true;
            }
        }
        for _ in 0..256 {
            let Some((from, bytes)) = fabric.try_recv() else {
                break;
            };
            active = true;
            let msgs = codec::decode(&bytes).map_err(|source| TransportError::Codec {
                rank: me,
                from,
                source,
            })?;
            for m in msgs {
                if logic.on_message(from, m, &mut out) == Flow::Stop {
                    stop = true;
                }
            }
        }
        while let Ok(ev) = local.try_recv() {
            active = true;
            if logic.on_local(ev, &mut out) == Flow::Stop {
                stop = true;
            }
        }
        if !out.is_empty() {
            active = true;
            send_grouped(fabric, &mut out);
        }
        let pending = fabric.progress();
        if stop {
            let deadline = Instant::now() + FLUSH_TIMEOUT;
            while fabric.progress() && Instant::now() < deadline {
                std::thread::yield_now();
            }
            return Ok(());
        }
        if active || pending {
            last_active = Instant::now();
            continue;
        }
        if last_active.elapsed() < SPIN {
            std::thread::yield_now();
            continue;
        }
        let sleep = (last_active.elapsed() / SLEEP_FRACTION).clamp(MIN_SLEEP, MAX_SLEEP);
        match local.recv_timeout(sleep) {
            Ok(ev) => {
                last_active = Instant::now();
                if logic.on_local(ev, &mut out) == Flow::Stop {
                    send_grouped(fabric, &mut out);
                    let deadline = Instant::now() + FLUSH_TIMEOUT;
                    while fabric.progress() && Instant::now() < deadline {
                        std::thread::yield_now();
                    }
                    return Ok(());
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(sleep),
        }
    }
}
