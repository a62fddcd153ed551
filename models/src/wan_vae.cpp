#include "pipeswap/models/wan_vae.h"

#include <algorithm>
#include <cmath>

#include "config_json.h"
#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/torch_compat.h"

namespace pipeswap::models {

// ---- the decoder's layers ------------------------------------------------------------------------------
namespace {

// A causal 3D convolution: `front` zero (or cached) frames in front in time, symmetric zero padding in
// space. `slot` indexes its entry in the feature cache (-1: a 1x1x1 convolution, which needs none).
struct CausalConv {
  torch::Tensor w, b;
  int64_t front = 0, pad_h = 0, pad_w = 0;
  int slot = -1;
};

struct ResBlock {
  torch::Tensor gamma1, gamma2;  // RMS norm weights already times sqrt(channels)
  CausalConv conv1, conv2;
  CausalConv shortcut;  // undefined weight: identity
};

struct AttnBlock {
  torch::Tensor gamma, qkv_w, qkv_b, proj_w, proj_b;
};

struct Upsample {
  bool temporal = false;  // upsample3d: a time convolution doubles the frames (after the first chunk)
  CausalConv time_conv;
  torch::Tensor conv_w, conv_b;  // the 3x3 2D convolution after the 2x nearest spatial upsampling
};

struct UpBlock {
  std::vector<ResBlock> resnets;
  std::optional<Upsample> up;
};

// The per-decode state: for each causal convolution, the last frames its input had (at most two), and
// for each temporal upsampling whether the first chunk has passed.
struct FeatureCache {
  explicit FeatureCache(int slots) : frames(slots), started(slots, false) {}
  std::vector<torch::Tensor> frames;
  std::vector<bool> started;
};

}  // namespace

struct WanVaeDecoder::Weights {
  WanVaeConfig cfg;
  torch::Device device{torch::kCPU};
  torch::ScalarType dtype = torch::kFloat32;
  torch::Tensor mean, inv_std;  // [1, z, 1, 1, 1] in dtype
  CausalConv post_quant, conv_in, conv_out;
  ResBlock mid0, mid1;
  AttnBlock attn;
  std::vector<UpBlock> ups;
  torch::Tensor gamma_out;
  int slots = 0;
  int64_t bytes = 0;
  std::vector<std::string> names;
};

namespace {

using Weights = WanVaeDecoder::Weights;

// ---- the layers' arithmetic ----------------------------------------------------------------------------

// diffusers' WanRMS_norm over channels (dim 1): x / max(|x|_2, 1e-12) * sqrt(C) * gamma, the division in
// float32 and rounded to x's dtype. Half types go frame by frame, so that the float32 copy is of one frame.
// `silu` applies the SiLU that follows every norm but the attention's.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& gamma, bool silu) {
  auto normalise = [](const torch::Tensor& v) { return v / v.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12); };
  torch::Tensor y;
  if (x.scalar_type() == torch::kFloat32 || x.dim() != 5) {
    y = x.scalar_type() == torch::kFloat32 ? normalise(x) : normalise(x.to(torch::kFloat32)).to(x.scalar_type());
    y.mul_(gamma);
  } else {
    y = torch::empty_like(x, x.options().memory_format(torch::MemoryFormat::Contiguous));
    const torch::Tensor g = gamma.squeeze(1);  // [C, 1, 1, 1] -> [C, 1, 1]
    for (int64_t t = 0; t < x.size(2); ++t) {
      y.select(2, t).copy_(normalise(x.select(2, t).to(torch::kFloat32)).to(x.scalar_type()).mul_(g));
    }
  }
  if (silu) y = torch::silu_(y);
  return y;
}

// The causal convolution of x with `cached` (or zeros) in front in time.
torch::Tensor causal_conv(const CausalConv& c, torch::Tensor x, const torch::Tensor& cached) {
  if (c.front > 0) {
    std::vector<torch::Tensor> parts;
    int64_t zeros = c.front;
    if (cached.defined()) zeros -= cached.size(2);
    if (zeros > 0) {
      auto shape = x.sizes().vec();
      shape[2] = zeros;
      parts.push_back(torch::zeros(shape, x.options()));
    }
    if (cached.defined()) parts.push_back(cached);
    parts.push_back(x);
    x = torch::cat(parts, 2);  // the chunk's input is released here (the caller handed it over)
  }
  return torch::conv3d(x, c.w, c.b, /*stride=*/1, /*padding=*/{0, c.pad_h, c.pad_w});
}

// A causal convolution over a chunk: convolves with the cached frames in front, then caches the last two
// frames of this chunk's input (the last frame cached before, then this chunk's one frame, when the chunk
// has a single frame), as diffusers' feature cache does.
torch::Tensor cached_conv(const CausalConv& c, torch::Tensor x, FeatureCache& cache) {
  torch::Tensor& slot = cache.frames.at(c.slot);
  const int64_t t = x.size(2);
  torch::Tensor keep = x.narrow(2, std::max<int64_t>(0, t - 2), std::min<int64_t>(t, 2));
  keep = (keep.size(2) < 2 && slot.defined()) ? torch::cat({slot.narrow(2, slot.size(2) - 1, 1), keep}, 2)
                                              : keep.clone();  // a copy: the chunk's input can then go
  torch::Tensor out = causal_conv(c, std::move(x), slot);
  slot = std::move(keep);
  return out;
}

torch::Tensor conv1x1(const CausalConv& c, const torch::Tensor& x) { return torch::conv3d(x, c.w, c.b); }

torch::Tensor res_block(const ResBlock& r, torch::Tensor x, FeatureCache& cache) {
  torch::Tensor h = r.shortcut.w.defined() ? conv1x1(r.shortcut, x) : x;
  torch::Tensor y = rms_norm(x, r.gamma1, /*silu=*/true);
  x = torch::Tensor();  // only the residual (h) keeps the input now
  y = cached_conv(r.conv1, std::move(y), cache);
  y = rms_norm(y, r.gamma2, /*silu=*/true);
  y = cached_conv(r.conv2, std::move(y), cache);
  return y.add_(h);
}

// Single-head self-attention over each frame's pixels (the mid block's), queries in slices so that the
// score matrix stays near 256 MB where the attention is not fused (LibTorch 1.13).
torch::Tensor attn_block(const AttnBlock& a, const torch::Tensor& x) {
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  torch::Tensor f = x.permute({0, 2, 1, 3, 4}).reshape({b * t, c, h, w});
  f = rms_norm(f, a.gamma, /*silu=*/false);
  torch::Tensor qkv = torch::conv2d(f, a.qkv_w, a.qkv_b);
  f = torch::Tensor();
  qkv = qkv.reshape({b * t, 1, 3 * c, h * w}).permute({0, 1, 3, 2}).contiguous();  // [bt, 1, hw, 3c]
  const auto parts = qkv.chunk(3, -1);
  const int64_t n = h * w;
  const int64_t rows = std::max<int64_t>(256, (int64_t{1} << 26) / n);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c));
  torch::Tensor out;
  if (rows >= n) {
    out = compat::attention(parts[0], parts[1], parts[2], /*causal=*/false, scale);
  } else {
    out = torch::empty({b * t, 1, n, c}, x.options());
    for (int64_t q0 = 0; q0 < n; q0 += rows) {
      const int64_t len = std::min(rows, n - q0);
      out.narrow(2, q0, len).copy_(compat::attention(parts[0].narrow(2, q0, len), parts[1], parts[2], false, scale));
    }
  }
  qkv = torch::Tensor();
  out = out.squeeze(1).permute({0, 2, 1}).reshape({b * t, c, h, w});
  out = torch::conv2d(out, a.proj_w, a.proj_b);
  return out.view({b, t, c, h, w}).permute({0, 2, 1, 3, 4}).add(x);
}

// 2x upsampling: in time (upsample3d, from the second chunk on: a causal time convolution to twice the
// channels, whose two halves become the even and odd frames), then in space frame by frame (nearest 2x,
// which nearest-exact is at this scale, and a 3x3 convolution).
torch::Tensor upsample(const Upsample& u, torch::Tensor x, FeatureCache& cache) {
  if (u.temporal) {
    const int slot = u.time_conv.slot;
    if (!cache.started[slot]) {
      cache.started[slot] = true;  // the first chunk keeps its one frame
    } else {
      const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
      torch::Tensor& cached = cache.frames[slot];
      torch::Tensor keep = x.narrow(2, std::max<int64_t>(0, t - 2), std::min<int64_t>(t, 2));
      if (keep.size(2) < 2) {  // the second chunk pads with zeros (the first chunk had no time convolution)
        keep =
            torch::cat({cached.defined() ? cached.narrow(2, cached.size(2) - 1, 1) : torch::zeros_like(keep), keep}, 2);
      } else {
        keep = keep.clone();
      }
      x = causal_conv(u.time_conv, std::move(x), cached);
      cached = std::move(keep);
      x = x.view({b, 2, c, t, h, w}).permute({0, 2, 3, 1, 4, 5}).reshape({b, c, 2 * t, h, w});
    }
  }
  const int64_t b = x.size(0), t = x.size(2), h = x.size(3), w = x.size(4);
  torch::Tensor out = torch::empty({b, u.conv_w.size(0), t, 2 * h, 2 * w}, x.options());
  for (int64_t i = 0; i < t; ++i) {
    torch::Tensor f = torch::upsample_nearest2d(x.select(2, i), {2 * h, 2 * w});
    out.select(2, i).copy_(torch::conv2d(f, u.conv_w, u.conv_b, /*stride=*/1, /*padding=*/1));
  }
  return out;
}

// One chunk (one latent frame, after post_quant_conv) through the decoder: unclamped frames.
torch::Tensor decode_chunk(const Weights& m, torch::Tensor z, FeatureCache& cache) {
  torch::Tensor x = cached_conv(m.conv_in, std::move(z), cache);
  x = res_block(m.mid0, std::move(x), cache);
  x = attn_block(m.attn, x);
  x = res_block(m.mid1, std::move(x), cache);
  for (const UpBlock& up : m.ups) {
    for (const ResBlock& r : up.resnets) x = res_block(r, std::move(x), cache);
    if (up.up) x = upsample(*up.up, std::move(x), cache);
  }
  x = rms_norm(x, m.gamma_out, /*silu=*/true);
  return cached_conv(m.conv_out, std::move(x), cache);
}

// All latent frames of z ([1, z, F, h, w], un-normalised) through post_quant_conv and the decoder, chunk
// by chunk with one cache; each chunk's frames go to `emit(first_frame, frames)` (unclamped).
template <typename Emit>
void decode_frames(const Weights& m, const torch::Tensor& z, Emit&& emit) {
  FeatureCache cache(m.slots);
  const torch::Tensor q = conv1x1(m.post_quant, z);
  int64_t next = 0;
  for (int64_t i = 0; i < q.size(2); ++i) {
    torch::Tensor frames = decode_chunk(m, q.narrow(2, i, 1), cache);
    const int64_t want = i == 0 ? 1 : m.cfg.temporal_ratio();
    PS_CHECK(frames.size(2) == want, Error, "VAE decoder: latent frame {} gave {} frames, expected {}", i,
             frames.size(2), want);
    emit(next, frames);
    next += want;
  }
}

// diffusers' blend_v / blend_h: the first `extent` rows (columns) of b fade in from the last ones of a
// (a: the already blended neighbour's strip), row by row with weights 1 - y/extent and y/extent.
void blend(const torch::Tensor& a, torch::Tensor& b, int64_t extent, int64_t dim) {
  extent = std::min({a.size(dim), b.size(dim), extent});
  for (int64_t y = 0; y < extent; ++y) {
    const double wb = static_cast<double>(y) / static_cast<double>(extent);
    torch::Tensor row = b.select(dim, y);
    row.copy_(a.select(dim, a.size(dim) - extent + y) * (1 - wb) + row * wb);
  }
}

// ---- loading --------------------------------------------------------------------------------------------

struct Loader {
  std::shared_ptr<Checkpoint> ckpt;
  Weights& m;

  torch::Tensor get(const std::string& name, const std::vector<int64_t>& shape) {
    const TensorLocation loc = ckpt->locate(name);
    PS_CHECK(loc.info->shape == shape, CheckpointError, "{}: tensor '{}' has shape {}, config.json implies {}",
             ckpt->dir(), name, c10::str(loc.info->shape), c10::str(shape));
    torch::Tensor t = loc.file->read(name).to(m.device, m.dtype).contiguous();
    m.bytes += t.numel() * t.element_size();
    m.names.push_back(name);
    return t;
  }
  // A causal convolution with a (kt, k, k) kernel; kt > 1 gets a cache slot.
  CausalConv conv(const std::string& name, int64_t out, int64_t in, int64_t kt, int64_t k) {
    CausalConv c;
    c.w = get(name + ".weight", {out, in, kt, k, k});
    c.b = get(name + ".bias", {out});
    c.front = kt - 1;
    c.pad_h = c.pad_w = k / 2;
    if (kt > 1) c.slot = m.slots++;
    return c;
  }
  torch::Tensor gamma(const std::string& name, int64_t channels, bool images) {
    std::vector<int64_t> shape = {channels, 1, 1};
    if (!images) shape.push_back(1);
    return get(name + ".gamma", shape) * std::sqrt(static_cast<double>(channels));
  }
  ResBlock res(const std::string& name, int64_t in, int64_t out) {
    ResBlock r;
    r.gamma1 = gamma(name + ".norm1", in, false);
    r.conv1 = conv(name + ".conv1", out, in, 3, 3);
    r.gamma2 = gamma(name + ".norm2", out, false);
    r.conv2 = conv(name + ".conv2", out, out, 3, 3);
    if (in != out) r.shortcut = conv(name + ".conv_shortcut", out, in, 1, 1);
    return r;
  }
};

}  // namespace

// ---- config ---------------------------------------------------------------------------------------------

int64_t WanVaeConfig::temporal_ratio() const {
  int64_t r = 1;
  for (size_t i = 0; i + 1 < dim_mult.size(); ++i)
    if (temporal_upsample[i]) r *= 2;
  return r;
}

WanVaeConfig parse_wan_vae_config(const nlohmann::json& c) {
  PS_CHECK(c.is_object(), CheckpointError, "VAE config.json: expected a JSON object");
  if (has(c, "_class_name")) {
    PS_CHECK(c.at("_class_name") == "AutoencoderKLWan", CheckpointError,
             "VAE config.json: _class_name is {}, expected AutoencoderKLWan (the vae/ folder of a Wan2.1 "
             "diffusers repo)",
             c.at("_class_name").dump());
  }
  PS_CHECK(!optional_bool(c, "is_residual", false), CheckpointError,
           "VAE config.json: is_residual is true (the Wan2.2 VAE); pipeswap decodes Wan2.1's VAE");
  PS_CHECK(!has(c, "patch_size"), CheckpointError,
           "VAE config.json: patch_size {} is set (the Wan2.2 VAE); pipeswap decodes Wan2.1's VAE",
           c.contains("patch_size") ? c.at("patch_size").dump() : "");
  WanVaeConfig m;
  m.z_dim = optional_positive(c, "z_dim", 16);
  m.base_dim = optional_positive(c, "decoder_base_dim", optional_positive(c, "base_dim", 96));
  m.num_res_blocks = optional_positive(c, "num_res_blocks", 2);
  m.out_channels = optional_positive(c, "out_channels", 3);
  if (has(c, "dim_mult")) {
    PS_CHECK(c.at("dim_mult").is_array() && !c.at("dim_mult").empty(), CheckpointError,
             "VAE config.json: dim_mult must be a non-empty list, got {}", c.at("dim_mult").dump());
    m.dim_mult.clear();
    for (const auto& v : c.at("dim_mult")) {
      m.dim_mult.push_back(as_int(v, "dim_mult"));
      PS_CHECK(m.dim_mult.back() > 0, CheckpointError, "VAE config.json: dim_mult entries must be positive");
    }
  }
  std::vector<bool> down = {false, true, true};
  if (has(c, "temperal_downsample")) {
    PS_CHECK(c.at("temperal_downsample").is_array(), CheckpointError,
             "VAE config.json: temperal_downsample must be a list of booleans");
    down.clear();
    for (const auto& v : c.at("temperal_downsample")) {
      PS_CHECK(v.is_boolean(), CheckpointError, "VAE config.json: temperal_downsample must be a list of booleans");
      down.push_back(v.get<bool>());
    }
  }
  PS_CHECK(down.size() + 1 == m.dim_mult.size(), CheckpointError,
           "VAE config.json: temperal_downsample has {} entries, dim_mult {}: expected one fewer", down.size(),
           m.dim_mult.size());
  m.temporal_upsample.assign(down.rbegin(), down.rend());
  const int64_t ratio = int64_t{1} << (m.dim_mult.size() - 1);
  m.spatial_ratio = optional_positive(c, "scale_factor_spatial", ratio);
  PS_CHECK(m.spatial_ratio == ratio, CheckpointError,
           "VAE config.json: scale_factor_spatial {} disagrees with dim_mult's {} upsamplings (ratio {})",
           m.spatial_ratio, m.dim_mult.size() - 1, ratio);
  if (has(c, "scale_factor_temporal")) {
    PS_CHECK(as_int(c.at("scale_factor_temporal"), "scale_factor_temporal") == m.temporal_ratio(), CheckpointError,
             "VAE config.json: scale_factor_temporal {} disagrees with temperal_downsample (ratio {})",
             c.at("scale_factor_temporal").dump(), m.temporal_ratio());
  }
  for (const char* key : {"latents_mean", "latents_std"}) {
    PS_CHECK(has(c, key) && c.at(key).is_array(), CheckpointError,
             "VAE config.json: '{}' is missing (a Wan2.1 diffusers vae/config.json lists z_dim values); the "
             "latents cannot be un-normalised without it",
             key);
    std::vector<double>& dst = std::string(key) == "latents_mean" ? m.latents_mean : m.latents_std;
    for (const auto& v : c.at(key)) dst.push_back(as_number(v, key));
    PS_CHECK(static_cast<int64_t>(dst.size()) == m.z_dim, CheckpointError,
             "VAE config.json: '{}' has {} values, z_dim is {}", key, dst.size(), m.z_dim);
  }
  for (double s : m.latents_std)
    PS_CHECK(s != 0 && std::isfinite(s), CheckpointError, "VAE config.json: latents_std holds {}", s);
  return m;
}

// ---- the decoder ----------------------------------------------------------------------------------------

WanVaeDecoder WanVaeDecoder::load(const std::string& vae_dir, torch::Device device, torch::ScalarType dtype) {
  PS_CHECK(dtype == torch::kFloat32 || dtype == torch::kBFloat16 || dtype == torch::kFloat16, ConfigError,
           "VAE dtype must be float32, bfloat16 or float16, got {}", c10::toString(dtype));
  auto m = std::make_shared<Weights>();
  auto ckpt = Checkpoint::open(vae_dir);
  m->cfg = parse_wan_vae_config(ckpt->config());
  m->device = device;
  m->dtype = dtype;
  const WanVaeConfig& cfg = m->cfg;
  Loader ld{ckpt, *m};

  const int64_t z = cfg.z_dim;
  m->post_quant = ld.conv("post_quant_conv", z, z, 1, 1);
  // Channels: the mid block at base * dim_mult[-1], then the up blocks from the deepest level up; each
  // 2x upsampling halves the channels, so an up block after one starts from half its predecessor's.
  std::vector<int64_t> dims = {cfg.base_dim * cfg.dim_mult.back()};
  for (auto it = cfg.dim_mult.rbegin(); it != cfg.dim_mult.rend(); ++it) dims.push_back(cfg.base_dim * *it);
  m->conv_in = ld.conv("decoder.conv_in", dims[0], z, 3, 3);
  m->mid0 = ld.res("decoder.mid_block.resnets.0", dims[0], dims[0]);
  m->attn.gamma = ld.gamma("decoder.mid_block.attentions.0.norm", dims[0], true);
  m->attn.qkv_w = ld.get("decoder.mid_block.attentions.0.to_qkv.weight", {3 * dims[0], dims[0], 1, 1});
  m->attn.qkv_b = ld.get("decoder.mid_block.attentions.0.to_qkv.bias", {3 * dims[0]});
  m->attn.proj_w = ld.get("decoder.mid_block.attentions.0.proj.weight", {dims[0], dims[0], 1, 1});
  m->attn.proj_b = ld.get("decoder.mid_block.attentions.0.proj.bias", {dims[0]});
  m->mid1 = ld.res("decoder.mid_block.resnets.1", dims[0], dims[0]);
  const size_t levels = cfg.dim_mult.size();
  for (size_t i = 0; i < levels; ++i) {
    const std::string name = "decoder.up_blocks." + std::to_string(i);
    int64_t in = i > 0 ? dims[i] / 2 : dims[i];
    const int64_t out = dims[i + 1];
    UpBlock blk;
    for (int64_t r = 0; r <= cfg.num_res_blocks; ++r) {
      blk.resnets.push_back(ld.res(name + ".resnets." + std::to_string(r), in, out));
      in = out;
    }
    if (i + 1 < levels) {
      Upsample u;
      u.temporal = cfg.temporal_upsample[i];
      if (u.temporal) u.time_conv = ld.conv(name + ".upsamplers.0.time_conv", 2 * out, out, 3, 1);
      u.conv_w = ld.get(name + ".upsamplers.0.resample.1.weight", {out / 2, out, 3, 3});
      u.conv_b = ld.get(name + ".upsamplers.0.resample.1.bias", {out / 2});
      blk.up = std::move(u);
    }
    m->ups.push_back(std::move(blk));
  }
  m->gamma_out = ld.gamma("decoder.norm_out", dims.back(), false);
  m->conv_out = ld.conv("decoder.conv_out", cfg.out_channels, dims.back(), 3, 3);

  // As WanPipeline: the lists as float32, the reciprocal of the std in float32, both then in the VAE dtype.
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  const torch::Tensor std_f32 = torch::tensor(cfg.latents_std, f32);
  m->mean = torch::tensor(cfg.latents_mean, f32).view({1, z, 1, 1, 1}).to(device, dtype);
  m->inv_std = torch::div(torch::ones_like(std_f32), std_f32).view({1, z, 1, 1, 1}).to(device, dtype);
  return WanVaeDecoder(std::move(m));
}

const WanVaeConfig& WanVaeDecoder::config() const { return w_->cfg; }
torch::Device WanVaeDecoder::device() const { return w_->device; }
torch::ScalarType WanVaeDecoder::dtype() const { return w_->dtype; }
int64_t WanVaeDecoder::weight_bytes() const { return w_->bytes; }
std::vector<std::string> WanVaeDecoder::tensor_names() const { return w_->names; }

void WanVaeDecoder::enable_tiling(const WanVaeTiling& t) {
  const int64_t r = w_->cfg.spatial_ratio;
  for (int64_t v : {t.min_height, t.min_width, t.stride_height, t.stride_width}) {
    PS_CHECK(v > 0 && v % r == 0, ConfigError,
             "VAE tiling: tile sizes and strides must be positive multiples of {} pixels, got {}", r, v);
  }
  PS_CHECK(t.stride_height <= t.min_height && t.stride_width <= t.min_width, ConfigError,
           "VAE tiling: the stride ({} x {}) must not exceed the tile ({} x {}): tiles must overlap or touch",
           t.stride_height, t.stride_width, t.min_height, t.min_width);
  tiling_ = t;
}

torch::Tensor WanVaeDecoder::decode(const torch::Tensor& latents, std::optional<torch::Device> frames_device) const {
  const Weights& m = *w_;
  const WanVaeConfig& cfg = m.cfg;
  PS_CHECK(latents.dim() == 5 && latents.size(1) == cfg.z_dim && latents.size(2) >= 1 && latents.numel() > 0,
           ConfigError, "VAE decode: latents must be [B, {}, F, h, w], got {}", cfg.z_dim, c10::str(latents.sizes()));
  PS_CHECK(latents.is_floating_point(), ConfigError, "VAE decode: latents must be floating point");
  torch::NoGradGuard no_grad;
  const int64_t batch = latents.size(0), lh = latents.size(3), lw = latents.size(4);
  const int64_t r = cfg.spatial_ratio;
  const int64_t height = lh * r, width = lw * r;
  torch::Tensor video = torch::empty({batch, cfg.out_channels, cfg.frames_for(latents.size(2)), height, width},
                                     torch::TensorOptions().dtype(m.dtype).device(frames_device.value_or(m.device)));
  const bool tiled = tiling_ && (lh > tiling_->min_height / r || lw > tiling_->min_width / r);

  for (int64_t s = 0; s < batch; ++s) {
    const torch::Tensor z = latents.narrow(0, s, 1).to(m.device, m.dtype).div(m.inv_std).add(m.mean);
    torch::Tensor out = video.narrow(0, s, 1);
    if (!tiled) {
      decode_frames(m, z, [&](int64_t first, const torch::Tensor& frames) {
        out.narrow(2, first, frames.size(2)).copy_(frames.clamp_(-1.0, 1.0));
      });
      continue;
    }
    const WanVaeTiling& t = *tiling_;
    const int64_t tile_lh = t.min_height / r, tile_lw = t.min_width / r;
    const int64_t step_lh = t.stride_height / r, step_lw = t.stride_width / r;
    const int64_t blend_h = t.min_height - t.stride_height, blend_w = t.min_width - t.stride_width;
    std::vector<torch::Tensor> above((lw + step_lw - 1) / step_lw);  // bottom strip of the tile above
    for (int64_t i = 0, row = 0; i < lh; i += step_lh, ++row) {
      torch::Tensor left;  // right strip of the tile to the left
      for (int64_t j = 0, col = 0; j < lw; j += step_lw, ++col) {
        const torch::Tensor zt = z.narrow(3, i, std::min(tile_lh, lh - i)).narrow(4, j, std::min(tile_lw, lw - j));
        torch::Tensor tile =
            torch::empty({1, cfg.out_channels, video.size(2), zt.size(3) * r, zt.size(4) * r}, z.options());
        decode_frames(m, zt, [&](int64_t first, const torch::Tensor& frames) {
          tile.narrow(2, first, frames.size(2)).copy_(frames);
        });
        const int64_t th = tile.size(3), tw = tile.size(4);
        if (row > 0 && blend_h > 0) blend(above[col], tile, blend_h, 3);
        if (col > 0 && blend_w > 0) blend(left, tile, blend_w, 4);
        if (blend_h > 0) above[col] = tile.narrow(3, th - std::min(blend_h, th), std::min(blend_h, th)).clone();
        if (blend_w > 0) left = tile.narrow(4, tw - std::min(blend_w, tw), std::min(blend_w, tw)).clone();
        const int64_t y0 = row * t.stride_height, x0 = col * t.stride_width;
        const int64_t kh = std::min({t.stride_height, th, height - y0});
        const int64_t kw = std::min({t.stride_width, tw, width - x0});
        out.narrow(3, y0, kh).narrow(4, x0, kw).copy_(tile.narrow(3, 0, kh).narrow(4, 0, kw).clamp_(-1.0, 1.0));
      }
    }
  }
  return video;
}

}  // namespace pipeswap::models
