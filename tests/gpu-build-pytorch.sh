#!/usr/bin/env bash
# The GPU code that only PyTorch's CUDA LibTorch compiles (PIPESWAP_TORCH_CUDA: the NCCL transport's
# receive buffers from the comm stream's allocator pool and its traced kernels, the CUDA allocator's
# peak in device_memory.cpp; PIPESWAP_FUSED_CUDA: the models' fused kernels, core's fp8 dequantise kernel
# and their dispatch),
# compiled here against the torch of scripts/pyenv (2.11+cu130, the GPU machine's) and the CUDA
# toolkit, so it cannot rot between GPU sessions (ctest: gpu_build_pytorch, label unit). Debian's
# LibTorch 1.13 builds the rest of the CUDA/NCCL code in the main build.
# Compiles those objects only (nothing links: Debian's CPU libtorch.so would shadow PyTorch's here).
# Skipped (77) without that Python, a CUDA build of torch, the CUDA toolkit or NCCL.
#   tests/gpu-build-pytorch.sh BUILD_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/build}/pytorch-cuda
py=${PIPESWAP_PYTHON:-python3}
prefix=$("$py" -c 'import torch; assert torch.version.cuda; print(torch.utils.cmake_prefix_path)' 2>/dev/null) || {
  echo "skipped: $py has no CUDA build of torch (scripts/pyenv makes one; set PIPESWAP_PYTHON)"
  exit 77
}
[ -x /usr/local/cuda/bin/nvcc ] && [ -f /usr/local/cuda/include/nccl.h ] || {
  echo "skipped: no CUDA toolkit with NCCL at /usr/local/cuda"
  exit 77
}
mkdir -p "$dir"
if ! cmake -S "$root" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DPIPESWAP_BUILD_TESTS=OFF -DCMAKE_DISABLE_PRECOMPILE_HEADERS=ON \
    > "$dir/configure.log" 2>&1; then
  tail -30 "$dir/configure.log"
  exit 1
fi
grep -q "CUDA/NCCL paths: ON" "$dir/configure.log" || { echo "configure did not enable the CUDA/NCCL paths"; tail -30 "$dir/configure.log"; exit 1; }
grep -q PIPESWAP_TORCH_CUDA "$dir/build.ninja" || { echo "torch has CUDA but its c10_cuda target was not found"; exit 1; }
grep -o "pipeswap: LibTorch [0-9.]*" "$dir/configure.log" | head -1
grep -q PIPESWAP_FUSED_CUDA "$dir/build.ninja" || { echo "nvcc was not found for the fused kernels"; exit 1; }
objects=(comm/CMakeFiles/pipeswap_comm.dir/src/nccl_transport.cpp.o
         core/CMakeFiles/pipeswap_core.dir/src/device_memory.cpp.o
         core/CMakeFiles/pipeswap_fp8_cuda.dir/src/fp8_kernels.cu.o
         core/CMakeFiles/pipeswap_core.dir/src/fp8.cpp.o
         models/CMakeFiles/pipeswap_fused_cuda.dir/src/fused_kernels.cu.o
         models/CMakeFiles/pipeswap_models.dir/src/fused.cpp.o)
t0=$(date +%s)
cmake --build "$dir" -j "$(nproc)" --target "${objects[@]}"
echo "gpu-build-pytorch: ${#objects[@]} objects compiled against PyTorch's CUDA LibTorch in $(( $(date +%s) - t0 )) s"
