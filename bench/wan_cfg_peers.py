#!/usr/bin/env python3
"""The peers of the shared-fills rows (docs/benchmarks.md, "Shared fills"): diffusers' own
`WanTransformer3DModel` running one denoising step of S samples with classifier-free guidance as its users
run it: the conditional and the unconditional passes batched into one forward of 2S rows (the latents
twice, the prompt's and the negative prompt's contexts), so each block's weights serve both passes.

Per S (--samples), one row per mode, each the median of >= 5 forwards after a warm-up:
  resident     the whole model on the device, eager (the framework's compute time of the step: the bound's
               compute term for pipeswap's rows with the same S).
  group_block  `enable_group_offload(offload_type="block_level", num_blocks_per_group=1, use_stream=True)`:
               diffusers' block swapping with the CFG pair batched (every block crosses the link once a step).
Checks: every parameter bfloat16 (as on disk); group_block's output against resident's.
--ref-dir writes the reference of the pipeswap rows: diffusers' resident model running the S-sample CFG
loop that `pipeswap denoise --steps N --guidance G --context-null ...` runs (flow-matching sigmas, Euler
updates of float32 latents, v = u + G (c - u) of the model's bf16 outputs), one file per S.

    python3 bench/wan_cfg_peers.py --model /scratch/wan40 --inputs /scratch/inputs --tokens 1024 \\
        --samples 1,2 --steps 3 --ref-dir /scratch/ref --out wan_cfg_peers.json
"""
import argparse
import gc
import json
import os
import sys
import time
import traceback

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_common as pc  # noqa: E402
from wan_peers import SHIFT, fresh, load_master, sigmas  # noqa: E402

GUIDANCE = 5.0  # pipeswap_rows.GUIDANCE


def latents_file(inputs, tokens, samples):
    return os.path.join(inputs, f"latents_{tokens}.safetensors" if samples == 1 else
                        f"latents_{tokens}_b{samples}.safetensors")


def batched(lat, ctx, ctx_null):
    """The CFG pair of S samples as one batch: rows 0..S-1 conditional, S..2S-1 unconditional."""
    s = lat.shape[0]
    return torch.cat([lat, lat]), torch.cat([ctx.expand(s, -1, -1), ctx_null.expand(s, -1, -1)])


def cfg_loop(model, lat, ctx, ctx_null, steps, shift, guidance, dtype):
    """x <- x + (sigma_{i+1} - sigma_i) (u + g (c - u)), c and u from one batched forward per step."""
    sig = sigmas(steps, shift)
    x = lat.float().clone()
    s = x.shape[0]
    with torch.no_grad():
        for i in range(steps):
            xx, cc = batched(x.to(dtype), ctx.to(dtype), ctx_null.to(dtype))
            t = torch.full((2 * s,), sig[i] * 1000.0, dtype=torch.float32, device=x.device)
            o = model(hidden_states=xx, timestep=t, encoder_hidden_states=cc, return_dict=False)[0].float()
            c, u = o[:s], o[s:]
            x = x + (sig[i + 1] - sig[i]) * (u + guidance * (c - u))
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--samples", default="1,2")
    ap.add_argument("--modes", default="resident,group_block")
    ap.add_argument("--iters", type=int, default=pc.ITERS)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--shift", type=float, default=SHIFT)
    ap.add_argument("--guidance", type=float, default=GUIDANCE)
    ap.add_argument("--ref-dir", default="")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    device, dtype = torch.device(a.device), torch.bfloat16
    import diffusers
    t0 = time.time()
    master = load_master(a.model)
    load_s = time.time() - t0
    peer_dtype = pc.params_dtype(master)
    total_bytes, block_bytes = pc.module_bytes(master), pc.module_bytes(master.blocks[0])
    bw = pc.pinned_bandwidth(device)
    common = dict(framework=f"diffusers {diffusers.__version__} WanTransformer3DModel", blocks=len(master.blocks),
                  block_bytes=block_bytes, model_bytes=total_bytes, device=str(device), torch=torch.__version__,
                  dtype=peer_dtype, load_seconds=round(load_s, 2), guidance=a.guidance, cfg_batched=True,
                  **{k: v for k, v in bw.items() if k != "bytes"})
    ctx = load_file(os.path.join(a.inputs, "context.safetensors"))["context"]
    ctx_null = load_file(os.path.join(a.inputs, "context_null.safetensors"))["context_null"]
    samples = [int(s) for s in a.samples.split(",") if s]
    lats = {s: load_file(latents_file(a.inputs, a.tokens, s))["latents"] for s in samples}
    resident = {}
    yardstick = None
    rows = []
    if a.ref_dir:
        os.makedirs(a.ref_dir, exist_ok=True)
    modes = [m for m in a.modes.split(",") if m]
    if modes[0] != "resident":
        sys.exit("wan_cfg_peers: --modes must start with resident (the bound and the checks use it)")
    for mode in modes:
        first_row = len(rows)
        try:
            model = fresh(master)
            moved = 0
            if mode == "resident":
                model.to(device)
            elif mode == "group_block":
                model.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                           offload_type="block_level", num_blocks_per_group=1,
                                           use_stream=device.type == "cuda")
                moved = total_bytes
            else:
                sys.exit(f"wan_cfg_peers: unknown mode {mode}")
            for s in samples:
                lat = lats[s]
                xx, cc = batched(lat.to(device, dtype), ctx.to(device, dtype), ctx_null.to(device, dtype))
                t = torch.full((2 * s,), sigmas(a.steps, a.shift)[0] * 1000.0, dtype=torch.float32, device=device)

                def forward():
                    with torch.no_grad():
                        return model(hidden_states=xx, timestep=t, encoder_hidden_states=cc, return_dict=False)[0]

                pc.reset_peak(device)
                secs, times, out = pc.time_passes(forward, device, a.iters, warmup=1)
                peak = pc.peak_bytes(device)
                extra = {}
                if mode == "resident":
                    resident[s] = (secs, out.float().cpu())
                    if a.ref_dir:
                        ref = cfg_loop(model, lat.to(device), ctx.to(device), ctx_null.to(device), a.steps, a.shift,
                                       a.guidance, dtype).cpu()
                        name = f"wan_cfg_ref_{a.tokens}_b{s}.safetensors"
                        save_file({"latents": ref.contiguous()}, os.path.join(a.ref_dir, name),
                                  metadata={"steps": str(a.steps), "shift": str(a.shift), "guidance": str(a.guidance),
                                            "samples": str(s), "framework": common["framework"]})
                        extra["ref"] = os.path.join(a.ref_dir, name)
                        if yardstick is None:  # diffusers' own bf16 error: the same CFG loop in float32, first S
                            model.to("cpu")  # room for the float32 copy on the device
                            cudnn_tf32 = torch.backends.cudnn.allow_tf32
                            torch.backends.cudnn.allow_tf32 = False
                            m32 = fresh(master).to(device).float()
                            ref32 = cfg_loop(m32, lat.to(device), ctx.to(device), ctx_null.to(device), a.steps,
                                             a.shift, a.guidance, torch.float32).cpu()
                            del m32
                            torch.backends.cudnn.allow_tf32 = cudnn_tf32
                            if device.type == "cuda":
                                torch.cuda.empty_cache()
                            model.to(device)
                            x0 = lat.float()
                            yardstick = pc.rel_err(x0 - ref, x0 - ref32)["rel_l2"]
                            extra["bf16_error_samples"] = s
                res_s, res_out = resident[s]
                check = pc.check_output(out, res_out, pc.tolerance(None), "diffusers resident (CFG batched)")
                rows.append(pc.row("wan", f"{mode} cfg", a.tokens, secs, moved, res_s, bw.get("pinned_h2d_gbs"),
                                   samples=s, bf16_error_vs_fp32=yardstick and round(yardstick, 6), batch=2 * s, times=[round(v, 6) for v in times], iters=len(times),
                                   warmup=1, device_peak_bytes_peer=peak, check=check, check_required=True,
                                   dtype_check=pc.check_dtype(peer_dtype, "bfloat16", "the weights on disk"),
                                   **common, **extra))
                del xx, cc, out
        except Exception as e:  # a mode that breaks FAILS its rows
            traceback.print_exc()
            have = {r["samples"] for r in rows[first_row:]}
            rows.extend({"workload": "wan", "mode": f"{mode} cfg", "tokens": a.tokens, "samples": s,
                         "seconds": float("nan"), "rc": 1, "error": f"{type(e).__name__}: {e}"[-2000:], **common}
                        for s in samples if s not in have)
            if mode == "resident":
                break
        finally:
            model = None
            pc.save_partial(rows, a.out)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if a.ref_dir:
        with open(os.path.join(a.ref_dir, "wan_cfg_ref.json"), "w") as f:
            json.dump({"steps": a.steps, "shift": a.shift, "guidance": a.guidance, "bf16_error_vs_fp32": yardstick,
                       "tolerance": pc.tolerance(yardstick), "framework": common["framework"]}, f, indent=1)
    return pc.emit(rows, a.out)


if __name__ == "__main__":
    sys.exit(main())
