//! Node hooks: a shell command run once per node by the node's first rank, before the node's
//! workers start (`--node-setup`, for example `nvidia-cuda-mps-control -d`) and after every
//! rank has stopped (`--node-teardown`, for example `echo quit | nvidia-cuda-mps-control`).
//!
//! Set-up runs inside start-up: the node's other ranks wait for it in the start-up exchange,
//! and a hook that fails (or does not finish within the start-up timeout) stops the whole
//! runtime with its output. Tear-down runs after `MPI_Finalize` returned on the first rank,
//! which it does only once every rank has finished; it is bounded by [`TEARDOWN_LIMIT`], and its
//! failure is reported but changes no exit status. The command gets `BQRT_HOOK` (`setup` or
//! `teardown`), `BQRT_NODE` (the node's index) and `BQRT_NODE_WORKERS`.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a tear-down hook may run before it is killed.
pub const TEARDOWN_LIMIT: Duration = Duration::from_secs(60);

/// Which hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Setup,
    Teardown,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Setup => "setup",
            Hook::Teardown => "teardown",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Hook::Setup => "--node-setup",
            Hook::Teardown => "--node-teardown",
        }
    }
}

/// Run `cmd` with `sh -c` for `node`; its output on success, or an error naming the hook, the
/// node, the cause and the output.
pub fn run(
    hook: Hook,
    cmd: &str,
    node: u32,
    workers: u32,
    limit: Option<Duration>,
) -> Result<String, String> {
    let host = hostname();
    let fail = |why: String, out: &str| {
        let mut s = format!("bqrt: node {node} ({host}): {} `{cmd}` {why}", hook.flag());
        if !out.trim().is_empty() {
            s.push_str(":\n");
            s.push_str(out.trim_end());
        }
        s
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("BQRT_HOOK", hook.name())
        .env("BQRT_NODE", node.to_string())
        .env("BQRT_NODE_WORKERS", workers.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| fail(format!("could not be started: {e}"), ""))?;
    // both pipes are read on threads, so that a hook writing much cannot block on a full pipe
    let pipes = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ];
    let readers: Vec<_> = pipes
        .into_iter()
        .flatten()
        .map(|mut p| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = p.read_to_end(&mut v);
                v
            })
        })
        .collect();
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) => {}
            Err(e) => break Err(format!("could not be waited for: {e}")),
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            // SAFETY: kill of the hook's own process group
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            break Err(format!(
                "did not finish within {} s and was killed",
                limit.map_or(0, |l| l.as_secs())
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out: String = readers
        .into_iter()
        .filter_map(|r| r.join().ok())
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .collect();
    match status {
        Ok(st) if st.success() => Ok(out),
        Ok(st) => Err(fail(format!("failed ({st})"), &out)),
        Err(why) => Err(fail(why, &out)),
    }
}

/// This machine's host name (for messages).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "?".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_sees_its_node_and_a_failing_one_reports_its_output() {
        let out = run(
            Hook::Setup,
            "echo $BQRT_HOOK $BQRT_NODE $BQRT_NODE_WORKERS",
            3,
            7,
            None,
        )
        .unwrap();
        assert_eq!(out.trim(), "setup 3 7");
        let e = run(
            Hook::Setup,
            "echo half; echo broken >&2; exit 4",
            1,
            2,
            None,
        )
        .unwrap_err();
        assert!(
            e.contains("node 1") && e.contains("--node-setup") && e.contains("exit status: 4"),
            "{e}"
        );
        assert!(e.contains("half") && e.contains("broken"), "{e}");
        let t0 = Instant::now();
        let e = run(
            Hook::Teardown,
            "sleep 30",
            0,
            1,
            Some(Duration::from_millis(300)),
        )
        .unwrap_err();
        assert!(e.contains("did not finish within"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
