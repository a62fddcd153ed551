#!/usr/bin/env python3
"""fp8 fixtures (issue 17): checkpoints with float8 weights written by PyTorch, and references that
PyTorch dequantised, so that fp8_test checks pipeswap against torch's float8 types, not its own math.

From the committed tiny models (fixtures/wan-t2v-wan21, wan-t2v-diffusers, llama_bias) it writes, under
fixtures/fp8/:

  wan21-scaled-e4m3/     Wan2.1 layout, ComfyUI "scaled" style: every 2-D block weight (and head.head.weight)
                         as torch.float8_e4m3fn with a per-tensor "<m>.scale_weight" (fp32 [1]), a
                         "<m>.scale_input" (ignored) and the "scaled_fp8" marker
  diffusers-e4m3-channel/ diffusers layout, three shards + index: 2-D block weights e4m3fn with a
                         per-output-channel "<m>.weight_scale" (fp32 [out, 1])
  llama-e5m2/            HF Llama layout: q/k/v e5m2 with a per-tensor "weight_scale" (fp32 scalar []),
                         o/gate/up/down e5m2 with a per-channel "weight_scale" (fp32 [out])
  llama-e4m3-plain/      HF Llama layout, block matrices e4m3fn with no scale at all (ComfyUI's plain
                         *_fp8_e4m3fn files: scale 1)
  <each>-ref/            the same model in float32 with every fp8 weight dequantised by torch:
                         w.to(torch.float32) * scale  (what pipeswap must compute on the device)
  wan21-quantised-ref/   wan-t2v-wan21 with every 2-D block weight quantised per output channel as
                         --weight-dtype fp8 does (scale = amax(|row|) / 448, 1 for a zero row;
                         bytes = (w / scale).to(float8_e4m3fn)), dequantised back to float32
  llama-quantised-ref/   the same for llama_bias
  bad-*/                 wan21-scaled-e4m3 with one defect each: a missing scale, a scale of shape [2],
                         both spellings, a block-wise "weight_scale_inv", a scale on a float32 weight
  values.safetensors     every byte as e4m3fn and e5m2 in float32 (torch's decoding), floats with their
                         e4m3fn bytes (torch's rounding, edge cases included), and a [40, 24] float32
                         matrix with its per-channel quantisation (bytes, scale)

Run with the project's Python environment (torch >= 2.1, safetensors), from the repository root:

    $HOME/.cache/pipeswap/pyenv/bin/python tests/reference/make_fp8_fixtures.py
"""

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FIX = Path(__file__).resolve().parent / "fixtures"
OUT = FIX / "fp8"
E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2


def load(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def is_block_matrix(name, t):
    return (name.startswith("blocks.") or name.startswith("model.layers.")) and name.endswith(".weight") and t.dim() == 2


def quant_per_tensor(w, fmt):
    fmax = torch.finfo(fmt).max
    scale = (w.abs().amax().float() / fmax).reshape(1)
    return (w.float() / scale).to(fmt), scale


def quant_per_channel(w, fmt):
    fmax = torch.finfo(fmt).max
    amax = w.float().abs().amax(1)
    scale = torch.where(amax > 0, amax / fmax, torch.ones_like(amax))
    return (w.float() / scale[:, None]).to(fmt), scale


def deq(q, scale):
    v = q.to(torch.float32)
    if scale is None:
        return v
    if scale.numel() > 1:
        return v * scale.reshape(-1, *([1] * (v.dim() - 1))).float()
    return v * scale.float().reshape(())


def write_model(src_dir, dst, tensors_by_file, index=None):
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copy(src_dir / "config.json", dst / "config.json")
    for fname, tensors in tensors_by_file.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / fname), metadata={"format": "pt"})
    if index is not None:
        (dst / index[0]).write_text(json.dumps(index[1], indent=2))
    print("wrote", dst)


def convert(src, name, single_file, rule, extra=None):
    """rule(name, tensor) -> None (keep) or (fp8 tensor, scale or None, scale key or None)."""
    src_dir = FIX / src
    index_name = None
    if (src_dir / single_file).exists():
        files = {single_file: load(src_dir / single_file)}
    else:
        index_name = single_file + ".index.json"
        idx = json.loads((src_dir / index_name).read_text())
        files = {f: load(src_dir / f) for f in sorted(set(idx["weight_map"].values()))}
    out, ref = {}, {}
    for fname, tensors in files.items():
        o, r = {}, {}
        for k, t in tensors.items():
            got = rule(k, t)
            if got is None:
                o[k] = t
                r[k] = t
                continue
            q, scale, skey, extras = got
            o[k] = q
            if skey is not None:
                o[skey] = scale
            o.update(extras)
            r[k] = deq(q, scale)
        out[fname], ref[fname] = o, r
    if extra:
        extra(out)
    index = None
    if index_name:
        wm = {k: f for f, ts in out.items() for k in ts}
        index = (index_name, {"metadata": {"total_size": sum(t.numel() * t.element_size() for ts in out.values() for t in ts.values())}, "weight_map": dict(sorted(wm.items()))})
        ref_index = (index_name, {"metadata": {"total_size": 0}, "weight_map": dict(sorted({k: f for f, ts in ref.items() for k in ts}.items()))})
    else:
        ref_index = None
    write_model(src_dir, OUT / name, out, index)
    write_model(src_dir, OUT / (name + "-ref"), ref, ref_index)
    return out


def comfy_rule(k, t):
    if not (is_block_matrix(k, t) or k == "head.head.weight"):
        return None
    q, s = quant_per_tensor(t, E4M3)
    m = k[: -len(".weight")]
    return q, s, m + ".scale_weight", {m + ".scale_input": torch.ones(1)}


def diffusers_rule(k, t):
    if not is_block_matrix(k, t):
        return None
    q, s = quant_per_channel(t, E4M3)
    return q, s.reshape(-1, 1), k + "_scale", {}


def llama_e5m2_rule(k, t):
    if not is_block_matrix(k, t):
        return None
    if any(p in k for p in ("q_proj", "k_proj", "v_proj")):
        q, s = quant_per_tensor(t, E5M2)
        return q, s.reshape(()), k + "_scale", {}
    q, s = quant_per_channel(t, E5M2)
    return q, s, k + "_scale", {}


def llama_plain_rule(k, t):
    if not is_block_matrix(k, t):
        return None
    return t.to(E4M3), None, None, {}


def quantised_ref(src, name, single_file):
    src_dir = FIX / src
    tensors = load(src_dir / single_file)
    ref = {}
    for k, t in tensors.items():
        if is_block_matrix(k, t):
            q, s = quant_per_channel(t, E4M3)
            ref[k] = deq(q, s)
        else:
            ref[k] = t
    write_model(src_dir, OUT / name, {single_file: ref})


def bad_variants():
    base = OUT / "wan21-scaled-e4m3"
    fname = "diffusion_pytorch_model.safetensors"
    good = load(base / fname)

    def variant(name, edit):
        t = dict(good)
        edit(t)
        write_model(base, OUT / name, {fname: t})

    variant("bad-missing-scale", lambda t: t.pop("blocks.1.ffn.2.scale_weight"))
    variant("bad-scale-shape", lambda t: t.__setitem__("blocks.2.self_attn.q.scale_weight", torch.ones(2)))
    variant("bad-two-spellings", lambda t: t.__setitem__("blocks.0.ffn.0.weight_scale", torch.ones(1)))
    variant("bad-block-wise", lambda t: t.__setitem__("blocks.0.ffn.0.weight_scale_inv", torch.ones(1, 1)))
    variant("bad-scale-on-float", lambda t: t.__setitem__("blocks.0.self_attn.q.bias_scale", torch.ones(1)))


def values():
    b = torch.arange(256, dtype=torch.uint8)
    g = torch.Generator().manual_seed(17)
    edge = torch.tensor([0.0, -0.0, 448.0, -448.0, 448.5, 463.9, 464.0, 470.0, 479.9, 480.0, 1e6, float("inf"),
                         float("-inf"), float("nan"), 2.0 ** -6, 2.0 ** -7, 2.0 ** -9, 2.0 ** -10, 1.5 * 2.0 ** -10,
                         3 * 2.0 ** -11, 1.0625, 1.1875, -1.0625, 0.001953125 * 1.5], dtype=torch.float32)
    rnd = torch.cat([torch.randn(4000, generator=g) * s for s in (0.01, 1.0, 50.0, 300.0)])
    floats = torch.cat([edge, rnd])
    w = torch.randn(40, 24, generator=g) * torch.linspace(0.01, 3, 40)[:, None]
    w[7] = 0  # a zero row keeps scale 1
    wq, ws = quant_per_channel(w, E4M3)
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({
        "e4m3_values": b.view(E4M3).to(torch.float32),
        "e5m2_values": b.view(E5M2).to(torch.float32),
        "floats": floats,
        "floats_e4m3": floats.to(E4M3).view(torch.uint8),
        "matrix": w,
        "matrix_bytes": wq.view(torch.uint8),
        "matrix_scale": ws,
        "matrix_dequantised": deq(wq, ws),
    }, str(OUT / "values.safetensors"), metadata={"torch": torch.__version__})
    print("wrote", OUT / "values.safetensors")


def main():
    import argparse
    global FIX, OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(FIX),
                    help="the fixtures folder: its tiny models are read, fp8/ is written in it (check-live.sh)")
    FIX = Path(ap.parse_args().out)
    OUT = FIX / "fp8"
    wan_file = "diffusion_pytorch_model.safetensors"

    def marker(out):
        first = next(iter(out))
        out[first]["scaled_fp8"] = torch.zeros(0, dtype=E4M3)

    convert("wan-t2v-wan21", "wan21-scaled-e4m3", wan_file, comfy_rule, marker)
    convert("wan-t2v-diffusers", "diffusers-e4m3-channel", wan_file, diffusers_rule)
    convert("llama_bias", "llama-e5m2", "model.safetensors", llama_e5m2_rule)
    convert("llama_bias", "llama-e4m3-plain", "model.safetensors", llama_plain_rule)
    quantised_ref("wan-t2v-wan21", "wan21-quantised-ref", wan_file)
    quantised_ref("llama_bias", "llama-quantised-ref", "model.safetensors")
    bad_variants()
    values()


if __name__ == "__main__":
    main()
