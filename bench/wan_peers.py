#!/usr/bin/env python3
"""The peers of the Wan rows in docs/benchmarks.md: diffusers' own `WanTransformer3DModel`, loaded with
`from_pretrained` from the diffusers-layout directory that bench/wan_stack.py writes and `pipeswap
denoise` reads too, on the latents and text context files that pipeswap_rows.py `inputs` writes and the
pipeswap rows read too. Nothing here re-implements Wan: every number is diffusers' forward.

Per length (tokens = F x 32 x 32: latents [1, 16, F, 64, 64] after 1x2x2 patches), one row per mode,
each the median of >= 5 forwards after warm-up (peers_common.time_passes; one forward = one denoising
step without CFG, the timestep of the schedule's first step):
  resident       the whole model on the device, eager, diffusers' default attention (the framework's
                 resident time: the bound of every row at this length, pipeswap's included).
  compile        resident after `compile_repeated_blocks(fullgraph=True)` (torch.compile of each
                 WanTransformerBlock; the issue's stretch target). Warm-up is 2 forwards, the first one
                 compiles (its seconds are kept as compile_seconds). Off unless --modes names it.
  group_block    `enable_group_offload(offload_type="block_level", num_blocks_per_group=1,
                 use_stream=True)`: diffusers' own block swapping, the next block prefetched on a side
                 stream from pinned memory.
  group_leaf     `enable_group_offload(offload_type="leaf_level", use_stream=True)`.
  accelerate     Accelerate's `cpu_offload(model, execution_device)` on the whole transformer (what
                 diffusers' `enable_sequential_cpu_offload` installs): every leaf module's weights moved
                 in for its forward, synchronously, from pageable memory.
  prefetch       a Python side-stream prefetch (peers_common.StreamPrefetch, LightX2V's method) on
                 `model.blocks`, the rest resident.
  naive          block.to(device) / block.to("cpu") around each block (off unless --modes names it).
`enable_model_cpu_offload` is not a row: it is a DiffusionPipeline method (ModelMixin has none) that
moves whole components in for the pipeline call; on a bare transformer it would put all of it on the
device, the resident row's memory and time plus one copy of the model per call.

Checks, recorded in every row (a row that fails them is FAILED and the script exits 1):
  * dtype: every parameter of the peer is bfloat16, as stored on disk.
  * same output: each mode's forward output against the resident one (peers_common.check_output).
The pipeswap rows are checked against --ref-dir files written here: diffusers' resident model running
the schedule `pipeswap denoise --steps S --guidance 1 --shift SHIFT` runs (flow-matching sigmas, Euler
updates of float32 latents, the model's bf16 output as the velocity, as tests/reference/
make_wan_fixtures.py writes it), so that pipeswap's final latents can be compared with diffusers' on the
same inputs. The tolerance's yardstick: the same loop with the model in float32 at the first length
(diffusers' own bf16 error), kept in the rows as bf16_error_vs_fp32.

    python3 bench/wan_peers.py --model /scratch/wan --inputs /scratch/inputs --tokens 1024,4096,16384 \\
        --ref-dir /scratch/ref --out wan_peers.json
    python3 bench/wan_peers.py --model /tmp/tiny --inputs /tmp/in --device cpu --tokens 16 --ref-dir /tmp/ref
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

ALL_MODES = "resident,group_block,group_leaf,accelerate,prefetch"
SHIFT = 5.0  # pipeswap denoise's default --shift; the pipeswap rows pass it explicitly


def sigmas(steps, shift):
    """s_i = 1 - i / S, sigma_i = shift s_i / (1 + (shift - 1) s_i) in float64 (pipeline/src/denoise_job.cpp)."""
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).tolist()


def load_master(model_dir, perturb=""):
    """diffusers' model on the CPU as from_pretrained loads it (bf16), and its state dict. --perturb
    NAME[:FACTOR] scales one tensor for every peer mode (not on disk: the pipeswap rows must then FAIL)."""
    from diffusers import WanTransformer3DModel
    model, info = WanTransformer3DModel.from_pretrained(model_dir, torch_dtype=torch.bfloat16,
                                                         output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"wan_peers: diffusers loaded {model_dir} with {bad}: not the layout it saves")
    model.eval().requires_grad_(False)
    pc.perturb_parameter(model, perturb, "wan_peers")
    return model


def fresh(master):
    """A new WanTransformer3DModel sharing the master's CPU weights (no copy): each offload mode installs
    its hooks on its own model, so nothing has to be undone between modes."""
    from diffusers import WanTransformer3DModel
    with torch.device("meta"):
        m = WanTransformer3DModel.from_config(master.config)
    sd = master.state_dict()
    m.load_state_dict(sd, assign=True, strict=True)
    for name, buf in master.named_buffers():  # the RoPE tables: buffers not in the state dict
        if name not in sd:
            mod, _, leaf = name.rpartition(".")
            m.get_submodule(mod).register_buffer(leaf, buf, persistent=False)
    return m.eval().requires_grad_(False)


def model_bytes(m):
    return pc.module_bytes(m)


def read_inputs(inputs_dir, tokens):
    lat = load_file(os.path.join(inputs_dir, f"latents_{tokens}.safetensors"))["latents"]
    ctx = load_file(os.path.join(inputs_dir, "context.safetensors"))["context"]
    return lat, ctx


def denoise_loop(model, lat, ctx, steps, shift, dtype):
    """pipeswap denoise's loop with guidance 1: x <- x + (sigma_{i+1} - sigma_i) model(x, 1000 sigma_i, ctx)."""
    sig = sigmas(steps, shift)
    x = lat.float().clone()
    with torch.no_grad():
        for i in range(steps):
            t = torch.full((x.shape[0],), sig[i] * 1000.0, dtype=torch.float32, device=x.device)
            v = model(hidden_states=x.to(dtype), timestep=t, encoder_hidden_states=ctx.to(dtype),
                      return_dict=False)[0].float()
            x = x + (sig[i + 1] - sig[i]) * v
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a diffusers-layout directory (bench/wan_stack.py)")
    ap.add_argument("--inputs", required=True, help="pipeswap_rows.py inputs' directory (latents, context)")
    ap.add_argument("--tokens", default="1024,4096,16384")
    ap.add_argument("--modes", default=ALL_MODES, help=f"comma-separated; default {ALL_MODES} (also: compile, naive)")
    ap.add_argument("--iters", type=int, default=pc.ITERS, help="timed forwards per row (>= 5 for the docs)")
    ap.add_argument("--steps", type=int, default=6, help="the pipeswap rows' --steps (reference loop)")
    ap.add_argument("--shift", type=float, default=SHIFT)
    ap.add_argument("--ref-dir", default="", help="write the reference latents for the pipeswap rows here")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compile mode")
    ap.add_argument("--perturb", default="", help="NAME[:FACTOR]: scale one peer tensor (negative check)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    device = torch.device(a.device)
    dtype = torch.bfloat16
    torch.manual_seed(0)
    import diffusers
    t0 = time.time()
    master = load_master(a.model, a.perturb)
    load_s = time.time() - t0
    peer_dtype = pc.params_dtype(master)
    n_blocks = len(master.blocks)
    total_bytes, block_bytes = model_bytes(master), model_bytes(master.blocks[0])
    bw = pc.pinned_bandwidth(device)
    modes = [m for m in a.modes.split(",") if m]
    lengths = [int(t) for t in a.tokens.split(",")]
    common = dict(framework=f"diffusers {diffusers.__version__} WanTransformer3DModel", blocks=n_blocks,
                  block_bytes=block_bytes, model_bytes=total_bytes, device=str(device), torch=torch.__version__,
                  dtype=peer_dtype, load_seconds=round(load_s, 2), **{k: v for k, v in bw.items() if k != "bytes"})
    inputs = {t: read_inputs(a.inputs, t) for t in lengths}
    resident = {}  # tokens -> (seconds, output of one forward)
    yardstick = None
    rows = []
    if a.ref_dir:
        os.makedirs(a.ref_dir, exist_ok=True)
    ordered = (["resident"] if "resident" in modes else []) + [m for m in modes if m != "resident"]
    if "resident" not in modes:
        sys.exit("wan_peers: --modes must include resident (the bound and every check use it)")
    def run_mode(mode):
        nonlocal yardstick
        model = fresh(master)
        moved, setup_s, pf = 0, time.time(), None
        if mode in ("resident", "compile"):
            model.to(device)
            if mode == "compile":
                model.compile_repeated_blocks(fullgraph=True, backend=a.compile_backend)
        elif mode in ("group_block", "group_leaf"):
            # Streams need an accelerator: on the CPU (the harness's own check) the same call without them.
            kw = dict(num_blocks_per_group=1) if mode == "group_block" else {}
            model.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                       offload_type=mode.split("_")[1] + "_level", use_stream=device.type == "cuda",
                                       **kw)
            moved = total_bytes
        elif mode == "accelerate":
            from accelerate import cpu_offload
            cpu_offload(model, execution_device=device)
            moved = total_bytes
        elif mode == "prefetch":
            for name, child in model.named_children():
                if name != "blocks":
                    child.to(device)
            for name, p in model.named_parameters(recurse=False):
                p.data = p.data.to(device)
            for name, b in model.named_buffers(recurse=False):
                setattr(model, name, b.to(device))
            pf = pc.StreamPrefetch(list(model.blocks), device)
            moved = n_blocks * block_bytes
        elif mode == "naive":
            model.to(device)
            pc.NaiveSwap(list(model.blocks), device)
            moved = n_blocks * block_bytes
        else:
            sys.exit(f"wan_peers: unknown mode {mode}")
        setup_s = time.time() - setup_s
        for tokens in lengths:
            lat, ctx = inputs[tokens]
            x = lat.to(device, dtype)
            c = ctx.to(device, dtype)
            t = torch.full((1,), sigmas(a.steps, a.shift)[0] * 1000.0, dtype=torch.float32, device=device)

            def forward():
                if pf:
                    pf.start()
                with torch.no_grad():
                    return model(hidden_states=x, timestep=t, encoder_hidden_states=c, return_dict=False)[0]

            pc.reset_peak(device)
            extra = {}
            warm = 1
            if mode == "compile":
                t1 = time.time()
                forward()
                pc.sync(device)
                extra["compile_seconds"] = round(time.time() - t1, 2)
            secs, times, out = pc.time_passes(forward, device, a.iters, warmup=warm)
            peak = pc.peak_bytes(device)
            if mode == "resident":
                resident[tokens] = (secs, out.float().cpu())
                if a.ref_dir:  # the pipeswap rows' reference: the whole S-step loop in bf16
                    ref = denoise_loop(model, lat.to(device), ctx.to(device), a.steps, a.shift, dtype).cpu()
                    save_file({"latents": ref.contiguous()}, os.path.join(a.ref_dir, f"wan_ref_{tokens}.safetensors"),
                              metadata={"steps": str(a.steps), "shift": str(a.shift), "guidance": "1",
                                        "dtype": peer_dtype, "framework": common["framework"]})
                    if yardstick is None:  # diffusers' own bf16 error: the same loop in float32, first length
                        cudnn_tf32 = torch.backends.cudnn.allow_tf32
                        torch.backends.cudnn.allow_tf32 = False
                        m32 = fresh(master).to(device).float()  # bf16 -> fp32 on the device
                        ref32 = denoise_loop(m32, lat.to(device), ctx.to(device), a.steps, a.shift,
                                             torch.float32).cpu()
                        del m32
                        torch.backends.cudnn.allow_tf32 = cudnn_tf32
                        x0 = lat.float()
                        yardstick = pc.rel_err(x0 - ref, x0 - ref32)["rel_l2"]
                        extra["bf16_error_tokens"] = tokens
                    extra["ref"] = os.path.join(a.ref_dir, f"wan_ref_{tokens}.safetensors")
            res_s, res_out = resident[tokens]
            check = pc.check_output(out, res_out, pc.tolerance(yardstick), "diffusers resident")
            rows.append(pc.row("wan", mode, tokens, secs, moved, res_s, bw.get("pinned_h2d_gbs"),
                               times=[round(v, 6) for v in times], iters=len(times), warmup=warm,
                               setup_seconds=round(setup_s, 2), device_peak_bytes_peer=peak,
                               dtype_check=pc.check_dtype(peer_dtype, "bfloat16", "the weights on disk"), check=check,
                               check_required=True,
                               bf16_error_vs_fp32=yardstick and round(yardstick, 6), perturbed=a.perturb or None,
                               **common, **extra))
            del x, c, out
        if pf:
            pf.remove()

    for mode in ordered:
        first_row = len(rows)
        try:
            run_mode(mode)
        except Exception as e:  # a mode that breaks FAILS its rows; the other modes still run
            traceback.print_exc()
            have = {r["tokens"] for r in rows[first_row:]}
            rows.extend({"workload": "wan", "mode": mode, "tokens": t, "seconds": float("nan"), "rc": 1,
                         "error": f"{type(e).__name__}: {e}"[-2000:], **common} for t in lengths if t not in have)
            if mode == "resident":
                break  # nothing to check the others against
        finally:
            pc.save_partial(rows, a.out)
            gc.collect()  # offload hooks hold their model in reference cycles: free its pinned copies now
            if device.type == "cuda":
                torch.cuda.empty_cache()
    rows.append({"workload": "wan", "mode": "model_cpu_offload", "tokens": None, "status": "n/a",
                 "not_applicable": "enable_model_cpu_offload is a DiffusionPipeline method (ModelMixin has none): it "
                                   "moves whole components to the device for a pipeline call, so on a bare transformer "
                                   "it is the resident row plus one copy of the model per call, and it cannot run a "
                                   "model larger than the device"})
    if a.ref_dir:
        with open(os.path.join(a.ref_dir, "wan_ref.json"), "w") as f:
            json.dump({"steps": a.steps, "shift": a.shift, "bf16_error_vs_fp32": yardstick,
                       "tolerance": pc.tolerance(yardstick), "dtype": peer_dtype,
                       "resident_seconds": {str(k): v[0] for k, v in resident.items()},
                       "pinned_h2d_gbs": bw.get("pinned_h2d_gbs"), "framework": common["framework"],
                       "perturbed": a.perturb or None}, f, indent=1)
    return pc.emit(rows, a.out)


if __name__ == "__main__":
    sys.exit(main())
