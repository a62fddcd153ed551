#include "pipeswap/models/tokenizer.h"

#include "utf8.h"
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "pipeswap/core/error.h"
#include "pipeswap/core/files.h"
#include "pipeswap/core/json.h"
#include "pipeswap/core/log.h"
#include "sentencepiece_model.h"


namespace pipeswap::models {
namespace {

// ---- UTF-8 ------------------------------------------------------------------------------------------

std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    int len = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
    char32_t c = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
    bool ok = len > 0 && i + len <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      const auto cb = static_cast<unsigned char>(s[i + k]);
      ok = (cb & 0xC0) == 0x80;
      c = (c << 6) | (cb & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8 either.
    static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    ok = ok && c >= kMin[len] && c <= 0x10FFFF && !(c >= 0xD800 && c <= 0xDFFF);
    PS_CHECK(ok, ConfigError, "the prompt is not valid UTF-8 (byte {} of {}): save it as UTF-8", i, s.size());
    out.push_back(c);
    i += len;
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) { utf8::append(out, c); }

std::string encode_utf8(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

// ---- html.unescape ----------------------------------------------------------------------------------

struct Entity {
  std::string_view name;   // with its ';' where the standard has one
  std::string_view value;  // UTF-8
};
constexpr Entity kEntities[] = {
#include "html_entities.inc"
};

const std::string_view* find_entity(std::string_view name) {
  const Entity* end = std::end(kEntities);
  const Entity* it = std::lower_bound(std::begin(kEntities), end, name,
                                      [](const Entity& e, std::string_view n) { return e.name < n; });
  return it != end && it->name == name ? &it->value : nullptr;
}

// HTML5's replacements for numeric references to 0x80..0x9F (windows-1252; the five it leaves undefined
// stay as they are).
constexpr char32_t kCp1252[32] = {0x20AC, 0x81,   0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
                                  0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8D,   0x017D, 0x8F,
                                  0x90,   0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
                                  0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D,   0x017E, 0x0178};

// A numeric reference's replacement, as Python's html module gives it (empty: the reference is dropped).
std::u32string numeric_reference(char32_t num) {
  if (num == 0) return U"\uFFFD";
  if (num == 0x0D) return U"\r";
  if (num >= 0x80 && num <= 0x9F) return std::u32string(1, kCp1252[num - 0x80]);
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return U"\uFFFD";
  const bool dropped = (num >= 0x01 && num <= 0x08) || num == 0x0B || (num >= 0x0E && num <= 0x1F) || num == 0x7F ||
                       (num >= 0xFDD0 && num <= 0xFDEF) || (num & 0xFFFE) == 0xFFFE;
  return dropped ? std::u32string() : std::u32string(1, num);
}

bool is_digit(char32_t c) { return c >= '0' && c <= '9'; }
bool is_hex(char32_t c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
int hex_value(char32_t c) { return is_digit(c) ? int(c - '0') : (c >= 'a' ? int(c - 'a') : int(c - 'A')) + 10; }

std::u32string unescape(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] != U'&') {
      out.push_back(s[i++]);
      continue;
    }
    size_t j = i + 1;
    if (j < s.size() && s[j] == U'#') {
      // &#123; or &#x7b; (the ';' optional). Values past U+10FFFF saturate: any of them gives U+FFFD.
      const bool hex = j + 1 < s.size() && (s[j + 1] == U'x' || s[j + 1] == U'X');
      size_t k = j + (hex ? 2 : 1);
      const size_t digits = k;
      char32_t num = 0;
      while (k < s.size() && (hex ? is_hex(s[k]) : is_digit(s[k]))) {
        const char32_t d = hex ? hex_value(s[k]) : s[k] - U'0';
        num = num > 0x10FFFF ? num : num * (hex ? 16 : 10) + d;
        ++k;
      }
      if (k == digits) {  // "&#" or "&#x" without digits is no reference
        out.push_back(s[i++]);
        continue;
      }
      if (k < s.size() && s[k] == U';') ++k;
      out += numeric_reference(num);
      i = k;
      continue;
    }
    // A name: 1 to 32 characters other than tab, newline, form feed, space, '<', '&', '#', ';'.
    while (j < s.size() && j - (i + 1) < 32 && s[j] != U'\t' && s[j] != U'\n' && s[j] != U'\f' && s[j] != U' ' &&
           s[j] != U'<' && s[j] != U'&' && s[j] != U'#' && s[j] != U';')
      ++j;
    if (j == i + 1) {
      out.push_back(s[i++]);
      continue;
    }
    if (j < s.size() && s[j] == U';') ++j;
    const std::u32string name = s.substr(i + 1, j - i - 1);
    const std::string utf8 = encode_utf8(name);
    if (const std::string_view* v = find_entity(utf8)) {
      out += decode_utf8(*v);
    } else {
      // The longest known prefix of at least two characters, the rest kept as text; else the text as it is.
      bool found = false;
      for (size_t x = name.size() - 1; x >= 2 && !found; --x) {
        if (const std::string_view* v = find_entity(encode_utf8(name.substr(0, x)))) {
          out += decode_utf8(*v);
          out += name.substr(x);
          found = true;
        }
      }
      if (!found) {
        out.push_back(U'&');
        out += name;
      }
    }
    i = j;
  }
  return out;
}

}  // namespace

bool is_unicode_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_python_space(char32_t c) { return is_unicode_white_space(c) || (c >= 0x1C && c <= 0x1F); }

std::string html_unescape(std::string_view text) {
  if (text.find('&') == std::string_view::npos) {
    decode_utf8(text);  // the same validation either way
    return std::string(text);
  }
  return encode_utf8(unescape(decode_utf8(text)));
}

namespace {

// Python's str.strip(): isspace characters off both ends.
std::u32string strip_python(const std::u32string& s) {
  size_t begin = 0, end = s.size();
  while (begin < end && is_python_space(s[begin])) ++begin;
  while (end > begin && is_python_space(s[end - 1])) --end;
  return s.substr(begin, end - begin);
}

}  // namespace

std::string clean_prompt(std::string_view text) {
  // basic_clean: unescape twice, strip. whitespace_clean: every run of \s one space (diffusers imports the
  // `regex` module, whose \s is Unicode White_Space: Python's U+001C..U+001F stay), strip.
  const std::u32string once = strip_python(unescape(unescape(decode_utf8(text))));
  std::u32string collapsed;
  collapsed.reserve(once.size());
  bool in_run = false;
  for (char32_t c : once) {
    const bool space = is_unicode_white_space(c);
    if (!space || !in_run) collapsed.push_back(space ? U' ' : c);
    in_run = space;
  }
  return encode_utf8(strip_python(collapsed));
}

// ---- the tokenizer ----------------------------------------------------------------------------------

#ifdef PIPESWAP_HAVE_SENTENCEPIECE

namespace {

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// An added token of tokenizer_config.json ("added_tokens_decoder"): matched in the raw text before
// SentencePiece sees it.
struct AddedToken {
  std::string content;
  int64_t id = 0;
  bool lstrip = false;
  bool rstrip = false;
};

// A regular file only, opened without blocking (a FIFO in its place is an error, not a wait).
std::string read_text(const std::string& path) { return read_regular_file(path, "tokenizer file"); }

// A JSON file of the tokenizer folder, or null when it is absent.
nlohmann::json read_json_if_present(const std::string& path) {
  if (!is_regular_file(path)) return nullptr;
  try {
    return parse_json(read_text(path));  // depth-limited, no key twice
  } catch (const JsonError& e) {
    PS_THROW(ConfigError, "'{}' is not valid JSON ({}): re-download the repo's tokenizer/ folder", path, e.what());
  }
}

// A special token's text in tokenizer_config.json / special_tokens_map.json: a string or {"content": ...}.
std::string token_text(const nlohmann::json& j, const std::string& key, const std::string& fallback) {
  if (!j.is_object() || !j.contains(key)) return fallback;
  const auto& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return fallback;
}

}  // namespace

namespace {

// The added tokens of tokenizer_config.json, or T5's convention where it has none.
std::vector<AddedToken> read_added_tokens(const nlohmann::json& config, const SentencePieceModel& sp,
                                          const std::string& dir) {
  std::vector<AddedToken> added;
  if (config.is_object() && config.contains("added_tokens_decoder") && config["added_tokens_decoder"].is_object()) {
    for (const auto& [key, tok] : config["added_tokens_decoder"].items()) {
      AddedToken a;
      try {
        a.id = std::stoll(key);
      } catch (const std::exception&) {
        PS_THROW(ConfigError, "tokenizer_config.json in '{}': added token id '{}' is not a number", dir, key);
      }
      PS_CHECK(tok.is_object() && tok.contains("content") && tok["content"].is_string() && a.id >= 0, ConfigError,
               "tokenizer_config.json in '{}': added token {} has no \"content\" text", dir, key);
      a.content = tok["content"].get<std::string>();
      a.lstrip = tok.value("lstrip", false);
      a.rstrip = tok.value("rstrip", false);
      PS_CHECK(!a.content.empty(), ConfigError, "tokenizer_config.json in '{}': added token {} is empty", dir, key);
      added.push_back(std::move(a));
    }
  } else {
    // No added_tokens_decoder (older exports): T5's convention, the model's <pad>, </s>, <unk> and extra_ids
    // sentinels after the vocabulary, the highest first.
    for (int64_t id : sp.special_ids())
      if (id >= 0) added.push_back(AddedToken{sp.id_to_piece(id), id});
    const int64_t extra = config.is_object() && config.contains("extra_ids") ? config["extra_ids"].get<int64_t>() : 0;
    for (int64_t i = 0; i < extra; ++i)
      added.push_back(AddedToken{fmt::format("<extra_id_{}>", i), sp.piece_size() + extra - 1 - i});
  }
  return added;
}

}  // namespace

struct T5Tokenizer::Impl {
  std::string dir;
  std::unique_ptr<SentencePieceModel> sp;
  std::vector<AddedToken> added;   // longest content first: the first match at a position is the longest
  std::array<bool, 256> starts{};  // first bytes of the added tokens (most text bytes start none)
  int64_t pad_id = 0;
  int64_t eos_id = 1;
  int64_t unk_id = 2;
  int64_t vocab_size = 0;

  int64_t id_of(const std::string& token) const {
    for (const auto& a : added)
      if (a.content == token) return a.id;
    const int64_t id = sp->piece_to_id(token);
    const int64_t unk = sp->special_ids()[2];
    PS_CHECK(id != unk || token == sp->id_to_piece(unk), ConfigError,
             "tokenizer '{}': special token '{}' is neither an added token nor in spiece.model: re-download the "
             "repo's tokenizer/ folder",
             dir, token);
    return id;
  }

  // transformers 5's T5Tokenizer builds its unigram model without byte fallback: a character the vocabulary
  // lacks is <unk> there, a run of them one <unk>. SentencePiece spells such a run in its UTF-8 bytes (<0xNN>
  // pieces) when the model was trained with byte fallback, as umT5's was: each run of byte pieces becomes
  // one <unk> here. (transformers 4's fast tokenizer kept the bytes.)
  void encode_piece(std::string_view text, std::vector<int64_t>& ids) const {
    if (text.empty()) return;
    std::vector<int64_t> pieces;
    sp->encode(text, pieces);
    bool in_bytes = false;
    for (int64_t id : pieces) {
      const bool byte = sp->is_byte(id);
      if (!byte) ids.push_back(id);
      if (byte && !in_bytes) ids.push_back(unk_id);
      in_bytes = byte;
    }
  }
};

bool T5Tokenizer::available() { return true; }

std::shared_ptr<const T5Tokenizer> T5Tokenizer::open(const std::string& dir) {
  PS_CHECK(is_directory(dir), ConfigError,
           "tokenizer folder '{}' does not exist: pass the tokenizer/ folder of a diffusers Wan repo "
           "(Wan2.1-T2V-1.3B-Diffusers/tokenizer: spiece.model, tokenizer_config.json)",
           dir);
  const std::string model = dir + "/spiece.model";
  PS_CHECK(is_regular_file(model), ConfigError,
           "tokenizer folder '{}' has no spiece.model: pipeswap reads umT5's SentencePiece model as the diffusers "
           "layout of a Wan repo has it (tokenizer/spiece.model beside tokenizer_config.json)",
           dir);
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  impl->sp = std::make_unique<SentencePieceModel>(model);
  impl->vocab_size = impl->sp->piece_size();
  impl->unk_id = impl->sp->special_ids()[2];

  const nlohmann::json config = read_json_if_present(dir + "/tokenizer_config.json");
  const nlohmann::json special = read_json_if_present(dir + "/special_tokens_map.json");
  try {
    impl->added = read_added_tokens(config, *impl->sp, dir);
  } catch (const nlohmann::json::exception& e) {
    PS_THROW(ConfigError,
             "tokenizer_config.json in '{}' is not as transformers writes it ({}): re-download the repo's "
             "tokenizer/ folder",
             dir, e.what());
  }
  for (const auto& a : impl->added) {
    impl->vocab_size = std::max(impl->vocab_size, a.id + 1);
    impl->starts[static_cast<unsigned char>(a.content[0])] = true;
  }
  std::stable_sort(impl->added.begin(), impl->added.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  impl->eos_id = impl->id_of(token_text(special, "eos_token", token_text(config, "eos_token", "</s>")));
  impl->pad_id = impl->id_of(token_text(special, "pad_token", token_text(config, "pad_token", "<pad>")));
  log().debug("tokenizer '{}': {} pieces, {} added tokens, </s> {}, <pad> {}", dir, impl->sp->piece_size(),
              impl->added.size(), impl->eos_id, impl->pad_id);
  return std::shared_ptr<const T5Tokenizer>(new T5Tokenizer(std::move(impl)));
}

std::vector<int64_t> T5Tokenizer::encode(std::string_view text) const {
  decode_utf8(text);  // refuse what is not UTF-8 before SentencePiece sees it
  std::vector<int64_t> ids;
  size_t start = 0;  // the text not yet encoded begins here
  size_t i = 0;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (const auto& a : impl_->added) {
      if (!impl_->starts[static_cast<unsigned char>(text[i])]) break;  // no added token starts with this byte
      if (text.compare(i, a.content.size(), a.content) == 0) {
        hit = &a;
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    // lstrip / rstrip: the token takes the whitespace before / after it along.
    size_t before = i;
    if (hit->lstrip) {
      std::u32string head = decode_utf8(text.substr(start, i - start));
      while (!head.empty() && is_unicode_white_space(head.back())) head.pop_back();
      before = start + encode_utf8(head).size();
    }
    impl_->encode_piece(text.substr(start, before - start), ids);
    ids.push_back(hit->id);
    i += hit->content.size();
    if (hit->rstrip) {
      const std::u32string tail = decode_utf8(text.substr(i));
      size_t n = 0;
      while (n < tail.size() && is_unicode_white_space(tail[n])) ++n;
      i += encode_utf8(tail.substr(0, n)).size();
    }
    start = i;
  }
  impl_->encode_piece(text.substr(start), ids);
  return ids;
}

#else  // no SentencePiece: the folder cannot be read, and no tokenizer object ever exists

struct T5Tokenizer::Impl {
  std::string dir;
};

bool T5Tokenizer::available() { return false; }

std::shared_ptr<const T5Tokenizer> T5Tokenizer::open(const std::string& dir) {
  PS_THROW(ConfigError,
           "cannot read the tokenizer '{}': this pipeswap was built without SentencePiece. Install it (Debian/Ubuntu: "
           "apt-get install libsentencepiece-dev) and build pipeswap again, or tokenize the prompt elsewhere "
           "(transformers' T5Tokenizer) and pass its token ids",
           dir);
}

std::vector<int64_t> T5Tokenizer::encode(std::string_view) const {
  PS_THROW(ConfigError, "this pipeswap was built without SentencePiece (libsentencepiece-dev)");
}

#endif

T5Tokenizer::T5Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
T5Tokenizer::~T5Tokenizer() = default;

#ifdef PIPESWAP_HAVE_SENTENCEPIECE
int64_t T5Tokenizer::pad_id() const { return impl_->pad_id; }
int64_t T5Tokenizer::eos_id() const { return impl_->eos_id; }
int64_t T5Tokenizer::vocab_size() const { return impl_->vocab_size; }
#else
int64_t T5Tokenizer::pad_id() const { return 0; }
int64_t T5Tokenizer::eos_id() const { return 1; }
int64_t T5Tokenizer::vocab_size() const { return 0; }
#endif
const std::string& T5Tokenizer::dir() const { return impl_->dir; }

PromptTokens T5Tokenizer::tokenize(const std::vector<std::string>& prompts, int64_t max_length,
                                   PromptCleaning cleaning) const {
  PS_CHECK(max_length >= 1, ConfigError, "max_length must be at least 1 (the </s> token), got {}", max_length);
  const auto b = static_cast<int64_t>(prompts.size());
  PromptTokens out;
  out.input_ids = torch::full({b, max_length}, pad_id(), torch::kInt64);
  out.attention_mask = torch::zeros({b, max_length}, torch::kInt64);
  auto ids_acc = out.input_ids.accessor<int64_t, 2>();
  auto mask_acc = out.attention_mask.accessor<int64_t, 2>();
  for (int64_t p = 0; p < b; ++p) {
    std::vector<int64_t> ids = encode(cleaning == PromptCleaning::kWanPipeline ? clean_prompt(prompts[p]) : prompts[p]);
    // transformers keeps room for the </s> it appends: max_length - 1 tokens of text at most.
    const int64_t keep = std::min<int64_t>(static_cast<int64_t>(ids.size()), max_length - 1);
    const int64_t dropped = static_cast<int64_t>(ids.size()) - keep;
    if (dropped > 0) {
      log().warn(
          "prompt {} has {} tokens with its </s>, the text encoder takes {}: its last {} tokens are dropped "
          "(as diffusers' WanPipeline drops them)",
          p, ids.size() + 1, max_length, dropped);
    }
    ids.resize(keep);
    ids.push_back(eos_id());
    for (size_t t = 0; t < ids.size(); ++t) {
      ids_acc[p][static_cast<int64_t>(t)] = ids[t];
      mask_acc[p][static_cast<int64_t>(t)] = 1;
    }
    out.lengths.push_back(static_cast<int64_t>(ids.size()));
    out.dropped.push_back(dropped);
  }
  return out;
}

}  // namespace pipeswap::models
