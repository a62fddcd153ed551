#include "pipeswap/core/safetensors_header.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <limits>

#include "pipeswap/core/error.h"
#include "pipeswap/core/shape.h"

namespace pipeswap {
namespace {

using nlohmann::json;

constexpr const char* kCheckpointFix = "re-download or re-save the checkpoint";

// The format fixes the length prefix as little-endian, whatever the host is.
uint64_t decode_le64(const unsigned char* b) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
  return v;
}

// A JSON value from the file for an error message: its text when it is flat and short, else its type
// and size. Never dump() such a value whole: a hostile header nests arrays deep enough for the
// recursive serializer to overflow the stack (found by tests/fuzz), and may be megabytes long.
std::string describe(const json& v) {
  auto flat = [](const json& x) {
    return x.is_primitive() ||
           (x.is_array() && std::none_of(x.begin(), x.end(), [](const json& e) { return e.is_structured(); }));
  };
  const bool shallow = flat(v) || (v.is_object() && std::all_of(v.begin(), v.end(), flat));
  if (!shallow) return fmt::format("{} of {} entries", v.type_name(), v.size());
  std::string text = v.dump();
  constexpr size_t kMaxText = 200;
  if (text.size() > kMaxText) text = text.substr(0, kMaxText) + "...";
  return text;
}

std::string known_dtypes() {
  std::string out;
  for (int d = static_cast<int>(DType::F64); d <= static_cast<int>(DType::F8_E5M2); ++d) {
    if (!out.empty()) out += ", ";
    out += dtype_name(static_cast<DType>(d));
  }
  return out;
}

// A JSON value that is an integer >= 0 and fits in uint64 (negative ones parse as number_integer).
bool as_uint(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

TensorInfo parse_entry(const std::string& path, const std::string& name, const json& e) {
  PS_CHECK(e.is_object(), CheckpointError,
           "safetensors file '{}': header entry for tensor '{}' is not an object ({}): {}", path, name, describe(e),
           kCheckpointFix);
  TensorInfo info;
  info.name = name;

  auto dt = e.find("dtype");
  PS_CHECK(dt != e.end() && dt->is_string(), CheckpointError,
           "safetensors file '{}': tensor '{}' has no \"dtype\" string in its header entry {}: {}", path, name,
           describe(e), kCheckpointFix);
  const std::string dtype_word = dt->get<std::string>();
  auto dtype = dtype_from_safetensors(dtype_word);
  PS_CHECK(dtype.has_value(), CheckpointError,
           "safetensors file '{}': tensor '{}' has unknown dtype '{}' (known: {}): convert the checkpoint to one "
           "of the known dtypes",
           path, name, dtype_word, known_dtypes());
  info.dtype = *dtype;

  auto sh = e.find("shape");
  PS_CHECK(sh != e.end() && sh->is_array(), CheckpointError,
           "safetensors file '{}': tensor '{}' has no \"shape\" array in its header entry {}: {}", path, name,
           describe(e), kCheckpointFix);
  for (const json& d : *sh) {
    uint64_t dim = 0;
    PS_CHECK(as_uint(d, &dim) && dim <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), CheckpointError,
             "safetensors file '{}': tensor '{}' has shape {} with an entry that is not a non-negative integer: {}",
             path, name, describe(*sh), kCheckpointFix);
    info.shape.push_back(static_cast<int64_t>(dim));
  }

  auto off = e.find("data_offsets");
  uint64_t begin = 0, end = 0;
  PS_CHECK(
      off != e.end() && off->is_array() && off->size() == 2 && as_uint((*off)[0], &begin) && as_uint((*off)[1], &end),
      CheckpointError,
      "safetensors file '{}': tensor '{}' needs \"data_offsets\" as [begin, end] of two non-negative integers, "
      "got {}: {}",
      path, name, off == e.end() ? std::string("nothing") : describe(*off), kCheckpointFix);
  PS_CHECK(begin <= end, CheckpointError,
           "safetensors file '{}': tensor '{}' has data_offsets [{}, {}] with begin after end: {}", path, name, begin,
           end, kCheckpointFix);
  info.begin = begin;
  info.end = end;

  // numel * element size must equal the byte range. A zero dimension makes the product zero whatever
  // the others are; otherwise multiply with overflow checks, since the shape comes from the file.
  const bool any_zero = std::any_of(info.shape.begin(), info.shape.end(), [](int64_t d) { return d == 0; });
  uint64_t bytes = dtype_size(info.dtype);
  bool overflow = false;
  if (any_zero) {
    bytes = 0;
  } else {
    for (int64_t d : info.shape) overflow = overflow || __builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes);
  }
  PS_CHECK(!overflow && bytes == end - begin, CheckpointError,
           "safetensors file '{}': shape/bytes mismatch for tensor '{}': shape {} of {} needs {} bytes, but "
           "data_offsets [{}, {}] hold {}: {}",
           path, name, shape_str(info.shape), dtype_name(info.dtype),
           overflow ? std::string("more than 2^64") : std::to_string(bytes), begin, end, end - begin, kCheckpointFix);
  return info;
}

}  // namespace

int64_t TensorInfo::numel() const {
  // A zero dimension makes it zero whatever the others are, and they may be huge: the header check
  // bounds only the product of a shape without zeros (by the byte range, so it fits in int64).
  if (std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d == 0; })) return 0;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

uint64_t safetensors_header_length(const std::string& path, const unsigned char (&prefix)[8], uint64_t file_size) {
  const uint64_t header_len = decode_le64(prefix);
  PS_CHECK(header_len <= kMaxSafetensorsHeader, CheckpointError,
           "safetensors file '{}' claims a {}-byte JSON header, more than the {}-byte limit: the file is corrupt or "
           "not safetensors; {}",
           path, header_len, kMaxSafetensorsHeader, kCheckpointFix);
  PS_CHECK(file_size >= 8 && header_len <= file_size - 8, CheckpointError,
           "safetensors file '{}': header longer than the file ({} header bytes, but the file is {} bytes): the file "
           "is truncated; {}",
           path, header_len, file_size, kCheckpointFix);
  return header_len;
}

SafetensorsHeader parse_safetensors_header(const std::string& path, std::string_view text, uint64_t data_size) {
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& e) {
    PS_THROW(CheckpointError, "safetensors file '{}': the header is not valid JSON ({}): {}", path, e.what(),
             kCheckpointFix);
  }
  PS_CHECK(header.is_object(), CheckpointError,
           "safetensors file '{}': the header is JSON but not an object (it is {}): {}", path, header.type_name(),
           kCheckpointFix);

  SafetensorsHeader out;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      PS_CHECK(entry.is_object(), CheckpointError,
               "safetensors file '{}': \"__metadata__\" must be an object of strings, got {}: {}", path,
               entry.type_name(), kCheckpointFix);
      for (const auto& [key, value] : entry.items()) {
        PS_CHECK(value.is_string(), CheckpointError,
                 "safetensors file '{}': \"__metadata__\" entry '{}' is {}, not a string: {}", path, key,
                 value.type_name(), kCheckpointFix);
        out.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    TensorInfo info = parse_entry(path, name, entry);
    PS_CHECK(info.end <= data_size, CheckpointError,
             "safetensors file '{}' is truncated: tensor '{}' needs data bytes [{}, {}) but the data section holds "
             "only {} bytes: {}",
             path, name, info.begin, info.end, data_size, kCheckpointFix);
    out.tensors.push_back(std::move(info));
  }

  // Sorted by offset (empty tensors first at a tie), overlaps show up between neighbours.
  std::sort(out.tensors.begin(), out.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < out.tensors.size(); ++i) {
    const TensorInfo& prev = out.tensors[i - 1];
    const TensorInfo& cur = out.tensors[i];
    PS_CHECK(prev.end <= cur.begin, CheckpointError,
             "safetensors file '{}': tensors '{}' [{}, {}) and '{}' [{}, {}) have overlapping data_offsets: {}", path,
             prev.name, prev.begin, prev.end, cur.name, cur.begin, cur.end, kCheckpointFix);
  }
  return out;
}

}  // namespace pipeswap
