#!/usr/bin/env python3
"""Reference fixtures for `pipeswap generate` on Llama-family checkpoints (tests/generate_text_test.cpp): tiny models
with the tiny tokenizers of make_tokenizer_fixtures.py beside them, and transformers' greedy `generate` in fp32.

Writes under tests/reference/fixtures/ (run make_tokenizer_fixtures.py first: the tokenizers are copied from there):

  gen-llama3/   Llama, 4 layers, GQA, llama3 RoPE, vocabulary 603 = tok-llama3's; tokenizer.json, tokenizer_config.json
  gen-qwen2/    Qwen2, 3 layers, tied embeddings, q/k/v biases, vocabulary 603 = tok-qwen2's
  gen-mistral/  Mistral, 3 layers, a sliding window of 6 tokens, vocabulary 500 = tok-spm's tokenizer.model

each a Hugging Face checkpoint (config.json, generation_config.json with the tokenizer's EOS, model.safetensors) plus
prompts.jsonl (the prompts, of 1 to about 45 tokens) and expected.json: per prompt the ids transformers' tokenizer
gives, the ids of model.generate(ids, max_new_tokens=32, do_sample=False) for that prompt alone (fp32, eager attention,
CPU; it stops at EOS as pipeswap does) and their decoded text (skip_special_tokens=True).

Run from the repository root with the Python of scripts/pyenv:

    python3 tests/reference/make_generate_text_fixtures.py [--out DIR]
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, GenerationConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import BASE, LLAMA, MISTRAL, QWEN2, init_weights, rope_kwargs  # noqa: E402

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's what we'll do!",
    "Grüße aus München 😀",
    "你好，世界。",
    "  two spaces\tand a tab\n",
    "def main():\n    x = 1234567 + 89\n    return x",
    "A",
]
NEW_TOKENS = 32

MODELS = [
    ("gen-llama3", LLAMA, "tok-llama3", dict(num_hidden_layers=4),
     dict(rope_theta=10000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
          original_max_position_embeddings=256)),
    ("gen-qwen2", QWEN2, "tok-qwen2", dict(num_hidden_layers=3, tie_word_embeddings=True), dict(rope_theta=1000000.0)),
    ("gen-mistral", MISTRAL, "tok-spm", dict(num_hidden_layers=3, sliding_window=6), dict(rope_theta=10000.0)),
]


def make(out, name, classes, tok_name, overrides, rope, seed):
    config_cls, model_cls = classes
    d = out / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for f in (out / tok_name).iterdir():
        if f.name != "cases.json":
            shutil.copy(f, d / f.name)
    tok = AutoTokenizer.from_pretrained(d)
    kwargs = dict(BASE)
    kwargs.update(overrides)
    kwargs["vocab_size"] = len(tok)
    kwargs.update(rope_kwargs(config_cls, rope))
    eos = tok.eos_token_id
    config = config_cls(**kwargs, attn_implementation="eager", eos_token_id=eos, bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    init_weights(model, seed)
    model.generation_config = GenerationConfig(eos_token_id=eos, bos_token_id=tok.bos_token_id, pad_token_id=eos)
    model.save_pretrained(str(d), safe_serialization=True)
    cases = []
    for text in PROMPTS:
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            outs = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                  do_sample=False, pad_token_id=eos)
        gen = outs[0, ids.shape[1]:].tolist()
        cases.append({"prompt": text, "prompt_ids": ids[0].tolist(), "generated_ids": gen,
                      "text": tok.decode(gen, skip_special_tokens=True)})
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": c["prompt"]}, ensure_ascii=False) + "\n"
                                             for c in cases))
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "max_new_tokens": NEW_TOKENS}
    (d / "expected.json").write_text(json.dumps({"meta": meta, "cases": cases}, ensure_ascii=False, indent=1) + "\n")
    size = sum(p.stat().st_size for p in d.iterdir())
    print(f"wrote {d} ({size / 1e6:.2f} MB, vocab {len(tok)}, eos {eos}): "
          f"{[len(c['generated_ids']) for c in cases]} tokens generated")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "fixtures")
    ap.add_argument("--seed", type=int, default=4321)
    a = ap.parse_args()
    torch.set_num_threads(1)
    for i, (name, classes, tok_name, overrides, rope) in enumerate(MODELS):
        make(a.out, name, classes, tok_name, overrides, rope, a.seed + i)


if __name__ == "__main__":
    main()
