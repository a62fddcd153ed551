#include "unit_io.h"

#include "pipeswap/offload/slab.h"

namespace pipeswap::offload {

trace::Args unit_args(const Unit& u, int64_t position, int64_t bytes) {
  trace::Args a;
  a.block = u.block;
  if (u.end_phase - u.first_phase == 1) a.phase = u.first_phase;
  a.position = position;
  a.bytes = bytes;
  return a;
}

void read_unit(const Checkpoint& ckpt, const Unit& u, torch::Tensor host, const char* what, int64_t position) {
  trace::Range traced(trace::Kind::kDisk, what, unit_args(u, position, u.tensor_bytes));
  for (size_t i = 0; i < u.parts.size(); ++i) {
    torch::Tensor part = host.narrow(0, u.base[i], u.parts[i].bytes);
    read_part(ckpt, u.parts[i], part);
  }
}

torch::Tensor load_unit(const Checkpoint& ckpt, const Unit& u, torch::Device device, const char* what) {
  torch::Tensor host = torch::empty({u.bytes}, torch::kUInt8);
  read_unit(ckpt, u, host, what);
  return device.is_cpu() ? host : host.to(device);
}

std::vector<WeightView> unit_views(const Unit& u, const torch::Tensor& slab) {
  std::vector<WeightView> views(u.parts.size());
  for (size_t i = 0; i < u.parts.size(); ++i)
    add_views(u.parts[i], slab.narrow(0, u.base[i], u.parts[i].bytes), views[i]);
  return views;
}

}  // namespace pipeswap::offload
