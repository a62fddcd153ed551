#!/usr/bin/env python3
"""Reference fixtures for tests/models_test.cpp: tiny Llama-family models run by Hugging Face transformers.

For each fixture, builds a tiny model from a fixed seed (random weights, biases and norm weights included, so
no term of the forward pass is trivially zero or one), in fp32 with eager attention on the CPU, and writes:

    tests/reference/fixtures/<name>/config.json, model.safetensors (or shards + model.safetensors.index.json)
    tests/reference/fixtures/<name>/expected.safetensors  {"input_ids": int64 [2, 12], "logits": float32 [2, 12, V]}

The C++ test loads each directory as a checkpoint, runs the same ids and compares logits (max abs error 1e-4).

Run from the repository root on a machine with torch, transformers (4.4x or 5.x) and safetensors:

    python3 tests/reference/make_fixtures.py [--out DIR] [--seed N]

--out writes elsewhere (tests/reference/check-live.sh does, to compare with the committed fixtures and to make
fresh ones); --seed N changes every model's weights and ids (default 1234, the committed fixtures' seed).
Deterministic: the same versions write the same bytes (fixed seeds, one CPU thread).
"""

import argparse
import inspect
import json
import shutil
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

OUT = Path(__file__).resolve().parent / "fixtures"
VOCAB = 256
BATCH, TOKENS = 2, 12

# hidden 64, 4 heads of 16, 2 kv heads (GQA), ffn 128: about 0.7 MB per 4-layer model in fp32.
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)

LLAMA = (LlamaConfig, LlamaForCausalLM)
QWEN2 = (Qwen2Config, Qwen2ForCausalLM)
MISTRAL = (MistralConfig, MistralForCausalLM)

# name, classes, config overrides, RoPE (rope_theta + the rope_scaling / rope_parameters entries), shards
FIXTURES = [
    # Llama 3.1-style RoPE; a short pretraining length so that kept, smoothed and divided frequencies all occur.
    ("llama_llama3", LLAMA, {},
     dict(rope_theta=10000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
          original_max_position_embeddings=256), 1),
    ("llama_bias", LLAMA, dict(attention_bias=True, mlp_bias=True, rms_norm_eps=1e-6),
     dict(rope_theta=10000.0), 1),
    ("qwen2_tied", QWEN2, dict(tie_word_embeddings=True), dict(rope_theta=1000000.0), 1),
    # head_dim 32 is not hidden / heads (16); the window is longer than the sequence.
    ("mistral_head_dim", MISTRAL, dict(head_dim=32, sliding_window=4096, num_hidden_layers=3),
     dict(rope_theta=1000000.0), 1),
    # A window of 5 over 12 tokens: the banded mask matters.
    ("mistral_sliding", MISTRAL, dict(sliding_window=5, num_hidden_layers=2), dict(rope_theta=10000.0), 1),
    ("llama_linear", LLAMA, dict(num_hidden_layers=2), dict(rope_theta=10000.0, rope_type="linear", factor=4.0), 1),
    # max_position_embeddings 8 < 12 tokens: the dynamic NTK base is rescaled for this sequence.
    ("llama_dynamic", LLAMA, dict(num_hidden_layers=2, max_position_embeddings=8),
     dict(rope_theta=10000.0, rope_type="dynamic", factor=2.0), 1),
    ("llama_yarn", LLAMA, dict(num_hidden_layers=2, max_position_embeddings=256),
     dict(rope_theta=10000.0, rope_type="yarn", factor=4.0, original_max_position_embeddings=64), 1),
    # A tied Qwen2 model saved in two shards with model.safetensors.index.json (the lazy shard path).
    ("qwen2_sharded", QWEN2, dict(tie_word_embeddings=True), dict(rope_theta=1000000.0), 2),
]


def rope_kwargs(config_cls, rope):
    """transformers 5 takes `rope_parameters` (rope_theta inside); 4.x takes rope_theta + rope_scaling."""
    rope = dict(rope)
    theta = rope.pop("rope_theta")
    if "rope_parameters" in inspect.signature(config_cls.__init__).parameters:
        return {"rope_parameters": {"rope_type": rope.pop("rope_type", "default"), "rope_theta": theta, **rope}}
    return {"rope_theta": theta, "rope_scaling": rope or None}


def init_weights(model, seed):
    """Every parameter random: norms around 1, biases and matrices scaled so attention is neither uniform nor
    one-hot and the logits are O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied embedding appears once
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("embed_tokens.weight"):
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.15 * noise)


def save(model, path, shards):
    kwargs = {}
    params = inspect.signature(model.save_pretrained).parameters
    if "safe_serialization" in params:
        kwargs["safe_serialization"] = True
    if shards > 1:
        # Unique parameter bytes, split so that the greedy sharder makes `shards` files.
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        kwargs["max_shard_size"] = int(total / shards * 1.2)
    model.save_pretrained(str(path), **kwargs)
    index = path / "model.safetensors.index.json"
    if shards > 1:
        files = set(json.loads(index.read_text())["weight_map"].values()) if index.exists() else set()
        if len(files) < 2:
            sys.exit(f"{path}: expected a sharded checkpoint, got {sorted(p.name for p in path.iterdir())}")
    elif index.exists():
        sys.exit(f"{path}: unexpectedly sharded")


def make(out, name, classes, overrides, rope, shards, seed):
    config_cls, model_cls = classes
    kwargs = dict(BASE)
    kwargs.update(overrides)
    kwargs.update(rope_kwargs(config_cls, rope))
    config = config_cls(**kwargs, attn_implementation="eager")
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    impl = getattr(model.config, "_attn_implementation", "eager")
    if impl != "eager":
        sys.exit(f"{name}: attention implementation is {impl!r}, not 'eager'")
    init_weights(model, seed)

    ids = torch.randint(0, VOCAB, (BATCH, TOKENS), generator=torch.Generator().manual_seed(seed + 1000))
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits.float()

    path = out / name
    save(model, path, shards)
    tensors = {"input_ids": ids.to(torch.int64).contiguous(), "logits": logits.contiguous()}
    if torch.cuda.is_available():
        # transformers' own bf16 run on the GPU: the reference for pipeswap's bf16 logits there.
        model = model.to("cuda", torch.bfloat16)
        with torch.no_grad():
            tensors["logits_bf16"] = model(input_ids=ids.cuda(), use_cache=False).logits.float().cpu().contiguous()
    # One key: safetensors writes metadata in hash-map order, so several keys would make the bytes vary.
    metadata = {"generated_by": f"transformers {transformers.__version__}, torch {torch.__version__}"}
    save_file(tensors, str(path / "expected.safetensors"), metadata=metadata)
    files = sorted(p for p in path.iterdir() if p.is_file())
    size = sum(p.stat().st_size for p in files)
    print(f"wrote {path}/ ({size / 1e6:.2f} MB): "
          f"{', '.join(p.name for p in files)}; logits {tuple(logits.shape)}, max |logit| {logits.abs().max():.3f}")
    if size > 1_000_000:
        sys.exit(f"{name}: fixture is {size} bytes; keep fixtures under 1 MB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="directory to (re)write (default: the committed fixtures)")
    ap.add_argument("--seed", type=int, default=1234, help="seed of the first fixture (the others count up)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    for i, (name, classes, overrides, rope, shards) in enumerate(FIXTURES):
        make(a.out, name, classes, overrides, rope, shards, seed=a.seed + i)


if __name__ == "__main__":
    main()
