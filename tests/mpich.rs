//! A build against MPICH (Debian's `mpich`, the open base of Cray MPICH and Intel MPI) under its
//! own launchers: Hydra's `mpiexec`, fake hosts through Hydra's ssh launcher, `srun --mpi=pmi2`.
//!
//! Run by `launch/test.sh` in its MPICH pass (`BQRT_TEST_MPI=mpich`, the binary built with
//! `MPICC=mpicc.mpich`); in the Open MPI pass every test here returns at once. The same pass
//! runs tests/mpirun.rs and tests/gateway.rs under Hydra (`common::mpirun`).

mod common;
use bqrt::protocol::LogSpec;
use common::{bare, descendants, done, has_env, run, Serve};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn mpich() -> bool {
    let on = std::env::var("BQRT_TEST_MPI").is_ok_and(|v| v == "mpich");
    if !on {
        eprintln!("skipped: the MPICH pass of launch/test.sh runs this (BQRT_TEST_MPI=mpich)");
    }
    on
}

fn hydra(n: u32) -> Command {
    common::mpirun(n)
}

fn hydra_run(n: u32, args: &[&str]) -> common::Run {
    let mut c = hydra(n);
    c.arg(common::bqrt_bin()).args(args);
    run(c, Duration::from_secs(120))
}

#[test]
fn the_build_names_mpich_and_runs_jobs_under_hydra() {
    if !mpich() {
        return;
    }
    let v = run(bare(&["--version"]), Duration::from_secs(10));
    v.ok();
    assert!(v.stdout.contains("MPICH"), "{}", v.stdout);
    let r = hydra_run(4, &["run", "fib", "20", "-v"]);
    r.ok();
    assert_eq!(r.last_line(), "6765");
    assert!(r.stderr.contains("MPI library: MPICH"), "{}", r.stderr);
    // tree 12, nested cancel and the rest: tests/mpirun.rs, which the MPICH pass runs under
    // Hydra too
}

#[test]
fn without_a_launcher_the_mpich_build_starts_hydra() {
    if !mpich() {
        return;
    }
    let r = run(
        bare(&["run", "fib", "20", "--workers", "2"]),
        Duration::from_secs(120),
    );
    r.ok();
    assert_eq!(r.last_line(), "6765");
    assert!(
        r.stderr.contains("mpiexec.hydra") || r.stderr.contains("mpiexec.mpich"),
        "{}",
        r.stderr
    );
}

#[test]
fn the_wrong_process_management_interface_is_one_clear_error() {
    if !mpich() {
        return;
    }
    // what `srun --mpi=none` (or pmix) does to an MPICH build: every task a singleton
    for (procid, says) in [("0", true), ("1", false)] {
        let mut c = bare(&["run", "fib", "5"]);
        c.env("SLURM_STEP_ID", "0")
            .env("SLURM_STEP_NUM_TASKS", "3")
            .env("SLURM_PROCID", procid);
        let r = run(c, Duration::from_secs(60));
        assert_eq!(r.code, Some(2), "{}", r.stderr);
        assert_eq!(r.stderr.contains("--mpi=pmi2"), says, "{}", r.stderr);
    }
    // and the real thing on the local SLURM
    let _slurm = common::local_slurm();
    let mut c = Command::new("srun");
    c.args(["--mpi=none", "-n", "3", "--overcommit"])
        .arg(common::bqrt_bin())
        .args(["run", "fib", "5"]);
    let r = run(c, Duration::from_secs(120));
    assert_ne!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("--mpi=pmi2").count(),
        1,
        "one error for the whole step:\n{}",
        r.stderr
    );
    let r = common::run_srun(
        || {
            let mut c = Command::new("srun");
            c.args([
                "--mpi=pmi2",
                "-N",
                "3",
                "--ntasks-per-node=2",
                "--overcommit",
            ])
            .arg(common::bqrt_bin())
            .args(["run", "fib", "20", "-v"]);
            c
        },
        Duration::from_secs(120),
    );
    assert_eq!(r.last_line(), "6765", "{}", r.stderr);
    // 3 nodes of 2: the server leads node 0, a manager each of the others
    assert_eq!(r.stderr.matches("role manager").count(), 2, "{}", r.stderr);
    assert!(r.stderr.contains("node 2"), "{}", r.stderr);
}

#[test]
fn three_fake_hosts_through_hydra_get_three_managers() {
    if !mpich() {
        return;
    }
    let fakessh: PathBuf = [env!("CARGO_MANIFEST_DIR"), "launch", "fakessh"]
        .iter()
        .collect();
    let mut c = Command::new("mpiexec.hydra");
    c.env("UCX_LOG_LEVEL", "error");
    c.args(["-launcher", "ssh", "-launcher-exec"])
        .arg(&fakessh)
        .args(["-hosts", "n1:3,n2:3,n3:3", "-n", "9"])
        .arg(common::bqrt_bin())
        .args(["run", "fib", "15", "-v"]);
    let r = run(c, Duration::from_secs(120));
    r.ok();
    assert_eq!(r.last_line(), "610");
    assert_eq!(r.stderr.matches("role manager").count(), 3, "{}", r.stderr);
    assert_eq!(r.stderr.matches("role worker").count(), 5, "{}", r.stderr);
}

#[test]
fn serve_then_ctrl_c_to_mpiexec_stops_every_rank_with_status_0() {
    if !mpich() {
        return;
    }
    let mut s = Serve::start_with(hydra(4), &[]);
    let mut c = s.client();
    let j = c.submit("fib", "15", LogSpec::OFF, false).unwrap();
    assert_eq!(done(c.result(j, None).unwrap()), 610);
    drop(c);
    let launcher = s.child.as_ref().unwrap().id();
    let ranks = descendants(launcher);
    assert!(ranks.len() >= 4, "ranks: {ranks:?}");
    let (code, took, err) = s.stop("INT", false);
    let left: Vec<u32> = ranks
        .iter()
        .copied()
        .filter(|&p| !common::exited(p))
        .collect();
    assert!(left.is_empty(), "ranks outlived mpiexec: {left:?}");
    let gone = common::wait_gone(&ranks, Instant::now());
    assert_eq!(code, Some(0), "mpiexec's status:\n{err}");
    assert!(
        took < Duration::from_secs(2),
        "mpiexec took {took:?} to exit after SIGINT"
    );
    eprintln!("SIGINT to mpiexec.hydra: exited after {took:?}, last rank gone {gone:?} later");
}

/// Hydra kills every process of the job with SIGKILL as soon as one dies (measured: the proxy
/// does so at once; with `-disable-auto-cleanup` the proxy itself fails on the dead process's
/// PMI socket and the job goes the same way), so rank 0 cannot tell its clients which rank was
/// lost, as it does under Open MPI and SLURM: the client sees the connection close. What bqrt
/// guarantees here: every rank gone within 10 s, and no client left waiting.
#[test]
fn kill_9_of_a_worker_ends_the_job_and_leaves_no_client_waiting() {
    if !mpich() {
        return;
    }
    let s = Serve::start_with(hydra(4), &[]);
    let mut c = s.client();
    let j = c.submit("sleep", "20000", LogSpec::OFF, false).unwrap();
    let launcher = s.child.as_ref().unwrap().id();
    let ranks = descendants(launcher);
    let victim = ranks
        .iter()
        .copied()
        .find(|&p| has_env(p, "PMI_RANK=3"))
        .expect("rank 3");
    let start = Instant::now();
    common::send_signal("KILL", &[victim]);
    let r = c.result(j, Some(Duration::from_secs(15)));
    assert!(r.is_err(), "the job survived its rank: {r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the client waited {:?}",
        start.elapsed()
    );
    let gone = common::wait_gone(&ranks, start);
    assert!(gone < Duration::from_secs(10), "ranks left after {gone:?}");
}

/// Under `srun --mpi=pmi2` (the Cray MPICH way) SLURM leaves the other tasks running when one
/// dies, so the runtime finds the lost rank itself and names it to its clients, as under Open
/// MPI.
#[test]
fn kill_9_of_a_worker_under_srun_names_the_lost_rank() {
    if !mpich() {
        return;
    }
    let _slurm = common::local_slurm();
    let name = format!("bqrt-mpich-lost-{}", std::process::id());
    let mut s = Serve::start_srun(|| common::srun_step(&name, &["--mpi=pmi2"]), &[]);
    let mut c = s.client();
    let j = c.submit("sleep", "20000", LogSpec::OFF, false).unwrap();
    let ranks = common::bqrt_processes_of_slurm_job(&name);
    assert_eq!(ranks.len(), 4, "the step's ranks: {ranks:?}");
    // rank 1: a worker of node 0 (the server leads node 0, rank 2 leads node 1)
    let victim = ranks
        .iter()
        .copied()
        .find(|&p| has_env(p, "SLURM_PROCID=1"))
        .expect("rank 1");
    let start = Instant::now();
    common::send_signal("KILL", &[victim]);
    match c.result(j, Some(Duration::from_secs(15))) {
        Err(bqrt::client::ClientError::Shutdown(reason)) => {
            assert!(reason.contains("rank 1 (worker on node 0)"), "{reason}")
        }
        other => panic!("the client should be told which rank was lost: {other:?}"),
    }
    let (code, _elapsed, stderr) = s.stop_by(|_| {});
    assert_ne!(code, Some(0), "{stderr}");
    let gone = common::wait_gone(&ranks, start);
    eprintln!("MPICH under srun: rank 1 killed, every rank gone after {gone:?}");
    assert!(gone < Duration::from_secs(10), "ranks left after {gone:?}");
}
