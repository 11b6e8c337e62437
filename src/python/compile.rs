//! `bqrt compile IN.qasm -o OUT.qasm`: compile a circuit with BQSKit through bqrt.
//!
//! The compile itself runs in the Python environment's interpreter with a small driver
//! (python/bqrt_compile.py, compiled into this binary) that uses BQSKit's own `Compiler`
//! against a bqrt runtime: the one at `--server`, or one this command starts under `mpiexec`
//! on this machine and stops afterwards.

use super::env;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const DRIVER: &str = include_str!("../../python/bqrt_compile.py");

#[derive(clap::Args, Debug)]
pub struct CompileArgs {
    /// Input circuit (OpenQASM 2, or any format BQSKit reads).
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
    /// Ranks of the runtime started here (server + workers); default: cores + 1.
    #[arg(long)]
    pub ranks: Option<u32>,
    /// Python interpreter whose environment has bqskit (default: the active VIRTUAL_ENV's, else
    /// python3 on PATH).
    #[arg(long, env = "BQRT_PYTHON")]
    pub python: Option<PathBuf>,
    /// Show BQSKit's log records (info level) while compiling.
    #[arg(short, long)]
    pub verbose: bool,
}

fn fail(msg: &str) -> ExitCode {
    crate::eline!("bqrt compile: {msg}");
    ExitCode::from(2)
}

pub fn main(args: CompileArgs) -> ExitCode {
    if !args.input.is_file() {
        return fail(&format!("{}: no such file", args.input.display()));
    }
    let (exe, _) = env::choose(args.python.as_deref());
    let pyenv = match env::probe(&exe) {
        Ok(e) => e,
        Err(e) => return fail(&e.to_string()),
    };
    let mut cmd = Command::new(&pyenv.executable);
    cmd.arg("-c").arg(DRIVER).arg(&args.input).arg(&args.output);
    // the runtime started here comes up while the driver imports BQSKit and reads the circuit
    let dir = LocalRuntime::dir();
    match &args.server {
        Some(s) => cmd.arg("--server").arg(s),
        None => cmd
            .arg("--server-file")
            .arg(dir.join("ready"))
            .arg("--local-runtime"),
    };
    cmd.arg("--level").arg(args.level.to_string());
    if let Some(seed) = args.seed {
        cmd.arg("--seed").arg(seed.to_string());
    }
    if args.verbose {
        cmd.arg("--verbose");
    }
    let mut driver = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(&format!("cannot run {}: {e}", pyenv.executable.display())),
    };
    let runtime = match &args.server {
        Some(_) => None,
        None => match LocalRuntime::start(dir, &pyenv.executable, args.ranks) {
            Ok(r) => Some(r),
            Err(e) => {
                let _ = driver.kill();
                let _ = driver.wait();
                return fail(&e);
            }
        },
    };
    let status = driver.wait();
    if let Some(r) = runtime {
        r.stop();
    }
    match status {
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => fail(&format!("waiting for {}: {e}", pyenv.executable.display())),
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
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                let _ = std::fs::remove_dir_all(&rt.dir);
                return Err(format!(
                    "the runtime exited ({st}) before it was ready:\n{tail}"
                ));
            }
            if Instant::now() >= deadline {
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                rt.stop();
                return Err(format!("the runtime was not ready within 120 s:\n{tail}"));
            }
            std::thread::sleep(Duration::from_millis(50));
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
