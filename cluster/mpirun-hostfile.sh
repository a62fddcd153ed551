#!/usr/bin/env bash
# pipeswap on the hosts of an Open MPI hostfile, started over ssh (no batch system).
#
#   HOSTFILE=cluster/hostfile.example IFACE=ib0 \
#   PIPESWAP_ARGS="--model /models/Llama-3.1-70B --input prompts.json --output logits.safetensors" \
#     cluster/mpirun-hostfile.sh
#
# Environment (all optional):
#   HOSTFILE       hosts and slots (default: cluster/hostfile.example)
#   NP             ranks to start (default: the sum of the hostfile's slots)
#   PIPESWAP       the executable, at the same path on every host (default: build/pipeswap)
#   PIPESWAP_ARGS  `pipeswap run` flags: model, input, output, micro-batches (split on spaces)
#   DEVICE_CHAIN   one entry per rank (default: cuda:0..cuda:slots-1 on each host, in hostfile order)
#   IFACE          network for Open MPI's own traffic, an interface (ib0) or a subnet (10.0.0.0/16);
#                  without it Open MPI tries every interface, docker and virtual bridges included
#   MPIRUN_ARGS    more mpirun options (split on spaces), e.g. --mca plm_rsh_agent for a launcher other than ssh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOSTFILE=${HOSTFILE:-$here/hostfile.example}
PIPESWAP=${PIPESWAP:-build/pipeswap}
read -r -a pipeswap_args <<<"${PIPESWAP_ARGS:-}"
read -r -a mpirun_args <<<"${MPIRUN_ARGS:-}"

# Slots per host in hostfile order, comments and blank lines skipped ("host slots=N"; no slots = 1).
mapfile -t slots < <(awk '!/^[[:space:]]*(#|$)/ { n = 1; for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) n = substr($i, 7); print n }' "$HOSTFILE")
[ ${#slots[@]} -gt 0 ] || { echo "mpirun-hostfile: no hosts in $HOSTFILE" >&2; exit 2; }
if [ -z "${NP:-}" ]; then
  NP=0
  for s in "${slots[@]}"; do NP=$((NP + s)); done
fi
if [ -z "${DEVICE_CHAIN:-}" ]; then
  DEVICE_CHAIN=""
  for s in "${slots[@]}"; do
    for ((i = 0; i < s; i++)); do DEVICE_CHAIN+="${DEVICE_CHAIN:+,}cuda:$i"; done
  done
fi

# Open MPI keeps its control (oob) and data (btl tcp) traffic on IFACE when it is given.
if [ -n "${IFACE:-}" ]; then
  mpirun_args+=(--mca oob_tcp_if_include "$IFACE" --mca btl_tcp_if_include "$IFACE")
fi
# NVLink SHARP (multicast) off: pipeswap only sends and receives, which NVLS does not speed up, and
# its set-up reserves memory and fails where multicast is not allowed (VMs, containers, no IMEX).
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
# ssh starts remote ranks with a bare environment: send the variables that matter, where they are set.
for v in NCCL_SOCKET_IFNAME NCCL_IB_HCA NCCL_DEBUG NCCL_NVLS_ENABLE PIPESWAP_CACHE OMP_NUM_THREADS; do
  if [ -n "${!v:-}" ]; then mpirun_args+=(-x "$v"); fi
done

echo "pipeswap: launch path: mpirun --hostfile $HOSTFILE -np $NP, device chain $DEVICE_CHAIN"
# --map-by slot: fill each host before the next (neighbouring stages share a host).
# --bind-to none: a rank runs several threads; Open MPI's default binds each rank to one core.
exec mpirun --hostfile "$HOSTFILE" -np "$NP" --map-by slot --bind-to none "${mpirun_args[@]}" \
  "$PIPESWAP" run --device-chain "$DEVICE_CHAIN" "${pipeswap_args[@]}"
