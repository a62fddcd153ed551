#!/usr/bin/env python3
"""Reference fixtures for the LLM tokenizers (tests/text_tokenizer_test.cpp): tiny tokenizers trained here, and the
ids and decoded text that transformers gives for a multilingual, emoji and whitespace corpus.

Writes three fixture directories under tests/reference/fixtures/:

  tok-llama3/   tokenizer.json + tokenizer_config.json: a byte-level BPE of 600 tokens trained with the `tokenizers`
                package, Llama 3's pipeline (Split on Llama 3's regex, isolated; ByteLevel without its own regex;
                ignore_merges; <|begin_of_text|> prepended by a TemplateProcessing; ByteLevel decoder) and
                <|begin_of_text|>, <|end_of_text|>, <|eot_id|> as special tokens after the vocabulary
  tok-qwen2/    the same for Qwen2's pipeline: NFC normaliser, Qwen2's regex (single digits), no BOS, <|endoftext|>,
                <|im_start|>, <|im_end|>
  tok-spm/      tokenizer.model only (+ tokenizer_config.json): a SentencePiece BPE of 500 pieces with byte fallback,
                <unk> 0, <s> 1, </s> 2, as Llama 2's and Mistral's; transformers 5 reads it as LlamaTokenizer
                (legacy False: a "▁" before the first word only)

Each holds cases.json: [{"text", "ids" (tokenizer(text) with special tokens), "decoded" (decode(ids)),
"decoded_skip" (decode(ids, skip_special_tokens=True))}] for the fixed corpus below plus 300 seeded random strings.

Run from the repository root with transformers, tokenizers and sentencepiece (the Python of scripts/pyenv):

    python3 tests/reference/make_tokenizer_fixtures.py [--out DIR]
"""

import argparse
import io
import json
import os
import random
import shutil
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "3")

import sentencepiece as spm  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")

TRAIN = [
    "The quick brown fox jumps over the lazy dog. It's what we'll do, isn't it? I'd say they've 12345 apples.",
    "Grüße aus München! Ça va très bien, merci. Fußgängerübergänge sind schön.",
    "你好，世界。今日は良い天気ですね。오늘 날씨가 좋네요.",
    "Привет, мир! Как дела? Всё хорошо.",
    "مرحبا بالعالم. שלום עולם. नमस्ते दुनिया",
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧 ❤️ and symbols ©®™ ∑∫√ → ←",
    "def main():\n    x = 1234567 + 89\n    return x  # comment\n\n\nif True:\n\tpass\r\n",
    "  leading spaces, trailing spaces   \n\n  \t mixed\twhitespace\u00a0nbsp\u3000ideographic  ",
]

CORPUS = [
    "Hello world",
    "Hello world!",
    " leading space",
    "trailing space ",
    "  two leading, three trailing   ",
    "",
    " ",
    "\n",
    "\n\n\n",
    "a\n\nb  c\t\td",
    "line one\r\nline two\r\n",
    "It's we'll I'd they've YOU'RE SHE'S",
    "Numbers: 1 12 123 1234 12345 1234567890 3.14159",
    "Grüße aus München! Ça va?",
    "Fußgängerübergänge",
    "你好，世界。今日は良い天気ですね。",
    "오늘 날씨가 좋네요",
    "Привет, мир!",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "😀🎉👍🏽 👨‍👩‍👧 ❤️",
    "emoji😀inside words🎉end",
    "e\u0301 versus \u00e9 (NFD and NFC)",
    "A\u030a\u212b\u00c5 ﬁ ligature ＡＢＣ full width",
    "tabs\tand\u00a0nbsp\u2003em space\u3000ideographic",
    "def f(x):\n    return x ** 2  # square\n",
    "<|begin_of_text|>special in text<|end_of_text|>",
    "text <|eot_id|> more",
    "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "<s>x</s> and <unk>",
    "<|not_a_token|> <|begin_of_text",
    "zzzz qqqq xxxx jjjj",  # rare letters
    "\u0000\u0001 control \u007f chars",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝟙𝟚𝟛",
    "a" * 50,
    " ".join(["word"] * 30),
]

ALPHABET = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?'\"-_()[]{}:;/\\@#$%^&*+=<>|~`")
            + list("äöüßéèçñøå") + list("你好世界日本語한국어") + list("привет") + list("مرحبا") + ["😀", "🎉", "👍🏽", "❤️", "\u200d"]
            + [" ", " ", " ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2003", "\u0301", "\u00e9", "e\u0301"]
            + ["'s", "'ll", "'T", "<|eot_id|>", "<|im_end|>", "<s>", "</s>", "  ", "\n\n"])


def random_cases(seed, n):
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 30))) for _ in range(n)]


def train_bytelevel(regex, nfc, specials, bos):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAIN * 3, trainer=trainer)
    tok.add_special_tokens(specials)
    if bos:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                          special_tokens=[(bos, bos_id)]),
        ])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def write_bytelevel(out, name, regex, nfc, specials, bos, eos):
    d = out / name
    d.mkdir(parents=True)
    tok = train_bytelevel(regex, nfc, specials, bos)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
    fast.save_pretrained(d)
    for extra in ("special_tokens_map.json", "chat_template.jinja"):
        (d / extra).unlink(missing_ok=True)
    return d


def write_spm(out):
    d = out / "tok-spm"
    d.mkdir(parents=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAIN * 3), model_writer=model, vocab_size=500, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, minloglevel=3)
    (d / "tokenizer.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "add_eos_token": False, "legacy": False}
    (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return d


def write_cases(d, texts):
    tok = AutoTokenizer.from_pretrained(d)
    cases = []
    for text in texts:
        ids = tok(text)["input_ids"]
        cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids),
                      "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    meta = {"transformers": transformers.__version__, "class": type(tok).__name__}
    (d / "cases.json").write_text(json.dumps({"meta": meta, "cases": cases}, ensure_ascii=False, indent=0) + "\n")
    print(f"wrote {d} ({type(tok).__name__}, {len(cases)} cases)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "fixtures"))
    args = ap.parse_args()
    out = Path(args.out)
    for name in ("tok-llama3", "tok-qwen2", "tok-spm"):
        shutil.rmtree(out / name, ignore_errors=True)
    texts = CORPUS + random_cases(0, 300)
    d = write_bytelevel(out, "tok-llama3", LLAMA3_REGEX, False, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
                        "<|begin_of_text|>", "<|end_of_text|>")
    write_cases(d, texts)
    d = write_bytelevel(out, "tok-qwen2", QWEN2_REGEX, True, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None,
                        "<|endoftext|>")
    write_cases(d, texts)
    write_cases(write_spm(out), texts)


if __name__ == "__main__":
    main()
