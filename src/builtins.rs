//! Built-in tasks for tests, benchmarks and demos.
//!
//! | task | argument (JSON) | result |
//! | --- | --- | --- |
//! | `noop` | `null` | `null` |
//! | `sleep` | milliseconds | the milliseconds (blocks its worker, like a long computation; ends early when cancelled) |
//! | `spin` | milliseconds | `true` if it ran to the end, `false` if it saw its cancel flag |
//! | `fanout` | n | n, after a `map` of n `noop`s |
//! | `chain` | depth | depth, each level submits one child and awaits it |
//! | `tree` | depth | tasks in a binary tree of that depth (8191 for 12) |
//! | `fib` | n | fib(n), one task per call |
//! | `fail` | message or `null` | fails with the message |
//! | `panic` | message or `null` | panics with the message |
//! | `nest` | `{"depth","task","arg"}` | runs `task(arg)` (`fail`/`panic`) `depth` levels down |
//! | `next_demo` | list of sleep milliseconds | arrival batches seen by `next`, and the awaited list |
//! | `cancel_demo` | `{"children","spin_ms"}` | cancels a map and a running `spin`; see the logs |
//! | `cache_demo` | n | per rank, the counts its cache saw |
//! | `log_demo` | depth | logs at every level from a chain of that depth |
//! | `spread` | `{"outer","inner","ms"}` | ranks that ran the children of a 2-level map |
//! | `env_all` | n | per worker rank: its GPU, BLAS threads and cpus (from n probes) |

use crate::executor::{Ctx, Registry, TaskError, TaskResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

impl Registry {
    /// The built-in tasks (`noop`, `sleep`, `spin`, `fanout`, `chain`, `tree`, `fib`, `fail`,
    /// `panic`, ...): see the table above.
    pub fn with_builtins() -> Registry {
        register(Registry::new())
    }
}

pub(crate) fn register(r: Registry) -> Registry {
    r.task("noop", |_ctx: Ctx, _: ()| async { Ok(()) })
        .task("sleep", sleep)
        .task("spin", spin)
        .task("fanout", |ctx: Ctx, n: u64| async move {
            let done: Vec<()> = ctx.map("noop", (0..n).map(|_| ()))?.await?;
            Ok(done.len() as u64)
        })
        .task("chain", chain)
        .task("tree", tree)
        .task("fib", fib)
        .task("fail", |_ctx: Ctx, msg: Option<String>| async move {
            Err::<(), _>(TaskError::new(
                msg.unwrap_or_else(|| "the fail task failed as asked".into()),
            ))
        })
        .task("panic", |_ctx: Ctx, msg: Option<String>| async move {
            let msg = msg.unwrap_or_else(|| "the panic task panicked as asked".into());
            panic!("{msg}");
            #[allow(unreachable_code)]
            Ok(())
        })
        .task("nest", nest)
        .task("next_demo", next_demo)
        .task("cancel_demo", cancel_demo)
        .task("cancel_mark", |_ctx: Ctx, i: u64| async move {
            log::warn!(target: "demo", "cancel_mark {i} started");
            std::thread::sleep(Duration::from_millis(20));
            Ok(true)
        })
        .task("cache_count", cache_count)
        .task("cache_demo", cache_demo)
        .task("log_demo", log_demo)
        .task("whereami", |ctx: Ctx, ms: u64| async move {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(ctx.rank().0)
        })
        .task("spread", spread)
        .task("spread_outer", spread_outer)
        .task("env_probe", |ctx: Ctx, ms: u64| async move {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(EnvProbe::here(ctx.rank().0))
        })
        .task("env_all", env_all)
        .task("resource_mix", resource_mix)
}

/// Block the worker for `ms` milliseconds (as a long computation would), in slices that look at
/// the cancel flag: a cancelled sleep ends within a slice.
async fn sleep(ctx: Ctx, ms: u64) -> TaskResult<u64> {
    const SLICE: Duration = Duration::from_millis(10);
    let end = Instant::now().checked_add(Duration::from_millis(ms));
    while !ctx.is_cancelled() {
        let left = end.map_or(SLICE, |e| e.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(SLICE));
    }
    Ok(ms)
}

async fn spin(ctx: Ctx, ms: u64) -> TaskResult<bool> {
    let start = Instant::now();
    let end = start + Duration::from_millis(ms);
    while Instant::now() < end {
        if ctx.is_cancelled() {
            log::warn!(
                target: "demo",
                "spin saw its cancel flag after {} ms",
                start.elapsed().as_millis()
            );
            return Ok(false);
        }
        std::hint::spin_loop();
    }
    Ok(true)
}

async fn chain(ctx: Ctx, depth: u64) -> TaskResult<u64> {
    if depth == 0 {
        return Ok(0);
    }
    let below: u64 = ctx.submit("chain", depth - 1)?.await?;
    Ok(below + 1)
}

async fn tree(ctx: Ctx, depth: u32) -> TaskResult<u64> {
    if depth == 0 {
        return Ok(1);
    }
    let sub: Vec<u64> = ctx.map("tree", [depth - 1, depth - 1])?.await?;
    Ok(1 + sub.iter().sum::<u64>())
}

async fn fib(ctx: Ctx, n: u64) -> TaskResult<u64> {
    if n < 2 {
        return Ok(n);
    }
    let sub: Vec<u64> = ctx.map("fib", [n - 1, n - 2])?.await?;
    Ok(sub.iter().sum())
}

#[derive(Serialize, Deserialize)]
struct Nest {
    depth: u32,
    task: String,
    arg: Option<String>,
}

async fn nest(ctx: Ctx, n: Nest) -> TaskResult<()> {
    if n.depth == 0 {
        return ctx.submit(&n.task, n.arg)?.await;
    }
    ctx.submit(
        "nest",
        Nest {
            depth: n.depth - 1,
            task: n.task,
            arg: n.arg,
        },
    )?
    .await
}

/// What `next` returned, batch by batch, and the full awaited list.
#[derive(Serialize, Deserialize, Debug)]
pub struct NextDemo {
    pub batches: Vec<Vec<usize>>,
    pub after_complete: usize,
    pub awaited: Vec<u64>,
}

async fn next_demo(ctx: Ctx, delays: Vec<u64>) -> TaskResult<NextDemo> {
    let n = delays.len();
    let mut fut = ctx.map::<u64, u64>("sleep", delays.clone())?;
    let mut batches = Vec::new();
    let mut seen = 0;
    while seen < n {
        let got = ctx.next(&mut fut).await?;
        if got.is_empty() {
            return Err(TaskError::new(
                "next returned nothing before every result arrived",
            ));
        }
        for (i, v) in &got {
            if delays.get(*i) != Some(v) {
                return Err(TaskError::new(format!("next gave index {i} value {v}")));
            }
        }
        seen += got.len();
        batches.push(got.into_iter().map(|(i, _)| i).collect());
    }
    let after_complete = ctx.next(&mut fut).await?.len();
    let awaited = fut.await?;
    Ok(NextDemo {
        batches,
        after_complete,
        awaited,
    })
}

#[derive(Serialize, Deserialize)]
struct CancelDemo {
    children: u32,
    spin_ms: u64,
}

async fn cancel_demo(ctx: Ctx, c: CancelDemo) -> TaskResult<String> {
    // 1. a map cancelled in the step that submitted it: none of its tasks may ever start
    let doomed = ctx.map_with::<u64, bool>(
        "cancel_mark",
        0..u64::from(c.children),
        crate::Options::new().name("doomed"),
    )?;
    ctx.cancel(doomed);
    // 2. a running task sees its cancel flag
    let spinner = ctx.submit::<u64, bool>("spin", c.spin_ms)?;
    let _: u64 = ctx.submit("sleep", 300u64)?.await?; // the spinner starts meanwhile
    ctx.cancel(spinner);
    let _: u64 = ctx.submit("sleep", 1000u64)?.await?; // keep the job alive for the spinner's log
    Ok("cancel demo done".into())
}

async fn cache_count(ctx: Ctx, _: u64) -> TaskResult<(u32, u64)> {
    let rank = ctx.rank().0;
    let mut cache = ctx.cache();
    let n = cache.get_or_insert_with("cache_count", || 0u64);
    *n += 1;
    Ok((rank, *n))
}

async fn cache_demo(ctx: Ctx, n: u64) -> TaskResult<BTreeMap<u32, Vec<u64>>> {
    let seen: Vec<(u32, u64)> = ctx.map("cache_count", 0..n)?.await?;
    let mut per: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (rank, count) in seen {
        per.entry(rank).or_default().push(count);
    }
    for v in per.values_mut() {
        v.sort_unstable();
    }
    Ok(per)
}

async fn log_demo(ctx: Ctx, depth: u32) -> TaskResult<u32> {
    let d = ctx.depth();
    log::error!(target: "demo", "log_demo depth {d} error");
    log::warn!(target: "demo", "log_demo depth {d} warn");
    log::info!(target: "demo", "log_demo depth {d} info");
    log::debug!(target: "demo", "log_demo depth {d} debug");
    if depth == 0 {
        return Ok(d);
    }
    ctx.submit_with(
        "log_demo",
        depth - 1,
        crate::Options::new().context("level", d.to_string()),
    )?
    .await
}

#[derive(Serialize, Deserialize)]
struct Spread {
    outer: u32,
    inner: u32,
    ms: u64,
}

async fn spread_outer(ctx: Ctx, s: Spread) -> TaskResult<Vec<u32>> {
    ctx.map("whereami", (0..s.inner).map(|_| s.ms))?.await
}

/// A 2-level map; the sorted set of ranks that ran the inner children.
async fn spread(ctx: Ctx, s: Spread) -> TaskResult<Vec<u32>> {
    let inner = ctx.map(
        "spread_outer",
        (0..s.outer).map(|_| Spread {
            outer: 0,
            inner: s.inner,
            ms: s.ms,
        }),
    )?;
    let all: Vec<Vec<u32>> = inner.await?;
    let mut ranks: Vec<u32> = all.into_iter().flatten().collect();
    ranks.sort_unstable();
    ranks.dedup();
    Ok(ranks)
}

/// What a worker's environment looks like.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EnvProbe {
    pub rank: u32,
    pub cuda_visible_devices: Option<String>,
    pub omp_num_threads: Option<String>,
    pub openblas_num_threads: Option<String>,
    pub cpus: String,
    /// The worker's group and the resources it offers (`BQRT_GROUP`, `BQRT_RESOURCES`).
    pub group: Option<String>,
    pub resources: Option<String>,
    pub xla_python_client_preallocate: Option<String>,
}

impl EnvProbe {
    fn here(rank: u32) -> EnvProbe {
        let cpus = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Cpus_allowed_list:"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        EnvProbe {
            rank,
            cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
            omp_num_threads: std::env::var("OMP_NUM_THREADS").ok(),
            openblas_num_threads: std::env::var("OPENBLAS_NUM_THREADS").ok(),
            cpus,
            group: std::env::var("BQRT_GROUP").ok(),
            resources: std::env::var("BQRT_RESOURCES").ok(),
            xla_python_client_preallocate: std::env::var("XLA_PYTHON_CLIENT_PREALLOCATE").ok(),
        }
    }
}

/// `resource_mix`: `n` probes that need `needs` (empty: nothing) beside `n` that need nothing, submitted
/// interleaved in batches of `batch`, each probe sleeping `ms`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Mix {
    pub n: u32,
    pub needs: String,
    #[serde(default)]
    pub ms: u64,
    #[serde(default = "Mix::default_batch")]
    pub batch: u32,
}

impl Mix {
    fn default_batch() -> u32 {
        50
    }
}

/// Where the probes of `resource_mix` ran: `(rank, group, CUDA_VISIBLE_DEVICES, probes)` for
/// those that needed the resource and for the others.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct MixReport {
    pub needing: Vec<(u32, String, String, u32)>,
    pub free: Vec<(u32, String, String, u32)>,
}

async fn resource_mix(ctx: Ctx, m: Mix) -> TaskResult<MixReport> {
    let batch = m.batch.max(1);
    let mut needing = Vec::new();
    let mut free = Vec::new();
    let mut left = m.n;
    while left > 0 {
        let k = left.min(batch);
        left -= k;
        let opts = match m.needs.is_empty() {
            true => crate::executor::Options::new(),
            false => crate::executor::Options::new().needs(m.needs.clone()),
        };
        let a = ctx.map_with("env_probe", (0..k).map(|_| m.ms), opts)?;
        let b = ctx.map("env_probe", (0..k).map(|_| m.ms))?;
        let (a, b): (Vec<EnvProbe>, Vec<EnvProbe>) = (a.await?, b.await?);
        needing.extend(a);
        free.extend(b);
    }
    let tally = |probes: Vec<EnvProbe>| {
        let mut t: BTreeMap<(u32, String, String), u32> = BTreeMap::new();
        for p in probes {
            let key = (
                p.rank,
                p.group.unwrap_or_default(),
                p.cuda_visible_devices.unwrap_or_default(),
            );
            *t.entry(key).or_default() += 1;
        }
        t.into_iter().map(|((r, g, c), n)| (r, g, c, n)).collect()
    };
    Ok(MixReport {
        needing: tally(needing),
        free: tally(free),
    })
}

async fn env_all(ctx: Ctx, n: u64) -> TaskResult<Vec<EnvProbe>> {
    let all: Vec<EnvProbe> = ctx.map("env_probe", (0..n).map(|_| 30u64))?.await?;
    let mut per: BTreeMap<u32, EnvProbe> = BTreeMap::new();
    for p in all {
        per.insert(p.rank, p);
    }
    Ok(per.into_values().collect())
}
