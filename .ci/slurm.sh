#!/usr/bin/env bash
# A real one-node Slurm on loopback for the tests (tests/test_slurm.py), from Debian's slurm-wlm + munge.
#   .ci/slurm.sh install        apt packages (idempotent; needs root)
#   .ci/slurm.sh start DIR [N]  config + state under DIR, start munged/slurmctld and N slurmd (default 1), wait until
#                               every node is idle; pids go to DIR/pids, the client environment to DIR/env
#                               (SLURM_CONF=...). N > 1: Slurm nodes ci0..ci{N-1} all on this host (Debian builds
#                               Slurm with multiple-slurmd support), each with all CPUs, so multi-node jobs run here.
#   .ci/slurm.sh stop DIR       stop exactly the daemons listed in DIR/pids (never by name: other Slurms may run here)
# Everything (munge socket, key, ports, spool, state) is private to DIR, so this never touches a system Slurm/munge.
set -euo pipefail

die() { echo "slurm.sh: $*" >&2; exit 1; }

# Ports in use on this machine (any TCP state), from /proc so no ss/netstat is needed.
used_ports() {
  local _ local_addr
  { cat /proc/net/tcp /proc/net/tcp6 2>/dev/null || true; } | while read -r _ local_addr _; do
    if [[ "$local_addr" == *:* && "$local_addr" != local_address ]]; then echo $((16#${local_addr##*:})); fi
  done
}
free_port_from() {  # first free TCP port >= $1 that is not in the exclusion list $2 (space separated)
  local p=$1 used; used=" $(used_ports | sort -un | tr '\n' ' ') $2 "
  while [[ "$used" == *" $p "* ]]; do p=$((p + 1)); done
  echo "$p"
}

cmd_install() {
  local bins=(munged slurmctld slurmd sbatch sinfo scancel squeue)
  local missing=0 b
  for b in "${bins[@]}"; do command -v "$b" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$b" >/dev/null 2>&1 || missing=1; done
  [ "$missing" = 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "install needs root (apt-get install slurm-wlm munge)"
  export DEBIAN_FRONTEND=noninteractive
  # Debian images ship a policy-rc.d that stops packages from starting their services; we start our own anyway.
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; } \
    || die "apt-get install slurm-wlm munge failed"
}

cmd_start() {
  local dir=${1:?usage: slurm.sh start DIR [N]} n_nodes=${2:-1}
  export PATH="$PATH:/usr/sbin"
  for b in munged slurmctld slurmd sinfo; do command -v "$b" >/dev/null || die "$b not found (run: $0 install)"; done
  [ "$(id -u)" = 0 ] || die "start needs root (slurmd runs jobs as their users)"
  mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
  [ ! -e "$dir/pids" ] || die "$dir/pids exists: a Slurm from this dir may still run ($0 stop $dir)"
  mkdir -p "$dir"/{etc,state,spool,log,munge,run}
  chmod 700 "$dir/munge"
  local sock="$dir/munge/munge.socket"
  (( ${#sock} < 100 )) || die "DIR too long for a Unix socket path: $sock"

  # munge: a fresh key and a private socket (slurm.conf's AuthInfo points the Slurm daemons and clients at it).
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  : >"$dir/pids"
  # --force: munged refuses keys/dirs it finds insecure (e.g. under /tmp); this is a throwaway test key.
  setsid munged -F --force --key-file="$dir/munge/munge.key" --socket="$sock" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed" \
    </dev/null >>"$dir/log/munged.out" 2>&1 &
  echo "munged $!" >>"$dir/pids"
  local i
  for i in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || die "munged did not start; see $dir/log/munged.log"

  local host cpus mem_total mem ctld_port taken k nodes_conf="" names=()
  host=$(hostname -s)
  cpus=$(nproc)
  mem_total=$(free -m | awk '/^Mem:/ { print $2 }')
  mem=$(( (mem_total > 2048 ? mem_total - 1024 : mem_total / 2) / n_nodes ))  # headroom for the OS and daemons
  ctld_port=$(free_port_from 6817 "")
  taken=$ctld_port
  for ((k = 0; k < n_nodes; k++)); do
    local port; port=$(free_port_from $((ctld_port + 1 + k)) "$taken"); taken="$taken $port"
    names+=("ci$k")
    nodes_conf+="NodeName=ci$k NodeHostname=$host NodeAddr=127.0.0.1 Port=$port CPUs=$cpus RealMemory=$mem State=UNKNOWN"$'\n'
  done

  cat >"$dir/etc/slurm.conf" <<EOF
# One-node loopback Slurm for tests (written by .ci/slurm.sh). No cgroups, no accounting.
ClusterName=screeningci
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${sock}
StateSaveLocation=${dir}/state
SlurmdSpoolDir=${dir}/spool/%n
SlurmctldPidFile=${dir}/run/slurmctld.pid
SlurmdPidFile=${dir}/run/slurmd-%n.pid
SlurmctldLogFile=${dir}/log/slurmctld.log
SlurmdLogFile=${dir}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( mem / cpus ))
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
# seconds between SIGTERM and SIGKILL when a job is cancelled or times out
KillWait=30
InactiveLimit=0
# sbatch --wait polls every 2 s, x4 (up to 32 s) while that stays below MinJobAge/2; 4 keeps it at 2 s, so a test
# does not wait up to 30 s after its job ended. (Finished jobs then leave squeue/scontrol after >= 4 s.)
MinJobAge=4
MailProg=/bin/true
SlurmctldTimeout=30
SlurmdTimeout=60
${nodes_conf}PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  echo "export SLURM_CONF=$dir/etc/slurm.conf" >"$dir/env"
  export SLURM_CONF="$dir/etc/slurm.conf"

  # -D: foreground, so $! is the daemon itself; -c: no state from an earlier run; -i: ignore state errors.
  setsid slurmctld -D -c -i -f "$SLURM_CONF" </dev/null >>"$dir/log/slurmctld.out" 2>&1 &
  echo "slurmctld $!" >>"$dir/pids"
  for k in "${names[@]}"; do
    setsid slurmd -D -f "$SLURM_CONF" -N "$k" </dev/null >>"$dir/log/slurmd-$k.out" 2>&1 &
    echo "slurmd $!" >>"$dir/pids"
  done

  local state="" want
  want=$(printf 'idle %.0s' "${names[@]}")
  for i in $(seq 120); do
    state=$(sinfo -h -N -o '%T' 2>/dev/null | tr '\n' ' ' || true)
    [ "$state" = "$want" ] && break
    sleep 0.5
  done
  if [ "$state" != "$want" ]; then
    echo "slurm.sh: node states '${state}' after 60 s; logs:" >&2
    tail -n 20 "$dir"/log/*.log "$dir"/log/*.out >&2 || true
    cmd_stop "$dir"
    exit 1
  fi
  echo "slurm.sh: nodes ${names[*]} idle (SLURM_CONF=$SLURM_CONF)"
}

alive() {  # running (a zombie whose parent does not reap it counts as gone)
  [ -d "/proc/$1" ] && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

cmd_stop() {
  local dir=${1:?usage: slurm.sh stop DIR} name pid i
  [ -f "$dir/pids" ] || return 0
  # Reverse order: slurmd, slurmctld, then munged (the others authenticate through it while shutting down).
  tac "$dir/pids" | while read -r name pid; do
    # only if that pid is still the daemon we started (pids get reused)
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
      kill -TERM "$pid" 2>/dev/null || true
      for i in $(seq 100); do alive "$pid" || break; sleep 0.1; done
      ! alive "$pid" || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -f "$dir/pids"
}

case "${1:-}" in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
