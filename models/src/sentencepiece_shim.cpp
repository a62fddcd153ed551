// A small C interface to SentencePiece, built as its own shared library (libpipeswap_sentencepiece.so) and
// loaded by tokenizer.cpp with dlopen, never linked: Debian's libsentencepiece carries a copy of protobuf-lite
// and exports its symbols, and a process that also has the system's libprotobuf (LibTorch loads it, through
// ONNX) then binds one copy's code to the other's and crashes before main. Loaded with RTLD_LOCAL (its
// symbols stay out of the process's scope) and RTLD_DEEPBIND (it and libsentencepiece bind to their own
// symbols first), each protobuf keeps to itself. Plain C types cross the boundary; errors come back as text.
#include <sentencepiece_processor.h>

#include <cstddef>
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

}  // namespace

extern "C" {

struct ps_spm {
  sentencepiece::SentencePieceProcessor processor;
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

}  // extern "C"
