// Non-block components (embeddings, final norm, head): which ones a rank holds and where each lives.
// The plan sizes them and the block store loads them from the same answers.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "pipeswap/core/weights.h"
#include "pipeswap/offload/residency.h"

namespace pipeswap::offload {

// What a rank owns: blocks [first_block, end_block), and the prologue (first stage) and epilogue
// (last stage) components.
struct OwnedParts {
  int first_block = 0;
  int end_block = 0;
  bool prologue = false;
  bool epilogue = false;
};

enum class ComponentMode { kResident, kHost, kOnDemand };
// Mode of every component part (by part name) of the model. Throws ConfigError naming an unknown
// component and listing the known ones.
std::map<std::string, ComponentMode> component_modes(const ModelParts& model, const OffloadOptions& opts);

enum class Side { kPrologue, kEpilogue };

// The component parts a rank holds. Tied embeddings, decided here only: a part all of whose tensors
// an earlier part of this rank holds uses that part (in its mode), so a rank keeps one copy and the
// plan counts one.
struct RankComponents {
  struct Use {
    size_t part = 0;                              // index into parts
    std::map<std::string, std::string> local_of;  // checkpoint name -> local name on this side
  };
  std::vector<PartSpec> parts;  // every part held, once, in first-use order (prologue first)
  std::vector<Use> prologue, epilogue;
  const std::vector<Use>& uses(Side side) const { return side == Side::kPrologue ? prologue : epilogue; }
};
RankComponents rank_components(const ModelParts& model, const OwnedParts& owned);

}  // namespace pipeswap::offload
