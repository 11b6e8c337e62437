//! Which launcher starts a runtime on this machine (the no-launcher mode, `bqrt compile`'s own
//! runtime): the one of the MPI this binary is linked against, with its settings.

use crate::transport::mpi::Flavor;
use std::path::PathBuf;
use std::process::Command;

/// The launcher of the MPI this binary is linked against: Open MPI's `mpirun`, or Hydra's
/// `mpiexec` for MPICH (the generic names last: on a machine with both MPIs they belong to one).
pub fn find(flavor: Flavor) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let names: &[&str] = match flavor {
        Flavor::OpenMpi => &["mpirun.openmpi", "mpiexec.openmpi", "mpirun", "mpiexec"],
        Flavor::Mpich => &["mpiexec.hydra", "mpiexec.mpich", "mpiexec", "mpirun"],
        Flavor::Other => &["mpiexec", "mpirun"],
    };
    for name in names {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() && matches_flavor(&p, flavor) {
                return Some(p);
            }
        }
    }
    None
}

/// Whether a generic `mpiexec`/`mpirun` belongs to `flavor` (Debian points them at one MPI
/// through alternatives): the resolved path names it.
fn matches_flavor(p: &std::path::Path, flavor: Flavor) -> bool {
    let real = std::fs::canonicalize(p)
        .map(|r| r.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match flavor {
        Flavor::OpenMpi => !real.contains("mpich") && !real.contains("hydra"),
        Flavor::Mpich => !real.contains("openmpi") && !real.contains("orterun"),
        Flavor::Other => true,
    }
}

/// What to say when [`find`] finds nothing.
pub fn missing(flavor: Flavor) -> String {
    let hint = match flavor {
        Flavor::OpenMpi => "Open MPI's mpirun (Debian/Ubuntu: apt-get install openmpi-bin)",
        Flavor::Mpich => "MPICH's mpiexec.hydra (Debian/Ubuntu: apt-get install mpich)",
        Flavor::Other => "the MPI's mpiexec",
    };
    format!(
        "no launcher for {} found on PATH: install {hint}",
        crate::transport::mpi::library_version()
    )
}

/// The settings a runtime of more ranks than cores on one machine needs from its launcher:
/// UCX's log level for either MPI, the rest for Open MPI only (Hydra oversubscribes and binds
/// nothing by default, and runs as root).
pub fn one_machine(cmd: &mut Command, flavor: Flavor) {
    // UCX (MPICH's network layer) logs warnings on stdout, read when the library loads
    if std::env::var_os("UCX_LOG_LEVEL").is_none() {
        cmd.env("UCX_LOG_LEVEL", "error");
    }
    if flavor != Flavor::OpenMpi {
        return;
    }
    // a server plus one worker per core is more ranks than cores; bqrt pins its workers itself
    cmd.env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("OMPI_MCA_hwloc_base_binding_policy", "none");
    // Open MPI's TCP transport takes listening ports in order from 1024, so a job starting just
    // after another one ended on this machine reuses its ports, and a connection attempt left
    // over from the old job reaches the new one and crashes it in MPI_Init. Kernel-chosen
    // ports (minimum 0) are not reused at once. A setting the user made wins.
    for family in ["v4", "v6"] {
        let key = format!("OMPI_MCA_btl_tcp_port_min_{family}");
        if std::env::var_os(&key).is_none() {
            cmd.env(key, "0");
        }
    }
    // Open MPI's PMIx authenticates each rank to the launcher with munge when munge is
    // installed, and retries for 2.2 s when munge's socket is there but its daemon is not; the
    // native way (the local socket's peer credentials) takes nothing.
    if std::env::var_os("PMIX_MCA_psec").is_none() {
        cmd.env("PMIX_MCA_psec", "native");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    if unsafe { libc::getuid() } == 0 {
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
}
