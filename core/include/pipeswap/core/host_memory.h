// CPU tensor memory as LibTorch allocates it, counted: a wrapper around the CPU allocator that the
// generate job installs once per process, so that its summary can say how many bytes each phase held at
// its peak and after it (the on-demand text encoder freed before the DiT loads, the DiT freed before the
// VAE decodes). It counts what tensors hold through c10's CPU allocator: not pinned host memory (the CUDA
// host allocator), not mmap'd files, not LibTorch's or the C++ runtime's own allocations. On CPU ranks
// that is what the plan predicts as "device" bytes; the process's resident set is larger by the program
// and its libraries.
#pragma once

#include <cstdint>

namespace pipeswap {

// Installs the counting allocator (idempotent, thread-safe). Tensors allocated before keep their own
// deleters and are not counted.
void count_host_tensor_memory();
bool host_tensor_memory_counted();
// Bytes held by CPU tensors allocated since count_host_tensor_memory (0 when not installed).
int64_t host_tensor_bytes();
// The most held at once since the last reset_host_tensor_peak (or the installation).
int64_t host_tensor_peak();
// Starts a new peak measurement from what is held now.
void reset_host_tensor_peak();

}  // namespace pipeswap
