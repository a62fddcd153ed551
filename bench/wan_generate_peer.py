#!/usr/bin/env python3
"""diffusers' WanPipeline on a repo of bench/wan_repo.py, as the peer of `pipeswap generate --prompt-ids`
(issue 18's benchmark): the same token ids, seed, size, steps and guidance; per phase (encode, denoise,
decode) the time and the peak device (torch.cuda.max_memory_allocated) and host (ru_maxrss) memory, as
one JSON line; the final latents in --latents-out for comparing with `pipeswap generate --output
latents.safetensors`, the decoded frames in --frames-out (float32 in [0, 1], as WanPipeline's "np" output)
for comparing with `pipeswap generate --output frames/`. --latents-in gives the initial noise (the file
bench/generate_rows.py gives `pipeswap generate --latents` too), instead of --seed's generator; each
denoising step's time (synchronised, from the step's start to its end) is in phases.denoise.step_seconds.
--perturb NAME:FACTOR scales one DiT weight (the negative check of bench/test-generate-peers.sh).

The text encoder runs as WanPipeline's encode_prompt does (trim to the mask's length, pad with zeros to
512), then is freed; the pipeline gets the embeddings (its tokenizer is not needed: random weights).

    python3 bench/wan_generate_peer.py --repo /scratch/wan14b-repo --offload none
    python3 bench/wan_generate_peer.py --repo /scratch/wan14b-repo --offload group   # 24 GB-class budget
    python3 bench/wan_generate_peer.py --repo /tmp/tiny-repo --device cpu --frames 5 --height 32 --width 32 --steps 2
"""
import argparse
import json
import resource
import time

import torch
from safetensors.torch import load_file, save_file


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak(device):
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else None


def reset(device):
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def host_peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", required=True)
    ap.add_argument("--ids", help="prompt ids (default: REPO/prompt_ids.safetensors)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                    help="the text encoder's and DiT's dtype (auto: bf16 on a GPU, float32 on the CPU; the VAE: "
                    "float32)")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--offload", choices=["none", "model", "group"], default="none",
                    help="none: resident; model: enable_model_cpu_offload; group: block-level group offloading "
                         "of the DiT with streams (the text encoder and VAE on the device when used)")
    ap.add_argument("--latents-in", help="the initial noise (safetensors, 'latents' [B, 16, f, h, w]) instead of "
                    "--seed's torch.Generator('cpu')")
    ap.add_argument("--latents-out", help="write the final latents here (safetensors, 'latents')")
    ap.add_argument("--frames-out", help="write the decoded frames here (safetensors, 'frames' [B, F, H, W, 3])")
    ap.add_argument("--perturb", default="", help="NAME:FACTOR: scale this DiT weight (a negative check)")
    a = ap.parse_args()
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    dev = a.device
    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(
        a.dtype, torch.bfloat16 if dev.startswith("cuda") else torch.float32)
    ids = load_file(a.ids or f"{a.repo}/prompt_ids.safetensors")
    phases = {}
    cfg = a.guidance > 1.0

    # encode
    reset(dev)
    t0 = time.perf_counter()
    te = UMT5EncoderModel.from_pretrained(f"{a.repo}/text_encoder", torch_dtype=dt).to(dev).eval()

    def encode(input_ids, mask):
        with torch.no_grad():
            h = te(input_ids.to(dev), mask.to(dev)).last_hidden_state
        lens = mask.gt(0).sum(1)
        out = torch.zeros_like(h)
        for i, n in enumerate(lens.tolist()):
            out[i, :n] = h[i, :n]
        return out

    embeds = encode(ids["input_ids"], ids["attention_mask"])
    negative = encode(ids["negative_input_ids"], ids["negative_attention_mask"]) if cfg else None
    sync(dev)
    del te
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    phases["encode"] = {"seconds": time.perf_counter() - t0, "device_peak": peak(dev), "host_peak": host_peak()}

    # denoise
    reset(dev)
    t0 = time.perf_counter()
    transformer = WanTransformer3DModel.from_pretrained(f"{a.repo}/transformer", torch_dtype=dt)
    vae = AutoencoderKLWan.from_pretrained(f"{a.repo}/vae", torch_dtype=torch.float32)
    if a.perturb:
        name, factor = a.perturb.rsplit(":", 1)
        with torch.no_grad():
            dict(transformer.named_parameters())[name].mul_(float(factor))
    sched = UniPCMultistepScheduler.from_pretrained(f"{a.repo}/scheduler")
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    if a.offload == "none":
        pipe.to(dev)
    elif a.offload == "model":
        pipe.enable_model_cpu_offload()
    else:
        transformer.enable_group_offload(onload_device=torch.device(dev), offload_device=torch.device("cpu"),
                                         offload_type="block_level", num_blocks_per_group=1,
                                         use_stream=dev.startswith("cuda"))
        vae.to(dev)
    load_s = time.perf_counter() - t0
    noise = load_file(a.latents_in)["latents"] if a.latents_in else None
    marks = []

    def on_step_end(pipeline, i, t, kwargs):  # each step's end, the device idle (one sync a step)
        sync(dev)
        marks.append(time.perf_counter())
        return kwargs

    sync(dev)
    marks.append(time.perf_counter())
    latents = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=a.height, width=a.width,
                   num_frames=a.frames, num_inference_steps=a.steps, guidance_scale=a.guidance, latents=noise,
                   generator=torch.Generator("cpu").manual_seed(a.seed), output_type="latent",
                   callback_on_step_end=on_step_end).frames
    sync(dev)
    phases["denoise"] = {"seconds": time.perf_counter() - t0, "load_seconds": load_s, "device_peak": peak(dev),
                         "host_peak": host_peak(),
                         "step_seconds": [round(b - e, 6) for e, b in zip(marks, marks[1:])]}
    if a.latents_out:
        save_file({"latents": latents.float().cpu().contiguous()}, a.latents_out)

    # decode (as WanPipeline does after the loop)
    reset(dev)
    t0 = time.perf_counter()
    if a.offload == "model":
        vae.to(dev)
    z = latents.to(vae.dtype).to(dev)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(z)
    std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(z)
    with torch.no_grad():
        video = vae.decode(z / std + mean, return_dict=False)[0]
    frames = pipe.video_processor.postprocess_video(video, output_type="np")
    sync(dev)
    phases["decode"] = {"seconds": time.perf_counter() - t0, "device_peak": peak(dev), "host_peak": host_peak()}
    if a.frames_out:
        save_file({"frames": torch.from_numpy(frames).float().contiguous()}, a.frames_out)
    print(json.dumps({"peer": "diffusers WanPipeline", "offload": a.offload, "device": dev, "dtype": str(dt).replace(
        "torch.", ""), "frames": list(frames.shape), "steps": a.steps, "guidance": a.guidance,
        "noise": a.latents_in or f"seed {a.seed}", "perturb": a.perturb or None, "phases": phases}))


if __name__ == "__main__":
    main()
