#!/usr/bin/env python3
"""Compares freshly made reference fixtures with the committed ones, file by file.

    python3 tests/reference/compare_fixtures.py COMMITTED_DIR FRESH_DIR

Both directories hold fixture directories (as make_fixtures.py / make_wan_fixtures.py write them). For each
committed fixture: the same files; config.json files equal as JSON; every tensor of the checkpoint files and
every input tensor bit-identical (fixed seeds, CPU generator); the reference library's outputs (`logits`,
and every tensor whose name starts with `output`) within 1e-5 of the committed ones relative to their largest
magnitude (the libraries may have been a different version or run on another CPU). Tensors only in the committed file (transformers' bf16 logits, made
on a GPU) are left out. Exits 1 naming the first difference.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

OUTPUTS = {"logits", "output"}
REL = 1e-5



def same_bits(x, y):
    """Bit for bit, NaNs included (torch.equal says NaN != NaN)."""
    if x.is_floating_point() and x.element_size() in (2, 4, 8):
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
        return x.contiguous().view(view).equal(y.contiguous().view(view))
    return x.equal(y)

def fail(msg):
    sys.exit(f"compare_fixtures: {msg}")


def main():
    committed, fresh = (Path(p) for p in sys.argv[1:3])
    dirs = sorted(d for d in committed.iterdir() if d.is_dir())
    if not dirs:
        fail(f"no fixtures under {committed}")
    worst = 0.0
    for d in dirs:
        other = fresh / d.name
        names = sorted(p.name for p in d.iterdir())
        if not other.is_dir() or sorted(p.name for p in other.iterdir()) != names:
            fail(f"{d.name}: files differ: committed {names}, fresh "
                 f"{sorted(p.name for p in other.iterdir()) if other.is_dir() else 'missing'}")
        for name in names:
            a, b = d / name, other / name
            if name.endswith(".json"):
                if json.loads(a.read_text()) != json.loads(b.read_text()):
                    fail(f"{d.name}/{name}: JSON differs")
                continue
            if not name.endswith(".safetensors"):
                continue
            ta, tb = load_file(str(a)), load_file(str(b))
            for key, x in ta.items():
                if key not in tb:
                    if key.endswith("_bf16"):
                        continue
                    fail(f"{d.name}/{name}: tensor {key} missing from the fresh file")
                y = tb[key]
                if x.shape != y.shape or x.dtype != y.dtype:
                    fail(f"{d.name}/{name}: {key} is {x.dtype} {list(x.shape)}, fresh {y.dtype} {list(y.shape)}")
                if key in OUTPUTS or key.startswith("output"):
                    scale = float(x.abs().max()) or 1.0
                    err = float((x.double() - y.double()).abs().max()) / scale
                    worst = max(worst, err)
                    if err > REL:
                        fail(f"{d.name}/{name}: {key} differs by {err:.3g} of its largest magnitude (bound {REL})")
                elif not same_bits(x, y):
                    fail(f"{d.name}/{name}: {key} is not bit-identical")
            if set(tb) - set(ta):
                fail(f"{d.name}/{name}: fresh file has tensors the committed one lacks: {sorted(set(tb) - set(ta))}")
    print(f"compare_fixtures: {len(dirs)} fixtures match (weights and inputs bit-identical, "
          f"outputs within {worst:.2g} relative)")


if __name__ == "__main__":
    main()
