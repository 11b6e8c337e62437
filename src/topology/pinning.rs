//! Where a worker runs: core pinning, BLAS thread counts and GPU assignment for worker ranks.
//!
//! Only workers pin themselves; the server and the managers are left where the launcher put them
//! (they mostly wait on messages and must not steal a worker's core).
//!
//! # Policy
//!
//! The decision is a pure function, [`plan`], of the machine's cores (from hwloc), the number of
//! workers on this node, this worker's index among them, the [`PinPolicy`] chosen on the command
//! line and the process's current cpuset. [`apply`] then carries the plan out with hwloc.
//!
//! * `--no-pin` ([`PinPolicy::None`]): leave the process alone.
//! * A launcher binding is respected, not fought: when the process's current cpuset is a strict
//!   subset of the machine's PUs (`srun --cpu-bind=...`, `mpirun --bind-to core`, `taskset`), the
//!   automatic policy leaves it as it is, and `--cpus` may only pick PUs inside it.
//! * Automatic ([`PinPolicy::Auto`], the default): cores in hwloc's compact (logical) order. On a
//!   machine with several packages (sockets), workers go round robin over the packages first so
//!   each package gets its fair share, then compactly within a package; a package made of several
//!   NUMA nodes is spread over its NUMA nodes the same way. With more workers than cores, worker
//!   `i` takes the `i % cores`-th core of that order and the plan says the cores are shared.
//!   A worker is bound to every PU of its core (its SMT siblings), so its MPI progress thread and
//!   its task thread share the core rather than one hardware thread.
//! * `--cpus LIST` ([`PinPolicy::Cpus`]): LIST (as parsed by [`parse_cpus`], e.g. `0,2,4-7`) gives
//!   Linux CPU numbers (hwloc PU os indexes, as in `taskset` and `srun --cpu-bind=map_cpu`), one
//!   per worker in worker order; worker `i` is bound to exactly the `i`-th entry. Fewer entries
//!   than workers is an error; extra entries are ignored.
//!
//! Besides the binding, each worker's numeric libraries get its thread count ([`blas_env`]); its
//! GPU and the rest of its environment come from its worker group (`topology/groups.rs`).
//!
//! # hwloc2 2.2
//!
//! The `hwloc2` crate has memory-safety bugs that this module steers around: a topology object's
//! `cpuset()`/`nodeset()` is the topology's own bitmap and is cloned before any use; a
//! `TopologyObject` is never formatted and `TopologyObject::name()` is never called; no bitmap is
//! formatted either (the crate leaks the string). `objects_with_type(&ObjectType::NUMANode)`
//! panics with hwloc 2 (NUMA nodes have a virtual depth the crate mistakes for the bridge depth),
//! so a core's NUMA node is read from its nodeset instead (the first NUMA node local to it; the
//! package when the nodeset is empty).

use hwloc2::{CpuBindError, CpuBindFlags, CpuSet, ObjectType, Topology, TopologyObject};
use std::fmt;
use thiserror::Error;

/// One core of the machine, as hwloc reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreInfo {
    /// The core's os index (unique within a package only, on Linux).
    pub os_index: u32,
    /// Package (socket) id: equal ids mean the same package.
    pub package: u32,
    /// NUMA node id: equal ids mean the same NUMA node.
    pub numa: u32,
    /// The core's PUs (hardware threads) as Linux CPU numbers.
    pub pus: Vec<u32>,
}

/// How workers are pinned, from the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PinPolicy {
    /// One core per worker, spread over packages (the default).
    #[default]
    Auto,
    /// Do not pin (`--no-pin`).
    None,
    /// `--cpus LIST`: Linux CPU numbers, one per worker, in worker order.
    Cpus(Vec<u32>),
}

impl PinPolicy {
    /// The policy for `--no-pin` and `--cpus LIST` (both absent: [`PinPolicy::Auto`]).
    pub fn from_flags(no_pin: bool, cpus: Option<&str>) -> Result<PinPolicy, PinError> {
        match (no_pin, cpus) {
            (true, Some(_)) => Err(PinError::Contradiction),
            (true, None) => Ok(PinPolicy::None),
            (false, Some(list)) => Ok(PinPolicy::Cpus(parse_cpus(list)?)),
            (false, None) => Ok(PinPolicy::Auto),
        }
    }
}

/// What a worker should do about its binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinPlan {
    /// Keep the current binding.
    Leave { reason: String },
    /// Bind the process to `pus`, which belong to core `core_os_index`.
    Core {
        core_os_index: u32,
        pus: Vec<u32>,
        /// More workers than cores on this node: this core is shared with other workers.
        wrapped: bool,
    },
    /// Bind the process to `pus`, which belong to the cores `cores` (a worker of a group with
    /// `cores=k`, k > 1).
    Cores {
        cores: Vec<u32>,
        pus: Vec<u32>,
        wrapped: bool,
    },
}

impl fmt::Display for PinPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinPlan::Leave { reason } => write!(f, "not pinned: {reason}"),
            PinPlan::Core {
                core_os_index,
                pus,
                wrapped,
            } => {
                write!(
                    f,
                    "pinned to core {core_os_index} (cpus {})",
                    format_cpus(pus)
                )?;
                if *wrapped {
                    f.write_str(
                        "; this node runs more workers than it has cores, so cores are shared",
                    )?;
                }
                Ok(())
            }
            PinPlan::Cores {
                cores,
                pus,
                wrapped,
            } => {
                write!(
                    f,
                    "pinned to cores {} (cpus {})",
                    format_cpus(cores),
                    format_cpus(pus)
                )?;
                if *wrapped {
                    f.write_str(
                        "; this node's workers ask for more cores than it has, so cores are shared",
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Why pinning could not be planned or applied. Every message names the flag that fixes it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PinError {
    #[error("--no-pin and --cpus contradict each other; use one of them")]
    Contradiction,
    #[error("--cpus {input:?}: {problem}; expected a list such as 0,2,4-7")]
    BadCpuList { input: String, problem: String },
    #[error("--cpus lists {listed} cpus but this node runs {workers} workers; list one per worker or use --no-pin")]
    TooFewCpus { listed: usize, workers: u32 },
    #[error("--cpus gives cpu {cpu} to worker {worker}, but this machine's cpus are {available}; list existing cpus or use --no-pin")]
    NoSuchCpu {
        cpu: u32,
        worker: u32,
        available: String,
    },
    #[error("--cpus gives cpu {cpu} to worker {worker}, but the launcher bound this process to cpus {allowed}; list cpus inside that binding, drop --cpus, or launch without binding (srun --cpu-bind=none, mpirun --bind-to none)")]
    OutsideLauncherBinding {
        cpu: u32,
        worker: u32,
        allowed: String,
    },
    #[error("worker index {index} is out of range for {workers} workers on this node")]
    WorkerIndex { index: u32, workers: u32 },
    #[error("hwloc found no cores on this machine; run with --no-pin")]
    NoCores,
    #[error("hwloc could not read this machine's topology; run with --no-pin")]
    Topology,
    #[error("hwloc could not read this process's cpu binding; run with --no-pin")]
    GetBinding,
    #[error("a pin plan for core {0} has no cpus; run with --no-pin")]
    EmptyCore(u32),
    #[error("cannot bind this process to cpus {cpus}: {reason}; run with --no-pin or choose other --cpus")]
    Bind { cpus: String, reason: String },
}

/// Decide this worker's binding.
///
/// `cores` is the machine's cores in hwloc's compact order ([`machine_cores`]), `workers_on_node`
/// the number of workers on this node, `worker_index` this worker's 0-based index among them,
/// and `current` the process's current cpuset as Linux CPU numbers ([`current_cpuset`]; empty
/// means unknown, treated as unbound).
pub fn plan(
    cores: &[CoreInfo],
    workers_on_node: u32,
    worker_index: u32,
    policy: &PinPolicy,
    current: &[u32],
) -> Result<PinPlan, PinError> {
    if worker_index >= workers_on_node {
        return Err(PinError::WorkerIndex {
            index: worker_index,
            workers: workers_on_node,
        });
    }
    let bound = launcher_bound(cores, current);
    match policy {
        PinPolicy::None => Ok(PinPlan::Leave {
            reason: "--no-pin".into(),
        }),
        PinPolicy::Cpus(list) => {
            if list.len() < workers_on_node as usize {
                return Err(PinError::TooFewCpus {
                    listed: list.len(),
                    workers: workers_on_node,
                });
            }
            let cpu = list[worker_index as usize];
            let Some(core) = cores.iter().find(|c| c.pus.contains(&cpu)) else {
                return Err(PinError::NoSuchCpu {
                    cpu,
                    worker: worker_index,
                    available: format_cpus(&all_pus(cores)),
                });
            };
            if bound && !current.contains(&cpu) {
                return Err(PinError::OutsideLauncherBinding {
                    cpu,
                    worker: worker_index,
                    allowed: format_cpus(current),
                });
            }
            Ok(PinPlan::Core {
                core_os_index: core.os_index,
                pus: vec![cpu],
                wrapped: false,
            })
        }
        PinPolicy::Auto => {
            if cores.is_empty() {
                return Err(PinError::NoCores);
            }
            if bound {
                return Ok(PinPlan::Leave {
                    reason: format!("bound by the launcher to cpus {}", format_cpus(current)),
                });
            }
            let order = spread_order(cores);
            let core = &cores[order[worker_index as usize % order.len()]];
            Ok(PinPlan::Core {
                core_os_index: core.os_index,
                pus: core.pus.clone(),
                wrapped: workers_on_node as usize > cores.len(),
            })
        }
    }
}

/// Decide the binding of a worker that takes `k` cores: core slots `first .. first + k` of
/// the node's `slots` (the sum of its workers' cores). With `k == 1` on a node where every
/// worker takes one core (`compact == false`) this is [`plan`]; otherwise the slots follow
/// hwloc's compact order, so a worker's cores are neighbours (decision 47).
pub fn plan_cores(
    cores: &[CoreInfo],
    slots: u32,
    first: u32,
    k: u32,
    compact: bool,
    policy: &PinPolicy,
    current: &[u32],
) -> Result<PinPlan, PinError> {
    if k <= 1 && !compact {
        return plan(cores, slots, first, policy, current);
    }
    match policy {
        PinPolicy::None => {
            return Ok(PinPlan::Leave {
                reason: "--no-pin".into(),
            })
        }
        PinPolicy::Cpus(_) => {
            // one cpu per core slot, in slot order: the worker takes its k entries
            let mut pus = Vec::new();
            let mut ids = Vec::new();
            for j in 0..k.max(1) {
                if let PinPlan::Core {
                    core_os_index,
                    pus: p,
                    ..
                } = plan(cores, slots, first + j, policy, current)?
                {
                    ids.push(core_os_index);
                    pus.extend(p);
                }
            }
            return Ok(PinPlan::Cores {
                cores: ids,
                pus,
                wrapped: false,
            });
        }
        PinPolicy::Auto => {}
    }
    if cores.is_empty() {
        return Err(PinError::NoCores);
    }
    if first.saturating_add(k) > slots {
        return Err(PinError::WorkerIndex {
            index: first,
            workers: slots,
        });
    }
    if launcher_bound(cores, current) {
        return Ok(PinPlan::Leave {
            reason: format!("bound by the launcher to cpus {}", format_cpus(current)),
        });
    }
    let n = cores.len() as u32;
    let mut ids = Vec::new();
    let mut pus = Vec::new();
    for j in 0..k.max(1) {
        let c = &cores[((first + j) % n) as usize];
        ids.push(c.os_index);
        pus.extend(c.pus.iter().copied());
    }
    pus.sort_unstable();
    pus.dedup();
    Ok(PinPlan::Cores {
        cores: ids,
        pus,
        wrapped: slots > n,
    })
}

/// Every PU of the machine, sorted.
fn all_pus(cores: &[CoreInfo]) -> Vec<u32> {
    let mut all: Vec<u32> = cores.iter().flat_map(|c| c.pus.iter().copied()).collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The process is bound by someone else when its cpuset leaves out some PU of the machine.
fn launcher_bound(cores: &[CoreInfo], current: &[u32]) -> bool {
    !current.is_empty() && all_pus(cores).iter().any(|p| !current.contains(p))
}

/// Core indexes in the order workers take them: round robin over packages, within a package
/// round robin over its NUMA nodes, compact within a NUMA node.
fn spread_order(cores: &[CoreInfo]) -> Vec<usize> {
    /// A group id and the core indexes in it.
    type Group = (u32, Vec<usize>);
    // packages and their NUMA nodes in order of first appearance
    let mut packages: Vec<(u32, Vec<Group>)> = Vec::new();
    for (i, c) in cores.iter().enumerate() {
        let p = match packages.iter().position(|(id, _)| *id == c.package) {
            Some(p) => p,
            None => {
                packages.push((c.package, Vec::new()));
                packages.len() - 1
            }
        };
        let numas = &mut packages[p].1;
        match numas.iter_mut().find(|(id, _)| *id == c.numa) {
            Some((_, list)) => list.push(i),
            None => numas.push((c.numa, vec![i])),
        }
    }
    let per_package: Vec<Vec<usize>> = packages
        .into_iter()
        .map(|(_, numas)| round_robin(numas.into_iter().map(|(_, l)| l).collect()))
        .collect();
    round_robin(per_package)
}

/// First of each group, then second of each group, ... (groups that run out are skipped).
fn round_robin(groups: Vec<Vec<usize>>) -> Vec<usize> {
    let longest = groups.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| groups.iter().filter_map(move |g| g.get(i).copied()))
        .collect()
}

/// Most entries a `--cpus` list may expand to (Linux supports at most 8192 CPUs).
const MAX_CPUS: usize = 65536;

/// Parse a cpu list such as `0,2,4-7` (entries in the given order, ranges ascending).
pub fn parse_cpus(list: &str) -> Result<Vec<u32>, PinError> {
    let bad = |problem: String| PinError::BadCpuList {
        input: list.to_string(),
        problem,
    };
    let number = |s: &str| -> Result<u32, PinError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(bad("a range is missing a number".into()));
        }
        s.parse::<u32>()
            .map_err(|_| bad(format!("{s:?} is not a cpu number")))
    };
    if list.trim().is_empty() {
        return Err(bad("the list is empty".into()));
    }
    let mut out = Vec::new();
    for entry in list.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(bad("empty entry (two commas, or a comma at an end)".into()));
        }
        let (lo, hi) = match entry.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(entry)?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(bad(format!("range {entry} runs backwards")));
        }
        if out.len() + (hi - lo) as usize >= MAX_CPUS {
            return Err(bad(format!("more than {MAX_CPUS} cpus")));
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

/// Format cpu numbers compactly (`0-3,5`): the inverse of [`parse_cpus`] for sorted lists.
pub fn format_cpus(cpus: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j].checked_add(1) == Some(cpus[j + 1]) {
            j += 1;
        }
        parts.push(if j > i + 1 {
            format!("{}-{}", cpus[i], cpus[j])
        } else if j == i + 1 {
            format!("{},{}", cpus[i], cpus[j])
        } else {
            cpus[i].to_string()
        });
        i = j + 1;
    }
    if parts.is_empty() {
        "(none)".into()
    } else {
        parts.join(",")
    }
}

/// PUs of a topology object, read from a copy of its cpuset.
fn pus_of(obj: &TopologyObject) -> Vec<u32> {
    match obj.cpuset() {
        Some(set) => set.clone().into_iter().collect(),
        None => Vec::new(),
    }
}

/// This machine's cores in hwloc's compact order (each PU counts as a core when hwloc reports no
/// cores). `package` is the package's logical index; `numa` the os index of the first NUMA node
/// local to the core (its package when hwloc reports none).
pub fn machine_cores() -> Result<Vec<CoreInfo>, PinError> {
    let topo = Topology::new().ok_or(PinError::Topology)?;
    let packages: Vec<(u32, Vec<u32>)> = match topo.objects_with_type(&ObjectType::Package) {
        Ok(objs) => objs
            .iter()
            .map(|p| (p.logical_index(), pus_of(p)))
            .collect(),
        Err(_) => Vec::new(),
    };
    let objs = match topo.objects_with_type(&ObjectType::Core) {
        Ok(v) if !v.is_empty() => v,
        _ => topo
            .objects_with_type(&ObjectType::PU)
            .map_err(|_| PinError::NoCores)?,
    };
    let mut cores = Vec::with_capacity(objs.len());
    for obj in objs {
        let pus = pus_of(obj);
        let Some(&first) = pus.first() else { continue };
        let package = packages
            .iter()
            .find(|(_, set)| set.contains(&first))
            .map_or(0, |(id, _)| *id);
        let numa = match obj.nodeset() {
            Some(set) => u32::try_from(set.clone().first()).unwrap_or(package),
            None => package,
        };
        cores.push(CoreInfo {
            os_index: obj.os_index(),
            package,
            numa,
            pus,
        });
    }
    if cores.is_empty() {
        return Err(PinError::NoCores);
    }
    Ok(cores)
}

/// The cpus this process may currently run on (Linux CPU numbers, ascending).
pub fn current_cpuset() -> Result<Vec<u32>, PinError> {
    let topo = Topology::new().ok_or(PinError::Topology)?;
    let set = topo
        .get_cpubind(CpuBindFlags::CPUBIND_PROCESS)
        .ok_or(PinError::GetBinding)?;
    Ok(set.into_iter().collect())
}

/// Carry out a plan: bind every thread of this process to the plan's cpus. Returns the core it
/// was bound to, or `None` when the plan leaves the binding alone.
pub fn apply(plan: &PinPlan) -> Result<Option<u32>, PinError> {
    match plan {
        PinPlan::Leave { .. } => Ok(None),
        PinPlan::Core {
            core_os_index, pus, ..
        } => {
            if pus.is_empty() {
                return Err(PinError::EmptyCore(*core_os_index));
            }
            let mut topo = Topology::new().ok_or(PinError::Topology)?;
            let set: CpuSet = pus.iter().copied().collect();
            topo.set_cpubind(set, CpuBindFlags::CPUBIND_PROCESS)
                .map_err(|CpuBindError::Generic(code, msg)| PinError::Bind {
                    cpus: format_cpus(pus),
                    reason: format!("{msg} (errno {code})"),
                })?;
            Ok(Some(*core_os_index))
        }
        PinPlan::Cores { cores, pus, .. } => {
            let first = cores.first().copied().unwrap_or(0);
            apply(&PinPlan::Core {
                core_os_index: first,
                pus: pus.clone(),
                wrapped: false,
            })
        }
    }
}

/// Plan and apply in one step, from the live machine: what a worker calls at start.
pub fn pin_worker(
    policy: &PinPolicy,
    slots: u32,
    first: u32,
    k: u32,
    compact: bool,
) -> Result<(PinPlan, Option<u32>), PinError> {
    if *policy == PinPolicy::None {
        return Ok((
            PinPlan::Leave {
                reason: "--no-pin".into(),
            },
            None,
        ));
    }
    let cores = machine_cores()?;
    let current = current_cpuset()?;
    let p = plan_cores(&cores, slots, first, k, compact, policy, &current)?;
    let core = apply(&p)?;
    Ok((p, core))
}

/// Environment variables that limit numeric libraries (OpenMP, OpenBLAS, MKL, numexpr,
/// Accelerate) to `threads` threads; workers use 1 so they do not fight over cores.
pub fn blas_env(threads: u32) -> Vec<(&'static str, String)> {
    [
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
    ]
    .into_iter()
    .map(|k| (k, threads.to_string()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `packages` packages of `numas` NUMA nodes of `cores` cores each, `smt` PUs per core,
    /// numbered like Linux does (PU = core + smt_index * total_cores).
    fn machine(packages: u32, numas: u32, cores: u32, smt: u32) -> Vec<CoreInfo> {
        let total = packages * numas * cores;
        let mut out = Vec::new();
        for p in 0..packages {
            for n in 0..numas {
                for c in 0..cores {
                    let i = (p * numas + n) * cores + c;
                    out.push(CoreInfo {
                        os_index: n * cores + c,
                        package: p,
                        numa: p * numas + n,
                        pus: (0..smt).map(|s| i + s * total).collect(),
                    });
                }
            }
        }
        out
    }

    fn all(cores: &[CoreInfo]) -> Vec<u32> {
        all_pus(cores)
    }

    fn core_pus(cores: &[CoreInfo], workers: u32, policy: &PinPolicy) -> Vec<Vec<u32>> {
        (0..workers)
            .map(
                |w| match plan(cores, workers, w, policy, &all(cores)).unwrap() {
                    PinPlan::Core { pus, .. } => pus,
                    other => panic!("worker {w}: {other:?}"),
                },
            )
            .collect()
    }

    #[test]
    fn a_worker_of_k_cores_takes_k_neighbouring_cores() {
        let m = machine(2, 1, 4, 2); // 2 packages x 4 cores x 2 threads
                                     // a node of one 1-core worker and two 3-core workers: 7 slots, compact order
        let ps: Vec<PinPlan> = [(0, 1), (1, 3), (4, 3)]
            .iter()
            .map(|&(first, k)| {
                plan_cores(&m, 7, first, k, true, &PinPolicy::Auto, &all(&m)).unwrap()
            })
            .collect();
        let pus = |p: &PinPlan| match p {
            PinPlan::Core { pus, .. } | PinPlan::Cores { pus, .. } => pus.clone(),
            other => panic!("{other:?}"),
        };
        let mut seen: Vec<u32> = ps.iter().flat_map(pus).collect();
        assert_eq!(pus(&ps[1]).len(), 6, "3 cores of 2 threads: {:?}", ps[1]);
        let n = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), n, "no core shared: {ps:?}");
        assert!(
            ps[1].to_string().starts_with("pinned to cores "),
            "{}",
            ps[1]
        );
        // --cpus: one entry per core slot
        let list = PinPolicy::Cpus(vec![0, 1, 2, 3]);
        let p = plan_cores(&m, 4, 2, 2, true, &list, &all(&m)).unwrap();
        assert_eq!(pus(&p), vec![2, 3]);
        // bound by the launcher: left alone; too few slots: an error
        let bound = plan_cores(&m, 4, 0, 2, true, &PinPolicy::Auto, &[0, 1]).unwrap();
        assert!(matches!(bound, PinPlan::Leave { .. }));
        assert!(plan_cores(&m, 4, 3, 2, true, &PinPolicy::Auto, &all(&m)).is_err());
    }

    #[test]
    fn compact_order_on_one_package() {
        let m = machine(1, 1, 4, 2);
        assert_eq!(
            core_pus(&m, 3, &PinPolicy::Auto),
            vec![vec![0, 4], vec![1, 5], vec![2, 6]]
        );
        let p = plan(&m, 3, 1, &PinPolicy::Auto, &all(&m)).unwrap();
        assert_eq!(
            p,
            PinPlan::Core {
                core_os_index: 1,
                pus: vec![1, 5],
                wrapped: false
            }
        );
        assert_eq!(p.to_string(), "pinned to core 1 (cpus 1,5)");
    }

    #[test]
    fn round_robin_over_two_packages() {
        let m = machine(2, 1, 4, 1);
        let got = core_pus(&m, 4, &PinPolicy::Auto);
        assert_eq!(got, vec![vec![0], vec![4], vec![1], vec![5]]);
        // each package gets half
        let on_pkg0 = got.iter().filter(|p| p[0] < 4).count();
        assert_eq!(on_pkg0, 2);
        // all 8 workers: every core once
        let mut every: Vec<u32> = core_pus(&m, 8, &PinPolicy::Auto).concat();
        every.sort_unstable();
        assert_eq!(every, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn round_robin_over_numa_nodes_within_packages() {
        // 2 packages x 2 NUMA nodes x 2 cores: packages alternate, then NUMA nodes in a package
        let m = machine(2, 2, 2, 1);
        assert_eq!(
            core_pus(&m, 4, &PinPolicy::Auto),
            vec![vec![0], vec![4], vec![2], vec![6]]
        );
    }

    #[test]
    fn unequal_packages_share_fairly() {
        let mut m = machine(1, 1, 4, 1);
        m.extend(machine(1, 1, 2, 1).into_iter().map(|c| CoreInfo {
            package: 1,
            numa: 1,
            pus: vec![c.pus[0] + 4],
            ..c
        }));
        assert_eq!(
            core_pus(&m, 6, &PinPolicy::Auto),
            vec![vec![0], vec![4], vec![1], vec![5], vec![2], vec![3]]
        );
    }

    #[test]
    fn more_workers_than_cores_wrap_around() {
        let m = machine(1, 1, 2, 1);
        let plans: Vec<PinPlan> = (0..5)
            .map(|w| plan(&m, 5, w, &PinPolicy::Auto, &all(&m)).unwrap())
            .collect();
        for (w, p) in plans.iter().enumerate() {
            let PinPlan::Core {
                core_os_index,
                wrapped,
                ..
            } = p
            else {
                panic!("{p:?}")
            };
            assert_eq!(*core_os_index, w as u32 % 2);
            assert!(wrapped);
            assert!(p.to_string().contains("cores are shared"), "{p}");
        }
        // exactly as many workers as cores: no wrap
        let p = plan(&m, 2, 1, &PinPolicy::Auto, &all(&m)).unwrap();
        assert!(matches!(p, PinPlan::Core { wrapped: false, .. }));
    }

    #[test]
    fn cpus_assigned_in_order() {
        let m = machine(1, 1, 4, 2);
        let policy = PinPolicy::Cpus(vec![6, 1, 3, 7]);
        assert_eq!(core_pus(&m, 3, &policy), vec![vec![6], vec![1], vec![3]]);
        // PU 6 is core 2's second hardware thread
        assert_eq!(
            plan(&m, 3, 0, &policy, &all(&m)).unwrap(),
            PinPlan::Core {
                core_os_index: 2,
                pus: vec![6],
                wrapped: false
            }
        );
    }

    #[test]
    fn cpus_errors() {
        let m = machine(1, 1, 4, 1);
        let e = plan(&m, 3, 0, &PinPolicy::Cpus(vec![0, 1]), &all(&m)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--cpus lists 2 cpus but this node runs 3 workers; list one per worker or use --no-pin"
        );
        let e = plan(&m, 2, 1, &PinPolicy::Cpus(vec![0, 9]), &all(&m)).unwrap_err();
        assert_eq!(
            e,
            PinError::NoSuchCpu {
                cpu: 9,
                worker: 1,
                available: "0-3".into()
            }
        );
        assert!(e.to_string().contains("--no-pin"));
        // the launcher bound us to 0-1: --cpus must stay inside
        let e = plan(&m, 2, 1, &PinPolicy::Cpus(vec![0, 3]), &[0, 1]).unwrap_err();
        assert!(matches!(e, PinError::OutsideLauncherBinding { cpu: 3, .. }));
        assert!(e.to_string().contains("--bind-to none"), "{e}");
        assert_eq!(
            plan(&m, 2, 1, &PinPolicy::Cpus(vec![0, 1]), &[0, 1]).unwrap(),
            PinPlan::Core {
                core_os_index: 1,
                pus: vec![1],
                wrapped: false
            }
        );
        assert_eq!(
            PinPolicy::from_flags(true, Some("0")),
            Err(PinError::Contradiction)
        );
        assert_eq!(
            PinPolicy::from_flags(false, Some("0-1")),
            Ok(PinPolicy::Cpus(vec![0, 1]))
        );
        assert_eq!(PinPolicy::from_flags(true, None), Ok(PinPolicy::None));
        assert_eq!(PinPolicy::from_flags(false, None), Ok(PinPolicy::Auto));
    }

    #[test]
    fn launcher_binding_is_respected() {
        let m = machine(1, 1, 4, 2);
        // srun --cpu-bind=cores gave this rank core 1 (PUs 1 and 5)
        let p = plan(&m, 3, 0, &PinPolicy::Auto, &[1, 5]).unwrap();
        assert_eq!(
            p,
            PinPlan::Leave {
                reason: "bound by the launcher to cpus 1,5".into()
            }
        );
        assert_eq!(
            p.to_string(),
            "not pinned: bound by the launcher to cpus 1,5"
        );
        // full set, a superset, or unknown (empty): not bound
        for cur in [all(&m), (0..64).collect(), vec![]] {
            assert!(matches!(
                plan(&m, 3, 0, &PinPolicy::Auto, &cur).unwrap(),
                PinPlan::Core { .. }
            ));
        }
        // --no-pin wins over everything
        assert_eq!(
            plan(&m, 3, 0, &PinPolicy::None, &all(&m)).unwrap(),
            PinPlan::Leave {
                reason: "--no-pin".into()
            }
        );
    }

    #[test]
    fn bad_arguments() {
        let m = machine(1, 1, 2, 1);
        assert_eq!(
            plan(&m, 2, 2, &PinPolicy::Auto, &[]),
            Err(PinError::WorkerIndex {
                index: 2,
                workers: 2
            })
        );
        assert_eq!(
            plan(&m, 0, 0, &PinPolicy::Auto, &[]),
            Err(PinError::WorkerIndex {
                index: 0,
                workers: 0
            })
        );
        assert_eq!(
            plan(&[], 1, 0, &PinPolicy::Auto, &[]),
            Err(PinError::NoCores)
        );
        assert_eq!(
            apply(&PinPlan::Core {
                core_os_index: 0,
                pus: vec![],
                wrapped: false
            }),
            Err(PinError::EmptyCore(0))
        );
    }

    #[test]
    fn parse_cpus_good() {
        assert_eq!(parse_cpus("0").unwrap(), vec![0]);
        assert_eq!(parse_cpus("0,2,4-7").unwrap(), vec![0, 2, 4, 5, 6, 7]);
        assert_eq!(parse_cpus(" 3 , 1 , 8 - 9 ").unwrap(), vec![3, 1, 8, 9]);
        assert_eq!(parse_cpus("5-5").unwrap(), vec![5]);
        assert_eq!(parse_cpus("1,1").unwrap(), vec![1, 1]);
        for list in ["0-3,5", "0,2,4-7", "7", "0-65535"] {
            assert_eq!(format_cpus(&parse_cpus(list).unwrap()), list);
        }
        assert_eq!(format_cpus(&[]), "(none)");
    }

    #[test]
    fn parse_cpus_bad() {
        for bad in [
            "",
            "  ",
            ",",
            "1,",
            ",1",
            "1,,2",
            "a",
            "1-",
            "-1",
            "3-1",
            "1-2-3",
            "0x1",
            "1.5",
            "4294967296",
            "0-4294967295",
            "-",
        ] {
            let e = parse_cpus(bad).unwrap_err();
            assert!(matches!(e, PinError::BadCpuList { .. }), "{bad:?}: {e:?}");
            let msg = e.to_string();
            assert!(
                msg.starts_with("--cpus") && msg.contains("0,2,4-7"),
                "{bad:?}: {msg}"
            );
        }
        assert_eq!(
            parse_cpus("1,x").unwrap_err().to_string(),
            "--cpus \"1,x\": \"x\" is not a cpu number; expected a list such as 0,2,4-7"
        );
    }

    #[test]
    fn blas_env_limits_every_library() {
        let env = blas_env(1);
        let keys: Vec<&str> = env.iter().map(|e| e.0).collect();
        assert_eq!(
            keys,
            [
                "OMP_NUM_THREADS",
                "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS",
                "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS"
            ]
        );
        assert!(env.iter().all(|e| e.1 == "1"));
        assert!(blas_env(4).iter().all(|e| e.1 == "4"));
    }

    #[test]
    fn this_machine_has_cores() {
        let cores = machine_cores().unwrap();
        assert!(!cores.is_empty());
        assert!(cores.iter().all(|c| !c.pus.is_empty()));
        // every PU belongs to exactly one core
        let pus: Vec<u32> = cores.iter().flat_map(|c| c.pus.clone()).collect();
        assert_eq!(pus.len(), all_pus(&cores).len());
        let current = current_cpuset().unwrap();
        assert!(!current.is_empty());
        // planning on the real machine works for any worker count
        for workers in 1..=3 {
            for w in 0..workers {
                plan(&cores, workers, w, &PinPolicy::Auto, &current).unwrap();
            }
        }
        eprintln!(
            "this machine: {cores:?}; current cpuset {}",
            format_cpus(&current)
        );
    }
}
