#!/usr/bin/env bash
# CPU check of the benchmark harness (ctest: bench_peers): a tiny Wan stack and a tiny Llama through
# every peer mode with --check (each mode's output equals the resident one), the pipeswap driver's
# input files, and a render of docs/benchmarks.md from those results into a temporary file.
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
"$py" - "$tmp" <<'PY'
import json, sys
from safetensors import safe_open
t = sys.argv[1]
rows = json.load(open(f"{t}/wan_peers.json"))
assert {(r["mode"], r["tokens"]) for r in rows} == {(m, n) for m in ("resident", "naive", "accelerate", "prefetch") for n in (16, 32)}, rows
assert all(r["over_bound"] is not None for r in rows)
with safe_open(f"{t}/inputs/latents_32.safetensors", "pt") as f:
    assert list(f.get_tensor("latents").shape) == [1, 16, 2, 8, 8]
names = set(json.load(open(f"{t}/wan/model.safetensors.index.json"))["weight_map"])
for k in ("blocks.2.self_attn.norm_q.weight", "blocks.0.cross_attn.o.bias", "blocks.1.ffn.2.weight",
          "blocks.0.modulation", "blocks.0.norm3.bias", "head.modulation", "time_projection.1.weight"):
    assert k in names, k
PY
"$py" "$here/render.py" --results "$tmp" --doc "$tmp/benchmarks.md"
grep -q "accelerate\|Accelerate" "$tmp/benchmarks.md"
echo "bench harness: ok"
