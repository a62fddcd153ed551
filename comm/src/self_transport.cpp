// A world of one: no peers, so every send or receive is an error.
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
  Message recv(int src, c10::Device) override {
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

}  // namespace

std::unique_ptr<Transport> make_self_transport() { return std::make_unique<SelfTransport>(); }

}  // namespace pipeswap::comm
