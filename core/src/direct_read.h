// O_DIRECT building blocks for SafetensorsFile::read_many (private to core).
//
// O_DIRECT wants the file offset, the length and the memory address aligned to the device's
// logical block size. 4096 is a multiple of every block size in use (512 and 4096), so reads are
// widened to 4096 boundaries and land in a 4096-aligned bounce buffer rather than asking the
// filesystem (statx STATX_DIOALIGN is missing on older kernels and some filesystems).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

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

// This thread's bounce buffers: two of kDirectRequestBytes (one being read, one being copied out
// of), kDirectAlignment-aligned, allocated on first use and freed when the thread ends. Disk
// workers call read_many for every unit they stream, so keeping them per thread avoids allocating
// 32 MiB per call. Throws std::bad_alloc.
char* direct_bounce_buffer(int which);

// Reads n bytes at offset into dst (all three aligned to kDirectAlignment), retrying on EINTR and
// partial reads. Returns the bytes read, fewer than n only at end of file, or -errno.
int64_t pread_direct(int fd, void* dst, uint64_t n, uint64_t offset);

// One aligned file range [begin, stop) read in requests of kDirectRequestBytes (the last one
// shorter) through the calling thread's two bounce buffers, one request ahead of the caller: while
// the caller copies out of request i, a helper thread reads request i+1, so the disk does not stand
// idle during the copy (copying in between reads cost a fifth of the disk's bandwidth). A range of
// one request is read on the caller's thread, and so is every range when no thread can be started.
//
// next() hands out the requests in order; a chunk stays valid until the next call to next() or the
// end of the object. After a chunk that is short (end of file) or failed, nothing more is read. The
// destructor waits for the read in flight, if any (at most one request), and never throws.
class DirectReadAhead {
 public:
  struct Chunk {
    const char* data = nullptr;  // the bytes read, from file offset pos
    uint64_t pos = 0;
    uint64_t want = 0;  // bytes asked for
    int64_t got = 0;    // bytes read: want, fewer only at end of file, or -errno
  };
  DirectReadAhead(int fd, uint64_t begin, uint64_t stop);
  ~DirectReadAhead();
  DirectReadAhead(const DirectReadAhead&) = delete;
  DirectReadAhead& operator=(const DirectReadAhead&) = delete;
  // The next request's chunk; false once every request was handed out or one came back short.
  bool next(Chunk& out);

 private:
  uint64_t request_pos(uint64_t i) const { return begin_ + i * kDirectRequestBytes; }
  uint64_t request_len(uint64_t i) const;
  void helper();

  int fd_;
  uint64_t begin_;
  uint64_t stop_;
  uint64_t count_;       // requests in [begin, stop)
  char* buf_[2];         // request i lands in buf_[i % 2]
  int64_t got_[2] = {};  // result of the request in each buffer, once produced
  uint64_t taken_ = 0;   // requests handed out by next()
  bool ended_ = false;   // a short or failed chunk was handed out: nothing follows it
  // Shared with the helper, under mu_: requests [0, produced_) are read; [0, released_) may be
  // overwritten (the caller is done with them); cancel_ stops the helper.
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t produced_ = 0;
  uint64_t released_ = 0;
  bool cancel_ = false;
  std::thread thread_;  // not joinable: the caller reads each request itself
};

}  // namespace pipeswap::detail
