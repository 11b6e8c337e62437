# Sourced by the launch scripts: settings Open MPI needs on small machines and as root.
# - as root, mpirun refuses to start without the two ALLOW variables;
# - more ranks than cores (tests oversubscribe a 2-core CI machine) needs oversubscription;
# - bqrt does its own pinning, so the launcher must not bind ranks.
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}
export OMPI_MCA_hwloc_base_binding_policy=${OMPI_MCA_hwloc_base_binding_policy:-none}
