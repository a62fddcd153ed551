#!/usr/bin/env python3
"""An fp8 copy of a diffusers-layout Wan stack (bench/wan_stack.py's), for the fp8 rows (issue 17): every
2-D block weight ("blocks.N.*.weight") quantised by torch to float8_e4m3fn per output channel, with its
float32 scale [out, 1] as "<weight>_scale" (the diffusers / torchao spelling); everything else, and the
shards' split and index, as in the source. What users' fp8 checkpoints look like to pipeswap: the disk
and the host tier then hold half of bf16's bytes.

    python3 bench/fp8_stack.py --src /scratch/wan --out /scratch/wan_fp8
"""
import argparse
import json
import os
import shutil
import sys
import time

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def quantise(w):
    amax = w.float().abs().amax(1)
    scale = torch.where(amax > 0, amax / torch.finfo(torch.float8_e4m3fn).max, torch.ones_like(amax))
    return (w.float() / scale[:, None]).to(torch.float8_e4m3fn), scale.reshape(-1, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    stamp = os.path.join(a.out, "fp8_stack.json")
    src_cfg = os.path.join(a.src, "config.json")
    if os.path.exists(stamp) and os.path.getmtime(stamp) > os.path.getmtime(src_cfg):
        print(f"fp8_stack: {a.out} is up to date")
        return
    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)
    shutil.copy(src_cfg, os.path.join(a.out, "config.json"))
    index_path = os.path.join(a.src, "diffusion_pytorch_model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        files = sorted(set(index["weight_map"].values()))
    else:
        index, files = None, ["diffusion_pytorch_model.safetensors"]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    weight_map, total = {}, 0
    for name in files:
        out = {}
        with safe_open(os.path.join(a.src, name), "pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                if k.startswith("blocks.") and k.endswith(".weight") and t.dim() == 2:
                    q, s = quantise(t.to(dev))
                    out[k], out[k + "_scale"] = q.cpu(), s.cpu()
                else:
                    out[k] = t
        for k, t in out.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
        save_file(out, os.path.join(a.out, name), metadata={"format": "pt"})
    if index is not None:
        with open(os.path.join(a.out, os.path.basename(index_path)), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=1)
    info = {"fp8_stack": a.out, "src": a.src, "bytes": total, "seconds": round(time.time() - t0, 1)}
    with open(stamp, "w") as f:
        json.dump(info, f)
    print(json.dumps(info))


if __name__ == "__main__":
    sys.exit(main())
