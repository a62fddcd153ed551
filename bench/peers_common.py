"""What the peer benchmarks share: swapping methods applied to a list of blocks (nn.Modules) of the
frameworks' own models, the pinned host -> device bandwidth of this machine, timing, the same-computation
check and JSON rows.

The generic methods (the frameworks' own offloading, diffusers' group offload and model CPU offload,
live in wan_peers.py):
  naive       block.to(device) before its forward, block.to("cpu") after: synchronous, pageable
              memory (what a plain block-swap loop does).
  accelerate  accelerate.cpu_offload: Accelerate's hooks move each submodule's weights in for its
              forward and drop them after.
  prefetch    weights in page-locked host memory; while block i computes, a side stream copies
              block i+1 in (two blocks on the device at once), the compute stream waits on an event
              (LightX2V's block offload works so). Only the blocks swap; the parts around them
              (embeddings, head) stay on the device.

Timing: every time is the median of ITERS (>= 5) passes after a warm-up (time_passes).

Same computation (check_output): a row's output against the framework's resident output of the same
inputs, as the relative L2 error ||out - ref|| / ||ref|| (and the max error over max |ref|, recorded).
A row passes when the relative L2 error is within tolerance(): max(TOL_FLOOR, TOL_FACTOR x the
framework's own bf16 error against its float32 run on the same inputs, measured in the same run).
A bf16 computation differs from another bf16 computation of the same arithmetic by about its own
rounding error; different weights, inputs, schedules or layouts differ by tens of percent. A float32
computation is within the tolerance of a bf16 one, so the dtype is checked on its own (check_dtype).
"""
import json
import math
import os
import statistics
import sys
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def module_bytes(m):
    return sum(p.numel() * p.element_size() for p in m.parameters()) + sum(
        b.numel() * b.element_size() for b in m.buffers())


def pinned_bandwidth(device, gib=2.0, repeats=5):
    """Host -> device GB/s of one large page-locked copy (best of `repeats`), and of pageable memory."""
    if device.type != "cuda":
        return {"pinned_h2d_gbs": None, "pageable_h2d_gbs": None, "bytes": 0}
    n = int(gib * (1 << 30))
    dst = torch.empty(n, dtype=torch.uint8, device=device)
    out = {"bytes": n}
    for name, pin in (("pinned_h2d_gbs", True), ("pageable_h2d_gbs", False)):
        src = torch.empty(n, dtype=torch.uint8, pin_memory=pin)
        src.fill_(1)
        best = 0.0
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(src, non_blocking=pin)
            b.record()
            b.synchronize()
            best = max(best, n / (a.elapsed_time(b) / 1e3) / 1e9)
        out[name] = round(best, 2)
        del src
    del dst
    torch.cuda.empty_cache()
    return out


class NaiveSwap:
    """block.to(device) before each forward and block.to('cpu') after (synchronous)."""

    def __init__(self, blocks, device):
        self.handles = []

        def before(m, args):
            m.to(device)  # hooks return None: a value would replace the inputs / outputs

        def after(m, args, out):
            m.to("cpu")

        for b in blocks:
            b.to("cpu")
            self.handles.append(b.register_forward_pre_hook(before))
            self.handles.append(b.register_forward_hook(after))

    def remove(self):
        for h in self.handles:
            h.remove()


class StreamPrefetch:
    """Page-locked host copies of every block; block i+1 is copied in on a side stream while block i
    computes; a block's device copy is dropped after its forward (the caching allocator reuses it)."""

    def __init__(self, blocks, device):
        self.blocks = list(blocks)
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.host = []  # per block: [(param, pinned host tensor)]
        for b in self.blocks:
            pairs = []
            for p in list(b.parameters()) + list(b.buffers()):
                h = p.data.to("cpu")
                if self.cuda:
                    h = h.pin_memory()
                p.data = h
                pairs.append((p, h))
            self.host.append(pairs)
        self.pending = {}  # block index -> (event, [device tensors])
        self.handles = []
        for i, b in enumerate(self.blocks):
            self.handles.append(b.register_forward_pre_hook(lambda m, args, i=i: self._before(i)))
            self.handles.append(b.register_forward_hook(lambda m, args, out, i=i: self._after(i)))

    def _issue(self, i):
        if i >= len(self.blocks) or i in self.pending:
            return
        if not self.cuda:
            self.pending[i] = (None, [h.to(self.device) for _, h in self.host[i]])
            return
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            devs = [h.to(self.device, non_blocking=True) for _, h in self.host[i]]
            ev = torch.cuda.Event()
            ev.record(self.stream)
        for d in devs:
            d.record_stream(compute)  # used on the compute stream: not reused before that is done
        self.pending[i] = (ev, devs)

    def start(self):
        """Before a pass: the first block's copy starts."""
        self._issue(0)

    def _before(self, i):
        self._issue(i)  # no-op when prefetched
        ev, devs = self.pending.pop(i)
        if ev is not None:
            torch.cuda.current_stream(self.device).wait_event(ev)
        for (p, _), d in zip(self.host[i], devs):
            p.data = d
        self._issue(i + 1)  # the next block's copy runs beside this block's compute

    def _after(self, i):
        for p, h in self.host[i]:
            p.data = h

    def remove(self):
        for h in self.handles:
            h.remove()


def accelerate_offload(blocks, device):
    """accelerate.cpu_offload on each block (weights kept on the CPU, moved in by hooks). Returns
    what accelerate_remove needs to give the blocks their weights back (cpu_offload leaves the
    modules' own parameters on the meta device)."""
    from accelerate import cpu_offload
    saved = []
    for b in blocks:
        b.to("cpu")
        saved.append(dict(b.state_dict()))
        cpu_offload(b, execution_device=device)
    return saved


def accelerate_remove(blocks, saved):
    from accelerate.hooks import remove_hook_from_module
    for b, sd in zip(blocks, saved):
        remove_hook_from_module(b, recurse=True)
        b.load_state_dict(sd, assign=True)


ITERS = 5  # timed passes per row, after the warm-up: every time is a median of at least this many
TOL_FLOOR = 0.02  # relative L2 error always allowed between two bf16 computations of the same arithmetic
TOL_FACTOR = 3.0  # times the framework's own bf16-vs-float32 error


def time_passes(run_pass, device, iters=ITERS, warmup=1):
    """(median seconds, every time, the last pass's output) of `iters` timed calls of run_pass() after
    `warmup` untimed ones; each call is timed from its start until the device is idle."""
    for _ in range(warmup):
        run_pass()
    sync(device)
    times, out = [], None
    for _ in range(iters):
        t0 = time.perf_counter()
        out = run_pass()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def rel_err(out, ref):
    """{"rel_l2": ||out - ref|| / ||ref||, "max_rel": max |out - ref| / max |ref|} in float64 on the CPU."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if out.shape != ref.shape:
        return {"rel_l2": float("inf"), "max_rel": float("inf"),
                "shape": f"{list(out.shape)} vs {list(ref.shape)}"}
    d = out - ref
    return {"rel_l2": (d.norm() / ref.norm().clamp_min(1e-30)).item(),
            "max_rel": (d.abs().max() / ref.abs().max().clamp_min(1e-30)).item()}


def tolerance(yardstick):
    """The relative L2 tolerance of the same-computation check, from the framework's own bf16 error."""
    return max(TOL_FLOOR, TOL_FACTOR * yardstick) if yardstick is not None and math.isfinite(yardstick) else TOL_FLOOR


def check_output(out, ref, tol, against):
    """The same-computation check of a row: {"against", "rel_l2", "max_rel", "tolerance", "ok"}."""
    e = rel_err(out, ref)
    ok = math.isfinite(e["rel_l2"]) and e["rel_l2"] <= tol
    return {"against": against, **{k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
                                   for k, v in e.items()}, "tolerance": round(tol, 6), "ok": bool(ok)}


def check_dtype(mine, expected, against="the peer"):
    """The dtype check of a row: it computed in `expected` ("bfloat16", ...): the peer's dtype for a
    pipeswap row, the dtype stored on disk for a peer row."""
    return {"row": mine, "expected": expected, "against": against, "ok": bool(mine and mine == expected)}


def status(row):
    """"ok", or "FAILED: why" from a row's error, dtype and output checks (failed rows fail their step)."""
    why = []
    if row.get("error"):
        why.append("the run failed (rc %s)" % row.get("rc"))
    d = row.get("dtype_check")
    if d and not d["ok"]:
        why.append(f"computed in {d['row']}, {d['against']} in {d['expected']}")
    c = row.get("check")
    if c and not c["ok"]:
        why.append(f"output differs from {c.get('against', 'the reference')}: relative error "
                   f"{c.get('rel_l2', c.get('max_rel_err'))} > {c.get('tolerance', 'the tolerance')}")
    i = row.get("identity_check")
    if i and not i["ok"]:
        why.append(f"output not identical to {i.get('against', 'the reference')}")
    if not c and not row.get("error") and row.get("check_required"):
        why.append("no output check")
    return "FAILED: " + "; ".join(why) if why else "ok"


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def params_dtype(module):
    """The compute dtype of a module: the dtype of most of its parameter bytes (the matmul weights).
    diffusers keeps a few small modules in float32 on purpose (_keep_in_fp32_modules: the time
    embedder, modulation tables and norms), as pipeswap computes those parts in float32 too."""
    by = {}
    for p in module.parameters():
        if p.is_floating_point():
            by[dtype_name(p.dtype)] = by.get(dtype_name(p.dtype), 0) + p.numel() * p.element_size()
    return max(by, key=by.get) if by else None


def peak_bytes(device):
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def load_llama(path, dtype, perturb=None, who="peers"):
    """transformers' LlamaForCausalLM (sdpa) from `path` in `dtype`, for inference; perturb "NAME[:FACTOR]"
    scales one parameter (by 1.5 without a factor) for the peers only: the bench's negative checks."""
    from transformers import LlamaForCausalLM
    m = LlamaForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    m.eval().requires_grad_(False)
    perturb_parameter(m, perturb, who)
    return m


def perturb_parameter(model, perturb, who):
    """--perturb "NAME[:FACTOR]": scales one parameter of the peer's model (by 1.5 without a factor), so that a
    pipeswap row on the unchanged files must FAIL (the bench's negative checks); nothing for an empty spec."""
    if not perturb:
        return
    name, _, factor = perturb.partition(":")
    with torch.no_grad():
        model.get_parameter(name).mul_(float(factor or 1.5))
    print(f"{who}: --perturb scaled {name} by {float(factor or 1.5)} for the peers only", flush=True)


def llama_ids(tokens, vocab):
    """The token ids of the Llama rows (one sequence), the same for pipeswap and transformers."""
    return [(i * 7919) % vocab for i in range(tokens)]


def logit_positions(tokens, count=256):
    """The positions whose logits the Llama check compares (every T/count-th and the last)."""
    return sorted(set(range(0, tokens, max(1, tokens // count))) | {tokens - 1})


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def row(workload, mode, tokens, seconds, bytes_moved, resident_seconds, bw_gbs, **extra):
    """One JSON row: seconds over the bound max(resident_seconds, bytes / pinned bandwidth), where
    resident_seconds is always the framework's own resident time at that length (never pipeswap's)."""
    transfer = bytes_moved / (bw_gbs * 1e9) if bw_gbs and bytes_moved else 0.0
    bound = max(resident_seconds or 0.0, transfer)
    r = {"workload": workload, "mode": mode, "tokens": tokens, "seconds": round(seconds, 6),
         "bytes_moved": int(bytes_moved), "resident_seconds": resident_seconds and round(resident_seconds, 6),
         "transfer_seconds": round(transfer, 6), "bound_seconds": round(bound, 6),
         "over_bound": round(seconds / bound, 4) if bound > 0 else None}
    r.update(extra)
    return r


def save_partial(rows, out):
    """The rows so far (a step cut short by its time limit keeps what it measured)."""
    if out:
        for r in rows:
            r.setdefault("status", status(r))
        with open(out + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(out + ".tmp", out)


def emit(rows, out):
    """Writes the rows; returns 1 (the step's exit status) when any row FAILED, else 0."""
    for r in rows:
        r.setdefault("status", status(r))
    text = json.dumps(rows, indent=1)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    for r in rows:
        print(json.dumps(r), flush=True)
    for r in rows:  # last, so that a log's tail names them
        if r["status"].startswith("FAILED"):
            print(f"{r['workload']} {r['mode']} {r['tokens']}: {r['status']}", flush=True)
    return 1 if any(r["status"].startswith("FAILED") for r in rows) else 0
