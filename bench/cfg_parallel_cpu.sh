#!/usr/bin/env bash
# CFG-parallel on CPU ranks (issue 21): one sample with guidance, one rank against two ranks as one
# pipeline (--cfg-parallel 1) and as two guidance groups (--cfg-parallel 2), each rank one thread, and
# the plan's predictions for the same chain. CPU ranks on a shared 2-core VM: not the GPU machine, and
# not a speed claim for GPUs (docs/benchmarks.md says so).
#
#   bench/cfg_parallel_cpu.sh [build/pipeswap] [runs]
#
# Appends one JSON row per run to bench/cpu-results/cfg_parallel_cpu.jsonl (RESULTS= another file), and
# the plan's predicted seconds per step of each arrangement it compared; bench/render.py renders them
# into docs/benchmarks.md.
# The model: a random Wan2.1-named DiT of 8 blocks, dim 256, ffn 1024 (written with the Python of
# scripts/pyenv, PIPESWAP_PYTHON), latents [1, 16, 5, 16, 16] (320 tokens), 10 steps, guidance 5.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exe=${1:-$root/build/pipeswap}
runs=${2:-3}
results=${RESULTS:-$root/bench/cpu-results/cfg_parallel_cpu.jsonl}
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
py=${PIPESWAP_PYTHON:-$HOME/.cache/pipeswap/pyenv/bin/python}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
work=$(mktemp -d /tmp/pipeswap-cfgbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$py" - "$work" <<'PY'
import json, sys, torch
from safetensors.torch import save_file
d = sys.argv[1]
dim, ffn, layers, text_dim, text_len, freq = 256, 1024, 8, 64, 16, 64
json.dump({"_class_name": "WanModel", "model_type": "t2v", "dim": dim, "ffn_dim": ffn, "num_heads": 4,
           "num_layers": layers, "in_dim": 16, "out_dim": 16, "text_dim": text_dim, "freq_dim": freq,
           "text_len": text_len, "patch_size": [1, 2, 2]}, open(d + "/config.json", "w"))
g = torch.Generator().manual_seed(0)
t = {}
def r(name, *shape, s=None):
    t[name] = torch.randn(*shape, generator=g) * (s if s is not None else shape[-1] ** -0.5)
r("patch_embedding.weight", dim, 16, 1, 2, 2); r("patch_embedding.bias", dim, s=0.02)
r("text_embedding.0.weight", dim, text_dim); r("text_embedding.0.bias", dim, s=0.02)
r("text_embedding.2.weight", dim, dim); r("text_embedding.2.bias", dim, s=0.02)
r("time_embedding.0.weight", dim, freq); r("time_embedding.0.bias", dim, s=0.02)
r("time_embedding.2.weight", dim, dim); r("time_embedding.2.bias", dim, s=0.02)
r("time_projection.1.weight", 6 * dim, dim); r("time_projection.1.bias", 6 * dim, s=0.02)
for b in range(layers):
    p = f"blocks.{b}."
    for a in ("self_attn", "cross_attn"):
        for m in "qkvo":
            r(p + f"{a}.{m}.weight", dim, dim); r(p + f"{a}.{m}.bias", dim, s=0.02)
        t[p + f"{a}.norm_q.weight"] = torch.ones(dim); t[p + f"{a}.norm_k.weight"] = torch.ones(dim)
    t[p + "norm3.weight"] = torch.ones(dim); t[p + "norm3.bias"] = torch.zeros(dim)
    r(p + "ffn.0.weight", ffn, dim); r(p + "ffn.0.bias", ffn, s=0.02)
    r(p + "ffn.2.weight", dim, ffn); r(p + "ffn.2.bias", dim, s=0.02)
    r(p + "modulation", 1, 6, dim, s=dim ** -0.5)
r("head.head.weight", 16 * 4, dim); r("head.head.bias", 16 * 4, s=0.02)
r("head.modulation", 1, 2, dim, s=dim ** -0.5)
save_file({k: v.contiguous() for k, v in t.items()}, d + "/diffusion_pytorch_model.safetensors")
save_file({"latents": torch.randn(1, 16, 5, 16, 16, generator=g),
           "context": torch.randn(1, text_len, text_dim, generator=g),
           "context_null": torch.randn(1, text_len, text_dim, generator=g)}, d + "/inputs.safetensors")
PY
in="$work/inputs.safetensors"
args=(denoise --model "$work" --latents "$in" --context "$in" --context-null "$in" --steps 10 --guidance 5
      --shift 5 --threads 1)
row() {  # one JSON line: $1 setting, $2 key, $3 value
  printf '{"date": "%s", "commit": "%s", "setting": "%s", "%s": %s, "load_average": %s}\n' "$(date -u +%FT%TZ)" \
    "$commit" "$1" "$2" "$3" "$(cut -d' ' -f1 /proc/loadavg)" >>"$results"
}
run() {  # $1 label, $2 launch prefix, $3 extra flags; a row with the seconds per step of each run
  local label=$1 i sps
  for ((i = 0; i < runs; i++)); do
    rm -f "$work/$label.safetensors"
    # shellcheck disable=SC2086
    $2 "$exe" "${args[@]}" $3 --output "$work/$label.safetensors" --log-level info >"$work/$label.log" 2>&1 ||
      { tail -5 "$work/$label.log" >&2; exit 1; }
    sps=$(grep -ao '([0-9.]* s/step)' "$work/$label.log" | tr -d '()' | cut -d' ' -f1)
    echo "$label $sps s/step"
    row "$label" seconds_per_step "$sps"
  done
}
run one "" ""
run pipeline "mpirun -np 2" "--device-chain cpu,cpu --cfg-parallel 1"
run cfg-parallel "mpirun -np 2" "--device-chain cpu,cpu --cfg-parallel 2"
# The plan's predictions for the 2-rank chain, from the arrangements the auto run logs.
run auto "mpirun -np 2" "--device-chain cpu,cpu"
python3 - "$work/auto.log" "$results" "$commit" <<'PY'
import json, re, sys, time
log, out, commit = sys.argv[1:4]
load = float(open("/proc/loadavg").read().split()[0])
with open(out, "a") as f:
    for line in open(log, errors="replace"):
        m = re.search(r"(\*?)\s*(\d) x (\d) \(([^)]*)\): ([0-9.e+-]+) s/step", line)
        if m:
            f.write(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
                                "setting": f"plan {m[2]} x {m[3]} ({m[4]})", "chosen": m[1] == "*",
                                "predicted_seconds_per_step": float(m[5]), "load_average": load}) + "\n")
PY
# The plan's picks for a Wan2.1-14B-sized DiT on GPUs (pipeline_test's table of cases; arithmetic only).
if [ -x "$root/build/tests/pipeline_test" ]; then
  "$root/build/tests/pipeline_test" --gtest_filter='CfgParallel.ThePlanPicks*' |
    python3 -c '
import json, re, sys, time
out, commit = sys.argv[1:3]
case = None
with open(out, "a") as f:
    for line in sys.stdin:
        if line.startswith("[ cfg-par  ] "):
            case = line[len("[ cfg-par  ] "):].strip()
            continue
        m = re.search(r"(\*?)\s*(\d) x (\d) \(([^)]*)\): ([0-9.e+-]+) s/step; device per rank ([^;]*);", line)
        if m and case:
            f.write(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
                                "case": "GPU: " + case, "setting": f"plan {m[2]} x {m[3]} ({m[4]})",
                                "chosen": m[1] == "*", "predicted_seconds_per_step": float(m[5]),
                                "device_per_rank": m[6]}) + "\n")
' "$results" "$commit"
fi
cmp "$work/one.safetensors" "$work/cfg-parallel.safetensors" && echo "latents: CFG-parallel = one rank, byte for byte"
cmp "$work/one.safetensors" "$work/pipeline.safetensors" && echo "latents: pipeline = one rank, byte for byte"
