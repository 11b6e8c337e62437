//! Logging: task records go to the job's owner, runtime records to this rank's stderr.
//!
//! A task logs with the `log` crate as usual. While a task is being polled, a record whose
//! target is not the runtime's own (`bqrt::...`) is offered to the task's [`TaskSink`] (the
//! executor registers one around each poll), which forwards it to the server if the job's level
//! and depth limit let it through. Everything else goes to `env_logger` (filtered by
//! `RUST_LOG`, default `warn`).

use std::cell::RefCell;
use std::rc::Rc;

/// Where the log records of the task being polled on this thread go.
pub(crate) trait TaskSink {
    /// Take a record; false if it cannot be taken now (it is then logged locally).
    fn log(&self, level: u8, target: &str, message: String) -> bool;
}

thread_local! {
    static TASK: RefCell<Option<Rc<dyn TaskSink>>> = const { RefCell::new(None) };
}

/// Records logged on this thread go to `sink` until [`leave_task`].
pub(crate) fn enter_task(sink: Rc<dyn TaskSink>) {
    TASK.with(|t| *t.borrow_mut() = Some(sink));
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
                let Some(sink) = t.as_ref() else {
                    return false;
                };
                let msg = record.args().to_string();
                sink.log(level_number(record.level()), record.target(), msg)
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

/// `eprintln!` as one whole line: [`eprint_line`] of the formatted text (Rust's `eprintln!`
/// writes its pieces one by one, so lines from ranks sharing a launcher's stderr interleave).
#[macro_export]
macro_rules! eline {
    ($($arg:tt)*) => {
        $crate::logging::eprint_line(&::std::format!($($arg)*))
    };
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
