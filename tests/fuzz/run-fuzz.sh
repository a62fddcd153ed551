#!/usr/bin/env bash
# Hostile checkpoints: builds the libFuzzer targets of this folder with clang (AddressSanitizer and
# UndefinedBehaviorSanitizer; apart from the g++ build, into OUT_DIR) and runs each for a bounded
# number of inputs, starting from the kept corpus in corpus/<target>/:
#   safetensors_header_fuzz  the safetensors length prefix and JSON header (core/src/safetensors_header.cpp)
#   checkpoint_index_fuzz    model.safetensors.index.json (core/src/checkpoint_index.cpp)
#   flags_fuzz               the command line (launcher/src/cli.cpp and the numeric bounds of flags.cpp);
#                            built only where LibTorch's headers are (cli.cpp includes them)
# A crash, a sanitizer report, an input slower than 10 s, or a single allocation over 64 MiB (a length
# taken from the file instead of bounded by it) fails the run; libFuzzer writes the input that did it
# into OUT_DIR (crash-*, oom-*, timeout-*): copy it into the corpus once the bug is fixed.
#
#   tests/fuzz/run-fuzz.sh OUT_DIR       (ctest runs it as fuzz_checkpoint_headers, label unit)
#
# Environment: FUZZ_RUNS (inputs per target, default 20000), FUZZ_SECONDS (time cap per target,
# default 60), CLANGXX (default clang++). Exit status 77 (ctest: skipped) where clang or its
# libFuzzer runtime is missing: scripts/deps installs Debian's clang and libclang-rt-dev.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:?usage: run-fuzz.sh OUT_DIR}
runs=${FUZZ_RUNS:-20000}
seconds=${FUZZ_SECONDS:-60}
cxx=${CLANGXX:-clang++}
targets=(safetensors_header_fuzz checkpoint_index_fuzz)
# The core sources the targets need: the parsers and what their error messages use. No LibTorch
# library, only the c10 header behind DType.
sources=(safetensors_header checkpoint_index dtype error identity json printable bytes files)
# flags_fuzz also needs the CLI and the device chain parser: sources outside core, by path.
flag_sources=(launcher/src/cli.cpp launcher/src/command_words.cpp launcher/src/flags.cpp pipeline/src/device_chain.cpp)
torch_include=${TORCH_INCLUDE:-/usr/include/torch/csrc/api/include}

say() { echo "run-fuzz: $*" >&2; }
skip() {
  say "SKIP: $*"
  exit 77
}

command -v "$cxx" >/dev/null 2>&1 || skip "$cxx is missing (apt-get install clang libclang-rt-dev)"
mkdir -p "$out/obj"
out=$(cd "$out" && pwd)  # the runs below cd into it
flags=(-std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
       -DOMPI_SKIP_MPICXX -I"$root/core/include")
# MPI's compile and link flags (core/src/error.cpp names MPI errors), as Open MPI's wrapper reports them.
read -r -a mpi_compile <<<"$(mpicc --showme:compile 2>/dev/null || true)"
read -r -a mpi_link <<<"$(mpicc --showme:link 2>/dev/null || true)"

# Can this clang link a fuzzer at all (libclang-rt-*-dev holds libFuzzer)?
printf '#include <cstddef>\n#include <cstdint>\nextern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n' \
  >"$out/probe.cpp"
"$cxx" -fsanitize=fuzzer "$out/probe.cpp" -o "$out/probe" 2>"$out/probe.err" ||
  skip "$cxx cannot link a libFuzzer target: $(head -n 3 "$out/probe.err")"

# Objects are rebuilt when a source or any core header is newer (a few seconds each with clang).
newest_header=$(find "$root/core/include" -name '*.h' -newer "$out/obj/.built" 2>/dev/null | head -n 1 || true)
objs=()
for s in "${sources[@]}"; do
  o="$out/obj/$s.o"
  if [ ! -f "$o" ] || [ "$root/core/src/$s.cpp" -nt "$o" ] || [ -n "$newest_header" ] || [ "$0" -nt "$o" ]; then
    # fuzzer-no-link: coverage feedback from the parsers themselves, not only from the target.
    "$cxx" "${flags[@]}" -fsanitize=fuzzer-no-link "${mpi_compile[@]}" -c "$root/core/src/$s.cpp" -o "$o"
  fi
  objs+=("$o")
done
flag_objs=()
if [ -d "$torch_include" ]; then
  for f in "${flag_sources[@]}"; do
    o="$out/obj/$(basename "$f" .cpp).o"
    if [ ! -f "$o" ] || [ "$root/$f" -nt "$o" ] || [ -n "$newest_header" ] || [ "$0" -nt "$o" ] ||
       [ -n "$(find "$root/launcher/src" -name '*.h' -newer "$o" | head -n 1)" ]; then
      "$cxx" "${flags[@]}" -fsanitize=fuzzer-no-link -D_GLIBCXX_USE_CXX11_ABI=1 -I"$root/launcher/src" \
        -I"$root/pipeline/include" -isystem "$torch_include" "${mpi_compile[@]}" -c "$root/$f" -o "$o"
    fi
    flag_objs+=("$o")
  done
  targets+=(flags_fuzz)
else
  say "flags_fuzz skipped: no LibTorch headers at $torch_include (flags_fuzz_seeded runs it in CI)"
fi
touch "$out/obj/.built"
for t in "${targets[@]}"; do
  extra=()
  [ "$t" = flags_fuzz ] && extra=(-I"$root/launcher/src" -I"$root/pipeline/include" -isystem "$torch_include"
                                  -D_GLIBCXX_USE_CXX11_ABI=1 "${flag_objs[@]}")
  if [ ! -x "$out/$t" ] || [ "$here/$t.cpp" -nt "$out/$t" ] || [ "$out/obj/.built" -nt "$out/$t" ]; then
    "$cxx" "${flags[@]}" -fsanitize=fuzzer "${mpi_compile[@]}" "${extra[@]}" "$here/$t.cpp" "${objs[@]}" -lfmt \
      "${mpi_link[@]}" -o "$out/$t"
  fi
done

# -close_fd_mask=1: no stdout (flags_fuzz prints --help and --version as CLI11 does).
limits=(-rss_limit_mb=1024 -malloc_limit_mb=64 -timeout=10 -close_fd_mask=1)
status=0
for t in "${targets[@]}"; do
  seeds=("$here/corpus/$t"/*)
  # First every kept seed whole, once: some are larger than the fuzzing length below on purpose
  # (deep nesting that once overflowed the stack).
  if ! (cd "$out" && "./$t" "${limits[@]}" "${seeds[@]}" >"$out/$t.seeds.log" 2>&1); then
    status=1
    tail -n 40 "$out/$t.seeds.log" >&2
    say "FAIL: $t on a kept seed (log: $out/$t.seeds.log)"
    continue
  fi
  # Then fuzzing from them, inputs up to 4 KiB. New inputs go to a scratch directory (listed first);
  # the kept corpus is only read.
  scratch=$(mktemp -d "$out/$t.corpus.XXXXXX")
  say "$t: ${#seeds[@]} kept seeds OK; fuzzing $runs inputs (at most $seconds s)"
  if (cd "$out" && "./$t" -runs="$runs" -max_total_time="$seconds" "${limits[@]}" -max_len=4096 \
        -print_final_stats=1 "$scratch" "$here/corpus/$t" >"$out/$t.log" 2>&1); then
    say "$t: OK ($(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/$t.log" | grep -o '[0-9]*$') inputs," \
      "$(find "$scratch" -type f | wc -l) new interesting ones not kept)"
  else
    status=1
    tail -n 40 "$out/$t.log" >&2
    say "FAIL: $t (log: $out/$t.log; the input that did it is in $out)"
  fi
  rm -rf "$scratch"
done
exit $status
