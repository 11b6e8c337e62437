//! The client commands: talk to a running server over the native protocol.

use super::{Conn, ConnOnly, JobArgs, ResultArgs, SubmitArgs, TopArgs};
use crate::client::{Client, ClientError, WatchEvent};
use crate::logging;
use crate::protocol::native::{JobResult, JobState, JobStatus, TopView};
use crate::protocol::{JobId, LogRecord, LogSpec};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn connect(c: &Conn) -> Result<Client, ClientError> {
    let token = crate::client::find_token(&c.server, c.token_file.as_deref())?;
    Client::connect(&c.server, Some(token))
}

/// A client error's exit status: 2 for what the user typed (bad JSON, a bad address), 3 for
/// the connection or the server.
fn failed(e: &ClientError) -> ExitCode {
    crate::eline!("bqrt: {e}");
    match e {
        ClientError::Json(_) | ClientError::Address { .. } => ExitCode::from(2),
        _ => ExitCode::from(3),
    }
}

/// Exit statuses of the client commands, by the job's end.
fn state_code(s: JobState) -> ExitCode {
    ExitCode::from(match s {
        JobState::Done | JobState::Queued | JobState::Running => 0,
        JobState::Failed => 1,
        JobState::Cancelled => 4,
        JobState::Unknown => 5,
    })
}

pub(crate) fn print_log(r: &LogRecord) {
    let ctx: Vec<String> = r.context.iter().map(|(k, v)| format!("{k}={v}")).collect();
    crate::eline!(
        "[{} {} depth={} rank={}{}] {}: {}",
        logging::level_from_number(r.level),
        r.task,
        r.depth,
        r.rank.0,
        if ctx.is_empty() {
            String::new()
        } else {
            format!(" {}", ctx.join(" "))
        },
        r.target,
        r.message
    );
}

pub(super) fn submit(a: SubmitArgs) -> ExitCode {
    let json = a.args.clone().unwrap_or_else(|| "null".into());
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&json) {
        return failed(&ClientError::Json(e.to_string()));
    }
    let log = LogSpec {
        level: a.log_level.number(),
        max_depth: a.log_depth,
    };
    match connect(&a.conn).and_then(|mut c| c.submit(&a.task, &json, log, true)) {
        Ok(job) => {
            println!("{}", job.0);
            ExitCode::SUCCESS
        }
        Err(e) => failed(&e),
    }
}

fn status_line(job: JobId, s: &JobStatus) -> String {
    let mut line = format!(
        "{job} {} spawned={} finished={}",
        s.state, s.spawned, s.finished
    );
    if !s.note.is_empty() {
        line.push_str(&format!(" ({})", s.note));
    }
    line
}

pub(super) fn status(a: JobArgs) -> ExitCode {
    let job = JobId(a.job);
    match connect(&a.conn).and_then(|mut c| c.status(job)) {
        Ok(s) => {
            println!("{}", status_line(job, &s));
            state_code(s.state)
        }
        Err(e) => failed(&e),
    }
}

/// Print a result: JSON on stdout when done, the reason on stderr otherwise.
pub(super) fn print_result(job: JobId, r: &JobResult) -> ExitCode {
    match r {
        JobResult::Done { value, .. } => {
            println!("{}", String::from_utf8_lossy(value));
            ExitCode::SUCCESS
        }
        JobResult::Failed(f) => {
            crate::eline!("bqrt: {job} failed: {f}");
            ExitCode::from(1)
        }
        JobResult::Cancelled => {
            crate::eline!("bqrt: {job} was cancelled");
            ExitCode::from(4)
        }
        JobResult::Unknown(note) => {
            crate::eline!("bqrt: {note}");
            ExitCode::from(5)
        }
        JobResult::Pending => {
            crate::eline!("bqrt: {job} has not finished within the timeout; it goes on (ask again with `bqrt result {}`)", job.0);
            ExitCode::from(124)
        }
    }
}

pub(super) fn result(a: ResultArgs) -> ExitCode {
    let job = JobId(a.job);
    if let Some(t) = a.timeout {
        if !(t >= 0.0 && t.is_finite()) {
            crate::eline!("bqrt: --timeout {t}: must be a number of seconds >= 0");
            return ExitCode::from(2);
        }
    }
    let timeout = a.timeout.map(Duration::from_secs_f64);
    match connect(&a.conn).and_then(|mut c| {
        let r = c.result(job, timeout)?;
        for (_, rec) in c.take_logs() {
            print_log(&rec);
        }
        Ok(r)
    }) {
        Ok(r) => print_result(job, &r),
        Err(e) => failed(&e),
    }
}

pub(super) fn cancel(a: JobArgs) -> ExitCode {
    let job = JobId(a.job);
    match connect(&a.conn).and_then(|mut c| c.cancel(job)) {
        Ok((true, note)) => {
            println!("{job} cancelled: {note}");
            ExitCode::SUCCESS
        }
        Ok((false, note)) => {
            println!("{job} not cancelled: {note}");
            ExitCode::from(1)
        }
        Err(e) => failed(&e),
    }
}

fn bar(s: &JobStatus, width: usize) -> String {
    let frac = if s.spawned == 0 {
        0.0
    } else {
        s.finished as f64 / s.spawned as f64
    };
    let filled = ((frac * width as f64).round() as usize).min(width);
    format!(
        "[{}{}] {:>3.0}% {}/{} tasks {}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        frac * 100.0,
        s.finished,
        s.spawned,
        s.state
    )
}

pub(super) fn watch(a: JobArgs) -> ExitCode {
    let job = JobId(a.job);
    let tty = std::io::stdout().is_terminal();
    let mut last = None;
    let r = connect(&a.conn).and_then(|mut c| {
        c.watch(job, |ev| match ev {
            WatchEvent::Log(r) => {
                if tty {
                    print!("\r\x1b[2K");
                }
                print_log(r);
            }
            WatchEvent::Progress(s) => {
                let line = bar(s, 30);
                let mut out = std::io::stdout().lock();
                if tty {
                    let _ = write!(out, "\r\x1b[2K{job} {line}");
                } else if last.as_ref() != Some(&line) {
                    let _ = writeln!(out, "{job} {line}");
                }
                let _ = out.flush();
                last = Some(line);
            }
        })
    });
    if tty {
        println!();
    }
    match r {
        Ok(s) => {
            println!("{}", status_line(job, &s));
            state_code(s.state)
        }
        Err(e) => failed(&e),
    }
}

fn render_top(server: &str, t: &TopView, rate: Option<f64>) -> String {
    let busy = t.workers.saturating_sub(t.idle);
    let mut s = format!(
        "bqrt top  {server}\nworkers {} (busy {busy}, idle {})  queued {}  jobs {}  clients {}  throughput {}\n",
        t.workers,
        t.idle,
        t.queued,
        t.active_jobs,
        t.clients,
        rate.map(|r| format!("{r:.0} tasks/s")).unwrap_or_else(|| "-".into())
    );
    s.push_str(&format!(
        "{:<14} {:>8} {:>6} {:>6}\n",
        "branch", "workers", "busy", "idle"
    ));
    for g in &t.branches {
        s.push_str(&format!(
            "{:<14} {:>8} {:>6} {:>6}\n",
            format!("rank {}", g.rank),
            g.workers,
            g.workers.saturating_sub(g.idle),
            g.idle
        ));
    }
    if !t.groups.is_empty() {
        s.push_str(&format!(
            "{:<6} {:<14} {:>8} {:>6}  offers\n",
            "node", "group", "workers", "cores"
        ));
        for g in &t.groups {
            s.push_str(&format!(
                "{:<6} {:<14} {:>8} {:>6}  {}\n",
                g.node,
                g.name,
                g.workers,
                g.cores,
                if g.offers.is_empty() { "-" } else { &g.offers }
            ));
        }
    }
    s
}

pub(super) fn top(a: TopArgs) -> ExitCode {
    if !(a.interval > 0.0 && a.interval.is_finite()) {
        crate::eline!(
            "bqrt: --interval {}: must be a positive number of seconds",
            a.interval
        );
        return ExitCode::from(2);
    }
    let mut c = match connect(&a.conn) {
        Ok(c) => c,
        Err(e) => return failed(&e),
    };
    let tty = std::io::stdout().is_terminal() && !a.once;
    let mut prev: Option<(Instant, u64)> = None;
    loop {
        let t = match c.top() {
            Ok(t) => t,
            Err(e) => return failed(&e),
        };
        let now = Instant::now();
        let rate = prev.map(|(at, n)| {
            (t.finished_tasks.saturating_sub(n)) as f64
                / now.duration_since(at).as_secs_f64().max(1e-9)
        });
        let first = prev.is_none();
        prev = Some((now, t.finished_tasks));
        if !(a.once && first) {
            let text = render_top(&a.conn.server, &t, rate);
            let mut out = std::io::stdout().lock();
            if tty {
                let _ = write!(out, "\x1b[H\x1b[2J{text}");
            } else {
                let _ = write!(out, "{text}");
            }
            let _ = out.flush();
            if a.once {
                return ExitCode::SUCCESS;
            }
        }
        std::thread::sleep(Duration::from_secs_f64(a.interval));
    }
}

pub(super) fn shutdown(a: ConnOnly) -> ExitCode {
    match connect(&a.conn).and_then(|mut c| c.shutdown()) {
        Ok(reason) => {
            println!("stopping: {reason}");
            ExitCode::SUCCESS
        }
        Err(e) => failed(&e),
    }
}
