// SentencePiece through libpipeswap_sentencepiece.so (sentencepiece_shim.cpp says why it is loaded, not linked),
// shared by the umT5 tokenizer (tokenizer.cpp) and the LLM tokenizer's tokenizer.model path (text_tokenizer.cpp).
// Only built with PIPESWAP_HAVE_SENTENCEPIECE; without it sentencepiece_available() is false and opening a model
// throws a ConfigError saying what to install.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pipeswap::models {

// Whether this build can load SentencePiece models at all.
bool sentencepiece_available();

struct SentencePieceLibrary;
struct ps_spm;

// One loaded SentencePiece model. Throws ConfigError when the shim cannot be loaded or the file is no model.
class SentencePieceModel {
 public:
  // What a piece is (SentencePiece's ModelProto piece types).
  enum class PieceKind { kNormal, kUnknown, kControl, kUserDefined, kByte, kUnused };

  explicit SentencePieceModel(const std::string& path);
  ~SentencePieceModel();
  SentencePieceModel(const SentencePieceModel&) = delete;
  SentencePieceModel& operator=(const SentencePieceModel&) = delete;

  void encode(std::string_view text, std::vector<int64_t>& ids) const;
  int64_t piece_size() const;
  int64_t piece_to_id(const std::string& piece) const;
  std::string id_to_piece(int64_t id) const;
  bool is_byte(int64_t id) const;
  PieceKind kind(int64_t id) const;
  // <pad>, </s>, <unk> (-1: none)
  std::array<int64_t, 3> special_ids() const;

 private:
  const SentencePieceLibrary& lib_;
  ps_spm* spm_ = nullptr;
};

}  // namespace pipeswap::models
