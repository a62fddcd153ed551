// The tokenizer of a Llama-family checkpoint (Llama 2/3, Qwen2, Mistral), read from the checkpoint's own files and
// giving the ids and text of transformers 5's tokenizer for it (tests/text_tokenizer_test.cpp checks both against
// transformers on a multilingual, emoji and whitespace corpus):
//
//  - tokenizer.json (the `tokenizers` library's format; Llama 3, Qwen2, and the tokenizer.json of Llama 2 and
//    Mistral repos): the added tokens (split out of the raw text first, leftmost-longest, lstrip/rstrip), the
//    normaliser (NFC, NFKC, NFD, NFKD through utf8proc; Prepend, Replace, Lowercase, Sequence), the pre-tokeniser
//    (Split on the file's regex through PCRE2 with Unicode properties, ByteLevel, Metaspace, Digits, Sequence), the
//    BPE model (merges by rank, ignore_merges, byte_fallback, unk and fuse_unk), the post-processor
//    (TemplateProcessing's single template, ByteLevel, Sequence) and the decoder (ByteLevel, Metaspace, Replace,
//    ByteFallback, Fuse, Strip, Sequence).
//  - tokenizer.model alone (a SentencePiece BPE model, Llama 2 and Mistral): read through the SentencePiece shim
//    the umT5 tokenizer uses (sentencepiece_model.h) and turned into the same BPE as transformers 5's
//    LlamaTokenizer builds from it (merges from the vocabulary's order, byte fallback, Metaspace with a "▁" before
//    the first word only unless tokenizer_config.json says legacy, <s> first unless add_bos_token is false).
//
// Written here by hand because no maintained C/C++ library reads tokenizer.json (the `tokenizers` library is
// Rust; its C bindings are not packaged by Debian): the pipeline steps above and BPE itself. PCRE2 runs the
// regexes, utf8proc the Unicode normal forms, SentencePiece reads tokenizer.model. Unsupported steps (WordPiece or
// Unigram models, other normalisers and pre-tokenisers) are refused at open(), naming the step.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pipeswap::models {

class TextTokenizer {
 public:
  // Reads `dir`: tokenizer.json when present, else tokenizer.model (+ tokenizer_config.json). Throws ConfigError
  // naming the file and what is wrong: missing files, a step pipeswap does not implement, a library it was built
  // without (PCRE2 for a Split regex, SentencePiece for tokenizer.model).
  static std::shared_ptr<const TextTokenizer> open(const std::string& dir);
  // Whether `dir` has a tokenizer file open() can read.
  static bool present(const std::string& dir);
  ~TextTokenizer();
  TextTokenizer(const TextTokenizer&) = delete;
  TextTokenizer& operator=(const TextTokenizer&) = delete;

  // tokenizer(text)["input_ids"] (add_special_tokens: the post-processor's BOS/EOS). Throws ConfigError when the
  // text is not valid UTF-8.
  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // tokenizer.decode(ids, skip_special_tokens). Ids outside the vocabulary are skipped, as the tokenizers library
  // skips them.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const;

  // The id of a token of the vocabulary or an added token (nullopt when there is none).
  std::optional<int64_t> token_id(std::string_view token) const;
  bool is_special(int64_t id) const;
  // The special tokens' text (added tokens marked special, and the configured BOS/EOS), for messages.
  std::vector<std::string> special_tokens() const;
  // A stop token as a user names it: an added or special token ('<|eot_id|>'), a vocabulary entry ('</s>',
  // 'Ġthe'), or text that the tokenizer makes exactly one token of ('.', '\n'); nullopt when none of these.
  std::optional<int64_t> stop_token_id(std::string_view name) const;
  // bos_token / eos_token of tokenizer_config.json (nullopt when it names none).
  std::optional<int64_t> bos_id() const;
  std::optional<int64_t> eos_id() const;
  // One past the largest id (vocabulary and added tokens).
  int64_t vocab_size() const;
  // "byte-level BPE (tokenizer.json)" or "SentencePiece BPE (tokenizer.model)", for logs.
  const std::string& kind() const;

  struct Impl;

 private:
  explicit TextTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Turns the ids of one sequence into text as they arrive: each call returns the text that the new ids complete
// (nothing while a character's bytes are still incomplete), so that what has been returned so far is always a
// prefix of decode(all ids).
class TextStreamer {
 public:
  TextStreamer(std::shared_ptr<const TextTokenizer> tokenizer, bool skip_special_tokens);
  std::string push(int64_t id);
  // The rest (an incomplete character's replacement), at the end of the sequence.
  std::string finish();

 private:
  std::shared_ptr<const TextTokenizer> tokenizer_;
  bool skip_special_tokens_;
  std::vector<int64_t> ids_;
  size_t emitted_ = 0;  // bytes of decode(ids_) already returned
};

}  // namespace pipeswap::models
