#!/usr/bin/env python3
"""The GPipe peer of the 2-GPU pipeline rows (docs/benchmarks.md, scenario 3): diffusers' own
WanTransformerBlocks of a wan_stack.py checkpoint (WanTransformer3DModel.from_pretrained, bf16), split
into one contiguous stage per rank and run with PyTorch's own pipeline parallelism,
torch.distributed.pipelining (PipelineStage + ScheduleGPipe: all micro-batches fill the pipeline, then
it drains), against the same blocks on one device in the same run.

    python3 -m torch.distributed.run --standalone --nproc-per-node 2 bench/wan_gpipe.py \
        --model /scratch/wan --tokens 4096 --settings 1:cfg,2:cfg,2:nocfg --steps 30 --out gpipe.json
    torchrun --nproc-per-node 2 bench/wan_gpipe.py --model /tmp/tiny --tokens 16 --grid-hw 4 \
        --device cpu --steps 3 --iters 1 --check

The work is pipeswap denoise's (bench/pipeswap_rows.py two-gpu runs the same settings): a setting
B:cfg is B samples with classifier-free guidance, M = 2B micro-batches per step (each sample's
conditional then unconditional pass, as pipeswap orders them); B:nocfg is M = B. Each micro-batch
is one sample's pass: latent tokens [1, L, 64] -> patch embedding (the model's patch_embedding as the
linear map it is on 1x2x2 patches) -> diffusers' WanTransformerBlocks (with a modulation input e
[1, 6, d] standing in for the time projection, the text context [1, 512, d] standing in for the text
embedder's output, conditional or negative, and the model's own RoPE of the grid) -> LayerNorm + the
model's proj_out -> a velocity [1, L, 64] in float32. The stage activation crossing ranks is
(x, e, context), what pipeswap's Wan sends (less its e [1, d]); each stage computes the RoPE tables.

Per length and setting, two rows (rank 0 writes them):
  gpipe one step   seconds for one step of M micro-batches (median of --iters after a warm-up, each
                   started after a barrier; a step ends when the last stage has every output), and the
                   same M micro-batches one after another through every block on rank 0's device (the
                   1-GPU time). The GPipe ideal speed-up on p stages is p M / (M + p - 1) (fill and
                   drain: M + p - 1 stage-times for M micro-batches of p stage-times each).
  gpipe denoise    --steps S Euler steps (Wan's shifted flow-matching sigmas, guidance 5 mixing the
                   pair on the last stage, the velocity [B, L, 64] sent back to rank 0, which keeps the
                   latents), after one warm-up step; against the same loop on one device. GPipe runs
                   one fill-and-drain schedule per step: step s + 1 enters only after step s has left
                   the last stage, so S steps cost S (M + p - 1) stage-times and the speed-up is at most
                   p M / (M + p - 1) (4/3 for M = 2 on 2 GPUs). With exact guidance on one sample no
                   schedule can do better (docs/design-notes.md, "Denoising: the CFG pair"); with two or
                   more samples pipeswap lets a sample's next step overlap the others' current one,
                   which ScheduleGPipe's one-batch-per-call API cannot express.

--check: the pipeline's outputs (one step) and final latents (the loop) against the single-device
results of the same arithmetic, recorded in each row as {max_rel_err, identical, ok (within 1%, bf16)}
(on the CPU they are bit-identical; bench/test-peers.sh requires that).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_common as pc  # noqa: E402
from wan_stack import sizes  # noqa: E402

GUIDANCE = 5.0
SHIFT = 5.0
LATENT_CH = 64  # 16 latent channels x 1x2x2 patch: one token's latent values


def stage_ranges(n, p):
    """Contiguous block ranges [first, end) of p stages, sizes differing by at most one (earlier stages
    larger), as pipeswap's plan splits cuda:0=1,cuda:1=1."""
    sizes = [n // p + (1 if r < n % p else 0) for r in range(p)]
    starts = [sum(sizes[:r]) for r in range(p)]
    return [(s, s + k) for s, k in zip(starts, sizes)]


def sigmas(steps, shift=SHIFT):
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).tolist()


class Stage(nn.Module):
    """Blocks [first, end) of the stack; the first stage embeds the latent tokens, the last applies the
    head. Inputs (latents or x, e, context); outputs (x, e, context), or the velocity on the last stage."""

    def __init__(self, blocks, rope, io, first, last):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rope, self.io, self.first, self.last = rope, io, first, last

    def forward(self, x, e, ctx):
        if self.first:
            x = F.linear(x.to(self.io["pe_w"].dtype), self.io["pe_w"], self.io["pe_b"])
        for b in self.blocks:
            x = b(x, ctx, e, self.rope)
        if not self.last:
            return x, e, ctx
        n = F.layer_norm(x.float(), (x.shape[-1],), eps=1e-6).to(x.dtype)
        return F.linear(n, self.io["head_w"], self.io["head_b"]).float()


def load_io(model, device, dtype):
    """The patch embedding (as a [d, 64] linear map) and the head's linear layer, from diffusers' model."""
    dim = model.patch_embedding.weight.shape[0]
    return {"pe_w": model.patch_embedding.weight.detach().reshape(dim, -1).to(device, dtype),
            "pe_b": model.patch_embedding.bias.detach().to(device, dtype),
            "head_w": model.proj_out.weight.detach().to(device, dtype),
            "head_b": model.proj_out.bias.detach().to(device, dtype)}


def rope_table(model, frames, grid_hw, device):
    """diffusers' own RoPE (cos, sin) of an F x grid x grid token grid (1x2x2 patches), on the device."""
    lat = torch.empty(1, model.config.in_channels, frames, 2 * grid_hw, 2 * grid_hw, device="meta")
    cos, sin = model.rope(lat)
    return cos.to(device), sin.to(device)


def units(lat, e, ctx_c, ctx_n, cfg):
    """Micro-batch inputs of one step, sample-major, cond before uncond: ([M, L, 64], [M, 6, d], [M, 512, d])."""
    b = lat.shape[0]
    if cfg:
        lat_u = lat.repeat_interleave(2, 0)
        ctx_u = torch.cat([ctx_c, ctx_n] * b, 0)
    else:
        lat_u, ctx_u = lat, ctx_c.expand(b, -1, -1)
    m = lat_u.shape[0]
    return lat_u.contiguous(), e.expand(m, -1, -1).contiguous(), ctx_u.contiguous()


def guide(out, b, cfg):
    """[M, L, 64] outputs -> [B, L, 64] velocities (u + g (c - u) per sample with guidance)."""
    if not cfg:
        return out
    o = out.view(b, 2, *out.shape[1:])
    return o[:, 1] + GUIDANCE * (o[:, 0] - o[:, 1])


def timestep_e(e_base, sigma):
    """A stand-in for Wan's time embedding: the modulation input changes with the step."""
    return e_base * (1.0 + sigma)


class Run:
    """One rank's view: its stage module (per length), the single-device module on rank 0, timing."""

    def __init__(self, a):
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", self.rank))
        if a.device == "cuda":
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device(a.device)
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        if self.world < 2:
            sys.exit("wan_gpipe.py needs at least 2 ranks (torchrun --nproc-per-node 2)")
        self.a, self.dtype = a, torch.bfloat16
        from diffusers import WanTransformer3DModel
        self.model = WanTransformer3DModel.from_pretrained(a.model, torch_dtype=self.dtype).eval().requires_grad_(False)
        n, dim, _, heads = sizes(dict(self.model.config))
        self.cfg = {"dim": dim, "num_heads": heads, "num_layers": n}
        self.ranges = stage_ranges(a.blocks or n, self.world)
        first, end = self.ranges[self.rank]
        self.mine = [self.model.blocks[i].to(self.device) for i in range(first, end)]
        self.io = load_io(self.model, self.device, self.dtype)
        self.all_blocks = None
        if self.rank == 0:  # the 1-GPU reference: every block on rank 0's device
            self.all_blocks = self.mine + [self.model.blocks[i].to(self.device)
                                           for i in range(end, self.ranges[-1][1])]

    def sync(self):
        pc.sync(self.device)

    def max_over_ranks(self, x):
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def timed(self, fn, iters, distributed=True):
        """Median seconds of fn() over iters calls after one warm-up; each call starts after a barrier
        and lasts until every rank is done (the slowest rank's time)."""
        fn()
        times = []
        for _ in range(iters):
            if distributed:
                dist.barrier()
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            dt = time.perf_counter() - t0
            times.append(self.max_over_ranks(dt) if distributed else dt)
        return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a directory written by wan_stack.py")
    ap.add_argument("--blocks", type=int, default=0, help="first N blocks (0: all)")
    ap.add_argument("--tokens", default="4096", help="lengths; each a multiple of grid-hw^2")
    ap.add_argument("--grid-hw", type=int, default=32)
    ap.add_argument("--settings", default="1:cfg,2:cfg,2:nocfg",
                    help="B:cfg or B:nocfg, comma-separated (B samples; M = 2B or B micro-batches)")
    ap.add_argument("--steps", type=int, default=30, help="denoising steps S of the loop rows (0: none)")
    ap.add_argument("--iters", type=int, default=5, help="timed one-step calls per row")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    r = Run(a)
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    dim, heads, p = r.cfg["dim"], r.cfg["num_heads"], r.world
    first, last = r.rank == 0, r.rank == p - 1
    rows = []
    settings = []
    for s in a.settings.split(","):
        b, mode = s.split(":")
        settings.append((int(b), mode == "cfg"))
    torch.set_grad_enabled(False)
    for tokens in [int(t) for t in a.tokens.split(",")]:
        frames = tokens // (a.grid_hw * a.grid_hw)
        assert frames * a.grid_hw * a.grid_hw == tokens, f"{tokens} tokens is not F x {a.grid_hw} x {a.grid_hw}"
        rope = rope_table(r.model, frames, a.grid_hw, r.device)
        g = torch.Generator().manual_seed(tokens)
        bmax = max(b for b, _ in settings)
        lat0 = torch.randn(bmax, tokens, LATENT_CH, generator=g).to(r.device)
        e_base = (0.1 * torch.randn(1, 6, dim, generator=g)).to(r.device)
        ctx_c = torch.randn(1, 512, dim, generator=g).to(r.device, r.dtype)
        ctx_n = torch.randn(1, 512, dim, generator=g).to(r.device, r.dtype)
        whole = Stage(r.all_blocks, rope, r.io, True, True) if first else None
        stage_mod = Stage(r.mine, rope, r.io, first, last)

        def one_device_step(lat, e, b, cfg):
            lat_u, e_u, ctx_u = units(lat, e, ctx_c, ctx_n, cfg)
            return torch.cat([whole(lat_u[i:i + 1], e_u[i:i + 1], ctx_u[i:i + 1]) for i in range(lat_u.shape[0])])

        for b, cfg in settings:
            m = b * (2 if cfg else 1)
            sig = sigmas(a.steps or 1)
            e1 = timestep_e(e_base, sig[0])
            # The stage's example tensors of one micro-batch (static shapes: no inference round).
            ex_in = (torch.empty(1, tokens, LATENT_CH if first else dim, device=r.device,
                                 dtype=torch.float32 if first else r.dtype),
                     torch.empty(1, 6, dim, device=r.device), torch.empty(1, 512, dim, device=r.device, dtype=r.dtype))
            ex_out = (torch.empty(1, tokens, LATENT_CH, device=r.device) if last else
                      (torch.empty(1, tokens, dim, device=r.device, dtype=r.dtype),) + ex_in[1:])
            stage = PipelineStage(stage_mod, r.rank, p, r.device, input_args=ex_in, output_args=ex_out)
            sched = ScheduleGPipe(stage, n_microbatches=m)

            def gpipe_step(lat, e):
                """One fill-and-drain schedule of the step's M micro-batches; the last stage returns [M, L, 64]."""
                if first:
                    sched.step(*units(lat, e, ctx_c, ctx_n, cfg))
                    return None
                return sched.step()

            # One step of M micro-batches.
            one_s = one_t = None
            if first:
                one_s, one_t = r.timed(lambda: one_device_step(lat0[:b], e1, b, cfg), a.iters, distributed=False)
            dist.barrier()
            gp_s, gp_t = r.timed(lambda: gpipe_step(lat0[:b], e1), a.iters)
            check = None
            if a.check:
                out = gpipe_step(lat0[:b], e1)
                if last and not first:
                    dist.send(out.contiguous(), 0)
                if first:
                    out = torch.empty(m, tokens, LATENT_CH, device=r.device)
                    dist.recv(out, p - 1)
                    ref = one_device_step(lat0[:b], e1, b, cfg)
                    check = compare(out, ref)
            ideal = p * m / (m + p - 1)
            if first:
                rows.append(row("gpipe one step", tokens, b, cfg, m, p, r, seconds=gp_s, times=gp_t,
                                one_gpu_seconds=one_s, one_gpu_times=one_t, speedup=one_s / gp_s,
                                ideal_speedup=round(ideal, 4), fraction_of_ideal=round(one_s / gp_s / ideal, 4),
                                check=check))

            # The denoising loop: S per-step schedules, the Euler step on rank 0.
            if a.steps:
                sig = sigmas(a.steps)

                def gpipe_loop(steps):
                    lat = lat0[:b].clone() if first else None
                    for s in range(steps):
                        e = timestep_e(e_base, sig[s])
                        out = gpipe_step(lat, e)
                        if last:
                            v = guide(out, b, cfg).contiguous()
                            if not first:
                                dist.send(v, 0)
                        if first:
                            if not last:
                                v = torch.empty(b, tokens, LATENT_CH, device=r.device)
                                dist.recv(v, p - 1)
                            lat += (sig[s + 1] - sig[s]) * v
                    return lat

                def one_device_loop(steps):
                    lat = lat0[:b].clone()
                    for s in range(steps):
                        lat += (sig[s + 1] - sig[s]) * guide(one_device_step(lat, timestep_e(e_base, sig[s]), b, cfg),
                                                            b, cfg)
                    return lat

                loop1_s = None
                if first:
                    one_device_loop(1)  # warm-up
                    r.sync()
                    t0 = time.perf_counter()
                    lat_ref = one_device_loop(a.steps)
                    r.sync()
                    loop1_s = time.perf_counter() - t0
                dist.barrier()
                gpipe_loop(1)  # warm-up
                dist.barrier()
                r.sync()
                t0 = time.perf_counter()
                lat_gp = gpipe_loop(a.steps)
                r.sync()
                loop_s = r.max_over_ranks(time.perf_counter() - t0)
                if first:
                    check = compare(lat_gp, lat_ref) if a.check else None
                    rows.append(row("gpipe denoise", tokens, b, cfg, m, p, r, seconds=loop_s, steps=a.steps,
                                    seconds_per_step=loop_s / a.steps, one_gpu_seconds=loop1_s,
                                    speedup=loop1_s / loop_s, per_step_bound=round(ideal, 4), check=check))
            del sched, stage
        del whole, stage_mod
    if first:
        pc.emit(rows, a.out)
    dist.barrier()
    dist.destroy_process_group()


def compare(out, ref, tol=1e-2):
    """--check: how far the pipeline's result is from the single-device one (ok: within 1%, bf16)."""
    out, ref = out.float().cpu(), ref.float().cpu()
    rel = ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
    ok = rel <= tol  # NaN fails too
    if not ok:
        print(f"wan_gpipe: the pipeline's result differs from one device's: relative error {rel}", flush=True)
    return {"max_rel_err": rel, "identical": bool(torch.equal(out, ref)), "ok": ok}


def row(mode, tokens, b, cfg, m, p, r, **kw):
    out = {"workload": "wan", "mode": mode, "tokens": tokens, "samples": b, "cfg": cfg, "micro_batches": m,
           "stages": p, "blocks": r.ranges[-1][1], "stage_blocks": [e - s for s, e in r.ranges],
           "device": str(r.device), "torch": torch.__version__}
    for k, v in kw.items():
        out[k] = round(v, 6) if isinstance(v, float) else ([round(x, 6) for x in v] if isinstance(v, list) else v)
    return out


if __name__ == "__main__":
    main()
