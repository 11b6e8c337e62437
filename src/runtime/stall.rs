//! Stall warnings: a task that runs for long in one step (a poll that does not return: a Rust
//! loop, a Python pass computing without awaiting) is reported to its job's clients once it
//! has run [`Stall::after`], and again each time that long again passes. The worker's transport
//! thread asks on every tick; a task suspended on its children is not running and is never
//! reported.

use crate::sched::TaskKey;
use std::time::{Duration, Instant};

/// `--stall-warning`'s default.
pub const DEFAULT_AFTER: Duration = Duration::from_secs(300);

/// The warnings given for the poll running now.
#[derive(Debug)]
pub struct Stall {
    after: Option<Duration>,
    /// The poll warned about (its task and start) and how many warnings it got.
    warned: Option<(TaskKey, Instant, u32)>,
}

impl Stall {
    pub fn new(after: Option<Duration>) -> Stall {
        Stall {
            after,
            warned: None,
        }
    }

    /// The poll of `key` that began at `since` is still running: the warning's text (without
    /// the task's name), when one is due.
    pub fn check(&mut self, key: TaskKey, since: Instant) -> Option<String> {
        self.check_at(key, since, Instant::now())
    }

    fn check_at(&mut self, key: TaskKey, since: Instant, now: Instant) -> Option<String> {
        let after = self.after?;
        let sent = match self.warned {
            Some((k, s, n)) if k == key && s == since => n,
            _ => 0,
        };
        let ran = now.saturating_duration_since(since);
        if ran < after * (sent + 1) {
            return None;
        }
        self.warned = Some((key, since, sent + 1));
        Some(format!(
            "has run for {:.0} s without yielding (a warning only: it goes on; --stall-warning {} s)",
            ran.as_secs_f64(),
            after.as_secs_f64()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_poll_is_reported_once_per_period_and_a_new_poll_starts_afresh() {
        let mut s = Stall::new(Some(Duration::from_secs(10)));
        let t0 = Instant::now();
        let k = TaskKey(1);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(s.check_at(k, t0, at(9)), None);
        assert!(s
            .check_at(k, t0, at(10))
            .is_some_and(|t| t.contains("10 s")));
        assert_eq!(s.check_at(k, t0, at(15)), None, "once per period");
        assert!(s.check_at(k, t0, at(20)).is_some());
        let t1 = at(21);
        assert_eq!(
            s.check_at(k, t1, at(22)),
            None,
            "the next poll of the task starts afresh"
        );
        assert!(s.check_at(TaskKey(2), t1, at(31)).is_some());
        let mut off = Stall::new(None);
        assert_eq!(off.check_at(k, t0, at(1 << 20)), None);
    }
}
