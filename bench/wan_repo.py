#!/usr/bin/env python3
"""Writes a Wan2.1 text-to-video repo in diffusers' layout with random weights, for `pipeswap generate` and
diffusers' WanPipeline to run on the same files (issue 18's benchmark): model_index.json, text_encoder/ (a
UMT5EncoderModel, umT5-XXL's config by default), transformer/ (bench/wan_stack.py's DiT, 14B sizes by default),
vae/ (AutoencoderKLWan's default config: Wan2.1's VAE), scheduler/ (UniPC as the Wan2.1 repos ship it), and
tokenizer/ left empty unless --spiece gives a spiece.model (random weights need no real tokenizer: give
`generate --prompt-ids` the ids file this script writes, prompt_ids.safetensors).

    python3 bench/wan_repo.py --out /scratch/wan14b-repo                      # real sizes, bf16
    python3 bench/wan_repo.py --out /tmp/tiny-repo --tiny --device cpu        # a check of the layout
    python3 bench/wan_repo.py --out /scratch/wan14b-repo --dit-from /scratch/wan40   # link that DiT's files

Sizes at the real config (bf16): the DiT 28.6 GB, umT5-XXL 11.4 GB (5.7 B parameters), the VAE 0.5 GB (float32).
--dit-from DIR hard-links (or copies, across file systems) the files of a wan_stack.py directory with the
same config.json instead of writing the DiT again (bench/run-all's 40-block stack: one copy on the disk).
Before writing, the free space under --out is checked against what is still to be written.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                dense_act_fn="gelu_new", is_gated_act=True, layer_norm_epsilon=1e-6, tie_word_embeddings=False)
UNIPC = {"_class_name": "UniPCMultistepScheduler", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
         "disable_corrector": [], "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero", "flow_shift": 3.0,
         "lower_order_final": True, "num_train_timesteps": 1000, "predict_x0": True,
         "prediction_type": "flow_prediction", "rescale_betas_zero_snr": False, "sample_max_value": 1.0,
         "solver_order": 2, "solver_p": None, "solver_type": "bh2", "steps_offset": 0, "thresholding": False,
         "timestep_spacing": "linspace", "trained_betas": None, "use_beta_sigmas": False,
         "use_exponential_sigmas": False, "use_flow_sigmas": True, "use_karras_sigmas": False}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (a check of the layout on the CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--spiece", type=Path, help="a spiece.model for tokenizer/ (default: none)")
    ap.add_argument("--prompts", type=int, default=1, help="rows of prompt_ids.safetensors")
    ap.add_argument("--blocks", type=int, default=40,
                    help="the DiT's blocks at the real sizes (40: the 14B; fewer where a device call cannot hold 40)")
    ap.add_argument("--dit-from", type=Path, help="a wan_stack.py directory of the same config: its files are "
                    "hard-linked (or copied) as transformer/ instead of writing the DiT")
    a = ap.parse_args()
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel
    sys.path.insert(0, str(HERE))
    import wan_stack
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    te = dict(UMT5_XXL)
    if a.tiny:
        te.update(vocab_size=512, d_kv=8, d_ff=64, num_layers=2, num_heads=4)  # d_model 4096: wan_stack's text_dim
    dit = (2, 64, 128, 4) if a.tiny else (a.blocks, 5120, 13824, 40)  # blocks, dim, ffn, heads
    link = None
    if a.dit_from and (a.dit_from / "config.json").exists():
        have = json.loads((a.dit_from / "config.json").read_text())
        if have == wan_stack.config(dit[1], dit[2], dit[3], dit[0]):
            link = a.dit_from
        else:
            print(f"wan_repo: {a.dit_from} has another config: writing the DiT", flush=True)
    # Bytes still to write: the text encoder (parameters x dtype), the VAE (about 0.5 GB at the real size) and,
    # unless linked, the DiT; 2% to spare.
    d, f = dit[1], dit[2]
    te_params = te["vocab_size"] * te["d_model"] + te["num_layers"] * (
        4 * te["d_model"] * te["num_heads"] * te["d_kv"] + 3 * te["d_model"] * te["d_ff"])
    need = te_params * torch.tensor([], dtype=dtype).element_size() + (0 if a.tiny else 510_000_000)
    if link is None:
        need += dit[0] * wan_stack.block_bytes(d, f) + 2 * (d * 4096 + 7 * d * d)
    free = shutil.disk_usage(out).free
    if free < need * 1.02:
        sys.exit(f"wan_repo: {need / 1e9:.1f} GB to write under {out}, {free / 1e9:.1f} GB free")
    with torch.device(a.device):
        encoder = UMT5EncoderModel(UMT5Config(**te)).eval()
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_(0, 0.02)
    encoder.to(dtype).save_pretrained(out / "text_encoder", safe_serialization=True, max_shard_size="5GB")
    del encoder

    vae_kwargs = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1) if a.tiny else {}
    vae = AutoencoderKLWan(**vae_kwargs).eval()  # Wan2.1's VAE; float32 as the diffusers examples load it
    vae.save_pretrained(out / "vae", safe_serialization=True)
    z_dim = vae.config.z_dim
    del vae

    if link is not None:
        dst = out / "transformer"
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        for src in sorted(link.iterdir()):
            if src.is_file():
                try:
                    os.link(src, dst / src.name)
                except OSError:
                    shutil.copy2(src, dst / src.name)
        print(f"wan_repo: transformer/ linked from {link}", flush=True)
    else:
        dit_args = ["--out", str(out / "transformer"), "--device", a.device, "--blocks", str(dit[0])]
        if a.tiny:
            dit_args += ["--dim", "64", "--ffn", "128", "--heads", "4"]
        subprocess.run([sys.executable, str(HERE / "wan_stack.py")] + dit_args, check=True)

    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(UNIPC, indent=2))
    tok = out / "tokenizer"
    tok.mkdir(exist_ok=True)
    if a.spiece:
        shutil.copy(a.spiece, tok / "spiece.model")
    index = {"_class_name": "WanPipeline", "_diffusers_version": "0.42.1", "boundary_ratio": None,
             "expand_timesteps": False, "scheduler": ["diffusers", "UniPCMultistepScheduler"],
             "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "T5Tokenizer"],
             "transformer": ["diffusers", "WanTransformer3DModel"], "transformer_2": [None, None],
             "vae": ["diffusers", "AutoencoderKLWan"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2))

    # Token ids for --prompt-ids: a 40-token prompt and an empty negative prompt (</s> = 1, <pad> = 0).
    b = a.prompts
    ids = torch.zeros(b, 512, dtype=torch.int64)
    mask = torch.zeros(b, 512, dtype=torch.int64)
    g = torch.Generator().manual_seed(1)
    ids[:, :39] = torch.randint(3, te["vocab_size"], (b, 39), generator=g)
    ids[:, 39] = 1
    mask[:, :40] = 1
    neg = torch.zeros(b, 512, dtype=torch.int64)
    neg[:, 0] = 1
    neg_mask = torch.zeros(b, 512, dtype=torch.int64)
    neg_mask[:, 0] = 1
    save_file({"input_ids": ids, "attention_mask": mask, "negative_input_ids": neg,
               "negative_attention_mask": neg_mask}, str(out / "prompt_ids.safetensors"))
    print(f"wan_repo: {out} (z_dim {z_dim}), ids in {out / 'prompt_ids.safetensors'}")


if __name__ == "__main__":
    main()
