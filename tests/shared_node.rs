//! A shared node's hostile neighbour against `mpirun -n 3 bqrt serve`: huge and partial frames
//! from many connections, trickling senders, a full connection cap, another local user.
//! (BQSKit's protocol gets the same in tests/python/test_shared_node.py.)

mod common;
use bqrt::protocol::native::MAGIC;
use bqrt::protocol::LogSpec;
use common::{bqrt_bin, descendants, done, has_env, Serve};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// Connected past the native header (no Hello yet).
fn native(s: &Serve) -> TcpStream {
    let mut t = TcpStream::connect(&s.addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    t.write_all(MAGIC).unwrap();
    t.write_all(&[1]).unwrap();
    let mut head = [0u8; 5];
    t.read_exact(&mut head).unwrap();
    t
}

fn rank0(s: &Serve) -> u32 {
    let launcher = s.child.as_ref().unwrap().id();
    descendants(launcher)
        .into_iter()
        .find(|&p| has_env(p, "OMPI_COMM_WORLD_RANK=0"))
        .expect("rank 0 among the launcher's descendants")
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn still_works(s: &Serve) {
    let mut c = s.client();
    let j = c.submit("fib", "9", LogSpec::OFF, false).unwrap();
    assert_eq!(done(c.result(j, None).unwrap()), 34);
}

#[test]
fn huge_and_partial_frames_from_many_connections_stay_within_the_receive_budget() {
    const BUDGET_MIB: u64 = 32;
    let s = Serve::start(3, &["--receive-budget", "32", "--frame-timeout", "5"]);
    still_works(&s);
    let pid = rank0(&s);
    let before = rss(pid);
    // 40 connections, each announcing a frame just under the 16 MiB limit and sending 8 MiB
    // of it: 320 MiB would be held without the budget
    let senders: Vec<_> = (0..40)
        .map(|_| {
            let mut t = native(&s);
            std::thread::spawn(move || {
                let _ = t.write_all(&((16u32 << 20) - 1).to_le_bytes());
                let chunk = vec![0u8; 1 << 20];
                for _ in 0..8 {
                    if t.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let mut said = Vec::new();
                let _ = t.read_to_end(&mut said);
                String::from_utf8_lossy(&said).to_string()
            })
        })
        .collect();
    let mut peak = before;
    while senders.iter().any(|h| !h.is_finished()) {
        peak = peak.max(rss(pid));
        std::thread::sleep(Duration::from_millis(10));
    }
    let said: Vec<String> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    let busy = said
        .iter()
        .filter(|m| m.contains("too many large frames"))
        .count();
    assert!(busy > 0, "no sender was told the server is busy: {said:?}");
    let grew = peak.saturating_sub(before);
    // the budget, plus what the kernel and the allocator keep around it
    let bound = (BUDGET_MIB + 24) << 20;
    assert!(
        grew <= bound,
        "rank 0 grew by {} MiB (bound {} MiB)",
        grew >> 20,
        bound >> 20
    );
    eprintln!(
        "rank 0 grew by {} MiB with a {BUDGET_MIB} MiB budget; {busy} of 40 told busy",
        grew >> 20
    );
    still_works(&s);
}

#[test]
fn trickling_senders_are_dropped_within_the_frame_timeout() {
    let s = Serve::start(3, &["--frame-timeout", "1"]);
    for authenticated in [false, true] {
        let mut t = match authenticated {
            // a frame after Hello
            true => {
                let c = s.client();
                drop(c);
                let mut t = native(&s);
                let hello =
                    bqrt::protocol::native::encode(&bqrt::protocol::native::Request::Hello {
                        token: s.token(),
                        client: "trickle".into(),
                    });
                bqrt::protocol::native::write_frame(&mut t, &hello).unwrap();
                t
            }
            // the Hello itself
            false => native(&s),
        };
        let mut r = t.try_clone().unwrap();
        let start = Instant::now();
        let trickle = std::thread::spawn(move || {
            let _ = t.write_all(&100u32.to_le_bytes());
            for _ in 0..100 {
                if t.write_all(&[1]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        let took = start.elapsed();
        // a byte every 200 ms would take 20 s; the frame's deadline is 1 s from its first byte
        assert!(took < Duration::from_secs(3), "dropped after {took:?}");
        let said = String::from_utf8_lossy(&v);
        assert!(said.contains("stalled"), "{said}");
        trickle.join().unwrap();
    }
    still_works(&s);
}

#[test]
fn the_owner_gets_in_when_unauthenticated_connections_fill_the_cap() {
    let s = Serve::start(3, &["--max-connections", "8"]);
    // 8 connections that never say Hello hold the whole cap
    let squatters: Vec<TcpStream> = (0..8).map(|_| native(&s)).collect();
    let mut c = s.client();
    assert_eq!(c.top().unwrap().workers, 2, "the owner's top got in");
    drop(c);
    let out = s.cli(&["top", "--once"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // past the reserve too: refused with the reason
    let held = common::fill_cap_and_expect_refusal(&s, bqrt::gateway::RESERVE);
    drop(held);
    drop(squatters);
    still_works(&s);
    let out = s.cli(&["shutdown"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

/// A copy of the binary another user can run (the build may live under root's home).
fn binary_for_others(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("bqrt");
    std::fs::copy(bqrt_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn can_switch_user() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Command::new("runuser")
        .args(["-u", "nobody", "--", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn with_same_user_another_local_user_is_refused_even_with_the_token() {
    if !can_switch_user() {
        eprintln!("skipped: needs root and runuser (CI runs as root)");
        return;
    }
    let s = Serve::start(3, &["--same-user"]);
    let dir = common::tempdir("other-user");
    let bin = binary_for_others(&dir);
    // the other user even has the token (say it leaked): still refused
    let other = Command::new("runuser")
        .args(["-u", "nobody", "--", "env"])
        .arg(format!("BQRT_TOKEN={}", s.token()))
        .arg(&bin)
        .args(["top", "--once", "--server", &s.addr])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&other.stderr);
    assert_ne!(other.status.code(), Some(0), "another user got in: {err}");
    assert!(
        err.contains("serves only its own user") && err.contains("uid"),
        "{err}"
    );
    // the owner gets in
    let out = s.cli(&["top", "--once"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    still_works(&s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_server_on_the_same_token_file_is_refused_and_the_first_keeps_its_token() {
    let s = Serve::start(3, &[]);
    let before = s.token();
    let token_file = s.token_file.to_str().unwrap().to_string();
    let second = common::bqrt(
        2,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            &token_file,
        ],
    );
    assert_eq!(second.code, Some(2), "{}", second.stderr);
    assert!(
        second.stderr.contains("in use by a live server") && second.stderr.contains("pid"),
        "{}",
        second.stderr
    );
    assert_eq!(
        s.token(),
        before,
        "the first server's token was overwritten"
    );
    still_works(&s);
    let out = s.cli(&["shutdown"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn a_stale_ready_file_is_removed_at_start_and_at_stop() {
    let dir = common::tempdir("ready");
    let ready = dir.join("ready");
    let token = dir.join("token");
    // a start that fails (its port is taken) leaves no ready file from an earlier run
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    std::fs::write(&ready, "127.0.0.1:1\n").unwrap();
    let failed = common::bqrt(
        2,
        &[
            "serve",
            "--listen",
            &port,
            "--ready-file",
            ready.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    assert_eq!(failed.code, Some(2), "{}", failed.stderr);
    assert!(
        !ready.exists(),
        "a stale ready file survived a failed start"
    );
    // a clean run: written when ready, removed at stop
    let mut s = Serve::start(3, &[]);
    let ready = s.dir.join("ready");
    assert!(ready.exists());
    let (code, _, err) = s.stop("INT", true);
    assert_eq!(code, Some(0), "{err}");
    assert!(!ready.exists(), "the ready file outlived the server");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_filesystem_gives_a_clear_error_and_leaves_no_temporary_file() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let dir = common::tempdir("full");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    // fill it
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k", "count=64"])
        .arg(format!("of={}", dir.join("fill").display()))
        .stderr(std::process::Stdio::null())
        .status();
    let token = dir.join("token");
    let run = common::bqrt(
        2,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp") || n.contains("tmp"))
        .collect();
    let _ = Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot write the token file") && run.stderr.contains("space"),
        "{}",
        run.stderr
    );
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn a_token_file_readable_by_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let s = Serve::start(2, &[]);
    std::fs::set_permissions(&s.token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = s.cli(&["top", "--once"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("readable by other users") && out.stderr.contains("chmod 600"),
        "{}",
        out.stderr
    );
}

#[test]
fn exit_statuses_and_messages_follow_the_documented_table() {
    let s = Serve::start(2, &[]);
    // an unknown job: 5 for status, result and watch alike
    for cmd in ["status", "result", "watch"] {
        let out = s.cli(&[cmd, "999"]);
        assert_eq!(out.code, Some(5), "{cmd}: {}", out.stderr);
    }
    // ARGS that are not JSON: 2, as for `bqrt run`
    let out = s.cli(&["submit", "fib", "{oops"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("not valid JSON"), "{}", out.stderr);
    // flags the server cannot use: 2 with the flag named
    let zero = common::bqrt(
        2,
        &["serve", "--listen", "127.0.0.1:0", "--max-connections", "0"],
    );
    assert_eq!(zero.code, Some(2), "{}", zero.stderr);
    assert!(
        zero.stderr.contains("--max-connections 0"),
        "{}",
        zero.stderr
    );
    // an address that is not this machine's is not "in use"
    let far = common::bqrt(2, &["serve", "--listen", "192.0.2.1:7472"]);
    assert_eq!(far.code, Some(2), "{}", far.stderr);
    assert!(
        far.stderr.contains("not one of this machine's") && !far.stderr.contains("another bqrt"),
        "{}",
        far.stderr
    );
    // no line printed twice over by the ranks
    assert!(!far.stderr.contains("bqrt: bqrt:"), "{}", far.stderr);
}
