#!/usr/bin/env bash
# One Ray node of a Slurm job (used by jobs/slurm/screen.sbatch; not meant to be run by hand).
#   ray-node.sh head   ADDR_FILE IP   start the head here on IP; write "IP:PORT" to ADDR_FILE once it accepts drivers
#   ray-node.sh worker HEAD_ADDRESS INDEX   join the head from this node, the INDEX-th of the allocation (>= 1)
# Ray runs in a session of its own (setsid); on exit/TERM/INT this script stops exactly that session (never
# `ray stop`, which would stop every Ray on the node, other users' jobs included) and removes the node's temp dir.
# USR1 stops it too: the batch script signals the worker srun steps with USR1, which srun forwards to this script
# (a TERM to srun would make it SIGKILL the step, leaving no time to clean up).
# Resources come from the allocation on this node (SLURM_CPUS_PER_TASK / SLURM_CPUS_ON_NODE, SLURM_GPUS_ON_NODE /
# CUDA_VISIBLE_DEVICES, SLURM_MEM_PER_NODE / SLURM_MEM_PER_CPU), ports from a per-job slot (below).
set -euo pipefail

usage="usage: ray-node.sh head ADDR_FILE IP | worker HEAD_ADDRESS INDEX"
role=${1:?$usage}
arg=${2:?$usage}
job=${SLURM_JOB_ID:?not inside a Slurm job}
# the node's place in the allocation (SLURM_NODEID inside an srun step counts the step's nodes, so it is passed)
if [ "$role" = head ]; then node_index=0; else node_index=${3:?$usage}; fi
say() { echo "[ray-node ${role} $(hostname -s) job ${job}] $*" >&2; }

# --- Python and the ray CLI: the ray next to SCREENING_PYTHON (a venv's bin), else the one on PATH.
py=$(command -v "${SCREENING_PYTHON:-python}") || { say "python '${SCREENING_PYTHON:-python}' not found"; exit 2; }
bindir=$(dirname "$py")            # not readlink -f: a venv's python is a symlink out of the venv
export PATH="$bindir:$PATH"        # Ray's workers and any `ray` subprocess use this environment
ray_bin=$(command -v ray) || { say "no 'ray' next to $py or on PATH (pip install 'ray[data]')"; exit 2; }
# On TERM, `ray start` first drains the node for up to 30 s (Ray's default, for Serve traffic): as long as Slurm's
# default KillWait, so it would be SIGKILLed mid-way. A screening job has nothing to drain when it stops.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}

# --- resources of this node in the allocation (never constants)
cpus=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-$(nproc)}}
if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
  gpus=$SLURM_GPUS_ON_NODE
elif [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && [ "${CUDA_VISIBLE_DEVICES}" != NoDevFiles ]; then
  gpus=$(awk -F, '{ print NF }' <<<"$CUDA_VISIBLE_DEVICES")
else
  gpus=0                           # CPU-only allocation: say so, or Ray would claim GPUs the job does not own
fi
mem_mb=${SLURM_MEM_PER_NODE:-}
[ -n "$mem_mb" ] || { [ -n "${SLURM_MEM_PER_CPU:-}" ] && mem_mb=$(( SLURM_MEM_PER_CPU * cpus )); } || true
extra=()
# Object store = 30% of the job's memory on this node (Ray's own default fraction, but of the allocation, not of
# the whole machine, which other jobs share).
[ -z "$mem_mb" ] || extra+=("--object-store-memory=$(( mem_mb * 1024 * 1024 * 3 / 10 ))")

# --- ports: a per-job slot of SLOT consecutive ports in [BASE, BASE + SLOTS*SLOT), below the kernel's ephemeral
# range. The slot starts at (job id + node index) mod SLOTS, so two jobs on one node (and two nodes of one job that
# share a host) differ; a slot with any port in use (any TCP state) is skipped. Layout inside a slot:
# +0 GCS, +1 dashboard, +2/+3 dashboard agent http/grpc, +4 metrics export, +5 runtime env agent, +6 Ray client
# server, +7 node manager, +8 object manager, +16..SLOT-1 worker ports (one per concurrent worker process).
base=${SCREENING_RAY_PORT_BASE:-20000}
slot_size=${SCREENING_RAY_PORT_SLOT:-512}
slots=${SCREENING_RAY_PORT_SLOTS:-24}
used=" $({ cat /proc/net/tcp /proc/net/tcp6 2>/dev/null || true; } | while read -r _ addr _; do
  if [[ "$addr" == *:* && "$addr" != local_address ]]; then echo $((16#${addr##*:})); fi; done | sort -un | tr '\n' ' ') "
slot_free() {
  local p
  for ((p = $1; p < $1 + slot_size; p++)); do [[ "$used" != *" $p "* ]] || return 1; done
}
first=$(( (job + node_index) % slots )) lo=""
for ((k = 0; k < slots; k++)); do
  s=$(( (first + k) % slots ))
  if slot_free $(( base + s * slot_size )); then lo=$(( base + s * slot_size )); break; fi
done
[ -n "$lo" ] || { say "no free port slot in [$base, $(( base + slots * slot_size )))"; exit 2; }
ports=(--node-manager-port=$((lo + 7)) --object-manager-port=$((lo + 8))
       --metrics-export-port=$((lo + 4)) --dashboard-agent-listen-port=$((lo + 2))
       --dashboard-agent-grpc-port=$((lo + 3)) --runtime-env-agent-port=$((lo + 5))
       --min-worker-port=$((lo + 16)) --max-worker-port=$((lo + slot_size - 1)))

# --- a temp dir of this job and node, short: Ray's Unix sockets live under it (sun_path is < 108 bytes)
tmp="${SCREENING_RAY_TMPDIR:-/tmp}/rs${job}n${node_index}"
(( ${#tmp} <= 40 )) || { say "temp dir $tmp is too long for Ray's sockets (set SCREENING_RAY_TMPDIR shorter)"; exit 2; }
mkdir -p "$tmp" && chmod 700 "$tmp"

ray_pid=""
session_pids() {  # live processes of session $1 (from /proc: ps may be missing on compute nodes)
  local f st state sid
  for f in /proc/[0-9]*/stat; do
    { read -r st <"$f"; } 2>/dev/null || continue
    read -r state _ _ sid _ <<<"${st##*) }"     # fields after "(comm)": state ppid pgrp session ...
    [ "$sid" = "$1" ] && [ "$state" != Z ] && { f=${f#/proc/}; echo "${f%/stat}"; }
  done
  return 0
}
cleanup() {
  # Ignore further signals while cleaning up: on scancel Slurm TERMs every process of the job and the batch script
  # TERMs this one too; a second TERM must not cut the cleanup short (Ray would outlive the job, reparented to init).
  trap - EXIT
  trap '' TERM INT HUP USR1
  set +e                           # a failing step must not end the cleanup early
  if [ -n "$ray_pid" ]; then
    # `ray start` leads a session of its own (setsid below). Ray's workers move to process groups of their own
    # but stay in that session, so the session is what is stopped. First TERM `ray start` alone: it shuts its
    # children down in order (seen: all gone in ~2 s), whereas TERMing them all at once leaves some waiting for a
    # GCS that is gone. Then TERM what is left of the session, and KILL the rest after SCREENING_RAY_STOP_GRACE s
    # in all (default 10; must end before Slurm's KillWait, default 30 s, SIGKILLs this script).
    local i left grace=$(( ${SCREENING_RAY_STOP_GRACE:-10} * 5 ))
    kill -TERM "$ray_pid" 2>/dev/null || true
    for ((i = 0; i < grace; i++)); do
      left=$(session_pids "$ray_pid")
      [ -n "$left" ] || break
      (( i != grace * 2 / 3 )) || kill -TERM $left 2>/dev/null || true
      sleep 0.2
    done
    [ -z "$left" ] || { say "killing what is left: "$left; kill -KILL $left 2>/dev/null; wait 2>/dev/null; }
  fi
  if [ -n "${SCREENING_RAY_LOG_DIR:-}" ] && [ -d "$tmp/session_latest/logs" ]; then
    mkdir -p "$SCREENING_RAY_LOG_DIR/$(hostname -s)-$node_index" \
      && cp -r "$tmp/session_latest/logs/." "$SCREENING_RAY_LOG_DIR/$(hostname -s)-$node_index/" 2>/dev/null || true
  fi
  [ "${SCREENING_KEEP_RAY_TMP:-0}" = 1 ] || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 143' TERM HUP
trap 'exit 130' INT
trap 'exit 0' USR1

common=(--block --temp-dir="$tmp" --num-cpus="$cpus" --num-gpus="$gpus" --disable-usage-stats "${ports[@]}" "${extra[@]}")
if [ "$role" = head ]; then
  ip=${3:?$usage}
  log="$tmp/ray-start.log"
  dash=false; [ "${SCREENING_RAY_DASHBOARD:-0}" = 0 ] || dash=true
  setsid "$ray_bin" start --head --node-ip-address="$ip" --port="$lo" --include-dashboard="$dash" \
    --dashboard-host=127.0.0.1 --dashboard-port=$((lo + 1)) --ray-client-server-port=$((lo + 6)) "${common[@]}" \
    </dev/null >"$log" 2>&1 &
  ray_pid=$!
  say "ray start --head at $ip:$lo (session $ray_pid, $cpus CPUs, $gpus GPUs, temp dir $tmp)"
  # Ready once `ray start` reports the runtime up (GCS + raylet registered); then tell the batch script.
  for i in $(seq 600); do
    grep -q "Ray runtime started" "$log" 2>/dev/null && break
    kill -0 "$ray_pid" 2>/dev/null || { say "ray start exited:"; cat "$log" >&2; exit 1; }
    sleep 0.2
  done
  grep -q "Ray runtime started" "$log" || { say "the head did not start in 120 s:"; cat "$log" >&2; exit 1; }
  echo "$ip:$lo" >"$arg.tmp" && mv "$arg.tmp" "$arg"
else
  setsid "$ray_bin" start --address="$arg" "${common[@]}" </dev/null &
  ray_pid=$!
  say "ray start --address=$arg (session $ray_pid, $cpus CPUs, $gpus GPUs, temp dir $tmp)"
fi
# `wait` (not a foreground child) so TERM from scancel/srun runs the trap at once.
set +e
wait "$ray_pid"
rc=$?
say "ray exited ($rc)"
exit "$rc"
