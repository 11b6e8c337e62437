//! SIGINT and SIGTERM as a flag the loops poll.
//!
//! Launchers forward these signals to every rank. Rank 0 then stops the runtime in order (the
//! gateway tells its clients, the batch runner cancels its job) and sends `Shutdown` down the
//! tree; any other rank that saw the signal but gets no `Shutdown` within [`GRACE`] stops by
//! itself, so a signal always ends every rank.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long a non-server rank waits for the server's shutdown after a signal.
pub const GRACE: Duration = Duration::from_millis(1000);

fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Install the handlers (idempotent).
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

/// True once SIGINT or SIGTERM arrived.
pub fn requested() -> bool {
    flag().load(Ordering::Relaxed)
}

/// The flag itself (for code that wants an `Arc<AtomicBool>`).
pub fn shared() -> Arc<AtomicBool> {
    Arc::clone(flag())
}

/// Set the flag as a signal would (tests, and internal stop requests).
pub fn request() {
    flag().store(true, Ordering::Relaxed);
}
