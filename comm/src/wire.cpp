#include "wire.h"

#include <cstring>
#include <limits>
#include <optional>

#include "pipeswap/core/dtype.h"
#include "pipeswap/core/error.h"

namespace pipeswap::comm::wire {
namespace {

struct CodeRow {
  DtypeCode code;
  DType dtype;
};
constexpr CodeRow kCodes[] = {
    {DtypeCode::kF64, DType::F64},   {DtypeCode::kF32, DType::F32}, {DtypeCode::kF16, DType::F16},
    {DtypeCode::kBF16, DType::BF16}, {DtypeCode::kI64, DType::I64}, {DtypeCode::kI32, DType::I32},
    {DtypeCode::kI16, DType::I16},   {DtypeCode::kI8, DType::I8},   {DtypeCode::kU8, DType::U8},
    {DtypeCode::kBool, DType::BOOL},
};

std::optional<DtypeCode> code_for(c10::ScalarType t) {
  for (const CodeRow& r : kCodes)
    if (to_scalar_type(r.dtype) == t) return r.code;
  return std::nullopt;
}

std::optional<DType> dtype_for(uint8_t code) {
  for (const CodeRow& r : kCodes)
    if (static_cast<uint8_t>(r.code) == code) return r.dtype;
  return std::nullopt;
}

bool known_kind(uint16_t k) {
  return k == static_cast<uint16_t>(MessageKind::kActivation) || k == static_cast<uint16_t>(MessageKind::kOutput) ||
         k == static_cast<uint16_t>(MessageKind::kControl);
}

constexpr const char* kSameBuild = "run the same pipeswap build on every rank";

}  // namespace

Outgoing encode(Message msg) {
  PS_CHECK(msg.tensors.size() <= kMaxTensors, CommError,
           "cannot send a message of {} tensors: the wire format carries at most {} per message", msg.tensors.size(),
           kMaxTensors);
  PS_CHECK(known_kind(static_cast<uint16_t>(msg.kind)), CommError, "cannot send a message of unknown kind {}",
           static_cast<int>(msg.kind));
  Outgoing out;
  out.header.resize(header_bytes(static_cast<uint32_t>(msg.tensors.size())));
  MessageHeader mh{};
  std::memcpy(mh.magic, kMagic, sizeof(kMagic));
  mh.version = kVersion;
  mh.kind = static_cast<uint16_t>(msg.kind);
  mh.micro_batch = msg.micro_batch;
  mh.step = msg.step;
  mh.num_tensors = static_cast<uint32_t>(msg.tensors.size());
  std::memcpy(out.header.data(), &mh, sizeof(mh));

  out.payloads.reserve(msg.tensors.size());
  for (size_t i = 0; i < msg.tensors.size(); ++i) {
    const torch::Tensor& in = msg.tensors[i];
    PS_CHECK(in.defined(), CommError, "cannot send tensor {} of the message: it is undefined", i);
    PS_CHECK(in.dim() <= kMaxDims, CommError, "cannot send tensor {} with {} dimensions: the wire carries at most {}",
             i, in.dim(), kMaxDims);
    const auto code = code_for(in.scalar_type());
    PS_CHECK(code.has_value(), CommError, "cannot send tensor {} of type {}: the wire carries F64..BOOL only", i,
             c10::toString(in.scalar_type()));
    // The wire carries plain bytes: no autograd history, no device memory, no strides.
    torch::Tensor t = in.detach().cpu().contiguous();
    TensorHeader th{};
    th.dtype = static_cast<uint8_t>(*code);
    th.ndim = static_cast<uint8_t>(t.dim());
    for (int64_t d = 0; d < t.dim(); ++d) th.shape[d] = t.size(d);
    th.nbytes = payload_bytes(t);
    std::memcpy(out.header.data() + header_bytes(static_cast<uint32_t>(i)), &th, sizeof(th));
    out.payload_bytes += th.nbytes;
    out.payloads.push_back(std::move(t));
  }
  return out;
}

MessageHeader decode_message_header(const uint8_t* data, size_t size, const std::string& from) {
  PS_CHECK(size >= sizeof(MessageHeader), CommError,
           "{} sent a message header of {} bytes, shorter than the {} bytes of a pipeswap header ({})", from, size,
           sizeof(MessageHeader), kSameBuild);
  MessageHeader mh;
  std::memcpy(&mh, data, sizeof(mh));
  if (std::memcmp(mh.magic, kMagic, sizeof(kMagic)) != 0) {
    uint32_t got = 0;
    std::memcpy(&got, mh.magic, sizeof(got));
    PS_THROW(CommError,
             "{} sent a message starting with 0x{:08x} instead of the pipeswap magic \"PSWP\": it is not a pipeswap "
             "peer, or the stream between us is out of step",
             from, got);
  }
  PS_CHECK(mh.version == kVersion, CommError, "{} speaks wire version {}, this rank speaks version {}: {}", from,
           mh.version, kVersion, kSameBuild);
  PS_CHECK(known_kind(mh.kind), CommError, "{} sent a message of unknown kind {} (known: 1..3): {}", from, mh.kind,
           kSameBuild);
  PS_CHECK(mh.num_tensors <= kMaxTensors, CommError, "{} announced {} tensors in one message, more than the {} allowed",
           from, mh.num_tensors, kMaxTensors);
  return mh;
}

Message decode(const uint8_t* data, size_t size, const std::string& from) {
  const MessageHeader mh = decode_message_header(data, size, from);
  const size_t want = header_bytes(mh.num_tensors);
  PS_CHECK(size == want, CommError, "{} sent a header of {} bytes for {} tensor(s), which need exactly {} bytes: {}",
           from, size, mh.num_tensors, want, kSameBuild);

  Message msg;
  msg.kind = static_cast<MessageKind>(mh.kind);
  msg.micro_batch = mh.micro_batch;
  msg.step = mh.step;
  msg.tensors.reserve(mh.num_tensors);
  for (uint32_t i = 0; i < mh.num_tensors; ++i) {
    TensorHeader th;
    std::memcpy(&th, data + header_bytes(i), sizeof(th));
    const auto dtype = dtype_for(th.dtype);
    PS_CHECK(dtype.has_value(), CommError, "{} sent tensor {} with unknown dtype code {} (known: 1..10): {}", from, i,
             th.dtype, kSameBuild);
    PS_CHECK(th.ndim <= kMaxDims, CommError, "{} sent tensor {} with {} dimensions, more than the {} allowed", from, i,
             th.ndim, kMaxDims);
    // numel * element size, refusing negative dimensions and overflow before trusting nbytes.
    uint64_t expect = dtype_size(*dtype);
    std::vector<int64_t> shape(th.shape, th.shape + th.ndim);
    for (int d = 0; d < th.ndim; ++d) {
      PS_CHECK(th.shape[d] >= 0, CommError, "{} sent tensor {} with negative size {} in dimension {}", from, i,
               th.shape[d], d);
      PS_CHECK(!__builtin_mul_overflow(expect, static_cast<uint64_t>(th.shape[d]), &expect), CommError,
               "{} sent tensor {} of shape [{}] whose byte size overflows", from, i, fmt::join(shape, ", "));
    }
    PS_CHECK(th.nbytes == expect, CommError,
             "{} sent tensor {} of {} [{}] announcing {} bytes where that shape holds {} bytes: the header is corrupt",
             from, i, dtype_name(*dtype), fmt::join(shape, ", "), th.nbytes, expect);
    PS_CHECK(expect <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), CommError,
             "{} sent tensor {} of {} bytes, too large for this host", from, i, expect);
    try {
      msg.tensors.push_back(torch::empty(shape, torch::TensorOptions().dtype(to_scalar_type(*dtype))));
    } catch (const c10::Error& e) {
      PS_THROW(CommError, "cannot allocate {} bytes for tensor {} from {}: {}", expect, i, from,
               e.what_without_backtrace());
    }
  }
  return msg;
}

uint8_t dtype_code(c10::ScalarType t) {
  const auto code = code_for(t);
  PS_CHECK(code.has_value(), CommError, "cannot send a tensor of type {}: the wire carries F64..BOOL only",
           c10::toString(t));
  return static_cast<uint8_t>(*code);
}

c10::ScalarType scalar_type_of(uint8_t code, const std::string& from) {
  const auto dtype = dtype_for(code);
  PS_CHECK(dtype.has_value(), CommError, "{} sent a tensor with unknown dtype code {} (known: 1..10): {}", from, code,
           kSameBuild);
  return to_scalar_type(*dtype);
}

Message on_device(Message msg, c10::Device device) {
  if (!device.is_cpu()) {
    for (auto& t : msg.tensors) t = t.to(device);
  }
  return msg;
}

}  // namespace pipeswap::comm::wire
