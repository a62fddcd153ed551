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

bool text_encoder_tensor(const std::string& name) {
  return name != "encoder.embed_tokens.weight";  // tied to shared.weight: one tensor in memory
}
bool vae_decoder_tensor(const std::string& name) {
  return name.rfind("decoder.", 0) == 0 || name.rfind("post_quant_conv.", 0) == 0;
}

}  // namespace

ComponentPlan plan_components(const models::WanRepo& repo, int64_t batch, const pipeline::VideoSize& size, bool cfg,
                              const std::string& te_device, c10::ScalarType te_dtype, const std::string& vae_device,
                              bool vae_tiling, const pipeline::Plan& dit) {
  using pipeline::format_bytes;
  const nlohmann::json te_config = Checkpoint::open(repo.text_encoder)->config();
  const int64_t te_elsize = static_cast<int64_t>(c10::elementSize(te_dtype));
  const int64_t te_weights = elements(repo.text_encoder, text_encoder_tensor) * te_elsize;
  // One batch of prompts at 512 tokens: the layer's hidden states, the FFN's two gates, one head's worth of
  // attention scores per head (float32 softmax), a few copies each.
  const int64_t d_model = te_config.value("d_model", int64_t{4096}), d_ff = te_config.value("d_ff", int64_t{10240}),
                heads = te_config.value("num_heads", int64_t{64});
  const int64_t te_act = batch * (512 * (4 * d_model + 3 * d_ff) * te_elsize + 2 * heads * 512 * 512 * 4);
  const int64_t context_host = batch * (cfg ? 2 : 1) * 512 * te_config.value("d_model", int64_t{4096}) * 4;

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
  ComponentPlan p;
  p.text = fmt::format("components ({} sample(s), {} frames at {}x{}, guidance {}):\n", batch, size.frames, size.width,
                       size.height, cfg ? "on" : "off");
  p.text += "  phase    component     device   placement    weights     device peak (est.)  host\n";
  p.text += fmt::format("  encode   text encoder  {:<8} on demand    {:>10}  {:>10}          {} embeddings\n",
                        te_device, format_bytes(te_weights), format_bytes(te_weights + te_act),
                        format_bytes(context_host));
  p.text += fmt::format("  denoise  DiT           ranks    the plan     {:>10}  {:>10} (largest rank)  {} (all ranks)\n",
                        "", format_bytes(dit_device), format_bytes(dit_host));
  p.text += fmt::format("  decode   VAE decoder   {:<8} on demand    {:>10}  {:>10}          {} frames{}\n",
                        vae_device, format_bytes(vae_weights), format_bytes(vae_weights + vae_work),
                        format_bytes(frames_host), vae_tiling ? " (tiled)" : "");
  p.text += "  each component is freed before the next phase loads its own\n";
  p.json = {
      {"size", {{"batch", batch}, {"frames", size.frames}, {"height", size.height}, {"width", size.width}}},
      {"phases",
       {{{"phase", "encode"}, {"component", "text_encoder"}, {"device", te_device}, {"placement", "on-demand"},
         {"dtype", dtype_word(te_dtype)}, {"weight_bytes", te_weights}, {"device_bytes", te_weights + te_act},
         {"host_bytes", context_host}},
        {{"phase", "denoise"}, {"component", "transformer"}, {"device_bytes", dit_device}, {"host_bytes", dit_host}},
        {{"phase", "decode"}, {"component", "vae_decoder"}, {"device", vae_device}, {"placement", "on-demand"},
         {"dtype", "float32"}, {"weight_bytes", vae_weights}, {"device_bytes", vae_weights + vae_work},
         {"host_bytes", frames_host}, {"tiled", vae_tiling}}}}};
  return p;
}

}  // namespace pipeswap::launcher
