// The record format of flags_fuzz.cpp, shared with its seeded driver.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

// Flags a record can pick: a record whose first byte is below this names a flag with a separate
// value, below twice this the --flag=value form; above, the record is a raw argument.
constexpr unsigned kFuzzFlagCount = 66;

// The argument list (argv[0] first) that the input bytes stand for.
std::vector<std::string> flags_fuzz_args(const uint8_t* data, size_t size);
