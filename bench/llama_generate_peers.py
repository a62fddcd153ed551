#!/usr/bin/env python3
"""The peers of the text-generation rows (issue 19) in docs/benchmarks.md: transformers' own
`LlamaForCausalLM.generate` (attn_implementation="sdpa", greedy) loaded with `from_pretrained` from the
checkpoint `pipeswap generate` reads (bench/llama_peers.py make: Llama-2-7B-shaped layers, random
weights), on the prompt ids the pipeswap rows use (prompt_ids()), and the measured limits of the machine.

Rows (JSON, one per line on stdout and a list in --out):
  bandwidth          pinned and pageable host -> device GB/s (peers_common.pinned_bandwidth) and the HBM
                     bandwidth: one 2 GiB device-to-device copy, best of 10, counted as read + write
                     traffic (2 x bytes / time; the copy's own rate, bytes / time, is kept beside it). The
                     batch-1 bound of the pipeswap rows is the weight bytes a decode step reads (every
                     parameter but the embedding table, of which a step reads one row per sequence) over it.
  transformers static, per --batches B: generate with cache_implementation="static" (max_cache_len fixed
                     to prompt + new tokens, so both timed calls build the same cache). transformers
                     compiles the decode step of a static cache on CUDA by default (CompileConfig:
                     mode "reduce-overhead"); --compile off passes disable_compile=True instead. The row
                     records which.
  transformers dynamic (off unless --modes names it): the same with the default DynamicCache.
  accelerate         Accelerate's cpu_offload on each decoder layer (embeddings, final norm and lm_head on
                     the device, as bench/llama_peers.py), generate at batch 1 with the default cache, few
                     steps (--accelerate-new-tokens; a 7B step takes seconds).
  ttft               time to first token of a --ttft-tokens prompt at batch 1: generate(max_new_tokens=1)
                     with the static cache; prefill tokens/s = prompt tokens / that time.

Decode step time (every generate row): (median time of generate(max_new_tokens=N)) minus (median time of
generate(max_new_tokens=1)), over N - 1: the N-token call runs the same prefill as the 1-token call plus
N - 1 decode steps, so the difference is the decode steps with everything generate does per token
(sampling, stopping checks, cache updates), and nothing of the prefill. Each call is timed from its start
until the device is idle (torch.cuda.synchronize); the two calls alternate, --iters times each, after one
untimed warm-up of each (which compiles, where transformers compiles). Decode tokens/s = B / step time.
A per-token streamer or synchronize was not used: it would put a host sync into every step, which is not
what generate does.

Greedy ids. The warm-up's ids are the reference of the pipeswap rows: --ids-dir gets textgen_prompts_*.json
(the prompts, in `pipeswap generate --input`'s format) and textgen_ref_*.json (per row the generated ids
and, per step, transformers' TOP_K largest logits and their ids). compare_ids() is the rule, one for the
peers' own checks and the pipeswap rows:
  exact      (float32, the CPU check): every generated id equals transformers'.
  near-tie   (bf16): for each sequence, the ids agree up to the first position where they differ, if any;
             there, the other token must be a near-tie of transformers' own choice: transformers' logit of
             its token minus its logit of the other token <= TIE_FACTOR x sigma, where sigma is the RMS
             difference of transformers' bf16 logits from its float32 run of the same weights on the same
             prompts, measured in the same call (the model converted to float32 and back: bf16 -> fp32 ->
             bf16 is exact). Two bf16 computations that each err by about sigma per logit against float32
             differ by about 2 sigma in a difference of two logits: 6 sigma is three of those standard
             deviations. After the first difference the two sequences continue from different tokens, so
             nothing later is compared; the row records every sequence's identical prefix. Why not "the first
             N tokens identical": with random weights the top two logits of a 32k vocabulary are often closer
             than bf16's rounding, so a correct bf16 implementation may flip a near-tie at any step; a wrong one
             (a weight, a position, a mask off) picks tokens far from transformers' choice, which this rule
             catches at the first difference.

    # on the GPU (bench/run-all textgen)
    python3 bench/llama_generate_peers.py --model /scratch/llama32 --batches 1,8,64,256 --ids-dir IDS --out textgen_peers.json
    # tiny, on the CPU (bench/test-textgen-peers.sh)
    python3 bench/llama_generate_peers.py --model /tmp/tl --device cpu --dtype fp32 --batches 1,4 --prompt-tokens 8 \\
        --new-tokens 6 --ttft-tokens 32 --iters 1 --ids-dir /tmp/ids --out /tmp/textgen_peers.json
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_common as pc  # noqa: E402

TOP_K = 16  # logits kept per step for the near-tie rule
TIE_FACTOR = 6.0  # near-tie: a margin within this many sigma (see the module doc)
TTFT_PROMPTS = 3  # pipeswap's TTFT row runs this many prompts one after another (the first is its warm-up)


def prompt_ids(rows, tokens, vocab):
    """The prompts of the text-generation rows: `rows` sequences of `tokens` ids, different per row; a
    smaller batch's prompts are the first rows of a larger one's."""
    return [[(i * 7919 + r * 104729 + 13) % vocab for i in range(tokens)] for r in range(rows)]


def prompts_name(key):
    return f"textgen_prompts_{key}.json"


def ref_name(key):
    return f"textgen_ref_{key}.json"


def compare_ids(mine, ref, rule, delta=None):
    """The same-computation check of a generate row: `mine` [[generated ids] per sequence] against the
    reference file's contents `ref` ({"ids", "top_ids", "top_logits"}), by `rule` ("exact" or "near-tie",
    see the module doc; `delta` the near-tie margin). Compares the first len(mine[r]) tokens (a row may
    generate fewer tokens than the reference holds); returns a dict with "ok"."""
    out = {"against": f"transformers' greedy ids ({ref.get('framework', 'transformers')})", "rule": rule,
           "rows": len(mine), "delta": delta and round(delta, 6)}
    why = []
    if len(mine) != len(ref["ids"]):
        why.append(f"{len(mine)} sequences, the reference {len(ref['ids'])}")
    prefixes, ties = [], []
    for r, (a, b) in enumerate(zip(mine, ref["ids"])):
        if len(a) > len(b):
            why.append(f"sequence {r}: {len(a)} tokens, the reference only {len(b)}")
            continue
        k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        prefixes.append(len(a) if k is None else k)
        if k is None:
            continue
        if rule == "exact":
            why.append(f"sequence {r}: token {k} is {a[k]}, transformers' {b[k]}")
            continue
        top_ids, top_logits = ref["top_ids"][r][k], ref["top_logits"][r][k]
        if a[k] not in top_ids:
            why.append(f"sequence {r}: token {k} is {a[k]}, not among transformers' {len(top_ids)} most likely "
                       f"(its choice {b[k]}, margin > {top_logits[0] - top_logits[-1]:.4g})")
            continue
        margin = top_logits[0] - top_logits[top_ids.index(a[k])]
        ties.append({"sequence": r, "position": k, "mine": a[k], "theirs": b[k], "margin": round(margin, 6)})
        if delta is None or margin > delta:
            why.append(f"sequence {r}: token {k} is {a[k]} where transformers' {b[k]} leads by {margin:.4g} "
                       f"(> near-tie margin {delta})")
    out.update(identical_rows=sum(1 for r, p in enumerate(prefixes) if p == len(mine[r])),
               min_identical_prefix=min(prefixes) if prefixes else 0,
               mean_identical_prefix=round(statistics.mean(prefixes), 3) if prefixes else 0,
               tokens_per_row=max((len(a) for a in mine), default=0), near_ties=ties[:20], ok=not why)
    if why:
        out["why"] = "; ".join(why[:5]) + (f"; and {len(why) - 5} more" if len(why) > 5 else "")
    return out


def hbm_bandwidth(device, gib=2.0, repeats=10):
    """Device memory GB/s of one large device-to-device copy (best of `repeats`): read + write traffic
    (2 x bytes / time) and the copy's own rate (bytes / time)."""
    if device.type != "cuda":
        return {"hbm_gbs": None, "d2d_copy_gbs": None}
    n = int(gib * (1 << 30))
    src = torch.ones(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = 0.0
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        best = max(best, n / (a.elapsed_time(b) / 1e3) / 1e9)
    del src, dst
    torch.cuda.empty_cache()
    return {"hbm_gbs": round(2 * best, 1), "d2d_copy_gbs": round(best, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32, help="N of the decode rows (the reference ids' length)")
    ap.add_argument("--ttft-tokens", type=int, default=2048, help="prompt length of the ttft row (0: no row)")
    ap.add_argument("--accelerate-new-tokens", type=int, default=4)
    ap.add_argument("--accelerate-iters", type=int, default=1, help="timed pairs of the accelerate row (slow)")
    ap.add_argument("--modes", default="static,ttft,accelerate", help="also: dynamic")
    ap.add_argument("--compile", choices=("auto", "off"), default="auto",
                    help="auto: transformers' default (a static cache compiles the decode step on CUDA); "
                    "off: disable_compile=True")
    ap.add_argument("--iters", type=int, default=pc.ITERS, help="timed pairs of generate calls per row")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--ids-dir", required=True, help="the prompts and reference ids for the pipeswap rows")
    ap.add_argument("--perturb", default="", help="NAME[:FACTOR]: scale one peer tensor (negative check)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if a.out and os.path.dirname(a.out):
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
    import transformers
    device = torch.device(a.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    model = pc.load_llama(a.model, dtype, a.perturb, "llama_generate_peers")
    model.to(device)
    # Every sequence generates exactly max_new_tokens (pipeswap generate --ignore-eos): no stop at EOS.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    fw = f"transformers {transformers.__version__} LlamaForCausalLM (sdpa)"
    peer_dtype = pc.params_dtype(model)
    cfg = model.config
    vocab = cfg.vocab_size
    layers = list(model.model.layers)
    layer_bytes = pc.module_bytes(layers[0])
    total_bytes = pc.module_bytes(model)
    step_read_bytes = total_bytes - pc.module_bytes(model.model.embed_tokens)
    os.makedirs(a.ids_dir, exist_ok=True)
    for f in os.listdir(a.ids_dir):  # an earlier call's references never stand in for this call's
        if f.startswith("textgen_"):
            os.remove(os.path.join(a.ids_dir, f))
    common = dict(workload="textgen", framework=fw, dtype=peer_dtype, device=str(device), layers=len(layers),
                  hidden=cfg.hidden_size, ffn=cfg.intermediate_size, heads=cfg.num_attention_heads, vocab=vocab,
                  layer_bytes=layer_bytes, weight_bytes=total_bytes, step_read_bytes=step_read_bytes,
                  perturbed=a.perturb or None)
    rows = []
    t_start = time.time()

    bw = pc.pinned_bandwidth(device)
    bw.pop("bytes", None)
    bw.update(hbm_bandwidth(device))
    hbm = bw.get("hbm_gbs")
    rows.append({**common, "mode": "bandwidth", "tokens": "-", "seconds": None, **bw,
                 "batch1_hbm_bound_seconds": step_read_bytes / (hbm * 1e9) if hbm else None,
                 "all_layers_transfer_seconds": (len(layers) * layer_bytes / (bw["pinned_h2d_gbs"] * 1e9)
                                                 if bw.get("pinned_h2d_gbs") else None)})
    pc.save_partial(rows, a.out)

    batches = [int(b) for b in a.batches.split(",") if b]
    modes = [m for m in a.modes.split(",") if m]
    P, N = a.prompt_tokens, a.new_tokens

    def gen(ids, n, cache, max_cache_len=None, **kw):
        extra = {}
        if cache == "static":
            extra = dict(cache_implementation="static", max_cache_len=max_cache_len,
                         disable_compile=a.compile == "off")
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                  do_sample=False, **extra, **kw)

    def timed(fn):
        pc.sync(device)
        t0 = time.perf_counter()
        out = fn()
        pc.sync(device)
        return time.perf_counter() - t0, out

    def reference(ids, n, cache, max_cache_len=None):
        """An untimed generate (the warm-up) that keeps the raw logits: [B][n] ids and top-k per step."""
        out = gen(ids, n, cache, max_cache_len, return_dict_in_generate=True, output_logits=True)
        gen_ids = out.sequences[:, ids.shape[1]:].cpu().tolist()
        tops = [torch.topk(l.float(), min(TOP_K, vocab), dim=-1) for l in out.logits]  # per step: [B, K]
        top_ids = torch.stack([t.indices for t in tops], 1).cpu().tolist()  # [B, n, K]
        top_logits = torch.stack([t.values for t in tops], 1).cpu()
        return gen_ids, top_ids, [[[round(v, 5) for v in s] for s in r] for r in top_logits.tolist()]

    def write_ref(key, prompts, gen_ids, top_ids, top_logits, n):
        with open(os.path.join(a.ids_dir, prompts_name(key)), "w") as f:
            json.dump(prompts, f)
        with open(os.path.join(a.ids_dir, ref_name(key)), "w") as f:
            json.dump({"prompt_tokens": len(prompts[0]), "new_tokens": n, "rows": len(prompts), "framework": fw,
                       "dtype": peer_dtype, "perturbed": a.perturb or None, "ids": gen_ids, "top_ids": top_ids,
                       "top_logits": top_logits}, f)

    # The near-tie rule's sigma: transformers' bf16 last-position logits against its float32 run (the same
    # bf16 weights upcast), on the first prompts of the decode rows.
    rule, sigma, logit_rms = "exact", None, None
    if peer_dtype != "float32":
        rule = "near-tie"
        ids = torch.tensor(prompt_ids(min(8, max(batches)), P, vocab), device=device)
        with torch.no_grad():
            lo = model(input_ids=ids, logits_to_keep=1).logits[:, -1].float()
            # Parameters only: model.float() / .to() would also cast buffers (the rotary inv_freq) on the way back.
            kept = [(p, p.data) for p in model.parameters()]
            for p, d in kept:
                p.data = d.float()
            hi = model(input_ids=ids, logits_to_keep=1).logits[:, -1].float()
            for p, d in kept:
                p.data = d
            del kept
        sigma = (lo - hi).pow(2).mean().sqrt().item()
        logit_rms = hi.pow(2).mean().sqrt().item()
        del lo, hi
        if device.type == "cuda":
            torch.cuda.empty_cache()
    delta = TIE_FACTOR * sigma if sigma is not None else None
    with open(os.path.join(a.ids_dir, "textgen_ref.json"), "w") as f:
        json.dump({"rule": rule, "sigma": sigma, "tie_factor": TIE_FACTOR, "delta": delta, "logit_rms": logit_rms,
                   "dtype": peer_dtype, "framework": fw, "top_k": TOP_K, "perturbed": a.perturb or None,
                   "prompt_tokens": P, "new_tokens": N, "ttft_tokens": a.ttft_tokens,
                   "ttft_prompts": TTFT_PROMPTS}, f, indent=1)
    common.update(id_rule=rule, sigma=sigma and round(sigma, 6), near_tie_delta=delta and round(delta, 6))

    def decode_row(mode, cache, batch, n, iters, ref=None, key=None):
        """generate at `batch` with `cache`: the decode step time by the difference of an n-token and a
        1-token call; the warm-up's ids become the reference (key) or are checked against `ref`."""
        ids = torch.tensor(prompt_ids(batch, P, vocab), device=device)
        r = {**common, "mode": mode, "batch": batch, "prompt_tokens": P, "new_tokens": n, "cache": cache,
             "tokens": f"batch {batch}, {P}+{n} tokens",
             "compile": a.compile if cache == "static" and device.type == "cuda" else "off"}
        try:
            t0 = time.time()
            gen_ids, top_ids, top_logits = reference(ids, n, cache, P + n if cache == "static" else None)
            gen(ids, 1, cache, P + n)
            r["warmup_seconds"] = round(time.time() - t0, 2)
            if key:
                write_ref(key, prompt_ids(batch, P, vocab), gen_ids, top_ids, top_logits, n)
                ref = {"ids": gen_ids, "top_ids": top_ids, "top_logits": top_logits, "framework": fw}
            full, pre, last = [], [], None
            for _ in range(iters):
                t, last = timed(lambda: gen(ids, n, cache, P + n))
                full.append(t)
                pre.append(timed(lambda: gen(ids, 1, cache, P + n))[0])
            tf, tp = statistics.median(full), statistics.median(pre)
            step = (tf - tp) / (n - 1)
            r.update(seconds=round(step, 6), decode_step_seconds=round(step, 6),
                     decode_tokens_per_second=round(batch / step, 2) if step > 0 else None,
                     prefill_seconds=round(tp, 6), generate_seconds=round(tf, 6),
                     times_full=[round(x, 6) for x in full], times_prefill=[round(x, 6) for x in pre], iters=iters,
                     warmup=1, method="(median generate(max_new_tokens=N) - median generate(max_new_tokens=1)) / (N - 1)")
            mine = last[:, P:].cpu().tolist()
            r["identity_check"] = compare_ids(mine, ref, rule, delta)
            r["identity_check"]["against"] = ("its own warm-up's greedy ids" if key else
                                              r["identity_check"]["against"] + ", static cache")
        except Exception as e:  # a broken row FAILS; the others still run
            traceback.print_exc()
            r.update(seconds=float("nan"), rc=1, error=f"{type(e).__name__}: {e}"[-2000:])
        if device.type == "cuda":
            r["device_peak_bytes_peer"] = torch.cuda.max_memory_allocated(device)
        r["elapsed_since_start"] = round(time.time() - t_start, 1)
        return r

    refs = {}
    if "static" in modes:
        for b in batches:
            rows.append(decode_row("transformers static", "static", b, N, a.iters, key=f"b{b}"))
            pc.save_partial(rows, a.out)
            print(json.dumps({k: rows[-1].get(k) for k in ("mode", "batch", "seconds", "decode_tokens_per_second",
                                                            "warmup_seconds", "elapsed_since_start")}), flush=True)
            if os.path.exists(os.path.join(a.ids_dir, ref_name(f"b{b}"))):
                with open(os.path.join(a.ids_dir, ref_name(f"b{b}"))) as f:
                    refs[b] = json.load(f)
    if "dynamic" in modes:
        for b in batches:
            rows.append(decode_row("transformers dynamic", "dynamic", b, N, a.iters, ref=refs.get(b)))
            pc.save_partial(rows, a.out)

    if "ttft" in modes and a.ttft_tokens > 0:
        T = a.ttft_tokens
        prompts = prompt_ids(TTFT_PROMPTS, T, vocab)
        r = {**common, "mode": "transformers ttft", "batch": 1, "prompt_tokens": T, "new_tokens": 1, "cache": "static",
             "tokens": f"batch 1, {T}+1 tokens"}
        try:
            gen_ids, top_ids, top_logits = [], [], []
            for p in prompts:  # untimed: the reference first tokens of every prompt, and the warm-up
                g, ti, tl = reference(torch.tensor([p], device=device), 1, "static", T + 1)
                gen_ids += g
                top_ids += ti
                top_logits += tl
            write_ref("ttft", prompts, gen_ids, top_ids, top_logits, 1)
            ids = torch.tensor(prompts[:1], device=device)
            times = [timed(lambda: gen(ids, 1, "static", T + 1))[0] for _ in range(a.iters)]
            t = statistics.median(times)
            r.update(seconds=round(t, 6), ttft_seconds=round(t, 6), prefill_tokens_per_second=round(T / t, 1),
                     times=[round(x, 6) for x in times], iters=len(times), warmup=1,
                     method="generate(max_new_tokens=1) of one prompt, start to device idle")
        except Exception as e:
            traceback.print_exc()
            r.update(seconds=float("nan"), rc=1, error=f"{type(e).__name__}: {e}"[-2000:])
        rows.append(r)
        pc.save_partial(rows, a.out)

    if "accelerate" in modes:
        # Last: it leaves the layers' weights on the host. Batch 1, the default (dynamic) cache: transformers
        # does not compile it, and hooks moving weights are what cpu_offload users run.
        n = a.accelerate_new_tokens
        saved = pc.accelerate_offload(layers, device)
        try:
            ref = refs.get(1) or (refs and {k: [v[0]] for k, v in refs[min(refs)].items() if k in
                                            ("ids", "top_ids", "top_logits")})
            r = decode_row("accelerate", "dynamic", 1, n, a.accelerate_iters, ref=ref or None)
            r["offload"] = "accelerate.cpu_offload on each decoder layer (embeddings, norm, lm_head on the device)"
            r["bytes_moved"] = len(layers) * layer_bytes
            if not ref:
                r["identity_check"] = {"ok": False, "why": "no batch-1 reference ids (static mode not run)"}
        finally:
            pc.accelerate_remove(layers, saved)
        rows.append(r)
        pc.save_partial(rows, a.out)
    return pc.emit(rows, a.out)


if __name__ == "__main__":
    sys.exit(main())
