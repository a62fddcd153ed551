#!/usr/bin/env bash
# CPU check of the benchmark harness (ctest: bench_peers): a tiny Wan stack and a tiny Llama through
# every peer mode with --check (each mode's output equals the resident one), the pipeswap driver's
# input files, the 2-rank rows on 2 CPU processes with gloo (the GPipe peer with --check: its outputs
# and denoised latents bit-identical to one process; the send/recv reference), pipeswap's 2-rank
# rows through the executable ($1 or $PIPESWAP_EXE; skipped without it: 1-rank and 2-rank latents
# identical, the stage-to-stage transfer read from the trace), and a render of docs/benchmarks.md
# from those results into a temporary file.
# Skipped (77) where the Python at $PIPESWAP_PYTHON (default python3) lacks torch, safetensors,
# transformers or accelerate.
set -euo pipefail
py=${PIPESWAP_PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
if ! "$py" -c 'import torch, safetensors, transformers, accelerate' 2>/dev/null; then
  echo "skipped: $py lacks torch, safetensors, transformers or accelerate (set PIPESWAP_PYTHON)"
  exit 77
fi
tmp=$(mktemp -d /tmp/pipeswap-bench-test-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$py" "$here/wan_stack.py" --out "$tmp/wan" --blocks 3 --dim 64 --ffn 128 --heads 4 --shard-gb 0.0002 --device cpu
test -f "$tmp/wan/model.safetensors.index.json"
"$py" "$here/wan_peers.py" --model "$tmp/wan" --device cpu --tokens 16,32 --grid-hw 4 --iters 1 --check \
  --out "$tmp/wan_peers.json"
"$py" "$here/llama_peers.py" make --out "$tmp/llama" --layers 2 --hidden 64 --ffn 128 --heads 4 --vocab 128 --device cpu
"$py" "$here/llama_peers.py" time --model "$tmp/llama" --device cpu --tokens 8 --iters 1 --check \
  --out "$tmp/llama_peers.json"
"$py" "$here/pipeswap_rows.py" inputs --out "$tmp/inputs" --tokens 16,32 --grid-hw 4
# Two ranks on the CPU (gloo): the GPipe peer and the send/recv reference.
torchrun=("$py" -m torch.distributed.run --standalone --nproc-per-node 2)
"${torchrun[@]}" "$here/wan_gpipe.py" --model "$tmp/wan" --device cpu --tokens 16 --grid-hw 4 \
  --settings 1:cfg,2:nocfg --steps 3 --iters 1 --check --out "$tmp/gpipe.json"
"${torchrun[@]}" "$here/nccl_p2p.py" --device cpu --dim 64 --tokens 16,32 --iters 2 --warmup 1 \
  --out "$tmp/nccl_p2p.json"
exe=${1:-${PIPESWAP_EXE:-}}
if [ -n "$exe" ] && [ -x "$exe" ]; then
  # pipeswap's single-node mode starts the 2 ranks itself (no mpirun needed here).
  "$py" "$here/pipeswap_rows.py" two-gpu --exe "$exe" --model "$tmp/wan" --inputs "$tmp/inputs" --tokens 16 \
    --steps 3 --pipe-tokens 16 --pipe-settings 2:nocfg --pipe-steps 3 --launcher "" --one-chain cpu \
    --two-chain cpu=1,cpu=1 --trace-dir "$tmp/traces" --scratch "$tmp/scratch" --out "$tmp/two_gpu.json"
  # The scale check's rows (1 rank swapped, 2 ranks swapped and resident, CFG pair): same latents.
  "$py" "$here/pipeswap_rows.py" scale --exe "$exe" --model "$tmp/wan" --inputs "$tmp/inputs" --tokens 16 --steps 2 \
    --launcher "" --one-chain cpu --two-chain cpu=1,cpu=1 --scale-settings "1:--blocks-to-swap 2;2:--blocks-to-swap 1;2:" \
    --scratch "$tmp/scratch" --out "$tmp/scale.json"
else
  echo "no pipeswap executable given: its 2-rank rows are not checked"
fi
"$py" - "$tmp" "$here" <<'PY'
import json, sys
from safetensors import safe_open
t = sys.argv[1]
# stage_transfer on a made-up 2-rank trace with the NCCL transport's kernel ranges: 1 MB moved while
# both kernels ran for 50 us is 20 GB/s (the window method's figure is kept beside it).
sys.path.insert(0, sys.argv[2])
import pipeswap_rows
def ev(pid, cat, name, b, d, **args):
    return {"ph": "X", "pid": pid, "tid": 1, "cat": cat, "name": name, "ts": b, "dur": d, "args": args}
unit = dict(step=1, micro_batch=0)
fake = {"otherData": {"ranks": [{"rank": 0, "device": "cuda:0", "device_timing": True},
                                {"rank": 1, "device": "cuda:1", "device_timing": True}]},
        "traceEvents": [ev(0, "compute", "block", 0, 100, **unit), ev(0, "send", "nccl send mb0 s1", 100, 50, peer=1, bytes=10**6, **unit),
                        ev(1, "recv", "recv mb0 s1", 80, 5, peer=0, bytes=10**6, **unit),
                        ev(1, "recv", "nccl recv mb0 s1", 90, 70, peer=0, bytes=10**6, **unit),
                        ev(1, "compute", "block", 160, 40, **unit)]}
json.dump(fake, open(f"{t}/fake_trace.json", "w"))
st = pipeswap_rows.stage_transfer(f"{t}/fake_trace.json")
assert st["method"] == "nccl kernels" and st["gbs"] == 20.0 and st["messages"] == 1, st
assert st["window_gbs"] == round(10**6 / 60e-6 / 1e9, 3), st  # ready at 100, first compute at 160
rows = json.load(open(f"{t}/wan_peers.json"))
assert {(r["mode"], r["tokens"]) for r in rows} == {(m, n) for m in ("resident", "naive", "accelerate", "prefetch") for n in (16, 32)}, rows
assert all(r["over_bound"] is not None for r in rows)
with safe_open(f"{t}/inputs/latents_32.safetensors", "pt") as f:
    assert list(f.get_tensor("latents").shape) == [1, 16, 2, 8, 8]
names = set(json.load(open(f"{t}/wan/model.safetensors.index.json"))["weight_map"])
for k in ("blocks.2.self_attn.norm_q.weight", "blocks.0.cross_attn.o.bias", "blocks.1.ffn.2.weight",
          "blocks.0.modulation", "blocks.0.norm3.bias", "head.modulation", "time_projection.1.weight"):
    assert k in names, k
gp = json.load(open(f"{t}/gpipe.json"))
assert {(r["mode"], r["samples"], r["cfg"]) for r in gp} == {
    (m, b, c) for m in ("gpipe one step", "gpipe denoise") for b, c in ((1, True), (2, False))}, gp
assert all(r["check"]["identical"] and r["stage_blocks"] == [2, 1] for r in gp), gp
p2p = json.load(open(f"{t}/nccl_p2p.json"))
assert {(r["what"], r["tokens"]) for r in p2p} == {(w, n) for w in ("activation", "x") for n in (16, 32)}, p2p
assert all(r["one_at_a_time_gbs"] > 0 and r["streamed_gbs"] > 0 for r in p2p), p2p
act = next(r for r in p2p if r["what"] == "activation" and r["tokens"] == 16)
assert act["bytes"] == 16 * 64 * 2 + 64 * 4 + 6 * 64 * 4 + 512 * 64 * 2, act
import os
if os.path.exists(f"{t}/two_gpu.json"):
    import torch
    from safetensors.torch import load_file
    two = json.load(open(f"{t}/two_gpu.json"))
    assert not [r for r in two if r.get("error")], [r["error"] for r in two if r.get("error")]
    by = {(r["mode"], r["gpus"]): r for r in two}
    for mode in ("pipeswap denoise", "pipeswap 1 GPU, all swapped"):
        one = by[(mode, 1)]
        other = by[("pipeswap 2 GPUs, each half swapped" if "swapped" in mode else mode, 2)]
        a, b = (load_file(r["output"])["latents"] for r in (one, other))
        assert a.shape[0] == 2 and torch.equal(a, b), mode  # 2 samples; the split changes no bit
    scale = json.load(open(f"{t}/scale.json"))
    assert [r["gpus"] for r in scale] == [1, 2, 2] and not [r for r in scale if r.get("error")], scale
    assert all(r["same_latents_as_first_row"] for r in scale[1:]) and scale[0]["swapped_blocks"] == 2, scale
    for r in two:
        if r["gpus"] == 2:
            st = r["stage_transfer"]
            assert "error" not in st and st["messages"] >= 2 and st["gbs"] > 0, st
PY
"$py" "$here/render.py" --results "$tmp" --doc "$tmp/benchmarks.md"
grep -q "accelerate\|Accelerate" "$tmp/benchmarks.md"
grep -q "^| 16 | 1 sample, CFG pair (M = 2) | " "$tmp/benchmarks.md"
[ ! -f "$tmp/scale.json" ] || grep -q "^| 2 | --blocks-to-swap 1 | .* | yes | " "$tmp/benchmarks.md"
echo "bench harness: ok"
