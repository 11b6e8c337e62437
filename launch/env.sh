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
