// Byte sizes as users write them ("24GB", "512MiB", "1.5g", "1000000").
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace pipeswap {

// Largest size accepted anywhere (2^62 bytes): sums of a few sizes still fit in int64.
constexpr int64_t kMaxBytes = int64_t{1} << 62;

// The bytes `text` stands for, as a double so that nothing overflows yet: a finite, non-negative
// number with an optional unit (B, k/KB, M/MB, G/GB, T/TB: powers of 1000; KiB, MiB, GiB, TiB: of
// 1024; case-insensitive). nullopt when it is not a size. The CLI bounds it (launcher/src/flags.h).
std::optional<double> byte_count(const std::string& text);

}  // namespace pipeswap
