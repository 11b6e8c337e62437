#!/usr/bin/env bash
# slurm-local.sh - a real SLURM on this one machine, for bqrt's tests and CI: munged, one
# slurmctld and one slurmd per virtual node (n1..nN), all on localhost, all as root.
#
#   bash launch/slurm-local.sh start     start what is not running (idempotent); prints sinfo
#   bash launch/slurm-local.sh stop      cancel jobs, stop the daemons it started, remove state
#   bash launch/slurm-local.sh restart   stop, then start
#   bash launch/slurm-local.sh status    what runs; exit status 0 only when everything is up
#
# Then, e.g.:  srun -N 2 -n 4 hostname;  srun -N 2 --ntasks-per-node=3 target/release/bqrt run fib 20
#              sbatch --wait job.sh
#
# Settings (read by start):
#   SLURM_LOCAL_NODES=3          virtual nodes n1..nN
#   SLURM_LOCAL_CPUS=4           CPUs each node advertises (may exceed the real cores)
#   SLURM_LOCAL_MPI=pmix|pmi2    MpiDefault; default pmix when mpirun is Open MPI (which works
#                                only with pmix), pmi2 when it is MPICH (which works only with pmi2)
#   SLURM_LOCAL_CTLD_PORT=6817   slurmctld's port
#   SLURM_LOCAL_PORT_BASE=17000  slurmd of node nK listens on BASE+K
#
# Needs the Debian packages slurm-wlm and munge (launch/install-deps.sh installs them). It uses
# neither systemd nor cgroups: processes are tracked with proctrack/linuxproc and SLURM does no
# binding (task/none), so the binding a bqrt worker gives itself is the one that holds.
#
# What it takes to run several slurmd on one host, and how this script does it:
#  - each slurmd is started as `slurmd -N nK` with its own port and its own spool directory
#    (SlurmdSpoolDir=.../%n), which has to exist before slurmd starts;
#  - mpi/pmix makes a per-step directory under TmpFS; two virtual nodes in one step would both
#    create the same one ("File exists"), so TmpFS contains %n;
#  - virtual nodes on one machine would share its host name, and Open MPI names per-host files
#    after it (session directory, shared-memory segments vader_segment.<host>.<job>.<rank>): each
#    slurmd runs in its own UTS namespace with the node's name as host name, and a TaskProlog
#    gives every task its node's and job step's own TMPDIR and vader backing directory (per
#    step, because Open MPI's clean-up at the end of one job removes directory parents that
#    another job, starting at that moment, is about to use);
#  - Open MPI leaves loopback out of TCP by default and would use the machine's external
#    address; the TaskProlog points Open MPI's TCP (and UCX, for MPICH) at lo, and lets the
#    kernel choose its listening ports (see launch/env.sh);
#  - Open MPI under srun needs MpiDefault=pmix, MPICH needs pmi2 (with the wrong one MPICH starts
#    N separate singletons and says nothing).
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
PROLOG=$CONF_DIR/slurm-local-task-prolog.sh
TAG="# written by bqrt launch/slurm-local.sh"
RUN=/run/slurm-local               # what this script started (node list, munged marker)
SPOOL=/var/spool/slurmd
STATE=/var/spool/slurmctld
LOGS=/var/log/slurm
TMP_BASE=/tmp/slurm-local
SHM_BASE=/dev/shm/slurm-local
CTLD_PID=/run/slurmctld.pid
MUNGE_PID=/run/munge/munged.pid

NODES=${SLURM_LOCAL_NODES:-3}
CPUS=${SLURM_LOCAL_CPUS:-4}
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
PORT_BASE=${SLURM_LOCAL_PORT_BASE:-17000}

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it starts system daemons)"; }
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }   # pid file -> live process?
munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
node_pid() { echo "/run/slurmd-$1.pid"; }

# Nodes of the running (or last) cluster, else of the settings.
nodes() {
  if [ -s "$RUN/nodes" ]; then cat "$RUN/nodes"; else seq -f 'n%g' 1 "$NODES"; fi
}

check_settings() {
  local v
  for v in NODES CPUS CTLD_PORT PORT_BASE; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_$v must be a positive whole number, got '${!v}'"
  done
  [ "$NODES" -le 64 ] || die "SLURM_LOCAL_NODES=$NODES: at most 64 virtual nodes"
  [ $((PORT_BASE + NODES)) -le 65535 ] || die "SLURM_LOCAL_PORT_BASE=$PORT_BASE leaves no room for $NODES ports"
}

mpi_default() {
  if [ -n "${SLURM_LOCAL_MPI:-}" ]; then
    case $SLURM_LOCAL_MPI in
      pmix | pmi2) echo "$SLURM_LOCAL_MPI" ;;
      *) die "SLURM_LOCAL_MPI must be pmix or pmi2, got '$SLURM_LOCAL_MPI'" ;;
    esac
    return
  fi
  if mpirun --version 2>/dev/null | grep -q "Open MPI"; then
    echo pmix
  elif command -v mpirun >/dev/null; then
    echo pmi2 # MPICH's hydra
  else
    echo pmix
  fi
}

# slurm.conf for the settings, on stdout.
config() {
  local host=$1 mpi=$2
  cat <<EOF
$TAG
ClusterName=bqrt-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=/run/slurmd-%n.pid
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL/%n
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
TmpFS=$TMP_BASE/%n
TaskProlog=$PROLOG
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=$mpi
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
MinJobAge=30
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=n[1-$NODES] NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT_BASE + 1))-$((PORT_BASE + NODES)) CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=1000 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

write_prolog() {
  # Runs before every task; the "export" lines it prints become the task's environment.
  cat >"$PROLOG" <<EOF
#!/bin/sh
$TAG
# Give each virtual node (and job step) its own temporary and shared-memory directories, and
# keep MPI traffic on loopback.
# The directories are per job step too: Open MPI removes its session directory's parents when
# they look empty at the end of a job, which races with another job creating its own there.
node=\${SLURMD_NODENAME:-unknown}
step=\${SLURM_JOB_ID:-0}.\${SLURM_STEP_ID:-0}
mkdir -p "$TMP_BASE/\$node/\$step" "$SHM_BASE/\$node/\$step"
echo "export TMPDIR=$TMP_BASE/\$node/\$step"
echo "export OMPI_MCA_btl_vader_backing_directory=$SHM_BASE/\$node/\$step"
echo "export OMPI_MCA_btl_tcp_if_include=\${OMPI_MCA_btl_tcp_if_include:-lo}"
echo "export OMPI_MCA_btl_tcp_port_min_v4=\${OMPI_MCA_btl_tcp_port_min_v4:-0}"
echo "export OMPI_MCA_btl_tcp_port_min_v6=\${OMPI_MCA_btl_tcp_port_min_v6:-0}"
echo "export OMPI_MCA_oob_tcp_if_include=\${OMPI_MCA_oob_tcp_if_include:-lo}"
echo "export UCX_NET_DEVICES=\${UCX_NET_DEVICES:-lo}"
EOF
  chmod 755 "$PROLOG"
}

start_munge() {
  if munge_works; then
    return
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --force >/dev/null 2>&1 ||
      dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  touch "$RUN/munged-started"
  local _
  for _ in $(seq 50); do
    munge_works && return
    sleep 0.1
  done
  die "munged did not answer within 5 s; see /var/log/munge/munged.log"
}

start() {
  need_root
  check_settings
  local b
  for b in munge munged slurmctld slurmd srun sinfo scontrol; do
    command -v "$b" >/dev/null || die "$b not found: install slurm-wlm and munge (launch/install-deps.sh)"
  done
  local t0 host mpi new
  t0=$(date +%s%N)
  host=$(hostname -s)
  mpi=$(mpi_default)
  mkdir -p "$RUN" "$CONF_DIR" "$STATE" "$LOGS" "$SPOOL" "$TMP_BASE" "$SHM_BASE"

  new=$(mktemp)
  config "$host" "$mpi" >"$new"
  local reconfigure=0
  if running "$CTLD_PID"; then
    # Already up: fine when only MpiDefault differs (applied below); anything else needs a stop.
    if ! cmp -s <(grep -v '^MpiDefault=' "$new") <(grep -v '^MpiDefault=' "$CONF" 2>/dev/null); then
      rm -f "$new"
      die "already running with other settings; run '$0 stop' first"
    fi
    cmp -s "$new" "$CONF" || reconfigure=1
  elif [ -f "$CONF" ] && ! grep -qx "$TAG" "$CONF"; then
    local keep
    keep=$CONF.before-slurm-local.$(date +%s)
    cp -p "$CONF" "$keep"
    say "kept the existing $CONF as $keep"
  fi
  mv "$new" "$CONF"
  chmod 644 "$CONF"
  write_prolog
  seq -f 'n%g' 1 "$NODES" >"$RUN/nodes"

  start_munge

  if ! running "$CTLD_PID"; then
    local p busy=""
    for p in "$CTLD_PORT" $(seq $((PORT_BASE + 1)) $((PORT_BASE + NODES))); do
      if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then busy="$busy $p"; fi
    done
    [ -z "$busy" ] || die "port(s)$busy already in use; set SLURM_LOCAL_CTLD_PORT / SLURM_LOCAL_PORT_BASE or stop what uses them"
    # -c: start clean, without job or node state from an earlier run
    slurmctld -c </dev/null >>"$LOGS/slurmctld.out" 2>&1 ||
      die "slurmctld did not start; see $LOGS/slurmctld.out and $LOGS/slurmctld.log"
  fi
  local n
  for n in $(nodes); do
    mkdir -p "$SPOOL/$n" "$TMP_BASE/$n"
    if ! running "$(node_pid "$n")"; then
      # its own UTS namespace where the system allows one: the node's tasks see the node's name
      # as their host name
      local own_name=()
      if unshare --uts true 2>/dev/null; then own_name=(unshare --uts); fi
      "${own_name[@]}" sh -c '[ -z "$2" ] || hostname "$1"; exec slurmd -N "$1"' sh "$n" "${own_name[*]}" \
        </dev/null >>"$LOGS/slurmd-$n.out" 2>&1 ||
        die "slurmd for $n did not start; see $LOGS/slurmd-$n.out and $LOGS/slurmd-$n.log"
    fi
  done
  if [ "$reconfigure" = 1 ]; then
    scontrol reconfigure >/dev/null 2>&1 || true
  fi

  local up=0 _
  for _ in $(seq 150); do # up to 30 s
    up=$({ sinfo -h -N -t idle,mixed,allocated -o '%N' 2>/dev/null || true; } | sort -u | wc -l)
    [ "$up" -ge "$NODES" ] && break
    sleep 0.2
  done
  if [ "$up" -lt "$NODES" ]; then
    sinfo -N -l >&2 || true
    die "only $up of $NODES nodes are up; see $LOGS"
  fi
  say "up after $((($(date +%s%N) - t0) / 1000000)) ms: nodes $(nodes | paste -sd' ' -) with $CPUS CPUs each, MpiDefault=$mpi"
  sinfo
}

stop() {
  need_root
  local pids="" f p n _
  if running "$CTLD_PID"; then
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    # shellcheck disable=SC2086  # one word per job id
    [ -z "$jobs" ] || scancel --quiet $jobs 2>/dev/null || true
    for _ in $(seq 50); do
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
  for f in /run/slurmd-*.pid "$CTLD_PID"; do
    [ -e "$f" ] || continue
    if running "$f"; then
      p=$(cat "$f")
      pids="$pids $p"
      kill "$p" 2>/dev/null || true
    fi
  done
  if [ -e "$RUN/munged-started" ] && running "$MUNGE_PID"; then
    p=$(cat "$MUNGE_PID")
    pids="$pids $p"
    kill "$p" 2>/dev/null || true
  fi
  for _ in $(seq 100); do # up to 10 s
    local alive=""
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  for p in $pids; do
    if kill -0 "$p" 2>/dev/null; then
      say "pid $p did not stop within 10 s; killing it"
      kill -9 "$p" 2>/dev/null || true
    fi
  done
  for n in $(nodes); do rm -rf "${SPOOL:?}/$n"; done
  rm -rf "${STATE:?}" "${TMP_BASE:?}" "${SHM_BASE:?}" /tmp/spmix_appdir_* /run/slurmd-*.pid "$CTLD_PID" "${RUN:?}"
  local steps
  steps=$(pgrep -x slurmstepd 2>/dev/null | paste -sd' ' - || true)
  [ -z "$steps" ] || say "warning: slurmstepd still running (pids $steps); it exits with its job step"
  say "stopped (logs in $LOGS)"
}

status() {
  local ok=0 f n
  if munge_works; then echo "munged: up"; else echo "munged: down"; ok=1; fi
  if running "$CTLD_PID"; then echo "slurmctld: up (pid $(cat "$CTLD_PID"))"; else echo "slurmctld: down"; ok=1; fi
  for n in $(nodes); do
    f=$(node_pid "$n")
    if running "$f"; then echo "slurmd $n: up (pid $(cat "$f"))"; else echo "slurmd $n: down"; ok=1; fi
  done
  if running "$CTLD_PID"; then
    sinfo || true
    squeue || true
  fi
  return $ok
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  restart) stop && start ;;
  status) status ;;
  *)
    echo "usage: $0 start|stop|restart|status" >&2
    exit 2
    ;;
esac
