#!/usr/bin/env bash
# The GPU machine has neither FFmpeg's development libraries nor SentencePiece (nor PCRE2/utf8proc), and
# its build must still work: the sources that are compiled differently without them (the MP4 writer,
# the video writer, the umT5 tokenizer's stub) are configured with those libraries switched off and
# compiled here, so the stubs cannot rot while CI has the libraries (ctest: build_without_optional,
# label unit). Compiles those objects only; the configure log must say the libraries are off.
#   tests/build-without-optional.sh BUILD_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/build}/without-optional
mkdir -p "$dir"
if ! cmake -S "$root" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPIPESWAP_BUILD_TESTS=OFF \
    -DPIPESWAP_WITH_FFMPEG=OFF -DPIPESWAP_WITH_SENTENCEPIECE=OFF -DPIPESWAP_WITH_CUDA=OFF \
    -DCMAKE_DISABLE_PRECOMPILE_HEADERS=ON > "$dir/configure.log" 2>&1; then
  tail -30 "$dir/configure.log"
  exit 1
fi
grep -q "FFmpeg (MP4): OFF" "$dir/configure.log" || { echo "configure did not switch FFmpeg off"; tail -30 "$dir/configure.log"; exit 1; }
if grep -q PIPESWAP_HAVE_SENTENCEPIECE "$dir/build.ninja" || grep -q PIPESWAP_HAVE_FFMPEG "$dir/build.ninja"; then
  echo "the build still defines PIPESWAP_HAVE_SENTENCEPIECE or PIPESWAP_HAVE_FFMPEG"
  exit 1
fi
objects=(pipeline/CMakeFiles/pipeswap_pipeline.dir/src/mp4.cpp.o
         pipeline/CMakeFiles/pipeswap_pipeline.dir/src/video_output.cpp.o
         models/CMakeFiles/pipeswap_models.dir/src/tokenizer.cpp.o)
t0=$(date +%s)
cmake --build "$dir" -j "$(nproc)" --target "${objects[@]}"
echo "build-without-optional: ${#objects[@]} objects compiled without FFmpeg and SentencePiece in $(( $(date +%s) - t0 )) s"
