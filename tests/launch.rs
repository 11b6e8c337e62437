//! Launching: without a launcher, the SLURM and PBS templates end to end.

mod common;
use common::{bare, run, wait_for, Run};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether this is the MPICH pass of launch/test.sh (the binary is built against MPICH).
fn mpich() -> bool {
    std::env::var("BQRT_TEST_MPI").is_ok_and(|v| v == "mpich")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin_dir() -> PathBuf {
    common::bqrt_bin().parent().unwrap().to_path_buf()
}

/// PATH with this build's bqrt first.
fn path_with_bqrt() -> String {
    format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn run_without_a_launcher_starts_its_own_runtime() {
    let r = run(
        bare(&["run", "fib", "12", "--workers", "2", "-v"]),
        Duration::from_secs(120),
    );
    r.ok();
    assert_eq!(r.last_line(), "144");
    assert!(
        r.stderr.contains("no launcher: starting 3 ranks"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.matches("role worker").count(), 2, "{}", r.stderr);
}

#[test]
fn a_missing_mpi_is_named() {
    let mut c = bare(&["run", "noop"]);
    c.env("PATH", "/nonexistent");
    let r = run(c, Duration::from_secs(30));
    assert_eq!(r.code, Some(2));
    let hint = match mpich() {
        true => "apt-get install mpich",
        false => "apt-get install openmpi-bin",
    };
    assert!(r.stderr.contains(hint), "{}", r.stderr);
}

#[test]
fn serve_without_a_launcher_ready_job_ctrl_c_clean_exit() {
    let dir = common::tempdir("embedded");
    let ready = dir.join("ready");
    let token = dir.join("token");
    let mut c = bare(&["serve", "--listen", "127.0.0.1:0", "--workers", "2"]);
    c.arg("--ready-file")
        .arg(&ready)
        .arg("--token-file")
        .arg(&token);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    wait_for("the ready file", Duration::from_secs(60), || {
        std::fs::read_to_string(&ready).is_ok_and(|s| s.ends_with('\n'))
    });
    let addr = std::fs::read_to_string(&ready).unwrap().trim().to_string();
    let tok = std::fs::read_to_string(&token).unwrap().trim().to_string();
    let mut client = bqrt::client::Client::connect(&addr, Some(tok)).unwrap();
    let job = client
        .submit("tree", "6", bqrt::protocol::LogSpec::OFF, false)
        .unwrap();
    match client.result(job, None).unwrap() {
        bqrt::protocol::native::JobResult::Done { value, .. } => assert_eq!(value, b"127"),
        other => panic!("{other:?}"),
    }
    let ranks = common::descendants(child.id());
    assert!(ranks.len() >= 3, "mpiexec and its ranks: {ranks:?}");
    // Ctrl-C: the terminal signals the foreground process (the ranks are in their own group)
    let t0 = Instant::now();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "did not stop within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    let printed = stdout.join().unwrap();
    assert!(printed.contains(&format!("bqrt ready {addr}")), "{printed}");
    wait_for("no process left", Duration::from_secs(5), || {
        common::all_gone(&ranks)
    });
    let _ = std::fs::remove_dir_all(dir);
}

fn client_script(exit: u32) -> String {
    format!(
        r#"bqrt submit spread '{{"outer":6,"inner":4,"ms":20}}' | xargs bqrt result; exit {exit}"#
    )
}

/// Ranks that ran the children, from the client's output line `[a,b,...]`.
fn ranks_used(out: &str) -> Vec<u32> {
    out.lines()
        .find(|l| l.starts_with('['))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default()
}

/// Roles from `-v` lines: rank -> node.
fn node_of(out: &str) -> std::collections::BTreeMap<u32, u32> {
    out.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.strip_prefix("bqrt: rank ")?.split_whitespace().collect();
            (w.len() >= 9 && w[1] == "role")
                .then(|| Some((w[0].parse().ok()?, w[4].parse().ok()?)))?
        })
        .collect()
}

fn check_spread_and_clean(out: &str, nodes: usize) {
    let used = ranks_used(out);
    let map = node_of(out);
    let covered: std::collections::BTreeSet<u32> =
        used.iter().filter_map(|r| map.get(r).copied()).collect();
    assert_eq!(
        covered.len(),
        nodes,
        "children on every node: {used:?} {map:?}\n{out}"
    );
    assert!(
        out.contains("bqrt: stopping"),
        "the runtime was stopped in order:\n{out}"
    );
}

#[test]
fn slurm_template_end_to_end() {
    let _slurm = common::local_slurm();
    let name = format!("bqrt-tpl-{}", std::process::id());
    for exit in [0, 7] {
        let (r, out) = common::with_startup_retries(|| {
            let outfile = common::tempdir("sbatch").join("out");
            let mut c = Command::new("sbatch");
            c.current_dir(repo())
                .args(["-J", &name])
                .env("PATH", path_with_bqrt())
                .env("BQRT_ARGS", "-v")
                .env("CLIENT", client_script(exit))
                .args([
                    "--wait",
                    "-N",
                    "2",
                    "--ntasks-per-node=3",
                    "--overcommit",
                    "--export=ALL",
                    "-o",
                ])
                .arg(&outfile)
                .arg("slurm/bqrt.sbatch");
            let r: Run = run(c, Duration::from_secs(180));
            let out = std::fs::read_to_string(&outfile).unwrap_or_default();
            match common::mpi_startup_crash(&out) {
                true => Err(out),
                false => Ok((r, out)),
            }
        });
        assert_eq!(
            r.code,
            Some(exit as i32),
            "the job's status is the client's\n{}\n{out}",
            r.stderr
        );
        check_spread_and_clean(&out, 2);
    }
    let left = common::processes_with_env(&format!("SLURM_JOB_NAME={name}"));
    assert!(left.is_empty(), "processes of the job left: {left:?}");
}

#[test]
fn pbs_template_end_to_end_with_a_faked_pbs_environment() {
    let dir = common::tempdir("pbs");
    let nodefile = dir.join("nodefile");
    std::fs::write(&nodefile, "pa\npa\npa\npb\npb\npb\n").unwrap();
    let mut c = Command::new("bash");
    c.arg(repo().join("pbs/bqrt.pbs"))
        .current_dir(&dir)
        .env("PATH", path_with_bqrt())
        .env("PBS_NODEFILE", &nodefile)
        .env("PBS_O_WORKDIR", repo())
        .env("PBS_JOBID", "1.fake")
        .env("BQRT_ARGS", "-v")
        .env("CLIENT", client_script(3))
        .env("UCX_LOG_LEVEL", "error");
    let fakessh = repo().join("launch/fakessh");
    match mpich() {
        // Hydra's mpiexec, its ssh launcher pointed at the fake hosts
        true => c.env("MPIEXEC", "mpiexec.hydra").env(
            "MPIEXEC_ARGS",
            format!("-launcher ssh -launcher-exec {}", fakessh.display()),
        ),
        false => c.env(
            "MPIEXEC_ARGS",
            format!(
                "--mca plm_rsh_agent {} --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo",
                fakessh.display()
            ),
        ),
    };
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("OMPI_MCA_hwloc_base_binding_policy", "none");
    let r = run(c, Duration::from_secs(180));
    assert_eq!(
        r.code,
        Some(3),
        "the job's status is the client's\n{}\n{}",
        r.stdout,
        r.stderr
    );
    check_spread_and_clean(&format!("{}\n{}", r.stdout, r.stderr), 2);
    let _ = std::fs::remove_dir_all(dir);
}

/// The interactive recipe of docs/getting-started.md, run non-interactively through salloc.
#[test]
fn salloc_recipe_from_the_docs() {
    let _slurm = common::local_slurm();
    let dir = common::tempdir("salloc");
    // the recipe's srun line, with the PMI an MPICH build needs (getting-started, "Which MPI")
    let srun = match mpich() {
        true => "srun --mpi=pmi2",
        false => "srun",
    };
    let script = r#"
set -e
SRUN bqrt serve --ready-file ready --listen 127.0.0.1:0 --token-file token &
until [ -s ready ]; do kill -0 $! || { wait $!; exit 1; }; sleep 0.2; done
export BQRT_SERVER=$(cat ready) BQRT_TOKEN_FILE=token
bqrt submit fib 16 | xargs bqrt result
bqrt shutdown
wait
"#
    .replace("SRUN", srun);
    let r = common::run_srun(
        || {
            let _ = std::fs::remove_file(dir.join("ready"));
            let mut c = Command::new("salloc");
            c.current_dir(&dir).env("PATH", path_with_bqrt()).args([
                "-N",
                "2",
                "--ntasks-per-node=2",
                "--overcommit",
                "bash",
                "-c",
                &script,
            ]);
            c
        },
        Duration::from_secs(120),
    );
    assert!(
        r.stdout.lines().any(|l| l.trim() == "987"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    let _ = std::fs::remove_dir_all(dir);
}
