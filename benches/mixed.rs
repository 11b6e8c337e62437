//! Mixed work: the latency of a short job while long tasks hold some workers, against the same
//! job on an idle runtime (`mpirun -n 4 bqrt serve`: a server and 3 workers).
//!
//! `cargo bench --bench mixed` (env `BQRT_BENCH_RUNS`, default 5; `BQRT_BIN` to time another
//! build, for a before/after comparison in one run). For each short job (`fib 15`, `tree 10`,
//! `fanout 50`) it times submit-to-result on the idle runtime, then again while one worker
//! runs a 20 s task: `sleep` (blocks its worker) and `spin` (burns its core, so on a small
//! machine it also takes CPU from the others). It prints the first run (after the same 300 ms
//! of quiet on both sides) and the median. Goal: beside a `sleep`, the first run within 2x of
//! the idle first run and the median within 2x of the idle median (exits 1 when missed). `spin` is reported, not judged: on 2 cores, a spinning worker leaves
//! one core to four ranks.

use bqrt::client::Client;
use bqrt::protocol::native::JobResult;
use bqrt::protocol::LogSpec;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHORT: [(&str, &str); 3] = [("fib", "15"), ("tree", "10"), ("fanout", "50")];

struct Server {
    child: Child,
    addr: String,
    token: String,
    dir: std::path::PathBuf,
}

impl Server {
    fn start(bin: &str) -> Server {
        let dir = std::env::temp_dir().join(format!("bqrt-bench-mixed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {dir:?}: {e}"));
        let (ready, token) = (dir.join("ready"), dir.join("token"));
        let child = Command::new("mpirun")
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
            .env("OMPI_MCA_hwloc_base_binding_policy", "none")
            .env("OMPI_MCA_btl_tcp_port_min_v4", "0")
            .env("OMPI_MCA_btl_tcp_port_min_v6", "0")
            // no munge retries at start-up: see launch/env.sh
            .env("PMIX_MCA_psec", "native")
            .args([
                "-n",
                "4",
                bin,
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--ready-file",
            ])
            .arg(&ready)
            .arg("--token-file")
            .arg(&token)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run mpirun: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            match std::fs::read_to_string(&ready) {
                Ok(s) if s.ends_with('\n') => break s.trim().to_string(),
                _ if Instant::now() > deadline => panic!("bqrt serve not ready in 60 s"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let token = std::fs::read_to_string(&token)
            .unwrap_or_else(|e| panic!("token file: {e}"))
            .trim()
            .to_string();
        Server {
            child,
            addr,
            token,
            dir,
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.addr, Some(self.token.clone()))
            .unwrap_or_else(|e| panic!("connect: {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.addr, Some(self.token.clone())) {
            let _ = c.shutdown();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Submit-to-result seconds of `task(arg)`: (the first run, the median over `runs`).
fn latency(c: &mut Client, task: &str, arg: &str, runs: usize) -> (f64, f64) {
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            let j = c
                .submit(task, arg, LogSpec::OFF, false)
                .unwrap_or_else(|e| panic!("submit: {e}"));
            match c.result(j, None) {
                Ok(JobResult::Done { .. }) => t0.elapsed().as_secs_f64(),
                other => panic!("{task} {arg}: {other:?}"),
            }
        })
        .collect();
    let first = v[0];
    v.sort_by(f64::total_cmp);
    (first, v[v.len() / 2])
}

/// Wait until some worker is busy with the long task.
fn wait_busy(c: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.top().map(|t| t.idle == t.workers).unwrap_or(true) {
        assert!(Instant::now() < deadline, "the long task did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300)); // past the occupied threshold
}

fn main() {
    let bin = std::env::var("BQRT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_bqrt").into());
    let runs: usize = std::env::var("BQRT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!("mixed work: short jobs beside a long task, mpirun -n 4 (server + 3 workers), {runs} runs each; {bin}");
    println!(
        "{:<12} {:>19} {:>22} {:>9} {:>22} {:>9}",
        "job",
        "idle s (1st/med)",
        "beside sleep (1st/med)",
        "ratio",
        "beside spin (1st/med)",
        "ratio"
    );
    let mut missed = false;
    for (task, arg) in SHORT {
        let idle = {
            let s = Server::start(&bin);
            let mut c = s.client();
            std::thread::sleep(Duration::from_millis(300)); // idle as long as the others wait
            latency(&mut c, task, arg, runs)
        };
        let mut beside = Vec::new();
        for long in ["sleep", "spin"] {
            let s = Server::start(&bin);
            let mut c = s.client();
            let _long = c
                .submit(long, "20000", LogSpec::OFF, true)
                .unwrap_or_else(|e| panic!("submit {long}: {e}"));
            wait_busy(&mut c);
            beside.push(latency(&mut c, task, arg, runs));
        }
        // first against first (both after the same idle wait), median against median
        let worst = |(first, med): (f64, f64)| (first / idle.0).max(med / idle.1);
        let (r_sleep, r_spin) = (worst(beside[0]), worst(beside[1]));
        let ok = r_sleep <= 2.0;
        missed |= !ok;
        println!(
            "{:<12} {:>8.4} / {:<8.4} {:>10.4} / {:<9.4} {:>8.2}x {:>10.4} / {:<9.4} {:>8.2}x  sleep <= 2x: {}",
            format!("{task} {arg}"),
            idle.0,
            idle.1,
            beside[0].0,
            beside[0].1,
            r_sleep,
            beside[1].0,
            beside[1].1,
            r_spin,
            if ok { "met" } else { "MISSED" }
        );
    }
    if missed {
        println!("a goal was missed (see the table)");
        std::process::exit(1);
    }
}
