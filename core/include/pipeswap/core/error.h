// Typed errors and the one check-macro family for CUDA / NCCL / MPI / LibTorch / our own checks.
//
// Library code throws; only the launcher catches (once), logs with the rank prefix and aborts the
// job so that peers fail fast. Destructors never throw: they use the *_WARN variants.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace pipeswap {

// Base of every error pipeswap throws on purpose. what() is the message alone (what is wrong and how
// to fix it); the launcher's log line adds the rank prefix, and location() (file:line, shown at
// --log-level debug) says where it was thrown.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, std::string location = {})
      : std::runtime_error(what), location_(std::move(location)) {}
  // "offload/src/host_source.cpp:42", or empty when not thrown through PS_THROW.
  const std::string& location() const { return location_; }

 private:
  std::string location_;
};

// Bad user input: flags, config files, device chains, input files. The message says how to fix it.
class ConfigError : public Error {
  using Error::Error;
};
// A checkpoint or weight file that is missing, malformed or disagrees with config.json.
class CheckpointError : public Error {
  using Error::Error;
};
// Input/output files other than checkpoints (the job's input, the output path).
class IoError : public Error {
  using Error::Error;
};
// Moving data between ranks failed (transport error, protocol mismatch).
class CommError : public Error {
  using Error::Error;
};
// A peer rank died, hung past the timeout, or aborted the job.
class PeerLostError : public CommError {
  using CommError::CommError;
};
// Another rank aborted the job; its own error line says why (this one repeats it, naming the rank).
class PeerAbortedError : public PeerLostError {
  using PeerLostError::PeerLostError;
};
// A device-side failure (CUDA, NCCL, allocation).
class DeviceError : public Error {
  using Error::Error;
};

namespace detail {
// "offload/src/host_cache.cpp:42": the file without its directories above the library folder.
std::string source_location(const char* file, int line);
}  // namespace detail

}  // namespace pipeswap

// PS_THROW(ConfigError, "bad {} value", x): throws the message, with file:line as its location().
#define PS_THROW(Type, ...) \
  throw ::pipeswap::Type(fmt::format(__VA_ARGS__), ::pipeswap::detail::source_location(__FILE__, __LINE__))

// PS_CHECK(cond, Type, fmt, args...): the message is only formatted when the check fails.
#define PS_CHECK(cond, Type, ...) \
  do {                            \
    if (!(cond)) {                \
      PS_THROW(Type, __VA_ARGS__); \
    }                             \
  } while (0)

// MPI calls: the error string comes from MPI_Error_string, only when the call failed.
#define PS_CHECK_MPI(expr)                                                                   \
  do {                                                                                       \
    int ps_mpi_rc_ = (expr);                                                                 \
    if (ps_mpi_rc_ != 0) {                                                                   \
      PS_THROW(CommError, "{} failed: {}", #expr, ::pipeswap::detail::mpi_error_string(ps_mpi_rc_)); \
    }                                                                                        \
  } while (0)

// CUDA runtime calls, in files built with the CUDA toolkit (cuda_runtime_api.h included): the error
// text comes from cudaGetErrorString, only when the call failed.
#define PS_CHECK_CUDA(expr)                                                           \
  do {                                                                                \
    cudaError_t ps_cuda_rc_ = (expr);                                                 \
    if (ps_cuda_rc_ != cudaSuccess) {                                                 \
      PS_THROW(DeviceError, "{} failed: {}", #expr, cudaGetErrorString(ps_cuda_rc_)); \
    }                                                                                 \
  } while (0)

// NCCL calls, in files that include nccl.h. ncclInProgress is not a failure (non-blocking
// communicators return it); the text adds NCCL's own last error.
#define PS_CHECK_NCCL(expr)                                                                                         \
  do {                                                                                                              \
    ncclResult_t ps_nccl_rc_ = (expr);                                                                              \
    if (ps_nccl_rc_ != ncclSuccess && ps_nccl_rc_ != ncclInProgress) {                                              \
      PS_THROW(CommError, "{} failed: {} ({})", #expr, ncclGetErrorString(ps_nccl_rc_), ncclGetLastError(nullptr)); \
    }                                                                                                               \
  } while (0)

namespace pipeswap::detail {
std::string mpi_error_string(int rc);
}
