#include "pipeswap/models/text_tokenizer.h"

#include "utf8.h"
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "sentencepiece_model.h"

#ifdef PIPESWAP_HAVE_PCRE2
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#endif
#ifdef PIPESWAP_HAVE_UTF8PROC
#include <utf8proc.h>
#endif

namespace pipeswap::models {
namespace {

using json = nlohmann::json;

// ---- UTF-8 ------------------------------------------------------------------------------------------------

// Length of the valid UTF-8 sequence at s[i] (0: invalid there).
size_t utf8_valid_len(std::string_view s, size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) return 1;
  size_t len = (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || i + len > s.size()) return 0;
  char32_t c = len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
  for (size_t k = 1; k < len; ++k) {
    const auto cb = static_cast<unsigned char>(s[i + k]);
    if ((cb & 0xC0) != 0x80) return 0;
    c = (c << 6) | (cb & 0x3F);
  }
  static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (c < kMin[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  return len;
}

void check_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_valid_len(s, i);
    PS_CHECK(n > 0, ConfigError, "the prompt is not valid UTF-8 (byte {} of {}): save it as UTF-8", i, s.size());
    i += n;
  }
}

// The code points of valid UTF-8 text, each as its own string.
std::vector<std::string> utf8_chars(std::string_view s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    size_t n = utf8_valid_len(s, i);
    if (n == 0) n = 1;
    out.emplace_back(s.substr(i, n));
    i += n;
  }
  return out;
}


void append_utf8(std::string& out, char32_t c) { utf8::append(out, c); }

char32_t first_code_point(std::string_view s) {
  const auto b = static_cast<unsigned char>(s[0]);
  const size_t n = utf8_valid_len(s, 0);
  if (n <= 1) return b;
  char32_t c = n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (size_t k = 1; k < n; ++k) c = (c << 6) | (static_cast<unsigned char>(s[k]) & 0x3F);
  return c;
}

// Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes one U+FFFD.
std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const size_t n = utf8_valid_len(s, i);
    if (n > 0) {
      out.append(s.substr(i, n));
      i += n;
      continue;
    }
    // The longest prefix of a valid sequence that starts here (at least one byte) is dropped as one.
    const auto b = static_cast<unsigned char>(s[i]);
    size_t len = (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 1;
    if (b == 0xC0 || b == 0xC1 || b > 0xF4) len = 1;
    size_t k = 1;
    for (; k < len && i + k < s.size(); ++k) {
      const auto cb = static_cast<unsigned char>(s[i + k]);
      // The second byte's narrower ranges (no overlong forms, surrogates or values past U+10FFFF).
      unsigned char lo = 0x80, hi = 0xBF;
      if (k == 1) {
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;
      }
      if (cb < lo || cb > hi) break;
    }
    out += "\xEF\xBF\xBD";
    i += k;
  }
  return out;
}

// Unicode White_Space (Rust's char::is_whitespace).
bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
  }
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

// GPT-2's byte <-> character map of the byte-level BPE: printable bytes stand for themselves, the rest are
// shifted to U+0100 and up.
struct ByteMap {
  std::array<std::string, 256> to_char;
  std::unordered_map<char32_t, unsigned char> to_byte;
  ByteMap() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t c = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      append_utf8(to_char[b], c);
      to_byte[c] = static_cast<unsigned char>(b);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

// ---- regex (PCRE2) ----------------------------------------------------------------------------------------

// One compiled pattern; find_all gives the [begin, end) byte ranges of its non-overlapping matches.
class Regex {
 public:
  explicit Regex(const std::string& pattern) : pattern_(pattern) {
#ifdef PIPESWAP_HAVE_PCRE2
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                          &error, &offset, nullptr);
    if (code_ == nullptr) {
      std::array<PCRE2_UCHAR, 256> text{};
      pcre2_get_error_message(error, text.data(), text.size());
      PS_THROW(ConfigError, "the tokenizer's regex '{}' does not compile in PCRE2 at offset {}: {}", pattern, offset,
               reinterpret_cast<const char*>(text.data()));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // a speed-up where available; matching works without it
#else
    PS_THROW(ConfigError,
             "the tokenizer splits text with a regex ('{}'), and this pipeswap was built without PCRE2. Install it "
             "(Debian/Ubuntu: apt-get install libpcre2-dev) and build pipeswap again, or pass token ids (--input)",
             pattern);
#endif
  }
  ~Regex() {
#ifdef PIPESWAP_HAVE_PCRE2
    if (code_ != nullptr) pcre2_code_free(code_);
#endif
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const {
    std::vector<std::pair<size_t, size_t>> out;
#ifdef PIPESWAP_HAVE_PCRE2
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    size_t pos = 0;
    while (pos <= s.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos,
                                 pos == 0 ? 0 : PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      PS_CHECK(rc > 0, ConfigError, "the tokenizer's regex '{}' failed on the text (PCRE2 error {})", pattern_, rc);
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      const size_t b = ov[0], e = ov[1];
      if (e > b) out.emplace_back(b, e);
      if (e == b) {  // an empty match: step over one character
        if (e >= s.size()) break;
        pos = e + std::max<size_t>(1, utf8_valid_len(s, e));
      } else {
        pos = e;
      }
    }
#else
    (void)s;
#endif
    return out;
  }

 private:
  std::string pattern_;
#ifdef PIPESWAP_HAVE_PCRE2
  pcre2_code* code_ = nullptr;
#endif
};

// ---- pipeline steps ---------------------------------------------------------------------------------------

// A piece of text on its way through the pre-tokeniser. `at_start`: it begins at the start of the input text
// (Metaspace's prepend_scheme "first" asks).
struct Piece {
  std::string text;
  bool at_start = false;
};

std::string json_str(const json& j, const char* key, const std::string& fallback = {}) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : fallback;
}
bool json_bool(const json& j, const char* key, bool fallback) {
  return j.contains(key) && j[key].is_boolean() ? j[key].get<bool>() : fallback;
}

// A "pattern" of tokenizer.json: {"String": s} or {"Regex": r}.
struct Pattern {
  std::string literal;
  std::shared_ptr<Regex> regex;
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const {
    if (regex) return regex->find_all(s);
    std::vector<std::pair<size_t, size_t>> out;
    if (literal.empty()) return out;
    for (size_t pos = s.find(literal); pos != std::string_view::npos; pos = s.find(literal, pos + literal.size()))
      out.emplace_back(pos, pos + literal.size());
    return out;
  }
};

Pattern parse_pattern(const json& j, const std::string& where) {
  Pattern p;
  if (j.is_object() && j.contains("String") && j["String"].is_string()) {
    p.literal = j["String"].get<std::string>();
  } else if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
    p.regex = std::make_shared<Regex>(j["Regex"].get<std::string>());
  } else {
    PS_THROW(ConfigError, "{}: a pattern is neither {{\"String\": ...}} nor {{\"Regex\": ...}}", where);
  }
  return p;
}

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits `piece` at the pattern's matches as the tokenizers library's SplitDelimiterBehavior says.
std::vector<Piece> split_piece(const Piece& piece, const Pattern& pattern, SplitBehavior behavior, bool invert) {
  const std::string& s = piece.text;
  // (begin, end, is_match) covering s
  std::vector<std::tuple<size_t, size_t, bool>> parts;
  size_t pos = 0;
  for (auto [b, e] : pattern.find_all(s)) {
    if (b > pos) parts.emplace_back(pos, b, invert);
    parts.emplace_back(b, e, !invert);
    pos = e;
  }
  if (pos < s.size()) parts.emplace_back(pos, s.size(), invert);
  std::vector<std::pair<size_t, size_t>> ranges;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (auto [b, e, m] : parts)
        if (!m) ranges.emplace_back(b, e);
      break;
    case SplitBehavior::kIsolated:
      for (auto [b, e, m] : parts) ranges.emplace_back(b, e);
      break;
    case SplitBehavior::kContiguous: {
      bool prev_match = false;
      for (auto [b, e, m] : parts) {
        if (m && prev_match && !ranges.empty())
          ranges.back().second = e;
        else
          ranges.emplace_back(b, e);
        prev_match = m;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (auto [b, e, m] : parts) {
        if (m && !ranges.empty() && !prev_match)
          ranges.back().second = e;
        else
          ranges.emplace_back(b, e);
        prev_match = m;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool prev_match = false;
      for (auto [b, e, m] : parts) {
        if (!m && prev_match && !ranges.empty())
          ranges.back().second = e;
        else
          ranges.emplace_back(b, e);
        prev_match = m;
      }
      break;
    }
  }
  std::vector<Piece> out;
  for (auto [b, e] : ranges) out.push_back(Piece{s.substr(b, e - b), piece.at_start && b == 0});
  return out;
}

SplitBehavior parse_behavior(const std::string& name, const std::string& where) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  PS_THROW(ConfigError, "{}: split behavior '{}' is not one pipeswap implements", where, name);
}

using Normalizer = std::function<std::string(std::string)>;
using PreTokenizer = std::function<std::vector<Piece>(std::vector<Piece>)>;
using Decoder = std::function<std::vector<std::string>(std::vector<std::string>)>;

std::string unicode_normalize(const std::string& s, int form, const std::string& where) {
#ifdef PIPESWAP_HAVE_UTF8PROC
  utf8proc_uint8_t* out = nullptr;
  const auto options = static_cast<utf8proc_option_t>(UTF8PROC_STABLE | form);
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()), &out,
                   options);
  PS_CHECK(n >= 0, ConfigError, "{}: utf8proc could not normalise the text ({})", where, utf8proc_errmsg(n));
  std::string result(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  std::free(out);
  return result;
#else
  (void)s;
  (void)form;
  PS_THROW(ConfigError,
           "{}: the tokenizer normalises Unicode, and this pipeswap was built without utf8proc. Install it "
           "(Debian/Ubuntu: apt-get install libutf8proc-dev) and build pipeswap again, or pass token ids (--input)",
           where);
#endif
}

Normalizer parse_normalizer(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = json_str(j, "type");
#ifdef PIPESWAP_HAVE_UTF8PROC
  const int kNFC = UTF8PROC_COMPOSE, kNFD = UTF8PROC_DECOMPOSE;
  const int kNFKC = UTF8PROC_COMPOSE | UTF8PROC_COMPAT, kNFKD = UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
#else
  const int kNFC = 0, kNFD = 0, kNFKC = 0, kNFKD = 0;
#endif
  const std::map<std::string, int> forms = {{"NFC", kNFC}, {"NFD", kNFD}, {"NFKC", kNFKC}, {"NFKD", kNFKD}};
  if (auto it = forms.find(type); it != forms.end()) {
    const int form = it->second;
    return [form, where](std::string s) { return unicode_normalize(s, form, where); };
  }
  if (type == "Prepend") {
    const std::string prefix = json_str(j, "prepend");
    return [prefix](std::string s) { return s.empty() ? s : prefix + s; };
  }
  if (type == "Replace") {
    Pattern p = parse_pattern(j.value("pattern", json()), where);
    const std::string content = json_str(j, "content");
    return [p, content](std::string s) {
      std::string out;
      size_t pos = 0;
      for (auto [b, e] : p.find_all(s)) {
        out.append(s, pos, b - pos);
        out += content;
        pos = e;
      }
      out.append(s, pos, std::string::npos);
      return out;
    };
  }
  if (type == "Sequence") {
    std::vector<Normalizer> steps;
    for (const auto& n : j.value("normalizers", json::array())) steps.push_back(parse_normalizer(n, where));
    return [steps](std::string s) {
      for (const auto& step : steps)
        if (step) s = step(std::move(s));
      return s;
    };
  }
  PS_THROW(ConfigError, "{}: normalizer '{}' is not one pipeswap implements (NFC, NFKC, NFD, NFKD, Prepend, Replace, "
           "Sequence)", where, type);
}

const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

PreTokenizer parse_pre_tokenizer(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = json_str(j, "type");
  if (type == "Sequence") {
    std::vector<PreTokenizer> steps;
    for (const auto& p : j.value("pretokenizers", json::array())) steps.push_back(parse_pre_tokenizer(p, where));
    return [steps](std::vector<Piece> pieces) {
      for (const auto& step : steps)
        if (step) pieces = step(std::move(pieces));
      return pieces;
    };
  }
  if (type == "Split") {
    const Pattern pattern = parse_pattern(j.value("pattern", json()), where);
    const SplitBehavior behavior = parse_behavior(json_str(j, "behavior", "Isolated"), where);
    const bool invert = json_bool(j, "invert", false);
    return [pattern, behavior, invert](std::vector<Piece> pieces) {
      std::vector<Piece> out;
      for (const auto& p : pieces)
        for (auto& q : split_piece(p, pattern, behavior, invert)) out.push_back(std::move(q));
      return out;
    };
  }
  if (type == "ByteLevel") {
    const bool add_prefix_space = json_bool(j, "add_prefix_space", true);
    const bool use_regex = json_bool(j, "use_regex", true);
    std::optional<Pattern> regex;
    if (use_regex) regex = Pattern{{}, std::make_shared<Regex>(kGpt2Regex)};
    return [add_prefix_space, regex](std::vector<Piece> pieces) {
      std::vector<Piece> split;
      for (auto& p : pieces) {
        if (add_prefix_space && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
        if (regex) {
          for (auto& q : split_piece(p, *regex, SplitBehavior::kIsolated, false)) split.push_back(std::move(q));
        } else {
          split.push_back(std::move(p));
        }
      }
      const ByteMap& map = byte_map();
      for (auto& p : split) {
        std::string mapped;
        for (unsigned char b : p.text) mapped += map.to_char[b];
        p.text = std::move(mapped);
      }
      return split;
    };
  }
  if (type == "Metaspace") {
    const std::string replacement = json_str(j, "replacement", "\xE2\x96\x81");
    std::string scheme = json_str(j, "prepend_scheme", "");
    if (scheme.empty()) scheme = json_bool(j, "add_prefix_space", true) ? "always" : "never";
    PS_CHECK(scheme == "always" || scheme == "first" || scheme == "never", ConfigError,
             "{}: Metaspace prepend_scheme '{}' is not always, first or never", where, scheme);
    const bool split = json_bool(j, "split", true);
    const Pattern sep{replacement, nullptr};
    return [replacement, scheme, split, sep](std::vector<Piece> pieces) {
      std::vector<Piece> out;
      for (auto& p : pieces) {
        replace_all(p.text, " ", replacement);
        const bool prepend = scheme == "always" || (scheme == "first" && p.at_start);
        if (prepend && p.text.compare(0, replacement.size(), replacement) != 0) p.text.insert(0, replacement);
        if (split) {
          for (auto& q : split_piece(p, sep, SplitBehavior::kMergedWithNext, false)) out.push_back(std::move(q));
        } else {
          out.push_back(std::move(p));
        }
      }
      return out;
    };
  }
  if (type == "Digits") {
    const bool individual = json_bool(j, "individual_digits", false);
    const Pattern digits{{}, std::make_shared<Regex>(individual ? R"(\p{Nd})" : R"(\p{Nd}+)")};
    return [digits](std::vector<Piece> pieces) {
      std::vector<Piece> out;
      for (const auto& p : pieces)
        for (auto& q : split_piece(p, digits, SplitBehavior::kIsolated, false)) out.push_back(std::move(q));
      return out;
    };
  }
  PS_THROW(ConfigError, "{}: pre_tokenizer '{}' is not one pipeswap implements (Split, ByteLevel, Metaspace, Digits, "
           "Sequence)", where, type);
}

// Strip one character `content` up to `start` times from the front and `stop` times from the back.
std::string strip_chars(const std::string& token, const std::string& content, size_t start, size_t stop) {
  std::vector<std::string> chars = utf8_chars(token);
  size_t b = 0, e = chars.size();
  while (b < e && b < start && chars[b] == content) ++b;
  size_t cut = 0;
  while (e > b && cut < stop && chars[e - 1] == content) {
    --e;
    ++cut;
  }
  std::string out;
  for (size_t i = b; i < e; ++i) out += chars[i];
  return out;
}

Decoder parse_decoder(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = json_str(j, "type");
  if (type == "Sequence") {
    std::vector<Decoder> steps;
    for (const auto& d : j.value("decoders", json::array())) steps.push_back(parse_decoder(d, where));
    return [steps](std::vector<std::string> tokens) {
      for (const auto& step : steps)
        if (step) tokens = step(std::move(tokens));
      return tokens;
    };
  }
  if (type == "ByteLevel") {
    return [](std::vector<std::string> tokens) {
      const ByteMap& map = byte_map();
      std::string bytes;
      for (const auto& t : tokens) {
        std::string mapped;
        bool all = true;
        for (const auto& ch : utf8_chars(t)) {
          auto it = map.to_byte.find(first_code_point(ch));
          if (it == map.to_byte.end()) {
            all = false;
            break;
          }
          mapped.push_back(static_cast<char>(it->second));
        }
        bytes += all ? mapped : t;
      }
      return std::vector<std::string>{utf8_lossy(bytes)};
    };
  }
  if (type == "Replace") {
    const Pattern p = parse_pattern(j.value("pattern", json()), where);
    PS_CHECK(!p.regex, ConfigError, "{}: a Replace decoder with a regex is not one pipeswap implements", where);
    const std::string content = json_str(j, "content");
    return [p, content](std::vector<std::string> tokens) {
      for (auto& t : tokens) replace_all(t, p.literal, content);
      return tokens;
    };
  }
  if (type == "ByteFallback") {
    return [](std::vector<std::string> tokens) {
      std::vector<std::string> out;
      std::string bytes;
      size_t count = 0;
      auto flush = [&] {
        if (count == 0) return;
        if (utf8_lossy(bytes) == bytes) {
          out.push_back(bytes);
        } else {
          for (size_t i = 0; i < count; ++i) out.emplace_back("\xEF\xBF\xBD");
        }
        bytes.clear();
        count = 0;
      };
      for (auto& t : tokens) {
        const bool byte = t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
                          std::isxdigit(static_cast<unsigned char>(t[3])) &&
                          std::isxdigit(static_cast<unsigned char>(t[4]));
        if (byte) {
          bytes.push_back(static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16)));
          ++count;
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      return out;
    };
  }
  if (type == "Fuse") {
    return [](std::vector<std::string> tokens) {
      std::string all;
      for (const auto& t : tokens) all += t;
      return std::vector<std::string>{all};
    };
  }
  if (type == "Strip") {
    const std::string content = json_str(j, "content", " ");
    const size_t start = j.value("start", 0), stop = j.value("stop", 0);
    return [content, start, stop](std::vector<std::string> tokens) {
      for (auto& t : tokens) t = strip_chars(t, content, start, stop);
      return tokens;
    };
  }
  if (type == "Metaspace") {
    const std::string replacement = json_str(j, "replacement", "\xE2\x96\x81");
    std::string scheme = json_str(j, "prepend_scheme", "");
    if (scheme.empty()) scheme = json_bool(j, "add_prefix_space", true) ? "always" : "never";
    return [replacement, scheme](std::vector<std::string> tokens) {
      for (size_t i = 0; i < tokens.size(); ++i) {
        replace_all(tokens[i], replacement, " ");
        if (i == 0 && scheme != "never" && !tokens[i].empty() && tokens[i][0] == ' ') tokens[i].erase(0, 1);
      }
      return tokens;
    };
  }
  PS_THROW(ConfigError, "{}: decoder '{}' is not one pipeswap implements (ByteLevel, Metaspace, Replace, ByteFallback, "
           "Fuse, Strip, Sequence)", where, type);
}

// ---- BPE --------------------------------------------------------------------------------------------------

struct Bpe {
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<std::string> id_to_token;
  // (left id, right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int64_t, int64_t>> merges;
  bool ignore_merges = false;
  bool byte_fallback = false;
  bool fuse_unk = false;
  std::optional<int64_t> unk;

  static uint64_t key(int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(b); }

  void add_merge(const std::string& a, const std::string& b, int64_t rank, const std::string& where) {
    auto ia = vocab.find(a), ib = vocab.find(b), im = vocab.find(a + b);
    PS_CHECK(ia != vocab.end() && ib != vocab.end() && im != vocab.end(), ConfigError,
             "{}: merge '{} {}' names a token the vocabulary lacks", where, a, b);
    merges.emplace(key(ia->second, ib->second), std::make_pair(rank, im->second));
  }

  void tokenize(const std::string& word, std::vector<int64_t>& out) const {
    if (word.empty()) return;
    if (ignore_merges) {
      if (auto it = vocab.find(word); it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    std::vector<int64_t> symbols;
    bool last_unk = false;
    for (const auto& ch : utf8_chars(word)) {
      if (auto it = vocab.find(ch); it != vocab.end()) {
        symbols.push_back(it->second);
        last_unk = false;
        continue;
      }
      if (byte_fallback) {
        std::vector<int64_t> bytes;
        for (unsigned char b : ch) {
          auto it = vocab.find(fmt::format("<0x{:02X}>", b));
          if (it == vocab.end()) break;
          bytes.push_back(it->second);
        }
        if (bytes.size() == ch.size()) {
          symbols.insert(symbols.end(), bytes.begin(), bytes.end());
          last_unk = false;
          continue;
        }
      }
      if (unk) {
        if (!(fuse_unk && last_unk)) symbols.push_back(*unk);
        last_unk = true;
      }
    }
    while (symbols.size() > 1) {
      int64_t best_rank = -1;
      size_t best = 0;
      int64_t best_id = 0;
      for (size_t i = 0; i + 1 < symbols.size(); ++i) {
        auto it = merges.find(key(symbols[i], symbols[i + 1]));
        if (it != merges.end() && (best_rank < 0 || it->second.first < best_rank)) {
          best_rank = it->second.first;
          best = i;
          best_id = it->second.second;
        }
      }
      if (best_rank < 0) break;
      symbols[best] = best_id;
      symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    }
    out.insert(out.end(), symbols.begin(), symbols.end());
  }
};

struct AddedToken {
  std::string content;
  int64_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  PS_CHECK(in.good(), ConfigError, "cannot read '{}': check its permissions", path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

json read_json(const std::string& path) {
  try {
    return json::parse(read_text(path));
  } catch (const json::exception& e) {
    PS_THROW(ConfigError, "'{}' is not valid JSON ({}): re-download the checkpoint's tokenizer files", path, e.what());
  }
}

// A special token's text in tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> token_text(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key)) return std::nullopt;
  const auto& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

bool is_word_char(char32_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}

// The code point that ends at byte `end` of s (valid UTF-8).
char32_t last_code_point(std::string_view s, size_t end) {
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  return first_code_point(s.substr(b, end - b));
}

}  // namespace

struct TextTokenizer::Impl {
  std::string dir;
  std::string kind;
  Bpe bpe;
  std::vector<AddedToken> added;  // longest content first
  std::unordered_map<int64_t, size_t> added_by_id;
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  Decoder decoder;
  // The post-processor's single template: ids before and after the sequence.
  std::vector<int64_t> prefix, suffix;
  bool clean_up_spaces = false;
  std::optional<int64_t> bos, eos;
  int64_t vocab_size = 0;

  std::optional<int64_t> id_of(std::string_view token) const {
    for (const auto& a : added)
      if (a.content == token) return a.id;
    if (auto it = bpe.vocab.find(std::string(token)); it != bpe.vocab.end()) return it->second;
    return std::nullopt;
  }

  void encode_segment(std::string_view text, bool at_start, std::vector<int64_t>& ids) const {
    if (text.empty()) return;
    std::string normalized(text);
    if (normalizer) normalized = normalizer(std::move(normalized));
    if (normalized.empty()) return;
    std::vector<Piece> pieces{Piece{std::move(normalized), at_start}};
    if (pre_tokenizer) pieces = pre_tokenizer(std::move(pieces));
    for (const auto& p : pieces) bpe.tokenize(p.text, ids);
  }

  void finish() {
    std::stable_sort(added.begin(), added.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    for (size_t i = 0; i < added.size(); ++i) {
      added_by_id[added[i].id] = i;
      vocab_size = std::max(vocab_size, added[i].id + 1);
    }
    vocab_size = std::max(vocab_size, static_cast<int64_t>(bpe.id_to_token.size()));
  }
};

namespace {

std::vector<int64_t> template_ids(const json& items, const json& specials, bool before, const std::string& where) {
  std::vector<int64_t> out;
  bool seen_sequence = false;
  for (const auto& item : items) {
    if (item.contains("Sequence")) {
      PS_CHECK(json_str(item["Sequence"], "id", "A") == "A", ConfigError,
               "{}: the single template names sequence B", where);
      seen_sequence = true;
      continue;
    }
    PS_CHECK(item.contains("SpecialToken"), ConfigError, "{}: a template item is neither Sequence nor SpecialToken",
             where);
    if (seen_sequence == before) continue;
    const std::string name = json_str(item["SpecialToken"], "id");
    PS_CHECK(specials.contains(name) && specials[name].contains("ids"), ConfigError,
             "{}: the template's special token '{}' has no ids", where, name);
    for (const auto& id : specials[name]["ids"]) out.push_back(id.get<int64_t>());
  }
  return out;
}

void parse_post_processor(const json& j, TextTokenizer::Impl& impl, const std::string& where) {
  if (j.is_null()) return;
  const std::string type = json_str(j, "type");
  if (type == "Sequence") {
    for (const auto& p : j.value("processors", json::array())) parse_post_processor(p, impl, where);
    return;
  }
  if (type == "ByteLevel") return;  // offsets only
  if (type == "TemplateProcessing") {
    const json specials = j.value("special_tokens", json::object());
    impl.prefix = template_ids(j.value("single", json::array()), specials, true, where);
    impl.suffix = template_ids(j.value("single", json::array()), specials, false, where);
    return;
  }
  PS_THROW(ConfigError, "{}: post_processor '{}' is not one pipeswap implements (TemplateProcessing, ByteLevel, "
           "Sequence)", where, type);
}

std::unique_ptr<TextTokenizer::Impl> open_tokenizer_json(const std::string& dir, const json& config) {
  const std::string path = dir + "/tokenizer.json";
  const json tj = read_json(path);
  auto impl = std::make_unique<TextTokenizer::Impl>();
  impl->kind = "BPE (tokenizer.json)";
  try {
    const json& model = tj.at("model");
    const std::string type = json_str(model, "type", "BPE");
    PS_CHECK(type == "BPE", ConfigError, "{}: model type '{}' is not one pipeswap implements (BPE)", path, type);
    PS_CHECK(model.value("continuing_subword_prefix", json()).is_null() &&
                 model.value("end_of_word_suffix", json()).is_null() && model.value("dropout", json()).is_null(),
             ConfigError, "{}: BPE with continuing_subword_prefix, end_of_word_suffix or dropout is not implemented",
             path);
    Bpe& bpe = impl->bpe;
    for (const auto& [tok, id] : model.at("vocab").items()) {
      const int64_t i = id.get<int64_t>();
      bpe.vocab[tok] = i;
      if (static_cast<int64_t>(bpe.id_to_token.size()) <= i) bpe.id_to_token.resize(i + 1);
      bpe.id_to_token[i] = tok;
    }
    int64_t rank = 0;
    for (const auto& m : model.value("merges", json::array())) {
      if (m.is_array()) {
        bpe.add_merge(m.at(0).get<std::string>(), m.at(1).get<std::string>(), rank++, path);
      } else {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ', 1);
        PS_CHECK(sp != std::string::npos, ConfigError, "{}: merge '{}' is not two tokens", path, s);
        bpe.add_merge(s.substr(0, sp), s.substr(sp + 1), rank++, path);
      }
    }
    bpe.ignore_merges = json_bool(model, "ignore_merges", false);
    bpe.byte_fallback = json_bool(model, "byte_fallback", false);
    bpe.fuse_unk = json_bool(model, "fuse_unk", false);
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
      auto it = bpe.vocab.find(model["unk_token"].get<std::string>());
      if (it != bpe.vocab.end()) bpe.unk = it->second;
    }
    for (const auto& a : tj.value("added_tokens", json::array())) {
      AddedToken t;
      t.content = a.at("content").get<std::string>();
      t.id = a.at("id").get<int64_t>();
      t.special = json_bool(a, "special", false);
      t.lstrip = json_bool(a, "lstrip", false);
      t.rstrip = json_bool(a, "rstrip", false);
      t.single_word = json_bool(a, "single_word", false);
      PS_CHECK(!t.content.empty(), ConfigError, "{}: added token {} is empty", path, t.id);
      impl->added.push_back(std::move(t));
    }
    impl->normalizer = parse_normalizer(tj.value("normalizer", json()), path);
    impl->pre_tokenizer = parse_pre_tokenizer(tj.value("pre_tokenizer", json()), path);
    impl->decoder = parse_decoder(tj.value("decoder", json()), path);
    parse_post_processor(tj.value("post_processor", json()), *impl, path);
  } catch (const json::exception& e) {
    PS_THROW(ConfigError, "'{}' is not as the tokenizers library writes it ({}): re-download it", path, e.what());
  }
  impl->clean_up_spaces = json_bool(config, "clean_up_tokenization_spaces", false);
  return impl;
}

// transformers' generate_merges (tokenization_utils_base.py): for every piece in id order, each split of it into two
// pieces of the vocabulary; ordered by the piece's id, then the left part's length in characters.
std::unique_ptr<TextTokenizer::Impl> open_tokenizer_model(const std::string& dir, const json& config) {
  const std::string path = dir + "/tokenizer.model";
  SentencePieceModel sp(path);
  auto impl = std::make_unique<TextTokenizer::Impl>();
  impl->kind = "SentencePiece BPE (tokenizer.model)";
  Bpe& bpe = impl->bpe;
  const int64_t n = sp.piece_size();
  for (int64_t i = 0; i < n; ++i) {
    std::string piece = sp.id_to_piece(i);
    bpe.vocab.emplace(piece, i);
    bpe.id_to_token.push_back(piece);
    const auto kind = sp.kind(i);
    if (kind == SentencePieceModel::PieceKind::kControl || kind == SentencePieceModel::PieceKind::kUnknown ||
        kind == SentencePieceModel::PieceKind::kUserDefined)
      impl->added.push_back(AddedToken{piece, i, kind != SentencePieceModel::PieceKind::kUserDefined});
  }
  struct Merge {
    int64_t id;
    size_t left_len;
    std::string left, right;
  };
  std::vector<Merge> merges;
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<std::string> chars = utf8_chars(bpe.id_to_token[i]);
    std::string left;
    for (size_t k = 1; k < chars.size(); ++k) {
      left += chars[k - 1];
      const std::string right = bpe.id_to_token[i].substr(left.size());
      if (bpe.vocab.count(left) && bpe.vocab.count(right)) merges.push_back(Merge{i, k, left, right});
    }
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    return a.id != b.id ? a.id < b.id : a.left_len < b.left_len;
  });
  for (size_t r = 0; r < merges.size(); ++r) {
    const uint64_t k = Bpe::key(bpe.vocab[merges[r].left], bpe.vocab[merges[r].right]);
    bpe.merges.emplace(k, std::make_pair(static_cast<int64_t>(r), merges[r].id));
  }
  bpe.byte_fallback = true;
  bpe.fuse_unk = true;

  // LlamaTokenizer's pipeline: Metaspace (a "▁" before the first word, or every segment when legacy), byte
  // fallback, <s> first; add_prefix_space false drops the "▁" and the decoder's strip.
  const bool add_prefix_space = json_bool(config, "add_prefix_space", true);
  const bool legacy = json_bool(config, "legacy", false);
  const std::string scheme = !add_prefix_space ? "never" : legacy ? "always" : "first";
  impl->pre_tokenizer = parse_pre_tokenizer(
      json{{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", scheme}, {"split", false}},
      path);
  json decoders = json::array({json{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                               json{{"type", "ByteFallback"}}, json{{"type", "Fuse"}}});
  if (add_prefix_space) decoders.push_back(json{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  impl->decoder = parse_decoder(json{{"type", "Sequence"}, {"decoders", decoders}}, path);
  const auto bos = token_text(config, "bos_token").value_or("<s>");
  const auto eos = token_text(config, "eos_token").value_or("</s>");
  if (json_bool(config, "add_bos_token", true)) {
    auto it = bpe.vocab.find(bos);
    PS_CHECK(it != bpe.vocab.end(), ConfigError, "{}: bos_token '{}' is not in tokenizer.model", path, bos);
    impl->prefix.push_back(it->second);
  }
  if (json_bool(config, "add_eos_token", false)) {
    auto it = bpe.vocab.find(eos);
    PS_CHECK(it != bpe.vocab.end(), ConfigError, "{}: eos_token '{}' is not in tokenizer.model", path, eos);
    impl->suffix.push_back(it->second);
  }
  impl->clean_up_spaces = json_bool(config, "clean_up_tokenization_spaces", false);
  return impl;
}

}  // namespace

bool TextTokenizer::present(const std::string& dir) {
  return is_regular_file(dir + "/tokenizer.json") || is_regular_file(dir + "/tokenizer.model");
}

std::shared_ptr<const TextTokenizer> TextTokenizer::open(const std::string& dir) {
  const json config =
      is_regular_file(dir + "/tokenizer_config.json") ? read_json(dir + "/tokenizer_config.json") : json::object();
  std::unique_ptr<Impl> impl;
  if (is_regular_file(dir + "/tokenizer.json")) {
    impl = open_tokenizer_json(dir, config);
  } else if (is_regular_file(dir + "/tokenizer.model")) {
    impl = open_tokenizer_model(dir, config);
  } else {
    PS_THROW(ConfigError,
             "'{}' has neither tokenizer.json nor tokenizer.model: pipeswap reads the checkpoint's own tokenizer "
             "files (download them with the weights), or pass token ids (--input ids.json)",
             dir);
  }
  impl->dir = dir;
  impl->finish();
  if (auto b = token_text(config, "bos_token")) impl->bos = impl->id_of(*b);
  if (auto e = token_text(config, "eos_token")) impl->eos = impl->id_of(*e);
  log().debug("tokenizer '{}': {}, {} tokens, {} added", dir, impl->kind, impl->vocab_size, impl->added.size());
  return std::shared_ptr<const TextTokenizer>(new TextTokenizer(std::move(impl)));
}

TextTokenizer::TextTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TextTokenizer::~TextTokenizer() = default;

std::vector<int64_t> TextTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  check_utf8(text);
  const Impl& im = *impl_;
  std::vector<int64_t> ids;
  if (add_special_tokens) ids = im.prefix;
  size_t start = 0;  // the text not yet encoded begins here
  size_t i = 0;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (const auto& a : im.added) {
      if (text.compare(i, a.content.size(), a.content) != 0) continue;
      if (a.single_word) {
        const size_t end = i + a.content.size();
        if ((i > 0 && is_word_char(last_code_point(text, i))) ||
            (end < text.size() && is_word_char(first_code_point(text.substr(end)))))
          continue;
      }
      hit = &a;
      break;
    }
    if (hit == nullptr) {
      i += std::max<size_t>(1, utf8_valid_len(text, i));
      continue;
    }
    size_t before = i;
    if (hit->lstrip) {
      while (before > start && is_white_space(last_code_point(text, before))) {
        const char32_t c = last_code_point(text, before);
        std::string enc;
        append_utf8(enc, c);
        before -= enc.size();
      }
    }
    im.encode_segment(text.substr(start, before - start), start == 0, ids);
    ids.push_back(hit->id);
    i += hit->content.size();
    if (hit->rstrip) {
      while (i < text.size() && is_white_space(first_code_point(text.substr(i)))) i += utf8_valid_len(text, i);
    }
    start = i;
  }
  im.encode_segment(text.substr(start), start == 0, ids);
  if (add_special_tokens) ids.insert(ids.end(), im.suffix.begin(), im.suffix.end());
  return ids;
}

std::string TextTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  const Impl& im = *impl_;
  std::vector<std::string> tokens;
  for (int64_t id : ids) {
    if (auto it = im.added_by_id.find(id); it != im.added_by_id.end()) {
      const AddedToken& a = im.added[it->second];
      if (!(skip_special_tokens && a.special)) tokens.push_back(a.content);
    } else if (id >= 0 && id < static_cast<int64_t>(im.bpe.id_to_token.size())) {
      tokens.push_back(im.bpe.id_to_token[id]);
    }
  }
  std::string text;
  if (im.decoder) {
    for (const auto& t : im.decoder(std::move(tokens))) text += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) text += (i > 0 ? " " : "") + tokens[i];
  }
  if (im.clean_up_spaces) {
    for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
             {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"}, {" 'm", "'m"},
             {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}})
      replace_all(text, from, to);
  }
  return text;
}

std::optional<int64_t> TextTokenizer::token_id(std::string_view token) const { return impl_->id_of(token); }

bool TextTokenizer::is_special(int64_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}

std::vector<std::string> TextTokenizer::special_tokens() const {
  std::vector<std::string> out;
  auto add = [&](const std::string& t) {
    if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
  };
  for (std::optional<int64_t> id : {impl_->bos, impl_->eos})
    if (id && *id >= 0 && *id < static_cast<int64_t>(impl_->bpe.id_to_token.size()))
      add(impl_->bpe.id_to_token[static_cast<size_t>(*id)]);
  std::vector<const AddedToken*> by_id;
  for (const auto& a : impl_->added)
    if (a.special) by_id.push_back(&a);
  std::sort(by_id.begin(), by_id.end(), [](const AddedToken* a, const AddedToken* b) { return a->id < b->id; });
  for (const AddedToken* a : by_id) add(a->content);
  return out;
}

std::optional<int64_t> TextTokenizer::stop_token_id(std::string_view name) const {
  if (name.empty()) return std::nullopt;
  if (auto id = impl_->id_of(name)) return id;
  std::vector<int64_t> ids;
  try {
    ids = encode(name, /*add_special_tokens=*/false);
  } catch (const ConfigError&) {
    return std::nullopt;  // not UTF-8: no text of this tokenizer
  }
  if (ids.size() == 1) return ids[0];
  return std::nullopt;
}

std::optional<int64_t> TextTokenizer::bos_id() const { return impl_->bos; }
std::optional<int64_t> TextTokenizer::eos_id() const { return impl_->eos; }
int64_t TextTokenizer::vocab_size() const { return impl_->vocab_size; }
const std::string& TextTokenizer::kind() const { return impl_->kind; }

TextStreamer::TextStreamer(std::shared_ptr<const TextTokenizer> tokenizer, bool skip_special_tokens)
    : tokenizer_(std::move(tokenizer)), skip_special_tokens_(skip_special_tokens) {}

std::string TextStreamer::push(int64_t id) {
  ids_.push_back(id);
  const std::string text = tokenizer_->decode(ids_, skip_special_tokens_);
  // Hold back a trailing replacement character: the next ids may complete it.
  size_t end = text.size();
  while (end >= 3 && text.compare(end - 3, 3, "\xEF\xBF\xBD") == 0) end -= 3;
  if (end <= emitted_) return {};
  std::string out = text.substr(emitted_, end - emitted_);
  emitted_ = end;
  return out;
}

std::string TextStreamer::finish() {
  const std::string text = tokenizer_->decode(ids_, skip_special_tokens_);
  std::string out = text.size() > emitted_ ? text.substr(emitted_) : std::string();
  emitted_ = text.size();
  return out;
}

}  // namespace pipeswap::models
