#include "sentencepiece_model.h"

#include <fmt/format.h>

#include "pipeswap/core/error.h"

#ifdef PIPESWAP_HAVE_SENTENCEPIECE
#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#endif

namespace pipeswap::models {

#ifdef PIPESWAP_HAVE_SENTENCEPIECE

bool sentencepiece_available() { return true; }

// SentencePiece through libpipeswap_sentencepiece.so (sentencepiece_shim.cpp says why it is loaded, not
// linked): dlopen'ed once, RTLD_LOCAL | RTLD_DEEPBIND. PIPESWAP_SENTENCEPIECE_SHIM in the environment names
// another copy of it; the default is where the build put it.
struct SentencePieceLibrary {
  ps_spm* (*open)(const char*, char*, size_t) = nullptr;
  void (*close)(ps_spm*) = nullptr;
  int (*encode)(const ps_spm*, const char*, size_t, void (*)(void*, const int*, size_t), void*, char*,
                size_t) = nullptr;
  int (*piece_size)(const ps_spm*) = nullptr;
  int (*piece_to_id)(const ps_spm*, const char*) = nullptr;
  const char* (*id_to_piece)(const ps_spm*, int) = nullptr;
  int (*is_byte)(const ps_spm*, int) = nullptr;
  void (*special_ids)(const ps_spm*, int*, int*, int*) = nullptr;
  int (*piece_kind)(const ps_spm*, int) = nullptr;
  std::string error;  // why it could not be loaded ("" once loaded)
};

namespace {

template <typename F>
void bind(void* handle, const char* name, F& fn, std::string& error) {
  fn = reinterpret_cast<F>(::dlsym(handle, name));
  if (fn == nullptr && error.empty()) error = fmt::format("it lacks {}", name);
}

const SentencePieceLibrary& sentencepiece_library() {
  static SentencePieceLibrary lib;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("PIPESWAP_SENTENCEPIECE_SHIM");
    const std::string path = env != nullptr && env[0] != '\0' ? env : PIPESWAP_SENTENCEPIECE_SHIM;
    // Never closed: the processors it makes live as long as the tokenizers that hold them.
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (handle == nullptr) {
      const char* why = ::dlerror();
      lib.error = fmt::format("cannot load '{}' ({})", path, why != nullptr ? why : "unknown error");
      return;
    }
    bind(handle, "ps_spm_open", lib.open, lib.error);
    bind(handle, "ps_spm_close", lib.close, lib.error);
    bind(handle, "ps_spm_encode", lib.encode, lib.error);
    bind(handle, "ps_spm_piece_size", lib.piece_size, lib.error);
    bind(handle, "ps_spm_piece_to_id", lib.piece_to_id, lib.error);
    bind(handle, "ps_spm_id_to_piece", lib.id_to_piece, lib.error);
    bind(handle, "ps_spm_is_byte", lib.is_byte, lib.error);
    bind(handle, "ps_spm_special_ids", lib.special_ids, lib.error);
    bind(handle, "ps_spm_piece_kind", lib.piece_kind, lib.error);
    if (!lib.error.empty()) lib.error = fmt::format("'{}' is not pipeswap's SentencePiece shim: {}", path, lib.error);
  });
  return lib;
}

}  // namespace


SentencePieceModel::SentencePieceModel(const std::string& path) : lib_(sentencepiece_library()) {
  PS_CHECK(lib_.error.empty(), ConfigError,
           "cannot use SentencePiece: {}. Build pipeswap with libsentencepiece-dev installed (it makes "
           "libpipeswap_sentencepiece.so), or set PIPESWAP_SENTENCEPIECE_SHIM to that library",
           lib_.error);
  std::array<char, 512> error{};
  spm_ = lib_.open(path.c_str(), error.data(), error.size());
  PS_CHECK(spm_ != nullptr, ConfigError,
           "'{}' is not a SentencePiece model ({}): re-download the repo's tokenizer files", path, error.data());
}

SentencePieceModel::~SentencePieceModel() { lib_.close(spm_); }

void SentencePieceModel::encode(std::string_view text, std::vector<int64_t>& ids) const {
  std::array<char, 512> error{};
  auto emit = [](void* context, const int* p, size_t n) {
    auto* out = static_cast<std::vector<int64_t>*>(context);
    out->insert(out->end(), p, p + n);
  };
  PS_CHECK(lib_.encode(spm_, text.data(), text.size(), emit, &ids, error.data(), error.size()) == 0, ConfigError,
           "SentencePiece could not encode the prompt: {}", error.data());
}

int64_t SentencePieceModel::piece_size() const { return lib_.piece_size(spm_); }
int64_t SentencePieceModel::piece_to_id(const std::string& piece) const { return lib_.piece_to_id(spm_, piece.c_str()); }
std::string SentencePieceModel::id_to_piece(int64_t id) const { return lib_.id_to_piece(spm_, static_cast<int>(id)); }
bool SentencePieceModel::is_byte(int64_t id) const { return lib_.is_byte(spm_, static_cast<int>(id)) != 0; }
SentencePieceModel::PieceKind SentencePieceModel::kind(int64_t id) const {
  return static_cast<PieceKind>(lib_.piece_kind(spm_, static_cast<int>(id)));
}
std::array<int64_t, 3> SentencePieceModel::special_ids() const {
  int pad = -1, eos = -1, unk = -1;
  lib_.special_ids(spm_, &pad, &eos, &unk);
  return {pad, eos, unk};
}

#else

bool sentencepiece_available() { return false; }

struct SentencePieceLibrary {};

namespace {
const SentencePieceLibrary& sentencepiece_library() {
  static const SentencePieceLibrary none;
  return none;
}
}  // namespace

SentencePieceModel::SentencePieceModel(const std::string& path) : lib_(sentencepiece_library()) {
  PS_THROW(ConfigError,
           "cannot read the SentencePiece model '{}': this pipeswap was built without SentencePiece. Install it "
           "(Debian/Ubuntu: apt-get install libsentencepiece-dev) and build pipeswap again, or use the checkpoint's "
           "tokenizer.json, or pass token ids (--input)",
           path);
}
SentencePieceModel::~SentencePieceModel() = default;
void SentencePieceModel::encode(std::string_view, std::vector<int64_t>&) const {}
int64_t SentencePieceModel::piece_size() const { return 0; }
int64_t SentencePieceModel::piece_to_id(const std::string&) const { return -1; }
std::string SentencePieceModel::id_to_piece(int64_t) const { return {}; }
bool SentencePieceModel::is_byte(int64_t) const { return false; }
SentencePieceModel::PieceKind SentencePieceModel::kind(int64_t) const { return PieceKind::kNormal; }
std::array<int64_t, 3> SentencePieceModel::special_ids() const { return {-1, -1, -1}; }

#endif

}  // namespace pipeswap::models
