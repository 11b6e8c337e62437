//! Moving packets between ranks, kept apart from scheduling.
//!
//! A [`Fabric`] sends and receives packets (bytes) between ranks: [`mpi::MpiFabric`] under a
//! launcher, [`local::LocalFabric`] for an in-process cluster. [`drive`] is the one progress
//! loop per rank: it receives packets, decodes them, hands each message to the rank's
//! [`Logic`], groups what the logic wants sent by destination (one packet per destination per
//! turn) and sends it.
//!
//! # Idle policy
//! A turn that moved nothing (or only signs of life, `Peer::Alive`) counts as idle. The loop spins (yielding the core) for
//! [`SPIN`] after the last activity, so a busy rank answers in microseconds. Then it sleeps,
//! each sleep a twentieth of the time since the last activity (at least 20 us, at most
//! [`MAX_SLEEP`]): a packet that arrives after an idle gap waits at most ~5% of that gap, and a
//! rank idle for long polls 20 times a second (a poll of Open MPI costs tens of microseconds
//! here, see docs/performance.md). A rank whose every peer shares its node, so that every packet
//! to it rings its doorbell, sleeps [`MAX_SLEEP`] at once. Local events (a worker's executor, a
//! client) wake the sleep at once: with a [`doorbell`], the sleep is a wait on the rank's bell,
//! which ranks of the same node ring when they send it a packet and the rank's own threads ring
//! when they hand it an event ([`LocalSender`]); without one, a wait on the local channel.
//! Packets from other nodes are seen at the next turn.

pub mod doorbell;
pub mod local;
pub mod mpi;

use crate::protocol::{codec, Msg, Outbox, Rank};
use crossbeam::channel::{Receiver, RecvTimeoutError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    /// The bell the idle wait sleeps on: a ring means a packet was sent here or a local event
    /// was handed over ([`doorbell`]). None: the wait sleeps on the local channel, and packets
    /// are seen at the next poll.
    fn bell(&self) -> Option<Arc<doorbell::Bell>> {
        None
    }

    /// What a thread of this rank rings after handing the loop a local event (None: the loop
    /// sleeps on the local channel itself).
    fn waker(&self) -> Option<doorbell::Waker> {
        None
    }
}

/// The sending side of a rank's local channel (events from its own threads to its transport
/// loop): hands over the event, then rings the rank's bell if the loop sleeps on it.
pub struct LocalSender<T> {
    tx: crossbeam::channel::Sender<T>,
    wake: Option<doorbell::Waker>,
}

impl<T> Clone for LocalSender<T> {
    fn clone(&self) -> Self {
        LocalSender {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        }
    }
}

impl<T> LocalSender<T> {
    /// Hand `event` to the loop (an error: the loop is gone).
    pub fn send(&self, event: T) -> Result<(), crossbeam::channel::SendError<T>> {
        self.tx.send(event)?;
        if let Some(w) = &self.wake {
            w.wake();
        }
        Ok(())
    }
}

/// A rank's local channel; `wake` is its fabric's [`Fabric::waker`].
pub fn local_channel<T>(wake: Option<doorbell::Waker>) -> (LocalSender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam::channel::unbounded();
    (LocalSender { tx, wake }, rx)
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
    /// The messages of one packet, in order (a logic that can take them together overrides
    /// this; the default hands them to [`Logic::on_message`] one by one, up to a stop).
    fn on_messages(&mut self, from: Rank, msgs: Vec<Msg>, out: &mut Outbox) -> Flow {
        let mut flow = Flow::Continue;
        for m in msgs {
            flow = worse(flow, self.on_message(from, m, out));
        }
        flow
    }
    fn on_local(&mut self, event: Self::Local, out: &mut Outbox) -> Flow;
    /// Called about every [`Pace::tick`], and at once when the stop flag is first seen set.
    fn on_tick(&mut self, _out: &mut Outbox) -> Flow {
        Flow::Continue
    }
    /// The stop flag was set `waited` ago and the loop is still running: the logic decides
    /// when to give up waiting for an orderly shutdown.
    fn on_signal(&mut self, _waited: Duration, _out: &mut Outbox) -> Flow {
        Flow::Continue
    }
}

/// The loop's timers, chosen by the caller (the stop policy lives above the transport).
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// How often [`Logic::on_tick`] runs.
    pub tick: Duration,
    /// How long a stopping rank keeps trying to complete its sends.
    pub flush: Duration,
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

/// Run a rank until its logic says stop, then finish sending (bounded by [`Pace::flush`]).
/// `stop` is the stop flag (a signal arrived); the logic hears of it through
/// [`Logic::on_signal`].
pub fn drive<F: Fabric, L: Logic>(
    fabric: &mut F,
    logic: &mut L,
    local: &Receiver<L::Local>,
    stop: &AtomicBool,
    pace: Pace,
) -> Result<(), TransportError> {
    let mut out = Outbox::new();
    let mut clock = Clock::new();
    let bell = fabric.bell();
    loop {
        // local events first: what the executor sent before a step began is handled before the
        // tick sees that step (a worker's tick sends a long step's log records)
        let mut flow = Flow::Continue;
        let mut active = take_local(logic, local, &mut out, &mut flow);
        flow = worse(flow, clock.periodic(logic, stop, pace, &mut out));
        active |= receive(fabric, logic, &mut out, &mut flow)?;
        active |= take_local(logic, local, &mut out, &mut flow);
        active |= out.iter().any(|(_, m)| !quiet(m));
        send_grouped(fabric, &mut out);
        let pending = fabric.progress();
        if flow == Flow::Stop {
            break;
        }
        if active || pending {
            clock.last_active = Instant::now();
            continue;
        }
        if let Some(ev) = clock.idle(local, bell.as_deref()) {
            clock.last_active = Instant::now();
            if logic.on_local(ev, &mut out) == Flow::Stop {
                send_grouped(fabric, &mut out);
                break;
            }
        }
    }
    flush(fabric, pace.flush);
    Ok(())
}

/// Hand the logic every local event waiting; whether there was one.
fn take_local<L: Logic>(
    logic: &mut L,
    local: &Receiver<L::Local>,
    out: &mut Outbox,
    flow: &mut Flow,
) -> bool {
    let mut any = false;
    while let Ok(ev) = local.try_recv() {
        any = true;
        *flow = worse(*flow, logic.on_local(ev, out));
    }
    any
}

/// A sign of life (`Peer::Alive`) is not activity: it does not put an idle rank back into fast
/// polling (a poll of Open MPI costs tens of microseconds, and every rank sends them).
fn quiet(m: &Msg) -> bool {
    matches!(m, Msg::Peer(crate::protocol::Peer::Alive))
}

fn worse(a: Flow, b: Flow) -> Flow {
    if a == Flow::Stop || b == Flow::Stop {
        Flow::Stop
    } else {
        Flow::Continue
    }
}

/// Receive up to 256 packets and hand their messages to the logic.
fn receive<F: Fabric, L: Logic>(
    fabric: &mut F,
    logic: &mut L,
    out: &mut Outbox,
    flow: &mut Flow,
) -> Result<bool, TransportError> {
    let me = fabric.rank();
    let mut active = false;
    for _ in 0..256 {
        let Some((from, bytes)) = fabric.try_recv() else {
            break;
        };
        let msgs = codec::decode(&bytes).map_err(|source| TransportError::Codec {
            rank: me,
            from,
            source,
        })?;
        active |= !msgs.iter().all(quiet);
        *flow = worse(*flow, logic.on_messages(from, msgs, out));
    }
    Ok(active)
}

/// Keep completing sends until none is pending or `limit` passed.
fn flush<F: Fabric>(fabric: &mut F, limit: Duration) {
    let deadline = Instant::now() + limit;
    while fabric.progress() && Instant::now() < deadline {
        std::thread::yield_now();
    }
}

/// Set by a thread of this process that needs the logic's tick in the loop's next turn (a
/// watcher's witness that saw a watched process end); it wakes the loop itself.
static TICK_NOW: AtomicBool = AtomicBool::new(false);

/// Ask for the logic's tick in the loop's next turn.
pub fn tick_now() {
    TICK_NOW.store(true, Ordering::Relaxed);
}

/// Whether a tick was asked for since the last call.
pub(crate) fn take_tick_now() -> bool {
    TICK_NOW.swap(false, Ordering::Relaxed)
}

/// The loop's sense of time: periodic ticks, the stop flag, and idle back-off.
struct Clock {
    last_active: Instant,
    /// `None` until the first tick, which runs in the loop's first turn (a watcher's first beat
    /// opens its link to the server before anything can be lost; see `liveness::Heartbeat`).
    last_tick: Option<Instant>,
    signalled: Option<Instant>,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            last_active: Instant::now(),
            last_tick: None,
            signalled: None,
        }
    }

    /// Run the logic's tick when due (in the first turn, and at once when the stop flag is first
    /// seen), and tell it how long ago the stop flag was set.
    fn periodic<L: Logic>(
        &mut self,
        logic: &mut L,
        stop: &AtomicBool,
        pace: Pace,
        out: &mut Outbox,
    ) -> Flow {
        let stopping = stop.load(Ordering::Relaxed);
        let mut flow = Flow::Continue;
        let due = self.last_tick.is_none_or(|t| t.elapsed() >= pace.tick) || take_tick_now();
        if (stopping && self.signalled.is_none()) || due {
            self.last_tick = Some(Instant::now());
            flow = logic.on_tick(out);
        }
        if stopping {
            let since = *self.signalled.get_or_insert_with(Instant::now);
            flow = worse(flow, logic.on_signal(since.elapsed(), out));
        }
        flow
    }

    /// Nothing moved this turn: spin a little, then sleep on the bell, or on the local channel
    /// without one (see the module documentation). Returns a local event that arrived meanwhile.
    fn idle<T>(&mut self, local: &Receiver<T>, bell: Option<&doorbell::Bell>) -> Option<T> {
        if self.last_active.elapsed() < SPIN {
            std::thread::yield_now();
            return None;
        }
        let sleep = match bell {
            // every packet rings: the sleep only bounds how late a tick or the stop flag is seen
            Some(b) if b.covers_all() => MAX_SLEEP,
            _ => (self.last_active.elapsed() / SLEEP_FRACTION).clamp(MIN_SLEEP, MAX_SLEEP),
        };
        if let Some(bell) = bell {
            // a ring is activity: the packet may take a few polls to show (Open MPI's TCP
            // path), so spin again rather than sleep as long as before
            if bell.sleep(sleep, || !local.is_empty()) {
                self.last_active = Instant::now();
            }
            return local.try_recv().ok();
        }
        match local.recv_timeout(sleep) {
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(sleep);
                None
            }
        }
    }
}
