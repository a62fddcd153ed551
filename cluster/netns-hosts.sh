#!/usr/bin/env bash
# Several "hosts" on one machine: network namespaces joined by veth pairs to a bridge, each with its
# own address (10.77.0.0/24, which exists only inside these namespaces) and its own host name (a UTS
# namespace per process). pipeswap's CPU pipeline runs with one stage per host:
#   (a) Open MPI across the hosts, its launch agent entering a namespace where it would ssh, through
#       cluster/mpirun-hostfile.sh;
#   (b) torchrun-style: one pipeswap per host with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (TCP);
#   (c) a host's link taken down in the middle of a longer run: the other ranks must fail within the
#       comm timeout and name the lost rank.
# Both (a) and (b) must write logits bit-identical to a single-process run.
#
#   cluster/netns-hosts.sh test
#
# Environment: PIPESWAP (the executable, default build/pipeswap), NETNS_HOSTS (2 or 3, default 3).
# Exit status 77 means a prerequisite cannot be had here (not root, no permission for `ip netns`).
# Everything it creates (namespaces, veths, the bridge, processes, temporary files) is removed by a
# trap, also on failure or interruption.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=cluster/test-input.sh
. "$here/test-input.sh"
PIPESWAP=${PIPESWAP:-$root/build/pipeswap}
hosts=${NETNS_HOSTS:-3}
subnet=10.77.0
comm_timeout=5

say() { echo "netns-hosts: $*" >&2; }
skip() {
  say "SKIP: $*"
  exit 77
}
fail() {
  say "FAIL: $*"
  exit 1
}

# Unique names: two runs at once (or a stale one) never share a namespace.
prefix=ps$$
hub=${prefix}x # holds the bridge; the root namespace gets no interface at all
ns=()          # ns[i]: namespace of host i
addr=()        # addr[i]: its address
work=""
run_netns_was_mounted=yes # until run_test looks; cleanup leaves /run/netns alone before that
pids=() # every process started in the background

# Kills what this run started, deletes its namespaces (which deletes their veths and the bridge)
# and its files. Any process still inside one of our namespaces was started by this run.
cleanup() {
  local rc=$? n p
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for n in "${ns[@]}" "$hub"; do
    [ -e "/run/netns/$n" ] || continue
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for n in "${ns[@]}" "$hub"; do
    [ -e "/run/netns/$n" ] && { ip netns del "$n" || rc=1; }
  done
  # `ip netns add` makes /run/netns a (shared) mount point of its own the first time; undo that too
  # when it was not one before and no namespace, ours or anyone's, is left in it.
  if [ "$run_netns_was_mounted" = no ] && mountpoint -q /run/netns && [ -z "$(ls -A /run/netns)" ]; then
    umount /run/netns || rc=1
  fi
  [ -z "$work" ] || rm -rf "$work"
  exit "$rc"
}

require() {
  [ "$(id -u)" -eq 0 ] || skip "creating network namespaces needs root; run this as root (it is run by ctest -L cluster)"
  if ! command -v ip >/dev/null 2>&1; then
    say "ip missing: installing Debian's iproute2 (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends iproute2 >/dev/null; }; then
      skip "apt-get could not install iproute2; install it by hand: apt-get install -y iproute2"
    fi
  fi
  command -v unshare >/dev/null || skip "unshare (util-linux) is missing"
  command -v mpirun >/dev/null || fail "mpirun is missing (scripts/deps installs openmpi-bin)"
  [ -x "$PIPESWAP" ] || fail "no executable at $PIPESWAP (build it, or set PIPESWAP)"
  case $hosts in 2 | 3) ;; *) fail "NETNS_HOSTS must be 2 or 3" ;; esac
}

# Creates the hub with its bridge and one namespace per host, each with eth0 on the bridge.
make_hosts() {
  local i v letters=(a b c)
  # The first namespace tells whether we may create them at all (containers often forbid it).
  if ! ip netns add "$hub" 2>"$work/netns.err"; then
    skip "cannot create a network namespace: $(cat "$work/netns.err")"
  fi
  ip -n "$hub" link add br0 type bridge
  ip -n "$hub" link set br0 up
  for ((i = 0; i < hosts; i++)); do
    ns[i]=$prefix${letters[i]} # ps<pid>a, ps<pid>b, ...
    addr[i]=$subnet.$((i + 1))
    ip netns add "${ns[i]}"
    v=veth$i
    # Both ends are created inside their namespaces: nothing appears in the root namespace.
    ip link add eth0 netns "${ns[i]}" type veth peer name "$v" netns "$hub"
    ip -n "$hub" link set "$v" master br0 up
    # No IPv6: its duplicate address detection delays the first connections and nothing uses it.
    ip netns exec "${ns[i]}" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "${ns[i]}" link set lo up
    ip -n "${ns[i]}" addr add "${addr[i]}/24" dev eth0
    ip -n "${ns[i]}" link set eth0 up
  done
  say "hosts: $(for ((i = 0; i < hosts; i++)); do printf 'host%d=%s(%s) ' "$i" "${addr[i]}" "${ns[i]}"; done)"
}

# Runs a command on host $1: in its network namespace, under its own host name.
on_host() {
  local i=$1
  shift
  # shellcheck disable=SC2016  # $0 and $@ belong to the inner shell
  ip netns exec "${ns[i]}" unshare --uts /bin/sh -c 'hostname "$0" && exec "$@"' "host$i" "$@"
}

# Writes the launch agent Open MPI uses instead of ssh (a two-line wrapper around `agent` below,
# as plm_rsh_agent takes a program, not a command line) and the hostfile of the namespace hosts.
write_agent() {
  local i
  for ((i = 0; i < hosts; i++)); do echo "${addr[i]} host$i ${ns[i]}"; done >"$work/hosts.map"
  cat >"$work/agent" <<EOF
#!/usr/bin/env bash
exec bash "$here/netns-hosts.sh" agent "$work/hosts.map" "\$@"
EOF
  chmod +x "$work/agent"
  for ((i = 0; i < hosts; i++)); do echo "${addr[i]} slots=1"; done >"$work/hostfile"
}

# `agent MAP HOST COMMAND...`: what Open MPI calls instead of `ssh HOST COMMAND...`. Like ssh it
# hands the command words, joined, to a shell, here inside the host's namespace under its name.
agent() {
  local map=$1 host=$2 a name n
  shift 2
  while read -r a name n; do
    if [ "$host" = "$a" ] || [ "$host" = "$name" ]; then
      # shellcheck disable=SC2016  # $0 and $1 belong to the inner shell
      exec ip netns exec "$n" unshare --uts /bin/sh -c 'hostname "$0" && exec /bin/sh -c "$1"' "$name" "$*"
    fi
  done <"$map"
  echo "netns agent: unknown host $host (known: $(cut -d' ' -f1,2 "$map" | tr '\n' ' '))" >&2
  exit 255
}

chain() {
  local i c=""
  for ((i = 0; i < hosts; i++)); do c+="${c:+,}cpu=1"; done
  echo "$c"
}

same_logits() {
  cmp -s "$work/ref.safetensors" "$1" || fail "$2: logits differ from the single-process run"
  say "$2: OK, logits bit-identical to the single-process run"
}

# (a) Open MPI over the namespace hosts, through the repository's hostfile launcher. mpirun runs on
# host0 (whose address is in the hostfile, so its rank starts locally); the others start through
# the agent. btl self,tcp: ranks must talk over the veths, not through shared memory.
test_mpirun() {
  local t0=$SECONDS rc=0
  on_host 0 env HOSTFILE="$work/hostfile" IFACE="$subnet.0/24" DEVICE_CHAIN="$(chain)" \
    MPIRUN_ARGS="--mca plm_rsh_agent $work/agent --mca plm_rsh_no_tree_spawn 1 --mca btl self,tcp" \
    PIPESWAP_ARGS="--output $work/mpirun.safetensors --log-level warn --micro-batches 2" \
    "$here/mpirun-hostfile.sh" >"$work/mpirun.out" 2>&1 || rc=$?
  sed 's/^/    | /' "$work/mpirun.out" >&2
  [ $rc -eq 0 ] || fail "mpirun across the namespaces exited $rc"
  grep -q "on $hosts rank(s)" "$work/mpirun.out" || fail "mpirun: no summary for $hosts ranks"
  same_logits "$work/mpirun.safetensors" "mpirun across $hosts hosts ($((SECONDS - t0)) s)"
}

# Starts one pipeswap per host with torchrun's variables; $1 = port, $2 = output name, the rest:
# more pipeswap flags. Sets run_pids[i].
start_tcp_ranks() {
  local port=$1 name=$2 i
  shift 2
  run_pids=()
  for ((i = hosts - 1; i >= 0; i--)); do
    on_host "$i" env RANK="$i" WORLD_SIZE="$hosts" LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 \
      MASTER_ADDR="${addr[0]}" MASTER_PORT="$port" \
      "$PIPESWAP" run --device-chain "$(chain)" --output "$work/$name.safetensors" "$@" \
      >"$work/$name.rank$i.out" 2>&1 &
    run_pids[i]=$!
    pids+=("$!")
  done
}

# (b) torchrun-style: every rank started by hand on its host, meeting at host0 over TCP.
test_tcp() {
  local t0=$SECONDS i rc
  start_tcp_ranks 29400 tcp --log-level warn --micro-batches 2
  for ((i = 0; i < hosts; i++)); do
    rc=0
    wait "${run_pids[i]}" || rc=$?
    sed "s/^/    | rank $i: /" "$work/tcp.rank$i.out" >&2
    [ $rc -eq 0 ] || fail "torchrun-style rank $i on host$i exited $rc"
  done
  same_logits "$work/tcp.safetensors" "torchrun-style TCP across $hosts hosts ($((SECONDS - t0)) s)"
}

# (c) A host's link goes down while a long run is under way: the others hear nothing and must give
# up within the comm timeout, exit non-zero and say which rank was lost. With 3 hosts the middle one
# is cut off: rank 2, waiting for its activations, times out, and its abort message reaches rank 0.
# With 2 hosts rank 0 is cut off: rank 0 itself, the first stage, only sends while it computes and
# would notice a lost rank 1 only once it next waits for a message (its compute time + the timeout).
test_link_down() {
  local lost=$((hosts == 2 ? 0 : 1)) i rc t_down deadline waited
  write_input "$work/long-input.json" "${LINK_DOWN_SEQUENCES:-32}" "${LINK_DOWN_TOKENS:-128}"
  start_tcp_ranks 29401 long --input "$work/long-input.json" --micro-batches 8 \
    --comm-timeout "$comm_timeout" --log-level info
  # Wait until every rank has loaded its weights and the forward pass has begun.
  deadline=$((SECONDS + 60))
  until [ "$(cat "$work"/long.rank*.out 2>/dev/null | grep -c 'loaded .* of weights')" -ge "$hosts" ]; do
    for ((i = 0; i < hosts; i++)); do
      kill -0 "${run_pids[i]}" 2>/dev/null || { cat "$work"/long.rank*.out >&2; fail "rank $i ended before the link went down"; }
    done
    [ $SECONDS -lt $deadline ] || fail "the long run did not start within 60 s"
    sleep 0.2
  done
  sleep 1
  for ((i = 0; i < hosts; i++)); do
    kill -0 "${run_pids[i]}" 2>/dev/null || fail "rank $i finished before the link went down: make the run longer (LINK_DOWN_SEQUENCES)"
  done
  ip -n "${ns[lost]}" link set eth0 down
  t_down=$(date +%s.%N)
  say "link of host$lost (rank $lost) down; waiting for the others (comm timeout $comm_timeout s)"
  for ((i = 0; i < hosts; i++)); do
    [ $i -eq $lost ] && continue
    rc=0
    # Bounded: a rank that hangs is killed by the trap; fail before waiting forever.
    deadline=$((SECONDS + comm_timeout + 20))
    while kill -0 "${run_pids[i]}" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -0 "${run_pids[i]}" 2>/dev/null && fail "rank $i still runs $((comm_timeout + 20)) s after the link went down"
    wait "${run_pids[i]}" || rc=$?
    waited=$(awk -v a="$t_down" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    sed "s/^/    | rank $i: /" "$work/long.rank$i.out" | tail -n 4 >&2
    [ $rc -ne 0 ] || fail "rank $i exited 0 although rank $lost was cut off"
    grep -q "rank $lost" "$work/long.rank$i.out" || fail "rank $i's error does not name rank $lost"
    # The comm timeout plus the slack of a loaded 2-core machine.
    awk -v w="$waited" -v l="$((comm_timeout + 5))" 'BEGIN { exit !(w <= l) }' ||
      fail "rank $i took $waited s after the link went down (comm timeout $comm_timeout s)"
    say "rank $i: exit $rc after ${waited} s, naming rank $lost"
  done
  [ ! -e "$work/long.safetensors" ] || fail "a partial output file was left behind"
  # The cut-off rank may wait for its own timeout; it is not judged, only stopped.
  kill -TERM "${run_pids[lost]}" 2>/dev/null || true
  say "link down: OK"
}

run_test() {
  local t_start=$SECONDS
  require
  work=$(mktemp -d /tmp/pipeswap-netns.XXXXXX)
  run_netns_was_mounted=no
  if mountpoint -q /run/netns 2>/dev/null; then run_netns_was_mounted=yes; fi
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  export PIPESWAP_CACHE=$work/cache OMPI_MCA_btl_vader_single_copy_mechanism=none
  # Open MPI refuses root unless told (this test must run as root for the namespaces).
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

  # The reference: one process, no launcher in its environment (also writes the demo model).
  env -u OMPI_COMM_WORLD_SIZE -u PMIX_RANK -u RANK -u WORLD_SIZE -u SLURM_PROCID -u SLURM_STEP_ID \
    "$PIPESWAP" run --output "$work/ref.safetensors" --log-level warn --micro-batches 2 >"$work/ref.out" 2>&1 ||
    { cat "$work/ref.out" >&2; fail "the single-process reference run failed"; }

  make_hosts
  write_agent
  test_mpirun
  test_tcp
  test_link_down
  say "all checks passed in $((SECONDS - t_start)) s"
}

case ${1:-} in
  test) run_test ;;
  agent)
    shift
    agent "$@"
    ;;
  *)
    echo "usage: $0 test" >&2
    exit 2
    ;;
esac
