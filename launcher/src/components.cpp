#include "components.h"

#include <algorithm>
#include <set>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/dtype.h"
#include "pipeswap/core/safetensors.h"

namespace pipeswap::launcher {
namespace {

// Elements of the tensors whose names pass `keep`, from the headers (no weights read).
int64_t elements(const std::string& dir, bool (*keep)(const std::string&)) {
  auto ckpt = Checkpoint::open(dir);
  int64_t n = 0;
  std::set<std::string> seen;
  for (const auto& name : ckpt->tensor_names()) {
    if (!keep(name)) continue;
    const auto info = ckpt->locate(name).info;
    int64_t e = 1;
    for (auto d : info->shape) e *= static_cast<int64_t>(d);
    n += e;
  }
  return n;
}

bool vae_decoder_tensor(const std::string& name) {
  return name.rfind("decoder.", 0) == 0 || name.rfind("post_quant_conv.", 0) == 0;
}

}  // namespace

ComponentPlan plan_components(const models::WanRepo& repo, int64_t batch, const pipeline::VideoSize& size, bool cfg,
                              const pipeline::TextEncoderSettings& te, const std::string& vae_device,
                              bool vae_tiling, const pipeline::Plan& dit) {
  using pipeline::format_bytes;
  using pipeline::TextEncoderPlacement;
  const std::string te_device = te.device.str();
  const c10::ScalarType te_dtype = te.dtype;
  // Opened and checked as the encode phase opens it (no weight read): the declared tensors give its bytes.
  const models::UMT5Checkpoint te_ckpt = models::open_umt5(repo.text_encoder, te_dtype);
  const models::UMT5Config& te_config = te_ckpt.config;
  const int64_t te_elsize = static_cast<int64_t>(c10::elementSize(te_dtype));
  const int64_t te_weights = model_bytes(*te_ckpt.arch, te_dtype);
  // One batch of prompts at 512 tokens: the layer's hidden states, the FFN's two gates, one head's worth of
  // attention scores per head (float32 softmax), a few copies each.
  const int64_t d_model = te_config.d_model, d_ff = te_config.d_ff, heads = te_config.num_heads;
  const int64_t te_act = batch * (512 * (4 * d_model + 3 * d_ff) * te_elsize + 2 * heads * 512 * 512 * 4);
  const int64_t context_host = batch * (cfg ? 2 : 1) * 512 * d_model * 4;
  // Swapped: the device holds the store's resident layers and slots and, while the prologue runs, the
  // embedding moved in from the host; the host holds the swapped layers and the embedding.
  int64_t te_device_weights = te_weights, te_host = 0;
  offload::SwapLayout l;
  if (te.placement == TextEncoderPlacement::kSwapped) {
    l = pipeline::text_encoder_swap_layout(te_ckpt, te);
    const int64_t embedding = te_config.vocab_size * d_model * te_elsize;
    te_device_weights = l.resident_bytes + l.slot_bytes * l.num_slots + embedding;
    te_host = l.host_bytes + embedding;
  }
  const char* te_place = te.placement == TextEncoderPlacement::kSwapped    ? "swapped"
                         : te.placement == TextEncoderPlacement::kResident ? "resident"
                                                                           : "on demand";

  const nlohmann::json vae_config = Checkpoint::open(repo.vae)->config();
  const int64_t vae_weights = elements(repo.vae, vae_decoder_tensor) * 4;  // float32
  // wan_vae.h's memory: the feature cache (2 x 1182 H W elements for Wan2.1's base_dim 96) and one chunk's
  // working set (3.5 x 4 frames x 96 channels at full resolution), per tile when tiled; float32.
  const double base = static_cast<double>(vae_config.value("base_dim", int64_t{96})) / 96.0;
  const int64_t hw = vae_tiling ? std::min<int64_t>(256, size.height) * std::min<int64_t>(256, size.width)
                                : size.height * size.width;
  const int64_t vae_work = static_cast<int64_t>(base * (2 * 1182 + 3.5 * 4 * 96) * static_cast<double>(hw) * 4);
  const int64_t frames_host = batch * 3 * size.frames * size.height * size.width * 4;

  int64_t dit_device = 0, dit_host = 0;
  for (const auto& r : dit.ranks) {
    dit_device = std::max(dit_device, r.device_bytes);
    dit_host += r.host_bytes;
  }
  // Resident: the encoder's weights stay on its device beside rank 0's DiT share.
  const bool te_kept = te.placement == TextEncoderPlacement::kResident;
  const int64_t te_during_dit = te_kept ? te_weights : 0;
  const int64_t rank0_dit = dit.ranks.empty() ? 0 : dit.ranks.front().device_bytes;
  const bool te_on_rank0 = !dit.ranks.empty() && dit.ranks.front().device.str() == te_device;
  if (te_kept && te_on_rank0) dit_device = std::max(dit_device, rank0_dit + te_during_dit);
  ComponentPlan p;
  p.text = fmt::format("components ({} sample(s), {} frames at {}x{}, guidance {}):\n", batch, size.frames, size.width,
                       size.height, cfg ? "on" : "off");
  p.text += "  phase    component     device   placement    weights     device peak (est.)  host\n";
  p.text += fmt::format("  encode   text encoder  {:<8} {:<12} {:>10}  {:>10}          {} embeddings{}\n",
                        te_device, te_place, format_bytes(te_weights), format_bytes(te_device_weights + te_act),
                        format_bytes(context_host + te_host),
                        te_host > 0 ? fmt::format(" + {} swapped layers and embedding", format_bytes(te_host)) : "");
  p.text += fmt::format("  denoise  DiT           ranks    the plan     {:>10}  {:>10} (largest rank)  {} (all ranks)\n",
                        "", format_bytes(dit_device), format_bytes(dit_host));
  p.text += fmt::format("  decode   VAE decoder   {:<8} on demand    {:>10}  {:>10}          {} frames{}\n",
                        vae_device, format_bytes(vae_weights), format_bytes(vae_weights + vae_work),
                        format_bytes(frames_host), vae_tiling ? " (tiled)" : "");
  p.text += te_kept ? fmt::format("  the text encoder stays on {} through the job ({}, counted in the DiT's peak "
                                  "where it shares rank 0's device); the VAE is freed before the write\n",
                                  te_device, format_bytes(te_weights))
                    : "  each component is freed before the next phase loads its own\n";
  p.json = {
      {"size", {{"batch", batch}, {"frames", size.frames}, {"height", size.height}, {"width", size.width}}},
      {"phases",
       {{{"phase", "encode"}, {"component", "text_encoder"}, {"device", te_device},
         {"placement", pipeline::to_string(te.placement)}, {"dtype", dtype_word(te_dtype)},
         {"weight_bytes", te_weights}, {"device_bytes", te_device_weights + te_act},
         {"host_bytes", context_host + te_host}, {"slots", l.num_slots}, {"slot_bytes", l.slot_bytes}},
        {{"phase", "denoise"}, {"component", "transformer"}, {"device_bytes", dit_device}, {"host_bytes", dit_host},
         {"text_encoder_bytes", te_during_dit}},
        {{"phase", "decode"}, {"component", "vae_decoder"}, {"device", vae_device}, {"placement", "on-demand"},
         {"dtype", "float32"}, {"weight_bytes", vae_weights}, {"device_bytes", vae_weights + vae_work},
         {"host_bytes", frames_host}, {"tiled", vae_tiling}}}}};
  return p;
}

}  // namespace pipeswap::launcher
