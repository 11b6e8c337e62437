//! Cluster shape and process control on several (fake or SLURM virtual) nodes: roles, the
//! manager tree, pinning, placement across nodes, worker environment, crashes, idle cost.

mod common;
use bqrt::client::{Client, ClientError};
use bqrt::protocol::native::JobState;
use bqrt::protocol::LogSpec;
use common::{bqrt, run, wait_for, Run, Serve};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `launch/cluster.sh NODES PER -- bqrt ARGS...` (fake hosts, one UTS namespace each).
fn fake(nodes: u32, per: u32) -> Command {
    let mut c = Command::new(repo().join("launch/cluster.sh"));
    c.args([nodes.to_string(), per.to_string(), "--".into()]);
    c
}

fn fake_bqrt(nodes: u32, per: u32, args: &[&str]) -> Run {
    let mut c = fake(nodes, per);
    c.arg(common::bqrt_bin()).args(args);
    run(c, Duration::from_secs(120))
}

/// The `-v` role map: rank -> (role, node, core, parent).
fn roles(stderr: &str) -> BTreeMap<u32, (String, u32, String, String)> {
    stderr
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.strip_prefix("bqrt: rank ")?.split_whitespace().collect();
            // "R role ROLE node N core C parent P"
            if w.len() < 9 || w[1] != "role" {
                return None;
            }
            Some((
                w[0].parse().ok()?,
                (
                    w[2].to_string(),
                    w[4].parse().ok()?,
                    w[6].to_string(),
                    w[8].to_string(),
                ),
            ))
        })
        .collect()
}

/// Depth of each rank in the tree (server 0).
fn depth(map: &BTreeMap<u32, (String, u32, String, String)>, r: u32) -> u32 {
    match map[&r].3.parse::<u32>() {
        Ok(p) => 1 + depth(map, p),
        Err(_) => 0,
    }
}

/// The job every shape test runs: a 2-level map, with the role map printed, fan-out 2.
const SHAPE_ARGS: [&str; 6] = [
    "run",
    "spread",
    r#"{"outer":8,"inner":6,"ms":15}"#,
    "-v",
    "--fanout",
    "2",
];

fn check_shape(nodes: u32, per: u32) {
    check_shape_of(&fake_bqrt(nodes, per, &SHAPE_ARGS), nodes, per);
}

/// Roles, tree, pinning map and placement of a `SHAPE_ARGS` run on `nodes` nodes of `per` ranks.
fn check_shape_of(r: &Run, nodes: u32, per: u32) {
    r.ok();
    let map = roles(&r.stderr);
    assert_eq!(map.len() as u32, nodes * per, "{}", r.stderr);
    assert_eq!(map[&0].0, "server");
    let server_links = map.values().filter(|v| v.3 == "0").count();
    assert!(
        server_links <= 2,
        "--fanout 2 bounds the server's employees: {map:?}"
    );
    for n in 0..nodes {
        let mgrs = map
            .values()
            .filter(|v| v.1 == n && v.0 == "manager")
            .count();
        assert!(mgrs >= 1, "node {n} has a manager: {map:?}");
        // every worker's boss is a manager of its own node
        for (rank, v) in map.iter().filter(|(_, v)| v.1 == n && v.0 == "worker") {
            let boss = &map[&v.3.parse::<u32>().unwrap()];
            assert!(
                boss.0 == "manager" && boss.1 == n,
                "worker {rank} on node {n} reports to {boss:?}"
            );
        }
    }
    if nodes > 2 {
        assert!(
            map.keys().any(|&k| depth(&map, k) >= 3),
            "managers of managers expected: {map:?}"
        );
    }
    // pinning map: workers of a node on distinct cores while they fit (2 cores per machine here)
    for n in 0..nodes {
        let cores: Vec<&String> = map
            .values()
            .filter(|v| v.1 == n && v.0 == "worker")
            .map(|v| &v.2)
            .collect();
        assert!(
            cores.iter().all(|c| c.parse::<u32>().is_ok()),
            "workers are pinned: {cores:?}"
        );
        if cores.len() <= 2 {
            let mut d = cores.clone();
            d.dedup();
            assert_eq!(
                d.len(),
                cores.len(),
                "distinct cores on node {n}: {cores:?}"
            );
        }
    }
    // the children of a 2-level map ran on workers of every node
    let ran: Vec<u32> = serde_json::from_str(r.last_line()).unwrap();
    let nodes_used: std::collections::BTreeSet<u32> = ran.iter().map(|r| map[r].1).collect();
    assert_eq!(
        nodes_used.len() as u32,
        nodes,
        "ranks {ran:?} cover every node ({map:?})"
    );
}

#[test]
fn three_fake_nodes() {
    check_shape(3, 3);
}

#[test]
fn four_fake_nodes() {
    check_shape(4, 3);
}

#[test]
fn workers_get_their_gpu_blas_threads_and_core() {
    let r = bqrt(
        5,
        &[
            "run",
            "env_all",
            "60",
            "--gpus-per-node",
            "2",
            "--blas-threads",
            "3",
            "-v",
        ],
    );
    r.ok();
    let probes: Vec<serde_json::Value> = serde_json::from_str(r.last_line()).unwrap();
    let map = roles(&r.stderr);
    assert_eq!(probes.len(), 4, "every worker answered: {probes:?}");
    for (i, p) in probes.iter().enumerate() {
        let rank = p["rank"].as_u64().unwrap() as u32;
        assert_eq!(p["cuda_visible_devices"], (i % 2).to_string(), "{p}");
        assert_eq!(p["omp_num_threads"], "3");
        assert_eq!(p["openblas_num_threads"], "3");
        assert_eq!(
            p["cpus"], map[&rank].2,
            "the probe runs on the core the map shows"
        );
    }
    let r = bqrt(3, &["run", "env_all", "20", "--no-pin"]);
    r.ok();
    let probes: Vec<serde_json::Value> = serde_json::from_str(r.last_line()).unwrap();
    assert!(probes
        .iter()
        .all(|p| p["cuda_visible_devices"].is_null() && p["omp_num_threads"] == "1"));
    let r = bqrt(4, &["run", "noop", "--cpus", "0"]);
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("--cpus"), "{}", r.stderr);
}

/// A client with a running job whose children take `ms` each.
fn long_spread(s: &Serve, ms: u64) -> (Client, bqrt::protocol::JobId) {
    let mut c = Client::connect(&s.addr, Some(s.token())).unwrap();
    let args = format!(r#"{{"outer":6,"inner":6,"ms":{ms}}}"#);
    let job = c.submit("spread", &args, LogSpec::OFF, false).unwrap();
    (c, job)
}

fn lost_test(mut s: Serve, victim_rank: u32, role: &str) {
    let (mut c, job) = long_spread(&s, 2000);
    wait_for("the job to run", Duration::from_secs(30), || {
        c.status(job).unwrap().state == JobState::Running
    });
    let launcher = s.child.as_ref().unwrap().id();
    let all: Vec<u32> = common::descendants(launcher)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .map(|c| c.contains("bqrt"))
                .unwrap_or(false)
        })
        .collect();
    // the victim: the rank process with this rank number (ranks' pids sorted follow rank order
    // within a launch, so find it by its environment instead)
    let victim = all
        .iter()
        .copied()
        .find(|&p| common::has_env(p, &format!("OMPI_COMM_WORLD_RANK={victim_rank}")))
        .expect("victim process");
    let _ = Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status();
    let t0 = std::time::Instant::now();
    let told = c.result(job, None);
    // the launcher ends by itself (no signal from the test)
    let (code, _elapsed, stderr) = s.stop_by(|_| {});
    // the client hears about the lost rank (not merely that the server stopped)
    match told {
        Err(ClientError::Shutdown(reason)) => {
            assert!(
                reason.contains(&format!("rank {victim_rank} ({role}")),
                "{reason}\n{stderr}"
            );
        }
        other => panic!("client got {other:?}\n{stderr}"),
    }
    assert_ne!(code, Some(0));
    wait_for("every rank gone", Duration::from_secs(10), || {
        common::all_gone(&all)
    });
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    // the ranks say why they stop, unless Open MPI's abort (which names the rank too) cut
    // their output off
    let ours = stderr.contains(&format!("rank {victim_rank} ({role}"));
    let launchers = stderr.contains(&format!(",{victim_rank}]"));
    assert!(ours || launchers, "no error names the lost rank:\n{stderr}");
}

#[test]
fn killing_a_worker_stops_everything_with_an_error_naming_it() {
    lost_test(Serve::start(5, &[]), 3, "worker on node 0");
}

#[test]
fn killing_a_manager_stops_everything_with_an_error_naming_it() {
    // 2 fake nodes of 3 ranks: rank 3 is node 1's manager
    lost_test(Serve::start_with(fake(2, 3), &[]), 3, "manager on node 1");
}

#[test]
fn an_idle_runtime_costs_under_2_percent_of_a_core() {
    let s = Serve::start(8, &[]);
    let launcher = s.child.as_ref().unwrap().id();
    let ranks: Vec<u32> = common::descendants(launcher);
    assert_eq!(ranks.len(), 8);
    let ticks = || -> u64 {
        ranks
            .iter()
            .map(|p| {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                let f: Vec<u64> = stat
                    .rsplit_once(')')
                    .map(|(_, r)| {
                        r.split_whitespace()
                            .filter_map(|x| x.parse().ok())
                            .collect()
                    })
                    .unwrap_or_default();
                // utime and stime are fields 14 and 15 (11th and 12th after the state)
                f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)
            })
            .sum()
    };
    // settle after start-up, then measure 10 s
    std::thread::sleep(Duration::from_secs(2));
    let a = ticks();
    std::thread::sleep(Duration::from_secs(10));
    let b = ticks();
    let hz = 100.0; // USER_HZ on Linux
    let share = (b - a) as f64 / hz / 10.0;
    eprintln!(
        "idle: 8 ranks used {:.2}% of one core over 10 s",
        share * 100.0
    );
    assert!(
        share < 0.02,
        "idle runtime used {:.2}% of one core",
        share * 100.0
    );
    // and it still answers at once
    let mut c = Client::connect(&s.addr, Some(s.token())).unwrap();
    let j = c.submit("fib", "10", LogSpec::OFF, false).unwrap();
    assert!(matches!(
        c.result(j, Some(Duration::from_secs(20))).unwrap(),
        bqrt::protocol::native::JobResult::Done { .. }
    ));
}

#[test]
fn srun_on_virtual_nodes() {
    let _slurm = common::local_slurm();
    let r = common::run_srun(
        || {
            let mut c = Command::new("srun");
            c.args(["-N", "3", "--ntasks-per-node=3", "--overcommit"])
                .arg(common::bqrt_bin())
                .args(SHAPE_ARGS);
            c
        },
        Duration::from_secs(120),
    );
    check_shape_of(&r, 3, 3);
}

/// How a SLURM step is stopped from outside, in the tests below.
#[derive(Clone, Copy, Debug)]
enum StepStop {
    /// `scancel --signal=INT`: SIGINT to every task, as a batch system's stop does.
    ScancelInt,
    /// `scancel`: SLURM's own end of a job (SIGCONT and SIGTERM to every task, SIGKILL after
    /// `KillWait`).
    Scancel,
    /// A signal to `srun` itself (Ctrl-C twice in its terminal, or `kill`).
    Srun(&'static str),
    /// One Ctrl-C to `srun --disable-status` (or `SLURM_DISABLE_STATUS=1`), which forwards it
    /// to every task as SIGINT.
    SrunDisableStatus,
}

#[test]
fn stopping_a_slurm_step_stops_every_rank_in_order() {
    let _slurm = common::local_slurm();
    for how in [
        StepStop::ScancelInt,
        StepStop::Scancel,
        StepStop::Srun("INT"),
        StepStop::Srun("TERM"),
        StepStop::SrunDisableStatus,
    ] {
        let name = format!("bqrt-test-{}", std::process::id());
        let flags: &[&str] = match how {
            StepStop::SrunDisableStatus => &["--disable-status"],
            _ => &[],
        };
        let mut s = Serve::start_srun(|| common::srun_step(&name, flags), &[]);
        let mut cl = Client::connect(&s.addr, Some(s.token())).unwrap();
        let j = cl.submit("spin", "60000", LogSpec::OFF, false).unwrap();
        wait_for("the spin to run", Duration::from_secs(30), || {
            cl.status(j).unwrap().state == JobState::Running
        });
        let ranks = common::bqrt_processes_of_slurm_job(&name);
        assert_eq!(ranks.len(), 4, "{how:?}: the step's ranks: {ranks:?}");
        // the ranks' part is from the signal (or scancel's return) to their exit; srun collecting
        // the step's end comes on top and is SLURM's
        let stopped = s.stop_timed(&ranks, |srun_pid| {
            match how {
                StepStop::ScancelInt => {
                    let _ = Command::new("scancel")
                        .args(["--signal=INT", "-n", &name])
                        .status();
                }
                StepStop::Scancel => {
                    let _ = Command::new("scancel").args(["-n", &name]).status();
                }
                StepStop::Srun("INT") => {
                    // srun reports the step's state at a first Ctrl-C and stops it at a second
                    // within a second, as it says
                    common::send_signal("INT", &[srun_pid]);
                    std::thread::sleep(Duration::from_millis(200));
                    common::send_signal("INT", &[srun_pid]);
                }
                StepStop::Srun(sig) => common::send_signal(sig, &[srun_pid]),
                StepStop::SrunDisableStatus => common::send_signal("INT", &[srun_pid]),
            }
            std::time::Instant::now()
        });
        let common::Stopped {
            code,
            last_rank: took,
            left,
            stderr,
            ..
        } = stopped;
        eprintln!("{how:?}: ranks exited {took:?} after the stop; srun status {code:?}");
        assert!(
            left.is_empty(),
            "{how:?}: ranks {left:?} outlived srun\n{stderr}"
        );
        assert!(
            took < Duration::from_secs(2),
            "{how:?}: took {took:?}:\n{stderr}"
        );
        // srun itself, at a second Ctrl-C or at SIGTERM, kills every task with SIGKILL (status
        // 137; docs/decisions.md, 38): nothing can tell clients then, but nothing is left either
        if !matches!(how, StepStop::Srun(_)) {
            match common::shutdown_reason(&mut cl, j) {
                Ok(reason) => assert!(reason.contains("stop signal"), "{how:?}: {reason}"),
                Err(other) => panic!("{how:?}: the client was not told why: {other}"),
            }
        }
        if matches!(
            how,
            StepStop::ScancelInt | StepStop::Scancel | StepStop::SrunDisableStatus
        ) {
            assert_eq!(
                code,
                Some(0),
                "{how:?}: srun reports the ranks' status:\n{stderr}"
            );
        }
    }
}

#[test]
fn a_panic_in_runtime_code_is_a_lost_rank_not_a_hang() {
    let mut cmd = common::mpirun(5);
    cmd.env("BQRT_FAULT", "panic@2+1500");
    let mut s = Serve::start_with(cmd, &[]);
    let (mut c, job) = long_spread(&s, 3000);
    let t0 = std::time::Instant::now();
    match c.result(job, None) {
        Err(ClientError::Shutdown(reason)) => {
            assert!(reason.contains("rank 2 (worker"), "{reason}")
        }
        other => panic!("client got {other:?}"),
    }
    let (code, _elapsed, stderr) = s.stop_by(|_| {});
    assert_ne!(code, Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert!(
        stderr.contains("injected fault"),
        "the panic is reported loudly:\n{stderr}"
    );
}

#[test]
fn a_binding_set_by_the_launcher_is_respected() {
    let mut c = common::mpirun(2);
    // mpirun binds each rank to a core itself here; bqrt must leave that binding alone
    c.env("OMPI_MCA_hwloc_base_binding_policy", "core")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "0");
    c.arg(common::bqrt_bin())
        .args(["run", "env_all", "4", "-v"]);
    let r = run(c, Duration::from_secs(60));
    r.ok();
    let map = roles(&r.stderr);
    assert_eq!(map[&1].2, "-", "the worker was not re-pinned: {map:?}");
    let probes: Vec<serde_json::Value> = serde_json::from_str(r.last_line()).unwrap();
    assert_eq!(probes.len(), 1);
    let cpus = probes[0]["cpus"].as_str().unwrap();
    assert!(
        !cpus.contains('-') && !cpus.contains(','),
        "bound by mpirun to one core: {cpus}"
    );
}

/// A rank that never reaches start-up (stuck before node discovery) must not leave the others
/// blocked in a collective: every rank gives up after the start-up timeout, names the phase, and
/// the job ends with an error.
fn check_startup_gives_up(launcher: impl Fn() -> Command) {
    let r = common::with_startup_retries(|| {
        let mut cmd = launcher();
        cmd.env("BQRT_FAULT", "stall@1")
            .env("BQRT_STARTUP_TIMEOUT", "2")
            .arg(common::bqrt_bin())
            .args(["run", "noop", "null"]);
        let r = run(cmd, Duration::from_secs(60));
        // the ranks that gave up leave their peers' MPI complaining; retry only when bqrt never
        // got to say anything
        match common::mpi_startup_crash(&r.stderr) && !r.stderr.contains("start-up did not") {
            true => Err(r.stderr),
            false => Ok(r),
        }
    });
    assert_ne!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("rank 0: start-up did not finish within 2 s while finding the job's nodes"),
        "rank 0 names the phase:\n{}",
        r.stderr
    );
    assert!(r.stderr.contains("BQRT_STARTUP_TIMEOUT"), "{}", r.stderr);
    assert!(
        r.elapsed < Duration::from_secs(30),
        "took {:?}:\n{}",
        r.elapsed,
        r.stderr
    );
}

#[test]
fn a_rank_that_never_arrives_ends_start_up_with_an_error() {
    check_startup_gives_up(|| common::mpirun(3));
}

#[test]
fn a_rank_that_never_arrives_under_srun_ends_the_step() {
    let _slurm = common::local_slurm();
    check_startup_gives_up(|| {
        let mut c = Command::new("srun");
        c.args(["-N", "2", "--ntasks-per-node=2", "--overcommit"]);
        c
    });
}

/// The hook log: (kind, node, host, nanoseconds since the epoch) per line.
fn hook_lines(log: &std::path::Path) -> Vec<(String, u32, String, u128)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some((
                w.first()?.to_string(),
                w.get(1)?.parse().ok()?,
                w.get(2)?.to_string(),
                w.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}

fn epoch_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[test]
fn node_hooks_run_once_per_node_set_up_before_the_workers_tear_down_after() {
    let dir = common::tempdir("hooks");
    let log = dir.join("hooks.log");
    let line = |kind: &str| {
        format!(
            "echo \"{kind} $BQRT_NODE $(hostname) $(date +%s%N) $BQRT_NODE_WORKERS\" >> {}",
            log.display()
        )
    };
    let setup = format!("sleep 0.3; {}", line("setup"));
    let teardown = line("teardown");
    let before = epoch_ns();
    let mut s = Serve::start_with(
        fake(3, 3),
        &["--node-setup", &setup, "--node-teardown", &teardown],
    );
    let ready = epoch_ns();
    let lines = hook_lines(&log);
    assert_eq!(
        lines.len(),
        3,
        "one set-up per node, all done when ready: {lines:?}"
    );
    let mut nodes: Vec<u32> = lines.iter().map(|l| l.1).collect();
    nodes.sort();
    assert_eq!(nodes, vec![0, 1, 2]);
    let hosts: std::collections::BTreeSet<&String> = lines.iter().map(|l| &l.2).collect();
    assert_eq!(hosts.len(), 3, "each on its own host: {lines:?}");
    assert!(lines
        .iter()
        .all(|l| l.0 == "setup" && l.3 > before && l.3 < ready));
    // the workers run tasks; no tear-down yet
    let mut c = s.client();
    let j = c.submit("fib", "15", LogSpec::OFF, false).unwrap();
    assert_eq!(
        common::done(c.result(j, None).unwrap()),
        serde_json::json!(610)
    );
    let finished = epoch_ns();
    assert_eq!(hook_lines(&log).len(), 3);
    c.shutdown().unwrap();
    let (code, _, stderr) = s.stop_by(|_| {});
    assert_eq!(code, Some(0), "{stderr}");
    let lines = hook_lines(&log);
    let downs: Vec<_> = lines.iter().filter(|l| l.0 == "teardown").collect();
    assert_eq!(downs.len(), 3, "one tear-down per node: {lines:?}");
    assert!(downs.iter().all(|l| l.3 > finished));
}

#[test]
fn a_failing_node_set_up_stops_start_up_with_its_output() {
    let hook = "test $BQRT_NODE != 1 || { echo mps-daemon-failed >&2; exit 3; }";
    let t0 = std::time::Instant::now();
    let r = fake_bqrt(3, 2, &["run", "fib", "10", "--node-setup", hook]);
    assert_ne!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("node 1")
            && r.stderr.contains("--node-setup")
            && r.stderr.contains("mps-daemon-failed")
            && r.stderr.contains("exit status: 3"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("55"), "no job ran: {}", r.stdout);
    assert!(t0.elapsed() < Duration::from_secs(60));
}

/// One probe per worker rank (`env_all`), by rank.
fn probes(c: &mut Client, n: u32) -> BTreeMap<u64, serde_json::Value> {
    let j = c
        .submit("env_all", &n.to_string(), LogSpec::OFF, false)
        .unwrap();
    let all = common::done(c.result(j, None).unwrap());
    all.as_array()
        .unwrap()
        .iter()
        .map(|p| (p["rank"].as_u64().unwrap(), p.clone()))
        .collect()
}

#[test]
fn worker_groups_give_each_worker_its_group_environment_on_every_node() {
    let gpu = "gpu workers=2 gpus=2 offers=gpu=1 env.CUDA_VISIBLE_DEVICES={gpu} env.XLA_PYTHON_CLIENT_PREALLOCATE=false";
    // 2 fake nodes of 6 ranks: node 0 has the server and a manager, node 1 a manager
    let mut s = Serve::start_with(
        fake(2, 6),
        &["-v", "--group", gpu, "--group", "cpu workers=rest"],
    );
    let mut c = s.client();
    let mut by_rank = BTreeMap::new();
    wait_for("a probe from every worker", Duration::from_secs(60), || {
        by_rank.extend(probes(&mut c, 90));
        by_rank.len() >= 9
    });
    assert_eq!(by_rank.len(), 9, "{by_rank:?}");
    // bqrt top shows the groups per node
    let top = common::bare(&[
        "top",
        "--once",
        "--interval",
        "0.1",
        "--server",
        &s.addr,
        "--token-file",
    ])
    .arg(&s.token_file)
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&top.stdout);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() == 5 && (w[1] == "gpu" || w[1] == "cpu"))
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["0", "gpu", "2", "1", "gpu=1"],
            vec!["0", "cpu", "2", "1", "-"],
            vec!["1", "gpu", "2", "1", "gpu=1"],
            vec!["1", "cpu", "3", "1", "-"],
        ],
        "{text}"
    );
    c.shutdown().unwrap();
    let (code, _, stderr) = s.stop_by(|_| {});
    assert_eq!(code, Some(0), "{stderr}");
    let map = roles(&stderr);
    // -v names each worker's group, then the groups per node
    assert_eq!(stderr.matches(" group gpu\n").count(), 4, "{stderr}");
    assert_eq!(stderr.matches(" group cpu\n").count(), 5, "{stderr}");
    assert!(
        stderr.contains("bqrt: node 1 group cpu workers 3 cores 1 offers -")
            && stderr.contains("bqrt: node 0 group gpu workers 2 cores 1 offers gpu=1"),
        "{stderr}"
    );
    let mut seen: BTreeMap<(u32, String), Vec<serde_json::Value>> = BTreeMap::new();
    for (rank, p) in &by_rank {
        let node = map[&(*rank as u32)].1;
        let group = p["group"].as_str().unwrap_or("?").to_string();
        match group.as_str() {
            "gpu" => {
                assert_eq!(p["resources"], "gpu=1", "{p}");
                assert_eq!(p["xla_python_client_preallocate"], "false", "{p}");
            }
            "cpu" => assert_eq!(p["resources"], "", "{p}"),
            other => panic!("rank {rank} in group {other:?}"),
        }
        seen.entry((node, group))
            .or_default()
            .push(p["cuda_visible_devices"].clone());
    }
    for node in [0, 1] {
        let mut gpus: Vec<String> = seen[&(node, "gpu".to_string())]
            .iter()
            .map(|v| v.to_string())
            .collect();
        gpus.sort();
        assert_eq!(gpus, vec!["\"0\"", "\"1\""], "node {node}: {seen:?}");
        let cpus = &seen[&(node, "cpu".to_string())];
        assert!(cpus.iter().all(|v| v.is_null()), "{seen:?}");
    }
    assert_eq!(seen[&(0, "cpu".into())].len(), 2);
    assert_eq!(seen[&(1, "cpu".into())].len(), 3);
}

#[test]
fn a_worker_of_k_cores_is_pinned_to_k_cores_and_its_blas_sees_k_threads() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let cores: std::collections::BTreeSet<u32> = (0..cpus).map(core_of).collect();
    if cores.len() < 2 {
        eprintln!("skipped: this machine has one core");
        return;
    }
    let r = bqrt(
        3,
        &[
            "run",
            "env_all",
            "40",
            "--group",
            "wide workers=1 cores=2",
            "--group",
            "one workers=rest",
        ],
    );
    r.ok();
    let probes: Vec<serde_json::Value> = serde_json::from_str(r.last_line()).unwrap();
    assert_eq!(probes.len(), 2, "{probes:?}");
    let mut groups = Vec::new();
    for p in &probes {
        let group = p["group"].as_str().unwrap_or("?");
        groups.push(group.to_string());
        let k = if group == "wide" { 2 } else { 1 };
        let cpus = bqrt::topology::pinning::parse_cpus(p["cpus"].as_str().unwrap()).unwrap();
        let on_cores: std::collections::BTreeSet<u32> = cpus.iter().map(|&c| core_of(c)).collect();
        assert_eq!(on_cores.len(), k, "group {group}: {p}");
        assert_eq!(p["omp_num_threads"], k.to_string(), "{p}");
        assert_eq!(p["openblas_num_threads"], k.to_string(), "{p}");
    }
    groups.sort();
    assert_eq!(groups, vec!["one", "wide"]);
}

/// The core a cpu belongs to (its sysfs core id and package).
fn core_of(cpu: u32) -> u32 {
    let read = |what: &str| {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{what}"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(cpu)
    };
    read("physical_package_id") * 65536 + read("core_id")
}

#[test]
fn groups_that_do_not_fit_a_node_stop_start_up_naming_the_node_once() {
    let r = fake_bqrt(
        2,
        4,
        &[
            "run",
            "fib",
            "10",
            "--group",
            "gpu workers=3",
            "--group",
            "cpu workers=1",
        ],
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert_eq!(
        r.stderr
            .matches("worker groups: node 0 runs 2 workers but the groups take 4")
            .count(),
        1,
        "said once: {}",
        r.stderr
    );
    assert!(r.stderr.contains("workers=rest"), "{}", r.stderr);
    let r = bqrt(
        2,
        &["run", "fib", "10", "--group", "gpu workers=1 env.X={gpux}"],
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("--group: group \"gpu\"") && r.stderr.contains("unknown template {gpux}"),
        "{}",
        r.stderr
    );
}

/// `(rank, group, CUDA_VISIBLE_DEVICES, probes)` rows of a `resource_mix` report.
fn mix_rows(v: &serde_json::Value) -> Vec<(u64, String, String, u64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_u64().unwrap(),
                r[1].as_str().unwrap().to_string(),
                r[2].as_str().unwrap().to_string(),
                r[3].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn tasks_that_need_a_gpu_run_only_on_gpu_group_workers_on_two_nodes() {
    let gpu = "gpu workers=2 gpus=2 offers=gpu=1 env.CUDA_VISIBLE_DEVICES={gpu}";
    let mut s = Serve::start_with(fake(2, 6), &["--group", gpu, "--group", "cpu workers=rest"]);
    let mut c = s.client();
    let args = r#"{"n": 1000, "needs": "gpu", "ms": 0, "batch": 100}"#;
    let j = c.submit("resource_mix", args, LogSpec::OFF, false).unwrap();
    let r = common::done(c.result(j, Some(Duration::from_secs(120))).unwrap());
    let needing = mix_rows(&r["needing"]);
    let free = mix_rows(&r["free"]);
    let total = |rows: &[(u64, String, String, u64)]| rows.iter().map(|x| x.3).sum::<u64>();
    assert_eq!(total(&needing), 1000, "{r}");
    assert_eq!(total(&free), 1000, "{r}");
    assert!(
        needing
            .iter()
            .all(|x| x.1 == "gpu" && (x.2 == "0" || x.2 == "1")),
        "every task that needs a gpu ran on a gpu worker: {needing:?}"
    );
    assert_eq!(needing.len(), 4, "on all four gpu workers: {needing:?}");
    let kinds: std::collections::BTreeSet<&str> = free.iter().map(|x| x.1.as_str()).collect();
    assert!(kinds.contains("cpu"), "{free:?}");
    // tasks that need nothing run on both kinds: idle gpu workers take them too
    let j = c
        .submit(
            "resource_mix",
            r#"{"n": 200, "needs": "", "ms": 5}"#,
            LogSpec::OFF,
            false,
        )
        .unwrap();
    let r = common::done(c.result(j, Some(Duration::from_secs(120))).unwrap());
    let anywhere: Vec<_> = mix_rows(&r["needing"])
        .into_iter()
        .chain(mix_rows(&r["free"]))
        .collect();
    assert_eq!(total(&anywhere), 400);
    let kinds: std::collections::BTreeSet<&str> = anywhere.iter().map(|x| x.1.as_str()).collect();
    assert_eq!(kinds, ["cpu", "gpu"].into(), "{anywhere:?}");
    // a requirement no worker meets fails at submit, naming it; the runtime keeps serving
    let bad = r#"{"n": 3, "needs": "tpu"}"#;
    let j = c.submit("resource_mix", bad, LogSpec::OFF, false).unwrap();
    match c.result(j, Some(Duration::from_secs(60))).unwrap() {
        bqrt::protocol::native::JobResult::Failed(f) => {
            let message = f.message;
            assert!(
                message.contains("\"tpu\"") && message.contains("offers=tpu"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let j = c.submit("fib", "15", LogSpec::OFF, false).unwrap();
    assert_eq!(
        common::done(c.result(j, None).unwrap()),
        serde_json::json!(610)
    );
    c.shutdown().unwrap();
    let (code, _, stderr) = s.stop_by(|_| {});
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("runtime bug"), "{stderr}");
}
