//! The command line: `bqrt run`, `bqrt tasks`.
//!
//! Every rank parses the same arguments and validates them before MPI starts, so bad input
//! stops every rank the same way instead of leaving some waiting for others.

use crate::logging;
use crate::protocol::LogSpec;
use crate::runtime::{run_mpi, MpiOptions, Outcome, ServerHandle};
use crate::task::Registry;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "bqrt",
    version,
    about = "Nested-task runtime for compile-time parallelism on MPI clusters"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one job and exit: `mpirun -n N bqrt run TASK [ARGS_JSON]`. The result is printed as
    /// JSON on the last line of stdout; a failed job exits with status 1.
    Run(RunArgs),
    /// List the tasks this binary can run.
    Tasks,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Task to run (see `bqrt tasks`).
    task: String,
    /// Its argument as JSON (default: null).
    args: Option<String>,
    #[command(flatten)]
    common: Common,
    /// Forward task log records at this level and above to stderr.
    #[arg(long, value_enum, default_value_t = Level::Warn)]
    log_level: Level,
    /// Forward logs only from tasks at most this deep (the root task is depth 0).
    #[arg(long)]
    log_depth: Option<u32>,
    /// Give up and stop the runtime after this many seconds.
    #[arg(long)]
    timeout: Option<u64>,
}

#[derive(clap::Args, Debug, Clone)]
struct Common {
    /// Most employees per manager in the manager tree (>= 2).
    #[arg(long, default_value_t = 16, env = "BQRT_FANOUT")]
    fanout: u32,
    /// Seed of placement tie-breaks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one `bqrt-stats` line per rank on stderr at exit (tasks, queue peak, memory peak),
    /// and the job's wall time.
    #[arg(long)]
    stats: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    fn number(self) -> u8 {
        match self {
            Level::Off => 0,
            Level::Error => 1,
            Level::Warn => 2,
            Level::Info => 3,
            Level::Debug => 4,
            Level::Trace => 5,
        }
    }
}

/// Entry point of the `bqrt` binary, and of any binary a library user builds with their own
/// tasks.
pub fn main(registry: Registry) -> ExitCode {
    logging::init();
    crate::executor::install_panic_hook();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Tasks => {
            for name in registry.names() {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        Cmd::Run(args) => run(registry, args),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("bqrt: {msg}");
    ExitCode::from(2)
}

fn run(registry: Registry, args: RunArgs) -> ExitCode {
    if !registry.contains(&args.task) {
        let known: Vec<&str> = registry.names().collect();
        return fail(&format!(
            "no task named '{}'; this binary knows: {}",
            args.task,
            known.join(", ")
        ));
    }
    let json = args.args.clone().unwrap_or_else(|| "null".into());
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&json) {
        return fail(&format!("ARGS_JSON '{json}' is not valid JSON ({e}); quote it for the shell, e.g. '20' or '\"text\"'"));
    }
    if args.common.fanout < 2 {
        return fail(&format!(
            "--fanout {}: must be at least 2",
            args.common.fanout
        ));
    }
    let log = LogSpec {
        level: args.log_level.number(),
        max_depth: args.log_depth,
    };
    let task = args.task.clone();
    let timeout = Duration::from_secs(args.timeout.unwrap_or(u64::MAX / 4));
    let opts = MpiOptions {
        fanout: args.common.fanout,
        seed: args.common.seed,
        stats: args.common.stats,
    };
    let stats = args.common.stats;
    let result = run_mpi(registry, &opts, move |mut handle: ServerHandle| {
        let code = batch(&mut handle, &task, &json, log, timeout, stats);
        handle.shutdown();
        code
    });
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => fail(&e.to_string()),
    }
}

/// Rank 0's side of `bqrt run`: one job, logs to stderr, result to stdout.
fn batch(
    handle: &mut ServerHandle,
    task: &str,
    json: &str,
    log: LogSpec,
    timeout: Duration,
    stats: bool,
) -> i32 {
    let start = std::time::Instant::now();
    let Some(job) = handle.submit_json(task, json, log) else {
        eprintln!("bqrt: the runtime stopped before the job could be submitted");
        return 70;
    };
    let outcome = handle.wait(job, timeout, |r| {
        let ctx: Vec<String> = r.context.iter().map(|(k, v)| format!("{k}={v}")).collect();
        logging::eprint_line(&format!(
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
        ));
    });
    if stats {
        eprintln!(
            "bqrt-stats job_seconds={:.6}",
            start.elapsed().as_secs_f64()
        );
    }
    match outcome {
        Some(Outcome::Done(bytes)) => {
            let text = String::from_utf8_lossy(&bytes);
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
            0
        }
        Some(Outcome::Failed(f)) => {
            eprintln!("bqrt: {job} failed: {f}");
            1
        }
        None => {
            eprintln!("bqrt: {job} did not finish within the --timeout; stopping the runtime");
            handle.cancel(job);
            124
        }
    }
}
