//! End-to-end benchmark under the real `mpirun`: built-in workloads, each run several times,
//! timed by rank 0 from job submission to result (`--stats` job_seconds; start-up excluded).
//!
//! `cargo bench --bench mpirun` (env `BQRT_BENCH_RUNS`, default 5; `BQRT_BENCH_RANKS`, default 3
//! = a server and 2 workers). Prints a table and writes `target/bench-mpirun.json`.

use std::process::Command;
use std::time::Instant;

struct Workload {
    name: &'static str,
    task: &'static str,
    arg: &'static str,
    /// Units of work in one job (tasks, or levels for a chain).
    units: f64,
    unit: &'static str,
}

fn job_seconds(bin: &str, ranks: u32, w: &Workload) -> f64 {
    let out = Command::new("mpirun")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("OMPI_MCA_hwloc_base_binding_policy", "none")
        .args([
            "-n",
            &ranks.to_string(),
            bin,
            "run",
            w.task,
            w.arg,
            "--stats",
        ])
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
    let bin = env!("CARGO_BIN_EXE_bqrt");
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
        },
        Workload {
            name: "W1 fanout 100k",
            task: "fanout",
            arg: "100000",
            units: 100_000.0,
            unit: "tasks/s",
        },
        Workload {
            name: "W1 fanout 1M",
            task: "fanout",
            arg: "1000000",
            units: 1_000_000.0,
            unit: "tasks/s",
        },
        Workload {
            name: "W2 chain 200",
            task: "chain",
            arg: "200",
            units: 200.0,
            unit: "us/level",
        },
        Workload {
            name: "W2 chain 2000",
            task: "chain",
            arg: "2000",
            units: 2000.0,
            unit: "us/level",
        },
        Workload {
            name: "W3 tree 12",
            task: "tree",
            arg: "12",
            units: 8191.0,
            unit: "tasks/s",
        },
        Workload {
            name: "fib 20",
            task: "fib",
            arg: "20",
            units: 21891.0,
            unit: "tasks/s",
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
        println!(
            "{:<16} {:>12.1} {:>12.1} {:>12.1}  {}",
            w.name, min, med, max, w.unit
        );
        json.push(format!(
            "{{\"workload\":\"{}\",\"unit\":\"{}\",\"min\":{min:.3},\"median\":{med:.3},\"max\":{max:.3}}}",
            w.name, w.unit
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
}
