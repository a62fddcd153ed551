// The activation wire format shared by the MPI and TCP transports (internal to comm/).
//
// A message on the wire is one packed MessageHeader, then one packed TensorHeader per tensor, then
// every tensor's raw bytes in header order (contiguous, row-major, host byte order). The headers are
// fixed-size structs with static_asserted layouts so that two builds agree byte for byte, and the
// version field turns a mismatched build into a clear error instead of garbage tensors.
//
// What this file must not do: touch sockets or MPI. The transports move the bytes; this file only
// says what they mean and refuses anything that does not add up.
#pragma once

#include <torch/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "pipeswap/comm/transport.h"

namespace pipeswap::comm::wire {

// Raw tensor bytes travel in host order; every target (x86-64, aarch64) is little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the pipeswap wire format assumes little-endian hosts");

constexpr char kMagic[4] = {'P', 'S', 'W', 'P'};
constexpr uint16_t kVersion = 1;
constexpr int kMaxDims = 8;
// Bounds the header so a receiver can post one fixed-size buffer for it (MPI) and so a corrupt
// count cannot make it allocate gigabytes (TCP).
constexpr uint32_t kMaxTensors = 128;

// Element type codes on the wire. Fixed numbers, independent of the order of pipeswap::DType.
enum class DtypeCode : uint8_t {
  kF64 = 1,
  kF32 = 2,
  kF16 = 3,
  kBF16 = 4,
  kI64 = 5,
  kI32 = 6,
  kI16 = 7,
  kI8 = 8,
  kU8 = 9,
  kBool = 10,
};

#pragma pack(push, 1)
struct MessageHeader {
  char magic[4];     // "PSWP"
  uint16_t version;  // kVersion
  uint16_t kind;     // MessageKind
  int32_t micro_batch;
  int32_t step;
  uint32_t num_tensors;  // <= kMaxTensors
};

struct TensorHeader {
  uint8_t dtype;            // DtypeCode
  uint8_t ndim;             // <= kMaxDims; 0 for a scalar
  uint8_t reserved[6];      // zero
  int64_t shape[kMaxDims];  // entries past ndim are zero
  uint64_t nbytes;          // numel * element size: checked against shape on receipt
};
#pragma pack(pop)

static_assert(sizeof(MessageHeader) == 20, "MessageHeader layout changed: bump kVersion");
static_assert(offsetof(MessageHeader, version) == 4 && offsetof(MessageHeader, kind) == 6 &&
                  offsetof(MessageHeader, micro_batch) == 8 && offsetof(MessageHeader, step) == 12 &&
                  offsetof(MessageHeader, num_tensors) == 16,
              "MessageHeader layout changed: bump kVersion");
static_assert(sizeof(TensorHeader) == 80, "TensorHeader layout changed: bump kVersion");
static_assert(offsetof(TensorHeader, ndim) == 1 && offsetof(TensorHeader, shape) == 8 &&
                  offsetof(TensorHeader, nbytes) == 72,
              "TensorHeader layout changed: bump kVersion");

// Bytes of the headers of a message with n tensors.
constexpr size_t header_bytes(uint32_t num_tensors) {
  return sizeof(MessageHeader) + size_t{num_tensors} * sizeof(TensorHeader);
}
constexpr size_t kMaxHeaderBytes = header_bytes(kMaxTensors);

// A message made ready for the wire. The payload tensors are the contiguous CPU versions of the
// message's tensors; holding them here keeps their bytes alive until the transport has sent them.
struct Outgoing {
  std::vector<uint8_t> header;  // header_bytes(payloads.size()) bytes
  std::vector<torch::Tensor> payloads;
  uint64_t payload_bytes = 0;  // sum of the payloads' nbytes
};

// Throws CommError for undefined tensors, more than kMaxTensors tensors, more than kMaxDims
// dimensions, or element types the wire cannot carry. Copies device or strided tensors to
// contiguous CPU memory (synchronously).
Outgoing encode(Message msg);

// Validates the fixed message header at the front of `data` (at least sizeof(MessageHeader)
// bytes): magic, version, kind and tensor count. `from` names the sender ("rank 2 (node7)") for the
// error text. Returns the header so the caller knows how many tensor headers follow.
MessageHeader decode_message_header(const uint8_t* data, size_t size, const std::string& from);

// Decodes a complete header block of exactly header_bytes(n) bytes. Returns the message with
// freshly allocated CPU tensors of the announced dtype and shape, ready to receive their payload
// bytes in order. Throws CommError naming what was received and from whom.
Message decode(const uint8_t* data, size_t size, const std::string& from);

// Raw byte size of a tensor as it travels (numel * element size).
inline uint64_t payload_bytes(const torch::Tensor& t) { return static_cast<uint64_t>(t.nbytes()); }

// The wire code of an element type, for headers that travel apart from their payload (the NCCL
// transport's). Throws CommError for a type the wire cannot carry.
uint8_t dtype_code(c10::ScalarType t);
// The element type of a wire code; CommError naming `from` and the code when it is unknown.
c10::ScalarType scalar_type_of(uint8_t code, const std::string& from);

// A received message (CPU tensors) with its tensors moved to `device`.
Message on_device(Message msg, c10::Device device);

}  // namespace pipeswap::comm::wire
