//! The real binary under the real `mpirun`: batch mode, built-in tasks, failures, the task API.

mod common;
use common::{bqrt, mpirun_bin, run};
use std::path::PathBuf;
use std::process::Command;

#[test]
fn fib_20_on_6_ranks() {
    let r = bqrt(6, &["run", "fib", "20"]);
    r.ok();
    assert_eq!(r.last_line(), "6765");
}

#[test]
fn tree_12_runs_all_8191_tasks() {
    let r = bqrt(6, &["run", "tree", "12", "--stats"]);
    r.ok();
    assert_eq!(r.last_line(), "8191");
    let started: u64 = r
        .stats()
        .iter()
        .filter_map(|s| s.get("started")?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        started, 8191,
        "every task started exactly once across the workers"
    );
    let busy = r
        .stats()
        .iter()
        .filter(|s| s.get("role").map(String::as_str) == Some("worker") && s["started"] != "0")
        .count();
    assert!(
        busy >= 2,
        "the tree should spread over workers: {:?}",
        r.stats()
    );
}

#[test]
fn chain_500_completes() {
    let r = bqrt(4, &["run", "chain", "500"]);
    r.ok();
    assert_eq!(r.last_line(), "500");
}

#[test]
fn fanout_100000_memory_per_queued_task() {
    let base = bqrt(6, &["run", "noop", "--stats"]);
    base.ok();
    let r = bqrt(6, &["run", "fanout", "100000", "--stats"]);
    r.ok();
    assert_eq!(r.last_line(), "100000");
    let base_kib: u64 = base
        .stats()
        .iter()
        .map(|s| s["peak_rss_kib"].parse::<u64>().unwrap())
        .max()
        .unwrap();
    for s in r.stats() {
        let peak: u64 = s["peak_rss_kib"].parse().unwrap();
        // the most tasks this rank held at once: queued here, created here, or placed by it
        let queued: u64 = ["max_delayed", "submitted", "placed"]
            .iter()
            .map(|k| s[*k].parse::<u64>().unwrap())
            .max()
            .unwrap();
        let extra = peak.saturating_sub(base_kib) * 1024;
        if queued >= 1000 {
            let per = extra / queued;
            assert!(
                per < 1024,
                "rank {}: {per} bytes per queued task ({s:?})",
                s["rank"]
            );
        }
        // no rank holds more than ~1 KiB per task of the whole job above the base
        assert!(
            extra < 100_000 * 1024,
            "rank {} grew by {extra} bytes",
            s["rank"]
        );
    }
}

#[test]
fn nested_failure_reaches_the_root_with_the_childs_message() {
    let r = bqrt(
        4,
        &[
            "run",
            "nest",
            r#"{"depth":3,"task":"fail","arg":"boom at the bottom"}"#,
        ],
    );
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains("task 'fail'") && r.stderr.contains("boom at the bottom"),
        "{}",
        r.stderr
    );
}

#[test]
fn nested_panic_reaches_the_root_with_the_childs_message() {
    let r = bqrt(
        4,
        &[
            "run",
            "nest",
            r#"{"depth":2,"task":"panic","arg":"kaboom"}"#,
        ],
    );
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains("task 'panic'") && r.stderr.contains("panicked: kaboom"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("stack backtrace"),
        "a task panic is a value, not a crash report:\n{}",
        r.stderr
    );
}

#[test]
fn next_returns_each_result_once_and_await_keeps_input_order() {
    let r = bqrt(5, &["run", "next_demo", "[400,5,200,50,1]"]);
    r.ok();
    let v = r.json();
    let mut seen: Vec<u64> = v["batches"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b.as_array().unwrap().iter().map(|i| i.as_u64().unwrap()))
        .collect();
    assert!(v["batches"]
        .as_array()
        .unwrap()
        .iter()
        .all(|b| !b.as_array().unwrap().is_empty()));
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2, 3, 4], "each index exactly once: {v}");
    assert_eq!(
        v["after_complete"], 0,
        "next after everything was returned gives nothing"
    );
    assert_eq!(v["awaited"], serde_json::json!([400, 5, 200, 50, 1]));
    // the 400 ms task cannot come first on 4 workers
    assert_ne!(v["batches"][0][0], 0, "{v}");
}

#[test]
fn cancel_stops_queued_tasks_and_flags_running_ones() {
    let r = bqrt(
        4,
        &[
            "run",
            "cancel_demo",
            r#"{"children":300,"spin_ms":20000}"#,
            "--log-level",
            "warn",
        ],
    );
    r.ok();
    assert_eq!(r.last_line(), "\"cancel demo done\"");
    let started = r
        .stderr
        .lines()
        .filter(|l| l.contains("cancel_mark") && l.contains("started"))
        .count();
    assert_eq!(
        started, 0,
        "{started} of 300 cancelled tasks started:\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("spin saw its cancel flag"),
        "the running task never saw its flag:\n{}",
        r.stderr
    );
    assert!(
        r.elapsed.as_secs() < 15,
        "the cancelled 20 s spin held the job up"
    );
}

#[test]
fn cache_persists_per_worker_and_is_not_shared() {
    let r = bqrt(5, &["run", "cache_demo", "60"]);
    r.ok();
    let v = r.json();
    let per = v.as_object().unwrap();
    let mut total = 0;
    for (rank, counts) in per {
        let counts: Vec<u64> = counts
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        let expect: Vec<u64> = (1..=counts.len() as u64).collect();
        assert_eq!(
            counts, expect,
            "rank {rank}: each worker counts its own tasks 1..k"
        );
        total += counts.len();
    }
    assert_eq!(total, 60);
    assert!(
        per.len() >= 2,
        "tasks should spread over several workers: {v}"
    );
}

#[test]
fn logs_are_forwarded_by_level_and_depth() {
    let r = bqrt(
        4,
        &[
            "run",
            "log_demo",
            "3",
            "--log-level",
            "info",
            "--log-depth",
            "1",
        ],
    );
    r.ok();
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("log_demo depth"))
        .collect();
    for d in 0..=1 {
        for lvl in ["error", "warn", "info"] {
            let want = format!("log_demo depth {d} {lvl}");
            assert!(
                lines.iter().any(|l| l.ends_with(&want)),
                "missing '{want}' in {lines:?}"
            );
        }
        assert!(
            !lines
                .iter()
                .any(|l| l.ends_with(&format!("log_demo depth {d} debug"))),
            "debug let through: {lines:?}"
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("depth 2") || l.contains("depth 3")),
        "depth limit ignored: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("depth=1") && l.contains("level=0")),
        "log context missing: {lines:?}"
    );
}

#[test]
fn bad_input_is_refused_on_every_rank_without_hanging() {
    let r = bqrt(3, &["run", "nosuch"]);
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains("no task named 'nosuch'") && r.stderr.contains("fib"),
        "{}",
        r.stderr
    );
    let r = bqrt(3, &["run", "fib", "{not json"]);
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("not valid JSON"), "{}", r.stderr);
    let r = bqrt(3, &["run", "fib", "\"text\""]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("arguments of task 'fib' do not decode"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_library_user_adds_tasks_in_their_own_binary() {
    let bin = example_binary("custom_task");
    let r = mpirun_bin(
        4,
        &bin,
        &[
            "run",
            "word_lengths",
            r#"["runtime","for","parallel","compilers"]"#,
        ],
    );
    r.ok();
    assert_eq!(
        r.json(),
        serde_json::json!({"total": 27, "longest": "compilers"})
    );
}

/// Build (if needed) and locate an example binary of this crate.
fn example_binary(name: &str) -> PathBuf {
    let bin = common::bqrt_bin();
    let profile_dir = bin.parent().unwrap();
    let path = profile_dir.join("examples").join(name);
    let release = profile_dir.ends_with("release");
    let mut c = Command::new(env!("CARGO"));
    c.args(["build", "--quiet", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        c.arg("--release");
    }
    let r = run(c, std::time::Duration::from_secs(600));
    r.ok();
    assert!(path.exists(), "{path:?} not built");
    path
}
