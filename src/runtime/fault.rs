//! Fault injection for the tests of the failure paths (cargo feature `fault`, which the test
//! and bench builds turn on; a release build has no fault injection and ignores `BQRT_FAULT`).
//!
//! `BQRT_FAULT=stall@RANK`: rank RANK stops before node discovery, as a rank that never arrives
//! would. `BQRT_FAULT=panic@RANK+MS`: rank RANK panics in runtime code (not in a task) MS
//! milliseconds after start; with the binary's panic hook that aborts the process, as any
//! runtime bug would.

#[cfg(feature = "fault")]
mod on {
    /// Fault injection for the start-up watchdog's tests: `BQRT_FAULT=stall@RANK` makes rank RANK
    /// stop before node discovery, as a rank that never arrives would.
    pub(crate) fn stall_if_asked(rank: u32) {
        let Ok(spec) = std::env::var("BQRT_FAULT") else {
            return;
        };
        if spec
            .strip_prefix("stall@")
            .and_then(|r| r.parse::<u32>().ok())
            == Some(rank)
        {
            loop {
                std::thread::park();
            }
        }
    }

    /// Fault injection for tests of the failure paths: `BQRT_FAULT=panic@RANK+MS` makes rank RANK
    /// panic in runtime code (not in a task) MS milliseconds after start. With the binary's panic
    /// hook that aborts the process, as any runtime bug would.
    pub(crate) fn inject(rank: u32) {
        let Ok(spec) = std::env::var("BQRT_FAULT") else {
            return;
        };
        let parsed = spec
            .strip_prefix("panic@")
            .and_then(|rest| rest.split_once('+'))
            .and_then(|(r, ms)| Some((r.parse::<u32>().ok()?, ms.parse::<u64>().ok()?)));
        match parsed {
            Some((r, ms)) if r == rank => {
                let _ = std::thread::Builder::new()
                    .name("bqrt-fault".into())
                    .spawn(move || {
                        std::thread::sleep(std::time::Duration::from_millis(ms));
                        panic!("injected fault (BQRT_FAULT={spec})");
                    });
            }
            Some(_) => {}
            None if spec.starts_with("stall@") => {}
            None => crate::eline!(
                "bqrt: BQRT_FAULT={spec} ignored: expected panic@RANK+MS or stall@RANK"
            ),
        }
    }
}

#[cfg(feature = "fault")]
pub(super) use on::{inject, stall_if_asked};

#[cfg(not(feature = "fault"))]
pub(super) fn stall_if_asked(_rank: u32) {}

#[cfg(not(feature = "fault"))]
pub(super) fn inject(_rank: u32) {}
