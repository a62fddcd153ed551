#!/usr/bin/env python3
"""Writes a Wan2.1-sized DiT as real safetensors with random weights, in diffusers' layout: what
`WanTransformer3DModel.save_pretrained` writes (diffusion_pytorch_model[-0000i-of-0000n].safetensors,
diffusion_pytorch_model.safetensors.index.json when sharded, and config.json with
"_class_name": "WanTransformer3DModel"), so that diffusers' own `WanTransformer3DModel.from_pretrained`
and `pipeswap denoise` read the same files.

The weights are stored in bf16, and config.json carries no torch_dtype (diffusers ships none): a
reader learns the dtype from the safetensors headers. The config keys are WanTransformer3DModel's own
(bench/test-peers.sh checks that diffusers loads the directory with no missing or unexpected key and
that config.json equals what diffusers itself saves for the same model).

Defaults are the 14B model's sizes (d 5120 = 40 heads x 128, ffn 13824): one block is 703 MB in bf16.
The weights are drawn on --device (the GPU when there is one: 12 blocks are 8.4 GB) with a fixed seed,
scaled so that activations stay finite through many blocks (the values are not a trained model's).

    python3 bench/wan_stack.py --out /scratch/wan12 --blocks 12
    python3 bench/wan_stack.py --out /tmp/tiny --blocks 3 --dim 64 --ffn 128 --heads 4 --device cpu
"""
import argparse
import json
import os
import sys
import time

import torch
from safetensors.torch import save_file

DIFFUSERS_VERSION = "0.42.1"  # the release the peers run (scripts/python-requirements.txt, .whl on the GPU)
STEM = "diffusion_pytorch_model"


def block_shapes(dim, ffn):
    """Name -> shape of one block's tensors, relative to `blocks.N.` (diffusers' WanTransformerBlock, t2v,
    qk_norm "rms_norm_across_heads", cross_attn_norm: norm1 and norm3 have no parameters)."""
    s = {"scale_shift_table": (1, 6, dim)}
    for attn in ("attn1", "attn2"):
        for p in ("to_q", "to_k", "to_v", "to_out.0"):
            s[f"{attn}.{p}.weight"] = (dim, dim)
            s[f"{attn}.{p}.bias"] = (dim,)
        s[f"{attn}.norm_q.weight"] = (dim,)
        s[f"{attn}.norm_k.weight"] = (dim,)
    s["norm2.weight"] = (dim,)
    s["norm2.bias"] = (dim,)
    s["ffn.net.0.proj.weight"] = (ffn, dim)
    s["ffn.net.0.proj.bias"] = (ffn,)
    s["ffn.net.2.weight"] = (dim, ffn)
    s["ffn.net.2.bias"] = (dim,)
    return s


def other_shapes(dim, in_ch=16, out_ch=16, text_dim=4096, freq_dim=256, patch=(1, 2, 2)):
    """The non-block tensors (patch, time and text embeddings, head), diffusers' names."""
    p = patch[0] * patch[1] * patch[2]
    return {
        "patch_embedding.weight": (dim, in_ch) + tuple(patch),
        "patch_embedding.bias": (dim,),
        "condition_embedder.time_embedder.linear_1.weight": (dim, freq_dim),
        "condition_embedder.time_embedder.linear_1.bias": (dim,),
        "condition_embedder.time_embedder.linear_2.weight": (dim, dim),
        "condition_embedder.time_embedder.linear_2.bias": (dim,),
        "condition_embedder.time_proj.weight": (6 * dim, dim),
        "condition_embedder.time_proj.bias": (6 * dim,),
        "condition_embedder.text_embedder.linear_1.weight": (dim, text_dim),
        "condition_embedder.text_embedder.linear_1.bias": (dim,),
        "condition_embedder.text_embedder.linear_2.weight": (dim, dim),
        "condition_embedder.text_embedder.linear_2.bias": (dim,),
        "proj_out.weight": (out_ch * p, dim),
        "proj_out.bias": (out_ch * p,),
        "scale_shift_table": (1, 2, dim),
    }


def random_tensor(name, shape, gen, device, dtype):
    """Norm weights near 1, biases and the head's modulation table small, matrices ~ U(-1/sqrt(fan_in),
    1/sqrt(fan_in)); the blocks' modulation tables ~ N(0, 0.5^2), so that the gates of self-attention and
    the FFN are O(1) as in a trained model and every block changes the output (with small gates the blocks
    would add a few percent to it, and the same-computation check would hardly see a wrong block)."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith(("norm_q.weight", "norm_k.weight", "norm2.weight")):
        t = 1 + 0.05 * torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    elif name.startswith("blocks.") and leaf == "scale_shift_table":
        t = 0.5 * torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    elif leaf in ("bias", "scale_shift_table"):
        t = 0.02 * torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    else:
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        bound = 1.0 / max(1, fan_in) ** 0.5
        t = torch.empty(shape, device=device, dtype=torch.float32).uniform_(-bound, bound, generator=gen)
    return t.to(dtype).contiguous()


def config(dim, ffn, heads, blocks):
    """config.json as diffusers' save_pretrained writes it for WanTransformer3DModel (no torch_dtype)."""
    return {
        "_class_name": "WanTransformer3DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "added_kv_proj_dim": None,
        "attention_head_dim": dim // heads,
        "cross_attn_norm": True,
        "eps": 1e-06,
        "ffn_dim": ffn,
        "freq_dim": 256,
        "image_dim": None,
        "in_channels": 16,
        "num_attention_heads": heads,
        "num_layers": blocks,
        "out_channels": 16,
        "patch_size": [1, 2, 2],
        "pos_embed_seq_len": None,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 1024,
        "text_dim": 4096,
    }


def sizes(cfg):
    """(blocks, dim, ffn, heads) of a config.json written here (or by diffusers)."""
    return (cfg["num_layers"], cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["ffn_dim"],
            cfg["num_attention_heads"])


def write(out, blocks, dim, ffn, heads, device, shard_gb=4.5, seed=0, dtype=torch.bfloat16, log=print):
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):  # a stale layout (e.g. an older Wan2.1-named stack) must not stay beside this one
        if f.endswith(".safetensors") or f.endswith(".safetensors.index.json"):
            os.remove(os.path.join(out, f))
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
        fname = f"{STEM}.safetensors" if total == 1 else f"{STEM}-{i + 1:05d}-of-{total:05d}.safetensors"
        tensors = {n: random_tensor(n, s, gen, device, dtype).cpu() for n, s in shard}
        for n, t in tensors.items():
            weight_map[n] = fname
            total_bytes += t.numel() * t.element_size()
        save_file(tensors, os.path.join(out, fname), metadata={"format": "pt"})
        del tensors
        log(f"wan_stack: wrote {fname} ({i + 1}/{total}) after {time.time() - t0:.1f} s")
    if total > 1:
        with open(os.path.join(out, f"{STEM}.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}, f,
                      indent=2)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config(dim, ffn, heads, blocks), f, indent=2, sort_keys=True)
        f.write("\n")
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
    print(json.dumps({"wan_stack": a.out, "layout": "diffusers", "dtype": "bfloat16", "blocks": a.blocks,
                      "dim": a.dim, "ffn": a.ffn, "heads": a.heads, "bytes": n,
                      "block_bytes": block_bytes(a.dim, a.ffn), "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
