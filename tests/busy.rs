//! No job waits behind a busy worker: long tasks beside short jobs on a real `mpirun` runtime,
//! cancel of a task that would never end, a worker that stops answering, and submits that are
//! refused at once.

mod common;
use bqrt::client::{Client, ClientError};
use bqrt::protocol::native::JobState;
use bqrt::protocol::{JobId, LogSpec};
use common::{done, wait_for, Serve};
use std::time::{Duration, Instant};

fn client(s: &Serve) -> Client {
    s.client()
}

/// Wait until `n` workers are busy (a long task has started on each).
fn wait_busy(c: &mut Client, n: u32) {
    wait_for("the long tasks to start", Duration::from_secs(20), || {
        let t = c.top().unwrap();
        t.workers - t.idle >= n
    });
}

/// Run `task(args)` as a job and time it to its result.
fn timed(c: &mut Client, task: &str, args: &str) -> (serde_json::Value, Duration) {
    let t0 = Instant::now();
    let j = c.submit(task, args, LogSpec::OFF, false).unwrap();
    let v = done(c.result(j, None).unwrap());
    (v, t0.elapsed())
}

/// The issue's bound: a short job waiting behind the long task took 19.6 s; anything near
/// that fails, a loaded 2-core machine passes.
const SHORT_JOB: Duration = Duration::from_secs(8);

#[test]
fn short_jobs_finish_while_a_long_task_holds_a_worker() {
    // server + 3 workers; the long task computes without yielding for 20 s
    let s = Serve::start(4, &[]);
    let mut c = client(&s);
    let long = c.submit("spin", "20000", LogSpec::OFF, false).unwrap();
    wait_busy(&mut c, 1);
    std::thread::sleep(Duration::from_millis(500)); // as in the report: half a second later
    for (task, args, want) in [
        ("fib", "15", serde_json::json!(610)),
        ("tree", "10", serde_json::json!(2047)),
        ("fanout", "50", serde_json::json!(50)),
    ] {
        let (v, took) = timed(&mut c, task, args);
        assert_eq!(v, want, "{task} {args}");
        assert!(
            took < SHORT_JOB,
            "{task} {args} took {took:?} beside the long task"
        );
        eprintln!("{task} {args}: {took:?} beside a 20 s task");
    }
    assert_eq!(
        c.status(long).unwrap().state,
        JobState::Running,
        "the long task still runs"
    );
}

/// Wait until every job of `holders` (submitted with warnings forwarded, on a runtime started
/// with `--stall-warning 1`) has been inside its task for a second: the warning is the runtime's
/// own word that the task runs. A worker the server counts busy may only have been given its
/// task, and a task given to it after that one would start first (a worker's queue is LIFO).
fn wait_running(c: &mut Client, holders: &[JobId]) {
    let mut running = std::collections::HashSet::new();
    wait_for("the holders to run", Duration::from_secs(20), || {
        c.top().unwrap(); // log records come in with the reply
        for (job, r) in c.take_logs() {
            if r.message.contains("without yielding") {
                running.insert(job);
            }
        }
        holders.iter().all(|j| running.contains(j))
    });
}

#[test]
fn tasks_provably_queued_when_their_cancel_arrives_never_start() {
    let s = Serve::start(4, &["--stall-warning", "1"]);
    let mut c = client(&s);
    // every worker held by a sleeper that ends on its own, and provably running
    let warn = LogSpec {
        level: 2,
        max_depth: None,
    };
    let holders: Vec<JobId> = (0..3)
        .map(|_| c.submit("sleep", "3000", warn, false).unwrap())
        .collect();
    wait_running(&mut c, &holders);
    let before = c.top().unwrap().finished_tasks;
    // queued: no worker is free for them; cancelled while they wait
    let doomed: Vec<JobId> = (0..20)
        .map(|i| {
            c.submit("cancel_mark", &i.to_string(), LogSpec::OFF, false)
                .unwrap()
        })
        .collect();
    for j in &doomed {
        let (cancelled, note) = c.cancel(*j).unwrap();
        assert!(cancelled, "{j}: {note}");
    }
    for j in &holders {
        assert_eq!(done(c.result(*j, None).unwrap()), 3000);
    }
    wait_for("every worker idle again", Duration::from_secs(10), || {
        let t = c.top().unwrap();
        t.idle == t.workers && t.queued == 0
    });
    // a round of work on every worker after the holders: a surviving queued task would have
    // run by now
    let (v, _) = timed(&mut c, "fanout", "30");
    assert_eq!(v, 30);
    // the 3 holders, the fanout's root and its 30 children (workers report their counts on a
    // timer, and any cancelled task that ran did so before these, on the same workers)
    let mut ran = 0;
    wait_for("the task counts to arrive", Duration::from_secs(10), || {
        ran = c.top().unwrap().finished_tasks - before;
        ran >= 3 + 31
    });
    assert_eq!(ran, 3 + 31, "{} cancelled tasks ran", ran - 34);
}

#[test]
fn jobs_after_a_cancelled_never_ending_task_complete() {
    let s = Serve::start(4, &[]);
    let mut c = client(&s);
    // a task that would run for an hour, on every worker: nothing else could run
    let forever: Vec<JobId> = (0..3)
        .map(|_| c.submit("sleep", "3600000", LogSpec::OFF, true).unwrap())
        .collect();
    wait_busy(&mut c, 3);
    // a job submitted now must wait (every worker is taken) ...
    let queued = c.submit("fib", "12", LogSpec::OFF, false).unwrap();
    for j in &forever {
        let (cancelled, _) = c.cancel(*j).unwrap();
        assert!(cancelled);
    }
    // ... and runs once the cancels freed the workers
    assert_eq!(done(c.result(queued, None).unwrap()), 144);
    wait_for("every worker idle again", Duration::from_secs(10), || {
        let t = c.top().unwrap();
        t.idle == t.workers && t.queued == 0
    });
    let (v, took) = timed(&mut c, "fib", "15");
    assert_eq!(v, 610);
    assert!(took < SHORT_JOB, "took {took:?}");
}

#[test]
fn a_worker_that_stops_answering_is_reported_with_its_rank_and_the_runtime_stops() {
    let mut s = Serve::start(4, &["--stuck-after", "3"]);
    let mut c = client(&s);
    let job = c
        .submit(
            "spread",
            r#"{"outer":3,"inner":3,"ms":2000}"#,
            LogSpec::OFF,
            false,
        )
        .unwrap();
    wait_for("the job to run", Duration::from_secs(30), || {
        c.status(job).unwrap().state == JobState::Running
    });
    let launcher = s.child.as_ref().unwrap().id();
    let all = common::descendants(launcher);
    let victim = all
        .iter()
        .copied()
        .find(|&p| common::has_env(p, "OMPI_COMM_WORLD_RANK=2"))
        .expect("rank 2's process");
    common::send_signal("STOP", &[victim]);
    let t0 = Instant::now();
    let outcome = c.result(job, None);
    let noticed = t0.elapsed();
    // let the stopped process go, whatever happened, so nothing is left behind
    common::send_signal("CONT", &[victim]);
    match outcome {
        Err(ClientError::Shutdown(reason)) => {
            assert!(
                reason.contains("rank 2 (worker on node 0)")
                    && reason.contains("stopped answering"),
                "{reason}"
            );
        }
        other => panic!("client got {other:?}"),
    }
    assert!(
        noticed < Duration::from_secs(3 + 5),
        "reported after {noticed:?} (--stuck-after 3)"
    );
    let (code, _, stderr) = s.stop_by(|_| {});
    assert_ne!(code, Some(0), "{stderr}");
    wait_for("every rank gone", Duration::from_secs(10), || {
        common::all_gone(&all)
    });
}

#[test]
fn a_rank_busy_in_a_long_task_is_not_stuck() {
    let s = Serve::start(3, &["--stuck-after", "2"]);
    let mut c = client(&s);
    // both workers compute without yielding for 5 s, more than twice the stuck time
    let spins: Vec<JobId> = (0..2)
        .map(|_| c.submit("spin", "5000", LogSpec::OFF, false).unwrap())
        .collect();
    for j in spins {
        assert_eq!(done(c.result(j, None).unwrap()), true, "ran to its end");
    }
    let (v, _) = timed(&mut c, "fib", "10");
    assert_eq!(v, 55, "the runtime still serves");
}

#[test]
fn submits_of_unknown_tasks_or_wrong_arguments_fail_at_submit() {
    let s = Serve::start(3, &[]);
    for (args, says) in [
        (
            vec!["submit", "no_such_task"],
            "no task named 'no_such_task'",
        ),
        (
            vec!["submit", "fib", "\"twenty\""],
            "arguments of task 'fib' do not decode",
        ),
        (
            vec!["submit", "sleep", "[1,2]"],
            "arguments of task 'sleep' do not decode",
        ),
    ] {
        let r = s.cli(&args);
        assert_ne!(r.code, Some(0), "{args:?} was accepted: {}", r.stdout);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
        assert!(
            r.stdout.trim().is_empty(),
            "no job id for {args:?}: {}",
            r.stdout
        );
    }
    let mut c = client(&s);
    let e = c.submit("no_such_task", "null", LogSpec::OFF, false);
    assert!(
        matches!(&e, Err(ClientError::Server(m)) if m.contains("no task named")),
        "{e:?}"
    );
    let (v, _) = timed(&mut c, "fib", "9");
    assert_eq!(v, 34, "the runtime keeps serving");
}

#[test]
fn a_job_past_the_time_limit_fails_with_a_clear_error_and_its_worker_is_freed() {
    // one worker, held by a task that would sleep for a minute
    let s = Serve::start(2, &["--job-time-limit", "2"]);
    let mut c = client(&s);
    let t0 = Instant::now();
    let long = c.submit("sleep", "60000", LogSpec::OFF, false).unwrap();
    match c.result(long, None).unwrap() {
        bqrt::protocol::native::JobResult::Failed(f) => {
            assert!(
                f.message.starts_with("time limit") && f.message.contains("--job-time-limit"),
                "{}",
                f.message
            )
        }
        r => panic!("the job fails for its time limit: {r:?}"),
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(
        c.status(long).unwrap().state,
        JobState::Unknown,
        "result delivered"
    );
    // the one worker is free again: a short job completes within its own limit
    let (v, _) = timed(&mut c, "fib", "15");
    assert_eq!(v, serde_json::json!(610));
}

#[test]
fn a_task_computing_past_the_stall_warning_warns_its_client_and_goes_on() {
    let s = Serve::start(2, &["--stall-warning", "1"]);
    let mut c = client(&s);
    let warn = LogSpec {
        level: 2,
        max_depth: None,
    };
    let j = c.submit("spin", "2600", warn, false).unwrap();
    let v = done(c.result(j, None).unwrap());
    assert_eq!(v, serde_json::json!(true), "the spin completes");
    let logs = c.take_logs();
    let stalls: Vec<_> = logs
        .iter()
        .filter(|(job, r)| *job == j && r.message.contains("without yielding"))
        .collect();
    // due at 1 s and at 2 s (the second may miss a 2.6 s spin on a loaded machine)
    assert!((1..=2).contains(&stalls.len()), "{logs:?}");
    let r = &stalls[0].1;
    assert_eq!((r.level, r.task.as_str()), (2, "spin"), "{r:?}");
    assert!(r.message.contains("--stall-warning 1 s"), "{}", r.message);
    // a client that asked for no logs gets none
    let quiet = c.submit("spin", "1500", LogSpec::OFF, false).unwrap();
    done(c.result(quiet, None).unwrap());
    assert!(c.take_logs().iter().all(|(job, _)| *job != quiet));
}

/// Work submitted while every worker is inside a long task waits where it was placed: it does
/// not go round between the server and the occupied workers until one is free (decision 53),
/// and it runs as soon as one is.
#[test]
fn work_submitted_while_every_worker_is_occupied_waits_in_place() {
    // server + 2 workers, each blocked in one poll for 4 s
    let mut s = Serve::start(3, &["--stats"]);
    let mut c = client(&s);
    let long: Vec<JobId> = (0..2)
        .map(|_| c.submit("sleep", "4000", LogSpec::OFF, false).unwrap())
        .collect();
    wait_busy(&mut c, 2);
    let t0 = Instant::now();
    let queued = c.submit("fanout", "20", LogSpec::OFF, false).unwrap();
    assert_eq!(done(c.result(queued, None).unwrap()), 20);
    let waited = t0.elapsed();
    for j in long {
        done(c.result(j, None).unwrap());
    }
    drop(c);
    let (code, _, stderr) = s.stop("INT", true);
    assert_eq!(code, Some(0), "{stderr}");
    let placed: u64 = common::stats(&stderr)
        .iter()
        .find(|r| r.get("rank").is_some_and(|v| v == "0"))
        .and_then(|r| r.get("placed")?.parse().ok())
        .unwrap_or_else(|| panic!("no server stats line in:\n{stderr}"));
    eprintln!("the job waited {waited:?}; the server placed {placed} tasks");
    // 2 long tasks, the job's root and 20 children, and a few moved by steals; going round,
    // the root alone was placed thousands of times while it waited
    assert!(placed < 100, "the server placed {placed} tasks for 23");
}
