//! Fuzzing the decoders that read other people's bytes (not run by CI):
//!
//! ```sh
//! cargo bench --bench fuzz -- 60                      # native and rank-to-rank decoders
//! PYO3_PYTHON=$PWD/.venv/bin/python BQRT_PYTHON=$PWD/.venv/bin/python \
//!   cargo bench --features python --bench fuzz -- 60  # and BQSKit's message decoding
//! ```
//!
//! For the given seconds (default 60) it feeds random and mutated inputs (bit flips, byte
//! changes, insertions, truncations, splices, forged length prefixes) made from valid messages
//! to: the gateway's frame reader with both length prefixes (memory budget checked after
//! every frame), the native protocol's message decoder, the rank-to-rank packet decoder and,
//! with `--features python`, the BQSKit session's restricted unpickler. A panic is a crash;
//! it prints inputs per second per target and exits 1 if anything crashed.

use bqrt::gateway::frame::{self, Budget, Limits, Prefix};
use bqrt::protocol::native::{self, Request};
use bqrt::protocol::{codec, Format, JobId, LogSpec};
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// xorshift64*: reproducible from the seed printed at start.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(8) {
        let n = v.len();
        match rng.below(8) {
            0 if n > 0 => {
                let i = rng.below(n);
                v[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n);
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(n + 1);
                let k = rng.below(16);
                let bytes: Vec<u8> = (0..k).map(|_| rng.next() as u8).collect();
                v.splice(i..i, bytes);
            }
            3 if n > 0 => v.truncate(rng.below(n)),
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = a + rng.below(other.len() - a);
                    let i = rng.below(n + 1);
                    v.splice(i..i, other[a..b].iter().copied());
                }
            }
            5 if n >= 4 => {
                // a forged length prefix, either byte order
                let len = match rng.below(3) {
                    0 => rng.next() as u32,
                    1 => (n as u32).wrapping_add(rng.below(8) as u32),
                    _ => u32::MAX,
                };
                v[..4].copy_from_slice(&len.to_le_bytes());
            }
            6 => v = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
            _ => {}
        }
    }
    v
}

fn framed_le(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn native_seeds() -> Vec<Vec<u8>> {
    let reqs = [
        Request::Hello {
            token: "ab".repeat(32),
            client: "fuzz".into(),
        },
        Request::Submit {
            task: "fib".into(),
            args: b"20".to_vec(),
            format: Format::Json,
            log: LogSpec::OFF,
            detach: true,
        },
        Request::Status { job: JobId(7) },
        Request::Result {
            job: JobId(7),
            timeout_ms: Some(1000),
        },
        Request::Cancel { job: JobId(7) },
        Request::Watch { job: JobId(7) },
        Request::Top,
        Request::Shutdown,
        Request::Bye,
    ];
    reqs.iter().map(native::encode).collect()
}

#[derive(Default)]
struct Count {
    inputs: u64,
    ok: u64,
    crashes: u64,
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(60.0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut rng = Rng(seed);
    let native = native_seeds();
    let frames: Vec<Vec<u8>> = native.iter().map(|p| framed_le(p)).collect();
    let packets: Vec<Vec<u8>> = vec![codec::encode(&[]), {
        let msgs = [bqrt::protocol::Msg::Peer(bqrt::protocol::Peer::Alive)];
        codec::encode(&msgs)
    }];
    #[cfg(feature = "python")]
    let bqskit = bqskit_seeds();
    // from here on panics are counted, not printed per input
    std::panic::set_hook(Box::new(|_| {}));
    let budget = Budget::new(8 << 20);
    let limits = Limits {
        max: 1 << 20,
        deadline: Duration::from_secs(1),
        poll: None,
    };
    let names = [
        "frame (LE)",
        "frame (BE)",
        "native",
        "rank-to-rank",
        "bqskit",
    ];
    let mut counts: Vec<Count> = names.iter().map(|_| Count::default()).collect();
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let mut i = 0usize;
    while Instant::now() < until {
        for _ in 0..256 {
            let target = i % names.len();
            i += 1;
            let ok = match target {
                0 | 1 => {
                    let input = mutate(&mut rng, &frames);
                    let prefix = if target == 0 {
                        Prefix::Little
                    } else {
                        Prefix::Big
                    };
                    catch_unwind(AssertUnwindSafe(|| {
                        let mut src = Cursor::new(input);
                        let mut good = true;
                        while let Ok(Some(_)) = frame::read(&mut src, prefix, limits, &budget, &[])
                        {
                        }
                        good &= budget.used() == 0; // every frame's memory returned
                        good
                    }))
                }
                2 => {
                    let input = mutate(&mut rng, &native);
                    catch_unwind(|| native::decode::<Request>(&input).is_ok()).map(|_| true)
                }
                3 => {
                    let input = mutate(&mut rng, &packets);
                    catch_unwind(|| codec::decode(&input).is_ok()).map(|_| true)
                }
                _ => {
                    #[cfg(feature = "python")]
                    {
                        let input = mutate(&mut rng, &bqskit);
                        catch_unwind(|| bqrt::python::session::decode_for_fuzzing(&input).is_ok())
                            .map(|_| true)
                    }
                    #[cfg(not(feature = "python"))]
                    continue;
                }
            };
            let c = &mut counts[target];
            c.inputs += 1;
            match ok {
                Ok(true) => c.ok += 1,
                Ok(false) => c.crashes += 1, // a broken invariant (the budget)
                Err(_) => c.crashes += 1,
            }
        }
    }
    let took = start.elapsed().as_secs_f64();
    println!("fuzz: {took:.0} s, seed {seed}");
    let mut crashes = 0;
    let mut total = 0;
    for (name, c) in names.iter().zip(&counts) {
        if c.inputs == 0 {
            continue;
        }
        println!(
            "{name:<14} {:>12} inputs {:>10.0}/s  crashes {}",
            c.inputs,
            c.inputs as f64 / took,
            c.crashes
        );
        crashes += c.crashes;
        total += c.inputs;
    }
    println!(
        "total          {total:>12} inputs {:>10.0}/s  crashes {crashes}",
        total as f64 / took
    );
    if crashes > 0 {
        std::process::exit(1);
    }
}

/// BQSKit client frames as its client pickles them (made with the runtime's Python).
#[cfg(feature = "python")]
fn bqskit_seeds() -> Vec<Vec<u8>> {
    use bqrt::python::{env, interp};
    use pyo3::prelude::*;
    let flag = std::env::var_os("BQRT_PYTHON").map(std::path::PathBuf::from);
    let (exe, _) = env::choose(flag.as_deref());
    match env::probe(&exe) {
        Ok(e) => interp::set_env(e),
        Err(e) => panic!("fuzz: a Python with bqskit is needed for --features python: {e}"),
    }
    if let Err(e) = interp::start() {
        panic!("fuzz: Python did not start: {e}");
    }
    Python::with_gil(|py| {
        let code = r#"
import pickle, sys
from bqskit.runtime.message import RuntimeMessage as M
seeds = [pickle.dumps(x) for x in [
    (M.CONNECT, list(sys.path)), (M.DISCONNECT, None), (M.STATUS, 'a-uuid'),
    (M.REQUEST, 'a-uuid'), (M.CANCEL, 'a-uuid'), (M.SUBMIT, ('x', 1, 2)),
    (M.CONNECT, [1, 2.5, b'x', None, True, (1, 2), {'k': 'v'}]),
]]
"#;
        let m = PyModule::from_code_bound(py, code, "fuzz_seeds.py", "fuzz_seeds")
            .unwrap_or_else(|e| panic!("fuzz: seeds: {e}"));
        m.getattr("seeds")
            .and_then(|s| s.extract::<Vec<Vec<u8>>>())
            .unwrap_or_else(|e| panic!("fuzz: seeds: {e}"))
    })
}
