#!/usr/bin/env python3
"""The pipeswap side of docs/benchmarks.md: runs the pipeswap executable on the benchmark weights and
turns its output into the same JSON rows as the peers (peers_common.row).

    pipeswap_rows.py inputs --out DIR --tokens 1024,4096,16384        # latents + text context files
    pipeswap_rows.py wan    --exe build-gpu/pipeswap --model WAN --inputs DIR --peers wan_peers.json --out F
    pipeswap_rows.py llama  --exe build-gpu/pipeswap --model LLAMA --peers llama_peers.json --out F
    pipeswap_rows.py disk   --exe build-gpu/pipeswap --model WAN --inputs DIR --disk disk_bw.json --out F
    pipeswap_rows.py two-gpu --exe build-gpu/pipeswap --model WAN --inputs DIR --out F

The Wan rows call `pipeswap denoise --model DIR --latents FILE --context FILE --steps S --guidance 1`
and read its per-step progress lines ("step 2/3 sigma 0.6667: 0.123 s"); the first step is left out
(it pays for the first copies and kernel selection), the rest give the median seconds per step, which
compare with the peers' seconds per pass over the same blocks (one step = one pass; the embeddings
and head are a few MB beside the blocks). Every row can also write a --trace timeline.
TODO(lead): if `denoise` changes its flag spellings or its progress line, update DENOISE_FLAGS and
STEP_LINE below (one place each).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_common as pc  # noqa: E402

# The denoise command line (flags as launcher/src/cli.cpp spells them).
DENOISE_FLAGS = ["denoise", "--model", "{model}", "--latents", "{latents}", "--context", "{context}",
                 "--steps", "{steps}", "--guidance", "1"]
STEP_LINE = re.compile(r"step (\d+)/(\d+) sigma [-0-9.e]+: ([0-9.]+) s")
FORWARD_LINE = re.compile(r"forward ([0-9.]+) s")
PEAK_LINE = re.compile(r"device memory peak (\d+) bytes allocated \(plan (\d+) bytes")
DISK_LINE = re.compile(r"read from disk during the run ([0-9.]+) ?([KMGT]?i?B)")
SWAPPED = re.compile(r"(\d+) swapped")
UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
         "TiB": 1 << 40}


def run(cmd, timeout, env=None):
    t0 = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    return p.returncode, p.stdout, time.time() - t0


def peers_bw(path):
    """The pinned host -> device GB/s the peers measured in this run (one figure for every row)."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        rows = json.load(f)
    return next((r.get("pinned_h2d_gbs") for r in rows if r.get("pinned_h2d_gbs")), None)


def make_inputs(a):
    import torch
    from safetensors.torch import save_file
    os.makedirs(a.out, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for tokens in [int(t) for t in a.tokens.split(",")]:
        frames = tokens // (a.grid_hw * a.grid_hw)
        lat = torch.randn(1, 16, frames, 2 * a.grid_hw, 2 * a.grid_hw, generator=g)
        save_file({"latents": lat}, os.path.join(a.out, f"latents_{tokens}.safetensors"))
    save_file({"context": torch.randn(1, 512, 4096, generator=g)}, os.path.join(a.out, "context.safetensors"))
    save_file({"context_null": torch.randn(1, 512, 4096, generator=g)},
              os.path.join(a.out, "context_null.safetensors"))
    print(json.dumps({"inputs": a.out, "tokens": a.tokens}))


def denoise_row(a, name, tokens, extra, chain="cuda", launcher=(), steps=None, traced=True):
    steps = steps or a.steps
    flags = [f.format(model=a.model, latents=os.path.join(a.inputs, f"latents_{tokens}.safetensors"),
                      context=os.path.join(a.inputs, "context.safetensors"), steps=steps) for f in DENOISE_FLAGS]
    out_file = os.path.join(a.scratch, f"{name}_{tokens}.safetensors")
    cmd = list(launcher) + [a.exe] + flags + ["--device-chain", chain, "--output", out_file] + extra
    if traced and a.trace_dir:
        os.makedirs(a.trace_dir, exist_ok=True)
        cmd += ["--trace", os.path.join(a.trace_dir, f"wan_{name}_{tokens}.json")]
    rc, text, wall = run(cmd, a.timeout)
    r = {"command": " ".join(cmd), "rc": rc, "wall_seconds": round(wall, 2)}
    steps_s = [float(m.group(3)) for m in STEP_LINE.finditer(text)]
    if rc != 0 or not steps_s:
        r["error"] = text[-2000:]
        return r, None
    r["step_seconds"] = steps_s
    sw = SWAPPED.findall(text)
    r["swapped_blocks"] = sum(int(s) for s in sw) if sw else 0
    peaks = PEAK_LINE.findall(text)
    if peaks:
        r["device_peak_bytes"] = [int(p) for p, _ in peaks]
        r["plan_device_bytes"] = [int(q) for _, q in peaks]
    d = DISK_LINE.findall(text)
    if d:
        r["disk_bytes_read"] = int(sum(float(v) * UNITS.get(u, 1) for v, u in d))
    return r, statistics.median(steps_s[1:] if len(steps_s) > 1 else steps_s)


def wan_rows(a):
    from wan_stack import block_bytes
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    bb = block_bytes(cfg["dim"], cfg["ffn_dim"])
    bw = peers_bw(a.peers)
    rows = []
    settings = [s.split(":", 1) for s in a.settings.split(";")]
    for tokens in [int(t) for t in a.tokens.split(",")]:
        resident = None
        for name, extra in settings:
            info, secs = denoise_row(a, name, tokens, extra.split())
            moved = info.get("swapped_blocks", 0) * bb
            if name == "resident" and secs:
                resident = secs
            rows.append(pc.row("wan", "pipeswap " + name, tokens, secs or float("nan"), moved, resident, bw,
                               blocks=cfg["num_layers"], block_bytes=bb, **info))
    pc.emit(rows, a.out)


def llama_rows(a):
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    bw = peers_bw(a.peers)
    rows = []
    for tokens in [int(t) for t in a.tokens.split(",")]:
        ids = os.path.join(a.scratch, f"llama_ids_{tokens}.json")
        os.makedirs(a.scratch, exist_ok=True)
        with open(ids, "w") as f:
            json.dump([[(i * 7919) % cfg["vocab_size"] for i in range(tokens)]], f)
        resident = None
        for name, extra in [s.split(":", 1) for s in a.settings.split(";")]:
            cmd = [a.exe, "run", "--model", a.model, "--input", ids, "--device-chain", "cuda", "--dtype", "bf16",
                   "--output", os.path.join(a.scratch, f"llama_{name}_{tokens}.safetensors")] + extra.split()
            if a.trace_dir:
                os.makedirs(a.trace_dir, exist_ok=True)
                cmd += ["--trace", os.path.join(a.trace_dir, f"llama_{name}_{tokens}.json")]
            rc, text, wall = run(cmd, a.timeout)
            m = FORWARD_LINE.search(text)
            info = {"command": " ".join(cmd), "rc": rc, "wall_seconds": round(wall, 2)}
            secs = float(m.group(1)) if rc == 0 and m else float("nan")
            if rc != 0 or not m:
                info["error"] = text[-2000:]
            sw = SWAPPED.findall(text)
            info["swapped_blocks"] = sum(int(s) for s in sw) if sw else 0
            layer_bytes = _llama_layer_bytes(cfg)
            if name == "resident" and rc == 0 and m:
                resident = secs
            rows.append(pc.row("llama", "pipeswap " + name, tokens, secs, info["swapped_blocks"] * layer_bytes,
                               resident, bw, blocks=cfg["num_hidden_layers"], block_bytes=layer_bytes,
                               note="one cold forward pass (pipeswap run has no repeat flag yet)", **info))
    pc.emit(rows, a.out)


def _llama_layer_bytes(cfg, esize=2):
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * (h // cfg["num_attention_heads"])
    return esize * (2 * h * h + 2 * h * kv + 3 * h * f + 2 * h)


def disk_rows(a):
    with open(a.disk) as f:
        raw = json.load(f)
    rows = []
    tokens = int(a.tokens.split(",")[0])
    extra = f"--offload-ratio 1 --lazy-load --max-memory {a.max_memory} --num-disk-workers {a.disk_workers}".split()
    info, secs = denoise_row(a, "disk", tokens, extra, steps=a.steps)
    total = sum(info.get("step_seconds", [])) or float("nan")
    read = info.get("disk_bytes_read", 0)
    achieved = read / total / 1e9 if read and total == total else None
    ref = raw.get("many_streams_gbs") if a.disk_workers > 1 else raw.get("one_stream_gbs")
    rows.append({"workload": "wan", "mode": "pipeswap disk tier", "tokens": tokens, "seconds": secs,
                 "achieved_read_gbs": achieved and round(achieved, 3), "raw_direct_gbs": ref,
                 "fraction_of_raw": round(achieved / ref, 3) if achieved and ref else None,
                 "max_memory": a.max_memory, "raw": raw, **info})
    pc.emit(rows, a.out)


def two_gpu_rows(a):
    """Composition (2 GPUs each swapping half vs 1 GPU swapping all) and the 2-GPU pipeline with the CFG
    pair (M = 2) kept in flight across steps, both under mpirun -np 2 (NCCL between the stages)."""
    mpirun = ["mpirun", "-np", "2", "--bind-to", "none"]
    rows = []
    tokens = int(a.tokens.split(",")[0])
    for name, chain, launcher, extra in [
            ("1 GPU, all swapped", "cuda:0", (), ["--offload-ratio", "1"]),
            ("2 GPUs, each half swapped", "cuda:0,cuda:1", mpirun, ["--offload-ratio", "1"]),
            ("1 GPU, resident", "cuda:0", (), []),
            ("2 GPUs, resident", "cuda:0,cuda:1", mpirun, [])]:
        info, secs = denoise_row(a, name.replace(" ", "_").replace(",", ""), tokens, extra, chain=chain,
                                 launcher=launcher)
        rows.append({"workload": "wan", "mode": "pipeswap " + name, "tokens": tokens, "seconds": secs, **info})
    # TODO: the CFG pair (--guidance 5 --context-null) over S=30 steps, and torch.distributed.pipelining
    # (GPipe) and a plain NCCL send/recv as the peers of the pipeline and activation-transfer rows.
    pc.emit(rows, a.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inputs")
    i.add_argument("--out", required=True)
    i.add_argument("--tokens", default="1024,4096,16384")
    i.add_argument("--grid-hw", type=int, default=32)
    for name in ("wan", "llama", "disk", "two-gpu"):
        p = sub.add_parser(name)
        p.add_argument("--exe", required=True)
        p.add_argument("--model", required=True)
        p.add_argument("--inputs", default="")
        p.add_argument("--tokens", default="1024,4096,16384" if name != "llama" else "512,2048")
        p.add_argument("--steps", type=int, default=3)
        p.add_argument("--peers", default="", help="the peers' JSON of this run (its pinned bandwidth)")
        p.add_argument("--disk", default="", help="disk_bw.sh's JSON of this run")
        p.add_argument("--max-memory", default="4GB")
        p.add_argument("--disk-workers", type=int, default=4)
        p.add_argument("--settings", default="resident:;swap all:--offload-ratio 1 --prefetch-depth 2;"
                                             "swap half:--offload-ratio 0.5 --resident-policy interleaved")
        p.add_argument("--trace-dir", default="")
        p.add_argument("--scratch", default="/tmp/pipeswap-bench-out")
        p.add_argument("--timeout", type=int, default=240)
        p.add_argument("--out", default="")
    a = ap.parse_args()
    if hasattr(a, "scratch"):
        os.makedirs(a.scratch, exist_ok=True)
    {"inputs": make_inputs, "wan": wan_rows, "llama": llama_rows, "disk": disk_rows, "two-gpu": two_gpu_rows}[a.cmd](a)


if __name__ == "__main__":
    main()
