"""What the peer benchmarks share: the swapping methods users run today, applied to a list of blocks
(nn.Modules), the pinned host -> device bandwidth of this machine, timing and JSON rows.

The methods (each puts a stack's blocks on the device only around their own forward):
  resident    every block on the device: the compute floor.
  naive       block.to(device) before its forward, block.to("cpu") after: synchronous, pageable
              memory (what a plain block-swap loop does).
  accelerate  accelerate.cpu_offload on every block: Accelerate's hooks move each submodule's
              weights in for its forward and drop them after.
  prefetch    weights in page-locked host memory; while block i computes, a side stream copies
              block i+1 in (two blocks on the device at once), the compute stream waits on an event
              (LightX2V's block offload and diffusers' group offloading with use_stream=True work so).
Only the blocks swap; the parts around them (embeddings, head) stay on the device in every mode.
"""
import json
import math
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


def time_passes(run_pass, device, iters, warmup=1):
    """Median seconds of `iters` calls of run_pass() after `warmup` untimed ones."""
    for _ in range(warmup):
        run_pass()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        run_pass()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def check_same(out, ref, what, tol=1e-2):
    """--check: `out` (a mode's output) equals `ref` (the first mode's) within a relative `tol`;
    returns the reference to keep. Exits naming the mode otherwise."""
    out = out.float().cpu()
    if ref is None:
        return out
    err = ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
    if not math.isfinite(err) or err > tol:
        sys.exit(f"{what} differs from the first mode: relative error {err}")
    return ref


def row(workload, mode, tokens, seconds, bytes_moved, resident_seconds, bw_gbs, **extra):
    """One JSON row: seconds over the bound max(resident compute, bytes / pinned bandwidth)."""
    transfer = bytes_moved / (bw_gbs * 1e9) if bw_gbs and bytes_moved else 0.0
    bound = max(resident_seconds or 0.0, transfer)
    r = {"workload": workload, "mode": mode, "tokens": tokens, "seconds": round(seconds, 6),
         "bytes_moved": int(bytes_moved), "resident_seconds": resident_seconds and round(resident_seconds, 6),
         "transfer_seconds": round(transfer, 6), "bound_seconds": round(bound, 6),
         "over_bound": round(seconds / bound, 4) if bound > 0 else None}
    r.update(extra)
    return r


def emit(rows, out):
    text = json.dumps(rows, indent=1)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    for r in rows:
        print(json.dumps(r), flush=True)
