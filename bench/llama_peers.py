#!/usr/bin/env python3
"""The peers of the Llama rows in docs/benchmarks.md: a Llama-family checkpoint in Hugging Face layout
run by transformers (AutoModelForCausalLM) with every swapping method of peers_common.py applied to its
decoder layers (embeddings, final norm and lm_head stay on the device), in one process.

    # a random Llama with Llama-2-7B-sized layers (8 of them: 3.7 GB in bf16), written on the GPU
    python3 bench/llama_peers.py make --out /scratch/llama8 --layers 8
    python3 bench/llama_peers.py time --model /scratch/llama8 --tokens 512,2048 --out llama_peers.json
    # tiny, on the CPU (the CI-sized check of this script)
    python3 bench/llama_peers.py make --out /tmp/tl --layers 2 --hidden 64 --ffn 128 --heads 4 --vocab 256 --device cpu
    python3 bench/llama_peers.py time --model /tmp/tl --tokens 16 --device cpu --check
"""
import argparse
import json
import os
import sys
import time

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
    model = model.to(torch.bfloat16)
    model.config.torch_dtype = "bfloat16"
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, max_shard_size=a.shard)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"llama": a.out, "layers": a.layers, "hidden": a.hidden, "bytes": nbytes,
                      "layer_bytes": pc.module_bytes(model.model.layers[0]), "seconds": round(time.time() - t0, 1)}))


def time_peers(a):
    from transformers import AutoModelForCausalLM
    device = torch.device(a.device)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16) if _has_dtype_kw() else \
        AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.bfloat16)
    model.eval().requires_grad_(False)
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
    gen = torch.Generator().manual_seed(0)
    for tokens in [int(t) for t in a.tokens.split(",")]:
        ids = torch.randint(0, model.config.vocab_size, (a.batch, tokens), generator=gen).to(device)

        def run_pass():
            with torch.no_grad():
                return model(input_ids=ids, use_cache=False).logits

        resident_s, ref = None, None
        for mode in a.modes.split(","):
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
            try:
                secs, times = pc.time_passes(timed, device, a.iters)
                if a.check:
                    ref = pc.check_same(timed(), ref, f"{mode} at {tokens} tokens")
            finally:
                if undo:
                    undo()
                for l in layers:
                    l.to("cpu")
            if mode == "resident":
                resident_s = secs
            moved = 0 if mode == "resident" else n * layer_bytes
            rows.append(pc.row("llama", mode, a.batch * tokens, secs, moved, resident_s, bw.get("pinned_h2d_gbs"),
                               blocks=n, block_bytes=layer_bytes, batch=a.batch, seq=tokens,
                               times=[round(t, 6) for t in times], device=str(device),
                               **{k: v for k, v in bw.items() if k != "bytes"}))
    pc.emit(rows, a.out)


def _has_dtype_kw():
    import transformers
    return int(transformers.__version__.split(".")[0]) >= 5  # transformers 5 renamed torch_dtype to dtype


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
    m.add_argument("--max-pos", type=int, default=4096)
    m.add_argument("--shard", default="2GB")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--force", action="store_true")
    m.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t = sub.add_parser("time", help="time the peers on a checkpoint")
    t.add_argument("--model", required=True)
    t.add_argument("--tokens", default="512,2048", help="sequence lengths (one sequence each unless --batch)")
    t.add_argument("--batch", type=int, default=1)
    t.add_argument("--modes", default="resident,naive,accelerate,prefetch")
    t.add_argument("--iters", type=int, default=2)
    t.add_argument("--check", action="store_true")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--out", default="")
    a = ap.parse_args()
    make(a) if a.cmd == "make" else time_peers(a)


if __name__ == "__main__":
    main()
