//! Started without a launcher, `bqrt run` and `bqrt serve` start the runtime themselves: they
//! run again under `mpiexec` with one worker per core (or `--workers N`) on this machine.
//!
//! The ranks run in their own process group, so a Ctrl-C reaches only this parent, which forwards
//! it to the ranks (not to `mpiexec`, which would terminate the job abruptly): the runtime stops
//! in order and this process exits with the ranks' status.

use crate::runtime::launcher;
use crate::transport::mpi::Flavor;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// Environment variables set by MPI launchers (Open MPI, MPICH/Hydra, PMIx, SLURM).
const LAUNCHER_VARS: &[&str] = &[
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "PMI_RANK",
    "PMIX_RANK",
    "SLURM_STEP_ID",
    "MPI_LOCALNRANKS",
    "BQRT_EMBEDDED",
];

/// True when some launcher started this process.
pub(super) fn under_launcher() -> bool {
    LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some())
}

/// Run this same command again under `mpiexec` with `workers` workers plus the server.
pub(super) fn relaunch(workers: Option<u32>) -> ExitCode {
    let flavor = Flavor::linked();
    let Some(mpiexec) = launcher::find(flavor) else {
        crate::eline!(
            "bqrt: {}, or start bqrt under srun/mpiexec.",
            launcher::missing(flavor)
        );
        return ExitCode::from(2);
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            crate::eline!("bqrt: cannot find my own executable to start the ranks: {e}");
            return ExitCode::from(70);
        }
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let workers = workers.unwrap_or(cores).max(1);
    let mut cmd = launch_command(&mpiexec, &exe, workers, flavor);
    if let Err(e) = crate::runtime::stop::install() {
        crate::eline!("bqrt: cannot install the signal handler: {e}");
        return ExitCode::from(70);
    }
    crate::eline!(
        "bqrt: no launcher: starting {} ranks (a server and {workers} workers) with {}",
        workers + 1,
        mpiexec.display()
    );
    match cmd.spawn() {
        Ok(child) => supervise(child),
        Err(e) => {
            crate::eline!("bqrt: cannot start {}: {e}", mpiexec.display());
            ExitCode::from(2)
        }
    }
}

/// `mpiexec -n WORKERS+1 EXE ARGS...` with the settings a one-machine runtime needs, in its own
/// process group.
fn launch_command(
    mpiexec: &std::path::Path,
    exe: &std::path::Path,
    workers: u32,
    flavor: Flavor,
) -> Command {
    let mut cmd = Command::new(mpiexec);
    cmd.args(["-n", &(workers + 1).to_string()])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("BQRT_EMBEDDED", "1");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    launcher::one_machine(&mut cmd, flavor);
    cmd
}

/// Wait for the ranks and exit with their status; a stop signal to this process is forwarded
/// to the ranks (SIGINT), and ranks that do not stop within [`RELAUNCH_KILL`] are killed.
///
/// [`RELAUNCH_KILL`]: crate::runtime::stop::RELAUNCH_KILL
fn supervise(mut child: std::process::Child) -> ExitCode {
    let mut forwarded: Option<Instant> = None;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return ExitCode::from(status.code().map_or(1, |c| c.clamp(0, 255) as u8));
            }
            Ok(None) => {}
            Err(e) => {
                crate::eline!("bqrt: waiting for the ranks: {e}");
                return ExitCode::from(70);
            }
        }
        if crate::runtime::stop::requested() {
            match forwarded {
                None => {
                    for pid in crate::runtime::liveness::descendants(child.id()) {
                        // SAFETY: sending a signal has no memory-safety preconditions.
                        unsafe { libc::kill(pid as i32, libc::SIGINT) };
                    }
                    forwarded = Some(Instant::now());
                }
                Some(t) if t.elapsed() > crate::runtime::stop::RELAUNCH_KILL => {
                    crate::logging::eprint_line(
                        "bqrt: the ranks did not stop within 10 s; killing them",
                    );
                    let _ = child.kill();
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
