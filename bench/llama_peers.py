#!/usr/bin/env python3
"""The peers of the Llama rows in docs/benchmarks.md: transformers' own `LlamaForCausalLM`
(attn_implementation="sdpa", bf16) loaded with `from_pretrained` from the Hugging Face directory that
`pipeswap run` reads too, on the token ids the pipeswap rows use (peers_common.llama_ids), with
swapping methods applied to its decoder layers (embeddings, final norm and lm_head stay on the device).

Rows per length, each the median of >= 5 forwards after a warm-up, timed until the logits
([1, T, vocab], bf16) are on the device:
  resident    every layer on the device: the framework's resident time (every row's bound).
  accelerate  Accelerate's cpu_offload on each decoder layer.
  prefetch    a Python side-stream prefetch from pinned memory (peers_common.StreamPrefetch).
  naive       per-layer .to(device) / .to("cpu") (off unless --modes names it).
Checks (a row that fails them is FAILED, the script exits 1): every mode's logits against the resident
ones; the parameters in bf16. --ref-dir writes the resident logits at peers_common.logit_positions
(llama_ref_T.safetensors) and transformers' own bf16 error against its float32 run at the first length
(llama_ref.json): the pipeswap rows are checked against them.

    # a random Llama with Llama-2-7B-sized layers (8 of them: 3.7 GB in bf16), written on the GPU
    python3 bench/llama_peers.py make --out /scratch/llama8 --layers 8
    python3 bench/llama_peers.py time --model /scratch/llama8 --tokens 512,2048,8192 --ref-dir REF --out llama_peers.json
    # tiny, on the CPU (the CI-sized check of this script)
    python3 bench/llama_peers.py make --out /tmp/tl --layers 2 --hidden 64 --ffn 128 --heads 4 --vocab 256 --device cpu
    python3 bench/llama_peers.py time --model /tmp/tl --tokens 16 --device cpu
"""
import argparse
import json
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_common as pc  # noqa: E402


def make(a):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg_path = os.path.join(a.out, "config.json")
    want = dict(hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                num_attention_heads=a.heads, num_key_value_heads=a.kv_heads or a.heads, vocab_size=a.vocab,
                max_position_embeddings=max(4096, a.max_pos), rms_norm_eps=1e-5, tie_word_embeddings=False)
    if os.path.exists(cfg_path) and not a.force:
        with open(cfg_path) as f:
            have = json.load(f)
        if all(have.get(k) == v for k, v in want.items()):
            print(f"llama_peers: {a.out} already holds this model; --force rewrites it")
            return
    t0 = time.time()
    torch.manual_seed(a.seed)
    config = LlamaConfig(**want)
    with torch.device(a.device):
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16)  # save_pretrained records the dtype in config.json, as transformers ships it
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, max_shard_size=a.shard)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"llama": a.out, "layers": a.layers, "hidden": a.hidden, "bytes": nbytes,
                      "layer_bytes": pc.module_bytes(model.model.layers[0]), "seconds": round(time.time() - t0, 1)}))


def time_peers(a):
    import transformers
    from safetensors.torch import save_file
    device = torch.device(a.device)

    def load(dtype):
        return pc.load_llama(a.model, dtype, a.perturb, "llama_peers")
    model = load(torch.bfloat16)
    fw = f"transformers {transformers.__version__} LlamaForCausalLM (sdpa)"
    peer_dtype = pc.params_dtype(model)
    layers = list(model.model.layers)
    n = len(layers)
    layer_bytes = pc.module_bytes(layers[0])
    # Everything but the decoder layers lives on the device in every mode.
    for name, child in model.model.named_children():
        if name != "layers":
            child.to(device)
    model.lm_head.to(device)
    bw = pc.pinned_bandwidth(device)
    rows = []
    yardstick, resident = None, {}
    if a.ref_dir:
        os.makedirs(a.ref_dir, exist_ok=True)
    modes = [m for m in a.modes.split(",") if m]
    if modes[0] != "resident":
        sys.exit("llama_peers: the first of --modes must be resident (the bound and every check use it)")
    for tokens in [int(t) for t in a.tokens.split(",")]:
        ids = torch.tensor([pc.llama_ids(tokens, model.config.vocab_size)] * a.batch, device=device)
        pos = torch.tensor(pc.logit_positions(tokens), device=device)

        def run_pass():
            with torch.no_grad():
                return model(input_ids=ids, use_cache=False).logits

        for mode in modes:
            undo, pf = None, None
            if mode == "resident":
                for l in layers:
                    l.to(device)
            elif mode == "naive":
                undo = pc.NaiveSwap(layers, device).remove
            elif mode == "accelerate":
                saved = pc.accelerate_offload(layers, device)
                undo = lambda: pc.accelerate_remove(layers, saved)  # noqa: E731
            elif mode == "prefetch":
                for l in layers:
                    l.to("cpu")
                pf = pc.StreamPrefetch(layers, device)
                undo = pf.remove
            else:
                sys.exit(f"unknown mode {mode}")

            def timed():
                if pf:
                    pf.start()
                return run_pass()
            extra = {}
            try:
                pc.reset_peak(device)
                secs, times, out = pc.time_passes(timed, device, a.iters)
                out = out[0].index_select(0, pos).float().cpu()
                peak = pc.peak_bytes(device)
                if mode == "resident":
                    resident[tokens] = (secs, out)
                    if a.ref_dir:
                        save_file({"logits": out.contiguous()}, os.path.join(a.ref_dir, f"llama_ref_{tokens}.safetensors"),
                                  metadata={"dtype": peer_dtype, "framework": fw})
                        extra["ref"] = os.path.join(a.ref_dir, f"llama_ref_{tokens}.safetensors")
                        if yardstick is None:  # transformers' own bf16 error: the model in float32, first length
                            m32 = load(torch.float32).to(device)
                            with torch.no_grad():
                                out32 = m32(input_ids=ids, use_cache=False).logits[0].index_select(0, pos).float().cpu()
                            del m32
                            yardstick = pc.rel_err(out, out32)["rel_l2"]
                            extra["bf16_error_tokens"] = tokens
            except Exception as e:  # a mode that breaks FAILS its row; the other modes still run
                traceback.print_exc()
                rows.append({"workload": "llama", "mode": mode, "tokens": a.batch * tokens, "seconds": float("nan"),
                             "rc": 1, "error": f"{type(e).__name__}: {e}"[-2000:], "framework": fw, "dtype": peer_dtype})
                if mode == "resident":
                    break  # nothing to check the others against at this length
                continue
            finally:
                if undo:
                    undo()
                for l in layers:
                    l.to("cpu")
            res_s, res_out = resident[tokens]
            check = pc.check_output(out, res_out, pc.tolerance(yardstick), "transformers resident")
            moved = 0 if mode == "resident" else n * layer_bytes
            rows.append(pc.row("llama", mode, a.batch * tokens, secs, moved, res_s, bw.get("pinned_h2d_gbs"),
                               blocks=n, block_bytes=layer_bytes, batch=a.batch, seq=tokens, framework=fw,
                               times=[round(t, 6) for t in times], iters=len(times), warmup=1, device=str(device),
                               dtype=peer_dtype, dtype_check=pc.check_dtype(peer_dtype, "bfloat16", "the weights on disk"),
                               check=check, check_required=True, device_peak_bytes_peer=peak,
                               bf16_error_vs_fp32=yardstick and round(yardstick, 6), perturbed=a.perturb or None,
                               **extra, **{k: v for k, v in bw.items() if k != "bytes"}))
            pc.save_partial(rows, a.out)
    if a.ref_dir:
        with open(os.path.join(a.ref_dir, "llama_ref.json"), "w") as f:
            json.dump({"bf16_error_vs_fp32": yardstick, "tolerance": pc.tolerance(yardstick), "dtype": peer_dtype,
                       "framework": fw, "positions": "peers_common.logit_positions", "perturbed": a.perturb or None,
                       "resident_seconds": {str(k): v[0] for k, v in resident.items()}}, f, indent=1)
    return pc.emit(rows, a.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write a random Llama in HF layout")
    m.add_argument("--out", required=True)
    m.add_argument("--layers", type=int, default=8)
    m.add_argument("--hidden", type=int, default=4096)
    m.add_argument("--ffn", type=int, default=11008)
    m.add_argument("--heads", type=int, default=32)
    m.add_argument("--kv-heads", type=int, default=0, help="0: as many as --heads")
    m.add_argument("--vocab", type=int, default=32000)
    m.add_argument("--max-pos", type=int, default=8192)
    m.add_argument("--shard", default="2GB")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--force", action="store_true")
    m.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t = sub.add_parser("time", help="time the peers on a checkpoint")
    t.add_argument("--model", required=True)
    t.add_argument("--tokens", default="512,2048,8192", help="sequence lengths (one sequence each unless --batch)")
    t.add_argument("--batch", type=int, default=1)
    t.add_argument("--modes", default="resident,accelerate,prefetch", help="resident first; also: naive")
    t.add_argument("--iters", type=int, default=pc.ITERS, help="timed passes per row (>= 5 for the docs)")
    t.add_argument("--ref-dir", default="", help="write the reference logits for the pipeswap rows here")
    t.add_argument("--perturb", default="", help="NAME[:FACTOR]: scale one peer tensor (negative check)")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--out", default="")
    a = ap.parse_args()
    return make(a) if a.cmd == "make" else time_peers(a)


if __name__ == "__main__":
    sys.exit(main())
