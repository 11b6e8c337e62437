//! The native task API on an in-process cluster (same cores, executor and transport loop as
//! under MPI; channels instead of MPI). Statics let the test observe what tasks did.

use bqrt::protocol::LogSpec;
use bqrt::runtime::{LocalCluster, Outcome};
use bqrt::{Ctx, Registry, TaskError, TaskFuture, TaskResult};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn cluster(workers: u32, r: Registry) -> LocalCluster {
    bqrt::logging::init();
    bqrt::executor::install_panic_hook(false);
    LocalCluster::start(workers, r)
}

fn run(c: &mut LocalCluster, task: &str, json: &str) -> Outcome {
    run_logged(c, task, json, LogSpec::OFF).0
}

fn run_logged(
    c: &mut LocalCluster,
    task: &str,
    json: &str,
    log: LogSpec,
) -> (Outcome, Vec<bqrt::protocol::LogRecord>) {
    let h = c.handle();
    let job = h.submit_json(task, json, log).expect("runtime up");
    let mut logs = Vec::new();
    let o = h
        .wait(job, Duration::from_secs(60), |r| logs.push(r.clone()))
        .expect("job finished in time");
    (o, logs)
}

fn done_json(o: Outcome) -> serde_json::Value {
    match o {
        Outcome::Done(b) => serde_json::from_slice(&b).expect("JSON result"),
        Outcome::Failed(f) => panic!("job failed: {f}"),
        Outcome::RuntimeFailed(m) => panic!("runtime failed: {m}"),
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One test body over several cluster shapes.
fn shapes(body: impl Fn(u32)) {
    for workers in [1, 2, 5] {
        body(workers);
    }
}

#[test]
fn builtins_compute_the_right_answers() {
    shapes(|w| {
        let mut c = cluster(w, Registry::with_builtins());
        assert_eq!(done_json(run(&mut c, "fib", "15")), 610);
        assert_eq!(done_json(run(&mut c, "tree", "8")), 511);
        assert_eq!(done_json(run(&mut c, "chain", "200")), 200);
        assert_eq!(done_json(run(&mut c, "fanout", "3000")), 3000);
        c.shutdown();
    });
}

#[test]
fn map_keeps_input_order_and_two_level_maps_nest() {
    async fn pair(ctx: Ctx, i: u64) -> TaskResult<Vec<u64>> {
        ctx.map("ident", [2 * i, 2 * i + 1])?.await
    }
    async fn outer(ctx: Ctx, n: u64) -> TaskResult<Vec<Vec<u64>>> {
        ctx.map("pair", 0..n)?.await
    }
    let r = Registry::new()
        .task("ident", |_c: Ctx, x: u64| async move { Ok(x) })
        .task("pair", pair)
        .task("outer", outer);
    shapes(|w| {
        let mut c = cluster(w, r.clone());
        let v = done_json(run(&mut c, "outer", "1000"));
        let want: Vec<Vec<u64>> = (0..1000u64).map(|i| vec![2 * i, 2 * i + 1]).collect();
        assert_eq!(v, serde_json::json!(want));
        c.shutdown();
    });
}

#[test]
fn next_yields_every_result_once_then_nothing() {
    async fn collect(ctx: Ctx, n: u64) -> TaskResult<(Vec<u64>, usize, Vec<u64>)> {
        let mut f = ctx.map::<u64, u64>("ident", 0..n)?;
        let mut seen = Vec::new();
        while seen.len() < n as usize {
            let got = ctx.next(&mut f).await?;
            if got.is_empty() {
                return Err(TaskError::new("empty next before completion"));
            }
            seen.extend(got.into_iter().map(|(i, v)| {
                assert_eq!(i as u64, v);
                v
            }));
        }
        let after = ctx.next(&mut f).await?.len();
        let all = f.await?;
        seen.sort();
        Ok((seen, after, all))
    }
    let r = Registry::new()
        .task("ident", |_c: Ctx, x: u64| async move { Ok(x) })
        .task("collect", collect);
    shapes(|w| {
        let mut c = cluster(w, r.clone());
        let v = done_json(run(&mut c, "collect", "50"));
        let want: Vec<u64> = (0..50).collect();
        assert_eq!(v, serde_json::json!([want, 0, want]));
        c.shutdown();
    });
}

static MARKS: AtomicU64 = AtomicU64::new(0);
static SAW_FLAG: AtomicBool = AtomicBool::new(false);
static SPIN_STARTED: AtomicBool = AtomicBool::new(false);

#[test]
fn cancel_stops_queued_tasks_and_flags_the_running_one() {
    async fn mark(_c: Ctx, _: u64) -> TaskResult<()> {
        MARKS.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2));
        Ok(())
    }
    async fn spin(ctx: Ctx, _: ()) -> TaskResult<()> {
        SPIN_STARTED.store(true, Ordering::SeqCst);
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if ctx.is_cancelled() {
                SAW_FLAG.store(true, Ordering::SeqCst);
                return Ok(());
            }
            std::hint::spin_loop();
        }
        Ok(())
    }
    async fn root(ctx: Ctx, _: ()) -> TaskResult<String> {
        // submitted and cancelled in one step: none of them may ever start
        let doomed = ctx.map::<u64, ()>("mark", 0..2000)?;
        ctx.cancel(doomed);
        let s = ctx.submit::<(), ()>("spin", ())?;
        // wait (by awaiting children, never sleeping blindly) until the spinner runs
        while !SPIN_STARTED.load(Ordering::SeqCst) {
            let _: u64 = ctx.submit("ident", 0u64)?.await?;
        }
        ctx.cancel(s);
        // (a cancelled future cannot be awaited: `cancel` takes it by value)
        let mut rest = ctx.map::<u64, u64>("ident", [1u64])?;
        let first = ctx.next(&mut rest).await?;
        Ok(format!("{}", first.len()))
    }
    let r = Registry::new()
        .task("ident", |_c: Ctx, x: u64| async move { Ok(x) })
        .task("mark", mark)
        .task("spin", spin)
        .task("root", root);
    let mut c = cluster(3, r);
    done_json(run(&mut c, "root", "null"));
    wait_until("the running task sees its cancel flag", || {
        SAW_FLAG.load(Ordering::SeqCst)
    });
    let marks = MARKS.load(Ordering::SeqCst);
    assert_eq!(marks, 0, "{marks} of 2000 cancelled tasks started");
    c.shutdown();
}

static LEFT_RUNNING: AtomicBool = AtomicBool::new(false);

#[test]
fn a_finished_task_cancels_children_it_did_not_await() {
    async fn spin_flag(ctx: Ctx, _: ()) -> TaskResult<()> {
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if ctx.is_cancelled() {
                LEFT_RUNNING.store(true, Ordering::SeqCst);
                return Ok(());
            }
            std::hint::spin_loop();
        }
        Ok(())
    }
    async fn root(ctx: Ctx, _: ()) -> TaskResult<u64> {
        let _orphan = ctx.submit::<(), ()>("spin_flag", ())?;
        let x: u64 = ctx.submit("sleepy", 50u64)?.await?;
        Ok(x)
    }
    let r = Registry::with_builtins()
        .task("spin_flag", spin_flag)
        .task("root", root)
        .task("sleepy", |_c: Ctx, ms: u64| async move {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(ms)
        });
    let mut c = cluster(3, r);
    assert_eq!(done_json(run(&mut c, "root", "null")), 50);
    wait_until("the abandoned child is cancelled", || {
        LEFT_RUNNING.load(Ordering::SeqCst)
    });
    c.shutdown();
}

#[test]
fn a_future_belongs_to_the_task_that_made_it() {
    async fn hide(ctx: Ctx, _: ()) -> TaskResult<String> {
        let f: TaskFuture<u64> = ctx.submit("ident", 7u64)?;
        ctx.cache().insert("stolen", Some(f));
        // the child runs on this worker (1 worker) and tries to await our future
        let msg: String = ctx.submit("thief", ())?.await?;
        Ok(msg)
    }
    async fn thief(ctx: Ctx, _: ()) -> TaskResult<String> {
        let f = ctx
            .cache()
            .get_mut::<Option<TaskFuture<u64>>>("stolen")
            .and_then(Option::take);
        match f {
            Some(f) => match f.await {
                Ok(v) => Ok(format!("awaited someone else's future: {v}")),
                Err(e) => Ok(e.message().to_string()),
            },
            None => Ok("no future in the cache".into()),
        }
    }
    let r = Registry::new()
        .task("ident", |_c: Ctx, x: u64| async move { Ok(x) })
        .task("hide", hide)
        .task("thief", thief);
    let mut c = cluster(1, r);
    let v = done_json(run(&mut c, "hide", "null"));
    assert_eq!(
        v,
        "a future can only be awaited by the task that created it"
    );
    c.shutdown();
}

#[test]
fn the_cache_outlives_jobs_on_its_worker() {
    async fn put(ctx: Ctx, v: u64) -> TaskResult<()> {
        ctx.cache().insert("k", v);
        Ok(())
    }
    async fn get(ctx: Ctx, _: ()) -> TaskResult<Option<u64>> {
        Ok(ctx.cache().get::<u64>("k").copied())
    }
    let r = Registry::new().task("put", put).task("get", get);
    let mut c = cluster(1, r);
    done_json(run(&mut c, "put", "41"));
    assert_eq!(done_json(run(&mut c, "get", "null")), 41);
    c.shutdown();
}

#[test]
fn failures_and_panics_fail_the_job_and_the_runtime_keeps_serving() {
    shapes(|w| {
        let mut c = cluster(w, Registry::with_builtins());
        match run(
            &mut c,
            "nest",
            r#"{"depth":4,"task":"fail","arg":"deep trouble"}"#,
        ) {
            Outcome::Failed(f) => {
                assert_eq!(f.task, "fail");
                assert_eq!(f.message, "deep trouble");
            }
            o => panic!("{o:?}"),
        }
        match run(
            &mut c,
            "nest",
            r#"{"depth":2,"task":"panic","arg":"oh no"}"#,
        ) {
            Outcome::Failed(f) => assert_eq!(f.message, "panicked: oh no"),
            o => panic!("{o:?}"),
        }
        match run(&mut c, "nest", r#"{"depth":1,"task":"missing","arg":null}"#) {
            Outcome::Failed(f) => assert!(
                f.message.contains("no task named 'missing'"),
                "{}",
                f.message
            ),
            o => panic!("{o:?}"),
        }
        assert_eq!(
            done_json(run(&mut c, "fib", "10")),
            55,
            "still serving after failures"
        );
        c.shutdown();
    });
}

#[test]
fn wrong_result_type_is_a_clear_failure() {
    async fn confused(ctx: Ctx, _: ()) -> TaskResult<String> {
        let s: String = ctx.submit("ident", 5u64)?.await?;
        Ok(s)
    }
    let r = Registry::new()
        .task("ident", |_c: Ctx, x: u64| async move { Ok(x) })
        .task("confused", confused);
    let mut c = cluster(2, r);
    match run(&mut c, "confused", "null") {
        Outcome::Failed(f) => assert!(
            f.message.contains("does not decode as the expected type"),
            "{}",
            f.message
        ),
        o => panic!("{o:?}"),
    }
    c.shutdown();
}

#[test]
fn logs_follow_level_depth_and_context() {
    shapes(|w| {
        let mut c = cluster(w, Registry::with_builtins());
        let (o, logs) = run_logged(
            &mut c,
            "log_demo",
            "4",
            LogSpec {
                level: 2,
                max_depth: Some(2),
            },
        );
        assert_eq!(done_json(o), 4);
        let mut got: Vec<(u32, u8)> = logs.iter().map(|r| (r.depth, r.level)).collect();
        got.sort();
        assert_eq!(got, vec![(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]);
        let deepest = logs.iter().find(|r| r.depth == 2).unwrap();
        assert_eq!(
            deepest.context,
            vec![("level".to_string(), "1".to_string())]
        );
        assert_eq!(deepest.task, "log_demo");
        let (_, none) = run_logged(&mut c, "log_demo", "2", LogSpec::OFF);
        assert!(none.is_empty());
        c.shutdown();
    });
}

/// A record logged at the start of a step that blocks reaches the client while the step still
/// runs (BQSKit forwards a record at once; a long pass that logs before computing must show it).
#[test]
fn a_log_record_reaches_the_client_while_its_step_still_blocks() {
    static RELEASED: AtomicBool = AtomicBool::new(false);
    async fn log_then_block(_ctx: Ctx, _: ()) -> TaskResult<bool> {
        log::warn!(target: "demo", "about to block");
        // no await: the step holds the executor until the test has the record, or 30 s passed
        let end = Instant::now() + Duration::from_secs(30);
        while !RELEASED.load(Ordering::SeqCst) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(RELEASED.load(Ordering::SeqCst))
    }
    let r = Registry::new().task("log_then_block", log_then_block);
    let mut c = cluster(2, r);
    let (o, logs) = {
        let h = c.handle();
        let spec = LogSpec {
            level: 2,
            max_depth: None,
        };
        let job = h
            .submit_json("log_then_block", "null", spec)
            .expect("runtime up");
        let mut logs = Vec::new();
        let o = h
            .wait(job, Duration::from_secs(60), |r| {
                RELEASED.store(true, Ordering::SeqCst);
                logs.push(r.message.clone());
            })
            .expect("job finished in time");
        (o, logs)
    };
    assert_eq!(logs, vec!["about to block".to_string()]);
    assert_eq!(
        done_json(o),
        true,
        "the record came only after the step ended by itself (30 s)"
    );
    c.shutdown();
}

#[test]
fn client_cancel_of_a_running_job() {
    let mut c = cluster(2, Registry::with_builtins());
    let h = c.handle();
    let job = h.submit_json("spin", "60000", LogSpec::OFF).unwrap();
    assert!(h.cancel(job));
    assert!(!h.cancel(job), "second cancel: the job is gone");
    assert_eq!(
        done_json(run(&mut c, "fib", "12")),
        144,
        "workers free again"
    );
    c.shutdown();
}

/// Compute (never yield) until `count` reaches `n`: 20 s at most, then a failure naming how many
/// of the `what` started.
fn spin_until_started(count: &AtomicU64, n: u64, what: &str) -> TaskResult<()> {
    let end = Instant::now() + Duration::from_secs(20);
    while count.load(Ordering::SeqCst) < n {
        if Instant::now() > end {
            let started = count.load(Ordering::SeqCst);
            return Err(TaskError::new(format!(
                "{started} of {n} {what} started within 20 s"
            )));
        }
        std::hint::spin_loop();
    }
    Ok(())
}

static STARTED: AtomicU64 = AtomicU64::new(0);

#[test]
fn children_of_a_step_that_computes_reach_idle_workers_before_it_ends() {
    // The parent never yields until every child has started elsewhere: its children must not
    // wait for its step to end while three workers are idle (decision 70).
    async fn mark(_c: Ctx, _: u64) -> TaskResult<u64> {
        STARTED.fetch_add(1, Ordering::SeqCst);
        Ok(1)
    }
    async fn computes(ctx: Ctx, n: u64) -> TaskResult<u64> {
        let fut = ctx.map::<u64, u64>("mark", 0..n)?;
        spin_until_started(&STARTED, n, "children")?;
        Ok(fut.await?.iter().sum())
    }
    let r = Registry::new()
        .task("mark", mark)
        .task("computes", computes);
    let mut c = cluster(4, r);
    assert_eq!(
        done_json(run(&mut c, "computes", "3")),
        serde_json::json!(3)
    );
    c.shutdown();
}

static LISTENING: AtomicU64 = AtomicU64::new(0);

#[test]
fn communicate_reaches_started_tasks_while_they_compute() {
    async fn listener(ctx: Ctx, _: u64) -> TaskResult<String> {
        LISTENING.fetch_add(1, Ordering::SeqCst);
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Some(m) = ctx.messages::<String>()?.pop() {
                return Ok(m);
            }
            std::hint::spin_loop();
        }
        Err(TaskError::new("no message within 20 s"))
    }
    async fn talker(ctx: Ctx, n: u64) -> TaskResult<Vec<String>> {
        let fut = ctx.map::<u64, String>("listener", 0..n)?;
        // Wait until every listener runs, without yielding: a listener never yields either,
        // so one that this worker started while the talker awaited would hold the talker's
        // resumption behind it. Computing, this worker is occupied and hands its queue back.
        spin_until_started(&LISTENING, n, "listeners")?;
        ctx.communicate(&fut, &"hello".to_string())?;
        fut.await
    }
    let r = Registry::new()
        .task("listener", listener)
        .task("talker", talker);
    let mut c = cluster(4, r);
    assert_eq!(
        done_json(run(&mut c, "talker", "3")),
        serde_json::json!(["hello", "hello", "hello"])
    );
    c.shutdown();
}

const ROUNDS: usize = 40;
static LEAVES_STARTED: [AtomicU64; ROUNDS] = [const { AtomicU64::new(0) }; ROUNDS];
static LEAVES_ENDED: [AtomicU64; ROUNDS] = [const { AtomicU64::new(0) }; ROUNDS];
static LEAVES_NEVER_CANCELLED: AtomicU64 = AtomicU64::new(0);

/// The cancel of a mailbox reaches every rank that holds one of its tasks, and the running
/// tasks below it there see their flags at once; the cancel of their own parent's mailbox comes
/// a hop later, from the parent's rank. A task that ends in between (here: fails because it was
/// cancelled) must not fail the job whose root cancelled that subtree and went on. And every
/// task of the cancelled subtree that starts, however late, sees its flag.
#[test]
fn a_task_ended_by_an_ancestors_cancel_does_not_fail_its_job() {
    const WORKERS: u32 = 5;
    /// Runs until cancelled, then fails; on the root's rank it ends at once (the root, suspended
    /// there, resumes only there, and it is the root that cancels).
    async fn leaf(ctx: Ctx, (round, root_rank): (usize, u32)) -> TaskResult<()> {
        if ctx.rank().0 == root_rank {
            return Ok(());
        }
        LEAVES_STARTED[round].fetch_add(1, Ordering::SeqCst);
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end && !ctx.is_cancelled() {
            std::hint::spin_loop();
        }
        if !ctx.is_cancelled() {
            LEAVES_NEVER_CANCELLED.fetch_add(1, Ordering::SeqCst);
        }
        LEAVES_ENDED[round].fetch_add(1, Ordering::SeqCst);
        Err(TaskError::new("leaf: stopped by its cancel"))
    }
    /// Two leaves: one runs beside it, the other on another rank.
    async fn pair(ctx: Ctx, args: (usize, u32)) -> TaskResult<()> {
        ctx.map::<_, ()>("leaf", [args, args])?.await?;
        Ok(())
    }
    /// Spins until `n` leaves of the round run (n = 0: until every one started ended).
    async fn watch(_c: Ctx, (round, n): (usize, u64)) -> TaskResult<()> {
        let end = Instant::now() + Duration::from_secs(20);
        let (started, ended) = (&LEAVES_STARTED[round], &LEAVES_ENDED[round]);
        let done = || match n {
            0 => ended.load(Ordering::SeqCst) == started.load(Ordering::SeqCst),
            n => started.load(Ordering::SeqCst) >= n,
        };
        while !done() {
            if Instant::now() > end {
                return Err(TaskError::new(format!(
                    "round {round}: waited 20 s for {n} leaves"
                )));
            }
            std::hint::spin_loop();
        }
        Ok(())
    }
    async fn root(ctx: Ctx, round: usize) -> TaskResult<()> {
        let pairs = ctx.map::<_, ()>("pair", [(round, ctx.rank().0); 4])?;
        // every worker but the root's and the watcher's runs a leaf, pairs wait beside them
        ctx.submit::<_, ()>("watch", (round, (WORKERS - 2) as u64))?
            .await?;
        ctx.cancel(pairs);
        // the failures the cancel provoked have left their ranks before the root ends
        ctx.submit::<_, ()>("watch", (round, 0))?.await?;
        Ok(())
    }
    let r = Registry::new()
        .task("leaf", leaf)
        .task("pair", pair)
        .task("watch", watch)
        .task("root", root);
    let mut c = cluster(WORKERS, r);
    for round in 0..ROUNDS {
        done_json(run(&mut c, "root", &round.to_string()));
    }
    c.shutdown();
    assert_eq!(LEAVES_NEVER_CANCELLED.load(Ordering::SeqCst), 0);
}
