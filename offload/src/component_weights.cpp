#include "component_weights.h"

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/trace.h"
#include "unit_io.h"

namespace pipeswap::offload {

std::map<std::string, ComponentMode> component_modes(const ModelParts& model, const OffloadOptions& opts) {
  std::map<std::string, ComponentMode> modes;
  std::map<std::string, std::string> roles;
  std::vector<PartSpec> all = model.prologue_parts();
  for (auto& p : model.epilogue_parts()) all.push_back(p);
  std::string names;
  for (const auto& p : all) {
    modes[p.name] = ComponentMode::kResident;
    roles[p.name] = p.role;
    names += (names.empty() ? "" : ", ") + p.name;
  }
  auto set = [&](const std::string& name, ComponentMode m, const char* flag) {
    PS_CHECK(modes.count(name), ConfigError, "{} names '{}', which {} does not have: its components are {}", flag, name,
             model.family(), names);
    modes[name] = m;
  };
  for (const char* role : {"txt_emb", "img_emb"}) {
    const bool wanted = std::string(role) == "txt_emb" ? opts.offload_txt_emb : opts.offload_img_emb;
    if (!wanted) continue;
    bool found = false;
    for (const auto& [name, r] : roles)
      if (r == role) {
        modes[name] = ComponentMode::kHost;
        found = true;
      }
    if (!found) log().warn("offload_{} ignored: {} has no {} component", role + 4, model.family(), role);
  }
  for (const auto& n : opts.offload_components) set(n, ComponentMode::kHost, "--offload-components");
  for (const auto& n : opts.on_demand_components) set(n, ComponentMode::kOnDemand, "--on-demand-components");
  return modes;
}

RankComponents rank_components(const ModelParts& model, const OwnedParts& owned) {
  RankComponents out;
  std::map<std::string, size_t> holder;  // checkpoint name -> part
  auto add_side = [&](const std::vector<PartSpec>& specs, std::vector<RankComponents::Use>& uses) {
    for (const auto& spec : specs) {
      RankComponents::Use use;
      bool shared = !spec.tensors.empty();
      for (const auto& t : spec.tensors) {
        shared = shared && holder.count(t.checkpoint);
        use.local_of[t.checkpoint] = t.local;
      }
      if (shared) {
        use.part = holder.at(spec.tensors.front().checkpoint);
      } else {
        use.part = out.parts.size();
        for (const auto& t : spec.tensors) holder[t.checkpoint] = use.part;
        out.parts.push_back(spec);
      }
      uses.push_back(std::move(use));
    }
  };
  if (owned.prologue) add_side(model.prologue_parts(), out.prologue);
  if (owned.epilogue) add_side(model.epilogue_parts(), out.epilogue);
  return out;
}

ComponentWeights::ComponentWeights(const ModelParts& model, std::shared_ptr<const Checkpoint> ckpt,
                                   const OwnedParts& owned, c10::ScalarType dtype, torch::Device device,
                                   const OffloadOptions& opts)
    : ckpt_(std::move(ckpt)), device_(device), held_(rank_components(model, owned)) {
  const auto modes = component_modes(model, opts);
  for (const PartSpec& spec : held_.parts) {
    Part p;
    p.unit = component_unit(spec, dtype, opts.stored_dtype.value_or(dtype), opts.storage);
    p.mode = modes.at(spec.name);
    if (p.mode == ComponentMode::kResident) {
      p.slab = load_unit(*ckpt_, p.unit, device_, "read (component)");
      device_bytes_ += p.unit.bytes;
    } else if (p.mode == ComponentMode::kHost) {
      p.host = torch::empty({p.unit.bytes}, torch::kUInt8);
      if (device_.is_cuda()) p.host = p.host.pin_memory();
      read_unit(*ckpt_, p.unit, p.host, "read (component, kept on the host)");
      host_bytes_ += p.unit.bytes;
    }
    parts_.push_back(std::move(p));
  }
  for (Side side : {Side::kPrologue, Side::kEpilogue}) {
    View& v = view_of(side);
    for (const auto& u : held_.uses(side)) v.transient = v.transient || parts_[u.part].mode != ComponentMode::kResident;
    if (!v.transient) build_view(side);
  }
}

void ComponentWeights::build_view(Side side) {
  View& v = view_of(side);
  v.view = WeightView();
  for (const auto& u : held_.uses(side)) {
    const Part& p = parts_[u.part];
    for (size_t i = 0; i < p.unit.parts.size(); ++i) {
      const SlabLayout& layout = p.unit.parts[i];
      const torch::Tensor slab = p.slab.narrow(0, p.unit.base[i], layout.bytes);
      for (const auto& e : layout.entries) {
        auto it = u.local_of.find(e.checkpoint);
        if (it != u.local_of.end()) add_entry_view(layout, e, slab, it->second, v.view);
      }
    }
  }
}

const WeightView& ComponentWeights::acquire(Side side) {
  View& v = view_of(side);
  if (!v.transient) return v.view;
  for (const auto& u : held_.uses(side)) {
    Part& p = parts_[u.part];
    if (p.slab.defined()) continue;  // shared with an earlier use
    if (p.mode == ComponentMode::kHost) {
      trace::Args what;
      what.bytes = p.unit.bytes;
      trace::DeviceRange traced(trace::Kind::kCopy, "copy component", what, std::nullopt, trace::Lane::kCopy);
      p.slab = device_.is_cpu() ? p.host.clone() : p.host.to(device_, /*non_blocking=*/true);
    } else if (p.mode == ComponentMode::kOnDemand) {
      p.slab = load_unit(*ckpt_, p.unit, device_, "read component (on demand)");
    }
  }
  build_view(side);
  return v.view;
}

void ComponentWeights::release(Side side) {
  View& v = view_of(side);
  if (!v.transient) return;
  v.view = WeightView();
  for (const auto& u : held_.uses(side)) {
    Part& p = parts_[u.part];
    if (p.mode != ComponentMode::kResident) p.slab = torch::Tensor();  // freed
  }
}

}  // namespace pipeswap::offload
