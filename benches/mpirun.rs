//! End-to-end benchmark under the real `mpirun`: built-in workloads, each run several times,
//! timed by rank 0 from job submission to result (`--stats` job_seconds; start-up excluded).
//!
//! `cargo bench --bench mpirun` (env `BQRT_BENCH_RUNS`, default 5; `BQRT_BENCH_RANKS`, default 3
//! = a server and 2 workers; `BQRT_BIN` to time another build). Prints a table and writes `target/bench-mpirun.json`. With the
//! default 3 ranks it checks the native targets (fanout 1M >= 500,000 tasks/s, chain <= 20
//! us/level, medians) and `mpirun -n 8 bqrt serve` ready within 1 s; it exits 1 when one is
//! missed.

use std::process::Command;
use std::time::Instant;

struct Workload {
    name: &'static str,
    task: &'static str,
    arg: &'static str,
    /// Units of work in one job (tasks, or levels for a chain).
    units: f64,
    unit: &'static str,
    /// The median's target with 3 ranks: (bound, whether the figure must be at least it).
    target: Option<(f64, bool)>,
}

/// Whether `median` meets `target`, and the words for it.
fn judge(median: f64, target: Option<(f64, bool)>) -> (bool, String) {
    match target {
        None => (true, String::new()),
        Some((bound, at_least)) => {
            let ok = if at_least {
                median >= bound
            } else {
                median <= bound
            };
            let op = if at_least { ">=" } else { "<=" };
            (
                ok,
                format!("{op} {bound}: {}", if ok { "met" } else { "MISSED" }),
            )
        }
    }
}

/// Seconds from `mpirun -n RANKS bqrt serve` to its ready file (W4); stopped with `bqrt shutdown`.
fn ready_seconds(bin: &str, ranks: u32) -> f64 {
    let dir = std::env::temp_dir().join(format!("bqrt-bench-ready-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {dir:?}: {e}"));
    let (ready, token) = (dir.join("ready"), dir.join("token"));
    let t0 = Instant::now();
    let mut child = mpirun(ranks)
        .arg(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .arg("--token-file")
        .arg(&token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run mpirun: {e}"));
    let addr = loop {
        if let Ok(s) = std::fs::read_to_string(&ready) {
            if s.ends_with('\n') {
                break s.trim().to_string();
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("bqrt serve exited before it was ready ({st})");
        }
        assert!(
            t0.elapsed().as_secs() < 60,
            "bqrt serve not ready within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let took = t0.elapsed().as_secs_f64();
    let stop = Command::new(bin)
        .args(["shutdown", "--server", &addr, "--token-file"])
        .arg(&token)
        .stdout(std::process::Stdio::null())
        .status();
    if !matches!(stop, Ok(s) if s.success()) {
        let _ = child.kill();
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    took
}

fn mpirun(ranks: u32) -> Command {
    let mut c = Command::new("mpirun");
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("OMPI_MCA_hwloc_base_binding_policy", "none")
        // kernel-chosen TCP ports: see launch/env.sh
        .env("OMPI_MCA_btl_tcp_port_min_v4", "0")
        .env("OMPI_MCA_btl_tcp_port_min_v6", "0")
        // no munge retries at start-up: see launch/env.sh
        .env("PMIX_MCA_psec", "native")
        .args(["-n", &ranks.to_string()]);
    c
}

fn job_seconds(bin: &str, ranks: u32, w: &Workload) -> f64 {
    let out = mpirun(ranks)
        .args([bin, "run", w.task, w.arg, "--stats"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run mpirun: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{} failed:\n{stderr}", w.name);
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("bqrt-stats job_seconds="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no job_seconds in:\n{stderr}"))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need
    let bin = std::env::var("BQRT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_bqrt").into());
    let bin = bin.as_str();
    let runs: usize = std::env::var("BQRT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let ranks: u32 = std::env::var("BQRT_BENCH_RANKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let workloads = [
        Workload {
            name: "W1 fanout 10k",
            task: "fanout",
            arg: "10000",
            units: 10_000.0,
            unit: "tasks/s",
            target: None,
        },
        Workload {
            name: "W1 fanout 100k",
            task: "fanout",
            arg: "100000",
            units: 100_000.0,
            unit: "tasks/s",
            target: None,
        },
        Workload {
            name: "W1 fanout 1M",
            task: "fanout",
            arg: "1000000",
            units: 1_000_000.0,
            unit: "tasks/s",
            target: Some((500_000.0, true)),
        },
        Workload {
            name: "W2 chain 200",
            task: "chain",
            arg: "200",
            units: 200.0,
            unit: "us/level",
            target: Some((20.0, false)),
        },
        Workload {
            name: "W2 chain 2000",
            task: "chain",
            arg: "2000",
            units: 2000.0,
            unit: "us/level",
            target: Some((20.0, false)),
        },
        Workload {
            name: "W3 tree 12",
            task: "tree",
            arg: "12",
            units: 8191.0,
            unit: "tasks/s",
            target: None,
        },
        Workload {
            name: "fib 20",
            task: "fib",
            arg: "20",
            units: 21891.0,
            unit: "tasks/s",
            target: None,
        },
    ];
    let host = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "bqrt end-to-end benchmark: {ranks} ranks (1 server + {} workers), {runs} runs each",
        ranks - 1
    );
    println!("machine: {cores} cores, {host}");
    println!(
        "{:<16} {:>12} {:>12} {:>12}  unit",
        "workload", "min", "median", "max"
    );
    let started = Instant::now();
    let mut json = Vec::new();
    let mut missed = false;
    for w in &workloads {
        // interleave nothing else: each workload's runs back to back, first run discarded as warm-up
        let _ = job_seconds(bin, ranks, w);
        let mut vals: Vec<f64> = (0..runs)
            .map(|_| {
                let s = job_seconds(bin, ranks, w);
                if w.unit == "tasks/s" {
                    w.units / s
                } else {
                    s * 1e6 / w.units
                }
            })
            .collect();
        vals.sort_by(|a, b| a.total_cmp(b));
        let (min, med, max) = (vals[0], vals[vals.len() / 2], vals[vals.len() - 1]);
        let (ok, verdict) = judge(med, w.target.filter(|_| ranks == 3));
        missed |= !ok;
        println!(
            "{:<16} {:>12.1} {:>12.1} {:>12.1}  {:<8} {verdict}",
            w.name, min, med, max, w.unit
        );
        json.push(format!(
            "{{\"workload\":\"{}\",\"unit\":\"{}\",\"min\":{min:.3},\"median\":{med:.3},\"max\":{max:.3}}}",
            w.name, w.unit
        ));
    }
    if ranks == 3 {
        // W4: start-up of 8 ranks, whatever BQRT_BENCH_RANKS says
        let mut vals: Vec<f64> = (0..runs).map(|_| ready_seconds(bin, 8)).collect();
        vals.sort_by(|a, b| a.total_cmp(b));
        let (min, med, max) = (vals[0], vals[vals.len() / 2], vals[vals.len() - 1]);
        let (ok, verdict) = judge(med, Some((1.0, false)));
        missed |= !ok;
        println!(
            "{:<16} {:>12.3} {:>12.3} {:>12.3}  {:<8} {verdict}",
            "W4 ready, 8 ranks", min, med, max, "s"
        );
        json.push(format!(
            "{{\"workload\":\"W4 ready, 8 ranks\",\"unit\":\"s\",\"min\":{min:.3},\"median\":{med:.3},\"max\":{max:.3}}}"
        ));
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-mpirun.json");
    let body = format!(
        "{{\"ranks\":{ranks},\"runs\":{runs},\"cores\":{cores},\"results\":[{}]}}\n",
        json.join(",")
    );
    if let Err(e) = std::fs::write(path, body) {
        eprintln!("cannot write {path}: {e}");
    }
    println!(
        "done in {:.1} s; figures in {path}",
        started.elapsed().as_secs_f64()
    );
    if missed {
        eprintln!("a target was missed (see the table)");
        std::process::exit(1);
    }
}
