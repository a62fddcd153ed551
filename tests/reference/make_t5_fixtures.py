#!/usr/bin/env python3
"""Reference fixtures for tests/text_encoder_test.cpp: a tiny umT5 tokenizer and text encoder, as a diffusers Wan
repo has them in tokenizer/ and text_encoder/, run by transformers and diffusers' WanPipeline.

Writes two fixture directories:

  umt5-tokenizer/     spiece.model: a unigram SentencePiece model of 400 pieces (256 of them byte fallback's
                      <0xNN>) trained here with the `sentencepiece` package on a seeded corpus of English, German,
                      Chinese and Wan's negative prompt; pad 0, </s> 1, <unk> 2, no <s>, nmt_nfkc normalisation, as
                      umT5's; and the files a Wan repo has beside it for 12 extra ids (tokenizer_config.json and
                      special_tokens_map.json as transformers 4 wrote them, tokenizer.json as transformers 5 does)
    prompts.json      the prompts (plain, unicode, empty, longer than 512 tokens, HTML entities and odd whitespace,
                      special tokens in the text, Wan's default negative prompt); max_length 512; clean_cases: texts
                      and diffusers' prompt_clean of them (every HTML5 entity name, numeric references, every Python
                      whitespace character); whitespace: the code points of str.isspace (what strip() strips)
                      and of the `regex` module's \\s (what diffusers' whitespace_clean collapses); random_cases:
                      500 random strings and transformers' ids for each (no cleaning, no </s>)
    tokens.safetensors  input_ids, attention_mask (int64 [7, 512]) from WanPipeline's tokenizer call

  umt5-text-encoder/  config.json, model-0000N-of-00002.safetensors + model.safetensors.index.json: a random
                      UMT5EncoderModel (d_model 16, 4 heads of 4, d_ff 24, 2 layers, 8 buckets, max distance 20,
                      vocabulary 416 = 400 pieces + 12 extra ids + 4 unused), saved by save_pretrained
    encoder.safetensors   input_ids, attention_mask (the tokens above), output: last_hidden_state in fp32 on the CPU;
                      buckets_tiny / buckets_umt5: transformers' relative position bucket of every relative position
                      -511..511 for this config and for umT5-XXL's (32 buckets, max distance 128); the metadata holds
                      bf16_error: transformers' own bf16 run against its fp32 one, max abs difference over the
                      largest magnitude
    prompt_embeds.safetensors  output: diffusers' WanPipeline._get_t5_prompt_embeds for the prompts, fp32 (the
                      encoder output trimmed to each prompt's length and padded with zeros to 512)

ftfy is turned off in diffusers' prompt cleaning (it is optional there; pipeswap does not mirror it).

Run from the repository root with torch, transformers, diffusers, sentencepiece, protobuf and safetensors (the Python
of scripts/pyenv):

    python3 tests/reference/make_t5_fixtures.py [--out DIR] [--seed N]

--out writes elsewhere; --seed N changes the corpus, the weights (N) and nothing else (default 0, the committed
fixtures' seed). Deterministic: the same versions write the same tensors and JSON (fixed seeds, one CPU thread; the
order of the safetensors metadata varies).
"""

import argparse
import html.entities
import io
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file

import diffusers
import diffusers.pipelines.wan.pipeline_wan as pipeline_wan
import transformers
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel
from transformers.models.umt5.modeling_umt5 import UMT5Attention

OUT = Path(__file__).resolve().parent / "fixtures"
MAX_LENGTH = 512
PIECES = 400
EXTRA_IDS = 12

# Wan2.1's default negative prompt (its generate.py / diffusers' examples).
NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
            "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
            "三条腿，背景人很多，倒着走")
WORDS = ("a cat walks on the grass in the sun realistic style slow motion close up of two dogs running along "
         "beach waves at sunset camera pans left city street night rain neon lights reflections cinematic shot "
         "ein Hund läuft am Strand entlang die Sonne geht unter über dem Meer schöne große Straße "
         "一只猫 在草地上 走路 阳光 海边 日落 城市 夜晚 下雨 电影 镜头").split()


def corpus(rng):
    lines = [NEGATIVE, "fine ﬁne ｆｕｌｌｗｉｄｔｈ text 123 456 7890 A B C . , ! ? ' \" ( ) - :"]
    for _ in range(600):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))))
    return lines


def prompts():
    long_prompt = " ".join(["Ein Hund läuft am Strand entlang, cinematic slow motion, 夕日 und Wellen."] * 40)
    return [
        "A cat walks on the grass, realistic style.",
        "Ein Hund läuft am Strand 🐕 — 夕日, ﬁne ｆｕｌｌｗｉｄｔｈ “quotes” ½ 😀🐕x",
        "",
        long_prompt,
        "  Fish &amp;amp; chips &lt;b&gt;&#x1F600;&notit; &#128;&#0;&#xD800;\t\n tabs   and\u3000spaces\u00a0 &bogus; ",
        "a <extra_id_0> b</s><pad>c <unk> <extra_id_11>d",
        NEGATIVE,
    ]


def clean_cases():
    names = sorted(html.entities.html5)
    cases = [
        " ".join("&" + n for n in names[:1200]),
        " ".join("&" + n for n in names[1200:]),
        "&#65;&#x42;&#X43;&#0068 &#x45 &#;&#x;&#xg; &#9999999999999999999; &#x110000; &#128;&#159;&#13;&#11;&#xFDD0;"
        "&#x1FFFE;&#8203;",
        "&amp;amp;lt; &ampx &notin &noti &notit; &a; &; & &&amp; &#38;#65; " + "&" + "x" * 40 + ";",
        "\u00a0lead and trail\u2029 " + "".join("a" + chr(c) for c in range(0x110000) if chr(c).isspace()) + "z ",
        "\x1c\x1d a\x1c b \x1f\x1e",
        "ＡＢＣ ﬁ “curly” ‘single’ — Ã© mojibake",
    ]
    return [{"raw": c, "clean": pipeline_wan.prompt_clean(c)} for c in cases]


def random_cases(rng, tokenizer, count=500):
    """Random strings of 0-30 characters over ASCII, German, CJK, emoji, special tokens (whole and cut),
    compatibility characters (NFKC changes them) and odd whitespace, and transformers' ids for each
    (tokenizer(text, add_special_tokens=False): no cleaning, no </s>). No combining marks: tokenizer.h says
    where SentencePiece and the tokenizers library part there."""
    alphabet = (list("abcdefghijklmnop ABC  ..,!?'\"-") + list("äöüß夕日海边猫城市🐕😀–—“”½ﬁＡｆ¨´‗\u200b\ufeff\u00ad\u3000"
                "\u00a0\t\n") + ["<extra_id_0>", "</s>", "<pad>", "<unk>", " <extra_id_3> ", "<extra_id_", "</s"])
    cases = []
    for _ in range(count):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        cases.append({"text": text, "ids": tokenizer(text, add_special_tokens=False).input_ids})
    return cases


def train_tokenizer(rng, out):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(rng)), model_writer=model, vocab_size=PIECES, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        normalization_rule_name="nmt_nfkc", character_coverage=0.9995, num_threads=1, minloglevel=2,
        shuffle_input_sentence=False, hard_vocab_limit=True, byte_fallback=True)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "spiece.model").write_bytes(model.getvalue())
        # What the Wan repo's tokenizer_config.json says (umT5: extra_ids 300, model_max_length 512).
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "T5Tokenizer", "extra_ids": EXTRA_IDS, "model_max_length": MAX_LENGTH,
             "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "legacy": True}))
        converted = AutoTokenizer.from_pretrained(tmp)
        converted.save_pretrained(out)  # tokenizer.json
    # The Wan repo's tokenizer_config.json and special_tokens_map.json were written by transformers 4: the added
    # tokens with their ids and flags in "added_tokens_decoder" (transformers 5 writes neither). Its spiece.model
    # lies beside tokenizer.json; pipeswap reads it.
    extra = [f"<extra_id_{i}>" for i in range(EXTRA_IDS)]
    added = {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                      "single_word": t.single_word, "special": t.special}
             for i, t in sorted(converted.added_tokens_decoder.items())}
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": added, "additional_special_tokens": extra, "clean_up_tokenization_spaces": True,
         "eos_token": "</s>", "extra_ids": EXTRA_IDS, "legacy": True, "model_max_length": MAX_LENGTH,
         "pad_token": "<pad>", "sp_model_kwargs": {}, "tokenizer_class": "T5Tokenizer", "unk_token": "<unk>"},
        indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"additional_special_tokens": extra, "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
        indent=2) + "\n")
    (out / "spiece.model").write_bytes(model.getvalue())
    # The reference: the folder as diffusers loads it (AutoTokenizer on tokenizer/), which must agree with the
    # tokenizer converted from spiece.model alone.
    tokenizer = AutoTokenizer.from_pretrained(out)
    for p in prompts():
        if tokenizer(p).input_ids != converted(p).input_ids:
            sys.exit(f"make_t5_fixtures: the saved tokenizer and the one converted from spiece.model differ on {p!r}")
    return tokenizer


def tiny_encoder(seed):
    torch.manual_seed(seed)
    config = UMT5Config(vocab_size=PIECES + EXTRA_IDS + 4, d_model=16, d_kv=4, num_heads=4, d_ff=24, num_layers=2,
                        relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
                        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, is_encoder_decoder=False)
    model = UMT5EncoderModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def buckets(num_buckets, max_distance):
    attn = UMT5Attention(UMT5Config(relative_attention_num_buckets=num_buckets,
                                    relative_attention_max_distance=max_distance), has_relative_attention_bias=True)
    return attn._relative_position_bucket(torch.arange(-(MAX_LENGTH - 1), MAX_LENGTH)).to(torch.int64)


def prompt_embeds(tokenizer, encoder, texts):
    """diffusers' own WanPipeline._get_t5_prompt_embeds, on a pipeline of the two parts it uses."""
    pipe = diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=None, scheduler=None)
    with torch.no_grad():
        return pipe._get_t5_prompt_embeds(texts, max_sequence_length=MAX_LENGTH, device=torch.device("cpu"),
                                          dtype=torch.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="directory to write into (default: the committed fixtures)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the corpus and the weights")
    a = ap.parse_args()
    torch.set_num_threads(1)
    # diffusers runs ftfy.fix_text when ftfy is installed; pipeswap does not mirror it (tokenizer.h).
    pipeline_wan.is_ftfy_available = lambda: False
    meta = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
            "diffusers": diffusers.__version__, "sentencepiece": spm.__version__, "seed": str(a.seed),
            "ftfy": "off"}

    tok_dir, enc_dir = a.out / "umt5-tokenizer", a.out / "umt5-text-encoder"
    for d in (tok_dir, enc_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    tokenizer = train_tokenizer(random.Random(a.seed), tok_dir)
    texts = prompts()
    cleaned = [pipeline_wan.prompt_clean(t) for t in texts]
    batch = tokenizer(cleaned, padding="max_length", max_length=MAX_LENGTH, truncation=True, add_special_tokens=True,
                      return_attention_mask=True, return_tensors="pt")
    ids, mask = batch.input_ids.contiguous(), batch.attention_mask.contiguous()
    full = len(tokenizer(cleaned[3]).input_ids)
    if full <= MAX_LENGTH:
        sys.exit(f"make_t5_fixtures: the long prompt has only {full} tokens; it must exceed {MAX_LENGTH}")
    # str.strip() strips isspace; whitespace_clean collapses the `regex` module's \s (diffusers imports regex).
    ws = {"isspace": [c for c in range(0x110000) if chr(c).isspace()],
          "regex_s": [c for c in range(0x110000) if pipeline_wan.re.match(r"\s", chr(c))]}
    (tok_dir / "prompts.json").write_text(json.dumps(
        {"max_length": MAX_LENGTH, "prompts": texts, "cleaned": cleaned, "long_prompt_tokens": full,
         "clean_cases": clean_cases(), "whitespace": ws,
         "random_cases": random_cases(random.Random(a.seed + 1), tokenizer)},
        ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    save_file({"input_ids": ids, "attention_mask": mask}, str(tok_dir / "tokens.safetensors"), metadata=meta)

    encoder = tiny_encoder(a.seed)
    encoder.save_pretrained(enc_dir, max_shard_size="20KB")
    reloaded = UMT5EncoderModel.from_pretrained(enc_dir).eval()
    with torch.no_grad():
        out = reloaded(input_ids=ids, attention_mask=mask).last_hidden_state.float().contiguous()
        bf16 = UMT5EncoderModel.from_pretrained(enc_dir, dtype=torch.bfloat16).eval()
        wo = bf16.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype
        out_bf16 = bf16(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    bf16_error = float((out_bf16 - out).abs().max() / out.abs().max())
    save_file({"input_ids": ids, "attention_mask": mask, "output": out,
               "buckets_tiny": buckets(8, 20), "buckets_umt5": buckets(32, 128)},
              str(enc_dir / "encoder.safetensors"),
              metadata=dict(meta, bf16_error=f"{bf16_error:.6g}", bf16_wo_dtype=str(wo),
                            attn_implementation=str(reloaded.config._attn_implementation)))
    embeds = prompt_embeds(tokenizer, reloaded, texts).float().contiguous()
    save_file({"output": embeds}, str(enc_dir / "prompt_embeds.safetensors"), metadata=meta)

    for d in (tok_dir, enc_dir):
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{d.name}: {size} bytes", file=sys.stderr)
        if size > 2_000_000:
            sys.exit(f"make_t5_fixtures: {d} is {size} bytes, over the 2 MB fixtures may take")
    print(f"long prompt: {full} tokens; bf16 error of transformers: {bf16_error:.3g} (wo in {wo}); "
          f"attention: {reloaded.config._attn_implementation}", file=sys.stderr)


if __name__ == "__main__":
    main()
