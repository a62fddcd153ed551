// A small C interface to SentencePiece, built as its own shared library (libpipeswap_sentencepiece.so) and
// loaded by tokenizer.cpp with dlopen, never linked: Debian's libsentencepiece carries a copy of protobuf-lite
// and exports its symbols, and a process that also has the system's libprotobuf (LibTorch loads it, through
// ONNX) then binds one copy's code to the other's and crashes before main. Loaded with RTLD_LOCAL (its
// symbols stay out of the process's scope) and RTLD_DEEPBIND (it and libsentencepiece bind to their own
// symbols first), each protobuf keeps to itself. Plain C types cross the boundary; errors come back as text.
#include <sentencepiece_processor.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

void set_error(char* error, size_t size, const std::string& text) {
  if (error == nullptr || size == 0) return;
  std::strncpy(error, text.c_str(), size - 1);
  error[size - 1] = '\0';
}

// protobuf's wire format, as much as reading ModelProto's pieces[i].type needs: field 1 of ModelProto is the
// repeated SentencePiece message, whose field 3 is the type (NORMAL 1 when absent).
bool read_varint(const std::string& b, size_t& i, uint64_t& v) {
  v = 0;
  for (int shift = 0; i < b.size() && shift < 64; shift += 7) {
    const auto c = static_cast<unsigned char>(b[i++]);
    v |= static_cast<uint64_t>(c & 0x7F) << shift;
    if ((c & 0x80) == 0) return true;
  }
  return false;
}

// Skips a field of `wire` type; false on malformed bytes. Length-delimited fields give their [begin, end).
bool skip_field(const std::string& b, size_t& i, uint64_t wire, size_t* begin = nullptr, size_t* end = nullptr) {
  uint64_t v = 0;
  switch (wire) {
    case 0: return read_varint(b, i, v);
    case 1: i += 8; return i <= b.size();
    case 5: i += 4; return i <= b.size();
    case 2:
      if (!read_varint(b, i, v) || v > b.size() - i) return false;
      if (begin) *begin = i;
      i += v;
      if (end) *end = i;
      return true;
    default: return false;
  }
}

std::vector<int> piece_types(const std::string& b) {
  std::vector<int> types;
  size_t i = 0;
  uint64_t key = 0;
  while (i < b.size() && read_varint(b, i, key)) {
    size_t begin = 0, end = 0;
    if (!skip_field(b, i, key & 7, &begin, &end)) break;
    if ((key >> 3) != 1 || (key & 7) != 2) continue;
    int type = 1;
    size_t j = begin;
    uint64_t k = 0;
    while (j < end && read_varint(b, j, k)) {
      if ((k >> 3) == 3 && (k & 7) == 0) {
        uint64_t v = 0;
        if (!read_varint(b, j, v)) break;
        type = static_cast<int>(v);
      } else if (!skip_field(b, j, k & 7)) {
        break;
      }
    }
    types.push_back(type);
  }
  return types;
}

}  // namespace

extern "C" {

struct ps_spm {
  sentencepiece::SentencePieceProcessor processor;
  mutable std::vector<int> types;  // ModelProto.pieces[i].type, read on first use
};

// A processor for the model file at `path`, or null with the reason in `error`.
__attribute__((visibility("default"))) ps_spm* ps_spm_open(const char* path, char* error, size_t error_size) {
  auto spm = std::make_unique<ps_spm>();
  const auto status = spm->processor.Load(path);
  if (!status.ok()) {
    set_error(error, error_size, status.ToString());
    return nullptr;
  }
  return spm.release();
}

__attribute__((visibility("default"))) void ps_spm_close(ps_spm* spm) { delete spm; }

// Encodes `size` bytes of UTF-8 text; `emit` receives the ids (once). Returns 0, or -1 with the reason in
// `error`.
__attribute__((visibility("default"))) int ps_spm_encode(const ps_spm* spm, const char* text, size_t size,
                                                         void (*emit)(void* context, const int* ids, size_t count),
                                                         void* context, char* error, size_t error_size) {
  std::vector<int> ids;
  const auto status = spm->processor.Encode(std::string(text, size), &ids);
  if (!status.ok()) {
    set_error(error, error_size, status.ToString());
    return -1;
  }
  emit(context, ids.data(), ids.size());
  return 0;
}

__attribute__((visibility("default"))) int ps_spm_piece_size(const ps_spm* spm) {
  return spm->processor.GetPieceSize();
}

// The id of a piece (the unknown id when it has none).
__attribute__((visibility("default"))) int ps_spm_piece_to_id(const ps_spm* spm, const char* piece) {
  return spm->processor.PieceToId(piece);
}

// The piece of an id, valid while the processor lives.
__attribute__((visibility("default"))) const char* ps_spm_id_to_piece(const ps_spm* spm, int id) {
  return spm->processor.IdToPiece(id).c_str();
}

// Whether the id is a byte piece (<0xNN>) of a model trained with byte fallback.
__attribute__((visibility("default"))) int ps_spm_is_byte(const ps_spm* spm, int id) {
  return spm->processor.IsByte(id) ? 1 : 0;
}

// <pad>, </s> and <unk>'s ids (-1 where the model has none).
__attribute__((visibility("default"))) void ps_spm_special_ids(const ps_spm* spm, int* pad, int* eos, int* unk) {
  *pad = spm->processor.pad_id();
  *eos = spm->processor.eos_id();
  *unk = spm->processor.unk_id();
}

// What a piece is: 0 normal, 1 unknown, 2 control, 3 user defined, 4 byte, 5 unused (the LLM tokenizer makes
// the control, unknown and user-defined pieces added tokens, as transformers does). Older SentencePiece releases
// (Debian 12's 0.1.97) have no IsUserDefined: the type comes from the model's own bytes (piece_types).
__attribute__((visibility("default"))) int ps_spm_piece_kind(const ps_spm* spm, int id) {
  if (spm->types.empty()) spm->types = piece_types(spm->processor.serialized_model_proto());
  const int type = id >= 0 && static_cast<size_t>(id) < spm->types.size() ? spm->types[static_cast<size_t>(id)] : 1;
  switch (type) {
    case 2: return 1;  // UNKNOWN
    case 3: return 2;  // CONTROL
    case 4: return 3;  // USER_DEFINED
    case 5: return 5;  // UNUSED
    case 6: return 4;  // BYTE
    default: return 0;  // NORMAL
  }
}

}  // extern "C"
