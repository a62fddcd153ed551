#!/usr/bin/env python3
"""Reference fixtures for the Wan DiT tests: tiny WanTransformer3DModel checkpoints run by diffusers.

Builds tiny text-to-video and image-to-video models from a fixed seed with diffusers' own
WanTransformer3DModel (every parameter perturbed, so no norm weight is exactly one and no bias zero),
saves them with diffusers' save_pretrained (the T2V one sharded), writes a copy of the T2V model in the
original Wan2.1 naming (`blocks.N.self_attn.q.weight`, Wan config.json) and runs, in fp32 on the CPU:

  forward.safetensors   one forward pass of a batch of 2 (different timesteps):
                        latents, timestep, context (text_len tokens, zero-padded as Wan2.1 pads),
                        context_short (the same without the padding: the Wan2.1-named model pads it itself),
                        output (float32 [2, C, F, H, W])
  denoise.safetensors   a 4-step flow-matching Euler loop with classifier-free guidance:
                        latents (initial noise), context, context_null, output (the final latents);
                        the metadata holds steps, guidance and shift
  i2v_forward.safetensors  the I2V model: latents (noise + image condition on channels), timestep,
                        context (512 tokens: diffusers' I2V attention assumes 512 text tokens),
                        clip_fea, output

The Euler loop (the schedule pipeswap's `denoise` implements; written here independently of it):
    s_i = 1 - i / S (i = 0..S), sigma_i = shift * s_i / (1 + (shift - 1) * s_i)
    v   = model(x, 1000 * sigma_i, context_null) + g * (model(x, 1000 * sigma_i, context) - the same)
    x  <- x + (sigma_{i+1} - sigma_i) * v

Run from the repository root with torch, diffusers and safetensors installed:

    python3 tests/reference/make_wan_fixtures.py [--out DIR] [--seed N]

--out writes the three directories elsewhere; --seed N changes every weight and input (default 0, the
committed fixtures' seed: the models take N and N + 2, the inputs N + 1).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import WanTransformer3DModel

OUT = Path(__file__).resolve().parent / "fixtures"

# diffusers name -> Wan2.1 name (block keys keep their "blocks.N." prefix).
TO_WAN = [
    ("scale_shift_table", "modulation"),
    ("attn1.to_q.", "self_attn.q."), ("attn1.to_k.", "self_attn.k."), ("attn1.to_v.", "self_attn.v."),
    ("attn1.to_out.0.", "self_attn.o."), ("attn1.norm_q.", "self_attn.norm_q."),
    ("attn1.norm_k.", "self_attn.norm_k."), ("norm2.", "norm3."),
    ("attn2.to_q.", "cross_attn.q."), ("attn2.to_k.", "cross_attn.k."), ("attn2.to_v.", "cross_attn.v."),
    ("attn2.to_out.0.", "cross_attn.o."), ("attn2.norm_q.", "cross_attn.norm_q."),
    ("attn2.norm_k.", "cross_attn.norm_k."), ("attn2.add_k_proj.", "cross_attn.k_img."),
    ("attn2.add_v_proj.", "cross_attn.v_img."), ("attn2.norm_added_k.", "cross_attn.norm_k_img."),
    ("ffn.net.0.proj.", "ffn.0."), ("ffn.net.2.", "ffn.2."),
]
TOP_TO_WAN = [
    ("patch_embedding.", "patch_embedding."),
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
    ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
    ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
    ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
    ("proj_out.", "head.head."),
    ("scale_shift_table", "head.modulation"),
]


def wan_name(name):
    if name.startswith("blocks."):
        _, n, rest = name.split(".", 2)
        for a, b in TO_WAN:
            if rest.startswith(a):
                return f"blocks.{n}.{b}{rest[len(a):]}"
    else:
        for a, b in TOP_TO_WAN:
            if name.startswith(a):
                return b + name[len(a):]
    raise KeyError(name)


def tiny_model(seed, **extra):
    torch.manual_seed(seed)
    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
               text_dim=16, freq_dim=16, ffn_dim=40, num_layers=3, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    cfg.update(extra)
    model = WanTransformer3DModel(**cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def run(model, latents, t, context, clip=None):
    with torch.no_grad():
        return model(hidden_states=latents, timestep=t, encoder_hidden_states=context,
                     encoder_hidden_states_image=clip, return_dict=False)[0].float()


def sigmas(steps, shift):
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift * s / (1 + (shift - 1) * s)


def denoise(model, x, context, context_null, steps, guidance, shift):
    sig = sigmas(steps, shift)
    for i in range(steps):
        t = torch.full((x.shape[0],), float(sig[i] * 1000))
        cond = run(model, x, t, context)
        uncond = run(model, x, t, context_null)
        v = uncond + guidance * (cond - uncond)
        x = x + float(sig[i + 1] - sig[i]) * v
    return x


def write_wan_layout(model, dest, text_len):
    """The same weights in Wan2.1's own naming and config.json (one file)."""
    dest.mkdir(parents=True)
    sd = {wan_name(k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(dest / "diffusion_pytorch_model.safetensors"))
    c = model.config
    cfg = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "t2v",
           "dim": c.num_attention_heads * c.attention_head_dim, "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim,
           "num_heads": c.num_attention_heads, "num_layers": c.num_layers, "in_dim": c.in_channels,
           "out_dim": c.out_channels, "text_dim": c.text_dim, "text_len": text_len, "eps": c.eps,
           "patch_size": list(c.patch_size), "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True}
    (dest / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="directory to write into (default: the committed fixtures)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the T2V model (inputs N + 1, I2V model N + 2)")
    a = ap.parse_args()
    root, seed = a.out, a.seed
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = False
    meta = {"diffusers": diffusers.__version__, "torch": torch.__version__.split("+")[0]}

    # Text-to-video.
    t2v = tiny_model(seed)
    for name in ("wan-t2v-diffusers", "wan-t2v-wan21"):
        shutil.rmtree(root / name, ignore_errors=True)
    t2v.save_pretrained(root / "wan-t2v-diffusers", max_shard_size="40KB", safe_serialization=True)
    text_len = 7
    write_wan_layout(t2v, root / "wan-t2v-wan21", text_len)

    g = torch.Generator().manual_seed(seed + 1)
    latents = torch.randn(2, 4, 3, 4, 6, generator=g)          # grid 3 x 2 x 3 = 18 tokens
    t = torch.tensor([999.0, 420.5])
    short = torch.randn(2, 5, 16, generator=g)                  # 5 real tokens of text
    context = torch.cat([short, torch.zeros(2, text_len - 5, 16)], 1)
    out = run(t2v, latents, t, context)
    save_file({"latents": latents, "timestep": t, "context": context, "context_short": short.contiguous(),
               "output": out.contiguous()},
              str(root / "wan-t2v-diffusers" / "forward.safetensors"), metadata=meta)

    steps, guidance, shift = 4, 5.0, 3.0
    noise = torch.randn(1, 4, 3, 4, 6, generator=g)
    ctx = torch.cat([torch.randn(1, 5, 16, generator=g), torch.zeros(1, text_len - 5, 16)], 1)
    ctx_null = torch.zeros(1, text_len, 16)  # Wan's negative prompt is a real text; zeros keep the fixture small
    ctx_null[:, :3] = torch.randn(1, 3, 16, generator=g)
    final = denoise(t2v, noise, ctx, ctx_null, steps, guidance, shift)
    save_file({"latents": noise, "context": ctx, "context_null": ctx_null, "output": final.contiguous()},
              str(root / "wan-t2v-diffusers" / "denoise.safetensors"),
              metadata=dict(meta, steps=str(steps), guidance=str(guidance), shift=str(shift)))

    # Image-to-video: CLIP features through img_emb, image keys in every cross-attention.
    i2v = tiny_model(seed + 2, in_channels=8, image_dim=10, added_kv_proj_dim=24)
    shutil.rmtree(root / "wan-i2v-diffusers", ignore_errors=True)
    i2v.save_pretrained(root / "wan-i2v-diffusers", safe_serialization=True)
    lat = torch.randn(1, 8, 2, 4, 4, generator=g)
    ctx = torch.randn(1, 512, 16, generator=g)
    clip = torch.randn(1, 6, 10, generator=g)
    t = torch.tensor([731.0])
    out = run(i2v, lat, t, ctx, clip)
    save_file({"latents": lat, "timestep": t, "context": ctx, "clip_fea": clip, "output": out.contiguous()},
              str(root / "wan-i2v-diffusers" / "i2v_forward.safetensors"), metadata=meta)

    for d in ("wan-t2v-diffusers", "wan-t2v-wan21", "wan-i2v-diffusers"):
        size = sum(f.stat().st_size for f in (root / d).iterdir())
        print(f"{d}: {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
