//! Starting a rank: discover the layout, build the role's core and threads, run the transport
//! loop until shutdown.
//!
//! Threads of a rank:
//! * the transport thread (the process's main thread under MPI) runs [`drive`] with the role's
//!   logic; the server and manager cores run inline there;
//! * a worker adds its executor thread;
//! * the server adds a client-side thread (the batch runner, or the gateway).

mod fault;
mod handle;
pub mod hooks;
pub mod launcher;
pub mod liveness;
mod local;
pub(crate) mod mpi;
mod roles;
pub mod stall;
pub mod stop;

pub use handle::{Outcome, ServerHandle};
pub use local::LocalCluster;
pub use mpi::{run_mpi, MpiOptions, StartError};
pub use roles::Command;

use crate::executor::Registry;
use crate::executor::{Executor, LiveTasks, WorkerState};
use crate::protocol::Rank;
use crate::sched::{ManagerCore, ServerCore, WorkerCore};
use crate::topology::Role;
use crate::transport::{drive, Fabric, Pace, TransportError};
use crossbeam::channel::{unbounded, Receiver};
use roles::{ManagerLogic, ServerLogic, WorkerLogic};
use std::sync::Arc;

/// The transport loop's timers, from the stop policy.
pub(crate) const PACE: Pace = Pace {
    tick: stop::WATCH_EVERY,
    flush: stop::FLUSH,
};

/// Build the server's logic and the handle client threads use.
pub(crate) fn server_parts(
    wake: Option<crate::transport::doorbell::Waker>,
    employees: &[(Rank, u32)],
    seed: u64,
    ranks: u32,
    watcher: Option<liveness::Watcher>,
    heartbeat: liveness::Heartbeat,
    registry: Registry,
) -> (ServerLogic, Receiver<Command>, ServerHandle) {
    let (cmd_tx, cmd_rx) = crate::transport::local_channel(wake);
    let (ev_tx, ev_rx) = unbounded();
    let logic = ServerLogic {
        core: ServerCore::new(employees, seed),
        events: ev_tx,
        employees: employees.iter().map(|e| e.0).collect(),
        ranks,
        watcher,
        heartbeat,
        lost: Vec::new(),
        lost_at: None,
    };
    (logic, cmd_rx, ServerHandle::new(cmd_tx, ev_rx, registry))
}

/// What a rank reports about itself at exit (`bqrt run --stats`).
#[derive(Debug, Default)]
pub struct RankReport {
    pub worker: Option<crate::sched::WorkerStats>,
    /// Tasks placed by this rank (server and managers).
    pub placed: u64,
}

/// Peak resident memory of this process in KiB (`VmHWM`), if the system tells.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A rank's watcher (if it watches anyone) and its signs of life to its own watcher.
pub(crate) struct Vigil {
    pub(crate) watcher: Option<liveness::Watcher>,
    pub(crate) heartbeat: liveness::Heartbeat,
    /// Report a task that runs this long in one step (workers).
    pub(crate) stall_warning: Option<std::time::Duration>,
}

/// What a rank knows of the resources its workers offer (`topology::resources`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Offers {
    /// A worker's own mask.
    pub(crate) own: u64,
    /// A boss's employees' classes, in its employee order (empty: nobody offers anything).
    pub(crate) employees: Vec<Vec<(u64, u32)>>,
    /// Which of a boss's employees are managers, in its employee order.
    pub(crate) managers: Vec<bool>,
}

pub(crate) fn run_member<F: Fabric>(
    fabric: F,
    role: &Role,
    registry: Registry,
    seed: u64,
    report: &mut RankReport,
    vigil: Vigil,
    offers: Offers,
) -> Result<i32, TransportError> {
    match role {
        Role::Server { .. } => unreachable!("the server is started with server_parts"),
        Role::Manager {
            parent, employees, ..
        } => run_manager(fabric, *parent, employees, seed, report, vigil, offers),
        Role::Worker { parent } => run_worker(fabric, *parent, registry, report, vigil, offers),
    }
}

fn run_manager<F: Fabric>(
    mut fabric: F,
    parent: Rank,
    employees: &[(Rank, u32)],
    seed: u64,
    report: &mut RankReport,
    vigil: Vigil,
    offers: Offers,
) -> Result<i32, TransportError> {
    let me = fabric.rank();
    let mut core = ManagerCore::new(me, parent, employees, seed ^ u64::from(me.0));
    core.boss.set_managers(&offers.managers);
    if !offers.employees.is_empty() {
        core.boss.set_classes(offers.employees);
    }
    let mut logic = ManagerLogic {
        me,
        core,
        employees: employees.iter().map(|e| e.0).collect(),
        watcher: vigil.watcher,
        heartbeat: vigil.heartbeat,
        exit_code: 0,
        ranks: fabric.size(),
    };
    let (_keep, rx) = unbounded::<()>();
    let r = drive(&mut fabric, &mut logic, &rx, &stop::shared(), PACE);
    report.placed = logic.core.boss.placed_total();
    r.map(|()| logic.exit_code)
}

/// A worker: its executor thread beside the transport loop, sharing the worker's state.
fn run_worker<F: Fabric>(
    mut fabric: F,
    parent: Rank,
    registry: Registry,
    report: &mut RankReport,
    vigil: Vigil,
    offers: Offers,
) -> Result<i32, TransportError> {
    let me = fabric.rank();
    let mut core = WorkerCore::new(me, parent);
    core.set_offers(offers.own);
    let (in_tx, in_rx) = unbounded();
    let (out_tx, out_rx) = crate::transport::local_channel(fabric.waker());
    let running = Arc::new(LiveTasks::default());
    let state = Arc::new(std::sync::Mutex::new(WorkerState {
        core,
        out: crate::protocol::Outbox::new(),
    }));
    let stats_slot = Arc::new(std::sync::Mutex::new(None));
    let (state2, running2, stats2) = (
        Arc::clone(&state),
        Arc::clone(&running),
        Arc::clone(&stats_slot),
    );
    let progress_every = crate::executor::progress_interval(fabric.size());
    let (done_tx, done_rx) = unbounded::<()>();
    // the executor's state is not `Send` (its tasks' futures): it is made on its own thread
    let spawned = std::thread::Builder::new()
        .name(format!("bqrt-exec-{}", me.0))
        .spawn(move || {
            let ex = Executor::new(
                state2,
                registry,
                in_rx,
                out_tx,
                running2,
                stats2,
                progress_every,
            );
            ex.run();
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        panic!("{me}: cannot start the executor thread: {e}");
    }
    let mut logic = WorkerLogic {
        me,
        state,
        inbound: in_tx,
        running,
        watcher: vigil.watcher,
        heartbeat: vigil.heartbeat,
        stall: stall::Stall::new(vigil.stall_warning),
        exit_code: 0,
        ranks: fabric.size(),
        held: Vec::new(),
    };
    let r = drive(&mut fabric, &mut logic, &out_rx, &stop::shared(), PACE);
    // a task stuck in a long computation does not hold up shutdown: its thread simply ends
    // with the process
    let _ = done_rx.recv_timeout(stop::EXECUTOR_JOIN);
    if let Ok(mut s) = stats_slot.lock() {
        report.worker = s.take();
    }
    r.map(|()| logic.exit_code)
}
