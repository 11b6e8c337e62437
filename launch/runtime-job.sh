# runtime-job.sh - sourced by the batch templates (slurm/, pbs/): start the runtime with a launcher
# command, wait for it to be ready, run the client, stop the runtime, exit with the client's status.
#
# The template sets START (an array: the launcher command up to and including the bqrt binary)
# and may set STOP_FALLBACK (a command that signals the runtime's ranks if `bqrt shutdown` fails).
# Shared variables, all from the environment:
#   CLIENT              the command to run against the runtime (required); it finds the runtime
#                       through BQRT_SERVER and BQRT_TOKEN_FILE, exported here
#   BQRT                the bqrt binary (default: bqrt on PATH)
#   BQRT_ARGS           extra flags for `bqrt serve` (e.g. "--gpus-per-node 4 -v")
#   BQRT_READY_TIMEOUT  seconds to wait for the runtime to be ready (default 120)

: "${CLIENT:?set CLIENT to the command to run against the runtime (e.g. CLIENT='python job.py')}"
BQRT=${BQRT:-bqrt}
work=$(mktemp -d "${TMPDIR:-/tmp}/bqrt-job.XXXXXX")
ready=$work/ready
token=$work/token
# shellcheck disable=SC2086  # BQRT_ARGS is a list of flags
"${START[@]}" serve --listen 127.0.0.1:0 --ready-file "$ready" --token-file "$token" ${BQRT_ARGS:-} &
runtime=$!
deadline=$(( $(date +%s) + ${BQRT_READY_TIMEOUT:-120} ))
until [ -s "$ready" ]; do
  if ! kill -0 "$runtime" 2>/dev/null; then
    wait "$runtime"; echo "bqrt job: the runtime exited before it was ready (status $?)" >&2
    rm -rf "$work"; exit 70
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "bqrt job: the runtime was not ready within ${BQRT_READY_TIMEOUT:-120} s" >&2
    ${STOP_FALLBACK:-kill -INT $runtime}; wait "$runtime"; rm -rf "$work"; exit 70
  fi
  sleep 0.2
done
BQRT_SERVER=$(cat "$ready")
export BQRT_SERVER BQRT_TOKEN_FILE=$token BQRT
echo "bqrt job: runtime ready at $BQRT_SERVER"
bash -c "$CLIENT"
status=$?
echo "bqrt job: client exited with status $status; stopping the runtime"
if ! "$BQRT" shutdown >/dev/null; then
  ${STOP_FALLBACK:-kill -INT $runtime}
fi
wait "$runtime"
rstatus=$?
[ "$rstatus" -eq 0 ] || echo "bqrt job: the runtime exited with status $rstatus" >&2
rm -rf "$work"
exit "$status"
