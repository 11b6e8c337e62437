# Sourced by the launch scripts: settings Open MPI needs on small machines and as root.
# - as root, mpirun refuses to start without the two ALLOW variables;
# - more ranks than cores (tests oversubscribe a 2-core CI machine) needs oversubscription;
# - bqrt does its own pinning, so the launcher must not bind ranks.
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}
export OMPI_MCA_hwloc_base_binding_policy=${OMPI_MCA_hwloc_base_binding_policy:-none}
# - Open MPI's TCP transport takes listening ports in order from 1024, so a job that starts just
#   as another ends on the same machine reuses its ports, and a connection attempt left over
#   from the old job reaches the new one and crashes it in MPI_Init; kernel-chosen ports
#   (minimum 0) are not reused at once. This matters when jobs follow each other quickly on one
#   machine, as tests do.
export OMPI_MCA_btl_tcp_port_min_v4=${OMPI_MCA_btl_tcp_port_min_v4:-0}
export OMPI_MCA_btl_tcp_port_min_v6=${OMPI_MCA_btl_tcp_port_min_v6:-0}
# - Open MPI's PMIx authenticates every rank to the launcher with munge when munge is installed
#   (Debian's slurm packages install it); when munge's socket is there but its daemon is not
#   (stopped, or a machine image taken while it ran), it retries for 2.2 s before it falls back:
#   `mpirun -n 3 true` 2.29 s against 0.05 s. The native way (the local socket's peer
#   credentials) costs nothing and works under srun too.
export PMIX_MCA_psec=${PMIX_MCA_psec:-native}
