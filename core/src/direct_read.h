// O_DIRECT building blocks for SafetensorsFile::read_many (private to core).
//
// O_DIRECT wants the file offset, the length and the memory address aligned to the device's
// logical block size. 4096 is a multiple of every block size in use (512 and 4096), so reads are
// widened to 4096 boundaries and land in a 4096-aligned bounce buffer rather than asking the
// filesystem (statx STATX_DIOALIGN is missing on older kernels and some filesystems).
#pragma once

#include <cstdint>
#include <string>

namespace pipeswap::detail {

constexpr uint64_t kDirectAlignment = 4096;
// The disk reaches its bandwidth at 16 MiB per request (DESIGN.md); larger ones only cost memory.
constexpr uint64_t kDirectRequestBytes = uint64_t{16} << 20;
// Neighbouring tensors this close are read as one extent: reading the gap costs less than
// another request at ~1.6 GB/s (1 MiB is about 0.6 ms), and parts are mostly contiguous anyway.
constexpr uint64_t kMergeGapBytes = uint64_t{1} << 20;

inline uint64_t align_down(uint64_t v) { return v / kDirectAlignment * kDirectAlignment; }
inline uint64_t align_up(uint64_t v) { return (v + kDirectAlignment - 1) / kDirectAlignment * kDirectAlignment; }

// True when PIPESWAP_NO_DIRECT_IO is set to anything but "" or "0".
bool direct_io_disabled_by_env();

// Opens path read-only with O_DIRECT. Returns the descriptor, or -errno.
int open_direct(const std::string& path);

// Streams reading one extent at once: stream s reads requests s, s + kDirectStreams, ... and copies
// each one out before reading its next, so while one stream copies, the other's read keeps the disk
// busy (one stream alone left the disk idle for every copy: a tenth to a fifth of its bandwidth on
// the CI VM, docs/benchmarks.md 2a). The calling thread is stream 0; each other stream is a helper
// thread for the extent's duration, with a bounce buffer of its own.
constexpr int kDirectStreams = 2;

// Bounce buffer `which` (< kDirectStreams) of this thread: kDirectRequestBytes,
// kDirectAlignment-aligned, allocated on first use and freed when the thread ends. Disk workers call
// read_many for every unit they stream, so keeping them per thread avoids allocating them per call;
// a thread whose extents never span two requests only ever allocates buffer 0. Throws std::bad_alloc.
char* direct_bounce_buffer(int which);

// Reads n bytes at offset into dst (all three aligned to kDirectAlignment), retrying on EINTR and
// partial reads. Returns the bytes read, fewer than n only at end of file, or -errno.
int64_t pread_direct(int fd, void* dst, uint64_t n, uint64_t offset);

}  // namespace pipeswap::detail
