#!/usr/bin/env python3
"""Kernel-level profiles on the GPU machine, to find where pipeswap's time goes against the frameworks.

    kernel_profile.py peers --tokens 4096 --llama-tokens 2048 --out DIR
        transformers' LlamaForCausalLM (sdpa) and diffusers' WanTransformer3DModel (2 layers each, random
        weights at Llama-2-7B / Wan2.1-14B sizes, bf16) under torch.profiler: the CUDA kernels of one
        warm forward, by total time, plus each framework's median forward time with CUDA events.
    kernel_profile.py ncu CSV [--blocks N]
        summarises `ncu --csv --metrics gpu__time_duration.sum` output of a pipeswap run: time per kernel
        name, then per block (total / blocks).
"""
import argparse
import collections
import csv
import json
import os
import sys


def short(name, width=90):
    name = name.replace("void ", "")
    return name if len(name) <= width else name[: width - 3] + "..."


def table(rows, total, title, top=30):
    print(f"\n== {title}: {total / 1e3:.3f} ms of kernels ==")
    for n, (t, c) in rows[:top]:
        print(f"{t / 1e3:9.3f} ms {100 * t / total:5.1f}% x{c:<4d} {short(n)}")


def ncu_summary(a):
    acc = collections.defaultdict(lambda: [0.0, 0])
    order = []
    with open(a.csv) as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        v = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "ns")
        us = v / 1e3 if unit in ("ns", "nsecond") else v * 1e3 if unit in ("ms", "msecond") else v
        acc[r["Kernel Name"]][0] += us
        acc[r["Kernel Name"]][1] += 1
        order.append((r["Kernel Name"], us))
    total = sum(t for t, _ in acc.values())
    rows = sorted(acc.items(), key=lambda kv: -kv[1][0])
    table([(n, (t, c)) for n, (t, c) in rows], total, f"{a.csv} ({len(order)} kernels)")
    if a.sequence:
        print("\n-- in order --")
        for n, us in order[: a.sequence]:
            print(f"{us / 1e3:9.3f} ms {short(n)}")


def profile(fn, title, top=30, table_too=True):
    import torch
    from torch.profiler import ProfilerActivity, profile as tprof
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(7):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    if not table_too:
        print(f"{title}: median forward {times[len(times) // 2]:.3f} ms (7 timed after 3 warm-up)")
        return times[len(times) // 2]
    with tprof(activities=[ProfilerActivity.CUDA]) as p:
        fn()
        torch.cuda.synchronize()
    acc = collections.defaultdict(lambda: [0.0, 0])
    for ev in p.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            acc[ev.name][0] += ev.device_time
            acc[ev.name][1] += 1
    total = sum(t for t, _ in acc.values())
    rows = sorted(acc.items(), key=lambda kv: -kv[1][0])
    print(f"\n{title}: median forward {times[len(times) // 2]:.3f} ms (7 timed after 3 warm-up)")
    table([(n, (t, c)) for n, (t, c) in rows], total, title, top)
    return times[len(times) // 2]


def peers(a):
    import torch
    torch.manual_seed(0)
    dev = torch.device("cuda")
    out = {}
    with torch.inference_mode():
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=a.layers, num_attention_heads=32,
                          num_key_value_heads=32, vocab_size=32000, max_position_embeddings=8192)
        cfg._attn_implementation = "sdpa"
        with torch.device(dev):
            m = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
        for t in [int(x) for x in a.llama_tokens.split(",")]:
            ids = torch.randint(0, 32000, (1, t), device=dev)
            out[f"llama_{t}"] = profile(lambda: m(input_ids=ids, use_cache=False).logits,
                                        f"transformers LlamaForCausalLM {a.layers} layers, {t} tokens", table_too=a.tables)
        del m
        torch.cuda.empty_cache()
        from diffusers import WanTransformer3DModel
        with torch.device(dev):
            w = WanTransformer3DModel(num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
                                      text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=a.layers, cross_attn_norm=True,
                                      qk_norm="rms_norm_across_heads", eps=1e-6).to(torch.bfloat16).eval()
        for t in [int(x) for x in a.tokens.split(",")]:
            frames = t // (32 * 32)
            lat = torch.randn(1, 16, frames, 64, 64, device=dev, dtype=torch.bfloat16)
            ctx = torch.randn(1, 512, 4096, device=dev, dtype=torch.bfloat16)
            ts = torch.tensor([500.0], device=dev)
            out[f"wan_{t}"] = profile(lambda: w(hidden_states=lat, timestep=ts, encoder_hidden_states=ctx,
                                                return_dict=False)[0],
                                      f"diffusers WanTransformer3DModel {a.layers} layers, {t} tokens",
                                      table_too=a.tables)
    if a.out:
        with open(os.path.join(a.out, "peer_times.json"), "w") as f:
            json.dump(out, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("peers")
    p.add_argument("--tokens", default="4096")
    p.add_argument("--llama-tokens", default="2048")
    p.add_argument("--out", default="")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--no-tables", dest="tables", action="store_false", help="timings only")
    n = sub.add_parser("ncu")
    n.add_argument("csv")
    n.add_argument("--sequence", type=int, default=0, help="also list the first N kernels in launch order")
    a = ap.parse_args()
    return peers(a) if a.cmd == "peers" else ncu_summary(a)


if __name__ == "__main__":
    sys.exit(main())
