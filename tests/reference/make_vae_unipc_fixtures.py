#!/usr/bin/env python3
"""Reference fixtures for the Wan VAE decoder and the flow-matching UniPC sampler, made by diffusers itself.

wan-vae-diffusers/   a tiny random AutoencoderKLWan (the Wan2.1 structure: dim_mult [1, 2, 4, 4], two
                     temporal upsamplings, 8x spatial; small channel counts; every parameter perturbed so no
                     norm weight is exactly one), saved with diffusers' save_pretrained (config.json,
                     diffusion_pytorch_model.safetensors), and decode.safetensors:
    latents          float32 [2, Z, 3, 4, 6]: latents as the DiT leaves them (normalised)
    output           float32 [2, 3, 9, 32, 48]: AutoencoderKLWan.decode of the un-normalised latents, the way
                     WanPipeline un-normalises them (latents / (1 / latents_std) + latents_mean, in the VAE
                     dtype), clamped to [-1, 1] by diffusers; decoded in float64 (see below)
    latents_tiled    float32 [1, Z, 3, 7, 9]: a size that tiles with the tile settings in the metadata
    output_tiled     float32 [1, 3, 9, 56, 72]: the same decode with enable_tiling(those settings): 3 x 3
                     tiles, the last row and column shorter than the others, blended over 16 pixels
    metadata         tile_* (enable_tiling's arguments), bf16_error and bf16_error_tiled: how far diffusers'
                     own bf16 decode (CPU) is from its float64 one (|difference| / |float64 frames|, 2-norms
                     over all values), the yardstick of the bf16 tolerance in tests/vae_test.cpp
  Three latent frames: the first decodes alone to one frame, the next two to four frames each, so the
  feature cache is used both with one cached frame and with two.

unipc/unipc.safetensors   diffusers' UniPCMultistepScheduler configured as Wan2.1-T2V-*-Diffusers ships it
                     (scheduler/scheduler_config.json: flow sigmas, flow_prediction, predict_x0, bh2, order 2,
                     lower_order_final, final sigma zero) and variants (shift, steps, order 1 and 3,
                     disable_corrector), each run on a fixed fake model whose output is a smooth function of the
                     sample and the timestep. (Left out: settings diffusers itself turns into NaN or a singular
                     solve with flow sigmas: bh1, lower_order_final off, final_sigmas_type sigma_min.)
    noise            float32 [1, 4, 3, 4, 6]: the initial sample of every case
    timesteps_<case> int64 [steps]:  scheduler.timesteps after set_timesteps(steps)
    sigmas_<case>    float32 [steps + 1]: scheduler.sigmas
    output_model_<case>    float32 [steps, ...]: the fake model's output at each step (what step() was given)
    output_samples_<case>  float32 [steps + 1, ...]: the sample before each step, then the final sample
    metadata         <case>: the scheduler config overrides (JSON) and steps
unipc/scheduler_config.json   the Wan2.1 scheduler config the cases start from

Run from the repository root with torch, diffusers and safetensors installed (after make_fixtures.py,
which rewrites the whole fixtures directory):

    python3 tests/reference/make_vae_unipc_fixtures.py [--out DIR] [--seed N]

--seed N changes every weight and input (default 0, the committed fixtures' seed: the VAE takes N, its
inputs N + 1, the sampler's noise N + 2).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler

OUT = Path(__file__).resolve().parent / "fixtures"
Z = 8
TILES = dict(tile_sample_min_height=40, tile_sample_min_width=48, tile_sample_stride_height=24,
             tile_sample_stride_width=32)

# Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json (the 14B repo differs only in flow_shift).
WAN_SCHEDULER = {
    "_class_name": "UniPCMultistepScheduler", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
    "disable_corrector": [], "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero", "flow_shift": 3.0,
    "lower_order_final": True, "num_train_timesteps": 1000, "predict_x0": True,
    "prediction_type": "flow_prediction", "rescale_betas_zero_snr": False, "sample_max_value": 1.0,
    "solver_order": 2, "solver_p": None, "solver_type": "bh2", "steps_offset": 0, "thresholding": False,
    "timestep_spacing": "linspace", "trained_betas": None, "use_beta_sigmas": False,
    "use_exponential_sigmas": False, "use_flow_sigmas": True, "use_karras_sigmas": False,
}
# name -> (steps, overrides of WAN_SCHEDULER)
CASES = {
    "wan_shift3_steps10": (10, {}),
    "wan_shift5_steps50": (50, {"flow_shift": 5.0}),
    "wan_shift5_steps7": (7, {"flow_shift": 5.0}),
    "wan_shift3_steps1": (1, {}),
    "wan_shift3_steps2": (2, {}),
    "order1_steps5": (5, {"solver_order": 1}),
    "order3_steps8": (8, {"solver_order": 3, "flow_shift": 2.0}),
    "no_corrector_1_3_steps6": (6, {"disable_corrector": [1, 3], "flow_shift": 7.0}),
}


def tiny_vae(seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    mean = (torch.randn(Z, generator=g) * 0.5).tolist()
    std = (torch.rand(Z, generator=g) * 2 + 0.5).tolist()
    vae = AutoencoderKLWan(base_dim=4, decoder_base_dim=4, z_dim=Z, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                           temperal_downsample=[False, True, True], latents_mean=mean, latents_std=std).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vae


def decode(vae, latents, dtype=torch.float32, tiles=None):
    """WanPipeline's last lines: un-normalise with the config's mean and std in the VAE dtype, then decode."""
    vae = vae.to(dtype)
    if tiles:
        vae.enable_tiling(**tiles)
    else:
        vae.disable_tiling()
    z = latents.to(dtype)
    mean = torch.tensor(vae.config.latents_mean).view(1, Z, 1, 1, 1).to(dtype)
    inv_std = (1.0 / torch.tensor(vae.config.latents_std)).view(1, Z, 1, 1, 1).to(dtype)
    with torch.no_grad():
        out = vae.decode(z / inv_std + mean, return_dict=False)[0]
    vae.to(torch.float32)
    vae.disable_tiling()
    return out.float().contiguous()


def fake_model(x, t):
    """A smooth stand-in for a DiT's flow prediction: depends on the sample and the timestep."""
    return torch.tanh(x) * (0.5 + t / 1000.0) + 0.3 * x - 0.2 * torch.sin(2.0 * x)


def run_unipc(steps, overrides, noise):
    sched = UniPCMultistepScheduler.from_config(dict(WAN_SCHEDULER, **overrides))
    sched.set_timesteps(steps)
    sched.set_begin_index(0)  # as WanPipeline does
    x = noise.clone()
    samples, outputs = [x], []
    for t in sched.timesteps:
        v = fake_model(x, float(t))
        outputs.append(v)
        x = sched.step(v, t, x, return_dict=False)[0]
        samples.append(x)
    return (sched.timesteps.clone(), sched.sigmas.clone().float(), torch.stack(outputs).contiguous(),
            torch.stack(samples).contiguous())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="directory to write into (default: the committed fixtures)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the VAE (its inputs N + 1, the sampler's N + 2)")
    a = ap.parse_args()
    root, seed = a.out, a.seed
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    meta = {"diffusers": diffusers.__version__, "torch": torch.__version__.split("+")[0], "seed": str(seed)}

    # --- the VAE decoder ---
    vae = tiny_vae(seed)
    vdir = root / "wan-vae-diffusers"
    shutil.rmtree(vdir, ignore_errors=True)
    vae.save_pretrained(vdir, safe_serialization=True)
    g = torch.Generator().manual_seed(seed + 1)
    latents = torch.randn(2, Z, 3, 4, 6, generator=g)
    latents_tiled = torch.randn(1, Z, 3, 7, 9, generator=g)
    # The references are decoded in float64 (stored as float32): float32 decodes of this VAE differ by up to
    # 2e-5 between thread counts or CPUs, float64 ones do not, so the fixtures can be made again anywhere.
    out = decode(vae, latents, torch.float64)
    out_tiled = decode(vae, latents_tiled, torch.float64, TILES)
    assert out_tiled.shape == (1, 3, 9, 56, 72), out_tiled.shape

    def rel(x, ref):
        return float((x - ref).norm() / ref.norm())

    bf16 = rel(decode(vae, latents, torch.bfloat16), out)
    bf16_tiled = rel(decode(vae, latents_tiled, torch.bfloat16, TILES), out_tiled)
    # The comparison means little if the clamp flattens most of the frames.
    for name, o in (("output", out), ("output_tiled", out_tiled)):
        clamped = float((o.abs() >= 1).float().mean())
        print(f"wan-vae-diffusers: {name} {list(o.shape)}, |max| {float(o.abs().max()):.3f}, "
              f"{100 * clamped:.1f}% clamped", file=sys.stderr)
        assert clamped < 0.2, f"{name}: {clamped:.0%} of the values are clamped; pick other weights"
    save_file({"latents": latents, "output": out, "latents_tiled": latents_tiled, "output_tiled": out_tiled},
              str(vdir / "decode.safetensors"),
              metadata=dict(meta, bf16_error=f"{bf16:.4g}", bf16_error_tiled=f"{bf16_tiled:.4g}",
                            **{k: str(v) for k, v in TILES.items()}))

    # --- the UniPC sampler ---
    udir = root / "unipc"
    shutil.rmtree(udir, ignore_errors=True)
    udir.mkdir(parents=True)
    (udir / "scheduler_config.json").write_text(json.dumps(WAN_SCHEDULER, indent=2) + "\n")
    noise = torch.randn(1, 4, 3, 4, 6, generator=torch.Generator().manual_seed(seed + 2))
    tensors = {"noise": noise}
    umeta = dict(meta)
    for name, (steps, overrides) in CASES.items():
        ts, sig, outs, samples = run_unipc(steps, overrides, noise)
        assert torch.isfinite(samples).all(), name
        tensors.update({f"timesteps_{name}": ts, f"sigmas_{name}": sig, f"output_model_{name}": outs,
                        f"output_samples_{name}": samples})
        umeta[name] = json.dumps({"steps": steps, "overrides": overrides})
    save_file(tensors, str(udir / "unipc.safetensors"), metadata=umeta)

    for d in (vdir, udir):
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{d.name}: {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
