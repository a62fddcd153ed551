#!/usr/bin/env python3
"""The pipeswap side of the text-generation rows (issue 19): `pipeswap generate` on the checkpoint and the
prompt ids of bench/llama_generate_peers.py (its --ids-dir), greedy, --ignore-eos, each row's greedy ids
checked against transformers' by llama_generate_peers.compare_ids (exact in float32, the near-tie rule in
bf16: see that module), and its times against the peers and bounds measured in the same call.

Rows ("mode", per batch B):
  pipeswap resident     every layer on the device, --resident-batches (default 8, 64, 1). Target: decode
                        tokens/s at or above transformers' static-cache generate at that batch (a step time
                        ratio <= 1.00 at B = 8 and 64); at B = 1 the step within HBM_TARGET x the HBM bound
                        (the bytes a decode step reads / the device copy bandwidth, from the peers' call).
  pipeswap all swapped  every layer swapped (--offload-ratio 1: the fraction of each rank's blocks that swap;
                        the plan line's "N swapped" is recorded), --prefetch-depth 2; at B > 1 the sequences run
                        as --micro-batches min(B, --swap-micro-batches) with --swap-order shared, so that one
                        fill of a layer serves the whole batch (the prefill of B prompts, one micro-batch each,
                        would otherwise stream every layer B times). Target: each decode step within
                        SWAP_TARGET x max(transformers' resident step at that batch, layers x layer bytes /
                        the pinned host-to-device GB/s the peers measured), and tokens/s growing with batch.
  pipeswap ttft         resident, TTFT_PROMPTS prompts of --ttft-tokens one after another (--max-batch 1,
                        --max-new-tokens 1): the first is the process's warm-up (first kernels), the warm
                        time to first token is (the last prompt's - the first prompt's) / (TTFT_PROMPTS - 1),
                        as the summary prints both; prefill tokens/s = prompt tokens / that. The first
                        prompt's (cold) time is kept beside it. Against transformers' TTFT (ratio, no target).

Decode step time: the summary line "decode D tokens in S s (R tokens/s)": B / R (R has more digits than S).
pipeswap sums, per decode micro-batch, the time from its launch until its tokens are sampled on the host
(the logits' copy to the host and the sampling included), and every prompt is prefilled before the first
decode step (prompts waiting for a slot go first), so the D = B x (N - 1) tokens are N - 1 full steps.
Every row FAILS (status, exit status 1) when pipeswap failed, computed in another dtype than the peers, or
its ids disagree with transformers' beyond the rule.

    textgen_rows.py --exe build-gpu/pipeswap --model LLAMA32 --peers textgen_peers.json --ids-dir IDS --out F
"""
import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_common as pc  # noqa: E402
from llama_generate_peers import TTFT_PROMPTS, compare_ids, prompts_name, ref_name  # noqa: E402
from pipeswap_rows import common_info, load_rows, run, trace_summary  # noqa: E402

SUMMARY = re.compile(r"prefill (\d+) tokens in ([0-9.]+) s \(([0-9.]+) tokens/s\); decode (\d+) tokens in ([0-9.]+) s "
                     r"\(([0-9.]+) tokens/s\); time to first token ([0-9.]+) s(?: \(last prompt's ([0-9.]+) s\))?; "
                     r"(\d+) steps")
HBM_TARGET = 1.5  # batch-1 decode step over the HBM bound
SWAP_TARGET = 1.05  # all-swapped decode step over max(compute, transfer)


def parse_summary(text):
    m = SUMMARY.search(text)
    if not m:
        return None
    g = m.groups()
    return {"prefill_tokens": int(g[0]), "prefill_seconds": float(g[1]), "prefill_tokens_per_second": float(g[2]),
            "decode_tokens": int(g[3]), "decode_seconds": float(g[4]), "decode_tokens_per_second": float(g[5]),
            "ttft_seconds": float(g[6]), "ttft_last_seconds": float(g[7]) if g[7] else float(g[6]),
            "micro_batch_steps": int(g[8])}


def generate(a, name, key, n, batch, extra):
    """One `pipeswap generate` run on the peers' prompts `key`: (info dict, generated ids or None)."""
    prompts = os.path.join(a.ids_dir, prompts_name(key))
    with open(prompts) as f:
        plen = max(len(p) for p in json.load(f))
    out_file = os.path.join(a.scratch, f"textgen_{name.replace(' ', '_')}.json")
    cmd = [a.exe, "generate", "--model", a.model, "--input", prompts, "--max-new-tokens", str(n), "--max-batch",
           str(batch), "--max-seq-len", str(plen + n), "--ignore-eos", "--device-chain", a.one_chain, "--output",
           out_file, "--dtype", a.dtype] + extra
    info = {}
    if a.trace_dir:
        os.makedirs(a.trace_dir, exist_ok=True)
        info["trace"] = os.path.join(a.trace_dir, f"textgen_{name.replace(' ', '_')}.json")
        cmd += ["--trace", info["trace"]]
    if os.path.exists(out_file):
        os.remove(out_file)
    rc, text, wall = run(cmd, a.timeout)
    info.update(command=" ".join(cmd), rc=rc, wall_seconds=round(wall, 2), prompt_tokens=plen, new_tokens=n,
                batch=batch, tokens=f"batch {batch}, {plen}+{n} tokens", flags=" ".join(["--dtype", a.dtype] + extra))
    s = parse_summary(text)
    if rc != 0 or not s or not os.path.exists(out_file):
        info["error"] = text[-2000:]
        info.pop("trace", None)
        return info, None
    info.update(s)
    common_info(text, info)
    with open(out_file) as f:
        out = json.load(f)
    ids = [r["generated_ids"] for r in sorted(out, key=lambda r: r["index"])]
    if info.get("trace"):
        info["trace_summary"] = trace_summary(info["trace"])
    return info, ids


def check(a, info, ids, key, rule, delta, fw_dtype, fw_name):
    if ids is None:
        return
    info["dtype_check"] = pc.check_dtype(info.get("pipeswap_dtype"), fw_dtype, fw_name or "the peer")
    p = os.path.join(a.ids_dir, ref_name(key))
    if not os.path.exists(p):
        info["identity_check"] = {"against": "transformers' greedy ids", "ok": False, "why": f"no {p}"}
        return
    with open(p) as f:
        info["identity_check"] = compare_ids(ids, json.load(f), rule, delta)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exe", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--peers", required=True, help="llama_generate_peers.py's JSON of this call")
    ap.add_argument("--ids-dir", required=True, help="llama_generate_peers.py's --ids-dir")
    ap.add_argument("--resident-batches", default="8,64,1")
    ap.add_argument("--swap-batches", default="1,8,64,256")
    ap.add_argument("--new-tokens", type=int, default=0, help="resident rows (0: the peers' N)")
    ap.add_argument("--swap-new-tokens", type=int, default=8, help="all-swapped rows (a 7B step streams 13 GB)")
    ap.add_argument("--swap-flags", default="--offload-ratio 1 --prefetch-depth 2")
    ap.add_argument("--swap-micro-batches", type=int, default=8)
    ap.add_argument("--no-ttft", action="store_true")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                    help="pipeswap's --dtype in every command (as the peers' --dtype)")
    ap.add_argument("--one-chain", default="cuda:0")
    ap.add_argument("--trace-dir", default="")
    ap.add_argument("--scratch", default="/tmp/pipeswap-bench-out")
    ap.add_argument("--timeout", type=int, default=240)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if a.out and os.path.dirname(a.out):
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
    os.makedirs(a.scratch, exist_ok=True)
    peers = load_rows(a.peers)
    with open(os.path.join(a.ids_dir, "textgen_ref.json")) as f:
        ref = json.load(f)
    rule, delta = ref["rule"], ref.get("delta")
    fw_dtype, fw_name = ref["dtype"], ref["framework"]
    bw = next((r for r in peers if r.get("mode") == "bandwidth"), {})
    static = {r["batch"]: r for r in peers if r.get("mode") == "transformers static" and not r.get("error")}
    ttft_peer = next((r for r in peers if r.get("mode") == "transformers ttft" and not r.get("error")), None)
    layers, layer_bytes = bw.get("layers"), bw.get("layer_bytes")
    pinned, hbm = bw.get("pinned_h2d_gbs"), bw.get("hbm_gbs")
    n_res = a.new_tokens or ref["new_tokens"]
    common = dict(workload="textgen", framework=fw_name, layers=layers, layer_bytes=layer_bytes, id_rule=rule,
                  pinned_h2d_gbs=pinned, hbm_gbs=hbm)
    rows = []

    def finish(r):
        # A row that ran has an id check (a missing reference fails it); the status as the other rows'.
        if not r.get("error") and "identity_check" not in r:
            r["identity_check"] = {"ok": False, "why": "no ids to check"}
        r["status"] = pc.status(r)
        rows.append(r)
        pc.save_partial(rows, a.out)
        print(json.dumps({k: r.get(k) for k in ("mode", "batch", "seconds", "decode_tokens_per_second", "over_bound",
                                                "vs_transformers", "status")}), flush=True)

    def step_of(info):
        tps = info.get("decode_tokens_per_second")
        return info["batch"] / tps if tps else float("nan")

    for b in [int(x) for x in a.resident_batches.split(",") if x]:
        info, ids = generate(a, f"resident b{b}", f"b{b}", n_res, b, [])
        check(a, info, ids, f"b{b}", rule, delta, fw_dtype, fw_name)
        step = step_of(info)
        peer = static.get(b, {}).get("seconds")
        r = {**common, "mode": "pipeswap resident", **info, "seconds": round(step, 6) if step == step else step,
             "transformers_seconds": peer, "transformers_tokens_per_second": static.get(b, {}).get(
                 "decode_tokens_per_second"),
             "vs_transformers": round(step / peer, 4) if peer and step == step else None, "target_vs_transformers": 1.0}
        if b == 1:
            read = bw.get("step_read_bytes")
            bound = read / (hbm * 1e9) if read and hbm else None
            r.update(bound_seconds=bound and round(bound, 6), bound="HBM: decode-step bytes / device copy GB/s",
                     over_bound=round(step / bound, 4) if bound and step == step else None, target=HBM_TARGET)
        finish(r)

    if not a.no_ttft and ref.get("ttft_tokens"):
        info, ids = generate(a, "ttft", "ttft", 1, 1, [])
        check(a, info, ids, "ttft", rule, delta, fw_dtype, fw_name)
        warm = None
        if not info.get("error"):
            warm = (info["ttft_last_seconds"] - info["ttft_seconds"]) / (TTFT_PROMPTS - 1)
        peer = ttft_peer and ttft_peer["seconds"]
        r = {**common, "mode": "pipeswap ttft", **info, "seconds": round(warm, 6) if warm else float("nan"),
             "ttft_cold_seconds": info.get("ttft_seconds"),
             "prefill_tokens_per_second_warm": round(info["prompt_tokens"] / warm, 1) if warm else None,
             "transformers_seconds": peer, "vs_transformers": round(warm / peer, 4) if warm and peer else None,
             "method": f"(last prompt's TTFT - first prompt's) / {TTFT_PROMPTS - 1}, {TTFT_PROMPTS} prompts in turn "
                       "(--max-batch 1, --max-new-tokens 1); the summary prints 3 decimals"}
        finish(r)

    transfer = layers * layer_bytes / (pinned * 1e9) if layers and layer_bytes and pinned else None
    for b in [int(x) for x in a.swap_batches.split(",") if x]:
        m = max(1, min(b, a.swap_micro_batches))
        extra = a.swap_flags.split() + (["--micro-batches", str(m), "--swap-order", "shared"] if m > 1 else [])
        info, ids = generate(a, f"all swapped b{b}", f"b{b}", a.swap_new_tokens, b, extra)
        check(a, info, ids, f"b{b}", rule, delta, fw_dtype, fw_name)
        step = step_of(info)
        compute = static.get(b, {}).get("seconds")
        bound = max(compute or 0.0, transfer or 0.0) or None
        r = {**common, "mode": "pipeswap all swapped", **info, "seconds": round(step, 6) if step == step else step,
             "micro_batches": m, "compute_seconds": compute, "transfer_seconds": transfer and round(transfer, 6),
             "bytes_moved": layers * layer_bytes if layers and layer_bytes else None,
             "bound_seconds": bound and round(bound, 6), "over_bound": round(step / bound, 4) if bound and step == step
             else None, "target": SWAP_TARGET,
             "bound": "max(transformers' resident step at this batch, layers x layer bytes / pinned H2D GB/s)"
                      + ("" if compute else "; transformers' step at this batch was not measured: transfer only")}
        if not info.get("error") and layers and info.get("swapped_blocks") != layers:
            r["error"] = f"{info.get('swapped_blocks')} of {layers} layers swapped (flags {a.swap_flags})"
        finish(r)
    return pc.emit(rows, a.out)


if __name__ == "__main__":
    sys.exit(main())
