#!/usr/bin/env python3
"""diffusers' AutoencoderKLWan decode at the real Wan2.1 size, the peer of vae_test's VaeMemory rows.

Makes (once) a Wan2.1-config AutoencoderKLWan (base_dim 96, z_dim 16) with random weights from a fixed seed,
saves it in the diffusers layout under --dir (pipeswap loads the same files), then for each SIZE
(HEIGHTxWIDTHxLATENT_FRAMES) decodes seeded latents as WanPipeline does (un-normalised, then vae.decode),
without and with enable_tiling() (diffusers' defaults; --tiling picks one), and prints the peak memory
above what the weights and latents already hold, and the time. On CUDA the peak is
torch.cuda.max_memory_allocated (after a small warm-up decode); on the CPU it is the process's peak resident
set (VmHWM, reset through /proc/self/clear_refs before the decode; no warm-up, and one size and one tiling
per process, since memory freed earlier stays resident), so that vae_test's CPU rows, measured the same
way, compare. It writes reference_<SIZE>.safetensors (latents,
frames of the untiled decode) beside the weights for vae_test to compare with.

    python3 bench/vae_peer.py --dir /tmp/vae-real 480x832x21 720x1280x21          # bf16 on cuda:0
    python3 bench/vae_peer.py --dir /tmp/vae-real --device cpu --dtype float32 --tiling plain 256x256x3
"""

import argparse
import re
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffusers import AutoencoderKLWan


def rss(field):
    """VmRSS or VmHWM of this process, in bytes."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1)) * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--tiling", default="both", choices=["both", "plain", "tiled"])
    ap.add_argument("sizes", nargs="+")
    a = ap.parse_args()
    dev, dtype = torch.device(a.device), getattr(torch, a.dtype)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if not (a.dir / "config.json").exists():
        torch.manual_seed(0)
        vae = AutoencoderKLWan()  # the defaults are Wan2.1's VAE
        with torch.no_grad():
            for p in vae.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        vae.save_pretrained(a.dir, safe_serialization=True)
    vae = AutoencoderKLWan.from_pretrained(a.dir, torch_dtype=dtype).to(dev).eval()
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(dev, dtype)
    inv_std = (1.0 / torch.tensor(vae.config.latents_std)).view(1, z, 1, 1, 1).to(dev, dtype)
    if cuda:
        with torch.no_grad():  # warm-up (cuDNN's first plans), as vae_test does
            vae.decode(torch.randn(1, z, 2, 16, 16, device=dev, dtype=dtype))
    for size in a.sizes:
        h, w, f = (int(v) for v in size.split("x"))
        g = torch.Generator().manual_seed(1)
        latents = torch.randn(1, z, f, h // 8, w // 8, generator=g)
        for tiled in {"both": (False, True), "plain": (False,), "tiled": (True,)}[a.tiling]:
            vae.enable_tiling() if tiled else vae.disable_tiling()
            x = latents.to(dev, dtype)
            sync()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            else:
                Path("/proc/self/clear_refs").write_text("5")
                base = rss("VmRSS")
            t0 = time.perf_counter()
            with torch.no_grad():
                frames = vae.decode(x / inv_std + mean, return_dict=False)[0]
            sync()
            s = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() if cuda else rss("VmHWM")
            print(f"[ diffusers] {h}x{w} x {frames.shape[2]} frames {a.dtype} on {a.device}"
                  f"{' tiled' if tiled else ''}: peak {(peak - base) / 1e9:.3f} GB above the {base / 1e9:.3f} GB of "
                  f"weights and latents, {s:.2f} s", flush=True)
            if not tiled:
                save_file({"latents": latents, "frames": frames.cpu().contiguous()},
                          str(a.dir / f"reference_{size}.safetensors"))
            del frames


if __name__ == "__main__":
    main()
