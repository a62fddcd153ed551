#!/usr/bin/env bash
# CPU check of issue 18's end-to-end benchmark (ctest: bench_generate), with diffusers itself
# (scripts/pyenv: torch, transformers, accelerate, diffusers 0.42.1) and pipeswap ($1 or $PIPESWAP_EXE):
#  * bench/wan_repo.py --tiny writes a Wan2.1 T2V repo in diffusers' layout (float32 text encoder);
#  * bench/generate_rows.py peer: diffusers' WanPipeline (bench/wan_generate_peer.py) on the CPU in float32,
#    from the noise file made from the seed;
#  * bench/generate_rows.py pipeswap (`pipeswap generate --dtype fp32`, runs A and B): its latents and
#    frames within the tolerance of diffusers', the dtype the peer's, every phase timed, ratios made;
#  * the tolerance's yardstick (diffusers bf16 against float32) and a bf16 pair checked with it;
#  * the same with diffusers' group offloading and pipeswap --blocks-to-swap 1 (the 24GB pair's code paths);
#  * the negative checks: the peer with another seed (its noise only), and the peer with one DiT weight
#    scaled: the pipeswap row against each must FAIL (status and exit status 1);
#  * render.py renders the rows (the FAILED one as FAILED).
# Timings here mean nothing (2 cores, tiny sizes). Skipped (77) where the Python at $PIPESWAP_PYTHON
# (default python3) lacks torch, safetensors, transformers, diffusers or PIL, or no pipeswap is given.
set -euo pipefail
. "$(dirname "$0")/test-lib.sh"
bench_test_setup gen-test "torch safetensors transformers diffusers PIL" needs-exe "${1:-}"
t0=$(date +%s)
quiet "$py" "$here/wan_repo.py" --out "$tmp/repo" --tiny --device cpu --dtype fp32
size=(--repo "$tmp/repo" --frames 5 --height 32 --width 32 --steps 3 --scratch "$tmp/scratch")
rows=(--exe "$exe" --device-chain "" --flags "--dtype fp32" --peers "$tmp/gen_peers.json")
echo "diffusers WanPipeline peers (CPU, float32)"
quiet "$py" "$here/generate_rows.py" peer "${size[@]}" --name resident --device cpu --out "$tmp/gen_peers.json"
quiet "$py" "$here/generate_rows.py" peer "${size[@]}" --name swapped --offload group --device cpu \
  --out "$tmp/gen_peers.json"
quiet "$py" "$here/generate_rows.py" peer "${size[@]}" --name other-seed --seed 7 --device cpu \
  --out "$tmp/gen_peers.json"
quiet "$py" "$here/generate_rows.py" peer "${size[@]}" --name perturbed --device cpu \
  --perturb blocks.1.ffn.net.2.weight:2 --out "$tmp/gen_peers.json"
echo "the tolerance's yardstick (diffusers bf16 vs float32) and a bf16 pair"
quiet "$py" "$here/generate_rows.py" yardstick "${size[@]}" --device cpu --out "$tmp/gen_yardstick.json"
quiet "$py" "$here/generate_rows.py" peer "${size[@]}" --name bf16 --dtype bf16 --device cpu \
  --out "$tmp/gen_peers.json"
echo "pipeswap generate rows"
quiet "$py" "$here/generate_rows.py" pipeswap "${size[@]}" --name resident "${rows[@]}" --out "$tmp/generate.json"
quiet "$py" "$here/generate_rows.py" pipeswap "${size[@]}" --name swapped "${rows[@]/--dtype fp32/--dtype fp32 --blocks-to-swap 1}" \
  --out "$tmp/generate.json"
quiet "$py" "$here/generate_rows.py" pipeswap "${size[@]}" --name bf16 "${rows[@]/--dtype fp32/--dtype bf16}" \
  --yardstick "$tmp/gen_yardstick.json" --out "$tmp/generate.json"
echo "the negative checks: the peer's noise (another seed) or one of its DiT weights differs"
expect_fail "$tmp/bad_seed.log" "$py" "$here/generate_rows.py" pipeswap "${size[@]}" --name other-seed "${rows[@]}" \
  --no-decode --out "$tmp/generate.json"
expect_fail "$tmp/bad_weight.log" "$py" "$here/generate_rows.py" pipeswap "${size[@]}" --name perturbed "${rows[@]}" \
  --out "$tmp/generate.json"
"$py" - "$tmp" <<'PY'
import json, sys
t = sys.argv[1]
peers = {r["name"]: r for r in json.load(open(f"{t}/gen_peers.json"))}
rows = {r["name"]: r for r in json.load(open(f"{t}/generate.json"))}
assert set(peers) == set(rows) == {"resident", "swapped", "bf16", "other-seed", "perturbed"}, (set(peers), set(rows))
for p in peers.values():
    assert p["status"] == "ok" and p["dtype"] == ("bfloat16" if p["name"] == "bf16" else "float32"), p
    assert len(p["step_seconds"]) == 3, p
    assert p["host_peak_rss"] > 0 and p["total_seconds"] > 0 and p["extrapolated_total_seconds"] > 0, p
r = rows["resident"]
assert r["status"] == "ok", r["status"]
assert r["check"]["ok"] and r["frames_check"]["ok"] and r["dtype_check"]["ok"], r
assert r["tokens"] == 2 * 2 * 2 and len(r["step_seconds"]) == 3, r
assert all(r["phases"][p]["seconds"] > 0 for p in ("encode", "denoise", "decode")), r["phases"]
assert all(r["ratios"][k] > 0 for k in ("encode", "denoise", "decode", "total", "per_step", "extrapolated_total")), r
assert r["host_peak_rss"] > 0 and r["extrapolated_total_seconds"] > r["total_seconds"], r
assert r["noise"] == peers["resident"]["noise"], (r["noise"], peers["resident"]["noise"])
print(f"resident: latents relative error {r['check']['rel_l2']:.2e}, frames {r['frames_check']['rel_l2']:.2e} "
      f"(tolerance {r['check']['tolerance']})")
s = rows["swapped"]  # diffusers' group offloading beside pipeswap with a block swapped (the 24GB pair's CPU stand-in)
assert s["status"] == "ok" and s["swapped_blocks"] == 1 and peers["swapped"]["offload"] == "group", s
y = json.load(open(f"{t}/gen_yardstick.json"))[0]
assert 0 < y["bf16_error_vs_fp32"] < 0.05 and y["tolerance"] == max(0.02, 3 * y["bf16_error_vs_fp32"]), y
b = rows["bf16"]  # bf16 on both sides: the tolerance comes from the yardstick
assert b["status"] == "ok" and b["tolerance"] == y["tolerance"] and "yardstick" in b["tolerance_from"], b
assert rows["resident"]["tolerance_from"] == "the fixed default"  # a float32 peer: 0.02
print(f"bf16: latents relative error {b['check']['rel_l2']:.2e} (diffusers' own bf16 error "
      f"{y['bf16_error_vs_fp32']:.2e}, tolerance {b['tolerance']})")
for name in ("other-seed", "perturbed"):
    b = rows[name]
    assert b["status"].startswith("FAILED") and not b["check"]["ok"] and b["dtype_check"]["ok"], b["status"]
    print(f"{name}: FAILED, latents relative error {b['check']['rel_l2']:.3f}")
assert "frames_check" not in rows["other-seed"] and not rows["perturbed"]["frames_check"]["ok"]
PY
"$py" "$here/render.py" --results "$tmp" --doc "$tmp/benchmarks.md"
grep -q "^| resident | " "$tmp/benchmarks.md"
grep -q "^| perturbed \*\*FAILED\*\* | " "$tmp/benchmarks.md"
echo "bench generate: ok in $(( $(date +%s) - t0 )) s"
