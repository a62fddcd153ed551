#!/usr/bin/env python3
"""The peers of the Wan rows in docs/benchmarks.md: a Wan2.1 block stack (written by wan_stack.py)
run in PyTorch with every swapping method users have today, in one process, at several lengths.

The block is Wan2.1's WanAttentionBlock (t2v): self-attention on LayerNorm(x) modulated by e, with
RMSNorm on q and k and Wan's 3D RoPE (frames, height, width) on them; cross-attention to the text
context after norm3; a tanh-GELU FFN modulated by e; gates from e. Attention is PyTorch's SDPA (flash
kernels on the GPU, as Wan's flash_attention). Departures, for speed only: RoPE in float32 instead
of float64, and the residual stream kept in bf16 between blocks (as pipeswap's Wan does).

Per length (tokens = F x 32 x 32: latents F x 64 x 64 after 1x2x2 patches) one row per mode
(peers_common.py: resident, naive, accelerate, prefetch), each time over the bound
max(resident compute, bytes moved / pinned host->device bandwidth measured in this run).

    python3 bench/wan_peers.py --model /scratch/wan16 --tokens 1024,4096,16384 --out wan_peers.json
    python3 bench/wan_peers.py --model /tmp/tiny --device cpu --tokens 64 --grid-hw 4 --check
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_common as pc  # noqa: E402


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm32(nn.LayerNorm):
    """Wan's norm3: LayerNorm with weight and bias, computed in float32 (returns float32)."""

    def forward(self, x):
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)


class Attention(nn.Module):
    def __init__(self, dim, heads, eps):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x, context=None, rope=None):
        b, s = x.shape[:2]
        src = x if context is None else context
        q = self.norm_q(self.q(x)).view(b, s, self.heads, self.head_dim)
        k = self.norm_k(self.k(src)).view(b, src.shape[1], self.heads, self.head_dim)
        v = self.v(src).view(b, src.shape[1], self.heads, self.head_dim)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o(y.transpose(1, 2).flatten(2))


class WanBlock(nn.Module):
    """Wan2.1 WanAttentionBlock (t2v, qk_norm, cross_attn_norm); parameter names as in the checkpoint."""

    def __init__(self, dim, ffn, heads, eps=1e-6):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.self_attn = Attention(dim, heads, eps)
        self.norm3 = LayerNorm32(dim, eps=eps, elementwise_affine=True)
        self.cross_attn = Attention(dim, heads, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(approximate="tanh"), nn.Linear(ffn, dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))

    def norm(self, x):
        return F.layer_norm(x.float(), (self.dim,), eps=self.eps)

    def forward(self, x, e, context, rope):
        dt = x.dtype
        m = (self.modulation.float() + e).chunk(6, dim=1)
        y = self.self_attn((self.norm(x) * (1 + m[1]) + m[0]).to(dt), rope=rope)
        x = (x.float() + y.float() * m[2]).to(dt)
        x = x + self.cross_attn(self.norm3(x).to(dt), context=context)
        y = self.ffn((self.norm(x) * (1 + m[4]) + m[3]).to(dt))
        return (x.float() + y.float() * m[5]).to(dt)


def rope_table(head_dim, grid, device, max_len=1024, theta=10000.0):
    """Wan2.1's 3D RoPE for a (frames, height, width) grid: cos and sin [L, 1, head_dim / 2]."""
    def params(dim):
        return torch.outer(torch.arange(max_len, dtype=torch.float64),
                           1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64).div(dim)))
    d = head_dim
    tables = [params(d - 4 * (d // 6)), params(2 * (d // 6)), params(2 * (d // 6))]
    f, h, w = grid
    angles = torch.cat([tables[0][:f].view(f, 1, 1, -1).expand(f, h, w, -1),
                        tables[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
                        tables[2][:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, 1, -1)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rope(x, rope):
    """Rotates channel pairs (2i, 2i+1) as Wan's complex product does; x [B, L, H, D]."""
    cos, sin = rope
    xr = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = xr[..., 0], xr[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).type_as(x)


def open_weights(model_dir):
    """(config, get) for a directory written by wan_stack.py: get(name) reads one tensor by its
    checkpoint name from whichever shard holds it (shards opened once)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
    else:
        with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as sf:
            weight_map = {k: "model.safetensors" for k in sf.keys()}
    handles = {}

    def get(key):
        fname = weight_map[key]
        if fname not in handles:
            handles[fname] = safe_open(os.path.join(model_dir, fname), "pt")
        return handles[fname].get_tensor(key)
    return cfg, get


def load_blocks(model_dir, n, dtype, first=0):
    """Blocks first .. first+n-1 (n = 0: all from first on) as WanBlock modules on the CPU."""
    cfg, get = open_weights(model_dir)
    n = min(n, cfg["num_layers"] - first) if n else cfg["num_layers"] - first
    blocks = []
    for i in range(first, first + n):
        blk = WanBlock(cfg["dim"], cfg["ffn_dim"], cfg["num_heads"], cfg.get("eps", 1e-6)).to(dtype)
        blk.load_state_dict({name: get(f"blocks.{i}.{name}").to(dtype) for name in blk.state_dict()})
        blk.requires_grad_(False)
        blocks.append(blk)
    return cfg, blocks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a directory written by wan_stack.py")
    ap.add_argument("--blocks", type=int, default=0, help="first N blocks (0: all)")
    ap.add_argument("--tokens", default="1024,4096,16384", help="lengths; each a multiple of grid-hw^2")
    ap.add_argument("--grid-hw", type=int, default=32, help="patch grid height = width (latents 2x that)")
    ap.add_argument("--modes", default="resident,naive,accelerate,prefetch")
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--check", action="store_true", help="also check every mode's output equals resident's")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    device = torch.device(a.device)
    dtype = torch.bfloat16
    torch.manual_seed(0)
    cfg, blocks = load_blocks(a.model, a.blocks, dtype)
    n, dim, heads = len(blocks), cfg["dim"], cfg["num_heads"]
    block_bytes = pc.module_bytes(blocks[0])
    bw = pc.pinned_bandwidth(device)
    rows = []
    modes = a.modes.split(",")
    for tokens in [int(t) for t in a.tokens.split(",")]:
        frames = tokens // (a.grid_hw * a.grid_hw)
        assert frames * a.grid_hw * a.grid_hw == tokens, f"{tokens} tokens is not F x {a.grid_hw} x {a.grid_hw}"
        x0 = torch.randn(1, tokens, dim, device=device, dtype=dtype)
        e = 0.1 * torch.randn(1, 6, dim, device=device, dtype=torch.float32)
        ctx = torch.randn(1, cfg.get("text_len", 512), dim, device=device, dtype=dtype)
        rope = rope_table(dim // heads, (frames, a.grid_hw, a.grid_hw), device)

        def run_pass():
            x = x0
            with torch.no_grad():
                for b in blocks:
                    x = b(x, e, ctx, rope)
            return x

        resident_s, ref = None, None
        for mode in modes:
            if mode == "resident":
                for b in blocks:
                    b.to(device)
                moved, undo = 0, None
            elif mode == "naive":
                undo, moved = pc.NaiveSwap(blocks, device).remove, n * block_bytes
            elif mode == "accelerate":
                saved = pc.accelerate_offload(blocks, device)
                undo, moved = (lambda: pc.accelerate_remove(blocks, saved)), n * block_bytes
            elif mode == "prefetch":
                for b in blocks:
                    b.to("cpu")
                pf = pc.StreamPrefetch(blocks, device)
                inner = run_pass

                def run_pass():  # noqa: F811 - the first copy starts before the pass
                    pf.start()
                    return inner()
                undo, moved = pf.remove, n * block_bytes
            else:
                sys.exit(f"unknown mode {mode}")
            try:
                secs, times = pc.time_passes(run_pass, device, a.iters)
                if a.check:
                    ref = pc.check_same(run_pass(), ref, f"{mode} at {tokens} tokens")
            finally:
                if mode == "prefetch":
                    run_pass = inner
                if undo:
                    undo()
                for b in blocks:
                    b.to("cpu")
            if mode == "resident":
                resident_s = secs
            rows.append(pc.row("wan", mode, tokens, secs, moved, resident_s, bw.get("pinned_h2d_gbs"),
                               blocks=n, block_bytes=block_bytes, times=[round(t, 6) for t in times],
                               device=str(device), **{k: v for k, v in bw.items() if k != "bytes"}))
        del x0, ctx, rope
    pc.emit(rows, a.out)


if __name__ == "__main__":
    main()
