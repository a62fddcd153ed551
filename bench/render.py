#!/usr/bin/env python3
"""Renders docs/benchmarks.md from a results folder of bench/run-all (JSON rows, machine.txt,
steps.jsonl). A row whose results are missing reads "not run yet"; nothing is ever filled in by hand
except the findings, kept in bench/findings.json ({"<table>/<row key>": "text"}) so that a re-render
keeps them.

    python3 bench/render.py --results bench/results --doc docs/benchmarks.md
"""
import argparse
import datetime
import json
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))
NOT_RUN = "not run yet"


def load(results, name):
    p = os.path.join(results, name)
    if not os.path.exists(p):
        return []
    with open(p) as f:
        text = f.read().strip()
    if not text:
        return []
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:  # one JSON object per line
        return [json.loads(l) for l in text.splitlines() if l.strip().startswith("{")]


def fmt_s(x):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return NOT_RUN
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def cell(r):
    """'123.4 ms (1.02x)': seconds and seconds over the bound."""
    if not r:
        return NOT_RUN
    if r.get("error") or r.get("seconds") is None or (isinstance(r["seconds"], float) and math.isnan(r["seconds"])):
        return "failed (see results)"
    ob = r.get("over_bound")
    return f"{fmt_s(r['seconds'])} ({ob:.2f}x)" if ob else fmt_s(r["seconds"])


def offload_table(rows, workload, modes, findings, default_lengths, unit="tokens"):
    by = {(r["mode"], r["tokens"]): r for r in rows if r.get("workload") == workload}
    lengths = sorted({t for _, t in by}) or default_lengths
    head = f"| {unit} | bound | " + " | ".join(label for _, label in modes) + " | target met | finding |"
    out = [head, "|" + " --- |" * (len(modes) + 4)]
    for t in lengths:
        res = by.get(("resident", t)) or by.get(("pipeswap resident", t))
        bound = NOT_RUN
        if res:
            bw = res.get("pinned_h2d_gbs")
            bound = f"compute {fmt_s(res.get('resident_seconds'))}" + (f", {bw} GB/s pinned" if bw else "")
        cells = [cell(by.get((m, t))) for m, _ in modes]
        ps = [by.get((m, t)) for m, _ in modes if m.startswith("pipeswap swap")]
        peers = [by.get((m, t)) for m, _ in modes if not m.startswith("pipeswap") and m != "resident"]
        met = NOT_RUN
        if ps and all(p and p.get("over_bound") for p in ps):
            fastest_peer = min((p["seconds"] for p in peers if p and p.get("seconds")), default=None)
            ok = all(p["over_bound"] <= 1.03 for p in ps) and (
                fastest_peer is None or all(p["seconds"] < fastest_peer for p in ps))
            met = "yes" if ok else "**no**"
        out.append(f"| {t} | {bound} | " + " | ".join(cells) + f" | {met} | "
                   f"{findings.get(f'{workload}/{t}', '')} |")
    return "\n".join(out)


def render(results, doc, command=None):
    findings_path = os.path.join(HERE, "findings.json")
    findings = json.load(open(findings_path)) if os.path.exists(findings_path) else {}
    machine = open(os.path.join(results, "machine.txt")).read().strip() if os.path.exists(
        os.path.join(results, "machine.txt")) else NOT_RUN
    steps = load(results, "steps.jsonl")
    wan = load(results, "wan_peers.json") + load(results, "wan_pipeswap.json")
    llama = load(results, "llama_peers.json") + load(results, "llama_pipeswap.json")
    disk = load(results, "disk_pipeswap.json")
    sched = load(results, "sched_cpu.jsonl") + load(results, "sched_cuda.jsonl")
    two = load(results, "two_gpu.json")
    ran = bool(wan or llama or disk or sched or two)
    date = datetime.date.today().isoformat() if ran else NOT_RUN
    modes = [("resident", "PyTorch resident"), ("pipeswap resident", "pipeswap resident"),
             ("pipeswap swap all", "pipeswap, all swapped"), ("pipeswap swap half", "pipeswap, half swapped"),
             ("naive", "naive .to()"), ("accelerate", "Accelerate cpu_offload"),
             ("prefetch", "side-stream prefetch (LightX2V / diffusers)")]
    L = []
    L.append("# Benchmarks\n")
    L.append("Rendered by `bench/render.py` from the results of `bench/run-all` (one device call on the GPU "
             "machine). Every ratio in a row comes from the same run. A cell reading "
             f"\"{NOT_RUN}\" has no measurement behind it; nothing here is estimated or typed in. A missed target "
             "stays as measured, with the finding from its `--trace` timeline beside it.\n")
    L.append(f"- **Machine**: {machine}".replace("\n", "; "))
    L.append(f"- **Command**: `{command or 'bash bench/run-all'}` (scratch weights under `$SCRATCH`, results and "
             "traces under `$OUT`)")
    L.append(f"- **Date**: {date}")
    if steps:
        L.append("- **Steps**: " + ", ".join(
            f"{s['step']} {'skipped (' + s['skipped'] + ')' if 'skipped' in s else ('ok' if s.get('rc') == 0 else 'rc ' + str(s.get('rc')))}"
            for s in steps))
    L.append("")
    L.append("## Workloads and why they are this size\n")
    L.append("- **Wan2.1-14B-sized DiT blocks** (`bench/wan_stack.py`): d 5120, ffn 13824, 40 heads, self- and "
             "cross-attention (512 text tokens), bf16, random weights in Wan2.1's own tensor names, as real "
             "safetensors shards. One block is 703 MB. Lengths 1k, 4k and 16k tokens are latents of F x 64 x 64 "
             "(F = 1, 4, 16) after 1x2x2 patches. The default stack has 12 blocks (8.4 GB): enough that the copies "
             "dominate at 1k tokens (12 x 12.8 ms of PCIe against about 13 ms of compute) and compute dominates at "
             "16k, while generating the weights, loading them once per pipeswap row and every peer fit one "
             "10-minute device call. `WAN_BLOCKS=40 bash bench/run-all` runs the full 40 blocks where a longer "
             "call is allowed; the ratios, not the absolute times, are the result.")
    L.append("- **A few-GB Llama** (`bench/llama_peers.py make`): 8 layers of Llama-2-7B size (d 4096, ffn 11008, "
             "32 heads) and a 32k vocabulary, 3.7 GB of bf16 in HF layout, random weights.\n")
    L.append("Peers (`bench/peers_common.py`, in PyTorch in the same run, on the same weights and inputs): "
             "PyTorch with every block resident (the compute floor); naive per-block `.to(device)` swapping; "
             "Accelerate `cpu_offload` on every block; a side-stream prefetch from pinned memory, two blocks on "
             "the device (the LightX2V / diffusers group-offload method). The bound of a row is max(resident "
             "compute, bytes moved / pinned host-to-device bandwidth measured in the same run); cells show "
             "seconds per pass over the blocks and, in brackets, seconds over that bound.\n")
    L.append("## 1. Offload on one GPU\n")
    L.append("Target: pipeswap <= 1.03x the bound at every length, and faster than every peer.\n")
    L.append("### Wan2.1-sized blocks (seconds per denoising step / per pass over the blocks)\n")
    L.append(offload_table(wan, "wan", modes, findings, [1024, 4096, 16384]))
    L.append("\n### Few-GB Llama (one forward pass)\n")
    L.append(offload_table(llama, "llama", modes, findings, [512, 2048]))
    L.append("\npipeswap's Llama rows are single cold forward passes (`pipeswap run` has no repeat flag yet); the "
             "peers' are medians after a warm-up pass.\n")
    L.append("## 2. Disk tier\n")
    L.append("Lazy load from the safetensors files with a host budget (`--max-memory`) smaller than the model, "
             "against the raw O_DIRECT read bandwidth of the same disk (`bench/disk_bw.sh`, dd with 16 MiB "
             "requests) measured in the same run. Target >= 90%.\n")
    L.append("| tokens | host budget | pipeswap read GB/s | raw O_DIRECT GB/s | fraction | target met | finding |")
    L.append("| --- | --- | --- | --- | --- | --- | --- |")
    if disk:
        for r in disk:
            frac = r.get("fraction_of_raw")
            L.append(f"| {r['tokens']} | {r.get('max_memory')} | {r.get('achieved_read_gbs') or NOT_RUN} | "
                     f"{r.get('raw_direct_gbs') or NOT_RUN} | {frac if frac else NOT_RUN} | "
                     f"{('yes' if frac >= 0.9 else '**no**') if frac else NOT_RUN} | {findings.get('disk', '')} |")
    else:
        L.append(f"| 1024 | 4GB | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | |")
    L.append("\n## 3. Pipeline on 2 GPUs\n")
    L.append("Throughput of M micro-batches vs 1 GPU and vs `torch.distributed.pipelining` (GPipe) on the same "
             "blocks; the denoising loop of S = 30 steps with M = 2 (the CFG pair) kept full across steps. "
             "Targets: one step >= 0.95 of the GPipe ideal; S = 30, M = 2 >= 1.85x one GPU.\n")
    L.append("| setting | seconds per step | vs 1 GPU | vs GPipe | target met | finding |")
    L.append("| --- | --- | --- | --- | --- | --- |")
    two_by = {r["mode"]: r for r in two}
    for m in ("pipeswap 1 GPU, resident", "pipeswap 2 GPUs, resident"):
        r = two_by.get(m)
        L.append(f"| {m[9:]} | {fmt_s(r.get('seconds')) if r else NOT_RUN} | {NOT_RUN if not r else '—'} | "
                 f"{NOT_RUN} | {NOT_RUN} | |")
    L.append(f"| 2 GPUs, CFG pair, S = 30 | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | GPipe peer and CFG "
             "driver: TODO in bench/pipeswap_rows.py |")
    L.append("\n## 4. Composition\n")
    L.append("2 GPUs each swapping half the blocks vs 1 GPU swapping all, at 1k tokens (transfer-bound). Each GPU "
             "has its own PCIe link: target >= 1.8x.\n")
    one, both = two_by.get("pipeswap 1 GPU, all swapped"), two_by.get("pipeswap 2 GPUs, each half swapped")
    speed = (one["seconds"] / both["seconds"]) if one and both and one.get("seconds") and both.get("seconds") else None
    L.append("| 1 GPU, all swapped | 2 GPUs, half each | speed-up | target met | finding |")
    L.append("| --- | --- | --- | --- | --- |")
    L.append(f"| {fmt_s(one.get('seconds')) if one else NOT_RUN} | {fmt_s(both.get('seconds')) if both else NOT_RUN} "
             f"| {f'{speed:.2f}x' if speed else NOT_RUN} | "
             f"{('yes' if speed >= 1.8 else '**no**') if speed else NOT_RUN} | {findings.get('composition', '')} |")
    L.append("\n## 5. Activation transfer\n")
    L.append("pipeswap's stage-to-stage bytes/s against a plain NCCL send/recv of the same size. Target >= 80%.\n")
    L.append("| activation bytes | pipeswap GB/s | NCCL send/recv GB/s | fraction | target met |")
    L.append("| --- | --- | --- | --- | --- |")
    L.append(f"| {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} |")
    L.append("\n## 6. Scheduler overhead\n")
    L.append("Host time per block through the offload engine with tiny blocks (two 64 x 64 phases; "
             "`build-gpu/bench/sched_overhead`). Target < 20 us.\n")
    L.append("| setting | CPU us/block | CUDA us/block | target met |")
    L.append("| --- | --- | --- | --- |")
    names = ["resident", "swapped, prefetch depth 1", "swapped, prefetch depth 2", "swapped by phase, prefetch depth 2"]
    for n in names:
        c = next((r for r in sched if r.get("setting") == n and r.get("device") == "cpu"), None)
        g = next((r for r in sched if r.get("setting") == n and str(r.get("device", "")).startswith("cuda")), None)
        vals = [r["host_us_per_block"] for r in (c, g) if r]
        us = ["%.1f" % r["host_us_per_block"] if r else NOT_RUN for r in (c, g)]
        met = ("yes" if all(v < 20 for v in vals) else "**no**") if vals else NOT_RUN
        L.append(f"| {n} | {us[0]} | {us[1]} | {met} |")
    L.append("\n## 7. Memory: peak device memory vs the plan\n")
    L.append("LibTorch's CUDA allocator peak against the plan's prediction, for each pipeswap row.\n")
    L.append("| row | measured peak | plan | difference |")
    L.append("| --- | --- | --- | --- |")
    mem = [r for r in wan + llama + disk + two if r.get("device_peak_bytes")]
    for r in mem:
        for peak, plan in zip(r["device_peak_bytes"], r["plan_device_bytes"]):
            L.append(f"| {r['workload']} {r['mode']} {r['tokens']} | {peak / 1e6:.1f} MB | {plan / 1e6:.1f} MB | "
                     f"{100.0 * (peak - plan) / max(1, plan):+.2f}% |")
    if not mem:
        L.append(f"| {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} |")
    L.append("\n## Reading a trace\n")
    L.append("Every pipeswap row writes a `--trace` timeline (`$OUT/traces/*.json.gz`; open in "
             "https://ui.perfetto.dev). One process per rank, one row per lane: `compute` (each block's phases, "
             "timed on the GPU by CUDA events), `copy` (slot fills on the copy stream), `disk` (reads of the lazy "
             "tier), `comm` (send / recv). `wait` ranges show where compute stood still for a copy (on the GPU: "
             "the compute stream waiting on a slot's ready event) or the copy thread for the disk.")
    with open(doc, "w") as f:
        f.write("\n".join(L) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--doc", default=os.path.join(HERE, "..", "docs", "benchmarks.md"))
    ap.add_argument("--command", default=None)
    a = ap.parse_args()
    render(a.results, a.doc, a.command)


if __name__ == "__main__":
    main()
