// The umT5 tokenizer of a diffusers Wan repo (its tokenizer/ folder: spiece.model, tokenizer_config.json,
// special_tokens_map.json), giving the ids that diffusers' WanPipeline feeds its text encoder
// (pipeline_wan.py, _get_t5_prompt_embeds, diffusers 0.42.1, with transformers 5.17's T5Tokenizer):
//
//   prompt_clean      html.unescape twice, strip, every run of whitespace one space, strip (ftfy first,
//                     where it is installed: not mirrored, see below)
//   tokenizer(...)    the added tokens (<pad>, </s>, <unk>, <extra_id_N>) split out of the raw text and
//                     given their ids; every piece of text between them through SentencePiece (the model's
//                     own normaliser, a "▁" before each word, unigram segmentation); then </s>, truncation
//                     to max_length (its </s> kept last), padding with <pad> to max_length, and the
//                     attention mask (1 on real tokens, 0 on padding)
//
// What is mirrored exactly (tests/text_encoder_test.cpp checks ids against transformers itself):
// Python's html.unescape (numeric references with HTML5's replacements, every HTML5 named reference,
// the longest known prefix of an unknown name), the whitespace of str.strip and of the `regex` module's \s,
// transformers' added-token matching (leftmost-longest in the raw text, lstrip/rstrip where a token
// asks for it) and its ids, truncation and padding, and its lack of byte fallback: transformers 5 builds
// T5's unigram model without it, so a character the vocabulary lacks is <unk> (a run of them one <unk>),
// where SentencePiece spells it in <0xNN> byte pieces for a model trained with byte fallback (umT5's);
// each run of byte pieces becomes one <unk> here. transformers 4's fast tokenizer kept the bytes.
// Beside the fixtures, 40000 random strings of 0-30 characters from an alphabet of ASCII, German, CJK,
// emoji, special tokens, compatibility and odd whitespace characters gave transformers' ids exactly
// (the fixture's SentencePiece model, 2026-12-07).
//
// What is not mirrored:
//  - ftfy. diffusers runs ftfy.fix_text first when the ftfy package is installed (it is optional and not
//    a dependency of diffusers): it repairs mojibake, uncurls quotes, expands ligatures, widens
//    full-width characters and more, by heuristics of its own. pipeswap does not: a prompt that ftfy
//    would change can tokenize differently than under a diffusers with ftfy. umT5's own normaliser
//    (NFKC) already folds ligatures and full-width forms; curly quotes and mojibake stay as typed.
//  - tokenizer.json. transformers 5 rebuilds the T5 tokenizer from the vocabulary and the normaliser's
//    character map (it ignores the file's pre-tokeniser and normaliser rules); pipeswap reads the same
//    vocabulary and map from spiece.model. A repo whose tokenizer.json vocabulary differs from its
//    spiece.model is not detected.
//  - Added tokens marked "normalized" are matched in the raw text, as special tokens are (transformers
//    matches such non-special tokens after normalisation); umT5 has none.
//  - SentencePiece's whitespace rules stand in for transformers' whitespace split: they agree when the
//    model removes extra whitespace and adds a dummy prefix, as every T5-family model does.
//  - The tokenizers library's quirk with combining marks: its normaliser maps a whole grapheme cluster
//    (under 6 bytes) through the longest prefix the character map knows and drops the rest, so fullwidth
//    "Ａ" + U+0301 becomes "A" there and "Á" in SentencePiece. Text with combining marks after characters
//    that NFKC changes can tokenize differently: 591 of 40000 random strings did when U+0301 joined the
//    alphabet above.
//
// SentencePiece (Debian: libsentencepiece-dev) is optional at build time: without it
// (PIPESWAP_HAVE_SENTENCEPIECE undefined) T5Tokenizer::open throws a ConfigError saying what to install.
// With it, pipeswap loads it at run time through libpipeswap_sentencepiece.so (sentencepiece_shim.cpp
// says why it is not linked). clean_prompt and html_unescape work either way.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pipeswap::models {

// Python's html.unescape on UTF-8 text. Throws ConfigError when the text is not valid UTF-8.
std::string html_unescape(std::string_view text);
// diffusers' prompt_clean (pipeline_wan.py) without ftfy: html_unescape twice, strip (Python's str.strip),
// every run of Unicode White_Space one space (diffusers' `regex` module's \s), strip. Throws ConfigError when
// the text is not valid UTF-8.
std::string clean_prompt(std::string_view text);
// Python's str.isspace for one code point: what str.strip() strips.
bool is_python_space(char32_t c);
// The Unicode White_Space property: what the `regex` module's \s matches, and Rust's char::is_whitespace (the
// tokenizers library strips it around an added token that asks for it). Python's isspace adds U+001C..U+001F.
bool is_unicode_white_space(char32_t c);

// What the text encoder takes for a batch of prompts, as the WanPipeline's tokenizer call returns it.
struct PromptTokens {
  torch::Tensor input_ids;       // int64 [B, max_length], padded with the pad id
  torch::Tensor attention_mask;  // int64 [B, max_length]: 1 for real tokens, 0 for padding
  std::vector<int64_t> lengths;  // real tokens of each prompt, its </s> included
  std::vector<int64_t> dropped;  // tokens that truncation dropped from each prompt (0: none)
};

// Whether to apply the WanPipeline's prompt cleaning before tokenizing.
enum class PromptCleaning { kWanPipeline, kNone };

class T5Tokenizer {
 public:
  // Reads `dir` (a repo's tokenizer/ folder): spiece.model (required), tokenizer_config.json and
  // special_tokens_map.json (optional: the added tokens, their ids and flags; without them the T5 defaults:
  // <pad>, </s>, <unk> from the model, extra_ids <extra_id_N> after its vocabulary, highest N first).
  // Throws ConfigError when the folder or spiece.model is missing or unreadable, naming the repo layout to
  // use, or when pipeswap was built without SentencePiece.
  static std::shared_ptr<const T5Tokenizer> open(const std::string& dir);
  // False when pipeswap was built without SentencePiece (open then throws).
  static bool available();
  ~T5Tokenizer();
  T5Tokenizer(const T5Tokenizer&) = delete;
  T5Tokenizer& operator=(const T5Tokenizer&) = delete;

  // Ids of `text` as tokenizer(text, add_special_tokens=False) gives them: no cleaning, no </s>.
  std::vector<int64_t> encode(std::string_view text) const;
  // The WanPipeline's call: clean (unless kNone), encode, append </s>, truncate to max_length (keeping </s>
  // last; logs a warning naming the prompt and how many tokens were dropped), pad to max_length.
  PromptTokens tokenize(const std::vector<std::string>& prompts, int64_t max_length = 512,
                        PromptCleaning cleaning = PromptCleaning::kWanPipeline) const;

  int64_t pad_id() const;
  int64_t eos_id() const;
  // The SentencePiece vocabulary plus added tokens beyond it (what the embedding must cover).
  int64_t vocab_size() const;
  const std::string& dir() const;

 private:
  struct Impl;
  explicit T5Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pipeswap::models
