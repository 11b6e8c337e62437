//! The real server and manager state machines at 1,000 to 100,000 simulated workers: how much
//! of the work reaches rank 0. `cargo bench --bench sim_scale` (env `BQRT_SIM_MAX` caps the
//! largest size). Prints a table; the figures are recorded in docs/performance.md.

use bqrt::sim::{Action, Script, Sim, SimConfig};
use std::time::Instant;

/// A job of two map levels: `outer` tasks each mapping `inner` leaves of `work` ticks.
fn two_level(outer: usize, inner: usize, work: u32) -> Script {
    let leaf = Script::leaf(work);
    let mid = Script {
        work: 1,
        action: Action::MapAll(vec![leaf; inner]),
    };
    Script {
        work: 0,
        action: Action::MapAll(vec![mid; outer]),
    }
}

fn main() {
    let max: u32 = std::env::var("BQRT_SIM_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    println!(
        "{:>8} {:>10} {:>7} {:>8} {:>10} {:>12} {:>14} {:>10}",
        "workers", "layout", "ranks", "tasks", "srv msg/task", "srv ns/task", "makespan", "wall s"
    );
    for &workers in &[1_000u32, 10_000, 100_000] {
        if workers > max {
            continue;
        }
        for (layout, per_node, fanout) in [("flat", workers, 16), ("tree", 128, 16)] {
            if layout == "flat" && workers > 10_000 {
                continue; // one server with 100k direct workers: the case the tree exists for
            }
            let mut cfg = SimConfig::new(workers, per_node, 7);
            cfg.fanout = fanout;
            cfg.codec = false;
            cfg.max_delay = 5;
            cfg.progress_every = 1_000;
            let outer = (workers as usize / 16).max(2);
            let job = two_level(outer, 32, 500);
            let t = Instant::now();
            let mut sim = Sim::new(cfg);
            let ranks = sim.ranks();
            let id = sim.submit(&job);
            sim.run(u64::MAX);
            let wall = t.elapsed().as_secs_f64();
            assert!(matches!(sim.result(id), Some(Ok(_))), "job did not finish");
            sim.check_quiescent();
            let s = &sim.stats;
            let tasks = s.tasks_finished.max(1);
            println!(
                "{:>8} {:>10} {:>7} {:>8} {:>10.3} {:>12.0} {:>14} {:>10.1}",
                workers,
                layout,
                ranks,
                tasks,
                (s.server_messages_in + s.server_messages_out) as f64 / tasks as f64,
                s.server_nanos as f64 / tasks as f64,
                s.end_time,
                wall
            );
            let kinds: Vec<String> = s
                .server_in_by_kind
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("         server received: {}", kinds.join(" "));
        }
    }
}
