//! Seeded whole-cluster simulations of the real scheduling state machines.

use bqrt::sim::{Action, Script, Sim, SimConfig};

fn run_jobs(cfg: SimConfig, scripts: &[Script]) -> Sim {
    let mut sim = Sim::new(cfg);
    let jobs: Vec<_> = scripts.iter().map(|s| sim.submit(s)).collect();
    let events = sim.run(50_000_000);
    assert!(events < 50_000_000, "simulation did not settle");
    for (job, s) in jobs.iter().zip(scripts) {
        let got = sim.result(*job).cloned();
        match s.expected() {
            Some(v) => {
                assert_eq!(got, Some(Ok(v)), "{job}");
                assert_eq!(
                    sim.finished_count(*job),
                    Some(v),
                    "{job}: exact finished count in the result"
                );
            }
            None => assert!(
                matches!(got, Some(Err(_))),
                "{job}: expected failure, got {got:?}"
            ),
        }
    }
    sim.check_quiescent();
    sim
}

fn tree(depth: u32) -> Script {
    if depth == 0 {
        Script::leaf(1)
    } else {
        Script {
            work: 1,
            action: Action::MapAll(vec![tree(depth - 1), tree(depth - 1)]),
        }
    }
}

#[test]
fn binary_tree_on_one_node() {
    let sim = run_jobs(SimConfig::new(4, 8, 1), &[tree(10)]);
    assert_eq!(sim.stats.tasks_finished, 2047);
}

#[test]
fn fanout_spreads_over_all_workers() {
    let s = Script {
        work: 0,
        action: Action::MapAll((0..2000).map(|_| Script::leaf(5)).collect()),
    };
    let sim = run_jobs(SimConfig::new(16, 4, 3), &[s]);
    let started = sim.worker_started();
    assert!(started.iter().all(|&n| n > 20), "uneven: {started:?}");
}

#[test]
fn chain_is_depth_first() {
    let mut s = Script::leaf(1);
    for _ in 0..300 {
        s = Script {
            work: 1,
            action: Action::SubmitEach(vec![s]),
        };
    }
    run_jobs(SimConfig::new(3, 8, 5), &[s]);
}

#[test]
fn thousand_workers_many_seeds() {
    for seed in 0..12u64 {
        let mut cfg = SimConfig::new(1024, 32, seed);
        cfg.fanout = 4;
        cfg.codec = seed % 3 == 0;
        cfg.keep_local = seed % 2 == 0;
        let scripts: Vec<Script> = (0..4)
            .map(|j| Script::random(seed * 31 + j, 3000, false))
            .collect();
        let sim = run_jobs(cfg, &scripts);
        assert!(
            sim.stats.tasks_started
                >= scripts
                    .iter()
                    .map(|s| s.expected().unwrap_or(0))
                    .sum::<u64>()
        );
    }
}

/// A cluster of 1 to 9 workers, shaped and timed by the seed.
fn small_cluster(seed: u64) -> SimConfig {
    let workers = 1 + (seed % 9) as u32;
    let per_node = 1 + (seed % 4) as u32;
    let mut cfg = SimConfig::new(workers, per_node, seed);
    cfg.fanout = 2 + (seed % 3) as u32;
    cfg.max_delay = seed % 40;
    cfg.keep_local = seed % 3 != 0;
    cfg
}

#[test]
fn small_clusters_many_seeds_with_failures() {
    for seed in 0..150u64 {
        let cfg = small_cluster(seed);
        let scripts: Vec<Script> = (0..3)
            .map(|j| Script::random(seed * 7 + j, 200, seed % 2 == 0))
            .collect();
        run_jobs(cfg, &scripts);
    }
}

#[test]
fn client_cancel_removes_whole_tree() {
    for seed in 0..40u64 {
        let mut sim = Sim::new(SimConfig::new(64, 8, seed));
        // random subtrees beside a few long tasks: still running at the cancel, for every seed
        let mut parts: Vec<Script> = (0..10)
            .map(|i| Script::random(seed * 100 + i, 500, false))
            .collect();
        parts.extend((0..3).map(|_| Script::leaf(10_000)));
        let big = Script {
            work: 0,
            action: Action::MapAll(parts),
        };
        let job = sim.submit(&big);
        let keep = Script::random(seed + 1000, 500, false);
        let kept = sim.submit(&keep);
        sim.run_until(20 + seed * 5, u64::MAX);
        assert!(
            sim.cancel(job),
            "seed {seed}: the job had ended before its cancel"
        );
        sim.run(u64::MAX);
        assert_eq!(sim.result(job), Some(&Err("cancelled".into())));
        assert!(
            sim.stats.tasks_started < big.size() + keep.size(),
            "seed {seed}: every task of the cancelled job ran"
        );
        assert_eq!(sim.result(kept), Some(&Ok(keep.expected().unwrap())));
        sim.check_quiescent();
    }
}

#[test]
fn stealing_rebalances_uneven_work() {
    // Four long tasks first (they start at once on the 4 idle workers), then many short ones that
    // queue behind them; idle workers must steal the queued ones.
    let mut children: Vec<Script> = (0..60).map(|_| Script::leaf(1)).collect();
    children.extend((0..4).map(|_| Script::leaf(2000)));
    let s = Script {
        work: 0,
        action: Action::MapAll(children),
    };
    let mut cfg = SimConfig::new(8, 8, 11);
    cfg.max_delay = 2;
    let sim = run_jobs(cfg, &[s]);
    assert!(sim.stats.steals > 0, "no steal happened");
    assert!(
        sim.stats.end_time < 2400,
        "finished at {}: queued tasks waited behind long ones",
        sim.stats.end_time
    );
}

/// A job of a few long tasks (a slow synthesis block) beside many short ones.
fn mixed(seed: u64, long: usize, long_work: u32) -> Script {
    let mut children: Vec<Script> = (0..long).map(|_| Script::leaf(long_work)).collect();
    children.push(Script::random(seed, 2000, false));
    children.extend((0..200).map(|i| Script::leaf(1 + (i % 7))));
    Script {
        work: 0,
        action: Action::MapAll(children),
    }
}

/// How long a task may wait in a queue behind a computing worker while another worker idles:
/// one message round of the steal path, at the largest per-link delay. The path runs up the
/// tree from the idle worker (its `Waiting`), back down to the victim (`Steal`), up again
/// (`Stolen`) and down to the idle worker (`Assign`): 4 links per tree level.
fn one_round(cfg: &SimConfig, levels: u64) -> u64 {
    4 * levels * (1 + cfg.max_delay)
}

const SEEDS: u64 = 256;

#[test]
fn no_task_waits_behind_a_busy_worker_while_another_is_idle() {
    for seed in 0..SEEDS {
        // 1,024 workers on 32 nodes (server -> 4 managers of managers -> 32 node managers ->
        // workers: 3 levels) and a few small single-node clusters (1 level)
        let (workers, per_node) = match seed % 4 {
            0 => (4, 8),
            1 => (16, 16),
            _ => (1024, 32),
        };
        let mut cfg = SimConfig::new(workers, per_node, seed);
        cfg.fanout = 8;
        cfg.max_delay = seed % 5;
        cfg.codec = seed % 8 == 0;
        let mut sim = Sim::new(cfg.clone());
        let first = mixed(seed, 3, 20_000);
        let mut jobs = vec![(sim.submit(&first), first)];
        // more jobs arrive while the long tasks run
        for k in 1..4u64 {
            sim.run_until(sim.now() + 500 * k, u64::MAX);
            let s = if k % 2 == 0 {
                mixed(seed * 10 + k, 1, 5_000)
            } else {
                Script::random(seed * 10 + k, 3000, false)
            };
            jobs.push((sim.submit(&s), s));
        }
        let events = sim.run(50_000_000);
        assert!(events < 50_000_000, "seed {seed}: did not settle");
        for (job, s) in &jobs {
            assert_eq!(
                sim.result(*job).cloned(),
                Some(Ok(s.expected().unwrap())),
                "seed {seed} {job}"
            );
        }
        sim.check_quiescent();
        let round = one_round(&cfg, sim.levels());
        let waited = sim.stats.max_wait_beside_idle;
        eprintln!(
            "seed {seed}: {workers} workers, longest wait beside an idle worker {waited} ticks (round {round})"
        );
        assert!(
            waited <= round,
            "seed {seed}: a task waited {waited} ticks behind a busy worker while another was idle (one round: {round})"
        );
    }
}

/// Tasks needing resources (three kinds, 1/3 of all tasks below the roots) on workers of which
/// some offer them: every task runs exactly once, each on a worker that offers what it needs
/// (the simulation asserts it at every start), and nothing is left anywhere at the end.
#[test]
fn resources_thousand_workers_many_seeds() {
    for seed in 0..6u64 {
        let mut cfg = SimConfig::new(1024, 32, 100 + seed);
        cfg.fanout = 4 + (seed % 3) as u32 * 6;
        cfg.codec = seed % 3 == 0;
        cfg.keep_local = seed % 2 == 0;
        // per node: 2 "gpu", 1 "big", 1 with both, the rest plain
        cfg.offers = vec![0b01, 0b01, 0, 0, 0b10, 0b11, 0, 0];
        let scripts: Vec<Script> = (0..4)
            .map(|j| Script::random_needing(seed * 31 + j, 3000, false, &[0b01, 0b10, 0b11]))
            .collect();
        let sim = run_jobs(cfg, &scripts);
        assert!(
            sim.stats.needing_started > 500,
            "seed {seed}: {} tasks needed resources",
            sim.stats.needing_started
        );
    }
}

#[test]
fn resources_small_clusters_many_seeds_with_failures() {
    for seed in 0..120u64 {
        let mut cfg = small_cluster(seed);
        cfg.occupied_after = [0, 50, 5][(seed % 3) as usize];
        // the first worker of each node offers everything
        cfg.offers = vec![0b11, 0, 0b01];
        let scripts: Vec<Script> = (0..3)
            .map(|j| Script::random_needing(seed * 7 + j, 200, seed % 2 == 0, &[0b01, 0b10, 0b11]))
            .collect();
        run_jobs(cfg, &scripts);
    }
}

/// While every worker is inside a long task, work that arrives queues behind them and stays
/// there: an occupied worker keeps what its boss placed while all were occupied, instead of
/// handing it back to be placed on another occupied worker, over and over (messages then grow
/// with the length of the long tasks, not with the work). When the long tasks end, everything
/// runs, on every worker.
#[test]
fn work_placed_while_every_worker_is_occupied_does_not_travel_in_circles() {
    for (workers, per_node) in [(4, 8), (16, 4)] {
        for seed in 0..8 {
            let mut sim = Sim::new(SimConfig::new(workers, per_node, seed));
            let long = Script {
                work: 0,
                action: Action::MapAll((0..workers).map(|_| Script::leaf(50_000)).collect()),
            };
            let short = Script {
                work: 0,
                action: Action::MapAll((0..200).map(|i| Script::leaf(1 + i % 7)).collect()),
            };
            let a = sim.submit(&long);
            sim.run_until(2_000, u64::MAX);
            let before = sim.stats.messages;
            let b = sim.submit(&short);
            sim.run_until(40_000, u64::MAX);
            let during = sim.stats.messages - before;
            eprintln!(
                "{workers} workers, seed {seed}: {during} messages while every worker was occupied"
            );
            assert_eq!(sim.result(b), None, "seed {seed}: the short job waited");
            assert!(
                during < 100,
                "seed {seed}, {workers} workers: {during} messages while every worker was occupied"
            );
            let events = sim.run(50_000_000);
            assert!(events < 50_000_000, "seed {seed}: did not settle");
            assert_eq!(sim.result(a).cloned(), Some(Ok(long.expected().unwrap())));
            assert_eq!(sim.result(b).cloned(), Some(Ok(short.expected().unwrap())));
            sim.check_quiescent();
        }
    }
}
