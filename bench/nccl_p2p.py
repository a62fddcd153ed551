#!/usr/bin/env python3
"""The reference of the activation-transfer row (docs/benchmarks.md, scenario 5): plain
torch.distributed send / recv between two ranks (NCCL on GPUs, gloo on the CPU) of the tensors one
pipeline stage hands the next, bytes per second after warm-up.

    python3 -m torch.distributed.run --standalone --nproc-per-node 2 bench/nccl_p2p.py \
        --tokens 1024,4096,16384 --out nccl_p2p.json
    torchrun --nproc-per-node 2 bench/nccl_p2p.py --device cpu --dim 64 --tokens 16,64 --iters 3

What travels, per length L (--what):
  activation  pipeswap's Wan stage activation, one send per tensor in its order: x [1, L, d] bf16,
              e [1, d] fp32, e0 [1, 6, d] fp32, context [1, 512, d] bf16 (the grid is a shape only and
              sends no bytes); the bytes the receiving stage's "recv" trace events carry.
  x           x [1, L, d] bf16 alone (the hidden states).
Two figures per row, both over the same tensors:
  one at a time  half the round trip of a ping-pong (rank 0 sends the set, rank 1 receives it and
                 sends it back), averaged over --iters after --warmup: one message from "sender's data
                 ready" to "receiver has it", launch latency included. This is how pipeline stages
                 exchange activations (one message, then compute), and what pipeswap_rows.py
                 transfer measures from a trace: the row's fraction uses it.
  streamed       --iters sets back to back from rank 0 to rank 1, then a one-element acknowledgement:
                 the link's throughput when messages queue behind each other.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_common as pc  # noqa: E402


def tensor_set(what, tokens, dim, device, text_len=512):
    if what == "x":
        shapes = [((1, tokens, dim), torch.bfloat16)]
    elif what == "activation":
        shapes = [((1, tokens, dim), torch.bfloat16), ((1, dim), torch.float32), ((1, 6, dim), torch.float32),
                  ((1, text_len, dim), torch.bfloat16)]
    else:
        sys.exit(f"unknown --what {what} (activation or x)")
    return [torch.ones(s, dtype=t, device=device) for s, t in shapes]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1024,4096,16384")
    ap.add_argument("--dim", type=int, default=5120)
    ap.add_argument("--what", default="activation,x")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if a.device == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    else:
        device = torch.device(a.device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    if world != 2:
        sys.exit("nccl_p2p.py runs on exactly 2 ranks (torchrun --nproc-per-node 2)")
    peer = 1 - rank
    ack = torch.zeros(1, device=device)
    rows = []

    def ping_pong(ts, n):
        for _ in range(n):
            if rank == 0:
                for t in ts:
                    dist.send(t, peer)
                for t in ts:
                    dist.recv(t, peer)
            else:
                for t in ts:
                    dist.recv(t, peer)
                for t in ts:
                    dist.send(t, peer)
        pc.sync(device)

    def stream(ts, n):
        for _ in range(n):
            for t in ts:
                (dist.send if rank == 0 else dist.recv)(t, peer)
        (dist.recv if rank == 0 else dist.send)(ack, peer)
        pc.sync(device)

    for what in a.what.split(","):
        for tokens in [int(t) for t in a.tokens.split(",")]:
            ts = tensor_set(what, tokens, a.dim, device)
            nbytes = sum(t.numel() * t.element_size() for t in ts)
            out = {}
            for name, fn, per in (("one_at_a_time", ping_pong, 2), ("streamed", stream, 1)):
                fn(ts, a.warmup)
                dist.barrier()
                pc.sync(device)
                t0 = time.perf_counter()
                fn(ts, a.iters)
                secs = (time.perf_counter() - t0) / (a.iters * per)
                out[name + "_seconds"] = round(secs, 9)
                out[name + "_gbs"] = round(nbytes / secs / 1e9, 3)
            rows.append({"workload": "wan", "mode": "nccl p2p" if backend == "nccl" else "gloo p2p", "what": what,
                         "tokens": tokens, "bytes": nbytes, "tensors": [list(t.shape) for t in ts],
                         "dtypes": [str(t.dtype) for t in ts], "iters": a.iters, "backend": backend,
                         "device": str(device), "torch": torch.__version__, **out})
    if rank == 0:
        pc.emit(rows, a.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
