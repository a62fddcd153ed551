// A world of one, and the transport-generic string allgather used for start-up agreement.
#include <cstring>

#include "pipeswap/comm/transport.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/identity.h"
#include "pipeswap/core/log.h"

namespace pipeswap::comm {
namespace {

class SelfTransport final : public Transport {
 public:
  SelfTransport() : hosts_{local_hostname()} {}
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  const std::vector<std::string>& hosts() const override { return hosts_; }
  void send(int dst, Message) override {
    PS_THROW(CommError, "send to rank {} in a world of one rank: a single rank has no peer to send to", dst);
  }
  Message recv(int src) override {
    PS_THROW(CommError, "recv from rank {} in a world of one rank: a single rank has no peer to receive from", src);
  }
  void barrier() override {}
  void flush() override {}
  void abort(const std::string& reason) noexcept override {
    try {
      log().debug("self transport aborted: {}", reason);
    } catch (...) {
      // Logging must not turn an abort into a throw.
    }
  }
  const char* name() const override { return "self"; }

 private:
  std::vector<std::string> hosts_;
};

torch::Tensor bytes_of(const std::string& s) {
  torch::Tensor t = torch::empty({static_cast<int64_t>(s.size())}, torch::kUInt8);
  if (!s.empty()) std::memcpy(t.data_ptr(), s.data(), s.size());
  return t;
}

// Checks that a message is the control message allgather expects: otherwise the ranks are out of
// step (one of them is in another phase of the job) and going on would mix unrelated data.
void expect_control(const Message& m, int src, size_t tensors) {
  PS_CHECK(m.kind == MessageKind::kControl && m.tensors.size() == tensors, CommError,
           "allgather: rank {} sent a message of kind {} with {} tensor(s) where a control message with {} was "
           "expected (ranks are out of step: are all running the same build and arguments?)",
           src, static_cast<int>(m.kind), m.tensors.size(), tensors);
  for (const auto& t : m.tensors) {
    PS_CHECK(t.dim() == 1 && (t.scalar_type() == torch::kUInt8 || t.scalar_type() == torch::kInt64), CommError,
             "allgather: rank {} sent a control tensor of type {} and {} dimension(s)", src,
             c10::toString(t.scalar_type()), t.dim());
  }
}

}  // namespace

std::unique_ptr<Transport> make_self_transport() { return std::make_unique<SelfTransport>(); }

std::vector<std::string> allgather_strings(Transport& t, const std::string& mine) {
  const int n = t.world_size();
  if (n == 1) return {mine};
  // Rank 0 collects one string from every rank in rank order, then sends everyone the whole table
  // as two tensors (lengths, concatenated bytes) so the message size does not grow with the world.
  std::vector<std::string> out = gather_strings(t, mine);
  if (t.rank() != 0) {
    Message all = t.recv(0);
    expect_control(all, 0, 2);
    const torch::Tensor& lengths = all.tensors[0];
    const torch::Tensor& bytes = all.tensors[1];
    PS_CHECK(lengths.scalar_type() == torch::kInt64 && lengths.numel() == n && bytes.scalar_type() == torch::kUInt8,
             CommError, "allgather: rank 0 sent {} string lengths for a world of {}", lengths.numel(), n);
    out.reserve(n);
    const auto* len = lengths.data_ptr<int64_t>();
    const auto* data = static_cast<const char*>(bytes.data_ptr());
    int64_t off = 0;
    for (int r = 0; r < n; ++r) {
      PS_CHECK(len[r] >= 0 && off + len[r] <= bytes.numel(), CommError,
               "allgather: rank 0 sent string lengths that do not fit its {} bytes", bytes.numel());
      out.push_back(len[r] == 0 ? std::string() : std::string(data + off, static_cast<size_t>(len[r])));
      off += len[r];
    }
    return out;
  }
  torch::Tensor lengths = torch::empty({n}, torch::kInt64);
  std::string joined;
  for (int r = 0; r < n; ++r) {
    lengths.data_ptr<int64_t>()[r] = static_cast<int64_t>(out[r].size());
    joined += out[r];
  }
  torch::Tensor bytes = bytes_of(joined);
  for (int r = 1; r < n; ++r) t.send(r, Message{MessageKind::kControl, 0, 0, {lengths, bytes}});
  return out;
}

std::vector<std::string> gather_strings(Transport& t, const std::string& mine) {
  const int n = t.world_size();
  if (n == 1) return {mine};
  if (t.rank() != 0) {
    t.send(0, Message{MessageKind::kControl, 0, 0, {bytes_of(mine)}});
    return {};
  }
  std::vector<std::string> out{mine};
  out.reserve(n);
  for (int r = 1; r < n; ++r) {
    Message m = t.recv(r);
    expect_control(m, r, 1);
    PS_CHECK(m.tensors[0].scalar_type() == torch::kUInt8, CommError, "allgather: rank {} sent a non-byte tensor", r);
    const torch::Tensor& b = m.tensors[0];
    out.push_back(b.numel() == 0 ? std::string()
                                 : std::string(static_cast<const char*>(b.data_ptr()), static_cast<size_t>(b.numel())));
  }
  return out;
}

}  // namespace pipeswap::comm
