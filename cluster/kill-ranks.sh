#!/usr/bin/env bash
# Dead and hung ranks at random points: kill -9 (dead) or SIGSTOP (hung) one rank of a multi-rank CPU
# run of the demo model, then check that every other rank exits non-zero within a bounded time, that
# the job's output names the silent rank and its host, that no output or temporary file is written
# and that no process of the run is left, the stopped one included.
#
#   cluster/kill-ranks.sh test        (ctest: cluster_kill-ranks, label cluster)
#
# Each point draws, from a seeded generator, how the job is launched, how many ranks it has (2 or 3),
# which rank goes silent, in which phase, after which delay and how:
#   signal   KILL    the victim dies: its sockets close, its launcher sees it exit;
#            STOP    the victim hangs (SIGSTOP: alive, its sockets open, nothing answers): only
#                    --comm-timeout can tell; the others must give up within it and name the victim.
#   launch   mpi     mpirun -np N (MPI transport): the test sees mpirun's exit, not each rank's. A
#                    dead rank is named by mpirun ("rank V with PID ... on node HOST exited on signal
#                    9"); a hung one by the survivors' errors ("rank V (HOST)"), and the survivor's
#                    MPI_Abort makes mpirun end the stopped rank too;
#            tcp     N processes started with torchrun's variables (TCP transport): each survivor is
#                    watched on its own and must name "rank V (HOST)" itself. A stopped victim is
#                    continued (SIGCONT) once the survivors are gone and must then exit non-zero on
#                    its own within 5 s (it finds its peers gone);
#            single  single-node mode (pipeswap starts N workers itself, over TCP): the parent must
#                    exit non-zero naming the worker ("worker V exited with code 137 (rank V on HOST"
#                    or "worker V (rank V on HOST) was stopped by signal 19") and end every worker,
#                    the stopped one included.
#   phase    start-up   the victim goes silent after the rendezvous but before it has loaded its
#                       resident weights: the others wait in the plan's allgather, in loading, or in
#                       the barrier after loading;
#            streaming  mid-forward while its disk workers stream swapped blocks from the safetensors
#                       file (--lazy-load, every block swapped, a host cache smaller than its blocks):
#                       in the middle of reads, between them, or computing;
#            forward    mid-forward with resident weights: computing, or sending its activations;
#                       the ranks before it find out when a send to it fails (dead) or from the
#                       watchdog (hung), the ranks after it when their receive from it does (or
#                       after --comm-timeout).
# The delay is drawn from a window that starts at the victim's own marker line for that phase (its
# rendezvous line, then 0-100 ms; or its "loaded ... of weights" line, then 0-1.5 s); the line printed
# for each point says what the victim had done when it was signalled, from its log lines up to then
# ("before opening the checkpoint", "while loading its weights", "after k of 16 micro-batches").
# CFG-parallel jobs (issue 21): after those points, KILL_CFG_POINTS more (default 4) run `pipeswap denoise
# --cfg-parallel 2` on the demo Wan instead (2 or 4 ranks: 2 guidance groups x 1 or 2 stages, every rank
# in either group a possible victim; phases start-up and forward), with the same launches, signals,
# bounds and checks.
# Bound: every survivor (or the job) ends within --comm-timeout + 7 s of the signal (10 s at the
# default 3 s). A dead rank is seen at once (closed sockets, mpirun). A hung one costs the timeout:
# over TCP a peer without heartbeats for T is named at the next transport call; under MPI a wait
# gives up after T plus a ping round of at most 1 s, and a first stage that only sends names a peer
# that took nothing for T/2 and then did not answer for T; then the abort (TCP: at most 1 s for
# the ABORT frames; MPI: mpirun ends every rank, the stopped one included). Typically 3-5 s.
#
# Environment: PIPESWAP (the executable, default build/pipeswap), KILL_POINTS (default 16),
# KILL_SEED (default: drawn; printed first: KILL_SEED=<seed> reproduces a failing series),
# KILL_COMM_TIMEOUT (seconds, default 3; 10 for gpu-test), KILL_DEVICES (one rank per device, e.g.
# cuda:0,cuda:1; `gpu-test` uses both GPUs of a 2-GPU machine, 8 points), KILL_SIGNALS (the signals drawn from, default "KILL STOP";
# "STOP" alone tests hung ranks only). Needs no root. Everything it starts is killed by a trap, also
# on failure or interruption.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=cluster/test-input.sh
. "$here/test-input.sh"
PIPESWAP=${PIPESWAP:-$root/build/pipeswap}
points=${KILL_POINTS:-16}
cfg_points=${KILL_CFG_POINTS:-4}
seed=${KILL_SEED:-$(( $(date +%s%N) % 1000000 ))}
comm_timeout=${KILL_COMM_TIMEOUT:-3}
read -r -a signals <<<"${KILL_SIGNALS:-KILL STOP}"
# KILL_DEVICES=cuda:0,cuda:1: every point runs on these devices, one rank each (NCCL between GPU ranks),
# instead of 2 or 3 CPU ranks. `gpu-test` sets it on a machine with two GPUs.
kill_devices=${KILL_DEVICES:-}
read -r -a devices <<<"${kill_devices//,/ }"
deadline_s=$((comm_timeout + 7))
# How long a continued (SIGCONT) TCP victim may take to notice that its peers are gone.
resume_s=5
host=$(hostname)

say() { echo "kill-ranks: $*" >&2; }
fail() {
  say "FAIL: $*"
  say "reproduce with: KILL_SEED=$seed KILL_POINTS=$points KILL_CFG_POINTS=$cfg_points KILL_SIGNALS='${signals[*]}' $0 test"
  exit 1
}

work=""
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  # Every process of ours carries $work in its command line (the --output path).
  if [ -n "$work" ]; then
    for p in $(pgrep -f "$work/" || true); do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$work"
  fi
  exit "$rc"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# A number in [lo, hi) with two decimals, from bash's seeded RANDOM.
draw() { awk -v lo="$1" -v hi="$2" -v r="$RANDOM" 'BEGIN { printf "%.2f", lo + (hi - lo) * r / 32768 }'; }

# The pid of rank $2's pipeswap process among the processes of point directory $1, found by the
# launcher's variable in its environment ($3: OMPI_COMM_WORLD_RANK or RANK).
rank_pid() {
  local p
  for p in $(pgrep -f "$1/" || true); do
    # By executable, not by name: single-node workers are started through /proc/self/exe.
    [ "$(readlink -f "/proc/$p/exe" 2>/dev/null)" = "$pipeswap_exe" ] || continue
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "$3=$2"; then
      echo "$p"
      return
    fi
  done
}

# Log lines of rank $2 in file(s) $1 (the prefix is "[time] [host rN device] [level]").
rank_lines() { cat "$1" 2>/dev/null | grep -a "\] \[[^]]* r$2 " || true; }

# Waits until rank $2's lines in $1 match $3; false after 60 s or when the job ended first.
wait_for_line() {
  local file=$1 rank=$2 pattern=$3 pid=$4 t0=$SECONDS
  until rank_lines "$file" "$rank" | grep -aq "$pattern"; do
    kill -0 "$pid" 2>/dev/null || return 1
    [ $((SECONDS - t0)) -lt 60 ] || return 1
    sleep 0.01
  done
}

# A copy of the demo model with every hidden, MLP and key/value width 4x (575 MB of zero weights in
# a sparse file, so it costs no disk), into $1: loading its blocks takes a rank ~0.15 s instead of
# the demo's 0.03 s, a window that a start-up kill can hit.
write_wide_model() {
  python3 - "$PIPESWAP_CACHE/demo-llama-v1" "$1" <<'PY'
import json, os, struct, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
c = json.load(open(src + "/config.json"))
kv = c["hidden_size"] * c["num_key_value_heads"] // c["num_attention_heads"]
wider = {c["hidden_size"]: 4 * c["hidden_size"], c["intermediate_size"]: 4 * c["intermediate_size"], kv: 4 * kv}
raw = open(src + "/model.safetensors", "rb").read(1 << 20)
n = struct.unpack("<Q", raw[:8])[0]
old = json.loads(raw[8:8 + n])
header, offset = {}, 0
for name in sorted(k for k in old if k != "__metadata__"):
    # the vocabulary dimension of the embedding and the head stays
    shape = [d if i == 0 and name in ("lm_head.weight", "model.embed_tokens.weight") else wider.get(d, d)
             for i, d in enumerate(old[name]["shape"])]
    size = 4
    for d in shape:
        size *= d
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
    offset += size
c["hidden_size"] *= 4
c["intermediate_size"] *= 4
c.pop("pipeswap_demo", None)
json.dump(c, open(dst + "/config.json", "w"))
text = json.dumps(header).encode()
text += b" " * (-len(text) % 8)
with open(dst + "/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text)
    f.truncate(8 + len(text) + offset)
PY
}

summary=()

# Waits until process $1 has ended, at most until $3 s after time $2; false when it still runs.
wait_gone() {
  while kill -0 "$1" 2>/dev/null && awk -v w="$(elapsed "$2")" -v l="$3" 'BEGIN { exit !(w < l) }'; do
    sleep 0.05
  done
  ! kill -0 "$1" 2>/dev/null
}

# One point: $1 index, $2 launch, $3 ranks, $4 victim, $5 phase, $6 delay (s), $7 signal (KILL, STOP),
# $8 job (run: the forward job of the demo Llama; cfg: CFG-parallel denoising of the demo Wan).
run_point() {
  local i=$1 launch=$2 np=$3 victim=$4 phase=$5 delay=$6 sig=$7 job=${8:-run}
  local d="$work/p$i" chain="" r args pid job_pid t_sig marker rc waited log did what
  what=$([ "$sig" = KILL ] && echo killed || echo stopped)
  mkdir -p "$d"
  for ((r = 0; r < np; r++)); do chain+="${chain:+,}${devices[r]:-cpu}"; done
  if [ "$job" = cfg ]; then
    # Thousands of steps: the job outlasts any drawn delay (the demo Wan takes about 20 ms a step).
    args=(denoise --steps 5000 --cfg-parallel 2 --comm-timeout "$comm_timeout" --log-level debug
          --output "$d/out.safetensors")
  else
    args=(run --input "$work/input.json" --micro-batches 16 --comm-timeout "$comm_timeout" --log-level debug
          --output "$d/out.safetensors")
    [ "$phase" = streaming ] && args+=(--offload-ratio 1 --lazy-load --max-memory 12MB --num-disk-workers 1)
    [ "$phase" = start-up ] && args+=(--model "$work/wide")
  fi
  [ "$launch" = single ] || args+=(--device-chain "$chain")
  local pids=()
  case $launch in
    mpi)
      mpirun -np "$np" "$PIPESWAP" "${args[@]}" >"$d/job.out" 2>&1 &
      job_pid=$!
      log="$d/job.out" ;;
    tcp)
      local port=$((29600 + i))
      for ((r = np - 1; r >= 0; r--)); do
        env RANK="$r" WORLD_SIZE="$np" LOCAL_RANK="$r" LOCAL_WORLD_SIZE="$np" MASTER_ADDR=127.0.0.1 \
          MASTER_PORT="$port" "$PIPESWAP" "${args[@]}" >"$d/rank$r.out" 2>&1 &
        pids[r]=$!
      done
      job_pid=${pids[0]}
      log="$d/rank$victim.out" ;;
    single)
      "$PIPESWAP" "${args[@]}" --device-chain "$chain" >"$d/job.out" 2>&1 &
      job_pid=$!
      log="$d/job.out" ;;
  esac

  # The phase's marker line of the victim, then the drawn delay.
  marker="via "  # run_command's first line: the transport is up (rendezvous done)
  [ "$phase" = start-up ] || marker="loaded .* of weights"
  wait_for_line "$log" "$victim" "$marker" "$job_pid" ||
    { cat "$d"/*.out >&2; fail "point $i: rank $victim never logged '$marker'"; }
  case $launch in  # looked up before the delay: the start-up window is a few tens of milliseconds
    mpi) pid=$(rank_pid "$d" "$victim" OMPI_COMM_WORLD_RANK) ;;
    tcp) pid=${pids[victim]} ;;
    single) pid=$(rank_pid "$d" "$victim" RANK) ;;
  esac
  sleep "$delay"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null ||
    { cat "$d"/*.out >&2; fail "point $i: rank $victim ended before the signal (delay $delay s): lengthen the input"; }
  kill -"$sig" "$pid"
  t_sig=$(now)
  # What the victim had done: its log lines up to the signal.
  local lines
  lines=$(rank_lines "$log" "$victim")
  if ! grep -aq "opened safetensors" <<<"$lines"; then
    did="before opening the checkpoint"
  elif ! grep -aq "loaded .* of weights" <<<"$lines"; then
    did="while loading its weights"
  elif [ "$job" = cfg ]; then
    did="after loading its weights"
  else
    did="after $(grep -ac "micro-batch .* done" <<<"$lines" || true) of 16 micro-batches"
  fi

  # Every survivor (or the job, where the launcher stands for the ranks) ends within the deadline.
  local watch=("$job_pid") names=("job")
  if [ "$launch" = tcp ]; then
    watch=()
    names=()
    for ((r = 0; r < np; r++)); do
      [ "$r" -eq "$victim" ] && continue
      watch+=("${pids[r]}")
      names+=("rank $r")
    done
  fi
  local k slowest=0
  for k in "${!watch[@]}"; do
    wait_gone "${watch[k]}" "$t_sig" "$deadline_s" ||
      { cat "$d"/*.out >&2; fail "point $i: ${names[k]} still runs ${deadline_s} s after rank $victim was $what"; }
    rc=0
    wait "${watch[k]}" || rc=$?
    waited=$(elapsed "$t_sig")
    [ "$rc" -ne 0 ] || { cat "$d"/*.out >&2; fail "point $i: ${names[k]} exited 0 although rank $victim was $what"; }
    slowest=$waited
  done
  # Over TCP nobody else can end a stopped victim: continued, it must find its peers gone and exit
  # non-zero by itself.
  local resumed=""
  if [ "$launch" = tcp ]; then
    if [ "$sig" = STOP ]; then
      kill -CONT "$pid"
      local t_cont
      t_cont=$(now)
      wait_gone "$pid" "$t_cont" "$resume_s" ||
        { cat "$d"/*.out >&2; fail "point $i: rank $victim still runs $resume_s s after it was continued"; }
      rc=0
      wait "$pid" || rc=$?
      [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] ||
        { cat "$d/rank$victim.out" >&2; fail "point $i: continued rank $victim exited with code $rc, not an error of its own"; }
      resumed=", victim out $(elapsed "$t_cont") s after SIGCONT"
    else
      wait "$pid" 2>/dev/null || true
    fi
  fi

  # The silent rank and its host are named: a dead one by mpirun for its job and by the single-node
  # parent for its workers, a hung one by the survivors' errors (and the parent); by each survivor
  # over TCP.
  case $launch:$sig in
    mpi:KILL)
      grep -aqE "rank $victim with PID [0-9]+ on node $host exited on signal 9" "$d/job.out" ||
        { cat "$d/job.out" >&2; fail "point $i: mpirun's output does not name rank $victim on $host"; } ;;
    mpi:STOP)
      grep -aqF "rank $victim ($host)" "$d/job.out" ||
        { cat "$d/job.out" >&2; fail "point $i: no survivor's error names rank $victim ($host)"; } ;;
    tcp:*)
      for ((r = 0; r < np; r++)); do
        [ "$r" -eq "$victim" ] && continue
        grep -aqF "rank $victim ($host)" "$d/rank$r.out" ||
          { cat "$d"/*.out >&2; fail "point $i: rank $r's error does not name rank $victim ($host)"; }
      done ;;
    single:KILL)
      grep -aqF "worker $victim exited with code 137 (rank $victim on $host" "$d/job.out" ||
        { cat "$d/job.out" >&2; fail "point $i: the single-node parent does not name worker $victim on $host"; } ;;
    single:STOP)
      grep -aqF "worker $victim (rank $victim on $host) was stopped by signal $(kill -l STOP)" "$d/job.out" ||
        { cat "$d/job.out" >&2; fail "point $i: the single-node parent does not name stopped worker $victim on $host"; } ;;
  esac
  [ ! -e "$d/out.safetensors" ] || fail "point $i: an output file was written although rank $victim was $what"
  # Nothing of this point is left, a stopped victim included (processes are reaped by now; allow a
  # moment for mpirun's children).
  local t_left=$SECONDS
  while pgrep -f "$d/" >/dev/null; do
    [ $((SECONDS - t_left)) -lt 3 ] || { pgrep -af "$d/" >&2; fail "point $i: processes left behind"; }
    sleep 0.1
  done
  ls "$d"/out.safetensors.tmp.* >/dev/null 2>&1 && fail "point $i: a temporary output file was left behind"
  summary+=("$(printf '%3d  %-3s %-6s  np=%d  victim=r%d  %-4s  %-9s  +%4ss  %-34s  survivors out after %4ss%s' \
    "$i" "$job" "$launch" "$np" "$victim" "$sig" "$phase" "$delay" "$did" "$slowest" "$resumed")")
  rm -rf "$d"
}

run_test() {
  local t_start=$SECONDS i launch np victim phase delay sig
  [ -x "$PIPESWAP" ] || fail "no executable at $PIPESWAP (build it, or set PIPESWAP)"
  pipeswap_exe=$(readlink -f "$PIPESWAP")
  command -v mpirun >/dev/null || fail "mpirun is missing (scripts/deps installs openmpi-bin)"
  work=$(mktemp -d /tmp/pipeswap-kill.XXXXXX)
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  export PIPESWAP_CACHE=$work/cache OMPI_MCA_btl_vader_single_copy_mechanism=none
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
  # No launcher variables from the caller: each point chooses its own.
  unset OMPI_COMM_WORLD_SIZE PMIX_RANK RANK WORLD_SIZE SLURM_PROCID SLURM_STEP_ID
  say "seed $seed ($points points, signals ${signals[*]}; KILL_SEED=$seed reproduces them)"
  RANDOM=$seed
  "$PIPESWAP" plan --log-level warn >/dev/null  # writes the demo model once
  write_wide_model "$work/wide"
  write_input "$work/input.json" 64 64
  local launches=(mpi tcp single) phases=(start-up streaming forward)
  for ((i = 0; i < points; i++)); do
    launch=${launches[RANDOM % 3]}
    np=$((2 + RANDOM % 2))
    [ ${#devices[@]} -eq 0 ] || np=${#devices[@]}
    victim=$((RANDOM % np))
    phase=${phases[RANDOM % 3]}
    case $phase in
      start-up) delay=$(draw 0 0.1) ;;
      *) delay=$(draw 0 1.5) ;;
    esac
    sig=${signals[RANDOM % ${#signals[@]}]}
    run_point "$i" "$launch" "$np" "$victim" "$phase" "$delay" "$sig"
    say "${summary[-1]}"
  done
  # CFG-parallel denoising: 2 guidance groups of 1 or 2 stages; any rank of either group goes silent.
  [ $((${#devices[@]} % 2)) -eq 0 ] || cfg_points=0  # an odd number of devices does not split in two
  if [ "$cfg_points" -gt 0 ]; then
    "$PIPESWAP" denoise --steps 1 --log-level warn --output "$work/warm.safetensors" >/dev/null  # the demo Wan, once
    rm -f "$work/warm.safetensors"
  fi
  local phases_cfg=(start-up forward)
  for ((i = points; i < points + cfg_points; i++)); do
    launch=${launches[RANDOM % 3]}
    np=$((2 + 2 * (RANDOM % 2)))
    [ ${#devices[@]} -eq 0 ] || np=${#devices[@]}
    victim=$((RANDOM % np))
    phase=${phases_cfg[RANDOM % 2]}
    case $phase in
      start-up) delay=$(draw 0 0.1) ;;
      *) delay=$(draw 0 1.5) ;;
    esac
    sig=${signals[RANDOM % ${#signals[@]}]}
    run_point "$i" "$launch" "$np" "$victim" "$phase" "$delay" "$sig" cfg
    say "${summary[-1]}"
  done
  say "all $((points + cfg_points)) points passed in $((SECONDS - t_start)) s (seed $seed)"
}

case ${1:-} in
  test) run_test ;;
  gpu-test)  # ctest gpu_kill-ranks (label gpu): the same points on two GPUs; skipped (77) without them
    ngpu=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)
    [ "$ngpu" -ge 2 ] || { echo "skipped: needs 2 GPUs, this machine has $ngpu"; exit 77; }
    devices=(cuda:0 cuda:1)
    points=${KILL_POINTS:-8}
    # CUDA contexts and NCCL set-up make start-up slower than on CPU ranks.
    comm_timeout=${KILL_COMM_TIMEOUT:-10}
    deadline_s=$((comm_timeout + 7))
    run_test ;;
  *)
    echo "usage: $0 test|gpu-test" >&2
    exit 2
    ;;
esac
