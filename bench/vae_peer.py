#!/usr/bin/env python3
"""diffusers' AutoencoderKLWan decode at the real Wan2.1 size, the peer of vae_test's VaeMemory rows.

Makes (once) a Wan2.1-config AutoencoderKLWan (base_dim 96, z_dim 16) with random weights from a fixed seed,
saves it in the diffusers layout under --dir (pipeswap loads the same files), then for each SIZE
(HEIGHTxWIDTHxLATENT_FRAMES) decodes seeded latents in bf16 on cuda:0 as WanPipeline does (un-normalised,
then vae.decode), without and with enable_tiling() (diffusers' defaults), and prints the peak device memory
(torch.cuda.max_memory_allocated, counted from the weights and latents already there) and the time.
It writes reference_<SIZE>.safetensors (latents, frames of the untiled decode) beside the weights for
vae_test to compare with.

    python3 bench/vae_peer.py --dir /tmp/vae-real 480x832x21 720x1280x21
"""

import argparse
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffusers import AutoencoderKLWan


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("sizes", nargs="+")
    a = ap.parse_args()
    if not (a.dir / "config.json").exists():
        torch.manual_seed(0)
        vae = AutoencoderKLWan()  # the defaults are Wan2.1's VAE
        with torch.no_grad():
            for p in vae.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        vae.save_pretrained(a.dir, safe_serialization=True)
    vae = AutoencoderKLWan.from_pretrained(a.dir, torch_dtype=torch.bfloat16).to("cuda").eval()
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to("cuda", torch.bfloat16)
    inv_std = (1.0 / torch.tensor(vae.config.latents_std)).view(1, z, 1, 1, 1).to("cuda", torch.bfloat16)
    with torch.no_grad():  # warm-up (cuDNN's first plans), as vae_test does
        vae.decode(torch.randn(1, z, 2, 16, 16, device="cuda", dtype=torch.bfloat16))
    for size in a.sizes:
        h, w, f = (int(v) for v in size.split("x"))
        g = torch.Generator().manual_seed(1)
        latents = torch.randn(1, z, f, h // 8, w // 8, generator=g)
        for tiled in (False, True):
            vae.enable_tiling() if tiled else vae.disable_tiling()
            x = latents.to("cuda", torch.bfloat16)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            with torch.no_grad():
                frames = vae.decode(x / inv_std + mean, return_dict=False)[0]
            torch.cuda.synchronize()
            s = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated()
            print(f"[ diffusers] {h}x{w} x {frames.shape[2]} frames bf16{' tiled' if tiled else ''}: peak "
                  f"{peak / 1e9:.3f} GB (weights and latents {base / 1e9:.3f} GB), {s:.2f} s", flush=True)
            if not tiled:
                save_file({"latents": latents, "frames": frames.cpu().contiguous()},
                          str(a.dir / f"reference_{size}.safetensors"))
            del frames


if __name__ == "__main__":
    main()
