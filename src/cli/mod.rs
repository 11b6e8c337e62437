//! The command line: `bqrt run|serve|tasks` under a launcher, and the client commands
//! `bqrt submit|status|result|cancel|watch|top` against a running server.
//!
//! Every rank parses the same arguments and validates them before MPI starts, so bad input
//! stops every rank the same way instead of leaving some waiting for others.

mod embedded;
mod remote;

use crate::executor::Registry;
use crate::gateway;
use crate::logging;
use crate::protocol::LogSpec;
use crate::runtime::{run_mpi, MpiOptions, Outcome, ServerHandle};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
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
    /// Run the runtime until SIGINT/SIGTERM: `mpirun -n N bqrt serve`. Rank 0 listens for clients
    /// and prints `bqrt ready HOST:PORT` once every rank is up.
    Serve(ServeArgs),
    /// List the tasks this binary can run.
    Tasks,
    /// Submit a job to a running server; prints its id. The job outlives this command.
    Submit(SubmitArgs),
    /// Show a job's state and task counts.
    Status(JobArgs),
    /// Wait for a job's result and print it as JSON (frees the job's record).
    Result(ResultArgs),
    /// Cancel a job and its whole task tree.
    Cancel(JobArgs),
    /// Show a job's progress and logs until it ends.
    Watch(JobArgs),
    /// Show workers busy/idle per group, queued tasks, jobs and throughput.
    Top(TopArgs),
    /// Stop a running server and all its ranks in order (batch scripts end the runtime so).
    Shutdown(ConnOnly),
    /// Compile a circuit with BQSKit through bqrt: `bqrt compile IN.qasm -o OUT.qasm`.
    #[cfg(feature = "python")]
    Compile(crate::python::compile::CompileArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address for clients (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7472", env = "BQRT_LISTEN")]
    listen: String,
    /// Also write the address to this file (atomically) when ready.
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
    /// Where to write the client token (mode 0600); default ~/.bqrt/token-PORT.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// Most client connections at once, of any protocol (16 more are kept for clients with the
    /// token).
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Seconds a client may take to finish a frame it started.
    #[arg(long, default_value_t = 30.0)]
    frame_timeout: f64,
    /// MiB of partially received frames held at once, over all connections.
    #[arg(long, default_value_t = gateway::BUDGET_MIB)]
    receive_budget: usize,
    /// Seconds after which a BQSKit connection with no job and nothing outstanding is closed.
    #[arg(long, default_value_t = 900.0)]
    idle_timeout: f64,
    /// Serve native clients only from this machine's loopback and this user, besides the token.
    #[arg(long)]
    same_user: bool,
    /// Seconds a job may run from its submission; a job past it fails with a "time limit"
    /// error and its tasks are stopped. Default: no limit.
    #[arg(long, value_name = "SECS", env = "BQRT_JOB_TIME_LIMIT")]
    job_time_limit: Option<f64>,
    #[command(flatten)]
    common: Common,
    #[cfg(feature = "python")]
    #[command(flatten)]
    python: crate::python::ServeOptions,
}

#[derive(clap::Args, Debug, Clone)]
struct Conn {
    /// The server's client address.
    #[arg(long, default_value = "127.0.0.1:7472", env = "BQRT_SERVER")]
    server: String,
    /// The server's token file (default: BQRT_TOKEN, BQRT_TOKEN_FILE, ~/.bqrt/token-PORT).
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
}

#[derive(clap::Args, Debug)]
struct SubmitArgs {
    task: String,
    /// The task's argument as JSON (default null).
    args: Option<String>,
    #[arg(long, value_enum, default_value_t = Level::Warn)]
    log_level: Level,
    #[arg(long)]
    log_depth: Option<u32>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(clap::Args, Debug)]
struct ConnOnly {
    #[command(flatten)]
    conn: Conn,
}

#[derive(clap::Args, Debug)]
struct JobArgs {
    job: u64,
    #[command(flatten)]
    conn: Conn,
}

#[derive(clap::Args, Debug)]
struct ResultArgs {
    job: u64,
    /// Give up after this many seconds (exit 124; the job goes on).
    #[arg(long)]
    timeout: Option<f64>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(clap::Args, Debug)]
struct TopArgs {
    /// Print one snapshot and exit (throughput measured over --interval).
    #[arg(long)]
    once: bool,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    #[command(flatten)]
    conn: Conn,
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
    /// Do not pin workers to cores.
    #[arg(long)]
    no_pin: bool,
    /// Pin worker i of each node to cpu i of this list (e.g. 0,2,4-7).
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// Threads each worker's BLAS/OpenMP libraries may use.
    #[arg(long, default_value_t = 1, env = "BQRT_BLAS_THREADS")]
    blas_threads: u32,
    /// GPUs per node: worker i of a node gets CUDA_VISIBLE_DEVICES = i mod N.
    #[arg(long, default_value_t = 0, env = "BQRT_GPUS_PER_NODE")]
    gpus_per_node: u32,
    /// Print one line per rank at start: rank, role, node, core, parent.
    #[arg(short, long)]
    verbose: bool,
    /// Without a launcher: how many workers to start on this machine (default: one per core).
    #[arg(long)]
    workers: Option<u32>,
    /// Seconds start-up may take (all ranks must arrive) before every rank gives up with an
    /// error, rather than waiting forever for a rank that died or never started.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 300,
        env = "BQRT_STARTUP_TIMEOUT"
    )]
    startup_timeout: u64,
    /// Seconds a rank may go without a sign of life (it sends one every sixth of this, also
    /// while it computes) before it is reported lost and the runtime stops: a rank stopped with SIGSTOP,
    /// or stuck outside bqrt.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 30,
        env = "BQRT_STUCK_AFTER"
    )]
    stuck_after: u64,
    /// Seconds a task may run in one step (without awaiting) before its job's clients are
    /// warned, and again each time as long again passes; 0: never.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 300.0,
        env = "BQRT_STALL_WARNING"
    )]
    stall_warning: f64,
    /// A shell command the first rank of each node runs before the node's workers start (for
    /// example `nvidia-cuda-mps-control -d`); if it fails, start-up stops with its output.
    #[arg(long, value_name = "CMD", env = "BQRT_NODE_SETUP")]
    node_setup: Option<String>,
    /// A shell command the first rank of each node runs after every rank stopped (for example
    /// `echo quit | nvidia-cuda-mps-control`).
    #[arg(long, value_name = "CMD", env = "BQRT_NODE_TEARDOWN")]
    node_teardown: Option<String>,
    /// A worker group, as `NAME workers=N|rest [cores=K] [blas=T] [gpus=G] [offers=gpu=1,...]
    /// [env.VAR=VALUE ...]` (templates {gpu} {index} {local_rank} {node} {group}); repeat for
    /// more groups. Each node's workers fill the groups in order.
    #[arg(long = "group", value_name = "SPEC")]
    group: Vec<String>,
    /// A file of worker groups, one `--group` declaration per line (`#` comments).
    #[arg(long, value_name = "FILE", env = "BQRT_GROUPS")]
    groups: Option<std::path::PathBuf>,
}

impl Common {
    /// Check the flags every rank shares (before MPI starts, so all ranks fail alike).
    fn options(&self) -> Result<MpiOptions, String> {
        if self.fanout < 2 {
            return Err(format!("--fanout {}: must be at least 2", self.fanout));
        }
        if self.startup_timeout == 0 {
            return Err("--startup-timeout 0: must be at least 1 (seconds)".into());
        }
        if self.stuck_after < 2 {
            return Err(format!(
                "--stuck-after {}: must be at least 2 (seconds)",
                self.stuck_after
            ));
        }
        if self.blas_threads == 0 {
            return Err("--blas-threads 0: must be at least 1".into());
        }
        let stall = self.stall_warning;
        if !(stall.is_finite() && (0.0..1e9).contains(&stall)) {
            return Err(format!(
                "--stall-warning {stall}: must be a number of seconds (0: no warnings)"
            ));
        }
        let pin =
            crate::topology::pinning::PinPolicy::from_flags(self.no_pin, self.cpus.as_deref())
                .map_err(|e| e.to_string())?;
        let groups = self.worker_groups()?;
        Ok(MpiOptions {
            fanout: self.fanout,
            seed: self.seed,
            stats: self.stats,
            pin,
            blas_threads: self.blas_threads,
            gpus_per_node: self.gpus_per_node,
            verbose: self.verbose,
            startup_timeout: std::time::Duration::from_secs(self.startup_timeout),
            stuck_after: std::time::Duration::from_secs(self.stuck_after),
            stall_warning: (stall > 0.0).then(|| std::time::Duration::from_secs_f64(stall)),
            job_time_limit: None,
            node_setup: self.node_setup.clone().filter(|c| !c.trim().is_empty()),
            node_teardown: self.node_teardown.clone().filter(|c| !c.trim().is_empty()),
            groups,
        })
    }

    /// `--groups FILE` then each `--group`, checked together.
    fn worker_groups(&self) -> Result<Vec<crate::topology::groups::GroupSpec>, String> {
        use crate::topology::groups;
        let mut out = Vec::new();
        if let Some(path) = &self.groups {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--groups {shown}: cannot read it: {e}"))?;
            out.extend(groups::parse_file(&text, &shown).map_err(|e| format!("--groups {e}"))?);
        }
        for spec in &self.group {
            out.push(groups::GroupSpec::parse(spec).map_err(|e| format!("--group: {e}"))?);
        }
        groups::check(&out).map_err(|e| format!("worker groups: {e}"))?;
        Ok(out)
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub(crate) enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    pub(crate) fn number(self) -> u8 {
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
    crate::executor::install_panic_hook(true);
    let mut argv = std::env::args().skip(1);
    if let (Some(a), None) = (argv.next(), argv.next()) {
        if a == "--version" || a == "-V" {
            println!(
                "bqrt {} (MPI: {})",
                env!("CARGO_PKG_VERSION"),
                crate::transport::mpi::library_version()
            );
            return ExitCode::SUCCESS;
        }
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Tasks => {
            for name in registry.names() {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        Cmd::Run(args) if !embedded::under_launcher() => embedded::relaunch(args.common.workers),
        Cmd::Serve(args) if !embedded::under_launcher() => {
            // a Python environment that cannot work is said once, before any rank starts
            #[cfg(feature = "python")]
            if let Err(e) = crate::python::setup(Registry::new(), &args.python, &args.listen) {
                return fail(&e);
            }
            embedded::relaunch(args.common.workers)
        }
        Cmd::Run(args) => run(registry, args),
        Cmd::Serve(args) => serve(registry, args),
        Cmd::Submit(a) => remote::submit(a),
        Cmd::Status(a) => remote::status(a),
        Cmd::Result(a) => remote::result(a),
        Cmd::Cancel(a) => remote::cancel(a),
        Cmd::Watch(a) => remote::watch(a),
        Cmd::Top(a) => remote::top(a),
        Cmd::Shutdown(a) => remote::shutdown(a),
        #[cfg(feature = "python")]
        Cmd::Compile(a) => crate::python::compile::main(a),
    }
}

fn serve(registry: Registry, args: ServeArgs) -> ExitCode {
    #[cfg(feature = "python")]
    let registry = match crate::python::setup(registry, &args.python, &args.listen) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let mut opts = match args.common.options() {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    if let Some(v) = args.job_time_limit {
        if !(v > 0.0 && v.is_finite() && v < 1e9) {
            return fail(&format!(
                "--job-time-limit {v}: must be a positive number of seconds"
            ));
        }
        opts.job_time_limit = Some(Duration::from_secs_f64(v));
    }
    for (flag, v) in [
        ("--frame-timeout", args.frame_timeout),
        ("--idle-timeout", args.idle_timeout),
    ] {
        if !(v > 0.0 && v.is_finite() && v < 1e9) {
            return fail(&format!("{flag} {v}: must be a positive number of seconds"));
        }
    }
    if args.max_connections == 0 {
        return fail("--max-connections 0: must be at least 1");
    }
    if args.receive_budget == 0 || args.receive_budget > (1 << 20) {
        return fail(&format!(
            "--receive-budget {}: must be between 1 and 1048576 MiB",
            args.receive_budget
        ));
    }
    let stop = crate::runtime::stop::shared();
    let result = run_mpi(registry, &opts, move |mut handle: ServerHandle| {
        let code = gateway_main(&mut handle, &args, stop);
        handle.shutdown();
        code
    });
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => start_failed(e),
    }
}

/// Rank 0 of `bqrt serve`: bind, write the token, say ready, serve until signalled.
fn gateway_main(handle: &mut ServerHandle, args: &ServeArgs, stop: Arc<AtomicBool>) -> i32 {
    // a script polling for the ready file must never read a previous run's address
    if let Some(p) = &args.ready_file {
        let _ = std::fs::remove_file(p);
    }
    let (listener, addr) = match gateway::bind(&args.listen) {
        Ok(x) => x,
        Err(e) => {
            crate::eline!("bqrt: {e}");
            return 2;
        }
    };
    let (token, _claim) = match publish(args, addr) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let mut cfg = gateway::GatewayConfig::new(token);
    cfg.max_connections = args.max_connections;
    cfg.frame_timeout = Duration::from_secs_f64(args.frame_timeout);
    cfg.idle_timeout = Duration::from_secs_f64(args.idle_timeout);
    cfg.budget = Arc::new(gateway::frame::Budget::new(args.receive_budget << 20));
    cfg.same_user = args.same_user;
    #[cfg(feature = "python")]
    {
        let (foreign, notice) = crate::python::gateway_setup();
        logging::eprint_line(&notice);
        cfg.foreign = foreign;
    }
    let fatal = gateway::serve(
        listener,
        cfg,
        handle,
        stop,
        "the server received a stop signal",
    );
    if let Some(p) = &args.ready_file {
        let _ = std::fs::remove_file(p);
    }
    match fatal {
        Some(e) => {
            crate::eline!("bqrt: stopping: {e}");
            1
        }
        None => {
            logging::eprint_line("bqrt: stopping");
            0
        }
    }
}

/// Claim the token path, make the token, write it and the ready file, and say `bqrt ready
/// ADDR`; the exit status on failure.
fn publish(
    args: &ServeArgs,
    addr: std::net::SocketAddr,
) -> Result<(String, crate::token::Claim), i32> {
    let token = crate::token::generate().map_err(|e| {
        crate::eline!("bqrt: cannot read /dev/urandom for the client token: {e}");
        70
    })?;
    let Some(token_path) = args
        .token_file
        .clone()
        .or_else(|| crate::token::default_path(addr.port()))
    else {
        crate::logging::eprint_line("bqrt: HOME is not set; pass --token-file PATH");
        return Err(2);
    };
    let about = format!("pid {}, serving {addr}", std::process::id());
    let claim = crate::token::claim(&token_path, &about).map_err(|e| {
        crate::eline!("bqrt: {e}");
        2
    })?;
    if let Err(e) = crate::token::write(&token_path, &token) {
        crate::eline!(
            "bqrt: cannot write the token file {}: {e}; pass --token-file PATH",
            token_path.display()
        );
        return Err(2);
    }
    crate::eline!("bqrt: client token in {} (mode 0600)", token_path.display());
    if let Some(p) = &args.ready_file {
        if let Err(e) = crate::token::write_atomic(p, &format!("{addr}\n")) {
            crate::eline!("bqrt: cannot write --ready-file {}: {e}", p.display());
            return Err(2);
        }
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "bqrt ready {addr}");
    let _ = out.flush();
    Ok((token, claim))
}

/// A start-up that failed: the reason, said once per job when every process hits it.
fn start_failed(e: crate::runtime::StartError) -> ExitCode {
    match e {
        crate::runtime::StartError::WrongLauncher(_) if !crate::runtime::mpi::first_of_job() => {
            ExitCode::from(2)
        }
        // rank 0 printed it during start-up
        crate::runtime::StartError::Groups(_) => ExitCode::from(2),
        e => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ExitCode {
    crate::eline!("bqrt: {msg}");
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
    let opts = match args.common.options() {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    let log = LogSpec {
        level: args.log_level.number(),
        max_depth: args.log_depth,
    };
    let task = args.task.clone();
    let timeout = Duration::from_secs(args.timeout.unwrap_or(u64::MAX / 4));
    let stats = args.common.stats;
    let result = run_mpi(registry, &opts, move |mut handle: ServerHandle| {
        let code = batch(&mut handle, &task, &json, log, timeout, stats);
        handle.shutdown();
        code
    });
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => start_failed(e),
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
        crate::logging::eprint_line("bqrt: the runtime stopped before the job could be submitted");
        return 70;
    };
    let deadline = std::time::Instant::now() + timeout;
    let outcome = loop {
        let slice = Duration::from_millis(100)
            .min(deadline.saturating_duration_since(std::time::Instant::now()));
        if let Some(o) = handle.wait(job, slice, remote::print_log) {
            break Some(o);
        }
        if crate::runtime::stop::requested() {
            // a launcher signals every rank when one dies: learn about the death first
            if let Some(Outcome::RuntimeFailed(m)) =
                handle.wait(job, crate::runtime::stop::SETTLE, remote::print_log)
            {
                crate::eline!("bqrt: {job} lost: {m}");
                return 1;
            }
            crate::eline!("bqrt: interrupted; cancelling {job} and stopping");
            handle.cancel(job);
            return 130;
        }
        if std::time::Instant::now() >= deadline {
            break None;
        }
    };
    if stats {
        crate::eline!(
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
            crate::eline!("bqrt: {job} failed: {f}");
            1
        }
        Some(Outcome::RuntimeFailed(m)) => {
            crate::eline!("bqrt: {job} lost: {m}");
            1
        }
        None => {
            crate::eline!("bqrt: {job} did not finish within the --timeout; stopping the runtime");
            handle.cancel(job);
            124
        }
    }
}
