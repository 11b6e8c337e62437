//! Helpers for tests that run the real binary under the real launcher.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "exit status; stderr:\n{}\nstdout:\n{}",
            self.stderr,
            self.stdout
        );
        self
    }
    /// The last non-empty line of stdout (where `bqrt run` prints its result).
    pub fn last_line(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_str(self.last_line()) {
            Ok(v) => v,
            Err(e) => panic!(
                "last stdout line is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            ),
        }
    }
    /// Values of `key=value` in `bqrt-stats` lines of rank lines.
    pub fn stats(&self) -> Vec<std::collections::HashMap<String, String>> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("bqrt-stats rank="))
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|kv| {
                        kv.split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    })
                    .collect()
            })
            .collect()
    }
}

pub fn bqrt_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bqrt"))
}

/// `mpirun` with the settings every test needs: root allowed, oversubscription, no binding by
/// the launcher (ranks outnumber the 2 cores of CI).
pub fn mpirun(n: u32) -> Command {
    let mut c = Command::new("mpirun");
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("OMPI_MCA_hwloc_base_binding_policy", "none")
        .args(["-n", &n.to_string()]);
    c
}

/// Run a command to completion, killing it after `limit` (a hang fails the test, never blocks CI).
pub fn run(mut cmd: Command, limit: Duration) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = child.stdout.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut v = String::new();
            let _ = s.read_to_string(&mut v);
            v
        })
    });
    let mut err = child.stderr.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut v = String::new();
            let _ = s.read_to_string(&mut v);
            v
        })
    });
    let code = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code(),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err.take().and_then(|h| h.join().ok()).unwrap_or_default();
                panic!("{cmd:?} still running after {limit:?} (hang); stderr:\n{stderr}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    let stdout = out.take().and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.take().and_then(|h| h.join().ok()).unwrap_or_default();
    Run {
        code,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    }
}

/// `mpirun -n N <bin> ARGS...`
pub fn mpirun_bin(n: u32, bin: &Path, args: &[&str]) -> Run {
    let mut c = mpirun(n);
    c.arg(bin).args(args);
    run(c, Duration::from_secs(120))
}

/// `mpirun -n N bqrt ARGS...`
pub fn bqrt(n: u32, args: &[&str]) -> Run {
    mpirun_bin(n, &bqrt_bin(), args)
}
