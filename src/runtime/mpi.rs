//! Start-up under an MPI launcher: initialise MPI, find the nodes, compute the layout, run this
//! rank's role.

use super::{run_member, server_parts, ServerHandle};
use crate::task::Registry;
use crate::topology::{layout, LayoutError, Role};
use crate::transport::{drive, mpi::MpiFabric, TransportError};
use mpi::collective::{CommunicatorCollectives, Root};
use mpi::topology::Communicator;
use mpi::Threading;
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
}

/// Longest wait for `MPI_Finalize` before the rank exits anyway.
const FINALIZE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Options every rank needs identically.
#[derive(Clone, Debug)]
pub struct MpiOptions {
    pub fanout: u32,
    pub seed: u64,
    /// Print one `bqrt-stats` line per rank on stderr at exit.
    pub stats: bool,
}

/// Run this process's rank. On rank 0, `client` runs in its own thread with the server handle;
/// its return value is rank 0's exit code, and it must call [`ServerHandle::shutdown`] to stop
/// the runtime. Other ranks return 0 after shutdown.
pub fn run_mpi<C>(registry: Registry, opts: &MpiOptions, client: C) -> Result<i32, StartError>
where
    C: FnOnce(ServerHandle) -> i32 + Send + 'static,
{
    super::signals::install().map_err(StartError::Thread)?;
    let (universe, _threading) =
        mpi::initialize_with_threading(Threading::Funneled).ok_or(StartError::MpiInit)?;
    let world = universe.world();
    let rank = world.rank();
    // nodes: the ranks sharing memory; a node is named by the world rank of its first member
    let node = world.split_shared(rank);
    let mut leader = if node.rank() == 0 { rank } else { 0 };
    node.process_at_rank(0).broadcast_into(&mut leader);
    drop(node); // communicators must be freed before MPI_Finalize
    let mut leaders = vec![0i32; world.size() as usize];
    world.all_gather_into(&leader, &mut leaders[..]);
    let node_of: Vec<u32> = leaders.iter().map(|&l| l as u32).collect();
    let lay = layout(&node_of, opts.fanout)?;
    let role = lay.roles[rank as usize].clone();
    log::debug!(target: "bqrt::runtime", "rank {rank}: {role:?} on node {}", lay.node_of[rank as usize]);
    let fabric = MpiFabric::new(world);
    let mut report = super::RankReport::default();
    let code = match &role {
        Role::Server { employees } => {
            let (mut logic, cmd_rx, handle) = server_parts(employees, opts.seed);
            let client = std::thread::Builder::new()
                .name("bqrt-client".into())
                .spawn(move || client(handle))
                .map_err(StartError::Thread)?;
            let mut fabric = fabric;
            drive(&mut fabric, &mut logic, &cmd_rx)?;
            report.placed = logic.core.boss.placed_total();
            drop(fabric);
            client.join().unwrap_or(70)
        }
        _ => {
            run_member(fabric, &role, registry, opts.seed, &mut report)?;
            0
        }
    };
    if opts.stats {
        let w = report.worker.unwrap_or_default();
        crate::logging::eprint_line(&format!(
            "bqrt-stats rank={rank} role={} node={} started={} finished={} kept={} stolen_from={} max_delayed={} submitted={} placed={} peak_rss_kib={}",
            role.name(),
            lay.node_of[rank as usize],
            w.started,
            w.finished,
            w.kept,
            w.stolen_from,
            w.max_delayed,
            w.submitted,
            report.placed,
            super::peak_rss_kib().unwrap_or(0)
        ));
    }
    // MPI_Finalize waits for the launcher, which never answers while it aborts the job after a
    // signal; a rank that is done must still exit promptly with its own status.
    let watchdog_code = code;
    let _ = std::thread::Builder::new()
        .name("bqrt-finalize".into())
        .spawn(move || {
            std::thread::sleep(FINALIZE_TIMEOUT);
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            // SAFETY: _exit ends the process without running atexit handlers, which could block on
            // MPI state held by the main thread (stuck in MPI_Finalize); nothing else is needed.
            unsafe { libc::_exit(watchdog_code) };
        });
    drop(universe);
    Ok(code)
}
