#!/usr/bin/env python3
"""Reference fixtures for `pipeswap generate` (tests/generate_test.cpp, tests/sampler_test.cpp): a tiny Wan2.1
text-to-video repo in the diffusers layout, run end to end by diffusers' own WanPipeline.

wan-t2v-pipeline/
  repo/                 WanPipeline.save_pretrained of tiny random components: model_index.json, tokenizer/ (the
                        400-piece SentencePiece model of make_t5_fixtures.py), text_encoder/ (its tiny
                        UMT5EncoderModel, d_model 16), transformer/ (a WanTransformer3DModel: 4 layers, dim 16,
                        text_dim 16, 8 latent channels, sharded), vae/ (make_vae_unipc_fixtures.py's tiny
                        AutoencoderKLWan, z_dim 8), scheduler/ (UniPCMultistepScheduler as Wan2.1-T2V-*-Diffusers
                        ships it, flow_shift 3)
  prompts.jsonl         the batch case's two prompts with their negative prompts
  expected.safetensors  in float32 on the CPU, one thread, 9 frames of 32 x 48 pixels (3 x 4 x 6 latents):
    ids_<case>, mask_<case>, ids_null_<case>, mask_null_<case>
                        the pipeline's tokenizer call (int64 [B, 512]) for the prompts and negative prompts
    embeds_<case>, embeds_null_<case>
                        WanPipeline.encode_prompt: the prompt embeddings (trimmed and zero-padded to 512)
    noise_<case>        WanPipeline.prepare_latents with torch.Generator("cpu").manual_seed(SEED) (one generator
                        for the batch), which the pipeline is then given as latents=
    latents_<case>      the final latents (output_type="latent")
    frames_<case>       the decoded video (output_type="np"): float32 [B, 9, 32, 48, 3] in [0, 1] (single and
                        batch only: the other cases' frames add nothing but bytes)
  cases: single (one prompt, default negative prompt "", UniPC, 4 steps, guidance 5), euler (the same with
  FlowMatchEulerDiscreteScheduler(shift=3) in the pipeline), batch (the two prompts of prompts.jsonl, UniPC,
  3 steps, guidance 4, seed SEED + 1 for the batch), noguide (guidance 1: no unconditional pass, UniPC, 2 steps).
  The metadata holds each case's steps, guidance, seed, prompt and negative prompt (JSON).

flow-euler/euler.safetensors  diffusers' FlowMatchEulerDiscreteScheduler(shift=S) on its own, for
  tests/sampler_test.cpp: timesteps_<case> and sigmas_<case> (float32), output_model_<case> (what step() was given:
  the fake model of make_vae_unipc_fixtures.py) and output_samples_<case> (each sample, then the final one), from
  noise float32 [1, 4, 3, 4, 6].

Run from the repository root with torch, transformers, diffusers, sentencepiece and safetensors (the Python of
scripts/pyenv):

    python3 tests/reference/make_generate_fixtures.py [--out DIR] [--seed N]

--seed N changes every weight, the tokenizer's corpus and the noise seeds (default 0: the committed fixtures).
"""

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_t5_fixtures as t5  # noqa: E402  (the tokenizer and text encoder)
import make_vae_unipc_fixtures as vae_fixtures  # noqa: E402  (the VAE, the scheduler config, the fake model)

import diffusers  # noqa: E402
import diffusers.pipelines.wan.pipeline_wan as pipeline_wan  # noqa: E402
import transformers  # noqa: E402
from diffusers import (FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline,  # noqa: E402
                       WanTransformer3DModel)

OUT = HERE / "fixtures"
HEIGHT, WIDTH, FRAMES = 32, 48, 9
SEED = 42
PROMPT = "A cat walks on the grass, realistic style."
BATCH = [
    {"prompt": "Ein Hund läuft am Strand, 夕日 und Wellen.", "negative_prompt": "静止，整体发灰，最差质量"},
    {"prompt": "city street at night, rain, neon lights &amp; reflections", "negative_prompt": "blurry"},
]
EULER_CASES = {"shift3_steps4": (4, 3.0), "shift5_steps10": (10, 5.0), "shift1_steps1": (1, 1.0)}


def tiny_transformer(seed):
    torch.manual_seed(seed)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=8,
                                  out_channels=8, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=4,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                                  rope_max_seq_len=1024).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def make_repo(seed, repo):
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    # tokenizer/ as the Wan repos ship it (spiece.model beside transformers 4's tokenizer_config.json):
    # WanPipeline.save_pretrained would write transformers 5's files instead.
    tok_dir = repo.parent / "tokenizer.tmp"
    shutil.rmtree(tok_dir, ignore_errors=True)
    tokenizer = t5.train_tokenizer(random.Random(seed), tok_dir)
    encoder = t5.tiny_encoder(seed)
    vae = vae_fixtures.tiny_vae(seed + 1)
    transformer = tiny_transformer(seed + 2)
    scheduler = UniPCMultistepScheduler.from_config(vae_fixtures.WAN_SCHEDULER)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=vae, scheduler=scheduler,
                       transformer=transformer)
    pipe.save_pretrained(repo, safe_serialization=True)
    shutil.rmtree(repo / "tokenizer")
    shutil.move(tok_dir, repo / "tokenizer")
    # Shard the DiT as the big repos are, so the generate job reads an index there too.
    shutil.rmtree(repo / "transformer")
    transformer.save_pretrained(repo / "transformer", max_shard_size="40KB", safe_serialization=True)
    # The folder as a user downloads it, loaded the way they load it.
    return WanPipeline.from_pretrained(repo, torch_dtype=torch.float32)


def tokens(pipe, texts):
    batch = pipe.tokenizer([pipeline_wan.prompt_clean(t) for t in texts], padding="max_length", max_length=512,
                           truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    return batch.input_ids.contiguous(), batch.attention_mask.contiguous()


def run_case(pipe, name, prompts, negatives, steps, guidance, seed, out, meta, keep_frames=True):
    b = len(prompts)
    noise = pipe.prepare_latents(b, 8, HEIGHT, WIDTH, FRAMES, torch.float32, torch.device("cpu"),
                                 torch.Generator("cpu").manual_seed(seed))
    cfg = guidance > 1.0
    with torch.no_grad():
        embeds, embeds_null = pipe.encode_prompt(prompts, negatives if cfg else None, do_classifier_free_guidance=cfg,
                                                 max_sequence_length=512, device=torch.device("cpu"),
                                                 dtype=torch.float32)
    common = dict(prompt=prompts, negative_prompt=negatives if cfg else None, height=HEIGHT, width=WIDTH,
                  num_frames=FRAMES, num_inference_steps=steps, guidance_scale=guidance)
    latents = pipe(**common, latents=noise.clone(), output_type="latent").frames
    frames = pipe(**common, latents=noise.clone(), output_type="np").frames
    ids, mask = tokens(pipe, prompts)
    out.update({f"ids_{name}": ids, f"mask_{name}": mask, f"embeds_{name}": embeds.float().contiguous(),
                f"noise_{name}": noise.contiguous(), f"latents_{name}": latents.float().contiguous()})
    if keep_frames:
        out[f"frames_{name}"] = torch.from_numpy(frames).float().contiguous()
    if cfg:
        ids_null, mask_null = tokens(pipe, negatives)
        out.update({f"ids_null_{name}": ids_null, f"mask_null_{name}": mask_null,
                    f"embeds_null_{name}": embeds_null.float().contiguous()})
    meta[name] = json.dumps({"steps": steps, "guidance": guidance, "seed": seed, "prompts": prompts,
                             "negative_prompts": negatives, "scheduler": type(pipe.scheduler).__name__},
                            ensure_ascii=False)
    clamped = float((torch.from_numpy(frames) >= 1).float().mean() + (torch.from_numpy(frames) <= 0).float().mean())
    print(f"{name}: latents |max| {float(latents.abs().max()):.3f}, frames {list(frames.shape)}, "
          f"{100 * clamped:.1f}% clamped", file=sys.stderr)
    assert clamped < 0.2, f"{name}: {clamped:.0%} of the frames' values are clamped; pick other weights"


def euler_cases(seed):
    noise = torch.randn(1, 4, 3, 4, 6, generator=torch.Generator().manual_seed(seed))
    tensors, meta = {"noise": noise}, {}
    for name, (steps, shift) in EULER_CASES.items():
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        sched.set_timesteps(steps)
        sched.set_begin_index(0)
        x, samples, outputs = noise.clone(), [noise.clone()], []
        for t in sched.timesteps:
            v = vae_fixtures.fake_model(x, float(t))
            outputs.append(v)
            x = sched.step(v, t, x, return_dict=False)[0]
            samples.append(x)
        tensors.update({f"timesteps_{name}": sched.timesteps.clone().float(), f"sigmas_{name}": sched.sigmas.float(),
                        f"output_model_{name}": torch.stack(outputs).contiguous(),
                        f"output_samples_{name}": torch.stack(samples).contiguous()})
        meta[name] = json.dumps({"steps": steps, "shift": shift})
    return tensors, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="directory to write into (default: the committed fixtures)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the components (noise: 42 + 1000 N)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    pipeline_wan.is_ftfy_available = lambda: False  # tokenizer.h: pipeswap does not mirror ftfy
    pipe_dir = a.out / "wan-t2v-pipeline"
    pipe = make_repo(a.seed, pipe_dir / "repo")
    pipe.set_progress_bar_config(disable=True)
    seed = SEED + 1000 * a.seed
    meta = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
            "diffusers": diffusers.__version__, "seed": str(a.seed), "ftfy": "off",
            "size": json.dumps({"height": HEIGHT, "width": WIDTH, "frames": FRAMES})}
    out = {}
    run_case(pipe, "single", [PROMPT], [""], 4, 5.0, seed, out, meta)
    run_case(pipe, "noguide", [PROMPT], [""], 2, 1.0, seed, out, meta, keep_frames=False)
    run_case(pipe, "batch", [c["prompt"] for c in BATCH], [c["negative_prompt"] for c in BATCH], 3, 4.0, seed + 1,
             out, meta)
    unipc = pipe.scheduler
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=unipc.config.flow_shift)
    run_case(pipe, "euler", [PROMPT], [""], 4, 5.0, seed, out, meta, keep_frames=False)
    pipe.scheduler = unipc
    save_file(out, str(pipe_dir / "expected.safetensors"), metadata=meta)
    with open(pipe_dir / "prompts.jsonl", "w", encoding="utf-8") as f:
        for c in BATCH:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")

    edir = a.out / "flow-euler"
    shutil.rmtree(edir, ignore_errors=True)
    edir.mkdir(parents=True)
    tensors, emeta = euler_cases(seed + 2)
    save_file(tensors, str(edir / "euler.safetensors"),
              metadata=dict(emeta, diffusers=diffusers.__version__, torch=meta["torch"]))

    for d in (pipe_dir, edir):
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        print(f"{d.name}: {size} bytes", file=sys.stderr)
        if size > 3_000_000:
            sys.exit(f"make_generate_fixtures: {d} is {size} bytes, over the 3 MB a fixture may take")


if __name__ == "__main__":
    main()
