// Output kinds, frame conversions and the PNG writer (the MP4 writer is mp4.cpp).
#include "pipeswap/pipeline/video_output.h"

#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#ifdef PIPESWAP_HAVE_ZLIB
#include <zlib.h>
#endif

#include "pipeswap/core/error.h"
#include "pipeswap/core/files.h"
#include "pipeswap/core/weights.h"

namespace pipeswap::pipeline {
namespace {

namespace fs = std::filesystem;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The CRC-32 of PNG chunks (ISO 3309, reflected, polynomial 0xEDB88320), table-driven.
uint32_t crc32_of(const uint8_t* data, size_t n, uint32_t crc = 0) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

void put_u32(std::string& out, uint32_t v) {
  const char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                     static_cast<char>(v)};
  out.append(b, 4);
}

uint32_t get_u32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

void put_chunk(std::string& out, const char type[4], const std::string& data) {
  put_u32(out, static_cast<uint32_t>(data.size()));
  std::string body(type, 4);
  body += data;
  out += body;
  put_u32(out, crc32_of(reinterpret_cast<const uint8_t*>(body.data()), body.size()));
}

int paeth(int a, int b, int c) {
  const int p = a + b - c;
  const int pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  if (pa <= pb && pa <= pc) return a;
  return pb <= pc ? b : c;
}

// A zlib stream of `raw`: deflate where zlib is there, else stored blocks (RFC 1950/1951) with our adler-32.
std::string zlib_stream(const std::string& raw) {
#ifdef PIPESWAP_HAVE_ZLIB
  uLongf size = compressBound(static_cast<uLong>(raw.size()));
  std::string out(size, '\0');
  const int rc = compress2(reinterpret_cast<Bytef*>(out.data()), &size, reinterpret_cast<const Bytef*>(raw.data()),
                           static_cast<uLong>(raw.size()), Z_DEFAULT_COMPRESSION);
  PS_CHECK(rc == Z_OK, IoError, "zlib could not compress a PNG image (error {})", rc);
  out.resize(size);
  return out;
#else
  std::string out("\x78\x01", 2);
  size_t at = 0;
  do {
    const size_t n = std::min<size_t>(raw.size() - at, 65535);
    const bool last = at + n == raw.size();
    out += static_cast<char>(last ? 1 : 0);
    const uint16_t len = static_cast<uint16_t>(n), nlen = static_cast<uint16_t>(~len);
    out += static_cast<char>(len & 0xFF);
    out += static_cast<char>(len >> 8);
    out += static_cast<char>(nlen & 0xFF);
    out += static_cast<char>(nlen >> 8);
    out.append(raw, at, n);
    at += n;
  } while (at < raw.size());
  uint32_t a = 1, b = 0;
  for (unsigned char c : raw) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  put_u32(out, (b << 16) | a);
  return out;
#endif
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  PS_CHECK(in.good(), IoError, "cannot read '{}'", path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

OutputKind output_kind(const std::string& path) {
  if (ends_with(path, ".mp4")) return OutputKind::kMp4;
  if (ends_with(path, ".safetensors")) return OutputKind::kLatents;
  if (ends_with(path, "/") || fs::is_directory(path)) return OutputKind::kFrames;
  PS_THROW(ConfigError,
           "--output {}: name a video (NAME.mp4), a folder for PNG frames (DIR/, with the slash), or NAME.safetensors "
           "for the final latents without decoding",
           path);
}

bool mp4_available() {
#ifdef PIPESWAP_HAVE_FFMPEG
  return true;
#else
  return false;
#endif
}

void check_output(const std::string& path, OutputKind kind) {
  switch (kind) {
    case OutputKind::kMp4:
      PS_CHECK(mp4_available(), ConfigError,
               "--output {}: this pipeswap was built without FFmpeg's libraries (libavcodec, libavformat, libswscale), "
               "so it cannot write MP4. Write PNG frames instead (--output frames/; then e.g. `ffmpeg -framerate 16 -i "
               "frames/%04d.png -c:v libx264 -pix_fmt yuv420p video.mp4`), or install them (Debian: libavcodec-dev "
               "libavformat-dev libswscale-dev) and rebuild",
               path);
      check_writable_path(path);
      break;
    case OutputKind::kLatents:
      check_writable_path(path);
      break;
    case OutputKind::kFrames: {
      std::error_code ec;
      fs::create_directories(path, ec);
      PS_CHECK(fs::is_directory(path), IoError, "cannot write PNG frames into {}: it cannot be made a folder ({})",
               path, ec ? ec.message() : "a file has that name");
      PS_CHECK(::access(path.c_str(), W_OK) == 0, IoError, "cannot write PNG frames into {}: it is not writable",
               path);
      break;
    }
  }
}

std::string sample_output(const std::string& path, OutputKind kind, int sample, int samples) {
  if (samples == 1 || kind == OutputKind::kLatents) return path;
  if (kind == OutputKind::kFrames) return (fs::path(path) / std::to_string(sample)).string() + "/";
  return path.substr(0, path.size() - 4) + "-" + std::to_string(sample) + ".mp4";
}

torch::Tensor frames_to_unit(const torch::Tensor& frames) {
  PS_CHECK(frames.dim() == 5 && frames.size(1) == 3, ConfigError, "frames must be [B, 3, F, H, W], got {}",
           shape_str(frames));
  return (frames.to(torch::kCPU, torch::kFloat32) * 0.5 + 0.5).clamp(0, 1).permute({0, 2, 3, 4, 1}).contiguous();
}

torch::Tensor unit_to_u8(const torch::Tensor& unit) { return (unit * 255).round().to(torch::kUInt8); }

void write_png(const std::string& path, const torch::Tensor& rgb) {
  PS_CHECK(rgb.dim() == 3 && rgb.size(2) == 3 && rgb.scalar_type() == torch::kUInt8, ConfigError,
           "a PNG frame must be uint8 [H, W, 3], got {} {}", c10::toString(rgb.scalar_type()), shape_str(rgb));
  const torch::Tensor px = rgb.to(torch::kCPU).contiguous();
  const int64_t h = px.size(0), w = px.size(1), row = 3 * w;
  const uint8_t* src = px.data_ptr<uint8_t>();
  // Each scanline Paeth-filtered (type 4): what most encoders pick for natural images.
  std::string raw;
  raw.reserve(static_cast<size_t>(h * (row + 1)));
  for (int64_t y = 0; y < h; ++y) {
    raw += static_cast<char>(4);
    const uint8_t* cur = src + y * row;
    const uint8_t* up = y > 0 ? cur - row : nullptr;
    for (int64_t x = 0; x < row; ++x) {
      const int a = x >= 3 ? cur[x - 3] : 0, b = up ? up[x] : 0, c = (up && x >= 3) ? up[x - 3] : 0;
      raw += static_cast<char>(static_cast<uint8_t>(cur[x] - paeth(a, b, c)));
    }
  }
  std::string png("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  put_u32(ihdr, static_cast<uint32_t>(w));
  put_u32(ihdr, static_cast<uint32_t>(h));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8 bits, RGB, deflate, adaptive filtering, no interlace
  put_chunk(png, "IHDR", ihdr);
  put_chunk(png, "IDAT", zlib_stream(raw));
  put_chunk(png, "IEND", "");
  write_file_atomically(path, "PNG frame", "check that the folder is writable and has free space",
                        [&](int fd) { return write_full(fd, png.data(), png.size()); });
}

std::vector<std::string> write_png_frames(const std::string& dir, const torch::Tensor& frames) {
  PS_CHECK(frames.dim() == 4, ConfigError, "PNG frames must be uint8 [F, H, W, 3], got {}", shape_str(frames));
  std::error_code ec;
  fs::create_directories(dir, ec);
  std::vector<std::string> files;
  for (int64_t f = 0; f < frames.size(0); ++f) {
    files.push_back((fs::path(dir) / fmt::format("{:04d}.png", f)).string());
    write_png(files.back(), frames[f]);
  }
  return files;
}

torch::Tensor read_png(const std::string& path) {
  const std::string bytes = read_file(path);
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  PS_CHECK(bytes.size() > 8 && std::memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0, IoError, "'{}' is not a PNG file", path);
  size_t at = 8;
  uint32_t w = 0, h = 0;
  int channels = 0;
  std::string idat;
  while (at + 12 <= bytes.size()) {
    const uint32_t n = get_u32(p + at);
    PS_CHECK(at + 12 + n <= bytes.size(), IoError, "'{}': a chunk runs past the end of the file", path);
    const std::string type(bytes, at + 4, 4);
    PS_CHECK(crc32_of(p + at + 4, n + 4) == get_u32(p + at + 8 + n), IoError, "'{}': chunk {} fails its CRC", path,
             type);
    const uint8_t* d = p + at + 8;
    if (type == "IHDR") {
      w = get_u32(d);
      h = get_u32(d + 4);
      PS_CHECK(d[8] == 8 && d[12] == 0 && (d[9] == 0 || d[9] == 2 || d[9] == 6), IoError,
               "'{}': only 8-bit gray, RGB or RGBA PNGs without interlacing are read here", path);
      channels = d[9] == 0 ? 1 : d[9] == 2 ? 3 : 4;
    } else if (type == "IDAT") {
      idat.append(reinterpret_cast<const char*>(d), n);
    } else if (type == "IEND") {
      break;
    }
    at += 12 + n;
  }
  PS_CHECK(channels > 0 && w > 0 && h > 0, IoError, "'{}': no image header", path);
  const size_t row = static_cast<size_t>(w) * channels;
  std::string raw((row + 1) * h, '\0');
#ifdef PIPESWAP_HAVE_ZLIB
  uLongf size = static_cast<uLongf>(raw.size());
  const int rc = uncompress(reinterpret_cast<Bytef*>(raw.data()), &size, reinterpret_cast<const Bytef*>(idat.data()),
                            static_cast<uLong>(idat.size()));
  PS_CHECK(rc == Z_OK && size == raw.size(), IoError, "'{}': its image data does not inflate to {}x{} pixels", path, w,
           h);
#else
  PS_THROW(IoError, "cannot read '{}': this pipeswap was built without zlib", path);
#endif
  auto out = torch::empty({h, w, 3}, torch::kUInt8);
  std::vector<uint8_t> prev(row, 0), cur(row);
  uint8_t* dst = out.data_ptr<uint8_t>();
  for (uint32_t y = 0; y < h; ++y) {
    const auto* line = reinterpret_cast<const uint8_t*>(raw.data()) + y * (row + 1);
    const int filter = line[0];
    PS_CHECK(filter <= 4, IoError, "'{}': unknown filter {} on row {}", path, filter, y);
    for (size_t x = 0; x < row; ++x) {
      const int a = x >= static_cast<size_t>(channels) ? cur[x - channels] : 0, b = prev[x],
                c = x >= static_cast<size_t>(channels) ? prev[x - channels] : 0;
      const int pred = filter == 0 ? 0 : filter == 1 ? a : filter == 2 ? b : filter == 3 ? (a + b) / 2 : paeth(a, b, c);
      cur[x] = static_cast<uint8_t>(line[1 + x] + pred);
    }
    for (uint32_t x = 0; x < w; ++x)
      for (int k = 0; k < 3; ++k) dst[(static_cast<size_t>(y) * w + x) * 3 + k] = cur[x * channels + (channels == 1 ? 0 : k)];
    std::swap(prev, cur);
  }
  return out;
}

}  // namespace pipeswap::pipeline
