#!/usr/bin/env python3
"""The pipeswap side of docs/benchmarks.md: runs the pipeswap executable on the benchmark weights and
turns its output into the same JSON rows as the peers (peers_common.row), each checked against the
framework (diffusers / transformers) on the same weights and inputs.

    pipeswap_rows.py inputs --out DIR --tokens 1024,4096,16384        # latents + text context files
    pipeswap_rows.py wan    --exe build-gpu/pipeswap --model WAN --inputs DIR --peers wan_peers.json --ref-dir REF --out F
    pipeswap_rows.py llama  --exe build-gpu/pipeswap --model LLAMA --peers llama_peers.json --ref-dir REF --out F
    pipeswap_rows.py disk   --exe build-gpu/pipeswap --model WAN --inputs DIR --disk disk_bw.json --out F
    pipeswap_rows.py two-gpu --exe build-gpu/pipeswap --model WAN --inputs DIR --out F
    pipeswap_rows.py scale  --exe build-gpu/pipeswap --model WAN40 --inputs DIR --out F   # 40 blocks, 1 and 2 GPUs
    pipeswap_rows.py cfg    --exe build-gpu/pipeswap --model WAN40 --inputs DIR --peers wan_cfg_peers.json --out F
    pipeswap_rows.py transfer --trace wan_2gpu_transfer_1024.json[.gz]   # stage-to-stage bytes/s
    pipeswap_rows.py trace-summary --trace wan_resident_1024.json[.gz]   # per-phase ms per step

The Wan rows call `pipeswap denoise --model DIR --latents FILE --context FILE --steps S --guidance 1
--shift X` (one forward per step, no CFG: one step is one diffusers forward) and read its per-step
progress lines ("step 2/6 sigma 0.9615: 0.123456 s"); step 1 is the warm-up (first copies, kernel
selection), the median of steps 2..S (S = 6: five) is the row's time. A step also holds what one
diffusers forward does not: the velocity's copy to the host and the Euler update there (a few MB).
The Llama rows call `pipeswap run --repeat 6` and take the median of passes 2..6 ("forward pass k/6").
A pass is timed until its logits are on the host in float32 (the peer's: until they are on the device).

Every row is checked, and FAILED (status, and this script's exit status 1) unless both hold:
  * dtype: the compute dtype in pipeswap's plan line ("plan: DIR (wan), 12 blocks, bfloat16, ...")
    equals the peer's (wan_peers.py / llama_peers.py record it).
  * same computation: Wan: the final latents against diffusers running the same S-step loop on the
    same files (wan_peers.py --ref-dir), compared as displacements x_0 - x_S (the noise cancels);
    Llama: the logits at peers_common.logit_positions against transformers' (llama_peers.py
    --ref-dir). Relative L2 error within peers_common.tolerance() of the framework's own bf16 error.
Settings: --settings "NAME:FLAGS;..." (default: resident, all swapped, half swapped, each with
--dtype bf16) and one row with pipeswap's default flags (no --dtype: what a user gets) at the first
length, named "defaults".
The bound of every row: max(the framework's resident time at that length, bytes the row moved to
the device per step / the pinned host-to-device GB/s the peers measured in the same run).
Every row writes a --trace timeline; trace_summary() turns it into milliseconds per step per phase
(render.py prints it beside a missed target).
"""
import argparse
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_common as pc  # noqa: E402

# The denoise command line (flags as launcher/src/cli.cpp spells them); CFG_FLAGS are added when the
# guidance is not 1 (each sample's conditional and unconditional passes are then two micro-batches).
DENOISE_FLAGS = ["denoise", "--model", "{model}", "--latents", "{latents}", "--context", "{context}",
                 "--steps", "{steps}", "--guidance", "{guidance}", "--shift", "{shift}"]
CFG_FLAGS = ["--context-null", "{context_null}"]
GUIDANCE = 5  # as bench/wan_gpipe.py mixes the pair
SHIFT = 5.0  # pipeswap's default, passed explicitly (the peers' reference loop uses the same)
STEP_LINE = re.compile(r"step (\d+)/(\d+) sigma [-0-9.e]+: ([0-9.]+) s")
FORWARD_LINE = re.compile(r"forward ([0-9.]+) s")
PASS_LINE = re.compile(r"forward pass (\d+)/(\d+):? ([0-9.]+) s")
PLAN_LINE = re.compile(r"^plan: .* \((\w+)\), (\d+) blocks, ([A-Za-z0-9_]+)", re.M)
FILLS_LINE = re.compile(r"(\d+) slot fills, (\d+) per pass \(plan (\d+), ([\w-]+) order\)")
PEAK_LINE = re.compile(r"device memory peak (\d+) bytes allocated \(plan (\d+) bytes")
DISK_LINE = re.compile(r"read from disk during the run ([0-9.]+) ?([KMGT]?i?B)")
SWAPPED = re.compile(r"(\d+) swapped")
UNIT_SUFFIX = re.compile(r"( (b|mb|s)\d+)+$")
UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
         "TiB": 1 << 40}
SETTINGS = ("resident:--dtype bf16;swap all:--dtype bf16 --offload-ratio 1 --prefetch-depth 2;"
            "swap half:--dtype bf16 --offload-ratio 0.5 --resident-policy interleaved;defaults:")


def run(cmd, timeout, env=None):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        return p.returncode, p.stdout, time.time() - t0
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out + f"\n(timed out after {timeout} s)", time.time() - t0


def load_rows(path):
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def peers_bw(path):
    """The pinned host -> device GB/s the peers measured in this run (one figure for every row)."""
    return next((r.get("pinned_h2d_gbs") for r in load_rows(path) if r.get("pinned_h2d_gbs")), None)


def framework(path):
    """From the peers' JSON: {tokens: the framework's resident seconds}, its compute dtype, its name."""
    rows = [r for r in load_rows(path) if r.get("mode") == "resident"]
    return ({r["tokens"]: r["seconds"] for r in rows}, next((r.get("dtype") for r in rows), None),
            next((r.get("framework") for r in rows), None))


def make_inputs(a):
    import torch
    from safetensors.torch import save_file
    os.makedirs(a.out, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for tokens in sorted({int(t) for t in a.tokens.split(",")}):
        frames = tokens // (a.grid_hw * a.grid_hw)
        for b in [int(x) for x in a.batches.split(",")]:
            lat = torch.randn(b, 16, frames, 2 * a.grid_hw, 2 * a.grid_hw, generator=g)
            save_file({"latents": lat}, os.path.join(a.out, latents_name(tokens, b)))
    save_file({"context": torch.randn(1, 512, 4096, generator=g)}, os.path.join(a.out, "context.safetensors"))
    save_file({"context_null": torch.randn(1, 512, 4096, generator=g)},
              os.path.join(a.out, "context_null.safetensors"))
    print(json.dumps({"inputs": a.out, "tokens": a.tokens}))


def latents_name(tokens, samples):
    """The inputs subcommand's latents file of `samples` rows at `tokens` tokens."""
    return f"latents_{tokens}.safetensors" if samples == 1 else f"latents_{tokens}_b{samples}.safetensors"


def common_info(text, r):
    """What every pipeswap run prints: its plan's compute dtype, swapped blocks, device peak vs plan."""
    m = PLAN_LINE.search(text)
    r["pipeswap_dtype"] = m.group(3) if m else None
    sw = SWAPPED.findall(text)
    r["swapped_blocks"] = sum(int(s) for s in sw) if sw else 0
    fills = FILLS_LINE.findall(text)
    if fills:  # the run summary's "N slot fills, K per pass (plan K', X order)" (rank 0's, one GPU)
        total, per_pass, plan, order = fills[0]
        r.update(slot_fills=int(total), fills_per_step=int(per_pass), plan_fills_per_step=int(plan),
                 order_chosen=order)
    peaks = PEAK_LINE.findall(text)
    if peaks:
        r["device_peak_bytes"] = [int(p) for p, _ in peaks]
        r["plan_device_bytes"] = [int(q) for _, q in peaks]


def denoise_row(a, name, tokens, extra, chain="cuda", launcher=(), steps=None, traced=True, samples=1, guidance=1):
    steps = steps or a.steps
    flags = DENOISE_FLAGS + (CFG_FLAGS if guidance != 1 else [])
    flags = [f.format(model=a.model, latents=os.path.join(a.inputs, latents_name(tokens, samples)),
                      context=os.path.join(a.inputs, "context.safetensors"),
                      context_null=os.path.join(a.inputs, "context_null.safetensors"), steps=steps,
                      guidance=guidance, shift=getattr(a, "shift", SHIFT)) for f in flags]
    out_file = os.path.join(a.scratch, f"{name.replace(' ', '_')}_{tokens}.safetensors")
    cmd = list(launcher) + [a.exe] + flags + ["--device-chain", chain, "--output", out_file] + extra
    r = {"output": out_file}
    if traced and a.trace_dir:
        os.makedirs(a.trace_dir, exist_ok=True)
        r["trace"] = os.path.join(a.trace_dir, f"wan_{name.replace(' ', '_')}_{tokens}.json")
        cmd += ["--trace", r["trace"]]
    rc, text, wall = run(cmd, a.timeout)
    r.update({"command": " ".join(cmd), "rc": rc, "wall_seconds": round(wall, 2)})
    steps_s = [float(m.group(3)) for m in STEP_LINE.finditer(text)]
    if rc != 0 or not steps_s:
        r["error"] = text[-2000:]
        return r, None
    r["step_seconds"] = steps_s
    common_info(text, r)
    d = DISK_LINE.findall(text)
    if d:
        r["disk_bytes_read"] = int(sum(float(v) * UNITS.get(u, 1) for v, u in d))
    timed = steps_s[1:] if len(steps_s) > 1 else steps_s
    r["iters"], r["warmup"] = len(timed), len(steps_s) - len(timed)
    return r, statistics.median(timed)


def settings_of(a):
    return [s.split(":", 1) for s in a.settings.split(";") if s]


def ref_info(a, name):
    p = os.path.join(a.ref_dir, name) if a.ref_dir else ""
    if not p or not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def wan_rows(a):
    from safetensors.torch import load_file
    from wan_stack import block_bytes, sizes
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    blocks, dim, ffn, _ = sizes(cfg)
    bb = block_bytes(dim, ffn)
    bw = peers_bw(a.peers)
    fw_seconds, fw_dtype, fw_name = framework(a.peers)
    ref = ref_info(a, "wan_ref.json")
    if ref:
        a.shift = ref["shift"]
        if ref["steps"] != a.steps:
            sys.exit(f"pipeswap_rows: --steps {a.steps} but the reference loop ran {ref['steps']} steps")
    tol = a.tolerance if a.tolerance > 0 else pc.tolerance(ref and ref.get("bf16_error_vs_fp32"))
    rows = []
    lengths = [int(t) for t in a.tokens.split(",")]
    for tokens in lengths:
        for name, extra in settings_of(a):
            if name == "defaults" and tokens != lengths[0]:
                continue
            info, secs = denoise_row(a, name, tokens, extra.split(), chain=a.one_chain)
            moved = info.get("swapped_blocks", 0) * bb
            if not info.get("error"):
                info["dtype_check"] = pc.check_dtype(info.get("pipeswap_dtype"), fw_dtype, fw_name or "the peer")
                ref_file = os.path.join(a.ref_dir, f"wan_ref_{tokens}.safetensors") if a.ref_dir else ""
                if os.path.exists(ref_file):
                    try:
                        x0 = load_file(os.path.join(a.inputs, latents_name(tokens, 1)))["latents"].float()
                        mine = load_file(info["output"])["latents"].float()
                        theirs = load_file(ref_file)["latents"].float()
                        info["check"] = pc.check_output(x0 - mine, x0 - theirs, tol,
                                                        f"{fw_name}, the same {a.steps}-step loop")
                    except Exception as e:  # noqa: BLE001 - a check that cannot run fails the row
                        info["check"] = {"against": fw_name, "ok": False, "error": f"{type(e).__name__}: {e}"}
                if info.get("trace"):
                    info["trace_summary"] = trace_summary(info["trace"])
            rows.append(pc.row("wan", "pipeswap " + name, tokens, secs if secs is not None else float("nan"), moved,
                               fw_seconds.get(tokens), bw, blocks=blocks, block_bytes=bb, flags=extra,
                               framework=fw_name, check_required=True,
                               per_step="one forward per step, guidance 1 (no CFG), "
                               "median of steps 2..S", **info))
            pc.save_partial(rows, a.out)
    return pc.emit(rows, a.out)


def llama_rows(a):
    import torch
    from safetensors.torch import load_file
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    bw = peers_bw(a.peers)
    fw_seconds, fw_dtype, fw_name = framework(a.peers)
    ref = ref_info(a, "llama_ref.json")
    tol = pc.tolerance(ref and ref.get("bf16_error_vs_fp32"))
    layer_bytes = _llama_layer_bytes(cfg)
    rows = []
    lengths = [int(t) for t in a.tokens.split(",")]
    for tokens in lengths:
        ids = os.path.join(a.scratch, f"llama_ids_{tokens}.json")
        os.makedirs(a.scratch, exist_ok=True)
        with open(ids, "w") as f:
            json.dump([pc.llama_ids(tokens, cfg["vocab_size"])], f)
        for name, extra in settings_of(a):
            if name == "defaults" and tokens != lengths[0]:
                continue
            out_file = os.path.join(a.scratch, f"llama_{name.replace(' ', '_')}_{tokens}.safetensors")
            cmd = [a.exe, "run", "--model", a.model, "--input", ids, "--device-chain", a.one_chain,
                   "--repeat", str(a.repeat), "--output", out_file] + extra.split()
            info = {}
            if a.trace_dir:
                os.makedirs(a.trace_dir, exist_ok=True)
                info["trace"] = os.path.join(a.trace_dir, f"llama_{name.replace(' ', '_')}_{tokens}.json")
                cmd += ["--trace", info["trace"]]
            rc, text, wall = run(cmd, a.timeout)
            info.update({"command": " ".join(cmd), "rc": rc, "wall_seconds": round(wall, 2)})
            passes = [float(m.group(3)) for m in PASS_LINE.finditer(text)]
            secs = statistics.median(passes[1:]) if rc == 0 and len(passes) > 1 else float("nan")
            if rc != 0 or len(passes) < 2:
                info["error"] = text[-2000:]
            else:
                info.update(pass_seconds=passes, iters=len(passes) - 1, warmup=1)
                common_info(text, info)
                info["dtype_check"] = pc.check_dtype(info.get("pipeswap_dtype"), fw_dtype, fw_name or "the peer")
                ref_file = os.path.join(a.ref_dir, f"llama_ref_{tokens}.safetensors") if a.ref_dir else ""
                if os.path.exists(ref_file):
                    try:
                        pos = torch.tensor(pc.logit_positions(tokens))
                        mine = load_file(out_file)["logits"].reshape(-1, cfg["vocab_size"])[pos].float()
                        theirs = load_file(ref_file)["logits"].float()
                        info["check"] = pc.check_output(mine, theirs, tol, f"{fw_name} logits")
                    except Exception as e:  # noqa: BLE001 - a check that cannot run fails the row
                        info["check"] = {"against": fw_name, "ok": False, "error": f"{type(e).__name__}: {e}"}
                if info.get("trace"):
                    info["trace_summary"] = trace_summary(info["trace"])
            rows.append(pc.row("llama", "pipeswap " + name, tokens, secs, info.get("swapped_blocks", 0) * layer_bytes,
                               fw_seconds.get(tokens), bw, blocks=cfg["num_hidden_layers"], block_bytes=layer_bytes,
                               flags=extra, framework=fw_name, check_required=True,
                               note=f"median of passes 2..{a.repeat} (--repeat {a.repeat}), logits on the host", **info))
            pc.save_partial(rows, a.out)
    return pc.emit(rows, a.out)


def _llama_layer_bytes(cfg, esize=2):
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * (h // cfg["num_attention_heads"])
    return esize * (2 * h * h + 2 * h * kv + 3 * h * f + 2 * h)


def read_trace(trace_path):
    """A --trace file (plain or .gz) and rank 0's complete ("X") ranges in it: (trace, ranges).
    OSError/ValueError when unreadable."""
    opener = gzip.open if trace_path.endswith(".gz") else open
    with opener(trace_path, "rt") as f:
        trace = json.load(f)
    return trace, [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and e.get("pid", 0) == 0]


def trace_summary(trace_path, skip=1):
    """Milliseconds per step (Wan) or pass (Llama) from a 1-rank --trace file, the first `skip` left out:
    each compute range name (the architecture's phases summed over blocks, "prologue", "epilogue"), the
    compute stream's waits for copies ("wait"), the copy lane's fills ("copy", beside compute), and
    "other": the time between one step's first compute and the next one's that no compute or wait
    range covers (host work, syncs, the velocity's or logits' copy to the host, launch gaps).
    Steps are told apart by their "prologue" ranges (one per micro-batch)."""
    try:
        trace, ev = read_trace(trace_path)
    except (OSError, ValueError) as e:
        return {"error": f"cannot read {trace_path}: {e}"}
    for e in ev:  # "self_attn b3 mb0 s2" -> "self_attn" (the merged trace appends the unit)
        e["base"] = UNIT_SUFFIX.sub("", e.get("name", ""))
    starts = sorted(e["ts"] for e in ev if e.get("cat") == "compute" and e["base"] == "prologue")
    if len(starts) <= skip:
        return {"error": f"{len(starts)} prologue ranges in {trace_path}: nothing after the warm-up"}
    begin = starts[skip]
    compute_end = max(e["ts"] + e["dur"] for e in ev if e.get("cat") == "compute")
    n = len(starts) - skip
    acc = {}
    for e in ev:
        if e["ts"] < begin:
            continue
        if e.get("cat") in ("compute", "wait", "copy"):
            key = e["base"] if e.get("cat") == "compute" else e["cat"]
            acc[key] = acc.get(key, 0.0) + e["dur"]
    ms = {k: round(v / n / 1e3, 3) for k, v in sorted(acc.items(), key=lambda kv: -kv[1])}
    span = (compute_end - begin) / n / 1e3
    busy = sum(v for k, v in ms.items() if k != "copy")
    return {"steps": n, "span_ms": round(span, 3), "ms": ms, "other_ms": round(max(0.0, span - busy), 3),
            "device_timing": all(r.get("device_timing", True) for r in trace.get("otherData", {}).get("ranks", []))}


def disk_rows(a):
    with open(a.disk) as f:
        raw = json.load(f)
    rows = []
    tokens = int(a.tokens.split(",")[0])
    extra = f"--offload-ratio 1 --lazy-load --max-memory {a.max_memory} --num-disk-workers {a.disk_workers}".split()
    info, secs = denoise_row(a, "disk", tokens, extra + a.dtype_flags.split(), chain=a.one_chain, steps=a.steps)
    total = sum(info.get("step_seconds", [])) or float("nan")
    read = info.get("disk_bytes_read", 0)
    achieved = read / total / 1e9 if read and total == total else None
    ref = raw.get("many_streams_gbs") if a.disk_workers > 1 else raw.get("one_stream_gbs")
    rows.append({"workload": "wan", "mode": "pipeswap disk tier", "tokens": tokens, "seconds": secs,
                 "achieved_read_gbs": achieved and round(achieved, 3), "raw_direct_gbs": ref,
                 "fraction_of_raw": round(achieved / ref, 3) if achieved and ref else None,
                 "max_memory": a.max_memory, "raw": raw, **info})
    return pc.emit(rows, a.out)


def pipe_settings(text):
    """'1:cfg,2:nocfg' -> [(1, True), (2, False)]: B samples, with or without guidance (as wan_gpipe.py)."""
    out = []
    for s in text.split(","):
        b, mode = s.split(":")
        out.append((int(b), mode == "cfg"))
    return out


def two_gpu_rows(a):
    """The 2-GPU rows, each against the 1-GPU run of the same setting (--launcher, default mpirun -np 2;
    --one-chain / --two-chain, default cuda:0 and cuda:0=1,cuda:1=1; NCCL between GPU stages):

    pipeline (scenario 3), at each --pipe-tokens length and --pipe-settings B:cfg|nocfg, resident, S =
      --pipe-steps: B samples (latents with B rows), guidance 5 with the negative context for cfg
      (M = 2B micro-batches per step) or none (M = B). Step 1 (first copies, kernel selection, the
      pipeline's fill) is left out on both sides: seconds_per_step is the mean of steps 2..S and
      loop_seconds their sum. The progress lines print milliseconds (3 decimals), so per-step figures
      below about 20 ms carry a few percent of rounding; the loop sums average it out.
    composition (scenario 4), at the first --tokens length: 2 samples without guidance (2 micro-batches
      per step: both stages busy once the pipeline is full) with every block of each rank swapped
      (--offload-ratio 1 --prefetch-depth 2): 1 GPU streams all blocks, each of 2 GPUs its half.
    transfer (scenario 5), at each --tokens length: 2 GPUs resident, 1 sample without guidance, traced;
      stage_transfer() of the trace gives the stage-to-stage bytes/s.
    """
    launcher = a.launcher.split()
    rows = []

    def run_pair(key, tokens, extra, steps, samples, cfg, both=True):
        """The setting on 1 GPU (when both) and on 2 GPUs: rows with the steady per-step figures."""
        out = []
        for gpus, chain, launch in ((1, a.one_chain, ()), (2, a.two_chain, launcher))[0 if both else 1:]:
            name = f"{key}_{gpus}gpu_b{samples}{'cfg' if cfg else ''}"
            info, _ = denoise_row(a, name, tokens, extra + a.dtype_flags.split(), chain=chain, launcher=launch, steps=steps,
                                  samples=samples, guidance=GUIDANCE if cfg else 1)
            steady = info.get("step_seconds", [])[1:]
            r = {"workload": "wan", "tokens": tokens, "gpus": gpus, "samples": samples, "cfg": cfg,
                 "micro_batches": samples * (2 if cfg else 1), "steps": steps,
                 "seconds_per_step": round(statistics.mean(steady), 6) if steady else None,
                 "loop_seconds": round(sum(steady), 6) if steady else None, **info}
            r["seconds"] = r["seconds_per_step"]
            if gpus == 2 and info.get("trace") and not info.get("error"):
                r["stage_transfer"] = stage_transfer(info["trace"])
            out.append(r)
        return out

    for tokens in [int(t) for t in a.pipe_tokens.split(",")]:
        for samples, cfg in pipe_settings(a.pipe_settings):
            for r in run_pair("pipe", tokens, [], a.pipe_steps, samples, cfg):
                rows.append({**r, "mode": "pipeswap denoise"})
    tokens = int(a.tokens.split(",")[0])
    one, two = run_pair("compose", tokens, ["--offload-ratio", "1", "--prefetch-depth", "2"], a.steps, 2, False)
    rows.append({**one, "mode": "pipeswap 1 GPU, all swapped"})
    rows.append({**two, "mode": "pipeswap 2 GPUs, each half swapped"})
    for tokens in [int(t) for t in a.tokens.split(",")]:
        (r,) = run_pair("transfer", tokens, [], a.steps, 1, False, both=False)
        rows.append({**r, "mode": "pipeswap stage transfer"})
    return pc.emit(rows, a.out)


def scale_rows(a):
    """The scale check of the Wan issue: a 40-block Wan2.1-14B-sized stack (--model) denoised at the first
    --tokens length, one sample with the CFG pair, --steps steps, in each --scale-settings entry
    "GPUS:FLAGS" (1 GPU: --one-chain; 2: --two-chain under --launcher; FLAGS as given, e.g. each rank's
    --blocks-to-swap). Each row: seconds per step (mean of steps 2..S), every rank's measured device
    memory peak beside the plan's prediction, and whether its latents equal the first row's (every split
    and swap setting computes the same arithmetic)."""
    launcher = a.launcher.split()
    tokens = int(a.tokens.split(",")[0])
    rows, first = [], None
    for k, setting in enumerate(x for x in a.scale_settings.split(";") if x):
        gpus, flags = setting.split(":", 1)
        gpus = int(gpus)
        chain, launch = (a.one_chain, ()) if gpus == 1 else (a.two_chain, launcher)
        info, _ = denoise_row(a, f"scale{k}_{gpus}gpu", tokens, flags.split() + a.dtype_flags.split(), chain=chain,
                              launcher=launch,
                              steps=a.steps, guidance=GUIDANCE, traced=False)
        steady = info.get("step_seconds", [])[1:]
        r = {"workload": "wan", "mode": "pipeswap scale", "tokens": tokens, "gpus": gpus, "flags": flags,
             "steps": a.steps, "seconds_per_step": round(statistics.mean(steady), 6) if steady else None, **info}
        r["seconds"] = r["seconds_per_step"]
        if not info.get("error"):
            from safetensors.torch import load_file
            latents = load_file(info["output"])["latents"]
            if first is None:
                first = latents
            else:
                r["same_latents_as_first_row"] = bool(latents.equal(first))
        rows.append(r)
    return pc.emit(rows, a.out)


def cfg_rows(a):
    """Shared fills (issue 16): one GPU, the --model stack (40 Wan2.1-14B-sized blocks) with --swap blocks
    swapped, S samples (--samples) with the CFG pair (2S micro-batches a step), --steps steps, once per
    --orders entry (--swap-order). A row's time is the median of steps 2..S; its bound is max(diffusers'
    resident forward of the 2S-row batch, the framework's compute of the step, from --peers; one sweep of
    the swapped blocks' bytes / the pinned GB/s the peers measured). Each row: the slot fills per step
    (the summary's count, the plan's, and the trace's copy ranges per step), its latents against diffusers'
    CFG loop (wan_cfg_peers.py --ref-dir) and, bit for bit, against the per-micro-batch row's."""
    from safetensors.torch import load_file
    from wan_stack import block_bytes, sizes
    with open(os.path.join(a.model, "config.json")) as f:
        blocks, dim, ffn, _ = sizes(json.load(f))
    bb = block_bytes(dim, ffn)
    peers = load_rows(a.peers)
    bw = peers_bw(a.peers)
    res = {r["samples"]: r for r in peers if r.get("mode") == "resident cfg" and r.get("seconds") == r.get("seconds")}
    fw_dtype = next((r.get("dtype") for r in peers if r.get("dtype")), None)
    fw_name = next((r.get("framework") for r in peers if r.get("framework")), "diffusers")
    tokens = int(a.tokens.split(",")[0])
    ref = ref_info(a, "wan_cfg_ref.json")
    tol = pc.tolerance(ref and ref.get("bf16_error_vs_fp32"))
    x0_cache, rows = {}, []
    for samples in [int(s) for s in a.samples.split(",") if s]:
        first = None
        for order in [o for o in a.orders.split(",") if o]:
            extra = ["--blocks-to-swap", str(a.swap), "--swap-order", order] + a.cfg_flags.split()
            info, secs = denoise_row(a, f"cfg_{order}_b{samples}", tokens, extra, chain=a.one_chain, steps=a.steps,
                                     samples=samples, guidance=GUIDANCE)
            if not info.get("error"):
                info["dtype_check"] = pc.check_dtype(info.get("pipeswap_dtype"), fw_dtype, fw_name)
                try:
                    mine = load_file(info["output"])["latents"]
                    if samples not in x0_cache:
                        x0_cache[samples] = load_file(os.path.join(a.inputs, latents_name(tokens, samples)))["latents"]
                    x0 = x0_cache[samples].float()
                    ref_file = os.path.join(a.ref_dir, f"wan_cfg_ref_{tokens}_b{samples}.safetensors")
                    if a.ref_dir and os.path.exists(ref_file):
                        theirs = load_file(ref_file)["latents"].float()
                        info["check"] = pc.check_output(x0 - mine.float(), x0 - theirs, tol,
                                                        f"{fw_name}, the same {a.steps}-step CFG loop (batched)")
                    if first is None:
                        first = (order, mine)
                    else:
                        same = bool(mine.equal(first[1]))
                        info["identity_check"] = {"against": f"the {first[0]} order's latents, bit for bit",
                                                  "ok": same}
                except Exception as e:  # noqa: BLE001 - a check that cannot run fails the row
                    info["check"] = {"against": fw_name, "ok": False, "error": f"{type(e).__name__}: {e}"}
                if info.get("trace"):
                    info["trace_summary"] = trace_summary(info["trace"])
                    info["trace_fills_per_step"] = copy_ranges_per_step(info["trace"])
            r = res.get(samples, {})
            rows.append(pc.row("wan", f"pipeswap cfg {order}", tokens, secs if secs is not None else float("nan"),
                               a.swap * bb, r.get("seconds"), bw, samples=samples, micro_batches=2 * samples,
                               swapped=a.swap, blocks=blocks, block_bytes=bb, flags=" ".join(extra),
                               framework=fw_name, check_required=True,
                               per_step=f"{samples} sample(s) with the CFG pair, median of steps 2..{a.steps}", **info))
            pc.save_partial(rows, a.out)
    return pc.emit(rows, a.out)


def copy_ranges_per_step(trace_path, skip=1):
    """Slot fills per step in a 1-rank trace: the copy lane's ranges after the first step, over the steps."""
    try:
        _, ev = read_trace(trace_path)
    except (OSError, ValueError):
        return None
    firsts = {}
    for e in ev:
        if e.get("cat") == "compute" and UNIT_SUFFIX.sub("", e.get("name", "")) == "prologue":
            m = re.search(r" s(\d+)", e.get("name", ""))
            step = int(m.group(1)) if m else None
            if step is not None:
                firsts[step] = min(firsts.get(step, e["ts"]), e["ts"])
    steps = sorted(firsts)
    if len(steps) <= skip:
        return None
    begin = firsts[steps[skip]]
    copies = [e for e in ev if e.get("cat") == "copy" and e["ts"] >= begin]
    return round(len(copies) / (len(steps) - skip), 2)


def stage_transfer(trace_path, skip_steps=1):
    """Stage-to-stage bytes/s of a multi-rank `pipeswap denoise --trace` run, per activation message.

    With NCCL kernel ranges in the trace (nccl_link below: the transport times its kernels on the comm
    stream) "gbs" is their figure and the window method's is kept as "window_gbs".

    Why not the send / recv ranges: on NCCL ranks they are host-side ranges around issuing the
    transfer (the receiver's "recv" covers waiting for the header on the control transport and
    enqueueing ncclRecv; the data moves later on the comm stream), so their durations say nothing
    about the transfer. The "recv" events still give each message's bytes and its (step, micro-batch).

    Method: the time the receiving stage's GPU stood between "the data could move" and "the data is
    there", from the device-timed compute ranges (GPU ranks with LibTorch >= 2.5 time compute on the
    device by CUDA events; every rank's events are on one host clock):
      ready  = max(end of the sender's last compute range of that (step, micro-batch),
                   end of the receiver's last compute range before it)
               - the NCCL transport makes the receive wait for the receiver's earlier compute (its
                 buffer comes from the compute stream), so the transfer cannot start before both;
      window = begin of the receiver's first compute range of that (step, micro-batch) - ready
               - the receiver's compute waits on the receive's completion event.
    bytes / window is the achieved stage-to-stage rate, launch latency and the sender's host lag
    included: a lower bound on the link's rate, and the same quantity as the "one at a time" figure of
    bench/nccl_p2p.py (half a ping-pong round trip). Each rank's device clock is anchored to the host
    clock by one event wait at start; the anchors' errors (microseconds) enter the window, so short
    windows are noisy: the median over messages is reported, and step 0 (NCCL connection set-up,
    first kernels) is left out. Swapped stages put copy waits before the first compute: use resident
    runs. Where a GPU rank lacks device timing, the compute ranges are issue times too and the result
    is an error, not a number. On CPU ranks (TCP transport, host ranges) the same formula holds, but
    data that arrived while the receiver computed is only copied out in the window (an upper bound).
    """
    opener = gzip.open if trace_path.endswith(".gz") else open
    with opener(trace_path, "rt") as f:
        trace = json.load(f)
    ranks = {r["rank"]: r for r in trace.get("otherData", {}).get("ranks", [])}
    untimed = [r for r, info in ranks.items() if str(info.get("device", "")).startswith("cuda")
               and not info.get("device_timing")]
    if untimed:
        return {"error": f"ranks {untimed} traced GPU work by issue time (LibTorch < 2.5): no transfer times"}
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    compute = {}  # rank -> [(begin, end, step, micro_batch)], microseconds
    span = {}  # (rank, step, micro_batch) -> [first begin, last end] of its compute ranges
    for e in events:
        if e["cat"] != "compute":
            continue
        ar, b = e.get("args", {}), e["ts"]
        end = b + e["dur"]
        key = (e["pid"], ar.get("step"), ar.get("micro_batch"))
        compute.setdefault(e["pid"], []).append((b, end, key[1], key[2]))
        s = span.setdefault(key, [b, end])
        s[0], s[1] = min(s[0], b), max(s[1], end)
    messages, dropped = [], 0
    for e in events:
        ar = e.get("args", {})
        # The stage's host-side receives ("recv mb0 s1"; not "recv output", nor the NCCL kernels' "nccl recv").
        name = e["name"]
        if e["cat"] != "recv" or not name.startswith("recv") or name.startswith("recv output") or \
                ar.get("step", -1) < skip_steps:
            continue
        dst, src, unit = e["pid"], ar.get("peer"), (ar.get("step"), ar.get("micro_batch"))
        if (src, *unit) not in span or (dst, *unit) not in span:
            dropped += 1
            continue
        begin = span[(dst, *unit)][0]
        before = [end for b, end, s, m in compute[dst] if end <= begin and (s, m) != unit]
        ready = max([span[(src, *unit)][1]] + before)
        if begin - ready <= 0:
            dropped += 1  # clock anchoring error larger than the transfer
            continue
        messages.append((ar.get("bytes", 0), (begin - ready) * 1e-6))
    if not messages:
        return {"error": f"no activation message of step >= {skip_steps} with compute on both sides in {trace_path}"}
    nbytes = statistics.median(b for b, _ in messages)
    windows = sorted(w for _, w in messages)
    med = statistics.median(windows)
    out = {"bytes": int(nbytes), "messages": len(messages), "dropped": dropped, "method": "compute windows",
           "window_seconds_median": round(med, 9), "window_seconds_min": round(windows[0], 9),
           "window_seconds_max": round(windows[-1], 9), "gbs": round(nbytes / med / 1e9, 3),
           "gbs_best": round(nbytes / windows[0] / 1e9, 3), "trace": trace_path}
    link = nccl_link(events, skip_steps)
    if link:
        out.update(link)
        out["window_gbs"] = out["gbs"]
        out["gbs"], out["gbs_best"], out["method"] = link["link_gbs"], link["link_gbs_best"], "nccl kernels"
    return out


def nccl_link(events, skip_steps):
    """Where the NCCL transport traced its kernels (lane "nccl", device-timed on its comm stream): each
    message's time on the link is the overlap of the sender's "nccl send" and the receiver's "nccl recv"
    ranges of that (step, micro-batch), since the bytes move only while both kernels run. Per-message
    bytes / overlap, median over messages (step < skip_steps left out). None without such ranges."""
    sends, recvs = {}, {}
    for e in events:
        ar = e.get("args", {})
        name = e["name"]  # "nccl send mb0 s1": the merged trace appends the unit
        if not name.startswith(("nccl send", "nccl recv")) or ar.get("step", -1) < skip_steps:
            continue
        if name.startswith("nccl send"):
            sends[(e["pid"], ar.get("peer"), ar.get("step"), ar.get("micro_batch"))] = e
        else:
            recvs[(ar.get("peer"), e["pid"], ar.get("step"), ar.get("micro_batch"))] = e
    rates = []
    for key, r in recvs.items():
        snd = sends.get(key)
        if snd is None:
            continue
        overlap = min(snd["ts"] + snd["dur"], r["ts"] + r["dur"]) - max(snd["ts"], r["ts"])
        nb = r.get("args", {}).get("bytes", 0)
        if overlap > 0 and nb > 0:
            rates.append((nb / (overlap * 1e-6), overlap * 1e-6))
    if not rates:
        return None
    gbs = sorted(x for x, _ in rates)
    return {"link_messages": len(rates), "link_gbs": round(statistics.median(gbs) / 1e9, 3),
            "link_gbs_best": round(gbs[-1] / 1e9, 3),
            "link_seconds_median": round(statistics.median(t for _, t in rates), 9)}


def transfer_cmd(a):
    r = stage_transfer(a.trace, a.skip_steps)
    print(json.dumps(r))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(r, f, indent=1)
    return 0 if "error" not in r else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inputs")
    i.add_argument("--out", required=True)
    i.add_argument("--tokens", default="1024,4096,16384")
    i.add_argument("--grid-hw", type=int, default=32)
    i.add_argument("--batches", default="1,2", help="latents files with this many samples (rows)")
    t = sub.add_parser("transfer", help="stage-to-stage bytes/s from a 2-rank denoise --trace file")
    t.add_argument("--trace", required=True)
    t.add_argument("--skip-steps", type=int, default=1)
    t.add_argument("--out", default="")
    ts = sub.add_parser("trace-summary", help="milliseconds per step and phase from a 1-rank --trace file")
    ts.add_argument("--trace", required=True)
    ts.add_argument("--skip", type=int, default=1)
    for name in ("wan", "llama", "disk", "two-gpu", "scale", "cfg"):
        p = sub.add_parser(name)
        p.add_argument("--exe", required=True)
        p.add_argument("--model", required=True)
        p.add_argument("--inputs", default="")
        p.add_argument("--tokens", default="1024,4096,16384" if name != "llama" else "512,2048,8192")
        p.add_argument("--steps", type=int, default=6 if name == "wan" else 3,
                       help="denoising steps (wan: 6, the first a warm-up, the median of the other five)")
        p.add_argument("--repeat", type=int, default=6, help="llama: forward passes (the first a warm-up)")
        p.add_argument("--shift", type=float, default=SHIFT)
        p.add_argument("--ref-dir", default="", help="wan, llama: the peers' reference outputs (--ref-dir there)")
        p.add_argument("--dtype-flags", default="--dtype bf16",
                       help="disk, two-gpu, scale: added to every pipeswap command (the peers run bf16)")
        p.add_argument("--peers", default="", help="the peers' JSON of this run (its pinned bandwidth)")
        p.add_argument("--disk", default="", help="disk_bw.sh's JSON of this run")
        p.add_argument("--max-memory", default="4GB")
        p.add_argument("--disk-workers", type=int, default=4)
        p.add_argument("--settings", default=SETTINGS, help="wan, llama: NAME:FLAGS rows, ';'-separated")
        p.add_argument("--tolerance", type=float, default=0,
                       help="wan: relative L2 tolerance of the output check (0: from diffusers' own bf16 error); "
                       "the fp8 rows (bench/run-all fp8) pass their own: fp8 weights are not bf16's")
        p.add_argument("--pipe-tokens", default="4096", help="two-gpu: lengths of the pipeline rows")
        p.add_argument("--pipe-settings", default="1:cfg,2:cfg,2:nocfg", help="two-gpu: B:cfg|nocfg rows")
        p.add_argument("--pipe-steps", type=int, default=30, help="two-gpu: denoising steps of the pipeline rows")
        p.add_argument("--launcher", default="mpirun -np 2 --bind-to none",
                       help="two-gpu: how 2 ranks start ('' : pipeswap's single-node mode)")
        p.add_argument("--scale-settings", default="1:--blocks-to-swap 30;2:--blocks-to-swap 10;2:",
                       help="scale: GPUS:FLAGS rows, ';'-separated")
        p.add_argument("--one-chain", default="cuda:0")
        p.add_argument("--samples", default="1,2", help="cfg: samples per step (each with the CFG pair)")
        p.add_argument("--orders", default="per-micro-batch,shared,auto", help="cfg: --swap-order of each row")
        p.add_argument("--swap", type=int, default=30, help="cfg: --blocks-to-swap")
        p.add_argument("--cfg-flags", default="", help="cfg: more flags for every row (none: the defaults)")
        p.add_argument("--two-chain", default="cuda:0=1,cuda:1=1")
        p.add_argument("--trace-dir", default="")
        p.add_argument("--scratch", default="/tmp/pipeswap-bench-out")
        p.add_argument("--timeout", type=int, default=240)
        p.add_argument("--out", default="")
    a = ap.parse_args()
    if hasattr(a, "scratch"):
        os.makedirs(a.scratch, exist_ok=True)
    cmds = {"inputs": make_inputs, "wan": wan_rows, "llama": llama_rows, "disk": disk_rows, "two-gpu": two_gpu_rows,
            "scale": scale_rows, "cfg": cfg_rows, "transfer": transfer_cmd,
            "trace-summary": lambda a: print(json.dumps(trace_summary(a.trace, a.skip), indent=1))}
    sys.exit(cmds[a.cmd](a))


if __name__ == "__main__":
    main()
