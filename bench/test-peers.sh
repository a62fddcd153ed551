#!/usr/bin/env bash
# CPU check of the benchmark harness (ctest: bench_peers), with the frameworks themselves (scripts/pyenv:
# torch, transformers, accelerate, diffusers 0.42.1) and pipeswap ($1 or $PIPESWAP_EXE):
#  * a tiny Wan stack in diffusers' layout (config.json equal to what diffusers saves, loaded with no
#    missing or unexpected key) through every diffusers peer mode (resident, compile_repeated_blocks,
#    group offload block and leaf level, Accelerate cpu_offload, side-stream prefetch, naive), each
#    checked against the resident output, and the reference loop for the pipeswap rows;
#  * a tiny Llama through every transformers peer mode (resident, accelerate, prefetch, naive);
#  * pipeswap's Wan and Llama rows on the same files: every --dtype bf16 row passes its dtype and
#    same-output checks against the frameworks; the row with default flags records the dtype pipeswap
#    chose and fails exactly when it is not the peer's;
#  * the negative check: with one weight scaled for the peers only (--perturb), every pipeswap row FAILS
#    (status and exit status 1), for Wan and Llama;
#  * the 2-rank rows on 2 CPU processes with gloo (the GPipe peer on diffusers' blocks with --check: bit-
#    identical to one process; the send/recv reference; pipeswap's 1- and 2-rank latents identical, the
#    stage-to-stage transfer read from the trace), and a render of docs/benchmarks.md from the results.
# Timings here use --iters 1 (the docs need >= 5: render.py marks fewer). Skipped (77) where the Python at
# $PIPESWAP_PYTHON (default python3) lacks torch, safetensors, transformers, accelerate or diffusers.
set -euo pipefail
. "$(dirname "$0")/test-lib.sh"
bench_test_setup bench-test "torch safetensors transformers accelerate diffusers" "" "${1:-}"
"$py" "$here/wan_stack.py" --out "$tmp/wan" --blocks 3 --dim 64 --ffn 128 --heads 4 --shard-gb 0.0002 --device cpu
test -f "$tmp/wan/diffusion_pytorch_model.safetensors.index.json"
"$py" "$here/pipeswap_rows.py" inputs --out "$tmp/inputs" --tokens 16,32 --grid-hw 4
echo "wan peers (diffusers, every mode)"
quiet "$py" "$here/wan_peers.py" --model "$tmp/wan" --inputs "$tmp/inputs" --device cpu --tokens 16,32 --iters 1 \
  --modes resident,compile,group_block,group_leaf,accelerate,prefetch,naive --compile-backend aot_eager \
  --ref-dir "$tmp/ref" --out "$tmp/wan_peers.json"
"$py" "$here/llama_peers.py" make --out "$tmp/llama" --layers 2 --hidden 64 --ffn 128 --heads 4 --vocab 128 \
  --device cpu > /dev/null 2>&1
echo "llama peers (transformers, every mode)"
quiet "$py" "$here/llama_peers.py" time --model "$tmp/llama" --device cpu --tokens 8,32 --iters 1 \
  --modes resident,accelerate,prefetch,naive --ref-dir "$tmp/ref" --out "$tmp/llama_peers.json"
# The negative check's references: one weight scaled for the peers only.
quiet "$py" "$here/wan_peers.py" --model "$tmp/wan" --inputs "$tmp/inputs" --device cpu --tokens 16 --iters 1 \
  --modes resident --perturb blocks.1.ffn.net.2.weight:2 --ref-dir "$tmp/ref_bad" --out "$tmp/wan_peers_bad.json"
quiet "$py" "$here/llama_peers.py" time --model "$tmp/llama" --device cpu --tokens 8 --iters 1 --modes resident \
  --perturb model.layers.1.mlp.down_proj.weight:2 --ref-dir "$tmp/ref_bad" --out "$tmp/llama_peers_bad.json"
# Two ranks on the CPU (gloo): the GPipe peer and the send/recv reference.
torchrun=("$py" -m torch.distributed.run --standalone --nproc-per-node 2)
echo "gpipe and send/recv on 2 CPU ranks"
quiet "${torchrun[@]}" "$here/wan_gpipe.py" --model "$tmp/wan" --device cpu --tokens 16 --grid-hw 4 \
  --settings 1:cfg,2:nocfg --steps 3 --iters 1 --check --out "$tmp/gpipe.json"
quiet "${torchrun[@]}" "$here/nccl_p2p.py" --device cpu --dim 64 --tokens 16,32 --iters 2 --warmup 1 \
  --out "$tmp/nccl_p2p.json"
if [ -n "$exe" ] && [ -x "$exe" ]; then
  rows=(--exe "$exe" --one-chain cpu --scratch "$tmp/scratch" --trace-dir "$tmp/traces")
  echo "pipeswap rows against the frameworks"
  # The --dtype bf16 rows must pass; the default-flags row fails exactly when pipeswap chose another
  # dtype than the peer's (checked below), so the exit status is not asserted here.
  "$py" "$here/pipeswap_rows.py" wan "${rows[@]}" --model "$tmp/wan" --inputs "$tmp/inputs" --tokens 16,32 \
    --peers "$tmp/wan_peers.json" --ref-dir "$tmp/ref" --out "$tmp/wan_pipeswap.json" > "$tmp/wan_rows.log" 2>&1 || true
  "$py" "$here/pipeswap_rows.py" llama "${rows[@]}" --model "$tmp/llama" --tokens 8,32 --repeat 3 \
    --peers "$tmp/llama_peers.json" --ref-dir "$tmp/ref" --out "$tmp/llama_pipeswap.json" > "$tmp/llama_rows.log" 2>&1 || true
  echo "the negative check: a weight scaled for the peers only"
  expect_fail "$tmp/wan_bad.log" "$py" "$here/pipeswap_rows.py" wan "${rows[@]}" --model "$tmp/wan" \
    --inputs "$tmp/inputs" --tokens 16 --settings "resident:--dtype bf16;swap all:--dtype bf16 --offload-ratio 1" \
    --peers "$tmp/wan_peers_bad.json" --ref-dir "$tmp/ref_bad" --out "$tmp/wan_pipeswap_bad.json"
  expect_fail "$tmp/llama_bad.log" "$py" "$here/pipeswap_rows.py" llama "${rows[@]}" --model "$tmp/llama" \
    --tokens 8 --repeat 2 --settings "resident:--dtype bf16" --peers "$tmp/llama_peers_bad.json" \
    --ref-dir "$tmp/ref_bad" --out "$tmp/llama_pipeswap_bad.json"
  # pipeswap's single-node mode starts the 2 ranks itself (no mpirun needed here).
  echo "pipeswap 2-rank rows"
  quiet "$py" "$here/pipeswap_rows.py" two-gpu --exe "$exe" --model "$tmp/wan" --inputs "$tmp/inputs" --tokens 16 \
    --steps 3 --pipe-tokens 16 --pipe-settings 2:nocfg --pipe-steps 3 --launcher "" --one-chain cpu \
    --two-chain cpu=1,cpu=1 --trace-dir "$tmp/traces" --scratch "$tmp/scratch" --out "$tmp/two_gpu.json"
  # The scale check's rows (1 rank swapped, 2 ranks swapped and resident, CFG pair): same latents.
  quiet "$py" "$here/pipeswap_rows.py" scale --exe "$exe" --model "$tmp/wan" --inputs "$tmp/inputs" --tokens 16 --steps 2 \
    --launcher "" --one-chain cpu --two-chain cpu=1,cpu=1 --scale-settings "1:--blocks-to-swap 2;2:--blocks-to-swap 1;2:" \
    --scratch "$tmp/scratch" --out "$tmp/scale.json"
  # The shared-fills rows (issue 16): diffusers with the CFG pair batched, pipeswap in each swap order.
  quiet "$py" "$here/wan_cfg_peers.py" --model "$tmp/wan" --inputs "$tmp/inputs" --device cpu --tokens 16 \
    --samples 1,2 --steps 2 --iters 1 --ref-dir "$tmp/ref" --out "$tmp/wan_cfg_peers.json"
  quiet "$py" "$here/pipeswap_rows.py" cfg "${rows[@]}" --model "$tmp/wan" --inputs "$tmp/inputs" --tokens 16 \
    --steps 2 --swap 2 --cfg-flags "--dtype bf16" --peers "$tmp/wan_cfg_peers.json" --ref-dir "$tmp/ref" \
    --out "$tmp/cfg.json"
else
  echo "no pipeswap executable given: its rows are not checked"
fi
"$py" - "$tmp" "$here" <<'PY'
import json, os, sys
import torch
from safetensors import safe_open
t = sys.argv[1]
sys.path.insert(0, sys.argv[2])
import pipeswap_rows
from diffusers import WanTransformer3DModel

def rows(name):
    return json.load(open(f"{t}/{name}"))

# wan_stack.py writes config.json as diffusers itself saves it for the same model.
cfg = json.load(open(f"{t}/wan/config.json"))
assert "torch_dtype" not in cfg and cfg["_class_name"] == "WanTransformer3DModel", cfg
WanTransformer3DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")}).save_config(f"{t}/cfg")
assert json.load(open(f"{t}/cfg/config.json")) == cfg, "wan_stack.py's config.json is not diffusers' own"
import glob
for shard in glob.glob(f"{t}/wan/diffusion_pytorch_model-*.safetensors"):
    with safe_open(shard, "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys()), shard

# Every peer mode ran at every length, passed its checks, and kept its times.
wp = [r for r in rows("wan_peers.json") if r.get("tokens")]
modes = ("resident", "compile", "group_block", "group_leaf", "accelerate", "prefetch", "naive")
assert {(r["mode"], r["tokens"]) for r in wp} == {(m, n) for m in modes for n in (16, 32)}, wp
assert all(r["status"] == "ok" and r["dtype"] == "bfloat16" and r["check"]["ok"] for r in wp), \
    [(r["mode"], r["status"]) for r in wp]
assert all(r["resident_seconds"] == next(q["seconds"] for q in wp if q["mode"] == "resident" and q["tokens"] == r["tokens"])
           for r in wp)
assert any(r["mode"] == "model_cpu_offload" and r["status"] == "n/a" for r in rows("wan_peers.json"))
ref = json.load(open(f"{t}/ref/wan_ref.json"))
assert 0 < ref["bf16_error_vs_fp32"] < 0.05 and ref["steps"] == 6, ref
lp = rows("llama_peers.json")
assert {(r["mode"], r["tokens"]) for r in lp} == {(m, n) for m in ("resident", "accelerate", "prefetch", "naive")
                                                  for n in (8, 32)}, lp
assert all(r["status"] == "ok" and r["check"]["ok"] for r in lp), [(r["mode"], r["status"]) for r in lp]

# stage_transfer on a made-up 2-rank trace with the NCCL transport's kernel ranges: 1 MB moved while
# both kernels ran for 50 us is 20 GB/s (the window method's figure is kept beside it).
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
with safe_open(f"{t}/inputs/latents_32.safetensors", "pt") as f:
    assert list(f.get_tensor("latents").shape) == [1, 16, 2, 8, 8]
gp = rows("gpipe.json")
assert {(r["mode"], r["samples"], r["cfg"]) for r in gp} == {
    (m, b, c) for m in ("gpipe one step", "gpipe denoise") for b, c in ((1, True), (2, False))}, gp
assert all(r["check"]["identical"] and r["stage_blocks"] == [2, 1] for r in gp), gp
p2p = rows("nccl_p2p.json")
assert {(r["what"], r["tokens"]) for r in p2p} == {(w, n) for w in ("activation", "x") for n in (16, 32)}, p2p
assert all(r["one_at_a_time_seconds"] > 0 and r["streamed_seconds"] > 0 for r in p2p), p2p  # GB/s round to 0 here
act = next(r for r in p2p if r["what"] == "activation" and r["tokens"] == 16)
assert act["bytes"] == 16 * 64 * 2 + 64 * 4 + 6 * 64 * 4 + 512 * 64 * 2, act

if os.path.exists(f"{t}/wan_pipeswap.json"):
    from safetensors.torch import load_file
    for name, lengths in (("wan_pipeswap.json", (16, 32)), ("llama_pipeswap.json", (8, 32))):
        ps = rows(name)
        want = {(m, n) for m in ("pipeswap resident", "pipeswap swap all", "pipeswap swap half") for n in lengths}
        assert {(r["mode"], r["tokens"]) for r in ps} == want | {("pipeswap defaults", lengths[0])}, ps
        for r in ps:
            if r["mode"] == "pipeswap defaults":
                # What a user gets: recorded, and FAILED exactly when its dtype is not the peer's.
                same = r.get("pipeswap_dtype") == "bfloat16"
                assert r.get("pipeswap_dtype") and (r["status"] == "ok") == (same and r["check"]["ok"]), r
                print(f"{name}: pipeswap with default flags computed in {r['pipeswap_dtype']}: {r['status']}")
                continue
            assert r["status"] == "ok", (r["mode"], r["tokens"], r["status"], r.get("error", "")[-800:])
            assert r["pipeswap_dtype"] == "bfloat16" and r["dtype_check"]["ok"] and r["check"]["ok"], r
            assert r["iters"] >= 2 and r["resident_seconds"] == next(
                q["seconds"] for q in rows(name.replace("pipeswap", "peers")) if q["mode"] == "resident"
                and q["tokens"] == r["tokens"]), r  # the bound is the framework's, never pipeswap's
            ts = r["trace_summary"]
            assert "error" not in ts and ts["steps"] >= 1 and ts["span_ms"] > 0, ts
            print(f"{name} {r['mode']} {r['tokens']}: relative error {r['check']['rel_l2']:.2e} "
                  f"(tolerance {r['check']['tolerance']})")
    for name in ("wan_pipeswap_bad.json", "llama_pipeswap_bad.json"):
        bad = rows(name)
        assert bad and all(r["status"].startswith("FAILED") and not r["check"]["ok"] and r["dtype_check"]["ok"]
                           for r in bad), [(r["mode"], r["status"]) for r in bad]
        print(f"{name}: every row FAILED, relative errors {[r['check']['rel_l2'] for r in bad]}")
    two = rows("two_gpu.json")
    assert not [r for r in two if r.get("error")], [r["error"] for r in two if r.get("error")]
    by = {(r["mode"], r["gpus"]): r for r in two}
    for mode in ("pipeswap denoise", "pipeswap 1 GPU, all swapped"):
        one = by[(mode, 1)]
        other = by[("pipeswap 2 GPUs, each half swapped" if "swapped" in mode else mode, 2)]
        a, b = (load_file(r["output"])["latents"] for r in (one, other))
        assert a.shape[0] == 2 and torch.equal(a, b), mode  # 2 samples; the split changes no bit
    scale = rows("scale.json")
    assert [r["gpus"] for r in scale] == [1, 2, 2] and not [r for r in scale if r.get("error")], scale
    assert all(r["same_latents_as_first_row"] for r in scale[1:]) and scale[0]["swapped_blocks"] == 2, scale
    cfg = rows("cfg.json")  # every order: same latents, diffusers' CFG loop's within tolerance, its fills
    assert [(r["samples"], r["mode"]) for r in cfg] == [(s, "pipeswap cfg " + o) for s in (1, 2)
                                                       for o in ("per-micro-batch", "shared", "auto")], cfg
    assert all(r["status"] == "ok" and r["check"]["ok"] for r in cfg), [(r["mode"], r["status"]) for r in cfg]
    for r in cfg:
        shared = r["mode"].endswith("shared") or r["order_chosen"] == "shared"
        assert r["fills_per_step"] == r["plan_fills_per_step"] == (2 if shared else 4 * r["samples"]), r
    assert all(r["identity_check"]["ok"] for r in cfg if not r["mode"].endswith("per-micro-batch")), cfg
    for r in two:
        if r["gpus"] == 2:
            st = r["stage_transfer"]
            assert "error" not in st and st["messages"] >= 2 and st["gbs"] > 0, st
PY
"$py" "$here/render.py" --results "$tmp" --doc "$tmp/benchmarks.md"
grep -q "diffusers group offload, block_level" "$tmp/benchmarks.md"
grep -q "^| 16 | 1 sample, CFG pair (M = 2) | " "$tmp/benchmarks.md"
grep -q "(median of 1 < 5)" "$tmp/benchmarks.md"  # --iters 1 here: the docs say it is not a median of 5
if [ -f "$tmp/wan_pipeswap.json" ]; then
  grep -q "^| pipeswap resident | 16 | bfloat16 / bfloat16 | .* | ok |" "$tmp/benchmarks.md"
  grep -q "^| 2 | --blocks-to-swap 1 | .* | yes | " "$tmp/benchmarks.md"
  grep -q "^| 2 | shared | .* | 2 (2) " "$tmp/benchmarks.md"
  # A FAILED row renders as FAILED.
  mkdir "$tmp/bad" && cp "$tmp/wan_pipeswap_bad.json" "$tmp/bad/wan_pipeswap.json" && cp "$tmp/wan_peers_bad.json" "$tmp/bad/wan_peers.json"
  "$py" "$here/render.py" --results "$tmp/bad" --doc "$tmp/bad.md"
  grep -q "^| 16 | .* | \*\*FAILED\*\* " "$tmp/bad.md"
fi
echo "bench harness: ok"
