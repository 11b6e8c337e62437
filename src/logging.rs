//! Logging: task records go to the job's owner, runtime records to this rank's stderr.
//!
//! A task logs with the `log` crate as usual. While a task is being polled, a record whose
//! target is not the runtime's own (`bqrt::...`) is offered to the worker core, which forwards it
//! to the server if the job's level and depth limit let it through. Everything else goes to
//! `env_logger` (filtered by `RUST_LOG`, default `warn`).

use crate::core::TaskKey;
use crate::executor::Shared;
use std::cell::RefCell;
use std::rc::Rc;

thread_local! {
    static TASK: RefCell<Option<(Rc<Shared>, TaskKey)>> = const { RefCell::new(None) };
}

pub(crate) fn enter_task(shared: &Rc<Shared>, key: TaskKey) {
    TASK.with(|t| *t.borrow_mut() = Some((Rc::clone(shared), key)));
}

pub(crate) fn leave_task() {
    TASK.with(|t| *t.borrow_mut() = None);
}

/// `log` level as the wire number (1 = error .. 5 = trace).
pub fn level_number(l: log::Level) -> u8 {
    l as usize as u8
}

/// Wire number back to a `log` level.
pub fn level_from_number(n: u8) -> log::Level {
    match n {
        0 | 1 => log::Level::Error,
        2 => log::Level::Warn,
        3 => log::Level::Info,
        4 => log::Level::Debug,
        _ => log::Level::Trace,
    }
}

struct Logger {
    local: env_logger::Logger,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.local.enabled(metadata) || TASK.with(|t| t.borrow().is_some())
    }

    fn log(&self, record: &log::Record) {
        let forwarded = !record.target().starts_with("bqrt")
            && TASK.with(|t| {
                let t = t.borrow();
                let Some((shared, key)) = t.as_ref() else {
                    return false;
                };
                let (Ok(mut core), Ok(mut out)) =
                    (shared.core.try_borrow_mut(), shared.out.try_borrow_mut())
                else {
                    return false;
                };
                let msg = record.args().to_string();
                core.log(
                    *key,
                    level_number(record.level()),
                    record.target(),
                    msg,
                    &mut out,
                );
                true
            });
        if !forwarded && self.local.enabled(record.metadata()) {
            self.local.log(record);
        }
    }

    fn flush(&self) {
        self.local.flush();
    }
}

/// Install the logger (once per process; later calls do nothing).
pub fn init() {
    let local =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).build();
    if log::set_boxed_logger(Box::new(Logger { local })).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

/// Write one whole line to stderr in a single write, so lines from ranks sharing the launcher's
/// stderr do not interleave mid-line.
pub fn eprint_line(line: &str) {
    use std::io::Write;
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    let _ = std::io::stderr().write_all(buf.as_bytes());
}
