#!/usr/bin/env python3
"""Writes a Wan2.1-sized DiT as real safetensors with random weights, in Wan2.1's own naming.

The benchmark workload of docs/benchmarks.md: `blocks.N.*` for N blocks of a WanAttentionBlock
(self-attention with q/k RMSNorm, cross-attention to text with norm3, tanh-GELU FFN, modulation),
plus the non-block parts (patch, text and time embeddings, time projection, head), and Wan's
config.json. Shards of about --shard-gb, listed in model.safetensors.index.json, as Wan2.1's own
releases are. Defaults are the 14B model's sizes (d 5120, ffn 13824, 40 heads): one block is 703 MB
in bf16.

The weights are drawn on --device (the GPU when there is one: 16 blocks are 11 GB) with a fixed seed,
scaled so that activations stay finite through many blocks (the values are not a trained model's).

    python3 bench/wan_stack.py --out /scratch/wan16 --blocks 16
    python3 bench/wan_stack.py --out /tmp/tiny --blocks 4 --dim 128 --ffn 256 --heads 4 --device cpu
"""
import argparse
import json
import os
import sys
import time

import torch
from safetensors.torch import save_file


def block_shapes(dim, ffn):
    """Name -> shape of one block's tensors, relative to `blocks.N.` (Wan2.1 WanAttentionBlock, t2v)."""
    s = {}
    for attn in ("self_attn", "cross_attn"):
        for p in ("q", "k", "v", "o"):
            s[f"{attn}.{p}.weight"] = (dim, dim)
            s[f"{attn}.{p}.bias"] = (dim,)
        s[f"{attn}.norm_q.weight"] = (dim,)
        s[f"{attn}.norm_k.weight"] = (dim,)
    s["norm3.weight"] = (dim,)
    s["norm3.bias"] = (dim,)
    s["ffn.0.weight"] = (ffn, dim)
    s["ffn.0.bias"] = (ffn,)
    s["ffn.2.weight"] = (dim, ffn)
    s["ffn.2.bias"] = (dim,)
    s["modulation"] = (1, 6, dim)
    return s


def other_shapes(dim, in_dim=16, out_dim=16, text_dim=4096, freq_dim=256, patch=(1, 2, 2)):
    return {
        "patch_embedding.weight": (dim, in_dim) + tuple(patch),
        "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text_dim),
        "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim),
        "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq_dim),
        "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim),
        "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim),
        "time_projection.1.bias": (6 * dim,),
        "head.head.weight": (out_dim * patch[0] * patch[1] * patch[2], dim),
        "head.head.bias": (out_dim * patch[0] * patch[1] * patch[2],),
        "head.modulation": (1, 2, dim),
    }


def random_tensor(name, shape, gen, device, dtype):
    """Norm weights near 1, biases and modulation small, matrices ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
        t = 1 + 0.05 * torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    elif leaf == "bias" or leaf == "modulation":
        t = 0.02 * torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    else:
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        bound = 1.0 / max(1, fan_in) ** 0.5
        t = torch.empty(shape, device=device, dtype=torch.float32).uniform_(-bound, bound, generator=gen)
    return t.to(dtype).contiguous()


def config(dim, ffn, heads, blocks):
    return {
        "_class_name": "WanModel",
        "model_type": "t2v",
        "dim": dim,
        "ffn_dim": ffn,
        "num_heads": heads,
        "num_layers": blocks,
        "in_dim": 16,
        "out_dim": 16,
        "text_len": 512,
        "freq_dim": 256,
        "eps": 1e-6,
        "patch_size": [1, 2, 2],
        "text_dim": 4096,
        "qk_norm": True,
        "cross_attn_norm": True,
        "window_size": [-1, -1],
    }


def write(out, blocks, dim, ffn, heads, device, shard_gb=4.5, seed=0, dtype=torch.bfloat16, log=print):
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    # Units (the non-block parts, then each block) go whole into shards of about shard_gb.
    units = [list(other_shapes(dim).items())]
    for b in range(blocks):
        units.append([(f"blocks.{b}.{n}", s) for n, s in block_shapes(dim, ffn).items()])
    limit = int(shard_gb * 1e9)
    esize = torch.tensor([], dtype=dtype).element_size()
    shards, cur, cur_bytes = [], [], 0
    for unit in units:
        nbytes = sum(esize * torch.Size(s).numel() for _, s in unit)
        if cur and cur_bytes + nbytes > limit:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur += unit
        cur_bytes += nbytes
    if cur:
        shards.append(cur)
    total = len(shards)
    weight_map, total_bytes = {}, 0
    t0 = time.time()
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if total == 1 else f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        tensors = {n: random_tensor(n, s, gen, device, dtype).cpu() for n, s in shard}
        for n, t in tensors.items():
            weight_map[n] = fname
            total_bytes += t.numel() * t.element_size()
        save_file(tensors, os.path.join(out, fname), metadata={"format": "pt"})
        del tensors
        log(f"wan_stack: wrote {fname} ({i + 1}/{total}) after {time.time() - t0:.1f} s")
    if total > 1:
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config(dim, ffn, heads, blocks), f, indent=1)
    return total_bytes


def block_bytes(dim, ffn, esize=2):
    n = 0
    for s in block_shapes(dim, ffn).values():
        k = 1
        for d in s:
            k *= d
        n += k
    return n * esize


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--dim", type=int, default=5120)
    ap.add_argument("--ffn", type=int, default=13824)
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--shard-gb", type=float, default=4.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--force", action="store_true", help="rewrite even if config.json says the same sizes")
    a = ap.parse_args()
    if a.dim % a.heads:
        sys.exit(f"--dim {a.dim} is not a multiple of --heads {a.heads}")
    cfg_path = os.path.join(a.out, "config.json")
    if not a.force and os.path.exists(cfg_path):
        with open(cfg_path) as f:
            if json.load(f) == config(a.dim, a.ffn, a.heads, a.blocks):
                print(f"wan_stack: {a.out} already holds this stack; --force rewrites it")
                return
    t0 = time.time()
    n = write(a.out, a.blocks, a.dim, a.ffn, a.heads, a.device, a.shard_gb, a.seed)
    print(json.dumps({"wan_stack": a.out, "blocks": a.blocks, "dim": a.dim, "ffn": a.ffn, "heads": a.heads,
                      "bytes": n, "block_bytes": block_bytes(a.dim, a.ffn), "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
