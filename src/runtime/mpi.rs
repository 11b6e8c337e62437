//! Start-up under an MPI launcher: MPI comes up (through the transport's [`MpiWorld`]), the
//! nodes are found, the layout computed and workers set up; then this rank runs its role and
//! MPI is finalised within the stop policy's bound.

use super::hooks;
use super::{run_member, server_parts, stop, Offers, RankReport, ServerHandle};
use crate::executor::Registry;
use crate::protocol::native::WorkerGroupView;
use crate::topology::groups::{self, GroupSpec, Placement};
use crate::topology::pinning::{self, PinPolicy};
use crate::topology::resources::{self, Resources};
use crate::topology::{layout, Layout, LayoutError, Role};
use crate::transport::mpi::MpiWorld;
use crate::transport::{drive, TransportError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("MPI could not be initialised (was it initialised twice in this process?)")]
    MpiInit,
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Setup(String),
    /// The launcher started more processes than MPI sees (the wrong process-management
    /// interface): each process is alone in a world of its own.
    #[error("{0}")]
    WrongLauncher(String),
    /// The worker groups do not fit a node's workers (every rank finds it alike; rank 0 has
    /// printed it).
    #[error("{0}")]
    Groups(String),
}

/// A launcher that said it started `n` > 1 processes, when MPI sees a world of one: every
/// process would run alone (N servers, or N relaunches). The error names the fix.
pub fn check_world(size: u32) -> Result<(), StartError> {
    if size != 1 {
        return Ok(());
    }
    let said = |var: &str| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|&n| n > 1)
    };
    let flavor = crate::transport::mpi::Flavor::linked();
    let lib = crate::transport::mpi::library_version();
    if let Some(n) = said("SLURM_STEP_NUM_TASKS").or_else(|| said("SLURM_NTASKS")) {
        let fix = match flavor {
            crate::transport::mpi::Flavor::OpenMpi => "srun --mpi=pmix (this bqrt is built with Open MPI)",
            _ => "srun --mpi=pmi2 (this bqrt is built with an MPICH-family MPI; on Cray systems the default cray_shasta)",
        };
        return Err(StartError::WrongLauncher(format!(
            "srun started {n} tasks but MPI ({lib}) sees each one alone in a world of 1: the process-management interface does not match the MPI library. Use {fix}; `srun --mpi=list` shows the choices"
        )));
    }
    for var in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"] {
        if let Some(n) = said(var) {
            return Err(StartError::WrongLauncher(format!(
                "the launcher started {n} processes ({var}={n}) but MPI ({lib}) sees each one alone in a world of 1: this bqrt was started by another MPI's launcher. Start it with the launcher of the MPI it is built with (Open MPI: mpirun; MPICH: mpiexec.hydra), or rebuild it (launch/setup.sh with BQRT_MPI=openmpi|mpich)"
            )));
        }
    }
    Ok(())
}

/// Whether this process should print a start-up error that every process of the job hits (the
/// first one the launcher started, so N processes print one message).
pub fn first_of_job() -> bool {
    [
        "SLURM_PROCID",
        "PMI_RANK",
        "OMPI_COMM_WORLD_RANK",
        "PMIX_RANK",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok())
    .is_none_or(|r| r.trim() == "0")
}

/// Default of [`MpiOptions::startup_timeout`]: generous, as the first ranks of a large job may
/// wait minutes for the last ones while a parallel file system loads the binary.
pub const DEFAULT_STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Options every rank needs identically.
#[derive(Clone, Debug)]
pub struct MpiOptions {
    pub fanout: u32,
    pub seed: u64,
    /// Print one `bqrt-stats` line per rank on stderr at exit.
    pub stats: bool,
    pub pin: PinPolicy,
    pub blas_threads: u32,
    pub gpus_per_node: u32,
    /// Rank 0 prints the role map at start.
    pub verbose: bool,
    /// How long start-up (MPI initialisation, node discovery, worker set-up) may take before a
    /// rank gives up: a rank that died or never started would otherwise leave the others
    /// waiting in a collective forever.
    pub startup_timeout: std::time::Duration,
    /// A rank silent (no sign of life) this long is reported lost, like a dead one.
    pub stuck_after: std::time::Duration,
    /// A task running this long in one step is reported to its job's clients (none: never).
    pub stall_warning: Option<std::time::Duration>,
    /// Jobs running longer than this from their submission fail (none: no limit).
    pub job_time_limit: Option<std::time::Duration>,
    /// Shell commands the first rank of each node runs before its workers start and after
    /// every rank stopped (`runtime/hooks.rs`).
    pub node_setup: Option<String>,
    pub node_teardown: Option<String>,
    /// Worker groups (`topology/groups.rs`); empty: one group `default` from `blas_threads`
    /// and `gpus_per_node`.
    pub groups: Vec<GroupSpec>,
}

impl MpiOptions {
    /// The declared groups, or the default one.
    pub fn worker_groups(&self) -> Vec<GroupSpec> {
        match self.groups.is_empty() {
            true => vec![GroupSpec::default_group(
                self.blas_threads,
                self.gpus_per_node,
            )],
            false => self
                .groups
                .iter()
                .cloned()
                .map(|mut g| {
                    if g.gpus.is_none() && self.gpus_per_node > 0 {
                        g.gpus = Some(self.gpus_per_node);
                    }
                    g
                })
                .collect(),
        }
    }
}

impl Default for MpiOptions {
    fn default() -> MpiOptions {
        MpiOptions {
            fanout: 16,
            seed: 0,
            stats: false,
            pin: PinPolicy::Auto,
            blas_threads: 1,
            gpus_per_node: 0,
            verbose: false,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            stuck_after: super::stop::STUCK_AFTER,
            stall_warning: Some(super::stall::DEFAULT_AFTER),
            job_time_limit: None,
            node_setup: None,
            node_teardown: None,
            groups: Vec::new(),
        }
    }
}

/// This rank's place, shared with every rank: role, node, core (-1: none), parent (-1), whether
/// setting up the worker failed (1), its process id (for liveness watching), a random number
/// (rank 0's, with its process id, names the runtime's doorbells) and its worker group (-1).
const FIELDS: usize = 8;

fn describe(
    role: &Role,
    node: u32,
    core: Option<u32>,
    failed: bool,
    group: Option<usize>,
) -> [i32; FIELDS] {
    let code = match role {
        Role::Server { .. } => 0,
        Role::Manager { .. } => 1,
        Role::Worker { .. } => 2,
    };
    [
        code,
        node as i32,
        core.map_or(-1, |c| c as i32),
        role.parent().map_or(-1, |p| p.0 as i32),
        failed as i32,
        std::process::id() as i32,
        {
            let mut b = [0u8; 4];
            let _ = getrandom::fill(&mut b);
            i32::from_le_bytes(b) & i32::MAX
        },
        group.map_or(-1, |g| g as i32),
    ]
}

/// Every node's workers placed in the groups, in node order (the same on every rank).
fn place_groups(specs: &[GroupSpec], lay: &Layout) -> Result<Vec<Vec<Placement>>, StartError> {
    let nodes = lay.node_of.iter().max().map_or(0, |&n| n + 1);
    (0..nodes)
        .map(|node| {
            groups::assign(specs, workers_on(lay, node), node)
                .map_err(|e| StartError::Groups(format!("worker groups: {e}")))
        })
        .collect()
}

/// A worker's environment and binding (its group's BLAS threads, environment and cores).
/// Returns its core and group.
fn prepare_worker(
    specs: &[GroupSpec],
    placed: &[Vec<Placement>],
    pin: &PinPolicy,
    rank: usize,
    lay: &Layout,
) -> Result<(Option<u32>, Option<usize>), String> {
    let node = lay.node_of[rank];
    let mates = workers_of(lay, node);
    let (Some(index), Some(here)) = (
        mates.iter().position(|&r| r == rank),
        placed.get(node as usize),
    ) else {
        return Ok((None, None));
    };
    let Some(at) = here.get(index) else {
        return Err(format!(
            "worker {index} of node {node} has no group (a runtime bug)"
        ));
    };
    let g = &specs[at.group];
    // Only this thread runs yet (the executor thread starts later), so changing the
    // environment races with nothing.
    for (k, v) in groups::worker_env(g, at, node) {
        std::env::set_var(k, v);
    }
    let slots = groups::slots(specs, here);
    let compact = here.iter().any(|p| specs[p.group].cores > 1);
    match pinning::pin_worker(pin, slots, at.first_slot, g.cores, compact) {
        Ok((_, core)) => Ok((core, Some(at.group))),
        Err(e) => Err(format!("group {:?}: {e}", g.name)),
    }
}

/// What start-up established about this rank and the others.
struct Started {
    rank: u32,
    lay: Layout,
    role: Role,
    /// Every rank's [`describe`] fields, in rank order.
    all: Vec<i32>,
    /// The worker groups in effect, and their resource names.
    specs: Vec<GroupSpec>,
    resources: Resources,
}

/// Start-up: MPI, nodes, layout, worker set-up, and the exchange of every rank's place. Bounded
/// by the start-up watchdog.
fn start_up(
    world: &MpiWorld,
    opts: &MpiOptions,
    startup: StartupWatchdog,
) -> Result<Started, StartError> {
    let rank = world.rank();
    startup.enter(rank, Phase::NodeDiscovery);
    super::fault::stall_if_asked(rank);
    let lay = layout(&world.node_leaders(), opts.fanout)?;
    let specs = opts.worker_groups();
    let grouped = place_groups(&specs, &lay).and_then(|placed| {
        Resources::from_groups(&specs)
            .map(|r| (placed, r))
            .map_err(|e| StartError::Groups(format!("worker groups: {e}")))
    });
    let (placed, resources) = match grouped {
        Ok(g) => g,
        Err(e) => {
            // every rank finds this alike and rank 0 says it, before the ranks meet: no rank
            // leaves (making the launcher kill the others) before it has been said
            if rank == 0 {
                crate::eline!("bqrt: {e}");
            }
            let _ = world.all_gather(&[0i32; FIELDS]);
            return Err(e);
        }
    };
    let role = lay.roles[rank as usize].clone();
    startup.enter(rank, Phase::NodeSetUp);
    let hooked = match (&opts.node_setup, first_of_node(&lay, rank)) {
        (Some(cmd), true) => {
            let node = lay.node_of[rank as usize];
            hooks::run(hooks::Hook::Setup, cmd, node, workers_on(&lay, node), None).map(|_| ())
        }
        _ => Ok(()),
    };
    let prepared =
        hooked.and_then(|()| prepare_worker(&specs, &placed, &opts.pin, rank as usize, &lay));
    let ((core, group), failure) = match prepared {
        Ok(c) => (c, None),
        Err(e) => ((None, None), Some(e)),
    };
    startup.enter(rank, Phase::WorkerSetUp);
    let mine = describe(
        &role,
        lay.node_of[rank as usize],
        core,
        failure.is_some(),
        group,
    );
    let all = world.all_gather(&mine);
    startup.disarm();
    if let Some(e) = &failure {
        match e.starts_with("bqrt: node ") {
            true => crate::eline!("{e}"),
            false => crate::eline!("bqrt: rank {rank}: cannot set up the worker: {e}"),
        }
    }
    if all.chunks(FIELDS).any(|c| c[4] != 0) {
        return Err(StartError::Setup(
            "a node or a worker could not be set up (see the messages above)".into(),
        ));
    }
    Ok(Started {
        rank,
        lay,
        role,
        all,
        specs,
        resources,
    })
}

/// The worker group in a rank's [`describe`] fields (none for a server or manager).
fn group_in<'a>(fields: &[i32], specs: &'a [GroupSpec]) -> Option<&'a GroupSpec> {
    usize::try_from(fields[7]).ok().and_then(|g| specs.get(g))
}

/// `-v`: one line per rank (rank, role, node, core, parent, and a worker's group), then one
/// line per node and group, printed by rank 0.
fn print_role_map(all: &[i32], specs: &[GroupSpec]) {
    let names = ["server", "manager", "worker"];
    let dash = |v: i32| {
        if v < 0 {
            "-".to_string()
        } else {
            v.to_string()
        }
    };
    for (r, c) in all.chunks(FIELDS).enumerate() {
        let group = group_in(c, specs).map_or(String::new(), |g| format!(" group {}", g.name));
        crate::eline!(
            "bqrt: rank {r} role {} node {} core {} parent {}{group}",
            names.get(c[0] as usize).unwrap_or(&"?"),
            c[1],
            dash(c[2]),
            dash(c[3])
        );
    }
    for row in group_rows(all, specs) {
        crate::eline!(
            "bqrt: node {} group {} workers {} cores {} offers {}",
            row.node,
            row.name,
            row.workers,
            row.cores,
            match row.offers.is_empty() {
                true => "-",
                false => &row.offers,
            }
        );
    }
}

/// The runtime's resources (installed for this process's tasks) and what this rank needs to
/// know of them: its own mask, or its employees' classes.
fn offers_of(s: &Started) -> Offers {
    let mut res = s.resources.clone();
    let mut masks: Vec<u64> = Vec::with_capacity(s.all.len() / FIELDS);
    for c in s.all.chunks(FIELDS) {
        let m = match group_in(c, &s.specs) {
            Some(g) => {
                let m = res.mask_of(g);
                res.offered_by_a_worker(m);
                m
            }
            None => 0,
        };
        masks.push(m);
    }
    crate::topology::resources::install(res);
    let me = s.rank as usize;
    let employees = match &s.role {
        Role::Server { employees } | Role::Manager { employees, .. } => employees.clone(),
        Role::Worker { .. } => Vec::new(),
    };
    Offers {
        managers: s.lay.managers(&employees),
        own: masks[me],
        employees: match masks.iter().any(|&m| m != 0) {
            true => employees
                .iter()
                .map(|e| resources::classes_under(&s.lay, e.0 .0 as usize, &masks))
                .collect(),
            false => Vec::new(),
        },
    }
}

/// Workers per node and group, from every rank's fields.
fn group_rows(all: &[i32], specs: &[GroupSpec]) -> Vec<WorkerGroupView> {
    let mut rows: Vec<WorkerGroupView> = Vec::new();
    for c in all.chunks(FIELDS) {
        let (node, Some(g)) = (c[1] as u32, group_in(c, specs)) else {
            continue;
        };
        match rows.iter_mut().find(|r| r.node == node && r.name == g.name) {
            Some(r) => r.workers += 1,
            None => rows.push(WorkerGroupView {
                node,
                name: g.name.clone(),
                workers: 1,
                cores: g.cores,
                offers: g.offers_text(),
            }),
        }
    }
    rows.sort_by_key(|r| (r.node, specs.iter().position(|g| g.name == r.name)));
    rows
}

/// Run this process's rank. On rank 0, `client` runs in its own thread with the server handle;
/// its return value is rank 0's exit code, and it must call [`ServerHandle::shutdown`] to stop
/// the runtime. Other ranks return 0 after shutdown.
pub fn run_mpi<C>(registry: Registry, opts: &MpiOptions, client: C) -> Result<i32, StartError>
where
    C: FnOnce(ServerHandle) -> i32 + Send + 'static,
{
    crate::transport::mpi::before_init();
    stop::install().map_err(StartError::Thread)?;
    let startup = StartupWatchdog::arm(opts.startup_timeout).map_err(StartError::Thread)?;
    let world = MpiWorld::init().ok_or(StartError::MpiInit)?;
    stop::install_continue().map_err(StartError::Thread)?;
    check_world(world.size())?;
    let s = start_up(&world, opts, startup)?;
    if opts.verbose && s.rank == 0 {
        crate::eline!(
            "bqrt: MPI library: {}",
            crate::transport::mpi::library_version()
        );
        print_role_map(&s.all, &s.specs);
    }
    log::debug!(target: "bqrt::runtime", "rank {}: {:?} on node {}", s.rank, s.role, s.lay.node_of[s.rank as usize]);
    super::fault::inject(s.rank);
    let pids: Vec<i32> = s.all.chunks(FIELDS).map(|c| c[5]).collect();
    let me = crate::protocol::Rank(s.rank);
    let watcher = super::liveness::Watcher::new(me, &s.lay, &pids, opts.stuck_after);
    let to = super::liveness::watcher_of(me, &s.lay);
    let remote = s.lay.node_of.get(s.rank as usize) != s.lay.node_of.first();
    let heartbeat = super::liveness::Heartbeat::new(to, opts.stuck_after)
        .reporting(watcher.is_some() && remote);
    let mut report = RankReport::default();
    let mut fabric = world.fabric();
    open_doorbell(&mut fabric, &s);
    if let (Some(w), Some(waker)) = (&watcher, crate::transport::Fabric::waker(&fabric)) {
        super::liveness::witness(&w.pids(), move || waker.wake());
    }
    let offers = offers_of(&s);
    let code = match &s.role {
        Role::Server { employees } => {
            let (mut logic, cmd_rx, mut handle) = server_parts(
                crate::transport::Fabric::waker(&fabric),
                employees,
                opts.seed,
                world.size(),
                watcher,
                heartbeat,
                registry,
            );
            logic.core.boss.set_managers(&offers.managers);
            if !offers.employees.is_empty() {
                logic.core.boss.set_classes(offers.employees);
            }
            handle.set_time_limit(opts.job_time_limit);
            handle.set_worker_groups(group_rows(&s.all, &s.specs));
            let client = std::thread::Builder::new()
                .name("bqrt-client".into())
                .spawn(move || client(handle))
                .map_err(StartError::Thread)?;
            drive(
                &mut fabric,
                &mut logic,
                &cmd_rx,
                &stop::shared(),
                super::PACE,
            )?;
            report.placed = logic.core.boss.placed_total();
            drop(fabric);
            client.join().unwrap_or(70)
        }
        _ => {
            let vigil = super::Vigil {
                watcher,
                heartbeat,
                stall_warning: opts.stall_warning,
            };
            run_member(
                fabric,
                &s.role,
                registry,
                opts.seed,
                &mut report,
                vigil,
                offers,
            )?
        }
    };
    if opts.stats {
        print_stats(&s, &report);
    }
    let teardown = match (&opts.node_teardown, first_of_node(&s.lay, s.rank)) {
        (Some(cmd), true) => Some((cmd.clone(), s.lay.node_of[s.rank as usize])),
        _ => None,
    };
    let workers = teardown.as_ref().map_or(0, |t| workers_on(&s.lay, t.1));
    let _finalized = finalize(world, code);
    if let Some((cmd, node)) = teardown {
        let limit = Some(hooks::TEARDOWN_LIMIT);
        if let Err(e) = hooks::run(hooks::Hook::Teardown, &cmd, node, workers, limit) {
            crate::eline!("{e}");
        }
    }
    Ok(code)
}

/// Ring the ranks of this node when sending to them, and wake on their rings (best effort: a
/// rank whose doorbell cannot be opened polls as before). The fabric's waker then wakes this
/// rank's loop.
fn open_doorbell(fabric: &mut crate::transport::mpi::MpiFabric, s: &Started) {
    let (Some(zero), me) = (s.all.chunks(FIELDS).next(), crate::protocol::Rank(s.rank)) else {
        return;
    };
    let key = format!("bqrt-{:08x}-{}", zero[6], zero[5]);
    let node = s.lay.node_of[s.rank as usize];
    let mates: Vec<crate::protocol::Rank> = (0..s.lay.node_of.len())
        .filter(|&r| s.lay.node_of[r] == node)
        .map(|r| crate::protocol::Rank(r as u32))
        .collect();
    let ranks = s.lay.node_of.len() as u32;
    match crate::transport::doorbell::Doorbell::open(&key, me, &mates, ranks) {
        Ok(bell) => fabric.set_doorbell(bell),
        Err(e) => {
            log::warn!(target: "bqrt::runtime", "rank {}: no doorbell ({e}); it polls and cannot ring the ranks of its node, which may see its packets up to 50 ms late", s.rank);
        }
    }
}

/// Whether `rank` is the first rank of its node (the one that runs the node's hooks).
fn first_of_node(lay: &Layout, rank: u32) -> bool {
    let node = lay.node_of[rank as usize];
    lay.node_of.iter().position(|&n| n == node) == Some(rank as usize)
}

/// The worker ranks of `node`, in rank order.
fn workers_of(lay: &Layout, node: u32) -> Vec<usize> {
    (0..lay.roles.len())
        .filter(|&r| lay.node_of[r] == node && matches!(lay.roles[r], Role::Worker { .. }))
        .collect()
}

fn workers_on(lay: &Layout, node: u32) -> u32 {
    workers_of(lay, node).len() as u32
}

/// `--stats`: one line per rank at exit.
fn print_stats(s: &Started, report: &RankReport) {
    let w = report.worker.clone().unwrap_or_default();
    crate::eline!(
        "bqrt-stats rank={} role={} node={} started={} finished={} kept={} stolen_from={} max_delayed={} submitted={} placed={} peak_rss_kib={}",
        s.rank,
        s.role.name(),
        s.lay.node_of[s.rank as usize],
        w.started,
        w.finished,
        w.kept,
        w.stolen_from,
        w.max_delayed,
        w.submitted,
        report.placed,
        super::peak_rss_kib().unwrap_or(0)
    );
}

/// Finalise MPI, bounded by [`stop::finalize_bound`]: `MPI_Finalize` waits for the launcher,
/// which never answers while it aborts the job after a signal, and a rank that is done must
/// still exit promptly with its own status.
fn finalize(world: MpiWorld, code: i32) -> Finalized {
    let (tx, rx) = crossbeam::channel::bounded::<()>(1);
    let _ = std::thread::Builder::new()
        .name("bqrt-finalize".into())
        .spawn(move || {
            // the bound runs again after MPI_Finalize returned (and a tear-down hook ran), so
            // that an exit stuck after it is ended as well
            if rx.recv_timeout(stop::finalize_bound()).is_ok() {
                let _ = rx.recv();
                std::thread::sleep(stop::finalize_bound());
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            // SAFETY: _exit ends the process without running atexit handlers, which could block on
            // MPI state held by the main thread (stuck in MPI_Finalize); nothing else is needed.
            unsafe { libc::_exit(code) };
        });
    world.finalize();
    let _ = tx.send(());
    Finalized(tx)
}

/// MPI is finalised; dropping this starts the bound on the rest of the exit.
struct Finalized(crossbeam::channel::Sender<()>);

impl Drop for Finalized {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
    }
}

/// Where start-up is; named by the start-up watchdog when it gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    MpiInit = 0,
    NodeDiscovery = 1,
    NodeSetUp = 2,
    WorkerSetUp = 3,
}

impl Phase {
    fn describe(code: u8) -> &'static str {
        match code {
            0 => "initialising MPI",
            1 => "finding the job's nodes (every rank must arrive)",
            2 => "running --node-setup (every node's hook must finish)",
            _ => "setting up workers (every rank must arrive)",
        }
    }
}

/// Bounds start-up. Every start-up step is a blocking MPI call that waits for every rank, so a
/// rank that died in `MPI_Init` or never started (a launcher that lost a task, a node that hung
/// loading the binary) would leave the other ranks blocked forever, spinning inside MPI. This
/// thread ends the process with a message naming the phase instead; the launcher then ends the
/// job. It never calls MPI, so it works while the main thread is stuck in a collective.
struct StartupWatchdog {
    disarm: crossbeam::channel::Sender<()>,
    phase: std::sync::Arc<std::sync::atomic::AtomicU8>,
    rank: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl StartupWatchdog {
    fn arm(limit: std::time::Duration) -> std::io::Result<StartupWatchdog> {
        use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
        use std::sync::Arc;
        let (disarm, fired) = crossbeam::channel::bounded::<()>(1);
        let phase = Arc::new(AtomicU8::new(Phase::MpiInit as u8));
        let rank = Arc::new(AtomicI64::new(-1));
        let (p, r) = (phase.clone(), rank.clone());
        std::thread::Builder::new()
            .name("bqrt-startup".into())
            .spawn(move || {
                // disarmed (a message) or dropped (start-up ended with an error): stand down
                if fired.recv_timeout(limit) != Err(crossbeam::channel::RecvTimeoutError::Timeout) {
                    return;
                }
                let who = match r.load(Ordering::SeqCst) {
                    -1 => format!("process {}", std::process::id()),
                    n => format!("rank {n}"),
                };
                crate::eline!(
                    "bqrt: {who}: start-up did not finish within {} s while {}: a rank of this \
                     job died or never started (see the launcher's messages); giving up. Set \
                     --startup-timeout or BQRT_STARTUP_TIMEOUT (seconds) to wait longer.",
                    limit.as_secs_f64(),
                    Phase::describe(p.load(Ordering::SeqCst)),
                );
                // SAFETY: _exit ends the process at once; the main thread is blocked inside MPI
                // and must not run exit handlers that could wait on it.
                unsafe { libc::_exit(EXIT_STARTUP) };
            })?;
        Ok(StartupWatchdog {
            disarm,
            phase,
            rank,
        })
    }

    fn enter(&self, rank: u32, phase: Phase) {
        use std::sync::atomic::Ordering;
        self.rank.store(rank as i64, Ordering::SeqCst);
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    fn disarm(self) {
        let _ = self.disarm.send(());
    }
}

/// Exit status of a rank whose start-up timed out (EX_UNAVAILABLE).
pub const EXIT_STARTUP: i32 = 69;
