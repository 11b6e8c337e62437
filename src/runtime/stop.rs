//! The stop policy: how a runtime ends, in one place, with one set of named timers.
//!
//! # Ways a runtime ends
//! * **In order** (a job of `bqrt run` ended, `bqrt shutdown`, or a stop signal): rank 0's client
//!   side (the gateway or the batch runner) tells its clients, then the server sends
//!   `Down::Shutdown` down the tree; every rank finishes its sends (at most [`FLUSH`]), leaves
//!   its loop and finalizes MPI (at most [`FINALIZE`]).
//! * **A stop signal** (SIGINT/SIGTERM, which launchers forward to every rank) sets a flag that
//!   every loop polls ([`requested`]). Rank 0's client side first listens [`SETTLE`] for a
//!   lost-rank report (a launcher signals every rank when one dies, and clients should learn
//!   about the death, not the signal), then stops in order. A rank other than the server that
//!   saw the signal but got no shutdown within [`GRACE`] stops by itself; the server stops the
//!   tree itself if its client side has not done so within [`SERVER_GRACE`]. So a signal always
//!   ends every rank. A SIGCONT that reaches a running rank counts as a stop signal: it is how
//!   launchers announce a teardown (see [`install_continue`]).
//! * **A lost rank** (its process died, or it sent no sign of life, due every [`heartbeat`],
//!   for `--stuck-after`, default [`STUCK_AFTER`]; the watchers check every [`WATCH_EVERY`]): the
//!   server tells its clients first, then stops every live rank directly (the tree may be
//!   broken) with the error; it leaves its loop by itself after [`LOST_DEADLINE`] if its client
//!   side has not stopped it by then.
//!
//! The gateway gives connection writers [`NOTICE`] to deliver the stop notice to clients. A
//! worker whose executor is inside a long computation is not waited for longer than
//! [`EXECUTOR_JOIN`]: its thread ends with the process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long a rank other than the server waits for the server's shutdown after a signal.
pub const GRACE: Duration = Duration::from_millis(1000);
/// How long the server waits for its client side to stop the runtime after a signal.
pub const SERVER_GRACE: Duration = Duration::from_millis(3000);
/// After a signal, how long rank 0's client side listens for a lost-rank report.
pub const SETTLE: Duration = Duration::from_millis(600);
/// How long the gateway lets connection writers deliver the stop notice.
pub const NOTICE: Duration = Duration::from_millis(500);
/// After a lost rank, how long the server waits for its client side before leaving its loop.
pub const LOST_DEADLINE: Duration = Duration::from_millis(3000);
/// How long a stopping rank keeps trying to complete its sends.
pub const FLUSH: Duration = Duration::from_millis(2000);
/// Longest wait for `MPI_Finalize` (it blocks while a launcher aborts the job) before the rank
/// exits anyway with its own status.
pub const FINALIZE: Duration = Duration::from_millis(1500);
/// The same when the launcher announced a teardown (see [`install_continue`]).
pub const FINALIZE_TEARDOWN: Duration = Duration::from_millis(200);
/// How often the watchers check their ranks (and the loops run their periodic work).
pub const WATCH_EVERY: Duration = Duration::from_millis(100);
/// How often every rank sends its watcher a sign of life: a sixth of the stuck time, between
/// half a second and five seconds (an idle runtime stays nearly silent; a short stuck time is
/// still met).
pub fn heartbeat(stuck_after: Duration) -> Duration {
    (stuck_after / 6).clamp(Duration::from_millis(500), Duration::from_secs(5))
}
/// Default of `--stuck-after`: a rank silent this long is lost. Well above any pause of a live
/// process (garbage collection, page-in, a loaded node), and 6 heartbeats.
pub const STUCK_AFTER: Duration = Duration::from_secs(30);
/// Without a launcher: how long the relaunching parent waits, after forwarding a stop signal,
/// before it kills the ranks.
pub const RELAUNCH_KILL: Duration = Duration::from_secs(10);
/// How long a stopping worker waits for its executor thread.
pub const EXECUTOR_JOIN: Duration = Duration::from_millis(100);

fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Install the SIGINT and SIGTERM handlers (idempotent).
pub fn install() -> std::io::Result<()> {
    static DONE: OnceLock<()> = OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(flag()))?;
    }
    let _ = DONE.set(());
    Ok(())
}

/// Take a SIGCONT that reaches a running rank as a stop signal (idempotent). Called after
/// `MPI_Init`, which may install handlers of its own.
pub fn install_continue() -> std::io::Result<()> {
    static DONE: OnceLock<()> = OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let continued = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGCONT, Arc::clone(&continued))?;
    std::thread::Builder::new()
        .name("bqrt-sigcont".into())
        .spawn(move || watch_continue(&continued))?;
    let _ = DONE.set(());
    Ok(())
}

/// Set when the stop came from a launcher's teardown (a SIGCONT to a running rank).
static TEARDOWN: AtomicBool = AtomicBool::new(false);

/// The bound on `MPI_Finalize` for this stop: [`FINALIZE`], or [`FINALIZE_TEARDOWN`] when the
/// launcher is tearing the job down (Open MPI's `mpirun` then never completes it, and kills
/// what is left a second after its SIGTERM).
pub fn finalize_bound() -> Duration {
    match TEARDOWN.load(Ordering::Relaxed) {
        true => FINALIZE_TEARDOWN,
        false => FINALIZE,
    }
}

/// How often the SIGCONT watch wakes, and the longest gap between two of its wakes that still
/// means the process was running (not stopped) when a SIGCONT came.
const CONTINUE_TICK: Duration = Duration::from_millis(100);
const CONTINUE_RUNNING: Duration = Duration::from_millis(400);

/// Launchers announce a teardown with SIGCONT before SIGTERM (Open MPI's `mpirun`, signalled
/// itself, sends SIGCONT at once and SIGTERM only a second later; SLURM sends both together), so
/// that stopped processes can handle the SIGTERM. A SIGCONT that reaches a rank that was
/// running is such an announcement, and stops the runtime as a stop signal does; one that ends
/// a stop (job control, a debugger, `scontrol suspend`) is not: this thread, stopped with the
/// process, then sees a gap since its last wake far longer than its tick.
fn watch_continue(continued: &AtomicBool) {
    let mut last = std::time::Instant::now();
    loop {
        std::thread::sleep(CONTINUE_TICK);
        let now = std::time::Instant::now();
        let running = now.duration_since(last) < CONTINUE_RUNNING;
        last = now;
        if continued.swap(false, Ordering::Relaxed) && running {
            TEARDOWN.store(true, Ordering::Relaxed);
            request();
        }
    }
}

/// True once SIGINT or SIGTERM arrived.
pub fn requested() -> bool {
    flag().load(Ordering::Relaxed)
}

/// The flag itself (for loops that take it as an argument).
pub fn shared() -> Arc<AtomicBool> {
    Arc::clone(flag())
}

/// Set the flag as a signal would (tests, and internal stop requests).
pub fn request() {
    flag().store(true, Ordering::Relaxed);
}
