// pipeswap never unpickles: a component folder (or a file given for one) that holds only pickled PyTorch
// checkpoints (Wan2.1's own .pth files, pytorch_model.bin) is refused with a message that names the file
// and the layout to download instead, before Checkpoint::open's generic "no safetensors" message.
#pragma once

#include <string>

namespace pipeswap::models {

bool is_pickle_name(const std::string& name);

// `path`: a component folder, or a file the user gave for one. `component` says what it is ("text
// encoder"), `folder_hint` what the right folder holds ("the text_encoder/ folder of a diffusers Wan repo
// (config.json and model-*.safetensors)"). Throws CheckpointError for a missing path, a pickled file, a
// file where a folder belongs, and a folder with pickles and no safetensors. A folder that holds neither is
// left to Checkpoint::open.
void refuse_pickles(const std::string& path, const std::string& component, const std::string& folder_hint);

}  // namespace pipeswap::models
