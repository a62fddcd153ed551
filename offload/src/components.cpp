#include "components.h"

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/trace.h"

namespace pipeswap::offload {

std::map<std::string, ComponentMode> component_modes(const ModelParts& arch, const OffloadOptions& opts) {
  std::map<std::string, ComponentMode> modes;
  std::map<std::string, std::string> roles;
  std::vector<PartSpec> all = arch.prologue_parts();
  for (auto& p : arch.epilogue_parts()) all.push_back(p);
  std::string names;
  for (const auto& p : all) {
    modes[p.name] = ComponentMode::kResident;
    roles[p.name] = p.role;
    names += (names.empty() ? "" : ", ") + p.name;
  }
  auto set = [&](const std::string& name, ComponentMode m, const char* flag) {
    PS_CHECK(modes.count(name), ConfigError, "{} names '{}', which {} does not have: its components are {}", flag,
             name, arch.family(), names);
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
    if (!found) log().warn("offload_{} ignored: {} has no {} component", role + 4, arch.family(), role);
  }
  for (const auto& n : opts.offload_components) set(n, ComponentMode::kHost, "--offload-components");
  for (const auto& n : opts.on_demand_components) set(n, ComponentMode::kOnDemand, "--on-demand-components");
  return modes;
}

Components::Components(const ModelParts& arch, std::shared_ptr<const Checkpoint> ckpt, const OwnedParts& owned,
                       c10::ScalarType dtype, torch::Device device, const OffloadOptions& opts)
    : ckpt_(std::move(ckpt)), device_(device) {
  const auto modes = component_modes(arch, opts);
  // Tied embeddings: a part whose tensors another part of this rank already holds uses them (in the
  // holder's mode), so a single rank keeps one copy, as the plan counts it.
  std::map<std::string, size_t> holder;  // checkpoint name -> part
  auto add_side = [&](const std::vector<PartSpec>& specs, Side& side) {
    for (const auto& spec : specs) {
      Use use;
      bool shared = !spec.tensors.empty();
      for (const auto& t : spec.tensors) {
        shared = shared && holder.count(t.checkpoint);
        use.local_of[t.checkpoint] = t.local;
      }
      if (shared) {
        use.part = holder.at(spec.tensors.front().checkpoint);
      } else {
        Part p;
        p.layout = make_layout(spec, dtype);
        p.mode = modes.at(spec.name);
        use.part = parts_.size();
        for (const auto& t : spec.tensors) holder[t.checkpoint] = use.part;
        parts_.push_back(std::move(p));
      }
      side.uses.push_back(std::move(use));
    }
  };
  if (owned.prologue) add_side(arch.prologue_parts(), prologue_);
  if (owned.epilogue) add_side(arch.epilogue_parts(), epilogue_);
  for (Part& p : parts_) {
    if (p.mode == ComponentMode::kResident) {
      load_resident(p);
    } else if (p.mode == ComponentMode::kHost) {
      p.host = torch::empty({p.layout.bytes}, torch::kUInt8);
      if (device_.is_cuda()) p.host = p.host.pin_memory();
      read_part(*ckpt_, p.layout, p.host);
      host_bytes_ += p.layout.bytes;
    }
  }
  for (Side* side : {&prologue_, &epilogue_}) {
    for (const Use& u : side->uses) side->transient = side->transient || parts_[u.part].mode != ComponentMode::kResident;
    if (!side->transient) build_view(*side);
  }
}

void Components::load_resident(Part& p) {
  p.slab = load_part(*ckpt_, p.layout, device_);
  device_bytes_ += p.layout.bytes;
}

void Components::build_view(Side& side) {
  side.view = WeightView();
  for (const Use& u : side.uses) {
    const Part& p = parts_[u.part];
    for (const auto& e : p.layout.entries) {
      auto it = u.local_of.find(e.checkpoint);
      if (it == u.local_of.end()) continue;
      side.view.add(it->second, p.slab.narrow(0, e.offset, e.nbytes).view(p.layout.dtype).view(e.shape));
    }
  }
}

const WeightView& Components::acquire(bool prologue) {
  Side& side = prologue ? prologue_ : epilogue_;
  if (!side.transient) return side.view;
  for (const Use& u : side.uses) {
    Part& p = parts_[u.part];
    if (p.slab.defined()) continue;  // shared with an earlier use
    trace::Args what;
    what.bytes = p.layout.bytes;
    if (p.mode == ComponentMode::kHost) {
      trace::DeviceRange traced(trace::Kind::kCopy, "copy component", what, std::nullopt, trace::Lane::kCopy);
      p.slab = device_.is_cpu() ? p.host.clone() : p.host.to(device_, /*non_blocking=*/true);
    } else if (p.mode == ComponentMode::kOnDemand) {
      trace::Range traced(trace::Kind::kDisk, "read component (on demand)", what);
      p.slab = load_part(*ckpt_, p.layout, device_);
    }
  }
  build_view(side);
  return side.view;
}

void Components::release(bool prologue) {
  Side& side = prologue ? prologue_ : epilogue_;
  if (!side.transient) return;
  side.view = WeightView();
  for (const Use& u : side.uses) {
    Part& p = parts_[u.part];
    if (p.mode != ComponentMode::kResident) p.slab = torch::Tensor();  // freed
  }
}

}  // namespace pipeswap::offload
