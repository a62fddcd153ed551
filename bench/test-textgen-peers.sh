#!/usr/bin/env bash
# CPU check of the text-generation rows (ctest: bench_textgen), with transformers and Accelerate themselves
# (scripts/pyenv) and pipeswap ($1 or $PIPESWAP_EXE):
#  * a tiny Llama (bench/llama_peers.py make) through bench/llama_generate_peers.py in float32: the static-
#    cache rows at 2 batches, TTFT, Accelerate cpu_offload; every peer row passes its own id check;
#  * bench/textgen_rows.py on the same files, float32 (--dtype fp32): resident, TTFT and all-swapped rows at
#    both batches; every row passes (ids identical to transformers', the exact rule), every layer swapped in
#    the swapped rows, and each row's bound is the peers' (never pipeswap's own time);
#  * the negative check: with one weight scaled for the peers only (--perturb), every pipeswap row FAILS
#    (status and exit status 1);
#  * the near-tie rule (bf16) on made-up references, and a render of docs/benchmarks.md with the section.
# Timings here mean nothing (2 cores, --iters 1). Skipped (77) where the Python at $PIPESWAP_PYTHON (default
# python3) lacks torch, safetensors, transformers or accelerate, or no pipeswap executable is given.
set -euo pipefail
. "$(dirname "$0")/test-lib.sh"
bench_test_setup textgen-test "torch safetensors transformers accelerate" needs-exe "${1:-}"
"$py" "$here/llama_peers.py" make --out "$tmp/llama" --layers 2 --hidden 64 --ffn 128 --heads 4 --vocab 128 \
  --device cpu > /dev/null 2>&1
peer=(--model "$tmp/llama" --device cpu --dtype fp32 --prompt-tokens 8 --new-tokens 6 --iters 1)
echo "generate peers (transformers static cache, TTFT, Accelerate cpu_offload)"
quiet "$py" "$here/llama_generate_peers.py" "${peer[@]}" --batches 1,4 --ttft-tokens 32 --ids-dir "$tmp/ids" \
  --out "$tmp/results/textgen_peers.json"
rows=(--exe "$exe" --model "$tmp/llama" --dtype fp32 --one-chain cpu --scratch "$tmp/scratch")
echo "pipeswap generate rows against transformers' ids"
quiet "$py" "$here/textgen_rows.py" "${rows[@]}" --peers "$tmp/results/textgen_peers.json" --ids-dir "$tmp/ids" \
  --resident-batches 1,4 --swap-batches 1,4 --swap-new-tokens 4 --swap-micro-batches 2 --trace-dir "$tmp/traces" \
  --out "$tmp/results/textgen_pipeswap.json"
echo "the negative check: a weight scaled for the peers only"
quiet "$py" "$here/llama_generate_peers.py" "${peer[@]}" --batches 4 --ttft-tokens 0 --modes static \
  --perturb model.layers.1.mlp.down_proj.weight:2 --ids-dir "$tmp/ids_bad" --out "$tmp/peers_bad.json"
expect_fail "$tmp/bad.log" "$py" "$here/textgen_rows.py" "${rows[@]}" --peers "$tmp/peers_bad.json" \
  --ids-dir "$tmp/ids_bad" --resident-batches 4 --swap-batches 4 --swap-new-tokens 4 --swap-micro-batches 2 \
  --no-ttft --out "$tmp/rows_bad.json"
"$py" - "$tmp" "$here" <<'PY'
import json, sys
t = sys.argv[1]
sys.path.insert(0, sys.argv[2])
from llama_generate_peers import compare_ids

def rows(name):
    return json.load(open(f"{t}/{name}"))

peers = rows("results/textgen_peers.json")
by = {(r["mode"], r.get("batch")): r for r in peers}
assert set(by) == {("bandwidth", None), ("transformers static", 1), ("transformers static", 4),
                   ("transformers ttft", 1), ("accelerate", 1)}, sorted(by)
assert all(r["status"] == "ok" for r in peers), [(r["mode"], r["status"]) for r in peers]
for k in (("transformers static", 1), ("transformers static", 4), ("accelerate", 1)):
    r = by[k]
    assert r["identity_check"]["ok"] and r["identity_check"]["rule"] == "exact" and r["dtype"] == "float32", r
    assert r["decode_step_seconds"] > 0 and r["decode_tokens_per_second"] > 0, r
ref = json.load(open(f"{t}/ids/textgen_ref_b4.json"))
assert len(ref["ids"]) == 4 and all(len(x) == 6 for x in ref["ids"]) and len(ref["top_ids"][0][0]) == 16, ref
assert ref["ids"][0] == json.load(open(f"{t}/ids/textgen_ref_b1.json"))["ids"][0]  # row 0 is the batch-1 prompt

ps = rows("results/textgen_pipeswap.json")
want = {("pipeswap resident", 1), ("pipeswap resident", 4), ("pipeswap ttft", 1), ("pipeswap all swapped", 1),
        ("pipeswap all swapped", 4)}
assert {(r["mode"], r["batch"]) for r in ps} == want, ps
for r in ps:
    assert r["status"] == "ok", (r["mode"], r["batch"], r["status"], r.get("identity_check"), r.get("error", "")[-800:])
    ic = r["identity_check"]
    assert ic["ok"] and ic["rule"] == "exact" and ic["identical_rows"] == ic["rows"], ic
    assert r["pipeswap_dtype"] == "float32" and r["dtype_check"]["ok"], r
    assert r["seconds"] > 0, r
    if r["mode"] == "pipeswap all swapped":
        assert r["swapped_blocks"] == 2 and r["micro_batches"] == min(r["batch"], 2), r
        assert r["compute_seconds"] == by[("transformers static", r["batch"])]["seconds"], r  # the peer's, not pipeswap's
        assert r["decode_tokens"] == r["batch"] * (4 - 1), r  # N - 1 full steps of every sequence
    elif r["mode"] == "pipeswap resident":
        assert r["swapped_blocks"] == 0 and r["transformers_seconds"] == by[("transformers static", r["batch"])]["seconds"], r
        assert r["decode_tokens"] == r["batch"] * (6 - 1), r
    else:
        assert r["prompt_tokens"] == 32 and r["identity_check"]["rows"] == 3, r
        assert r["transformers_seconds"] == by[("transformers ttft", 1)]["seconds"], r
bad = rows("rows_bad.json")
assert len(bad) == 2 and all(r["status"].startswith("FAILED") and not r["identity_check"]["ok"] for r in bad), \
    [(r["mode"], r["status"]) for r in bad]
print("negative check: every row FAILED:", [r["identity_check"]["why"][:80] for r in bad])

# The near-tie rule: a flip within delta of transformers' own top logit passes, beyond it fails, and a token
# outside transformers' top-k fails; after the first difference nothing is compared.
ref = {"ids": [[5, 6, 7]], "top_ids": [[[5, 9], [6, 3], [7, 1]]], "top_logits": [[[2.0, 1.99], [1.0, 0.5], [3.0, 2.0]]]}
assert compare_ids([[5, 6, 7]], ref, "near-tie", 0.02)["ok"]
ok = compare_ids([[9, 1, 1]], ref, "near-tie", 0.02)
assert ok["ok"] and ok["min_identical_prefix"] == 0 and ok["near_ties"][0]["margin"] == 0.01, ok
assert not compare_ids([[5, 3, 7]], ref, "near-tie", 0.02)["ok"]  # margin 0.5
assert not compare_ids([[5, 4, 7]], ref, "near-tie", 0.02)["ok"]  # not in the top-k
assert not compare_ids([[9, 6, 7]], ref, "exact")["ok"]
assert not compare_ids([[5, 6, 7, 8]], ref, "exact")["ok"]  # more tokens than the reference
PY
"$py" "$here/render.py" --results "$tmp/results" --doc "$tmp/benchmarks.md"
grep -q "^## .*Text generation" "$tmp/benchmarks.md"
grep -q "^| 4 | .* | ok |" "$tmp/benchmarks.md"
mkdir "$tmp/bad" && cp "$tmp/rows_bad.json" "$tmp/bad/textgen_pipeswap.json" && cp "$tmp/peers_bad.json" "$tmp/bad/textgen_peers.json"
"$py" "$here/render.py" --results "$tmp/bad" --doc "$tmp/bad.md"
grep -q "^| 4 | .*\*\*FAILED\*\*" "$tmp/bad.md"
echo "bench textgen: ok"
