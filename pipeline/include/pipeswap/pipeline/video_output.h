// What `pipeswap generate` writes: frames as 8-bit RGB, from the VAE's [-1, 1] output as diffusers'
// VideoProcessor makes them ((x / 2 + 0.5) clamped to [0, 1], then round(255 v) as numpy_to_pil does),
// into PNG files (a writer of our own: zlib's deflate where pipeswap was built with zlib, stored blocks
// without it) or an H.264 MP4 (FFmpeg's libavcodec/libavformat/libswscale with libx264, where pipeswap was
// built with them: PIPESWAP_HAVE_FFMPEG). Every file is written to a temporary name and renamed when complete.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace pipeswap::pipeline {

enum class OutputKind {
  kMp4,      // NAME.mp4: one H.264 video per sample (NAME-<i>.mp4 for several samples)
  kFrames,   // DIR/ (or an existing folder): DIR/0000.png ... (DIR/<i>/0000.png for several samples)
  kLatents,  // NAME.safetensors: the final latents, no VAE decode
};
// From --output's name. Throws ConfigError naming the forms accepted for anything else.
OutputKind output_kind(const std::string& path);
// Throws ConfigError for an MP4 in a build without FFmpeg's libraries (saying which to install and what
// to use instead), IoError for a place that cannot be written. Makes a frames folder if it is missing.
void check_output(const std::string& path, OutputKind kind);
// Whether this build can write MP4 (FFmpeg's libraries were found at build time).
bool mp4_available();
// The files a sample's output goes to: `path` itself for one sample, else per sample as above.
std::string sample_output(const std::string& path, OutputKind kind, int sample, int samples);

// VAE frames [B, 3, F, H, W] in [-1, 1] (any float dtype, any device) -> float32 [B, F, H, W, 3] in [0, 1] on the
// CPU: diffusers' output_type="np".
torch::Tensor frames_to_unit(const torch::Tensor& frames);
// float [.., 3] in [0, 1] -> uint8 round(255 v), half to even as numpy rounds.
torch::Tensor unit_to_u8(const torch::Tensor& unit);

// One RGB image, uint8 [H, W, 3] on the CPU, as an 8-bit RGB PNG.
void write_png(const std::string& path, const torch::Tensor& rgb);
// uint8 [F, H, W, 3] -> DIR/0000.png, DIR/0001.png, ... (DIR is made if missing). Returns the files.
std::vector<std::string> write_png_frames(const std::string& dir, const torch::Tensor& frames);
// An 8-bit RGB (or gray / RGBA, made RGB) non-interlaced PNG -> uint8 [H, W, 3] (checks what the writer
// wrote). Throws IoError for other PNGs, or without zlib.
torch::Tensor read_png(const std::string& path);

// uint8 [F, H, W, 3] -> H.264 (libx264, yuv420p, CRF 17: visually lossless) in an MP4 at `fps` frames a
// second; width and height must be even. Throws ConfigError without FFmpeg or without an H.264 encoder.
void write_mp4(const std::string& path, const torch::Tensor& frames, double fps);
// Decodes an MP4's first video stream -> uint8 [F, H, W, 3] and its codec's name (checks what the writer
// wrote). Throws IoError for what FFmpeg cannot read, ConfigError without FFmpeg.
struct DecodedVideo {
  torch::Tensor frames;
  std::string codec;
  double fps = 0;
};
DecodedVideo read_mp4(const std::string& path);

}  // namespace pipeswap::pipeline
