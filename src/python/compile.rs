//! `bqrt compile IN.qasm -o OUT.qasm`: compile a circuit with BQSKit through bqrt.
//!
//! This command is a native client and starts no Python itself: it reads the input file,
//! submits the `python` task `bqrt_compile.compile_circuit` (python/bqrt_compile.py, which every
//! worker's Python process has) to the runtime at `--server`, or to one it starts under the MPI
//! launcher on this machine and stops afterwards, shows the passes as their log records arrive,
//! then writes the output file and the figures from the task's result. Only the workers import
//! BQSKit, and they do it while the ranks come up (decision 49).

use crate::client::{Client, ClientError, WatchEvent};
use crate::protocol::native::JobResult;
use crate::protocol::LogSpec;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct CompileArgs {
    /// Input circuit (OpenQASM 2, or any format BQSKit reads; the extension names it).
    pub input: PathBuf,
    /// Where to write the compiled circuit (format from the extension, e.g. .qasm).
    #[arg(short, long)]
    pub output: PathBuf,
    /// BQSKit optimization level, 1 (fast) to 4 (best).
    #[arg(short = 'O', long = "optimization-level", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub level: u8,
    /// Seed for BQSKit's randomized passes.
    #[arg(long)]
    pub seed: Option<u64>,
    /// A running bqrt server (HOST:PORT); default: start one on this machine for this compile.
    #[arg(long)]
    pub server: Option<String>,
    /// The token of the server at --server (default: BQRT_TOKEN, BQRT_TOKEN_FILE, then the
    /// server's default token file for its port).
    #[arg(long, requires = "server")]
    pub token_file: Option<PathBuf>,
    /// Ranks of the runtime started here (server + workers); default: cores + 1.
    #[arg(long)]
    pub ranks: Option<u32>,
    /// Python interpreter whose environment has bqskit, for the runtime started here (default:
    /// the active VIRTUAL_ENV's, else python3 on PATH).
    #[arg(long, env = "BQRT_PYTHON")]
    pub python: Option<PathBuf>,
    /// Show BQSKit's log records (info level, every task) while compiling.
    #[arg(short, long)]
    pub verbose: bool,
}

fn fail(msg: &str) -> ExitCode {
    crate::eline!("bqrt compile: {msg}");
    ExitCode::from(2)
}

/// A circuit file's format: its extension, as BQSKit names languages (`qasm`).
fn format_of(path: &Path, what: &str) -> Result<String, String> {
    path.extension()
        .and_then(|e| e.to_str())
        .filter(|e| !e.is_empty())
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| {
            format!(
                "{}: the {what} needs an extension that names its format, like .qasm",
                path.display()
            )
        })
}

pub fn main(args: CompileArgs) -> ExitCode {
    if !args.input.is_file() {
        return fail(&format!("{}: no such file", args.input.display()));
    }
    let text = match std::fs::read(&args.input).map(String::from_utf8) {
        Ok(Ok(t)) => t,
        Ok(Err(_)) => {
            return fail(&format!(
                "{}: not a text file (BQSKit reads circuits as text, like OpenQASM 2)",
                args.input.display()
            ))
        }
        Err(e) => return fail(&format!("{}: {e}", args.input.display())),
    };
    let (input_format, output_format) = match (
        format_of(&args.input, "input"),
        format_of(&args.output, "output"),
    ) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => return fail(&e),
    };
    let call = serde_json::json!({
        "call": "bqrt_compile.compile_circuit",
        "args": [text, input_format, output_format, args.level, args.seed],
    })
    .to_string();
    let (runtime, addr, token) = match &args.server {
        Some(s) => match crate::client::find_token(s, args.token_file.as_deref()) {
            Ok(t) => (None, s.clone(), t),
            Err(e) => return fail(&e.to_string()),
        },
        None => {
            let (exe, _) = super::env::choose(args.python.as_deref());
            match LocalRuntime::start(LocalRuntime::dir(), &exe, args.ranks) {
                Ok(r) => match crate::token::read(&r.dir.join("token")) {
                    Ok(t) => {
                        let addr = r.addr.clone();
                        (Some(r), addr, t)
                    }
                    Err(e) => {
                        r.stop();
                        return fail(&format!("cannot read the runtime's token: {e}"));
                    }
                },
                Err(e) => return fail(&e),
            }
        }
    };
    crate::eline!(
        "bqrt compile: {}: optimization level {}{}, runtime {addr}",
        args.input.display(),
        args.level,
        args.seed.map(|s| format!(", seed {s}")).unwrap_or_default()
    );
    let outcome = run(&addr, token, &call, args.verbose);
    let code = match outcome {
        Ok((value, took, passes)) => report(&args, &value, took, passes),
        Err(Outcome::Failed(msg)) => {
            crate::eline!("bqrt compile: compilation failed: {msg}");
            ExitCode::from(1)
        }
        Err(Outcome::Client(e))
            if e.to_string()
                .contains(&format!("no task named '{}'", super::call::FUNCTION)) =>
        {
            fail(&format!(
                "the runtime at {addr} has no BQSKit support (it found no Python environment with \
             bqskit, or was started with --no-python); start it with --python PATH"
            ))
        }
        Err(Outcome::Client(e)) => fail(&e.to_string()),
    };
    if let Some(r) = runtime {
        r.stop();
    }
    code
}

enum Outcome {
    Failed(String),
    Client(ClientError),
}

impl From<ClientError> for Outcome {
    fn from(e: ClientError) -> Self {
        Outcome::Client(e)
    }
}

/// Submit the compile, show its passes, and return its result, how long it took and how many
/// passes ran.
fn run(
    addr: &str,
    token: String,
    call: &str,
    verbose: bool,
) -> Result<(serde_json::Value, Duration, u32), Outcome> {
    let mut c = Client::connect(addr, Some(token))?;
    // the workflow's own records (each pass as it starts) come from the root task at debug
    let log = LogSpec {
        level: 4,
        max_depth: if verbose { None } else { Some(0) },
    };
    let start = Instant::now();
    let job = c.submit(super::call::FUNCTION, call, log, false)?;
    let progress = Progress::new(start, verbose);
    let ticker = progress.tick_while_running();
    let watched = c.watch(job, |event| {
        if let WatchEvent::Log(r) = event {
            progress.record(&r.target, r.level, &r.message);
        }
    });
    ticker.stop();
    watched?;
    let result = c.result(job, None)?;
    let took = start.elapsed();
    c.close();
    let passes = progress.passes();
    match result {
        JobResult::Done { value, .. } => serde_json::from_slice(&value)
            .map(|v| (v, took, passes))
            .map_err(|e| Outcome::Failed(format!("the compile task's result is not JSON: {e}"))),
        JobResult::Failed(f) => Err(Outcome::Failed(f.to_string())),
        JobResult::Cancelled => Err(Outcome::Failed("the job was cancelled".into())),
        JobResult::Unknown(note) => Err(Outcome::Failed(note)),
        JobResult::Pending => Err(Outcome::Failed("no result".into())),
    }
}

/// Write the output file and print the figures; the exit status.
fn report(args: &CompileArgs, v: &serde_json::Value, took: Duration, passes: u32) -> ExitCode {
    let Some(output) = v["output"].as_str() else {
        return fail("the compile task returned no circuit");
    };
    if let Err(e) = std::fs::write(&args.output, output) {
        return fail(&format!(
            "{}: cannot write the circuit: {e}",
            args.output.display()
        ));
    }
    let (before, after) = (&v["before"], &v["after"]);
    println!(
        "compiled {} -> {} in {:.1} s ({passes} passes, level {}{})",
        args.input.display(),
        args.output.display(),
        took.as_secs_f64(),
        args.level,
        args.seed.map(|s| format!(", seed {s}")).unwrap_or_default()
    );
    let count = |side: &serde_json::Value, key: &str| side[key].as_u64().unwrap_or(0);
    let gates = |side: &serde_json::Value, name: &str| side["gates"][name].as_u64().unwrap_or(0);
    let names: std::collections::BTreeSet<&String> = [before, after]
        .iter()
        .filter_map(|side| side["gates"].as_object())
        .flat_map(|m| m.keys())
        .collect();
    println!("  {:<14}{:>8}{:>8}", "gate", "before", "after");
    for g in names {
        println!("  {g:<14}{:>8}{:>8}", gates(before, g), gates(after, g));
    }
    for (label, key) in [("total", "operations"), ("depth", "depth")] {
        println!(
            "  {label:<14}{:>8}{:>8}",
            count(before, key),
            count(after, key)
        );
    }
    if let Some(d) = v["distance"].as_f64() {
        println!("  unitary distance to the input: {d:.2e}");
    }
    ExitCode::SUCCESS
}

/// The pass being run: one updating line on a terminal, else one line per pass.
#[derive(Clone)]
struct Progress {
    start: Instant,
    verbose: bool,
    tty: bool,
    state: Arc<Mutex<(u32, String)>>,
}

impl Progress {
    fn new(start: Instant, verbose: bool) -> Progress {
        Progress {
            start,
            verbose,
            tty: std::io::stderr().is_terminal(),
            state: Arc::new(Mutex::new((0, "waiting for a worker".into()))),
        }
    }

    fn passes(&self) -> u32 {
        self.state.lock().map_or(0, |s| s.0)
    }

    fn record(&self, target: &str, level: u8, message: &str) {
        if let (true, Some(name)) = (
            target == "bqskit.compiler.workflow",
            message.strip_prefix("Running "),
        ) {
            let name = name.split(" [wid=").next().unwrap_or(name).to_string();
            let n = match self.state.lock() {
                Ok(mut s) => {
                    s.0 += 1;
                    s.1 = name.clone();
                    s.0
                }
                Err(_) => return,
            };
            if self.tty {
                self.draw();
            } else {
                crate::eline!(
                    "  [{:7.1} s] pass {n}: {name}",
                    self.start.elapsed().as_secs_f64()
                );
            }
        } else if self.verbose && (1..=3).contains(&level) {
            self.clear();
            crate::eline!(
                "  {}: {target}: {message}",
                crate::logging::level_from_number(level)
                    .as_str()
                    .to_ascii_lowercase()
            );
        }
    }

    fn draw(&self) {
        if !self.tty {
            return;
        }
        let Ok(s) = self.state.lock() else { return };
        let line = format!(
            "  [{:7.1} s] pass {}: {}",
            self.start.elapsed().as_secs_f64(),
            s.0,
            s.1
        );
        let line: String = line.chars().take(100).collect();
        eprint!("\r{line:<100}");
    }

    fn clear(&self) {
        if self.tty {
            eprint!("\r{:100}\r", "");
        }
    }

    /// On a terminal, redraw the line every half second until the returned guard is stopped.
    fn tick_while_running(&self) -> Ticker {
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let thread = self.tty.then(|| {
            let (me, stop) = (self.clone(), stop.clone());
            std::thread::spawn(move || {
                let (lock, cv) = &*stop;
                let Ok(mut done) = lock.lock() else { return };
                while !*done {
                    me.draw();
                    match cv.wait_timeout(done, Duration::from_millis(500)) {
                        Ok((d, _)) => done = d,
                        Err(_) => return,
                    }
                }
                me.clear();
            })
        });
        Ticker { stop, thread }
    }
}

struct Ticker {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn stop(self) {
        if let Ok(mut d) = self.stop.0.lock() {
            *d = true;
        }
        self.stop.1.notify_all();
        if let Some(t) = self.thread {
            let _ = t.join();
        }
    }
}

/// A runtime started for one compile: `mpiexec -n N bqrt serve` on a free loopback port.
struct LocalRuntime {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl LocalRuntime {
    /// This command's directory for the runtime's ready file, token and log.
    fn dir() -> PathBuf {
        std::env::temp_dir().join(format!("bqrt-compile-{}", std::process::id()))
    }

    fn start(dir: PathBuf, python: &Path, ranks: Option<u32>) -> Result<LocalRuntime, String> {
        let me = std::env::current_exe()
            .map_err(|e| format!("cannot find this program's path ({e}); pass --server"))?;
        let ranks = ranks.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32 + 1)
                .unwrap_or(3)
        });
        if ranks < 2 {
            return Err(format!(
                "--ranks {ranks}: a runtime needs at least 2 ranks (a server and a worker)"
            ));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let ready = dir.join("ready");
        let log_path = dir.join("runtime.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot use {}: {e}", log_path.display()))?;
        let flavor = crate::transport::mpi::Flavor::linked();
        let launcher = crate::runtime::launcher::find(flavor).ok_or_else(|| {
            format!(
                "{}, or pass --server HOST:PORT",
                crate::runtime::launcher::missing(flavor)
            )
        })?;
        let mut cmd = Command::new(&launcher);
        crate::runtime::launcher::one_machine(&mut cmd, flavor);
        cmd.args(["-n", &ranks.to_string()])
            .arg(&me)
            .args(["serve", "--listen", "127.0.0.1:0", "--ready-file"])
            .arg(&ready)
            .arg("--token-file")
            .arg(dir.join("token"))
            .arg("--python")
            .arg(python)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        crate::eline!(
            "bqrt compile: starting a runtime with {ranks} ranks (server + {} workers)",
            ranks - 1
        );
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start {} ({e}): pass --server HOST:PORT",
                launcher.display()
            )
        })?;
        let mut rt = LocalRuntime {
            child,
            addr: String::new(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                if let Some(addr) = text.lines().next().filter(|l| !l.is_empty()) {
                    rt.addr = addr.trim().to_string();
                    return Ok(rt);
                }
            }
            if let Ok(Some(st)) = rt.child.try_wait() {
                let tail = distinct_lines(&std::fs::read_to_string(&log_path).unwrap_or_default());
                let _ = std::fs::remove_dir_all(&rt.dir);
                return Err(format!(
                    "the runtime exited ({st}) before it was ready:\n{tail}"
                ));
            }
            if Instant::now() >= deadline {
                let tail = distinct_lines(&std::fs::read_to_string(&log_path).unwrap_or_default());
                rt.stop();
                return Err(format!("the runtime was not ready within 120 s:\n{tail}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `shutdown` through the native protocol (every rank stops in order and exits 0, and the
    /// launcher with them, at once); SIGINT to the launcher if that cannot be asked (Open MPI's
    /// `mpirun` then takes about a second); kill if it lingers.
    fn stop(mut self) {
        let asked = crate::token::read(&self.dir.join("token"))
            .ok()
            .and_then(|t| crate::client::Client::connect(&self.addr, Some(t)).ok())
            .is_some_and(|mut c| c.shutdown().is_ok());
        if !asked {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The runtime's log with each line once (every rank says the same thing when they all fail
/// alike, like a Python environment without BQSKit).
fn distinct_lines(log: &str) -> String {
    let mut seen = std::collections::HashSet::new();
    log.lines()
        .filter(|l| seen.insert(*l))
        .collect::<Vec<_>>()
        .join("\n")
}
