//! The job table driven directly: requests, server events and time in, effects out.

use super::*;
use crate::protocol::{Address, Failure, LogSpec, MailboxId, Rank};

const A: ConnId = ConnId(1);
const B: ConnId = ConnId(2);

fn t0() -> Instant {
    Instant::now()
}

fn submit_req(detach: bool) -> Request {
    Request::Submit {
        task: "fib".into(),
        args: b"10".to_vec(),
        format: Format::Json,
        log: LogSpec::OFF,
        detach,
    }
}

/// A table with connections A and B open.
fn table() -> JobTable {
    let mut t = JobTable::new();
    t.open(A);
    t.open(B);
    t
}

/// Submit for `conn` and accept it at the server; returns the job and the effects.
fn submit(t: &mut JobTable, conn: ConnId, detach: bool, now: Instant) -> JobId {
    let mut fx = Vec::new();
    t.on_request(conn, submit_req(detach), now, &mut fx);
    let [Effect::Submit { conn: c, job, spec }] = &fx[..] else {
        panic!("a submit asks the server first: {fx:?}")
    };
    assert_eq!((*c, spec.function.as_str()), (conn, "fib"));
    let job = *job;
    let mut fx = Vec::new();
    t.submitted(conn, job, true, &mut fx);
    assert_eq!(fx, vec![Effect::Reply(conn, Reply::Submitted { job })]);
    job
}

fn request(t: &mut JobTable, conn: ConnId, req: Request, now: Instant) -> Vec<Effect> {
    let mut fx = Vec::new();
    t.on_request(conn, req, now, &mut fx);
    fx
}

fn event(t: &mut JobTable, ev: ServerEvent) -> Vec<Effect> {
    let mut fx = Vec::new();
    t.on_event(ev, &mut fx);
    fx
}

fn done(job: JobId, value: &[u8]) -> ServerEvent {
    ServerEvent::Finished {
        job,
        outcome: Ok(value.to_vec()),
        spawned: 3,
        finished: 3,
    }
}

fn failed(job: JobId) -> ServerEvent {
    ServerEvent::Finished {
        job,
        outcome: Err(Failure {
            task: "fail".into(),
            addr: Address {
                rank: Rank(1),
                mailbox: MailboxId(1),
                slot: 0,
            },
            rank: Rank(1),
            message: "boom".into(),
        }),
        spawned: 2,
        finished: 1,
    }
}

fn log_record(message: &str) -> LogRecord {
    LogRecord {
        level: 2,
        target: "t".into(),
        message: message.into(),
        task: "fib".into(),
        depth: 0,
        rank: Rank(1),
        context: Vec::new(),
    }
}

fn result_of(fx: &[Effect], conn: ConnId) -> Option<&JobResult> {
    fx.iter().find_map(|e| match e {
        Effect::Reply(c, Reply::Result { result, .. }) if *c == conn => Some(result),
        _ => None,
    })
}

fn state(t: &mut JobTable, job: JobId) -> JobState {
    t.status(job).state
}

#[test]
fn a_job_goes_from_queued_to_running_to_done_and_its_waiter_gets_the_result() {
    let now = t0();
    let mut t = table();
    let job = submit(&mut t, A, false, now);
    assert_eq!(job, JobId(1));
    assert_eq!(state(&mut t, job), JobState::Queued);
    event(&mut t, ServerEvent::Started { job });
    assert_eq!(state(&mut t, job), JobState::Running);
    let p = ServerEvent::Progress {
        job,
        spawned: 5,
        finished: 2,
    };
    event(&mut t, p);
    let s = t.status(job);
    assert_eq!(
        (s.spawned, s.finished),
        (5, 2),
        "counts come from the events"
    );
    let wait = Request::Result {
        job,
        timeout_ms: None,
    };
    assert!(request(&mut t, A, wait, now).is_empty(), "no result yet");
    let fx = event(&mut t, done(job, b"55"));
    assert_eq!(
        result_of(&fx, A),
        Some(&JobResult::Done {
            value: b"55".to_vec(),
            format: Format::Json
        })
    );
    assert_eq!(t.records(), 0, "a delivered result frees the record");
    assert!(
        t.status(job)
            .note
            .contains("ended and its record was freed"),
        "{}",
        t.status(job).note
    );
}

#[test]
fn a_result_fetched_after_the_end_is_delivered_once_then_the_id_is_unknown() {
    let now = t0();
    let mut t = table();
    let job = submit(&mut t, A, true, now);
    event(&mut t, done(job, b"1"));
    assert_eq!(state(&mut t, job), JobState::Done);
    let get = || Request::Result {
        job,
        timeout_ms: Some(10),
    };
    let fx = request(&mut t, B, get(), now);
    assert!(matches!(result_of(&fx, B), Some(JobResult::Done { .. })));
    let fx = request(&mut t, B, get(), now);
    assert!(
        matches!(result_of(&fx, B), Some(JobResult::Unknown(n)) if n.contains("freed")),
        "{fx:?}"
    );
}

#[test]
fn unknown_ids_are_told_apart_from_freed_ones() {
    let now = t0();
    let mut t = table();
    for job in [JobId(0), JobId(7)] {
        let s = t.status(job);
        assert_eq!(s.state, JobState::Unknown);
        assert!(s.note.contains("never submitted"), "{}", s.note);
        let fx = request(&mut t, A, Request::Cancel { job }, now);
        assert!(
            matches!(&fx[..], [Effect::Reply(A, Reply::Cancelled { cancelled: false, note, .. })] if note.contains("never submitted")),
            "{fx:?}"
        );
        let fx = request(&mut t, A, Request::Watch { job }, now);
        assert!(
            matches!(&fx[..], [Effect::Reply(A, Reply::Progress { status, .. })] if status.state == JobState::Unknown && status.note.contains("never submitted")),
            "{fx:?}"
        );
    }
}

#[test]
fn a_waiter_past_its_deadline_gets_pending_and_the_job_goes_on() {
    let now = t0();
    let mut t = table();
    let job = submit(&mut t, A, false, now);
    let wait = Request::Result {
        job,
        timeout_ms: Some(100),
    };
    assert!(request(&mut t, A, wait, now).is_empty());
    assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(100)));
    let mut fx = Vec::new();
    t.tick(now + Duration::from_millis(99), &mut fx);
    assert!(fx.is_empty(), "not yet: {fx:?}");
    t.tick(now + Duration::from_millis(100), &mut fx);
    assert_eq!(result_of(&fx, A), Some(&JobResult::Pending));
    assert_eq!(state(&mut t, job), JobState::Queued, "the job goes on");
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn watchers_get_progress_on_a_timer_and_the_end() {
    let now = t0();
    let mut t = table();
    let job = submit(&mut t, A, true, now);
    let fx = request(&mut t, B, Request::Watch { job }, now);
    assert!(
        matches!(&fx[..], [Effect::Reply(B, Reply::Progress { status, .. })] if status.state == JobState::Queued),
        "{fx:?}"
    );
    event(&mut t, ServerEvent::Started { job });
    let mut fx = Vec::new();
    t.tick(now + PROGRESS_EVERY / 2, &mut fx);
    assert!(fx.is_empty(), "{fx:?}");
    t.tick(now + PROGRESS_EVERY, &mut fx);
    assert!(
        matches!(&fx[..], [Effect::Reply(B, Reply::Progress { status, .. })] if status.state == JobState::Running),
        "{fx:?}"
    );
    let fx = event(&mut t, failed(job));
    assert!(
        matches!(&fx[..], [Effect::Reply(B, Reply::Progress { status, .. })] if status.state == JobState::Failed && status.note.contains("boom")),
        "{fx:?}"
    );
    let mut fx = Vec::new();
    t.tick(now + 10 * PROGRESS_EVERY, &mut fx);
    assert!(fx.is_empty(), "no progress for an ended job: {fx:?}");
}

#[test]
fn logs_go_to_the_owner_and_watchers_and_a_detached_job_keeps_a_bounded_few() {
    let now = t0();
    let mut t = table();
    let owned = submit(&mut t, A, false, now);
    let fx = event(
        &mut t,
        ServerEvent::Log {
            job: owned,
            record: log_record("to the owner"),
        },
    );
    assert!(
        matches!(&fx[..], [Effect::Reply(A, Reply::Log { .. })]),
        "{fx:?}"
    );
    let detached = submit(&mut t, A, true, now);
    for i in 0..KEPT_LOGS + 5 {
        let record = log_record(&format!("r{i}"));
        let fx = event(
            &mut t,
            ServerEvent::Log {
                job: detached,
                record,
            },
        );
        assert!(fx.is_empty(), "nobody sees a detached job's logs yet");
    }
    let fx = request(&mut t, B, Request::Watch { job: detached }, now);
    let logs: Vec<&str> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Reply(B, Reply::Log { record, .. }) => Some(record.message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(logs.len(), KEPT_LOGS, "at most KEPT_LOGS kept");
    assert_eq!(logs[0], "r5", "the oldest are dropped");
    let fx = event(
        &mut t,
        ServerEvent::Log {
            job: detached,
            record: log_record("live"),
        },
    );
    assert!(
        matches!(&fx[..], [Effect::Reply(B, Reply::Log { .. })]),
        "{fx:?}"
    );
}

#[test]
fn a_connection_that_leaves_has_its_jobs_cancelled_and_records_freed_but_not_detached_ones() {
    let now = t0();
    let mut t = table();
    let owned = submit(&mut t, A, false, now);
    let ended = submit(&mut t, A, false, now);
    event(&mut t, done(ended, b"1"));
    let detached = submit(&mut t, A, true, now);
    let wait = Request::Result {
        job: detached,
        timeout_ms: None,
    };
    request(&mut t, A, wait, now);
    request(&mut t, A, Request::Watch { job: detached }, now);
    let mut fx = Vec::new();
    t.close(A, &mut fx);
    assert_eq!(
        fx,
        vec![Effect::Cancel(owned)],
        "only the unfinished owned job"
    );
    assert_eq!(t.records(), 1, "the detached job stays");
    assert_eq!(t.clients(), 1);
    let fx = event(&mut t, done(detached, b"2"));
    assert!(
        fx.is_empty(),
        "the gone connection is no waiter or watcher: {fx:?}"
    );
    let fx = event(&mut t, done(owned, b"3"));
    assert!(fx.is_empty(), "a late result of a cancelled job is dropped");
}

#[test]
fn bye_closes_like_a_disconnect() {
    let now = t0();
    let mut t = table();
    let job = submit(&mut t, A, false, now);
    let fx = request(&mut t, A, Request::Bye, now);
    assert_eq!(fx, vec![Effect::Cancel(job)]);
    assert_eq!(t.records(), 0);
}

#[test]
fn cancel_ends_a_running_job_for_its_waiters_and_a_second_cancel_says_it_ended() {
    let now = t0();
    let mut t = table();
    let job = submit(&mut t, A, false, now);
    let wait = Request::Result {
        job,
        timeout_ms: None,
    };
    request(&mut t, B, wait, now);
    let fx = request(&mut t, A, Request::Cancel { job }, now);
    assert_eq!(fx[0], Effect::Cancel(job), "the server cancels the tree");
    assert_eq!(result_of(&fx, B), Some(&JobResult::Cancelled));
    assert!(
        matches!(
            fx.last(),
            Some(Effect::Reply(
                A,
                Reply::Cancelled {
                    cancelled: true,
                    ..
                }
            ))
        ),
        "{fx:?}"
    );
    let fx = event(&mut t, done(job, b"late"));
    assert!(fx.is_empty(), "the cancel stands: {fx:?}");
    let ended = submit(&mut t, A, true, now);
    event(&mut t, done(ended, b"1"));
    let fx = request(&mut t, A, Request::Cancel { job: ended }, now);
    assert!(
        matches!(&fx[..], [Effect::Reply(A, Reply::Cancelled { cancelled: false, note, .. })] if note.contains("already ended (DONE)")),
        "{fx:?}"
    );
}

#[test]
fn ended_jobs_nobody_fetches_are_evicted_oldest_first() {
    let now = t0();
    let mut t = table();
    let first = submit(&mut t, A, true, now);
    event(&mut t, done(first, b"0"));
    let running = submit(&mut t, A, true, now);
    for _ in 0..MAX_ENDED {
        let j = submit(&mut t, A, true, now);
        event(&mut t, done(j, b"0"));
    }
    assert_eq!(
        t.records(),
        MAX_ENDED + 1,
        "MAX_ENDED ended plus the running one"
    );
    assert_eq!(
        state(&mut t, first),
        JobState::Unknown,
        "the oldest went first"
    );
    assert_eq!(
        state(&mut t, running),
        JobState::Queued,
        "running jobs are never evicted"
    );
}

#[test]
fn a_submit_the_server_refuses_is_an_error_and_leaves_no_record() {
    let now = t0();
    let mut t = table();
    let fx = request(&mut t, A, submit_req(false), now);
    let [Effect::Submit { job, .. }] = &fx[..] else {
        panic!("{fx:?}")
    };
    let mut fx = Vec::new();
    t.submitted(A, *job, false, &mut fx);
    assert!(
        matches!(&fx[..], [Effect::Reply(A, Reply::Error { message })] if message.contains("stopping")),
        "{fx:?}"
    );
    assert_eq!(t.records(), 0);
}

#[test]
fn top_shutdown_a_second_hello_and_a_lost_rank_become_effects() {
    let now = t0();
    let mut t = table();
    assert_eq!(request(&mut t, A, Request::Top, now), vec![Effect::Top(A)]);
    assert_eq!(
        request(&mut t, A, Request::Shutdown, now),
        vec![Effect::Stop]
    );
    let hello = Request::Hello {
        token: String::new(),
        client: String::new(),
    };
    let fx = request(&mut t, A, hello, now);
    assert!(
        matches!(&fx[..], [Effect::Reply(A, Reply::Error { .. })]),
        "{fx:?}"
    );
    let lost = ServerEvent::Lost {
        message: "rank 3 was lost".into(),
    };
    assert_eq!(
        event(&mut t, lost),
        vec![Effect::Fatal("rank 3 was lost".into())]
    );
}

#[test]
fn several_waiters_all_get_the_result() {
    let now = t0();
    let mut t = table();
    let job = submit(&mut t, A, true, now);
    for c in [A, B] {
        let wait = Request::Result {
            job,
            timeout_ms: None,
        };
        request(&mut t, c, wait, now);
    }
    let fx = event(&mut t, done(job, b"9"));
    assert!(
        result_of(&fx, A).is_some() && result_of(&fx, B).is_some(),
        "{fx:?}"
    );
    assert_eq!(t.records(), 0);
}

#[test]
fn a_job_past_the_time_limit_fails_with_its_cause_and_its_tasks_are_cancelled() {
    let mut t = table();
    t.set_time_limit(Some(Duration::from_secs(10)));
    let now = t0();
    let job = submit(&mut t, A, false, now);
    let other = {
        let later = now + Duration::from_secs(5);
        submit(&mut t, B, false, later)
    };
    request(
        &mut t,
        A,
        Request::Result {
            job,
            timeout_ms: None,
        },
        now,
    );
    assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(10)));
    let mut fx = Vec::new();
    t.tick(now + Duration::from_secs(9), &mut fx);
    assert!(fx.is_empty(), "{fx:?}");
    t.tick(now + Duration::from_secs(10), &mut fx);
    assert_eq!(fx.first(), Some(&Effect::Cancel(job)));
    match result_of(&fx, A) {
        Some(JobResult::Failed(f)) => {
            assert!(f.message.starts_with("time limit"), "{}", f.message)
        }
        r => panic!("the waiter learns of the time limit: {r:?}"),
    }
    assert_eq!(
        state(&mut t, other),
        JobState::Queued,
        "the later job goes on"
    );
    assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(15)));
    // the server's own report of the cancelled job changes nothing
    assert!(event(&mut t, failed(job)).is_empty());
    // no limit: no deadline
    let mut u = table();
    let j = submit(&mut u, A, false, now);
    assert_eq!(u.next_deadline(), None);
    u.tick(now + Duration::from_secs(1 << 20), &mut fx);
    assert_ne!(state(&mut u, j), JobState::Failed);
}
