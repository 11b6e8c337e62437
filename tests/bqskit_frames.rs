//! Rank 0 reads BQSKit client frames in Rust (`python::unpickle`) where it is sure of the
//! restricted unpickler's answer: on the frames BQSKit's client really sends it must be sure
//! and agree, and on mangled ones it may only agree or step aside.
#![cfg(feature = "python")]

use bqrt::python::session::decode_in_python;
use bqrt::python::unpickle::{decode, ClientMsg};
use bqrt::python::{env, interp};
use pyo3::prelude::*;
use std::path::PathBuf;

/// The frames BQSKit's client sends (pickled as `multiprocessing.connection` does), built by
/// BQSKit itself in the embedded interpreter: CONNECT, SUBMIT of real compilations, REQUEST,
/// STATUS, CANCEL, DISCONNECT.
fn real_frames() -> Vec<(String, Vec<u8>)> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::var_os("BQRT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/python"));
    let e = env::probe(&exe)
        .unwrap_or_else(|e| panic!("a Python with bqskit is needed ({exe:?}): {e}"));
    interp::set_env(e);
    interp::start().unwrap_or_else(|e| panic!("Python did not start: {e}"));
    let circuits = repo.join("tests/data/circuits");
    Python::with_gil(|py| {
        let code = r#"
import sys, uuid
from multiprocessing.reduction import ForkingPickler
from bqskit.runtime.message import RuntimeMessage as M
from bqskit.compiler import CompilationTask
from bqskit.compiler.compile import build_workflow
from bqskit.ir import Circuit

def frames(circuits):
    out = []
    def add(name, msg, payload):
        out.append((name, bytes(ForkingPickler.dumps((msg, payload)))))
        # an older pickle protocol (no frames, text-named classes)
        out.append((name + ', protocol 2', bytes(ForkingPickler.dumps((msg, payload), 2))))
    add('connect', M.CONNECT, list(sys.path))
    for name, level in [('ghz_8', 1), ('qft_6', 3)]:
        c = Circuit.from_file(f'{circuits}/{name}.qasm')
        t = CompilationTask(c, build_workflow(c, optimization_level=level, seed=0))
        t.logging_level = 20
        t.max_logging_depth = 3
        add(f'submit {name} -O{level}', M.SUBMIT, t)
        add('request', M.REQUEST, t.task_id)
        add('status', M.STATUS, t.task_id)
        add('cancel', M.CANCEL, t.task_id)
    from bqskit.passes import NOOPPass
    t = CompilationTask(Circuit(1), [NOOPPass()])
    add('submit, defaults', M.SUBMIT, t)
    for i in range(64):  # UUIDs whose top bit is set and not
        add('request', M.REQUEST, uuid.uuid4())
    add('disconnect', M.DISCONNECT, None)
    return out
"#;
        let m = PyModule::from_code_bound(py, code, "frames.py", "frames")
            .unwrap_or_else(|e| panic!("{}", interp::describe(py, &e)));
        m.getattr("frames")
            .and_then(|f| f.call1((circuits.to_string_lossy().to_string(),)))
            .and_then(|v| v.extract::<Vec<(String, Vec<u8>)>>())
            .unwrap_or_else(|e| panic!("{}", interp::describe(py, &e)))
    })
}

#[test]
fn bqskit_frames_are_read_in_rust_as_the_unpickler_reads_them() {
    let frames = real_frames();
    let mut submits = 0;
    for (name, f) in &frames {
        let fast = decode(f).unwrap_or_else(|| panic!("{name}: left to the unpickler"));
        let slow = decode_in_python(f).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(fast, slow, "{name}");
        if let ClientMsg::Submit { level, depth, .. } = &fast {
            submits += 1;
            if !name.contains("defaults") {
                assert_eq!((*level, *depth), (20, 3), "{name}");
            }
        }
    }
    assert_eq!(submits, 6);
}

/// xorshift: the same mangled frames in every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn on_mangled_frames_rust_agrees_with_the_unpickler_or_steps_aside() {
    let frames: Vec<Vec<u8>> = real_frames()
        .into_iter()
        .map(|(_, f)| f)
        .filter(|f| f.len() < 4096) // the submits' size makes the unpickler the slow part
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sure = 0;
    for _ in 0..50_000 {
        let mut f = frames[rng.below(frames.len())].clone();
        for _ in 0..1 + rng.below(2) {
            let at = rng.below(f.len());
            // mostly in place: a byte more or less moves a protocol-4 frame's end, which Rust
            // leaves to the unpickler
            match rng.below(8) {
                0..=3 => f[at] = rng.next() as u8,
                4 | 5 => f[at] ^= 1 << rng.below(8),
                6 => {
                    f.remove(at);
                }
                _ => {
                    let b = f[rng.below(f.len())];
                    f.insert(at, b);
                }
            }
            if f.is_empty() {
                break;
            }
        }
        if let Some(fast) = decode(&f) {
            sure += 1;
            match decode_in_python(&f) {
                Ok(slow) => assert_eq!(fast, slow, "{f:?}"),
                Err(e) => panic!("Rust read {fast:?}, the unpickler refused: {e}\n{f:?}"),
            }
        }
    }
    // the mangling leaves many frames readable: the comparison is not empty
    assert!(sure > 3_000, "only {sure} mangled frames read in Rust");
}
