#!/usr/bin/env python3
"""Prompt in, video out, end to end (issue 18's benchmark): `pipeswap generate --prompt-ids` against
diffusers' WanPipeline (bench/wan_generate_peer.py) on the same repo (bench/wan_repo.py: random weights at
the real sizes, or --tiny), the same token ids, the same initial noise, size, steps and guidance.

    generate_rows.py peer     --repo R --offload none  --name resident --out gen_peers.json   # diffusers resident
    generate_rows.py peer     --repo R --offload group --name 24GB     --out gen_peers.json   # group offloading
    generate_rows.py pipeswap --exe build-gpu/pipeswap --repo R --name resident --peers gen_peers.json --out generate.json
    generate_rows.py pipeswap --exe ... --name 24GB --flags "--vram-budget 24GB" --peers gen_peers.json --out generate.json
    generate_rows.py yardstick --repo R --frames 17 --height 240 --width 416 --out gen_yardstick.json  # the tolerance

Rows are paired by --name: the pipeswap row NAME is checked and timed against the peer row NAME of the
same results file (the same device call). Each command replaces its own row in --out and keeps the others.

Initial noise: both sides start from the same file, noise_<seed>_<F>x<H>x<W>.safetensors in --scratch:
torch.randn([1, 16, (F-1)/4+1, H/8, W/8]) from torch.Generator("cpu").manual_seed(seed) in float32, which
is what WanPipeline.prepare_latents draws for generator=torch.Generator("cpu").manual_seed(seed) (and what
`generate --seed` draws); the peer gets it as --latents-in, pipeswap as --latents.

A pipeswap row is one run: `--output frames/ --save-latents latents.safetensors` writes the decoded frames
(the frames check) and the final latents before the decode (the latents check), with every phase's time;
--no-decode runs `--output latents.safetensors` alone (no decode phase). Times per phase come from
the runs' summaries ("phase encode 1.234 s  host tensors peak ... , cuda:0 peak ..."), the peer's from its
JSON line (encode: read the text encoder and encode both prompts; denoise: read the DiT and VAE, set up,
and the sampling loop; decode: the VAE decode and the frames in [0, 1]). Total: encode + denoise +
decode. Per step: each side's step times (pipeswap's "step k/S" lines, the peer's step callback).
Extrapolated to --extrapolate-steps (30): total - the S steps + step 1 + the median of steps 2..S x 29,
marked as extrapolated (the steps of a UniPC loop cost the same: two DiT forwards each with guidance).
Memory: each phase's device peak (both sides: the CUDA caching allocator's peak allocated bytes), the
host peak as the process's peak resident set (VmHWM, read while it runs: the same measure on both sides;
pipeswap's per-phase CPU tensor peaks are kept beside it, the peer's own ru_maxrss per phase too).

Checks (a row FAILS, status and exit status 1, unless all hold):
  * dtype: pipeswap's plan line's compute dtype equals the peer's (bfloat16 on a GPU, float32 on the CPU);
  * latents: the run's final latents against the peer's, relative L2 error <= --tolerance;
  * frames: the run's PNG frames / 255 against the peer's frames, relative L2 error <= --tolerance.
The tolerance: max(0.02, 3 x diffusers' own bf16 error against its float32 run of the same pipeline), as
pipeswap_rows.py's rule, the yardstick measured in the same results folder by `generate_rows.py yardstick`
(both dtypes at a small video size on the same repo, ids and noise: a float32 run at 480p x 81 frames would
not fit a device call; the Wan rows' bf16 error hardly changed from 1k to 16k tokens). Without a yardstick:
0.05 against a bf16 peer (diffusers' bf16 error of 12 Wan2.1-14B-sized blocks over 6 steps was 6.4e-3 on the
GPU machine, docs/benchmarks.md; a whole pipeline adds umT5-XXL's 24 layers and 40 blocks, so about 1.5e-2 is
assumed, times 3), 0.02 against a float32 one. One known difference lies inside it: transformers keeps umT5's
FFN output projections (`wo`) in float32 when loading in bf16 (UMT5's _keep_in_fp32_modules), pipeswap
computes them in the stored bf16. What it catches, on the tiny CPU repo (bench/test-generate-peers.sh): another
initial noise gives 1.4, one DiT weight of 2 blocks scaled by 2 gives 0.08 (both FAIL there, at 0.02); at the
real sizes one scaled weight among 40 blocks may stay under 0.05: the check is for a wrong pipeline (noise,
schedule, guidance, a component, a layout), not for one weight. The tolerance and the measured errors are in
every row.
"""
import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_common as pc  # noqa: E402
from pipeswap_rows import STEP_LINE, UNITS, common_info, load_rows  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PHASES = ("encode", "denoise", "decode")
# "  phase encode     2.226 s  host tensors peak 60.4 MiB after 16.0 MiB, cuda:0 peak 11.2 GiB (rank 0)"
PHASE_LINE = re.compile(r"^\s*phase (\w+)\s+([0-9.]+) s  host tensors peak ([0-9.]+ ?[KMGT]?i?B) after "
                        r"([0-9.]+ ?[KMGT]?i?B)(?:, (\S+) peak ([0-9.]+ ?[KMGT]?i?B))?", re.M)
TOL_BF16 = 0.05  # see the module's docstring: 3 x an estimated 1.5e-2 of the whole bf16 pipeline
TOL_FP32 = pc.TOL_FLOOR


def parse_bytes(text):
    m = re.match(r"([0-9.]+) ?([KMGT]?i?B)", text.strip())
    return int(float(m.group(1)) * UNITS[m.group(2)]) if m else None


def tokens_of(frames, height, width):
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def noise_file(a, seed):
    """The initial noise both sides start from (see the module's docstring), written once per seed and size."""
    import torch
    from safetensors.torch import save_file
    path = os.path.join(a.scratch, f"noise_{seed}_{a.frames}x{a.height}x{a.width}.safetensors")
    if not os.path.exists(path):
        shape = [1, 16, (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8]
        x = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
        save_file({"latents": x}, path + ".tmp")
        os.replace(path + ".tmp", path)
    return path


def vm_hwm(pid):
    """The peak resident set of a running process (VmHWM: its own, since its exec), in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def run_measured(cmd, timeout):
    """(exit status, output, wall seconds, peak resident set in bytes) of one process. The peak is its VmHWM,
    read every 50 ms while it runs (a peak in its last 50 ms is missed): not wait4's ru_maxrss, which for a
    child of this Python process starts at this process's own resident set (exec keeps the forked copy's)."""
    t0 = time.time()
    hwm = None
    with tempfile.TemporaryFile(mode="w+") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "TQDM_DISABLE": "1"})
        while True:
            hwm = vm_hwm(p.pid) or hwm
            try:
                rc = p.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                if time.time() - t0 > timeout:
                    p.kill()
                    p.wait()
                    rc = 124
                    break
        log.seek(0)
        out = log.read()
    if rc == 124:
        out += f"\n(timed out after {timeout} s)"
    return rc, out, round(time.time() - t0, 2), hwm


def extrapolate(total, steps, target):
    """The total with `target` steps instead of len(steps): step 1 (the warm-up) as measured, the median of
    steps 2..S for every later one. None without step times."""
    if not steps or total is None:
        return None
    per = statistics.median(steps[1:] or steps)
    return round(total - sum(steps) + steps[0] + per * (target - 1), 3)


def phase_total(phases):
    secs = [(phases.get(p) or {}).get("seconds") for p in PHASES]
    return round(sum(secs), 3) if all(s is not None for s in secs) else None


def max_or_none(xs):
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


def replace_row(path, row):
    """--out keeps every other name's row: each step of bench/run-all writes its own."""
    rows = [r for r in load_rows(path) if r.get("name") != row["name"]] + [row]
    pc.save_partial(rows, path)
    return rows


def common(a):
    return {"frames": a.frames, "height": a.height, "width": a.width, "steps": a.steps, "guidance": a.guidance,
            "tokens": tokens_of(a.frames, a.height, a.width), "extrapolate_steps": a.extrapolate_steps}


def peer_cmd(a):
    ref = os.path.join(a.scratch, f"gen_ref_{a.name}")
    cmd = [a.python, os.path.join(HERE, "wan_generate_peer.py"), "--repo", a.repo, "--offload", a.offload,
           "--frames", str(a.frames), "--height", str(a.height), "--width", str(a.width), "--steps", str(a.steps),
           "--guidance", str(a.guidance), "--seed", str(a.seed), "--latents-in", noise_file(a, a.seed),
           "--latents-out", ref + "_latents.safetensors", "--frames-out", ref + "_frames.safetensors"]
    if a.device:
        cmd += ["--device", a.device]
    if getattr(a, "dtype", ""):
        cmd += ["--dtype", a.dtype]
    if a.perturb:
        cmd += ["--perturb", a.perturb]
    return cmd, ref


def peer_row(a):
    cmd, ref = peer_cmd(a)
    for f in (ref + "_latents.safetensors", ref + "_frames.safetensors"):
        if os.path.exists(f):
            os.remove(f)  # never compare against an earlier call's output
    rc, text, wall, rss = run_measured(cmd, a.timeout)
    r = {"workload": "generate", "name": a.name, "mode": f"diffusers {a.name}", "framework": "diffusers WanPipeline",
         "offload": a.offload, **common(a), "seed": a.seed, "perturb": a.perturb or None,
         "command": " ".join(cmd), "rc": rc, "wall_seconds": wall, "host_peak_rss": rss}
    line = next((l for l in reversed(text.splitlines()) if l.startswith("{") and '"phases"' in l), None)
    if rc != 0 or not line:
        r["error"] = text[-2000:]
    else:
        j = json.loads(line)
        r.update(dtype=j.get("dtype"), device=j.get("device"), noise=j.get("noise"), phases=j["phases"],
                 latents=ref + "_latents.safetensors", frames_file=ref + "_frames.safetensors")
        r["step_seconds"] = j["phases"]["denoise"].get("step_seconds")
        r["total_seconds"] = phase_total(r["phases"])
        r["device_peak"] = max_or_none([p.get("device_peak") for p in r["phases"].values()])
        r["extrapolated_total_seconds"] = extrapolate(r["total_seconds"], r["step_seconds"], a.extrapolate_steps)
    replace_row(a.out, r)
    print(json.dumps(r), flush=True)
    return 1 if r.get("error") else 0


def yardstick(a):
    """diffusers' own bf16 error against its float32 run of the same pipeline (the same repo, ids and noise) at
    --frames/--height/--width: the yardstick of the pipeswap rows' tolerance (pipeswap --yardstick)."""
    from safetensors.torch import load_file
    out = {"workload": "generate", "what": "diffusers WanPipeline bf16 vs float32", **common(a), "seed": a.seed}
    lat = {}
    for dtype in ("bf16", "fp32"):
        a.dtype, a.name, a.perturb = dtype, f"yardstick_{dtype}", ""
        cmd, ref = peer_cmd(a)
        rc, text, wall, rss = run_measured(cmd, a.timeout)
        out[f"{dtype}_command"], out[f"{dtype}_rc"], out[f"{dtype}_wall_seconds"] = " ".join(cmd), rc, wall
        if rc != 0:
            out["error"] = text[-2000:]
            break
        lat[dtype] = (load_file(ref + "_latents.safetensors")["latents"], load_file(ref + "_frames.safetensors")["frames"])
    if "error" not in out:
        out["bf16_error_vs_fp32"] = round(pc.rel_err(lat["bf16"][0], lat["fp32"][0])["rel_l2"], 6)
        out["frames_bf16_error_vs_fp32"] = round(pc.rel_err(lat["bf16"][1], lat["fp32"][1])["rel_l2"], 6)
        out["tolerance"] = round(pc.tolerance(out["bf16_error_vs_fp32"]), 6)
    with open(a.out, "w") as f:
        json.dump([out], f, indent=1)
    print(json.dumps(out), flush=True)
    return 1 if "error" in out else 0


def pipeswap_run(a, noise, output, tag, extra=()):
    cmd = [a.exe, "generate", "--model", a.repo, "--prompt-ids", os.path.join(a.repo, "prompt_ids.safetensors"),
           "--frames", str(a.frames), "--height", str(a.height), "--width", str(a.width), "--steps", str(a.steps),
           "--guidance", str(a.guidance), "--latents", noise, "--output", output] + list(extra) + a.flags.split()
    if a.device_chain:
        cmd += ["--device-chain", a.device_chain]
    rc, text, wall, rss = run_measured(cmd, a.timeout)
    run = {"command": " ".join(cmd), "rc": rc, "wall_seconds": wall, "host_peak_rss": rss, "output": output}
    phases = {}
    for name, secs, hpeak, hafter, dev, dpeak in PHASE_LINE.findall(text):
        phases[name] = {"seconds": float(secs), "host_tensor_peak": parse_bytes(hpeak),
                        "host_tensor_after": parse_bytes(hafter), "device": dev or None,
                        "device_peak": parse_bytes(dpeak) if dpeak else None}
    run["phases"] = phases
    run["step_seconds"] = [float(m.group(3)) for m in STEP_LINE.finditer(text)]
    if rc != 0 or not phases:
        run["error"] = text[-2000:]
    info = {}
    common_info(text, info)
    run.update(info)
    print(f"generate_rows: pipeswap {a.name} run {tag}: rc {rc} in {wall} s", flush=True)
    return run


def ratio(x, y):
    return round(x / y, 4) if x is not None and y else None


def build_row(a, base, runs, peer, latents_path, frames_dir):
    """The row of the run (runs["run"]) against the peer row `peer`: phases, ratios, checks, status."""
    from safetensors.torch import load_file
    import torch
    tol = base["tolerance"]
    r = dict(base)
    r["runs"] = runs
    errors = [f"run {k}: {v['error']}" for k, v in runs.items() if v.get("error")]
    if errors:
        r["error"] = "\n".join(errors)[-3000:]
        r["rc"] = next(v["rc"] for v in runs.values() if v.get("error"))
    A = runs["run"]
    B = A if not a.no_decode else {}  # the decoded frames (and the decode phase) come from the same run
    phases = {p: (A["phases"].get(p)) for p in ("encode", "denoise")}
    phases["decode"] = (B.get("phases") or {}).get("decode")
    r["phases"] = phases
    r["step_seconds"] = A.get("step_seconds")
    r["pipeswap_dtype"] = A.get("pipeswap_dtype")
    r["swapped_blocks"] = A.get("swapped_blocks")
    r["plan_device_bytes"], r["dit_device_peak_bytes"] = A.get("plan_device_bytes"), A.get("device_peak_bytes")
    r["total_seconds"] = phase_total(phases)
    r["device_peak"] = max_or_none([(p or {}).get("device_peak") for p in phases.values()])
    r["host_peak_rss"] = max_or_none([v.get("host_peak_rss") for v in runs.values()])
    r["extrapolated_total_seconds"] = extrapolate(r["total_seconds"], r["step_seconds"], a.extrapolate_steps)
    if not peer or peer.get("error"):
        r["check"] = {"against": "diffusers WanPipeline", "ok": False,
                      "error": f"no peer row named {a.name} in {a.peers} (or it failed)"}
    else:
        pp = peer.get("phases", {})
        r["ratios"] = {p: ratio((phases.get(p) or {}).get("seconds"), (pp.get(p) or {}).get("seconds"))
                       for p in PHASES}
        r["ratios"]["total"] = ratio(r["total_seconds"], peer.get("total_seconds"))
        r["ratios"]["per_step"] = ratio(statistics.median(r["step_seconds"][1:] or r["step_seconds"])
                                        if r["step_seconds"] else None,
                                        statistics.median(peer["step_seconds"][1:] or peer["step_seconds"])
                                        if peer.get("step_seconds") else None)
        r["ratios"]["extrapolated_total"] = ratio(r["extrapolated_total_seconds"],
                                                  peer.get("extrapolated_total_seconds"))
        r["dtype_check"] = pc.check_dtype(r["pipeswap_dtype"], peer.get("dtype"), "diffusers WanPipeline")
        against = f"diffusers WanPipeline ({peer['mode']}), the same {a.steps}-step loop"
        if not A.get("error"):
            try:
                r["check"] = pc.check_output(load_file(latents_path)["latents"].float(),
                                             load_file(peer["latents"])["latents"].float(), tol, against)
            except Exception as e:  # noqa: BLE001 - a check that cannot run fails the row
                r["check"] = {"against": against, "ok": False, "error": f"{type(e).__name__}: {e}"}
        if B and not B.get("error"):
            try:
                import numpy as np
                from PIL import Image  # diffusers' own dependency (its VideoProcessor imports it)
            except ImportError as e:
                r["frames_check_skipped"] = f"{e}: frames not compared (the latents check stands)"
                B = {}
        if B and not B.get("error"):
            try:
                pngs = sorted(glob.glob(os.path.join(frames_dir, "*.png")))
                mine = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs])).float()
                theirs = load_file(peer["frames_file"])["frames"][0].float()
                r["frames_check"] = pc.check_output(mine / 255, theirs, tol, against + ", decoded frames")
            except Exception as e:  # noqa: BLE001
                r["frames_check"] = {"against": against, "ok": False, "error": f"{type(e).__name__}: {e}"}
    st = pc.status(r)
    fc = r.get("frames_check")
    if fc and not fc["ok"]:
        why = (f"frames differ from {fc['against']}: relative error {fc.get('rel_l2')} > {fc.get('tolerance')}"
               if "error" not in fc else f"frames check failed: {fc['error']}")
        st = (st + "; " + why) if st.startswith("FAILED") else "FAILED: " + why
    r["status"] = st
    return r


def pipeswap_row(a):
    peer = next((r for r in load_rows(a.peers) if r.get("name") == a.name), None)
    ys = load_rows(a.yardstick)
    ys = ys[0] if ys and peer and peer.get("dtype") == "bfloat16" and ys[0].get("bf16_error_vs_fp32") else None
    tol = a.tolerance or (ys["tolerance"] if ys else TOL_FP32 if peer and peer.get("dtype") == "float32"
                          else TOL_BF16)
    noise = noise_file(a, a.seed)
    out_dir = os.path.join(a.scratch, f"gen_{a.name}")
    os.makedirs(out_dir, exist_ok=True)
    latents_path, frames_dir = os.path.join(out_dir, "latents.safetensors"), os.path.join(out_dir, "frames")
    for f in glob.glob(os.path.join(frames_dir, "*.png")) + [latents_path]:
        if os.path.exists(f):
            os.remove(f)
    base = {"workload": "generate", "name": a.name, "mode": f"pipeswap {a.name}", "flags": a.flags, **common(a),
            "seed": a.seed, "noise": noise, "tolerance": tol, "check_required": True,
            "tolerance_from": "--tolerance" if a.tolerance else (
                f"3 x diffusers' bf16 error {ys['bf16_error_vs_fp32']} at {ys['frames']} frames, "
                f"{ys['width']}x{ys['height']} (generate_rows.py yardstick)" if ys else "the fixed default"),
            "peer": {k: peer.get(k) for k in ("mode", "offload", "command", "status", "noise", "perturb")} if peer
            else None}
    if a.no_decode:
        runs = {"run": pipeswap_run(a, noise, latents_path, "(latents)")}
    else:
        runs = {"run": pipeswap_run(a, noise, frames_dir + "/", "(frames and latents)",
                                    ["--save-latents", latents_path])}
    r = build_row(a, base, runs, peer, latents_path, frames_dir)
    st = r["status"]
    replace_row(a.out, r)
    print(json.dumps(r), flush=True)
    if st.startswith("FAILED"):
        print(f"generate {r['mode']}: {st}", flush=True)
        return 1
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("peer", "pipeswap", "yardstick"):
        p = sub.add_parser(name)
        p.add_argument("--repo", required=True, help="a repo of bench/wan_repo.py (prompt_ids.safetensors in it)")
        p.add_argument("--name", required=name != "yardstick",
                       help="the row's name (resident, 24GB): pairs pipeswap with the peer")
        p.add_argument("--frames", type=int, default=81)
        p.add_argument("--height", type=int, default=480)
        p.add_argument("--width", type=int, default=832)
        p.add_argument("--steps", type=int, default=3,
                       help="denoising steps (30 do not fit a device call at the real sizes: extrapolated)")
        p.add_argument("--extrapolate-steps", type=int, default=30)
        p.add_argument("--guidance", type=float, default=5.0)
        p.add_argument("--seed", type=int, default=42, help="the initial noise (see the docstring)")
        p.add_argument("--scratch", default="/tmp/pipeswap-bench-gen")
        p.add_argument("--timeout", type=int, default=300, help="seconds for each process")
        p.add_argument("--out", required=True)
    for pe in (sub.choices["peer"], sub.choices["yardstick"]):
        pe.add_argument("--offload", choices=["none", "model", "group"], default="none")
        pe.add_argument("--device", default="", help="the peer's device (default: cuda where there is one)")
        pe.add_argument("--perturb", default="", help="NAME:FACTOR: scale one DiT weight (a negative check)")
        pe.add_argument("--python", default=sys.executable)
    sub.choices["peer"].add_argument("--dtype", default="", choices=["", "bf16", "fp32"],
                                     help="the peer's dtype (default: bf16 on a GPU, float32 on the CPU)")
    ps = sub.choices["pipeswap"]
    ps.add_argument("--exe", required=True)
    ps.add_argument("--flags", default="", help="more pipeswap flags, e.g. '--vram-budget 24GB'")
    ps.add_argument("--device-chain", default="cuda:0", help="'' : pipeswap's default (the CPU)")
    ps.add_argument("--peers", required=True, help="the peer rows of this call (generate_rows.py peer --out)")
    ps.add_argument("--tolerance", type=float, default=0,
                    help=f"relative L2 bound (0: {TOL_BF16} against a bf16 peer, {TOL_FP32} against float32)")
    ps.add_argument("--no-decode", action="store_true", help="--output latents.safetensors only (no decode phase, no frames check)")
    ps.add_argument("--yardstick", default="", help="generate_rows.py yardstick's JSON (the tolerance's yardstick)")
    a = ap.parse_args()
    os.makedirs(a.scratch, exist_ok=True)
    sys.exit({"peer": peer_row, "pipeswap": pipeswap_row, "yardstick": yardstick}[a.cmd](a))


if __name__ == "__main__":
    main()
