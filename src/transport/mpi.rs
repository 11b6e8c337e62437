//! MPI behind the transport boundary: start-up ([`MpiWorld`]: initialisation, node discovery,
//! the start-up collectives, finalisation) and the fabric ([`MpiFabric`]: non-blocking sends
//! and matched probes on `MPI_COMM_WORLD`). Nothing else in bqrt calls MPI.
//!
//! Only the thread that initialised MPI calls into it (MPI_THREAD_FUNNELED). Sends are
//! `MPI_Isend` of an owned buffer that lives until `MPI_Test` reports completion, so two ranks
//! sending large packets to each other never block each other (a blocking send could deadlock
//! in the rendezvous protocol). Receives are `MPI_Improbe` + `MPI_Mrecv`, which are safe with
//! respect to other threads and take messages in order per sender.

use super::Fabric;
use crate::protocol::Rank;
use mpi::collective::{CommunicatorCollectives, Root};
use mpi::environment::Universe;
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::request::{Request, StaticScope};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;

/// The MPI library this binary is linked against, from `MPI_Get_library_version` (callable
/// before initialisation): its first line, e.g. "Open MPI v4.1.4, ..." or "MPICH Version: 4.0.2".
pub fn library_version() -> String {
    let v = mpi::environment::library_version().unwrap_or_else(|_| "unknown MPI".into());
    let v = v.trim();
    let first = v.lines().next().unwrap_or(v).trim();
    match first.strip_prefix("MPICH Version:") {
        // MPICH's first line is only the number
        Some(n) => format!("MPICH {}", n.trim()),
        // Open MPI's goes on with its package and build: "Open MPI v4.1.4, package: ..."
        None => first.split(',').next().unwrap_or(first).trim().to_string(),
    }
}

/// The family of that library: it decides the launcher and its settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    OpenMpi,
    /// MPICH and its derivatives (Cray MPICH, Intel MPI, MVAPICH).
    Mpich,
    Other,
}

impl Flavor {
    pub fn of(version: &str) -> Flavor {
        let v = version.to_ascii_lowercase();
        if v.contains("open mpi") {
            Flavor::OpenMpi
        } else if v.contains("mpich") || v.contains("intel(r) mpi") || v.contains("mvapich") {
            Flavor::Mpich
        } else {
            Flavor::Other
        }
    }

    pub fn linked() -> Flavor {
        Flavor::of(&library_version())
    }
}

/// Settings this process gives its MPI before initialising it (call it before the process
/// starts any thread: it sets environment variables).
///
/// Open MPI, every rank of the job on this node (`mpirun` says so through
/// `OMPI_COMM_WORLD_LOCAL_SIZE`), and no point-to-point layer chosen by the user
/// (`OMPI_MCA_pml`, or a parameter file): take Open MPI's own layer over shared memory (`ob1`)
/// rather than let Open MPI open and probe every other one it has (its `cm` layer probes the
/// network libraries it was built with), which took 0.1-0.2 s of a 0.45 s start-up on this kind
/// of machine and finds nothing faster than shared memory on one node (decision 51). Several
/// nodes, or a choice made by the user or the site, are left as they are.
pub fn before_init() {
    let var = |k: &str| std::env::var(k).ok();
    let one_node = matches!(
        (var("OMPI_COMM_WORLD_SIZE"), var("OMPI_COMM_WORLD_LOCAL_SIZE")),
        (Some(all), Some(here)) if all == here
    );
    if one_node
        && var("OMPI_MCA_pml").is_none()
        && !pml_in_parameter_files()
        && Flavor::linked() == Flavor::OpenMpi
    {
        std::env::set_var("OMPI_MCA_pml", "ob1");
    }
}

/// Whether an Open MPI parameter file of the user or the site chooses the point-to-point layer
/// (`pml = ucx`; an exclusion such as Debian's `pml = ^ucx` chooses nothing).
fn pml_in_parameter_files() -> bool {
    let mut files = vec![std::path::PathBuf::from(
        "/etc/openmpi/openmpi-mca-params.conf",
    )];
    if let Some(prefix) = std::env::var_os("OPAL_PREFIX") {
        files.push(std::path::Path::new(&prefix).join("etc/openmpi-mca-params.conf"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        files.push(std::path::Path::new(&home).join(".openmpi/mca-params.conf"));
    }
    files.iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|text| {
            text.lines()
                .map(str::trim)
                .filter_map(|l| l.split_once('='))
                .any(|(k, v)| k.trim() == "pml" && !v.trim().starts_with('^'))
        })
    })
}

/// MPI in this process, from initialisation to finalisation (when dropped). Every start-up step
/// is a collective: every rank must call it, in the same order.
pub struct MpiWorld {
    universe: Universe,
}

impl MpiWorld {
    /// Initialise MPI (`MPI_THREAD_FUNNELED`: only this thread will call it). `None` if MPI was
    /// already initialised in this process.
    pub fn init() -> Option<MpiWorld> {
        let (universe, _threading) = mpi::initialize_with_threading(Threading::Funneled)?;
        Some(MpiWorld { universe })
    }

    pub fn rank(&self) -> u32 {
        self.universe.world().rank() as u32
    }

    pub fn size(&self) -> u32 {
        self.universe.world().size() as u32
    }

    /// For every rank, the world rank of the first rank of its node (the ranks that share
    /// memory, `MPI_Comm_split_type(SHARED)`): a node is named by its first member.
    pub fn node_leaders(&self) -> Vec<u32> {
        let world = self.universe.world();
        let rank = world.rank();
        let node = world.split_shared(rank);
        let mut leader = if node.rank() == 0 { rank } else { 0 };
        node.process_at_rank(0).broadcast_into(&mut leader);
        drop(node); // communicators must be freed before MPI_Finalize
        let mut leaders = vec![0i32; world.size() as usize];
        world.all_gather_into(&leader, &mut leaders[..]);
        leaders.iter().map(|&l| l as u32).collect()
    }

    /// Every rank's `mine` (the same length on every rank), concatenated in rank order.
    pub fn all_gather(&self, mine: &[i32]) -> Vec<i32> {
        let world = self.universe.world();
        let mut all = vec![0i32; mine.len() * world.size() as usize];
        world.all_gather_into(mine, &mut all[..]);
        all
    }

    /// The packet fabric over `MPI_COMM_WORLD`; drop it before the world.
    pub fn fabric(&self) -> MpiFabric {
        MpiFabric::new(self.universe.world())
    }

    /// Finalise MPI (it may block while a launcher aborts the job; the caller bounds it).
    /// Packets that still arrive (signs of life from ranks that are stopping too) are taken
    /// first, until none came for [`DRAIN_QUIET`]: MPICH over UCX prints a warning on stdout
    /// for every packet left unreceived at finalisation, into a job's output.
    pub fn finalize(self) {
        let world = self.universe.world();
        let start = std::time::Instant::now();
        let mut last = start;
        while last.elapsed() < DRAIN_QUIET && start.elapsed() < DRAIN_MAX {
            match world.any_process().immediate_matched_probe_with_tag(TAG) {
                Some(p) => {
                    let _ = p.matched_receive_vec::<u8>();
                    last = std::time::Instant::now();
                }
                None => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        drop(self.universe);
    }
}

/// Tag of every bqrt packet.
const TAG: i32 = 7;

/// At finalisation, packets are taken until none came for this long (at most [`DRAIN_MAX`]).
const DRAIN_QUIET: std::time::Duration = std::time::Duration::from_millis(30);
const DRAIN_MAX: std::time::Duration = std::time::Duration::from_millis(300);

struct InFlight {
    request: Option<Request<'static, [u8], StaticScope>>,
    buffer: *mut [u8],
}

pub struct MpiFabric {
    world: SimpleCommunicator,
    rank: Rank,
    size: u32,
    in_flight: Vec<InFlight>,
    bell: Option<super::doorbell::Doorbell>,
}

impl MpiFabric {
    pub fn new(world: SimpleCommunicator) -> MpiFabric {
        let rank = Rank(world.rank() as u32);
        let size = world.size() as u32;
        MpiFabric {
            world,
            rank,
            size,
            in_flight: Vec::new(),
            bell: None,
        }
    }

    /// Ring the ranks of this node on sends, and wake on their rings (see
    /// [`super::doorbell`]).
    pub fn set_doorbell(&mut self, bell: super::doorbell::Doorbell) {
        self.bell = Some(bell);
    }
}

impl Fabric for MpiFabric {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn size(&self) -> u32 {
        self.size
    }

    fn send(&mut self, to: Rank, packet: Vec<u8>) {
        let buffer: *mut [u8] = Box::into_raw(packet.into_boxed_slice());
        // SAFETY: `buffer` comes from Box::into_raw and is freed only in `progress`, after
        // MPI_Test reports the send complete (or never, if it never completes), so the slice
        // outlives the request as StaticScope requires.
        let slice: &'static [u8] = unsafe { &*buffer };
        let request = self
            .world
            .process_at_rank(to.0 as i32)
            .immediate_send_with_tag(StaticScope, slice, TAG);
        self.in_flight.push(InFlight {
            request: Some(request),
            buffer,
        });
        if let Some(bell) = self.bell.as_mut() {
            bell.sent(to);
        }
    }

    fn bell(&self) -> Option<std::sync::Arc<super::doorbell::Bell>> {
        self.bell.as_ref().and_then(|b| b.bell())
    }

    fn waker(&self) -> Option<super::doorbell::Waker> {
        self.bell.as_ref().and_then(|b| b.waker())
    }

    fn try_recv(&mut self) -> Option<(Rank, Vec<u8>)> {
        let probed = self
            .world
            .any_process()
            .immediate_matched_probe_with_tag(TAG)?;
        let (bytes, status) = probed.matched_receive_vec::<u8>();
        Some((Rank(status.source_rank() as u32), bytes))
    }

    fn progress(&mut self) -> bool {
        let mut i = 0;
        while i < self.in_flight.len() {
            let done = match self.in_flight[i].request.take() {
                Some(req) => match req.test() {
                    Ok(_) => true,
                    Err(req) => {
                        self.in_flight[i].request = Some(req);
                        false
                    }
                },
                None => true,
            };
            if done {
                let f = self.in_flight.swap_remove(i);
                // SAFETY: the send that used this buffer has completed; nothing else refers to it.
                drop(unsafe { Box::from_raw(f.buffer) });
            } else {
                i += 1;
            }
        }
        !self.in_flight.is_empty()
    }
}

impl Drop for MpiFabric {
    fn drop(&mut self) {
        // Sends that never completed (their receiver stopped first): their requests must not be
        // dropped (rsmpi panics) and their buffers must outlive MPI, so both are leaked.
        for f in self.in_flight.drain(..) {
            if let Some(req) = f.request {
                std::mem::forget(req);
            }
        }
    }
}
