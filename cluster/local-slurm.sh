#!/usr/bin/env bash
# A real Slurm cluster of one node on this machine, from Debian's packages (slurm-wlm, munge):
# munged, slurmctld and slurmd run as background daemons out of one temporary directory, on
# loopback and unprivileged ports, so that the job scripts in cluster/jobs/ can be submitted
# exactly as users submit them.
#
#   cluster/local-slurm.sh start   # prints `export SLURM_CONF=...`: eval "$(cluster/local-slurm.sh start)"
#   cluster/local-slurm.sh stop    # stops the cluster named by $SLURM_CONF (or the argument) and removes it
#   cluster/local-slurm.sh test    # start, submit the job scripts and check their logits, stop (always)
#
# Environment: PIPESWAP (the executable, default build/pipeswap), LOCAL_SLURM_CPUS (CPUs the node
# claims, default 8: more than this machine may have, so that 2-3 tasks fit; slurmd accepts it
# through SlurmdParameters=config_overrides).
# Exit status 77 means a prerequisite cannot be had here (not root, packages not installable).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
PIPESWAP=${PIPESWAP:-$root/build/pipeswap}

say() { echo "local-slurm: $*" >&2; }
skip() {
  say "SKIP: $*"
  exit 77
}

# Daemons run as root (SlurmUser=root); slurmd must start job steps as the submitting user.
require_root() {
  [ "$(id -u)" -eq 0 ] || skip "slurmd must run as root to launch job steps; run this as root (it is run by ctest -L cluster)"
}

# Installs slurm-wlm (slurmctld, slurmd, client commands) and munge when a command is missing.
install_missing() {
  local cmd missing=()
  for cmd in slurmctld slurmd sbatch srun sinfo munged munge; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "missing ${missing[*]}: installing Debian's slurm-wlm munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; }; then
    skip "apt-get could not install slurm-wlm munge (no Debian mirror?); install them by hand: apt-get install -y slurm-wlm munge"
  fi
  # The packages' own services must not be what we test against (policy-rc.d usually stops them
  # from starting in containers; where they did start they use /etc/slurm, not our SLURM_CONF).
}

# A TCP port nobody listens on, from a range unlikely to be in use; $1 = first candidate.
free_port() {
  local p=$1
  while [ -n "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; do p=$((p + 1)); done
  echo "$p"
}

# Writes munge key, slurm.conf, cgroup.conf and an empty plugstack.conf into $1.
write_config() {
  local dir=$1 node cpus ctld_port slurmd_port
  node=$(hostname -s)
  cpus=${LOCAL_SLURM_CPUS:-8}
  ctld_port=$(free_port $((30000 + $$ % 5000 * 2)))
  slurmd_port=$(free_port $((ctld_port + 1)))
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  # munged checks that every directory up to its socket is searchable by all and not writable by others.
  chmod 755 "$dir"
  head -c 1024 /dev/urandom >"$dir/munge.key"
  chmod 600 "$dir/munge.key"
  : >"$dir/plugstack.conf"  # so that no SPANK plugin of /etc/slurm is loaded
  # Slurm reads cgroup.conf beside slurm.conf; nothing here uses cgroups (linuxproc, task/none).
  printf 'CgroupPlugin=autodetect\nIgnoreSystemd=yes\n' >"$dir/cgroup.conf"
  cat >"$dir/slurm.conf" <<EOF
# Written by cluster/local-slurm.sh: one node, loopback only, no accounting.
ClusterName=pipeswap-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
PlugStackConfig=$dir/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
ReturnToService=2
MailProg=/bin/true
# The node may claim more CPUs than the machine has (2-3 tasks on 2 cores): slurmd reports the
# configured values instead of the hardware's.
SlurmdParameters=config_overrides
# Two pretend GPUs, so that --gpus-per-node=2 in the job scripts is accepted as written (the test
# runs them with a CPU device chain); gres.conf gives them /dev/null and /dev/zero as device files.
GresTypes=gpu
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 Gres=gpu:2 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  # gres/gpu counts device files (Count alone reports 0 GPUs and the node goes INVAL).
  printf 'NodeName=%s Name=gpu File=/dev/null,/dev/zero\n' "$node" >"$dir/gres.conf"
  echo "$node" >"$dir/node"
}

# Starts one daemon in the foreground of a background job so that $! is the daemon itself
# (setsid: a Ctrl-C in the shell that ran `start` must not reach it); records "pid name".
start_daemon() {
  local dir=$1 name=$2
  shift 2
  setsid "$@" </dev/null >>"$dir/log/$name.out" 2>&1 &
  echo "$! $name" >>"$dir/pids"
}

# Stops exactly the daemons recorded in $1/pids (after checking each pid still runs that program),
# then removes $1. Jobs still running are cancelled first so that no slurmstepd is left behind.
stop_cluster() {
  local dir=$1 pid name deadline
  [ -f "$dir/pids" ] || {
    say "$dir is not a cluster started by local-slurm.sh (no pids file); not touching it"
    return 1
  }
  if [ -f "$dir/slurm.conf" ] && command -v scancel >/dev/null; then
    SLURM_CONF=$dir/slurm.conf scancel --full --quiet --partition=local 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while [ $SECONDS -lt $deadline ] &&
      [ -n "$(SLURM_CONF=$dir/slurm.conf squeue -h -o %i 2>/dev/null)" ]; do sleep 0.5; done
  fi
  # slurmd first (it ends its steps), munged last (the others authenticate through it while stopping).
  for name in slurmd slurmctld munged; do
    while read -r pid n; do
      [ "$n" = "$name" ] || continue
      if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while [ -e "/proc/$pid" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        if [ -e "/proc/$pid" ]; then
          say "$name ($pid) did not stop on TERM; killing it"
          kill -KILL "$pid" 2>/dev/null || true
        fi
      fi
    done <"$dir/pids"
  done
  rm -rf "$dir"
}

# Starts munged, slurmctld and slurmd from a new temporary directory and waits until the node is
# idle. Sets cluster_dir first thing, so that a caller's trap can stop what was started so far.
cluster_dir=""
start_cluster() {
  local dir node deadline state=""
  dir=$(mktemp -d /tmp/pipeswap-slurm.XXXXXX)
  : >"$dir/pids"
  cluster_dir=$dir
  write_config "$dir"
  node=$(cat "$dir/node")
  export SLURM_CONF=$dir/slurm.conf
  start_daemon "$dir" munged munged --foreground --force --key-file="$dir/munge.key" \
    --socket="$dir/munge.socket" --pid-file="$dir/munged.pid" --seed-file="$dir/munge.seed" \
    --log-file="$dir/log/munged.log"
  deadline=$((SECONDS + 10))
  until [ -S "$dir/munge.socket" ]; do
    [ $SECONDS -lt $deadline ] || { cat "$dir/log/munged.out" >&2; return 1; }
    sleep 0.1
  done
  # -D: stay in the foreground (we hold the pid); -i: ignore state files, this cluster is new.
  start_daemon "$dir" slurmctld slurmctld -D -i -f "$SLURM_CONF"
  start_daemon "$dir" slurmd slurmd -D -f "$SLURM_CONF" -N "$node"
  deadline=$((SECONDS + 30))
  while [ $SECONDS -lt $deadline ]; do
    state=$(sinfo -h -n "$node" -o %t 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.3
  done
  if [ "$state" != idle ]; then
    say "node $node did not become idle within 30 s (state '$state'); daemon logs:"
    tail -n 20 "$dir"/log/* >&2 || true
    return 1
  fi
}

# --- test ---------------------------------------------------------------------------------------

fail() {
  say "FAIL: $*"
  exit 1
}

# Submits a job script with `sbatch --wait` in the background; $1 = name, $2 = script, the rest:
# extra sbatch options. The job's environment (PIPESWAP, DEVICE_CHAIN, PIPESWAP_ARGS, ...) is the
# caller's, exported by sbatch. All jobs are submitted at once: they queue for the node's two
# pretend GPUs and run one after another, while their waits overlap (sbatch --wait polls after 2,
# 8, then every 32 s, which one job after another would pay in full).
declare -A submitted=()
submit() {
  local name=$1 script=$2
  shift 2
  # --time: a hung job is ended by Slurm within minutes, well inside ctest's timeout.
  sbatch --wait --quiet --time=3 --job-name="ps-$name" --output="$work/$name.out" "$@" "$script" &
  submitted[$name]=$!
}

# Waits for the sbatch of job $1 and shows the job's output.
finished() {
  local name=$1 rc=0
  wait "${submitted[$name]}" || rc=$?
  say "$name: sbatch --wait returned $rc after $((SECONDS - t_submit)) s; the job's output:"
  sed 's/^/    | /' "$work/$name.out" >&2 || true
  [ "$rc" -eq 0 ] || fail "$name: the job failed (sbatch --wait returned $rc)"
}

# Checks a finished job: summary line, path it said it took, logits identical to the reference.
check_job() {
  local name=$1 expect_path=$2
  grep -q '^pipeswap run: ' "$work/$name.out" || fail "$name: no 'pipeswap run:' summary line in its output"
  grep -q "launch path: $expect_path" "$work/$name.out" ||
    fail "$name: expected launch path '$expect_path' in its output"
  [ -s "$work/$name.safetensors" ] || fail "$name: no logits file $work/$name.safetensors"
  cmp -s "$work/ref.safetensors" "$work/$name.safetensors" ||
    fail "$name: logits differ from the single-process run"
  say "$name: OK (path '$expect_path', logits bit-identical to the single-process run)"
}

run_test() {
  local mpi_types pmix=no t_start=$SECONDS t_submit
  [ -x "$PIPESWAP" ] || fail "no executable at $PIPESWAP (build it, or set PIPESWAP)"
  work=$(mktemp -d /tmp/pipeswap-slurm-test.XXXXXX)
  # Always stop the daemons and remove both directories, also on failure or interruption.
  # shellcheck disable=SC2317  # called through the trap
  cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    # The waiting sbatch processes first (they would poll a stopped controller), then the jobs and
    # daemons (stop_cluster cancels the jobs before it stops the daemons).
    for p in "${submitted[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "$cluster_dir" ]; then stop_cluster "$cluster_dir" || rc=1; fi
    rm -rf "$work"
    exit "$rc"
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  # One demo model for every run of this test, written by the reference run below.
  export PIPESWAP PIPESWAP_CACHE=$work/cache
  export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}

  # The reference: one process, no launcher in its environment.
  env -u OMPI_COMM_WORLD_SIZE -u PMIX_RANK -u RANK -u WORLD_SIZE -u SLURM_PROCID -u SLURM_STEP_ID \
    "$PIPESWAP" run --output "$work/ref.safetensors" --log-level warn >"$work/ref.out" 2>&1 ||
    { cat "$work/ref.out" >&2; fail "the single-process reference run failed"; }

  start_cluster
  say "reference run done and cluster up after $((SECONDS - t_start)) s: $(sinfo -h -o '%P %D node(s) %c CPUs %G %t')"

  mpi_types=$(srun --mpi=list 2>&1 || true)
  case $mpi_types in *pmix*) pmix=yes ;; esac
  say "srun --mpi=list offers pmix: $pmix"

  export DEVICE_CHAIN=cpu=1,cpu=1
  local common="--log-level warn --micro-batches 2"
  # The multi-node and mpirun scripts run on the one node there is (options on the command line
  # win over #SBATCH lines).
  local one_node=(--nodes=1 --ntasks-per-node=2 --gpus-per-node=2 --cpus-per-task=4)
  t_submit=$SECONDS
  # The single-node script as written (2 tasks, 2 pretend GPUs): pmix where Slurm offers it.
  PIPESWAP_ARGS="$common --output $work/single.safetensors" \
    submit single "$here/jobs/single-node.sbatch"
  # The same script forced onto the path without PMIx (TCP rendezvous), as on clusters without it.
  PIPESWAP_LAUNCH=plain PIPESWAP_ARGS="$common --output $work/single-plain.safetensors" \
    submit single-plain "$here/jobs/single-node.sbatch"
  # The multi-node script once each way: its fallback exports MASTER_ADDR from the allocation.
  PIPESWAP_ARGS="$common --output $work/multi.safetensors" \
    submit multi "$here/jobs/multi-node.sbatch" "${one_node[@]}"
  PIPESWAP_LAUNCH=plain PIPESWAP_ARGS="$common --output $work/multi-plain.safetensors" \
    submit multi-plain "$here/jobs/multi-node.sbatch" "${one_node[@]}"
  # mpirun inside the allocation: Open MPI reads the node list and slots from SLURM_* itself.
  PIPESWAP_ARGS="$common --output $work/mpirun.safetensors" \
    submit mpirun "$here/jobs/mpirun-in-allocation.sbatch" "${one_node[@]}"

  local srun_path="srun without MPI"
  [ $pmix = no ] || srun_path="srun --mpi=pmix"
  finished single
  check_job single "$srun_path"
  finished single-plain
  check_job single-plain "srun without MPI"
  finished multi
  check_job multi "$srun_path"
  finished multi-plain
  check_job multi-plain "srun without MPI"
  grep -q "MASTER_ADDR=$(cat "$cluster_dir/node")" "$work/multi-plain.out" ||
    fail "multi-plain: the fallback did not export MASTER_ADDR from the allocation"
  finished mpirun
  check_job mpirun "mpirun in the allocation"
  grep -q ' on 2 rank(s)' "$work/mpirun.out" || fail "mpirun: Open MPI did not start 2 ranks from the allocation"

  say "all checks passed in $((SECONDS - t_start)) s"
}

# --- main ---------------------------------------------------------------------------------------

case ${1:-} in
  start)
    require_root
    install_missing
    # A failed start leaves nothing behind.
    trap '[ -z "$cluster_dir" ] || stop_cluster "$cluster_dir" || true' EXIT
    trap 'exit 130' INT TERM
    start_cluster
    trap - EXIT INT TERM
    say "cluster running from $cluster_dir (stop it with: SLURM_CONF=$cluster_dir/slurm.conf $0 stop)"
    echo "export SLURM_CONF=$cluster_dir/slurm.conf"
    ;;
  stop)
    conf=${2:-${SLURM_CONF:-}}
    [ -n "$conf" ] || fail "stop: which cluster? set SLURM_CONF (as printed by start) or pass it"
    stop_cluster "$(dirname "$conf")"
    ;;
  test)
    require_root
    install_missing
    run_test
    ;;
  *)
    echo "usage: $0 start|stop|test" >&2
    exit 2
    ;;
esac
