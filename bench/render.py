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


# What a row measures: a later folder's row with the same identity replaces an earlier folder's (a rerun of one
# section in a later session supersedes that section's rows and keeps the rest).
ROW_IDENTITY = ("workload", "mode", "tokens", "samples", "batch", "setting", "device", "gpus", "flags", "offload")


def load(results, name):
    """The rows of one results file, from one folder or several (a list: later calls' folders last). Across
    folders, a later row supersedes an earlier one of the same ROW_IDENTITY; steps.jsonl keeps every call's."""
    out = []
    for folder in results if isinstance(results, (list, tuple)) else [results]:
        p = os.path.join(folder, name)
        if not os.path.exists(p):
            continue
        with open(p) as f:
            text = f.read().strip()
        if not text:
            continue
        try:
            data = json.loads(text)
            rows = data if isinstance(data, list) else [data]
        except json.JSONDecodeError:  # one JSON object per line
            rows = [json.loads(l) for l in text.splitlines() if l.strip().startswith("{")]
        if name != "steps.jsonl":
            later = {tuple(r.get(k) for k in ROW_IDENTITY) for r in rows}
            out = [r for r in out if tuple(r.get(k) for k in ROW_IDENTITY) not in later]
        out += rows
    return out


def fmt_s(x):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return NOT_RUN
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


MIN_ITERS = 5  # a time is a median of at least this many steps or passes after warm-up


def failed(r):
    return bool(r) and str(r.get("status", "ok")).startswith("FAILED")


def cell(r):
    """'123.4 ms (1.02x)': seconds and seconds over the row's bound; FAILED rows say so first."""
    if not r:
        return NOT_RUN
    if r.get("status") == "n/a":
        return "n/a"
    secs = r.get("seconds")
    has_time = secs is not None and not (isinstance(secs, float) and math.isnan(secs))
    ob = r.get("over_bound")
    text = (f"{fmt_s(secs)} ({ob:.2f}x)" if ob else fmt_s(secs)) if has_time else ""
    if has_time and r.get("iters") is not None and r["iters"] < MIN_ITERS:
        text += f" (median of {r['iters']} < {MIN_ITERS})"
    if failed(r):
        return f"**FAILED** {text}".strip()
    return text or "failed (see results)"


def trace_finding(r):
    """'trace per step: self_attn 40.1, ffn 30.2, ... ms (span 87.8 ms)' from a row's trace_summary."""
    ts = (r or {}).get("trace_summary") or {}
    if not ts or ts.get("error"):
        return f"no trace ({ts.get('error')})" if ts.get("error") else ""
    parts = [f"{k} {v:.1f}" for k, v in ts["ms"].items() if k != "copy"]
    if ts.get("other_ms"):
        parts.append(f"other {ts['other_ms']:.1f}")
    if ts["ms"].get("copy"):
        parts.append(f"copies beside compute {ts['ms']['copy']:.1f}")
    return f"trace, ms per {'step' if r.get('workload') == 'wan' else 'pass'} ({ts['steps']} after warm-up): " + \
        ", ".join(parts) + f" (span {ts['span_ms']:.1f})"


RESIDENT_TARGET = 1.05  # pipeswap resident over the framework's resident time
SWAP_TARGET = 1.03      # pipeswap swapped over the bound


def offload_table(rows, workload, modes, findings, default_lengths, fw):
    """One row per length: the framework's resident time and the pinned bandwidth (the bound's parts), then
    each mode's seconds (over its bound), the two targets and the findings (trace-based for a missed one)."""
    by = {(r["mode"], r["tokens"]): r for r in rows if r.get("workload") == workload and r.get("tokens")}
    lengths = sorted({t for _, t in by}) or default_lengths
    head = f"| tokens | {fw} resident (bound) | pinned H2D | " + " | ".join(label for _, label in modes) + \
        f" | resident <= {RESIDENT_TARGET}x {fw} | swapped <= {SWAP_TARGET}x bound, faster than every peer | finding |"
    out = [head, "|" + " --- |" * (len(modes) + 6)]
    for t in lengths:
        res = by.get(("resident", t))
        bw = next((r.get("pinned_h2d_gbs") for r in by.values() if r.get("pinned_h2d_gbs")), None)
        cells = [cell(by.get((m, t))) for m, _ in modes]
        notes = []
        # Resident target: pipeswap's resident time over the framework's (its bound).
        pres = by.get(("pipeswap resident", t))
        res_met = NOT_RUN
        if pres and failed(pres):
            res_met = "**no** (FAILED)"
        elif pres and pres.get("over_bound") and res:
            ok = pres["over_bound"] <= RESIDENT_TARGET
            res_met = "yes" if ok else "**no**"
            if not ok:
                notes.append(f"pipeswap resident {pres['over_bound']:.2f}x {fw}; " + trace_finding(pres))
        # Swapped target: every pipeswap swapped row within 1.03x of its bound and faster than every swapped peer.
        ps = [by.get((m, t)) for m, _ in modes if m.startswith("pipeswap swap")]
        peers = [by.get((m, t)) for m, _ in modes if not m.startswith("pipeswap") and m not in ("resident", "compile")]
        swap_met = NOT_RUN
        if ps and any(p and failed(p) for p in ps):
            swap_met = "**no** (FAILED)"
        elif ps and all(p and p.get("over_bound") for p in ps):
            fastest = min((p["seconds"] for p in peers if p and p.get("seconds") and not failed(p)), default=None)
            within = all(p["over_bound"] <= SWAP_TARGET for p in ps)
            faster = fastest is None or all(p["seconds"] < fastest for p in ps)
            swap_met = "yes" if within and faster else "**no**"
            for p in ps:
                if p["over_bound"] > SWAP_TARGET:
                    notes.append(f"{p['mode']} {p['over_bound']:.2f}x the bound; " + trace_finding(p))
        if findings.get(f"{workload}/{t}"):
            notes.append(findings[f"{workload}/{t}"])
        bound = NOT_RUN
        if res:
            bound = fmt_s(res.get("seconds")) if not failed(res) else f"**FAILED** {fmt_s(res.get('seconds'))}"
            if res.get("iters") is not None and res["iters"] < MIN_ITERS:
                bound += f" (median of {res['iters']} < {MIN_ITERS})"
        comp = by.get(("compile", t))
        if pres and comp and pres.get("over_bound") and comp.get("over_bound") and not failed(comp):
            # Both ratios are over eager diffusers measured in their own call: their quotient compares
            # pipeswap with compiled diffusers without comparing times across calls.
            notes.insert(0, f"stretch: pipeswap resident / compiled diffusers = "
                            f"{pres['over_bound'] / comp['over_bound']:.2f}.")
        out.append(f"| {t} | {bound} | {f'{bw} GB/s' if bw else NOT_RUN} | " + " | ".join(cells) +
                   f" | {res_met} | {swap_met} | {' '.join(notes)} |")
    return "\n".join(out)


def checks_table(rows, workload, fw):
    """Every row's dtype and same-computation checks, and its status."""
    L = [f"| row | tokens | dtype (row / expected) | relative L2 error | against | tolerance | status |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
    n = 0
    for r in rows:
        if r.get("workload") != workload or not r.get("tokens"):
            continue
        d, c = r.get("dtype_check") or {}, r.get("check") or {}
        dt = f"{d.get('row')} / {d.get('expected')}" if d else "-"
        err = f"{c['rel_l2']:.2e}" if isinstance(c.get("rel_l2"), (int, float)) else (str(c.get("rel_l2")) if c else "-")
        status = r.get("status", "ok")
        status = f"**{status}**" if status.startswith("FAILED") else status
        L.append(f"| {r['mode']} | {r['tokens']} | {dt} | {err} | {c.get('against', '-')} | "
                 f"{c.get('tolerance', '-')} | {status} |")
        n += 1
    if not n:
        L.append(f"| {NOT_RUN} | | | | | | |")
    return "\n".join(L)


def fmt_x(x):
    return f"{x:.2f}x" if x else NOT_RUN


def ratio(a, b):
    return a / b if a and b else None


def met(value, target):
    return (("yes" if value >= target else "**no**") if value else NOT_RUN) if target else "-"


def setting_name(b, cfg):
    return f"{b} sample{'s' if b > 1 else ''}, {'CFG pair' if cfg else 'no CFG'} (M = {b * (2 if cfg else 1)})"


DEFAULT_PIPE = [(4096, 1, True), (4096, 2, True), (4096, 2, False)]


def pipeline_section(two, gpipe, findings):
    """Scenario 3: pipeswap's 2-GPU denoise rows against its 1-GPU runs and the GPipe peer."""
    ps = {(r["tokens"], r["samples"], r["cfg"], r["gpus"]): r for r in two if r.get("mode") == "pipeswap denoise"}
    gp = {(r["mode"], r["tokens"], r["samples"], r["cfg"]): r for r in gpipe}
    keys = sorted({k[:3] for k in ps} | {k[1:] for k in gp}, key=lambda k: (k[0], k[1] * (2 if k[2] else 1), k[1])) \
        or DEFAULT_PIPE
    steps = next((r["steps"] for r in list(ps.values()) + gpipe if r.get("steps")), 30)
    L = ["\n## 3. Pipeline on 2 GPUs\n",
         "Wan blocks split 1:1 over two GPUs against the same blocks on one, and against PyTorch's own pipeline "
         "parallelism (`torch.distributed.pipelining`, ScheduleGPipe: `bench/wan_gpipe.py`, same blocks, same "
         "micro-batch shapes, outputs checked against one device). A setting is B samples with the CFG pair "
         "(M = 2B micro-batches per step, conditional and unconditional) or without guidance (M = B). pipeswap: "
         "`pipeswap denoise` with S steps, resident, `mpirun -np 2 ... --device-chain cuda:0=1,cuda:1=1`; its "
         "seconds per step are the mean of steps 2..S (step 1 pays for first kernels and the pipeline fill), and "
         "a sample's next step enters as soon as its previous one has left the last stage. GPipe fills and drains "
         "once per step (its API runs one batch per call): the ideal speed-up of M micro-batches on p stages is "
         "pM / (M + p - 1), 1.33x for M = 2 and 1.60x for M = 4 on two GPUs. With exact CFG on one sample no "
         "schedule beats 1.33x (docs/design-notes.md, \"Denoising: the CFG pair\"); with B >= 2 pipeswap's "
         "bound is 2BSp / (2BS + p - 1) with CFG and BSp / (BS + p - 1) without (B >= p).\n",
         "### One step of M micro-batches\n",
         "Seconds per step. GPipe: median of isolated steps after a warm-up; PyTorch 1 GPU: the same micro-batches "
         "one after another through every block; pipeswap: the S-step runs below (for B = 1 with CFG a step cannot "
         "overlap the next, as in GPipe; for B >= 2 consecutive steps overlap, which GPipe's ideal does not count). "
         "Target: pipeswap's speed-up >= 0.95 of the GPipe ideal.\n",
         "| tokens | setting | pipeswap 1 GPU | pipeswap 2 GPUs | speed-up | GPipe ideal | of ideal | PyTorch 1 GPU "
         "| GPipe 2 GPUs | GPipe speed-up | pipeswap / GPipe time | target met | finding |",
         "|" + " --- |" * 13]

    def pipeswap_cells(t, b, cfg):
        """pipeswap's speed-up, its 2-GPU seconds per step, and the row's first cells (setting, 1 GPU,
        2 GPUs, speed-up)."""
        s1, s2 = (r and r.get("seconds_per_step") for r in (ps.get((t, b, cfg, 1)), ps.get((t, b, cfg, 2))))
        sp = ratio(s1, s2)
        return sp, s2, f"| {t} | {setting_name(b, cfg)} | {fmt_s(s1)} | {fmt_s(s2)} | {fmt_x(sp)} |"

    for t, b, cfg in keys:
        sp, s2, cells = pipeswap_cells(t, b, cfg)
        g = gp.get(("gpipe one step", t, b, cfg)) or {}
        m = b * (2 if cfg else 1)
        ideal = 2 * m / (m + 1)
        frac = sp / ideal if sp else None
        L.append(f"{cells} {ideal:.2f}x | {f'{frac:.2f}' if frac else NOT_RUN} | {fmt_s(g.get('one_gpu_seconds'))} | "
                 f"{fmt_s(g.get('seconds'))} | {fmt_x(g.get('speedup'))} | {fmt_x(ratio(s2, g.get('seconds')))} | "
                 f"{met(frac, 0.95)} | {findings.get(f'pipeline/{t}/{b}:{cfg}', '')} |")
    L += [f"\n### Denoising loop of S = {steps} steps\n",
          "Seconds per step over the loop (pipeswap: steps 2..S; GPipe and PyTorch 1 GPU: S steps after a warm-up "
          "step, the Euler step on rank 0, one fill-and-drain schedule per step). Target: S = 30, M = 2 >= 1.85x "
          "one GPU.\n",
          "| tokens | setting | pipeswap 1 GPU | pipeswap 2 GPUs | speed-up | PyTorch 1 GPU | GPipe 2 GPUs "
          "| GPipe speed-up | pipeswap / GPipe time | target met | finding |",
          "|" + " --- |" * 11]
    for t, b, cfg in keys:
        sp, s2, cells = pipeswap_cells(t, b, cfg)
        g = gp.get(("gpipe denoise", t, b, cfg)) or {}
        m = b * (2 if cfg else 1)
        g1 = g.get("one_gpu_seconds") and g["one_gpu_seconds"] / g["steps"]
        L.append(f"{cells} {fmt_s(g1)} | {fmt_s(g.get('seconds_per_step'))} | {fmt_x(g.get('speedup'))} | "
                 f"{fmt_x(ratio(s2, g.get('seconds_per_step')))} | "
                 f"{met(sp, 1.85 if m == 2 else None)} | {findings.get(f'loop/{t}/{b}:{cfg}', '')} |")
    return "\n".join(L)


def composition_section(two, findings):
    by = {r["mode"]: r for r in two}
    one, both = by.get("pipeswap 1 GPU, all swapped"), by.get("pipeswap 2 GPUs, each half swapped")
    speed = ratio(one and one.get("seconds"), both and both.get("seconds"))
    t = (one or both or {}).get("tokens", 1024)
    return "\n".join([
        "\n## 4. Composition\n",
        f"2 GPUs each swapping all of their half of the blocks vs 1 GPU swapping all, at {t} tokens "
        "(transfer-bound), 2 samples without guidance so that both stages work at once (`--offload-ratio 1 "
        "--prefetch-depth 2`); seconds per step, mean of steps 2..S. Each GPU has its own PCIe link: target >= 1.8x.\n",
        "| 1 GPU, all swapped | 2 GPUs, half each | speed-up | target met | finding |",
        "| --- | --- | --- | --- | --- |",
        f"| {fmt_s(one and one.get('seconds'))} | {fmt_s(both and both.get('seconds'))} | {fmt_x(speed)} | "
        f"{met(speed, 1.8)} | {findings.get('composition', '')} |"])


def transfer_section(two, p2p, findings):
    ps = {r["tokens"]: r.get("stage_transfer") or {} for r in two if r.get("mode") == "pipeswap stage transfer"}
    ref = {r["tokens"]: r for r in p2p if r.get("what") == "activation"}
    lengths = sorted(set(ps) | set(ref)) or [1024, 4096, 16384]
    L = ["\n## 5. Activation transfer\n",
         "pipeswap's stage-to-stage bytes/s against a plain NCCL send/recv of the same tensors (`bench/nccl_p2p.py`: "
         "x [1, L, d] and the context [1, 512, d] in bf16, e and e0 in fp32, one send each). pipeswap: a traced "
         "2-GPU run (one sample, resident); per activation message, the time from the later of the sender's last "
         "and the receiver's previous GPU compute to the receiver's first GPU compute of that micro-batch (the "
         "trace's host send/recv ranges are issue times on NCCL ranks; `pipeswap_rows.py transfer` explains the "
         "method), median over the messages of steps 2..S. NCCL \"one at a time\": half a ping-pong round trip, "
         "the same quantity; \"streamed\": back-to-back sends, the link's throughput. Target >= 80% of one at a "
         "time.\n",
         "| tokens | activation bytes | pipeswap GB/s | NCCL one at a time GB/s | NCCL streamed GB/s | fraction "
         "| target met | finding |",
         "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in lengths:
        p, r = ps.get(t, {}), ref.get(t, {})
        nbytes = p.get("bytes") or r.get("bytes")
        frac = ratio(p.get("gbs"), r.get("one_at_a_time_gbs"))
        notes = []
        if p.get("error"):
            notes.append(f"pipeswap: {p['error']}.")
        if p.get("bytes") and r.get("bytes") and p["bytes"] != r["bytes"]:
            notes.append(f"bytes differ: pipeswap {p['bytes']}, reference {r['bytes']}.")
        note = " ".join(notes + [findings.get(f"transfer/{t}", "")]).strip()
        L.append(f"| {t} | {nbytes or NOT_RUN} | {p.get('gbs') or NOT_RUN} | {r.get('one_at_a_time_gbs') or NOT_RUN} "
                 f"| {r.get('streamed_gbs') or NOT_RUN} | {f'{frac:.2f}' if frac else NOT_RUN} | {met(frac, 0.8)} "
                 f"| {note} |")
    return "\n".join(L)


def scale_section(rows, findings):
    """The Wan issue's scale check: 40 Wan2.1-14B-sized blocks, swapped on one GPU and split over two."""
    L = ["\n## 8. Scale check: 40 Wan2.1-14B-sized blocks\n",
         "The full 40-block stack (28 GB of bf16, `bench/wan_stack.py --blocks 40`), one sample with the CFG pair "
         "at the first benchmark length, 3 steps (`pipeswap_rows.py scale`): on one GPU with 30 blocks swapped, "
         "and over two GPUs with 10 of each rank's 20 blocks swapped and all resident. Each rank's measured device "
         "memory peak (LibTorch's CUDA allocator) beside the plan's prediction; every setting must give the first "
         "row's latents bit for bit.\n",
         "| GPUs | flags | seconds per step | peak / plan per rank | same latents | finding |",
         "| --- | --- | --- | --- | --- | --- |"]
    if not rows:
        L.append(f"| 1 | --blocks-to-swap 30 | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | |")
        L.append(f"| 2 | --blocks-to-swap 10 | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | |")
    for k, r in enumerate(rows):
        if r.get("error"):
            L.append(f"| {r['gpus']} | {r.get('flags') or '(resident)'} | failed (see results) | | | "
                     f"{findings.get(f'scale/{k}', '')} |")
            continue
        mem = "; ".join(f"{p / 1e9:.2f} / {q / 1e9:.2f} GB ({100.0 * (p - q) / max(1, q):+.1f}%)"
                        for p, q in zip(r.get("device_peak_bytes", []), r.get("plan_device_bytes", []))) or NOT_RUN
        same = "first row" if k == 0 else ("yes" if r.get("same_latents_as_first_row") else "**no**")
        L.append(f"| {r['gpus']} | {r.get('flags') or '(resident)'} | {fmt_s(r.get('seconds_per_step'))} | {mem} | "
                 f"{same} | {findings.get(f'scale/{k}', '')} |")
    return "\n".join(L)


def cfg_section(rows, findings):
    """Shared fills (issue 16): each swapped block once a step, however many micro-batches a rank holds."""
    L = ["\n## 9. Shared fills: 40 blocks, 30 swapped, CFG on one GPU\n",
         "The 40-block stack (`bench/wan_stack.py --blocks 40`), `--blocks-to-swap 30`, default flags otherwise, "
         "at the first benchmark length (`pipeswap_rows.py cfg`; SECTIONS=cfg): S samples with the CFG pair "
         "(2S micro-batches a step), once per `--swap-order`. Time: median of steps 2..N. Bound: max(diffusers' "
         "resident forward of the 2S-row batch, 30 blocks' bytes / the pinned GB/s measured in the same call): "
         "one sweep of the swapped bytes a step. Target: shared <= 1.05x the bound. Fills per step: the run "
         "summary's (the plan's) [the trace's copy ranges]. Every order must give the same latents bit for bit, "
         "and all of them diffusers' batched CFG loop's within the bf16 tolerance. The peer: diffusers' "
         "`enable_group_offload(block_level, use_stream=True)` with the pair batched into one forward.\n",
         "| samples | order | s / step | fills / step | x bound | target met | diffusers group offload (x bound) "
         "| check | finding |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    mine = [r for r in rows if str(r.get("mode", "")).startswith("pipeswap cfg")]
    peers = {(r.get("mode"), r.get("samples")): r for r in rows if not str(r.get("mode", "")).startswith("pipeswap")}
    # Every setting the section runs has a line: one that no call measured yet reads "not run yet".
    for s in (1, 2):
        for o in ("per-micro-batch", "shared", "auto"):
            if not any(r.get("samples") == s and r["mode"] == f"pipeswap cfg {o}" for r in mine):
                mine.append({"mode": f"pipeswap cfg {o}", "samples": s, "missing": True})
    order_rank = {"per-micro-batch": 0, "shared": 1, "auto": 2}
    mine.sort(key=lambda r: (r.get("samples") or 0, order_rank.get(r["mode"].replace("pipeswap cfg ", ""), 3)))
    for r in mine:
        if r.get("missing"):
            L.append(f"| {r['samples']} | {r['mode'].replace('pipeswap cfg ', '')} | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} "
                     f"| {NOT_RUN} | {NOT_RUN} | | |")
            continue
        s, order = r.get("samples"), r["mode"].replace("pipeswap cfg ", "")
        g = peers.get(("group_block cfg", s)) or {}
        gcell = f"{fmt_s(g.get('seconds'))} ({fmt_x(g.get('over_bound'))})" if g.get("seconds") == g.get("seconds") \
            and g else NOT_RUN
        if r.get("error"):
            L.append(f"| {s} | {order} | failed (see results) | | | | {gcell} | | {findings.get(f'cfg/{s}/{order}', '')} |")
            continue
        fills = f"{r.get('fills_per_step', '?')} ({r.get('plan_fills_per_step', '?')}) [{r.get('trace_fills_per_step', '?')}]"
        if r.get("order_chosen") and order == "auto":
            order = f"auto: {r['order_chosen']}"
        ob = r.get("over_bound")
        target = ("yes" if ob <= 1.05 else "**no**") if ob and "shared" in order else ""
        L.append(f"| {s} | {order} | {fmt_s(r.get('seconds'))} | {fills} | {fmt_x(r.get('over_bound'))} | {target} | "
                 f"{gcell} | {r.get('status', '')} | {findings.get(f'cfg/{s}/{order}', '')} |")
    return "\n".join(L)


FP8_TARGETS = ("Targets (issue 17): the 1k and 4k swapped rows with fp8 weights <= 0.55x today's bf16 transfer bound; "
               "resident fp8 dequantised per use <= 1.1x the bf16 resident step; with `--fp8-gemm scaled-mm` "
               "(torch._scaled_mm) faster than bf16 at 4k and 16k tokens.")


def fp8_section(bf16_rows, fp8_rows, disk_rows):
    """fp8 weights (issue 17): bf16 and fp8 rows of the same call (SECTIONS=fp8), the same 12 Wan blocks."""
    L = ["\n## 13. fp8 weights (issue 17)\n",
         "The 12-block stack of section 1 (bf16) and its fp8 copy as users' files store it (`bench/fp8_stack.py`: "
         "e4m3 per output channel with a `weight_scale`), in one call (`SECTIONS=fp8 bash bench/gpu-all`), every "
         "row `pipeswap denoise --dtype bf16` (bf16 compute). \"fp8 at load\" quantises the bf16 files at load "
         "(`--weight-dtype fp8`). A swapped row's bound is the bf16 rows' (max(diffusers' resident forward, bf16 "
         "block bytes / pinned GB/s)), so its ratio is its time against today's bf16 transfer bound. Output check: "
         "the final latents against diffusers' bf16 loop, tolerance 0.08 (fp8 weights are not bf16's). The rows of "
         "calls before the dequantise-ahead (`--fp8-dequantise`, merged 2026-12-08; the 2026-12-08 H100 call's rows "
         "among them) dequantised per use in every column.\n",
         FP8_TARGETS + "\n",
         "\"per-use\" dequantises each fp8 weight at its use on the compute stream (`--fp8-dequantise per-use`); the "
         "other fp8 rows dequantise a phase ahead on a side stream (the default on CUDA).\n",
         "| tokens | bf16 resident | bf16 all swapped (x bound) | fp8 at load, resident (x bf16) | fp8 at load, "
         "per-use, resident (x bf16) | fp8 resident (x bf16) | fp8 scaled-mm resident (x bf16) | fp8 all swapped "
         "(x bf16 bound) | fp8 scaled-mm all swapped (x bf16 bound) | targets met | rel. error of fp8 rows |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows = bf16_rows + fp8_rows
    tokens = sorted({r.get("tokens") for r in rows if r.get("tokens")}) or [1024, 4096, 16384]

    def row(mode, t):
        return next((r for r in rows if r.get("mode") == f"pipeswap {mode}" and r.get("tokens") == t), None)

    for t in tokens:
        base = row("bf16 resident", t)
        bsec = base.get("seconds") if base and base.get("status") == "ok" else None
        cells, met, errs = [], [], []
        for mode, kind in (("bf16 resident", "time"), ("bf16 swap all", "bound"), ("fp8 at load resident", "res"),
                           ("fp8 at load per-use resident", "res"), ("fp8 resident", "res"), ("fp8 scaled-mm resident", "smm"), ("fp8 swap all", "swap"),
                           ("fp8 scaled-mm swap all", "swap")):
            r = row(mode, t)
            if not r:
                cells.append(NOT_RUN)
                continue
            if r.get("status") != "ok":
                cells.append("**FAILED**")
                met.append(False)
                continue
            sec = r.get("seconds")
            if kind == "time":
                cells.append(fmt_s(sec))
            elif kind == "bound":
                cells.append(f"{fmt_s(sec)} ({fmt_x(r.get('over_bound'))})")
            elif kind in ("res", "smm"):
                x = ratio(sec, bsec)
                cells.append(f"{fmt_s(sec)} ({fmt_x(x)})")
                if x and kind == "res" and mode == "fp8 resident":
                    met.append(x <= 1.1)
                if x and kind == "res" and mode == "fp8 at load resident":
                    met.append(x <= 1.1)
                if x and kind == "smm" and t >= 4096:
                    met.append(x < 1.0)
            else:
                cells.append(f"{fmt_s(sec)} ({fmt_x(r.get('over_bound'))})")
                if t <= 4096 and r.get("over_bound"):
                    met.append(r["over_bound"] <= 0.55)
            if mode.startswith("fp8") and (r.get("check") or {}).get("rel_l2") is not None:
                errs.append(f"{r['check']['rel_l2']:.3f}")
        verdict = NOT_RUN if not met else ("yes" if all(met) else f"**no** ({sum(1 for m in met if not m)} of {len(met)} missed)")
        L.append(f"| {t} | " + " | ".join(cells) + f" | {verdict} | {', '.join(errs) or NOT_RUN} |")
    fp8_disk = [r for r in disk_rows if r.get("status") == "ok"]
    L.append("\nDisk tier with fp8 weights (`disk_fp8.json`, target: half the bytes at the same fraction of raw "
             "bandwidth as bf16): " + ("; ".join(f"{r.get('tokens')} tokens: {r.get('read_gbps', NOT_RUN)} GB/s read, "
                                                  f"{r.get('disk_bytes_read', NOT_RUN)} bytes" for r in fp8_disk)
                                        if fp8_disk else NOT_RUN) + ".")
    return "\n".join(L)


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def cfg_parallel_cpu_section(rows):
    """CFG-parallel ranks (issue 21) until two GPUs are lent: CPU-rank timings and the plan's predictions
    (bench/cfg_parallel_cpu.sh), kept in bench/cpu-results/ like the disk tier's. Not GPU measurements."""
    L = ["\n## 10. CFG-parallel (issue 21): CPU ranks and plan predictions, not GPU measurements\n",
         "**CPU ranks, not the GPU machine**: the 2-core CI-type VM, shared with other engineers' builds (the load "
         "average at each run is in its row). Command: `bash bench/cfg_parallel_cpu.sh build/pipeswap 1` "
         "(rows appended to `bench/cpu-results/cfg_parallel_cpu.jsonl`). A random Wan2.1-named DiT of 8 blocks, "
         "dim 256, ffn 1024, fp32; one sample of 320 tokens with guidance 5, 10 steps; each rank one thread "
         "(`--threads 1`). one: a single rank; pipeline: 2 ranks, `--cfg-parallel 1` (the CFG pair as 2 "
         "micro-batches over 2 stages: at most 1.33x); CFG-parallel: 2 ranks, `--cfg-parallel 2` (one branch "
         "each, every block on both: at most 2x); auto: no flag (the plan picks CFG-parallel here, so it runs what the CFG-parallel row runs: the gap between those two rows is this machine's noise). Every run's latents equal the "
         "single rank's byte for byte (the script compares them). On 2 cores shared with builds at load average "
         "5-8 the ranks do not get a core each, so these timings say little about speed; the GPU benchmark "
         "(one sample, CFG, 30 steps, against one GPU, the 2-stage pipeline and xDiT's ideal) is a separate "
         "issue's run.\n",
         "| date | commit | setting | seconds per step | load average |",
         "| --- | --- | --- | --- | --- |"]
    timed = [r for r in rows if "seconds_per_step" in r]
    for r in timed:
        L.append(f"| {r.get('date', '')} | {r.get('commit', '')} | {r['setting']} | {r['seconds_per_step']:.3f} | "
                 f"{r.get('load_average', '')} |")
    if not timed:
        L.append(f"| | | one | {NOT_RUN} | |")
    L.append("\n**Plan predictions** (the cost model of `choose_arrangement`, pipeline/src/plan.cpp; no run behind "
             "them): seconds per step of each arrangement, the one picked marked. CPU: the 2-rank chain above, "
             "from its auto run's log. GPU: a Wan2.1-14B-sized DiT (40 blocks, dim 5120, bf16) on H100/H200-class "
             "ranks, the table of cases of `pipeline_test --gtest_filter=CfgParallel.ThePlanPicks*`, which the "
             "script also records; 32760 tokens (81 frames at 480x832), 1024 in the short-sequence and asked-for-CFG-parallel "
             "cases; \"20 GB each\" is `--vram-budget 20GB`, which makes each rank of the CFG-parallel arrangement "
             "swap what does not fit.\n")
    L.append("| date | case | arrangement | predicted s / step | per-rank device bytes | picked |")
    L.append("| --- | --- | --- | --- | --- | --- |")
    planned = [r for r in rows if "predicted_seconds_per_step" in r]
    for r in planned:
        L.append(f"| {r.get('date', '')} | {r.get('case', 'CPU ranks above')} | {r['setting'].replace('plan ', '')} | "
                 f"{r['predicted_seconds_per_step']:.4g} | {r.get('device_per_rank', '')} | "
                 f"{'yes' if r.get('chosen') else ''} |")
    if not planned:
        L.append(f"| | | | {NOT_RUN} | | |")
    return "\n".join(L)


def cpu_disk_section(rows, findings):
    """The disk tier measured on the 2-core CPU machine CI runs on (bench/disk_tier_cpu.sh), kept in
    bench/cpu-results/ because the GPU machine's results folder holds only run-all's rows. Every
    measurement is kept; a cell is the median over the rows of its reader and worker count."""
    L = ["\n### 2a. Disk tier on the 2-core CI-type machine (CPU only; not the GPU machine)\n"]
    L.append("Not the GPU machine: a 2-core Debian 12 VM without a GPU, whose disk is a virtual disk too, shared "
             "with other jobs. Command: `LABEL=after TRACE=/tmp/traces bash bench/disk_tier_cpu.sh build/pipeswap "
             "build/bench/disk_read_bw` (worker counts 1, 2, 4), run alternately with the build of commit 2eab33b as "
             "\"before\"; every measurement is in `bench/cpu-results/disk_tier_cpu.jsonl`. The row above stays as the GPU machine measures it. This disk's rate drifts "
             "between about 1.0 and 2.4 GB/s from one minute to the next, and other builds shared the 2 cores "
             "(load average 2-8), so each cell is the median of n runs, before and after interleaved, with the "
             "range of the fraction beside it. \"before\": one bounce buffer, each 16 MiB read waiting for the "
             "previous copy-out (commit 2eab33b); \"after\": each worker reads an extent in two streams (itself and "
             "a helper thread, requests taken alternately), each stream reading and copying out its own, so one "
             "reads while the other copies.\n")
    L.append("**pipeswap run.** A generated Llama-layout checkpoint, fp32, d 1024, ffn 16384, 14 layers (3.06 GB in "
             "one file), one token, every block swapped (`--offload-ratio 1 --lazy-load`) and `--max-memory` "
             "holding only the staging buffers, so each pass reads every block (3.05 GB). pipeswap GB/s: block "
             "bytes per pass over the median of 3 warm passes (`--repeat 4`); it includes, in every pass, one "
             "block's read before compute can start and the last blocks' copy and compute after the last read "
             "(`run` declares one pass at a time), and compute (about 70 ms per block, more under load) shares the "
             "2 cores with the reader. Disk lane: the same bytes over the time at least one read was in flight "
             "(`--trace`). Raw: `bench/disk_bw.sh` (dd, O_DIRECT, 16 MiB requests) on the same file right before "
             "and right after each run, averaged; the fraction is against raw at the same number of streams.\n")
    runs = [r for r in rows if r.get("bench") == "disk_tier_cpu"]
    L.append("| reader | disk workers | n | raw 1 stream GB/s | raw N streams GB/s | pipeswap read GB/s | fraction of "
             "raw (N streams) | range | disk lane GB/s | target met |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    keys = sorted({(r.get("label", ""), r["workers"]) for r in runs}, key=lambda k: (k[1], k[0] != "before"))
    for label, w in keys:
        rs = [r for r in runs if r.get("label", "") == label and r["workers"] == w]
        fr = [r["fraction_of_raw"] for r in rs]
        lane = [r["disk_lane_gbs"] for r in rs if "disk_lane_gbs" in r]
        frac = _median(fr)
        lane_cell = f"{_median(lane):.2f}" if lane else NOT_RUN
        L.append(f"| {label} | {w} | {len(rs)} | {_median([r['raw_one_stream_gbs'] for r in rs]):.2f} | "
                 f"{_median([r['raw_same_streams_gbs'] for r in rs]):.2f} | "
                 f"{_median([r['pipeswap_read_gbs'] for r in rs]):.2f} | {frac:.2f} | {min(fr):.2f}-{max(fr):.2f} | "
                 f"{lane_cell} | {'yes' if frac >= 0.9 else '**no**'} |")
    if not runs:
        L.append(f"| {NOT_RUN} | | | | | | | | | |")
    L.append("\n**The reader alone** (`build/bench/disk_read_bw FILE --workers N --rounds 2`): `read_many` of the "
             "same file in 200 MiB groups (a block's worth) into slabs laid out as offload's, against dd-like raw "
             "O_DIRECT reads (16 MiB, nothing copied), alternating group by group so that drift hits both alike; "
             "N threads read at once in both. This disk runs either near 1.2-1.5 GB/s or, in bursts, near 2.2 "
             "(likely the host's cache); rows are split by the raw rate of their run (the GPU machine's disk "
             "measured 1.6 GB/s at one stream).\n")
    alone = [r for r in rows if r.get("bench") == "disk_read_bw"]
    regimes = [("raw < 1.6 GB/s", lambda r: r["raw_gbs"] < 1.6), ("raw >= 1.6 GB/s", lambda r: r["raw_gbs"] >= 1.6)]
    L.append("| reader | threads | disk | n | raw GB/s | read_many GB/s | fraction of raw | range | target met |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    keys = sorted({(r.get("label", ""), r["workers"]) for r in alone}, key=lambda k: (k[1], k[0] != "before"))
    for label, w in keys:
        for regime, inside in regimes:
            rs = [r for r in alone if r.get("label", "") == label and r["workers"] == w and inside(r)]
            if not rs:
                continue
            fr = [r["fraction_of_raw"] for r in rs]
            frac = _median(fr)
            L.append(f"| {label} | {w} | {regime} | {len(rs)} | {_median([r['raw_gbs'] for r in rs]):.2f} | "
                     f"{_median([r['read_many_gbs'] for r in rs]):.2f} | {frac:.2f} | {min(fr):.2f}-{max(fr):.2f} | "
                     f"{'yes' if frac >= 0.9 else '**no**'} |")
    if not alone:
        L.append(f"| {NOT_RUN} | | | | | | | | |")
    if findings.get("disk_cpu"):
        L.append("\n" + findings["disk_cpu"])
    return "\n".join(L)


def generate_section(peers, rows, findings, yard=()):
    """Issue 18: prompt in, video out, end to end against diffusers' WanPipeline (bench/generate_rows.py)."""
    by_peer = {r.get("name"): r for r in peers}
    by_row = {r.get("name"): r for r in rows}
    names = list(dict.fromkeys([r.get("name") for r in rows] + [r.get("name") for r in peers])) or ["resident", "24GB"]
    names.sort(key=lambda n: {"resident": 0, "24GB": 1}.get(n, 2))
    first = (rows or peers or [{}])[0]
    steps, target = first.get("steps", 3), first.get("extrapolate_steps", 30)
    L = ["\n## 12. Prompt in, video out: `pipeswap generate` against diffusers' WanPipeline\n",
         "A Wan2.1 T2V repo in diffusers' layout with random weights (`bench/wan_repo.py`: umT5-XXL encoder, the "
         "14B DiT's 40 blocks, the Wan2.1 VAE; SECTIONS=genrepo), the same prompt token ids, the same initial noise "
         "(a file made from the seed as `torch.Generator(\"cpu\")` draws it, given to both), "
         f"{first.get('frames', 81)} frames at {first.get('width', 832)}x{first.get('height', 480)} "
         f"({first.get('tokens', 32760)} tokens), guidance {first.get('guidance', 5)}, UniPC, **{steps} steps**: "
         f"{target} steps do not fit a device call at these sizes, so the {target}-step totals are **extrapolated** "
         f"(the measured total - the {steps} steps + step 1 + the median of steps 2..{steps} x {target - 1}). "
         "`bench/generate_rows.py` (SECTIONS=generate: resident; SECTIONS=generate24: a 24 GB device budget). "
         "Settings: *resident*: diffusers `pipe.to(\"cuda\")`, pipeswap's defaults; *24GB*: diffusers' "
         "`enable_group_offload(block_level, use_stream=True)` on the DiT (the text encoder and VAE on the device "
         "when used), pipeswap `--vram-budget 24GB` (the plan picks the swapped blocks). Phases: encode (read the "
         "text encoder, encode the prompt and the negative prompt), denoise (read the DiT, then the loop), decode "
         "(the VAE, frames in [0, 1] / 8-bit); pipeswap's decode comes from a second run with the same flags and "
         "`--output frames/`. Ratio: pipeswap / diffusers in the same call (below 1: pipeswap faster).\n",
         "| setting | measure | diffusers | pipeswap | pipeswap / diffusers |",
         "| --- | --- | --- | --- | --- |"]
    checks = ["\n**Checks** (a failed check makes the row **FAILED**): pipeswap's final latents and decoded frames "
              "against diffusers' (relative L2 error), the compute dtype against diffusers'. Tolerance: max(0.02, "
              "3 x diffusers' own bf16 error against its float32 run of the same pipeline, measured at a small "
              "size in the same results; 0.05 where it is missing, 0.02 against a float32 peer).\n",
              "- diffusers' own bf16 error against float32: " + (
                  f"{y['bf16_error_vs_fp32']:.2e} (latents), {y['frames_bf16_error_vs_fp32']:.2e} (frames) at "
                  f"{y['frames']} frames of {y['width']}x{y['height']}, {y['steps']} steps; tolerance {y['tolerance']}"
                  if (y := next((x for x in yard if x.get("bf16_error_vs_fp32") is not None), None)) else NOT_RUN)
              + "\n",
              "| setting | latents error | frames error | tolerance | dtype (pipeswap / diffusers) | status | finding |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    mem = ["\n**Memory**: device peak per phase (both: the CUDA caching allocator's peak allocated bytes, encode / "
           "denoise / decode) and the host peak (each process's peak resident set, VmHWM).\n",
           "| setting | diffusers device peak | pipeswap device peak | diffusers host peak | pipeswap host peak | "
           "pipeswap swapped blocks |",
           "| --- | --- | --- | --- | --- | --- |"]

    def gb(x):
        return f"{x / 1e9:.2f} GB" if x else "-"

    def peaks(r):
        ph = (r or {}).get("phases") or {}
        return " / ".join(gb((ph.get(p) or {}).get("device_peak")) for p in ("encode", "denoise", "decode"))

    def step(r):
        s = (r or {}).get("step_seconds") or []
        return _median(s[1:] or s) if s else None

    for name in names:
        p, r = by_peer.get(name) or {}, by_row.get(name) or {}
        label = f"{name} **FAILED**" if failed(r) else name
        pp, rp = p.get("phases") or {}, r.get("phases") or {}
        rat = r.get("ratios") or {}
        measures = [("encode", (pp.get("encode") or {}).get("seconds"), (rp.get("encode") or {}).get("seconds"),
                     rat.get("encode")),
                    (f"denoise ({steps} steps, with the DiT's load)", (pp.get("denoise") or {}).get("seconds"),
                     (rp.get("denoise") or {}).get("seconds"), rat.get("denoise")),
                    (f"per step (median of steps 2..{steps})", step(p), step(r), rat.get("per_step")),
                    ("decode", (pp.get("decode") or {}).get("seconds"), (rp.get("decode") or {}).get("seconds"),
                     rat.get("decode")),
                    (f"total, {steps} steps", p.get("total_seconds"), r.get("total_seconds"), rat.get("total")),
                    (f"total, {target} steps (extrapolated)", p.get("extrapolated_total_seconds"),
                     r.get("extrapolated_total_seconds"), rat.get("extrapolated_total"))]
        for m, a, b, x in measures:
            L.append(f"| {label} | {m} | {fmt_s(a)} | {fmt_s(b)} | {fmt_x(x)} |")
        c, fc, d = r.get("check") or {}, r.get("frames_check") or {}, r.get("dtype_check") or {}
        checks.append(f"| {label} | {c.get('rel_l2', NOT_RUN)} | {fc.get('rel_l2', NOT_RUN)} | "
                      f"{c.get('tolerance', r.get('tolerance', NOT_RUN))} | {d.get('row') or NOT_RUN} / "
                      f"{d.get('expected') or NOT_RUN} | {r.get('status', NOT_RUN)}"
                      f"{' (' + r['partial'] + ')' if r.get('partial') else ''} | "
                      f"{findings.get(f'generate/{name}', '')} |")
        mem.append(f"| {label} | {peaks(p) if p else NOT_RUN} | {peaks(r) if r else NOT_RUN} | "
                   f"{gb(p.get('host_peak_rss')) if p else NOT_RUN} | {gb(r.get('host_peak_rss')) if r else NOT_RUN} | "
                   f"{r.get('swapped_blocks', NOT_RUN)} |")
    cmds = [f"- {n}: `{x.get('command')}`" for n in names for x in (by_peer.get(n) or {},)
            if x.get("command")]
    cmds += [f"- {n}: `{run.get('command')}`" for n in names
             for run in ((by_row.get(n) or {}).get("runs") or {}).values() if run.get("command")]
    return "\n".join(L + checks + mem + (["\nCommands:\n"] + cmds if cmds else []))


def text_of(results, name):
    """A text file's distinct lines over the results folders, in order."""
    lines = []
    for folder in results if isinstance(results, (list, tuple)) else [results]:
        p = os.path.join(folder, name)
        if os.path.exists(p):
            for line in open(p).read().splitlines():
                if line.strip() and line not in lines:
                    lines.append(line)
    return "; ".join(lines) or NOT_RUN


WAN_MODES = [("pipeswap resident", "pipeswap resident (x diffusers)"),
             ("pipeswap swap all", "pipeswap, all swapped"), ("pipeswap swap half", "pipeswap, half swapped"),
             ("group_block", "diffusers group offload, block_level, stream"),
             ("group_leaf", "diffusers group offload, leaf_level, stream"),
             ("accelerate", "Accelerate cpu_offload"), ("prefetch", "side-stream prefetch (Python)"),
             ("compile", "diffusers compile_repeated_blocks, resident (stretch)")]
LLAMA_MODES = [("pipeswap resident", "pipeswap resident (x transformers)"),
               ("pipeswap swap all", "pipeswap, all swapped"), ("pipeswap swap half", "pipeswap, half swapped"),
               ("accelerate", "Accelerate cpu_offload per layer"), ("prefetch", "side-stream prefetch (Python)")]


def defaults_lines(rows, fw):
    """The rows that ran pipeswap with its default flags (no --dtype): what a user gets."""
    L = []
    for r in rows:
        if r.get("mode") != "pipeswap defaults":
            continue
        d = r.get("dtype_check") or {}
        L.append(f"- **{r['workload']} at {r['tokens']} tokens, `pipeswap` with default flags**: computed in "
                 f"{d.get('row') or 'unknown'} ({fw} in {d.get('expected') or 'unknown'}): {cell(r)} "
                 f"[{r.get('status')}]; `{r.get('command', '')}`")
    return L


def memory_section(rows):
    """Item 5: each pipeswap row's measured device peak (LibTorch's CUDA allocator) against its plan."""
    L = ["\n## 7. Memory: peak device memory vs the plan\n",
         "LibTorch's CUDA allocator peak (`allocated_bytes`, reset before the weights load) against the plan's "
         "predicted device bytes, for each pipeswap row: Wan at 1k/4k/16k and Llama at 512/2048/8192 tokens, "
         "resident and swapped (the plan models each architecture's per-block, prologue and epilogue workspace). Target: "
         "within 5%.\n",
         "| workload | tokens | row | measured peak | plan | difference | target met |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
    mem = [r for r in rows if r.get("device_peak_bytes")]
    mem.sort(key=lambda r: (r.get("workload", ""), r.get("mode", "") != "pipeswap resident", r.get("mode", ""),
                            r.get("tokens") or 0))
    for r in mem:
        for peak, plan in zip(r["device_peak_bytes"], r["plan_device_bytes"]):
            diff = 100.0 * (peak - plan) / max(1, plan)
            L.append(f"| {r['workload']} | {r['tokens']} | {r['mode']} | {peak / 1e6:.1f} MB | {plan / 1e6:.1f} MB | "
                     f"{diff:+.2f}% | {'yes' if abs(diff) <= 5 else '**no**'} |")
    if not mem:
        for w, ts in (("wan", (1024, 4096, 16384)), ("llama", (512, 2048, 8192))):
            for t in ts:
                L.append(f"| {w} | {t} | pipeswap resident / swapped | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} |")
    return "\n".join(L)


def textgen_section(peers, rows):
    """Issue 19: transformers' generate (static cache) against pipeswap generate, resident and with every layer
    swapped, and the time to first token (bench/llama_generate_peers.py, bench/textgen_rows.py)."""
    L = ["\n## 11. Text generation: decode, offload and time to first token (issue 19)\n"]
    bw = next((r for r in peers if r.get("mode") == "bandwidth"), {})
    static = {r["batch"]: r for r in peers if r.get("mode") == "transformers static"}
    ttft_peer = next((r for r in peers if r.get("mode") == "transformers ttft"), None)
    acc = next((r for r in peers if r.get("mode") == "accelerate"), None)
    res = {r["batch"]: r for r in rows if r.get("mode") == "pipeswap resident"}
    swp = {r["batch"]: r for r in rows if r.get("mode") == "pipeswap all swapped"}
    ttft = next((r for r in rows if r.get("mode") == "pipeswap ttft"), None)
    any_row = next((r for r in peers + rows if r.get("layers")), {})
    layers, lb = any_row.get("layers"), any_row.get("layer_bytes")
    first = next((r for r in list(static.values()) + rows if r.get("prompt_tokens")), {})
    compiled = next((r.get("compile") for r in static.values() if r.get("compile")), None)
    dims = ", ".join(f"{k} {any_row[k]}" for k in ("hidden", "ffn", "heads", "vocab") if any_row.get(k))
    L.append(f"A Llama-2-7B-shaped checkpoint (`bench/llama_peers.py make`: {dims or NOT_RUN}; "
             f"{layers or NOT_RUN} layers of {f'{lb / 1e6:.1f} MB' if lb else NOT_RUN}, random weights, computed in "
             f"{any_row.get('dtype') or NOT_RUN}), the "
             f"same prompt ids for both ({first.get('prompt_tokens', NOT_RUN)} tokens per sequence, different per "
             "sequence), greedy, every sequence generating its full count (`--ignore-eos`; transformers without an "
             "EOS id). The peer is transformers' `generate` with `cache_implementation=\"static\"` "
             f"(decode step compiled by transformers' default: {compiled or NOT_RUN}). A decode step is "
             "(generate(N) - generate(1)) / (N - 1) for transformers (medians of the timed pairs) and batch / the "
             "decode tokens/s of `pipeswap generate`'s summary (each decode micro-batch from its launch until its "
             "tokens are sampled on the host). Measured in the same call: pinned host-to-device "
             f"{bw.get('pinned_h2d_gbs') or NOT_RUN} GB/s, device memory {bw.get('hbm_gbs') or NOT_RUN} GB/s (a "
             "device-to-device copy's read + write traffic).\n")
    rule = next((r.get("id_rule") for r in peers + rows if r.get("id_rule")), None)
    delta = next((r.get("near_tie_delta") for r in peers if r.get("near_tie_delta")), None)
    sigma = next((r.get("sigma") for r in peers if r.get("sigma")), None)
    L.append("**Ids check** (a row whose ids disagree beyond the rule is **FAILED**): "
             + ("every id equal to transformers' (float32)." if rule == "exact" else
                "each sequence's ids equal transformers' up to the first difference, if any, and there pipeswap's "
                "token is a near-tie of transformers' choice: transformers' logit margin <= 6 sigma, sigma = the "
                "RMS difference of its bf16 logits from its float32 run, measured in the same call "
                f"(sigma {sigma if sigma else NOT_RUN}, margin {delta if delta else NOT_RUN}; "
                "bench/llama_generate_peers.py says why). The cell: sequences identical to the end / sequences, "
                "and the shortest identical prefix.") + "\n")

    def step_cell(r, x=None):
        if not r:
            return NOT_RUN
        secs = r.get("seconds")
        text = fmt_s(secs)
        tps = r.get("decode_tokens_per_second")
        if tps and text != NOT_RUN:
            text += f", {tps:.0f} tok/s"
        if r.get("iters") is not None and r["iters"] < MIN_ITERS and text != NOT_RUN:
            text += f" (median of {r['iters']} < {MIN_ITERS})"
        if x:
            text += f" ({x:.2f}x)"
        return f"**FAILED** {text}" if failed(r) else text

    def ids_cell(r):
        ic = (r or {}).get("identity_check") or {}
        if "rows" not in ic:
            return NOT_RUN if not r else ("**no check**" if not r.get("error") else "-")
        return f"{ic.get('identical_rows')}/{ic['rows']}, prefix >= {ic.get('min_identical_prefix')}"

    def status_cell(r):
        return NOT_RUN if not r else ("ok" if not failed(r) else "**FAILED**: " + str(r["status"])[8:].strip()[:200])

    L.append("### Resident, one GPU\n")
    L.append("Targets: decode tokens/s at batch 8 and 64 at or above transformers' (step ratio <= 1.00x); the "
             "batch-1 step within 1.5x the HBM bound (every weight byte a step reads, all but the embedding table, "
             "/ the device memory GB/s).\n")
    L.append("| batch | transformers static cache | pipeswap resident (x transformers) | HBM bound | pipeswap over "
             "the HBM bound | target met | ids | status |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for b in sorted(set(res) | set(static) | {1, 8, 64}):
        if b not in (1, 8, 64) and b not in res:
            continue
        r, p = res.get(b), static.get(b)
        vs = (r or {}).get("vs_transformers")
        hb = (r or {}).get("bound_seconds") if b == 1 else None
        ob = (r or {}).get("over_bound") if b == 1 else None
        if b == 1:
            target = ("yes" if ob <= 1.5 else "**no**") if ob else NOT_RUN
        elif b in (8, 64):
            target = ("yes" if vs <= 1.0 else "**no**") if vs else NOT_RUN
        else:
            target = "-"
        L.append(f"| {b} | {step_cell(p)} | {step_cell(r, vs)} | {fmt_s(hb) if b == 1 else '-'} | "
                 f"{fmt_x(ob) if b == 1 else '-'} | {target} | {ids_cell(r)} | {status_cell(r)} |")
    L.append("\n### Every layer swapped, one GPU\n")
    L.append("`--offload-ratio 1 --prefetch-depth 2` (every layer streams from pinned host memory each step; "
             "embeddings, final norm and lm_head stay), batches of more than one sequence as up to 8 micro-batches "
             "sharing each layer's fill (`--swap-order shared`). Bound: max(transformers' resident step at that "
             "batch, layers x layer bytes / pinned GB/s). Targets: each step within 1.05x the bound, tokens/s "
             "growing with batch. The peer users run today: Accelerate's `cpu_offload` on each decoder layer, "
             "batch 1.\n")
    L.append("| batch | compute: transformers resident | transfer | pipeswap all swapped (x bound) | <= 1.05x bound "
             "| tokens/s grows | ids | status |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    prev = None
    for b in sorted(set(swp) | {1, 8, 64, 256}):
        r = swp.get(b)
        ob = (r or {}).get("over_bound")
        tps = (r or {}).get("decode_tokens_per_second")
        grows = "-" if prev is None else (("yes" if tps > prev else "**no**") if tps and prev else NOT_RUN)
        prev = tps if tps else None
        tr = (r or {}).get("transfer_seconds")
        if tr is None and layers and lb and bw.get("pinned_h2d_gbs"):
            tr = layers * lb / (bw["pinned_h2d_gbs"] * 1e9)
        L.append(f"| {b} | {step_cell(static.get(b))} | {fmt_s(tr)} | {step_cell(r, ob)} | "
                 f"{('yes' if ob <= 1.05 else '**no**') if ob else NOT_RUN} | {grows} | {ids_cell(r)} | "
                 f"{status_cell(r)} |")
    if acc or swp:
        b1 = (swp.get(1) or {}).get("bound_seconds")
        x = acc and b1 and acc.get("seconds") and acc["seconds"] / b1
        L.append(f"\nAccelerate `cpu_offload` per layer, batch 1, {acc.get('new_tokens') if acc else NOT_RUN} new "
                 f"tokens: {step_cell(acc, x)} a step over the same bound; ids {ids_cell(acc)}; "
                 f"{status_cell(acc)}.")
    L.append("\n### Time to first token\n")
    L.append("One prompt at a time. transformers: generate(max_new_tokens=1), median after a warm-up. pipeswap: "
             "3 prompts one after another (`--max-batch 1 --max-new-tokens 1`), the warm time to first token "
             "= (the last prompt's - the first's) / 2 from the summary (3 decimals); the first prompt's, which "
             "includes the process's first kernels, beside it.\n")
    L.append("| prompt tokens | transformers TTFT | transformers prefill tok/s | pipeswap TTFT (x transformers) | "
             "pipeswap prefill tok/s | pipeswap first prompt (cold) | ids | status |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    n = (ttft or ttft_peer or {}).get("prompt_tokens", 2048)
    L.append(f"| {n} | {fmt_s((ttft_peer or {}).get('seconds'))} | "
             f"{(ttft_peer or {}).get('prefill_tokens_per_second') or NOT_RUN} | "
             f"{step_cell(ttft, (ttft or {}).get('vs_transformers'))} | "
             f"{(ttft or {}).get('prefill_tokens_per_second_warm') or NOT_RUN} | "
             f"{fmt_s((ttft or {}).get('ttft_cold_seconds'))} | {ids_cell(ttft)} | {status_cell(ttft)} |")
    cmds = [r for r in rows if r.get("command")]
    if cmds:
        L.append("\nCommands:\n")
        L += [f"- {r['mode']}, batch {r['batch']}: `{r['command']}`" for r in cmds]
    return "\n".join(L)


def render(results, doc, command=None):
    findings_path = os.path.join(HERE, "findings.json")
    findings = json.load(open(findings_path)) if os.path.exists(findings_path) else {}
    machine = text_of(results, "machine.txt")
    steps = load(results, "steps.jsonl")
    # The compile rows come from a call of their own (SECTIONS=compile): their ratio is over that call's resident.
    wan = load(results, "wan_peers.json") + load(results, "wan_pipeswap.json") + \
        [r for r in load(results, "wan_compile.json") if r.get("mode") == "compile"]
    llama = load(results, "llama_peers.json") + load(results, "llama_pipeswap.json")
    disk = load(results, "disk_pipeswap.json")
    sched = load(results, "sched_cpu.jsonl") + load(results, "sched_cuda.jsonl")
    two = load(results, "two_gpu.json")
    gpipe = load(results, "gpipe.json")
    p2p = load(results, "nccl_p2p.json")
    scale = load(results, "scale.json")
    cfg = load(results, "wan_cfg_peers.json") + load(results, "cfg.json")
    textgen_peers, textgen = load(results, "textgen_peers.json"), load(results, "textgen_pipeswap.json")
    ran = bool(wan or llama or disk or sched or two or gpipe or p2p or scale or cfg or textgen_peers or textgen)
    date = datetime.date.today().isoformat() if ran else NOT_RUN
    wan_fw = next((r["framework"] for r in wan if r.get("framework")), "diffusers WanTransformer3DModel")
    llama_fw = next((r["framework"] for r in llama if r.get("framework")), "transformers LlamaForCausalLM (sdpa)")
    L = []
    L.append("# Benchmarks\n")
    L.append("Rendered by `bench/render.py` from the results of `bench/run-all` (device calls on the GPU machine, "
             "one per section: `bench/gpu-all`). Every ratio in a row comes from the same call. A cell reading "
             f"\"{NOT_RUN}\" has no measurement behind it; nothing here is estimated or typed in. A missed target "
             "stays as measured, with the finding from its `--trace` timeline beside it. A row whose dtype or "
             "output differs from the framework's reads **FAILED**.\n")
    L.append("- **Machine and calls** (one line per device call, then what it found):" if machine != NOT_RUN
             else f"- **Machine**: {NOT_RUN}")
    L += [f"  - {line}" for line in machine.split("; ")] if machine != NOT_RUN else []
    L.append(f"- **Command**: `{command or 'bash bench/gpu-all'}` (scratch weights under `$SCRATCH`, results and "
             "traces under `$OUT`)")
    L.append(f"- **Date**: {date}")
    if steps:
        L.append("- **Steps**: " + ", ".join(
            f"{s['step']} {'skipped (' + s['skipped'] + ')' if 'skipped' in s else ('ok' if s.get('rc') == 0 else '**rc ' + str(s.get('rc')) + '**')}"
            for s in steps))
    L.append("")
    L.append("## Workloads and why they are this size\n")
    L.append("- **Wan2.1-14B-sized DiT blocks** (`bench/wan_stack.py`): d 5120, ffn 13824, 40 heads, self- and "
             "cross-attention (512 text tokens), random weights stored in bf16 in diffusers' layout "
             "(`WanTransformer3DModel.save_pretrained`'s files and config.json, which carries no `torch_dtype`), "
             "read by diffusers' `from_pretrained` and by `pipeswap denoise` alike. One block is 703 MB. Lengths "
             "1k, 4k and 16k tokens are latents of F x 64 x 64 (F = 1, 4, 16) after 1x2x2 patches, the same "
             "files for every row (`pipeswap_rows.py inputs`). The default stack has 12 blocks (8.4 GB): enough "
             "that the copies dominate at 1k tokens and compute dominates at 16k, while every row fits one "
             "10-minute device call.")
    L.append("- **A few-GB Llama** (`bench/llama_peers.py make`): 8 layers of Llama-2-7B size (d 4096, ffn 11008, "
             "32 heads) and a 32k vocabulary, 3.7 GB of bf16 in transformers' layout (`save_pretrained`), random "
             "weights; one sequence of 512, 2048 or 8192 tokens.\n")
    L.append("**Peers are the frameworks' own models**: diffusers' `WanTransformer3DModel` and transformers' "
             "`LlamaForCausalLM` (`attn_implementation=\"sdpa\"`), loaded with `from_pretrained` from the same "
             "files, on the same inputs, in bf16, with the offloading users run today: diffusers' "
             "`enable_group_offload` (block_level with `use_stream=True`, and leaf_level with `use_stream=True`), "
             "Accelerate's `cpu_offload` (on the whole transformer, as `enable_sequential_cpu_offload` installs "
             "it; on each decoder layer for Llama), and a Python side-stream prefetch from pinned memory. "
             "`enable_model_cpu_offload` has no row: it is a `DiffusionPipeline` method (diffusers' `ModelMixin` "
             "has none) that moves whole components to the device for a pipeline call, so on a bare transformer "
             "it is the resident row plus one copy of the model per call, and it cannot run a model larger than "
             "the device.\n")
    L.append("**Timing.** Every time is a median of at least 5 after a warm-up: the peers' forwards (timed until "
             "the output is on the device), pipeswap's Wan steps 2..6 of `pipeswap denoise --steps 6 --guidance 1` "
             "(one forward per step, no CFG, so a step is one diffusers forward plus the velocity's copy to the "
             "host and the Euler update there) and pipeswap's Llama passes 2..6 of `pipeswap run --repeat 6` "
             "(timed until the logits are on the host in float32). The **bound** of a row is max(the framework's "
             "resident time at that length, bytes the row moves to the device / the pinned host-to-device GB/s "
             "measured in the same call); cells show seconds and, in brackets, seconds over that bound (for "
             "pipeswap resident: over the framework's resident time).\n")
    L.append("**Checks in every row** (a failed check makes the row **FAILED** and its step's exit status 1): the "
             "compute dtype (pipeswap's plan line against the framework's parameters; the peers against the "
             "bf16 on disk), and the output against the framework's on the same inputs. Wan: pipeswap's final "
             "latents against diffusers' resident model running the same 6-step loop (the same sigmas, "
             "timesteps and Euler updates of float32 latents), compared as displacements x_0 - x_6; Llama: the "
             "logits at 256 positions against transformers'; a peer mode: its output against the framework's "
             "resident one. Tolerance: relative L2 error <= max(0.02, 3 x the framework's own bf16 error against "
             "its float32 run on the same inputs, measured in the same call). `bench/test-peers.sh` checks on the "
             "CPU that a changed weight makes the rows fail.\n")
    L.append("## 1. Offload on one GPU\n")
    L.append(f"Targets (issue 15): pipeswap resident <= 1.00x the framework's resident time (rows above "
             f"{RESIDENT_TARGET}x are marked missed, with the trace's per-phase times); pipeswap swapped <= "
             f"{SWAP_TARGET}x the bound at every length and faster than every peer.\n")
    L.append("### Wan2.1-sized blocks (seconds per denoising step = one forward)\n")
    L.append("The compiled column comes from a call of its own (`SECTIONS=compile`): its ratio is over eager "
             "diffusers in that call, and the stretch ratio in the finding is pipeswap's ratio over eager divided "
             "by the compiled one's.\n")
    L.append(offload_table(wan, "wan", WAN_MODES, findings, [1024, 4096, 16384], "diffusers"))
    L.append("\n### Few-GB Llama (one forward pass)\n")
    L.append(offload_table(llama, "llama", LLAMA_MODES, findings, [512, 2048, 8192], "transformers"))
    dl = defaults_lines(wan, "diffusers") + defaults_lines(llama, "transformers")
    L.append("\n### Defaults are the product\n")
    L.append("pipeswap with no `--dtype` flag (the other rows pass `--dtype bf16`), at the first length:\n")
    L += dl or [f"- {NOT_RUN}"]
    L.append("\n### Checks\n")
    for rows, fw in ((wan, wan_fw), (llama, llama_fw)):
        y = next((r.get("bf16_error_vs_fp32") for r in rows if r.get("bf16_error_vs_fp32")), None)
        tol = next((r["check"]["tolerance"] for r in rows if (r.get("check") or {}).get("tolerance")), None)
        L.append(f"- {fw}: its own bf16 error against its float32 run: {f'{y:.2e}' if y else NOT_RUN} "
                 f"(relative L2); tolerance {tol if tol else NOT_RUN}.")
    L.append("")
    L.append(checks_table(wan, "wan", wan_fw))
    L.append("")
    L.append(checks_table(llama, "llama", llama_fw))
    L.append("")
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
    L.append(cpu_disk_section(load(os.path.join(HERE, "cpu-results"), "disk_tier_cpu.jsonl"), findings))
    L.append(pipeline_section(two, gpipe, findings))
    L.append(composition_section(two, findings))
    L.append(transfer_section(two, p2p, findings))
    L.append("\n## 6. Scheduler overhead\n")
    L.append("Host time per block through the offload engine with tiny blocks (two 64 x 64 phases; "
             "`build-gpu/bench/sched_overhead`), and in brackets what the engine adds to the same kernels launched "
             "without it (the first line; measured since 2026-12-08, earlier calls show no bracket). Target: the "
             "engine adds < 20 us per block (where no baseline was measured, the whole host time is held to it).\n")
    L.append("| setting | CPU us/block | CUDA us/block | target met |")
    L.append("| --- | --- | --- | --- |")
    names = ["kernels alone (no engine)", "resident", "swapped, prefetch depth 1", "swapped, prefetch depth 2",
             "swapped by phase, prefetch depth 2"]
    for n in names:
        c = next((r for r in sched if r.get("setting") == n and r.get("device") == "cpu"), None)
        g = next((r for r in sched if r.get("setting") == n and str(r.get("device", "")).startswith("cuda")), None)
        if n.startswith("kernels alone"):
            if c or g:
                L.append(f"| {n} | " + " | ".join("%.1f" % r["host_us_per_block"] if r else NOT_RUN for r in (c, g))
                         + " | - |")
            continue
        added = [r.get("engine_us_per_block", r["host_us_per_block"]) for r in (c, g) if r]
        us = [("%.1f" % r["host_us_per_block"] + (" (+%.1f)" % r["engine_us_per_block"]
                                                   if "engine_us_per_block" in r else "")) if r else NOT_RUN
              for r in (c, g)]
        met = ("yes" if all(v < 20 for v in added) else "**no**") if added else NOT_RUN
        L.append(f"| {n} | {us[0]} | {us[1]} | {met} |")
    L.append(memory_section(wan + llama + disk + two + scale))
    L.append(scale_section(scale, findings))
    L.append(cfg_section(cfg, findings))
    L.append(cfg_parallel_cpu_section(load(os.path.join(HERE, "cpu-results"), "cfg_parallel_cpu.jsonl")))
    L.append(textgen_section(textgen_peers, textgen))
    L.append(generate_section(load(results, "gen_peers.json"), load(results, "generate.json"), findings,
                              load(results, "gen_yardstick.json")))
    L.append(fp8_section(load(results, "wan_fp8_bf16.json"), load(results, "wan_fp8.json"),
                         load(results, "disk_fp8.json")))
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
    ap.add_argument("--results", action="append",
                    help="a results folder (repeat: several device calls' folders, later ones last)")
    ap.add_argument("--doc", default=os.path.join(HERE, "..", "docs", "benchmarks.md"))
    ap.add_argument("--command", default=None)
    a = ap.parse_args()
    render(a.results or [os.path.join(HERE, "results")], a.doc, a.command)


if __name__ == "__main__":
    main()
