// Transports and the wire format. One binary: alone it runs the wire, self and TCP tests (the TCP
// tests start their ranks as threads or child processes of this one); under `mpirun -np N` it runs
// the wire tests and the MPI tests on every rank (TCP tests are skipped there: forking an MPI
// process is not portable, and they already ran in the plain run).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <thread>

#include "pipeswap/comm/transport.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/identity.h"
#include "pipeswap/pipeline/collective.h"
#include "wire.h"

namespace pipeswap::comm {
namespace {

using pipeswap::pipeline::allgather_strings;  // the collectives over a transport (pipeline/collective.h)
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Runs f and returns what() of the E it throws; any other outcome is a test failure.
template <class E, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw the wrong exception type: " << e.what();
    return "";
  }
  ADD_FAILURE() << "did not throw";
  return "";
}

// Same dtype, shape and bytes: exactly what the wire promises (also for bf16/fp16 and NaN-free ints).
::testing::AssertionResult same_tensor(const torch::Tensor& got, const torch::Tensor& want) {
  if (got.scalar_type() != want.scalar_type())
    return ::testing::AssertionFailure() << "dtype " << got.scalar_type() << " != " << want.scalar_type();
  if (got.sizes() != want.sizes())
    return ::testing::AssertionFailure() << "shape " << got.sizes() << " != " << want.sizes();
  if (!got.is_contiguous() || got.device() != torch::kCPU)
    return ::testing::AssertionFailure() << "received tensor is not contiguous CPU";
  torch::Tensor w = want.contiguous();
  if (got.nbytes() && std::memcmp(got.data_ptr(), w.data_ptr(), got.nbytes()) != 0)
    return ::testing::AssertionFailure() << "bytes differ";
  return ::testing::AssertionSuccess();
}

torch::Tensor sample(c10::ScalarType t, std::vector<int64_t> shape, int seed) {
  torch::manual_seed(seed);
  if (t == torch::kBool) return torch::randint(0, 2, shape).to(torch::kBool);
  if (c10::isIntegralType(t, false)) return torch::randint(-100, 100, shape).to(t);
  if (t == torch::kUInt8) return torch::randint(0, 255, shape).to(t);
  return torch::randn(shape).to(t);
}

const std::vector<c10::ScalarType> kAllTypes = {torch::kDouble, torch::kFloat, torch::kHalf,  torch::kBFloat16,
                                                torch::kLong,   torch::kInt,   torch::kShort, torch::kChar,
                                                torch::kByte,   torch::kBool};

// What a receiver does with an encoded message: decode the headers, then fill the payloads.
Message round_trip(Message in) {
  wire::Outgoing out = wire::encode(std::move(in));
  Message got = wire::decode(out.header.data(), out.header.size(), "rank 9 (testhost)");
  EXPECT_EQ(got.tensors.size(), out.payloads.size());
  for (size_t i = 0; i < got.tensors.size() && i < out.payloads.size(); ++i) {
    EXPECT_EQ(wire::payload_bytes(got.tensors[i]), wire::payload_bytes(out.payloads[i]));
    if (got.tensors[i].nbytes()) {
      std::memcpy(got.tensors[i].data_ptr(), out.payloads[i].data_ptr(), got.tensors[i].nbytes());
    }
  }
  return got;
}

// ------------------------------------------------------------------------------------------------
// Wire format

TEST(Wire, RoundTripEveryDtypeAndShape) {
  const std::vector<std::vector<int64_t>> shapes = {{}, {0}, {3, 0, 2}, {5}, {2, 3, 4}, {1, 1, 1, 1, 1, 1, 1, 2}};
  int seed = 0;
  for (c10::ScalarType t : kAllTypes) {
    Message m{MessageKind::kActivation, 7, 3, {}};
    for (const auto& s : shapes) m.tensors.push_back(sample(t, s, ++seed));
    const Message want = m;
    Message got = round_trip(std::move(m));
    ASSERT_EQ(got.tensors.size(), want.tensors.size()) << c10::toString(t);
    for (size_t i = 0; i < got.tensors.size(); ++i) {
      EXPECT_TRUE(same_tensor(got.tensors[i], want.tensors[i])) << c10::toString(t) << " tensor " << i;
    }
  }
}

TEST(Wire, HeaderFieldsAndLayouts) {
  Message m{MessageKind::kOutput, -5, 123456, {}};
  Message got = round_trip(m);
  EXPECT_EQ(got.kind, MessageKind::kOutput);
  EXPECT_EQ(got.micro_batch, -5);
  EXPECT_EQ(got.step, 123456);
  EXPECT_TRUE(got.tensors.empty());

  // Strided and autograd tensors travel as their contiguous values.
  torch::Tensor base = torch::arange(12, torch::kFloat).reshape({3, 4}).requires_grad_();
  got = round_trip(Message{MessageKind::kControl, 0, 0, {base.t(), base.narrow(1, 1, 2)}});
  EXPECT_TRUE(same_tensor(got.tensors[0], base.t().detach().contiguous()));
  EXPECT_TRUE(same_tensor(got.tensors[1], base.narrow(1, 1, 2).detach().contiguous()));

  const wire::Outgoing out = wire::encode(Message{MessageKind::kActivation, 0, 0, {torch::zeros({2, 3})}});
  EXPECT_EQ(out.header.size(), 20u + 80u);
  EXPECT_EQ(std::memcmp(out.header.data(), "PSWP", 4), 0);
  EXPECT_EQ(out.payload_bytes, 24u);
}

TEST(Wire, EncodeRefusesWhatTheWireCannotCarry) {
  EXPECT_THAT(error_of<CommError>([] {
                wire::encode(Message{MessageKind::kActivation, 0, 0, {torch::Tensor()}});
              }),
              HasSubstr("undefined"));
  EXPECT_THAT(error_of<CommError>([] {
                wire::encode(Message{MessageKind::kActivation, 0, 0, {torch::zeros({1, 1, 1, 1, 1, 1, 1, 1, 1})}});
              }),
              HasSubstr("9 dimensions"));
  EXPECT_THAT(error_of<CommError>([] {
                wire::encode(Message{MessageKind::kActivation, 0, 0, {torch::zeros({2}, torch::kComplexFloat)}});
              }),
              HasSubstr("ComplexFloat"));
  EXPECT_THAT(error_of<CommError>([] {
                wire::encode(Message{MessageKind::kActivation, 0, 0,
                                     std::vector<torch::Tensor>(wire::kMaxTensors + 1, torch::zeros({1}))});
              }),
              HasSubstr("at most"));
  EXPECT_THAT(error_of<CommError>([] {
                wire::encode(Message{static_cast<MessageKind>(9), 0, 0, {}});
              }),
              HasSubstr("unknown kind 9"));
}

// A valid two-tensor header, and a way to corrupt one field at a time.
struct Corruptible {
  std::vector<uint8_t> bytes;
  Corruptible() {
    bytes =
        wire::encode(Message{MessageKind::kActivation, 1, 2, {torch::zeros({2, 3}), torch::zeros({4}, torch::kLong)}})
            .header;
  }
  wire::MessageHeader& msg() { return *reinterpret_cast<wire::MessageHeader*>(bytes.data()); }
  wire::TensorHeader& tensor(int i) {
    return *reinterpret_cast<wire::TensorHeader*>(bytes.data() + wire::header_bytes(static_cast<uint32_t>(i)));
  }
  std::string error() {
    return error_of<CommError>([&] { wire::decode(bytes.data(), bytes.size(), "rank 3 (nodeX)"); });
  }
};

TEST(Wire, DetectsEveryCorruption) {
  {
    Corruptible c;
    EXPECT_NO_THROW(wire::decode(c.bytes.data(), c.bytes.size(), "rank 3 (nodeX)"));
  }
  struct Case {
    const char* what;
    std::function<void(Corruptible&)> corrupt;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {"magic", [](Corruptible& c) { c.msg().magic[0] = 'X'; }, {"PSWP", "0x"}},
      {"version", [](Corruptible& c) { c.msg().version = 7; }, {"version 7", "version 1"}},
      {"kind", [](Corruptible& c) { c.msg().kind = 42; }, {"unknown kind 42"}},
      {"count", [](Corruptible& c) { c.msg().num_tensors = 100000; }, {"100000 tensors"}},
      {"count vs size", [](Corruptible& c) { c.msg().num_tensors = 1; }, {"1 tensor(s)", "180 bytes"}},
      {"truncated", [](Corruptible& c) { c.bytes.resize(12); }, {"12 bytes", "shorter"}},
      {"cut in a tensor header", [](Corruptible& c) { c.bytes.resize(c.bytes.size() - 1); }, {"179 bytes"}},
      {"dtype", [](Corruptible& c) { c.tensor(1).dtype = 77; }, {"tensor 1", "dtype code 77"}},
      {"dtype zero", [](Corruptible& c) { c.tensor(0).dtype = 0; }, {"tensor 0", "dtype code 0"}},
      {"ndim", [](Corruptible& c) { c.tensor(0).ndim = 9; }, {"9 dimensions"}},
      {"negative dim", [](Corruptible& c) { c.tensor(0).shape[1] = -3; }, {"negative size -3"}},
      {"nbytes", [](Corruptible& c) { c.tensor(0).nbytes = 25; }, {"F32 [2, 3]", "25 bytes", "24 bytes"}},
      {"shape vs nbytes", [](Corruptible& c) { c.tensor(1).shape[0] = 5; }, {"I64 [5]", "32 bytes", "40 bytes"}},
      {"overflow",
       [](Corruptible& c) {
         c.tensor(0).shape[0] = int64_t{1} << 40;
         c.tensor(0).shape[1] = int64_t{1} << 40;
       },
       {"overflows"}},
  };
  for (const Case& k : cases) {
    Corruptible c;
    k.corrupt(c);
    const std::string err = c.error();
    EXPECT_THAT(err, HasSubstr("rank 3 (nodeX)")) << k.what;
    for (const auto& s : k.expect) EXPECT_THAT(err, HasSubstr(s)) << k.what;
  }
}

// ------------------------------------------------------------------------------------------------
// World of one

TEST(SelfTransport, WorldOfOne) {
  auto t = make_self_transport();
  EXPECT_EQ(t->rank(), 0);
  EXPECT_EQ(t->world_size(), 1);
  EXPECT_EQ(t->hosts(), std::vector<std::string>{local_hostname()});
  EXPECT_STREQ(t->name(), "self");
  t->barrier();
  t->flush();
  EXPECT_THAT(error_of<CommError>([&] { t->send(0, Message{}); }), HasSubstr("world of one"));
  EXPECT_THAT(error_of<CommError>([&] { t->recv(0); }), HasSubstr("world of one"));
  EXPECT_EQ(allgather_strings(*t, "hello"), std::vector<std::string>{"hello"});
  t->abort("test");  // no-op, must not throw
}

// ------------------------------------------------------------------------------------------------
// Exchanges shared by the MPI and TCP tests: every rank runs the same function with its transport.

Message ring_message(int from, int round) {
  return Message{MessageKind::kActivation,
                 round,
                 from,
                 {torch::full({3, 5}, 1000.0 * from + round, torch::kFloat),
                  torch::arange(from + round + 1, torch::kLong).to(torch::kBFloat16), torch::tensor(from * 10 + round),
                  torch::empty({0, 4}, torch::kHalf)}};
}

void ring_exchange(Transport& t, int rounds) {
  const int n = t.world_size(), r = t.rank();
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  for (int k = 0; k < rounds; ++k) {
    t.send(next, ring_message(r, k));
    Message got = t.recv(prev);
    const Message want = ring_message(prev, k);
    EXPECT_EQ(got.kind, MessageKind::kActivation);
    EXPECT_EQ(got.micro_batch, k);
    EXPECT_EQ(got.step, prev);
    ASSERT_EQ(got.tensors.size(), want.tensors.size());
    for (size_t i = 0; i < want.tensors.size(); ++i) EXPECT_TRUE(same_tensor(got.tensors[i], want.tensors[i])) << i;
  }
  t.flush();
}

// Ranks 0 and 1 stream `count` messages to each other at once, mixing tiny and 256 KiB payloads (on
// MPI the small ones go eagerly and the big ones by rendezvous: order must hold across both).
void ordered_stream(Transport& t, int count) {
  if (t.rank() > 1) return;
  const int other = 1 - t.rank();
  auto payload = [](int from, int i) {
    return i % 3 == 0 ? torch::full({64 * 1024}, static_cast<float>(from * 100000 + i)) : torch::tensor({from, i});
  };
  for (int i = 0; i < count; ++i) t.send(other, Message{MessageKind::kActivation, i, 0, {payload(t.rank(), i)}});
  for (int i = 0; i < count; ++i) {
    Message m = t.recv(other);
    ASSERT_EQ(m.micro_batch, i);
    ASSERT_TRUE(same_tensor(m.tensors.at(0), payload(other, i))) << i;
  }
  t.flush();
}

// Every rank sends 64 MiB to the next one (more than one MPI eager/rendezvous fragment and more than
// a socket buffer many times over).
void big_exchange(Transport& t) {
  const int n = t.world_size(), r = t.rank();
  constexpr int64_t kFloats = 16 * 1024 * 1024;
  t.send((r + 1) % n, Message{MessageKind::kOutput, r, 0, {torch::arange(kFloats, torch::kFloat) + r}});
  const int prev = (r + n - 1) % n;
  Message m = t.recv(prev);
  ASSERT_EQ(m.tensors.size(), 1u);
  const torch::Tensor& x = m.tensors[0];
  ASSERT_EQ(x.numel(), kFloats);
  // A sample every 4099 floats (about every 16 KiB) catches lost, reordered or zeroed pieces without
  // a full compare (CI cores are shared).
  using torch::indexing::Slice;
  EXPECT_TRUE(torch::equal(x.index({Slice(0, kFloats, 4099)}), torch::arange(0, kFloats, 4099, torch::kFloat) + prev));
  EXPECT_EQ(x[kFloats - 1].item<float>(), static_cast<float>(kFloats - 1 + prev));
  t.flush();
}

void check_allgather(Transport& t) {
  // Different lengths, one empty, so the packing is exercised.
  const std::string mine = t.rank() == 1 ? std::string() : std::string(t.rank() + 1, static_cast<char>('a' + t.rank()));
  auto all = allgather_strings(t, mine);
  ASSERT_EQ(static_cast<int>(all.size()), t.world_size());
  for (int r = 0; r < t.world_size(); ++r) {
    EXPECT_EQ(all[r], r == 1 ? std::string() : std::string(r + 1, static_cast<char>('a' + r))) << r;
  }
}

// ------------------------------------------------------------------------------------------------
// MPI (under mpirun; the plain run skips these)

// GTEST_SKIP only leaves the function it is written in: a macro, so it leaves the test body.
#define NEED_PEERS() \
  if (size_ < 2) GTEST_SKIP() << "needs mpirun -np 2 or more"

class MpiTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int init = 0;
    MPI_Initialized(&init);
    if (!init) GTEST_SKIP() << "not under mpirun";
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  int rank_ = 0;
  int size_ = 1;
};

TEST_F(MpiTransportTest, HostsAndBarrier) {
  auto t = make_mpi_transport(TransportOptions{milliseconds(20000)});
  EXPECT_EQ(t->rank(), rank_);
  EXPECT_EQ(t->world_size(), size_);
  ASSERT_EQ(static_cast<int>(t->hosts().size()), size_);
  EXPECT_EQ(t->hosts()[rank_], local_hostname());
  EXPECT_STREQ(t->name(), "mpi");
  for (int i = 0; i < 3; ++i) t->barrier();
  check_allgather(*t);
  EXPECT_THROW(t->send(rank_, Message{}), CommError);
  EXPECT_THROW(t->recv(size_), CommError);
}

TEST_F(MpiTransportTest, RingExchange) {
  NEED_PEERS();
  auto t = make_mpi_transport(TransportOptions{milliseconds(20000)});
  ring_exchange(*t, 5);
  t->barrier();
}

TEST_F(MpiTransportTest, ManyMessagesStayInOrder) {
  NEED_PEERS();
  auto t = make_mpi_transport(TransportOptions{milliseconds(20000)});
  ordered_stream(*t, 300);
  t->barrier();
}

TEST_F(MpiTransportTest, BigMessage) {
  NEED_PEERS();
  auto t = make_mpi_transport(TransportOptions{milliseconds(20000)});
  big_exchange(*t);
  t->barrier();
}

TEST_F(MpiTransportTest, RecvTimeoutNamesThePeer) {
  NEED_PEERS();
  auto t = make_mpi_transport(TransportOptions{milliseconds(300)});
  if (rank_ == 0) {
    const auto t0 = Clock::now();
    const std::string err = error_of<PeerLostError>([&] { t->recv(1); });
    EXPECT_THAT(err, HasSubstr("no message from rank 1 (" + t->hosts()[1] + ")"));
    EXPECT_THAT(err, HasSubstr("0.3 s"));
    EXPECT_GE(since(t0), 0.29);
    EXPECT_LT(since(t0), 3.0);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  // The timed-out receive stays posted: a message that comes late is still delivered, in order.
  if (rank_ == 1) {
    t->send(0, Message{MessageKind::kControl, 41, 0, {torch::tensor({41})}});
    t->flush();
  } else if (rank_ == 0) {
    Message m = t->recv(1);
    EXPECT_EQ(m.micro_batch, 41);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

// Rank 2 stays out of the transport (as a stopped or hung rank would); rank 1 waits on it, rank 0 on
// rank 1, which is alive and waits itself. The watchdog's ping round names rank 2 on both, not rank
// 0's live neighbour; a barrier, which MPI cannot attribute by itself, names it too.
TEST_F(MpiTransportTest, SilentRankIsNamedNotItsLiveNeighbour) {
  if (size_ < 3) GTEST_SKIP() << "needs mpirun -np 3 or more";
  auto t = make_mpi_transport(TransportOptions{milliseconds(300)});
  const std::string rank2 = "rank 2 (" + t->hosts()[2] + ")";
  if (rank_ < 2) {
    const auto t0 = Clock::now();
    const std::string err = error_of<PeerLostError>([&] { t->recv(rank_ + 1); });
    EXPECT_THAT(err, HasSubstr(rank_ == 1 ? "no message from " + rank2 + " within 0.3 s, and it does not answer"
                                          : rank2 + " does not answer (no message from rank 1"));
    EXPECT_LT(since(t0), 3.0);
    EXPECT_THAT(error_of<PeerLostError>([&] { t->barrier(); }), HasSubstr("and " + rank2 + " does not answer"));
  }
  MPI_Barrier(MPI_COMM_WORLD);
  // The late messages and the barrier complete what timed out, so the transport closes cleanly.
  if (rank_ == 1 || rank_ == 2) t->send(rank_ - 1, Message{MessageKind::kControl, rank_, 0, {}});
  if (rank_ < 2) {
    EXPECT_EQ(t->recv(rank_ + 1).micro_batch, rank_ + 1);
  }
  t->flush();
  t->barrier();
}

// ------------------------------------------------------------------------------------------------
// TCP: ranks are threads (or a forked child) of this process, meeting on 127.0.0.1.

bool under_mpi() {
  int init = 0;
  MPI_Initialized(&init);
  return init != 0;
}

#define SKIP_TCP_UNDER_MPI() \
  if (under_mpi()) GTEST_SKIP() << "TCP tests run in the plain (non-MPI) run"

// A port nobody listens on right now (the kernel's pick for an ephemeral bind).
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

using RankBody = std::function<void(int, std::unique_ptr<Transport>&)>;

// Runs `ranks` of a world of `world` as threads, each with its own TCP transport on 127.0.0.1:port,
// runs body(rank, transport) in each and joins them. A rank that throws fails the test.
void run_tcp_ranks(int world, const std::vector<int>& ranks, int port, milliseconds timeout, const RankBody& body) {
  std::vector<std::thread> threads;
  for (int r : ranks) {
    threads.emplace_back([=, &body] {
      try {
        std::unique_ptr<Transport> t = make_tcp_transport(r, world, "127.0.0.1", port, TransportOptions{timeout});
        body(r, t);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rank " << r << ": " << e.what();
      }
    });
  }
  for (auto& th : threads) th.join();
}

// The whole world as threads.
void run_tcp_ranks(int world, milliseconds timeout, const RankBody& body) {
  std::vector<int> ranks(world);
  for (int r = 0; r < world; ++r) ranks[r] = r;
  run_tcp_ranks(world, ranks, free_port(), timeout, body);
}

TEST(TcpTransport, RingBarrierAllgather) {
  SKIP_TCP_UNDER_MPI();
  run_tcp_ranks(4, milliseconds(10000), [](int r, std::unique_ptr<Transport>& t) {
    EXPECT_EQ(t->rank(), r);
    EXPECT_EQ(t->world_size(), 4);
    EXPECT_EQ(t->hosts(), std::vector<std::string>(4, local_hostname()));
    EXPECT_STREQ(t->name(), "tcp");
    ring_exchange(*t, 5);
    for (int i = 0; i < 3; ++i) t->barrier();
    check_allgather(*t);
    t->barrier();
    EXPECT_THROW(t->send(r, Message{}), CommError);
    EXPECT_THROW(t->recv(4), CommError);
  });
}

TEST(TcpTransport, ManyMessagesStayInOrderAndBigOnesArrive) {
  SKIP_TCP_UNDER_MPI();
  run_tcp_ranks(2, milliseconds(10000), [](int, std::unique_ptr<Transport>& t) {
    ordered_stream(*t, 300);
    big_exchange(*t);
    t->barrier();
  });
}

TEST(TcpTransport, WorldOfOne) {
  SKIP_TCP_UNDER_MPI();
  auto t = make_tcp_transport(0, 1, "127.0.0.1", free_port(), TransportOptions{milliseconds(1000)});
  EXPECT_EQ(t->world_size(), 1);
  t->barrier();
  EXPECT_EQ(allgather_strings(*t, "x"), std::vector<std::string>{"x"});
}

TEST(TcpTransport, MasterThatNeverComesIsNamed) {
  SKIP_TCP_UNDER_MPI();
  const int port = free_port();
  const auto t0 = Clock::now();
  const std::string err =
      error_of<CommError>([&] { make_tcp_transport(1, 2, "127.0.0.1", port, TransportOptions{milliseconds(300)}); });
  EXPECT_THAT(err, HasSubstr("127.0.0.1:" + std::to_string(port)));
  EXPECT_THAT(err, HasSubstr("rank 0"));
  EXPECT_GE(since(t0), 0.25);
  EXPECT_LT(since(t0), 2.0);
}

TEST(TcpTransport, RankZeroNamesRanksThatNeverJoin) {
  SKIP_TCP_UNDER_MPI();
  const int port = free_port();
  std::string err;
  std::thread rank1([&] {
    // Rank 1 joins but rank 2 never does: rank 0 gives up and rank 1 loses its rendezvous.
    EXPECT_THROW(make_tcp_transport(1, 3, "127.0.0.1", port, TransportOptions{milliseconds(2000)}), CommError);
  });
  err = error_of<CommError>([&] { make_tcp_transport(0, 3, "127.0.0.1", port, TransportOptions{milliseconds(300)}); });
  rank1.join();
  EXPECT_THAT(err, HasSubstr("2 did not connect"));
  EXPECT_THAT(err, HasSubstr("127.0.0.1:" + std::to_string(port)));
}

// A peer that is alive (its heartbeats arrive) but sends nothing: twice the timeout, since it may be
// waiting on a hung rank that the watchdog is about to name.
TEST(TcpTransport, RecvTimeoutNamesThePeer) {
  SKIP_TCP_UNDER_MPI();
  std::promise<void> timed_out;
  std::shared_future<void> done = timed_out.get_future().share();
  // 1 s, not less: heartbeats every 250 ms must get through on a loaded machine.
  run_tcp_ranks(2, milliseconds(1000), [&](int r, std::unique_ptr<Transport>& t) {
    if (r == 0) {
      const auto t0 = Clock::now();
      const std::string err = error_of<PeerLostError>([&] { t->recv(1); });
      EXPECT_THAT(err, HasSubstr("no message from rank 1 (" + local_hostname() + ") within 2 s"));
      EXPECT_THAT(err, HasSubstr("although it still answers"));
      EXPECT_GE(since(t0), 1.99);
      EXPECT_LT(since(t0), 4.0);
      timed_out.set_value();
      // A late message is still delivered after the timeout.
      EXPECT_EQ(t->recv(1).micro_batch, 5);
    } else {
      done.wait();
      t->send(0, Message{MessageKind::kActivation, 5, 0, {}});
      t->flush();
    }
    t->barrier();
  });
}

TEST(TcpTransport, BarrierNamesTheMissingRank) {
  SKIP_TCP_UNDER_MPI();
  std::promise<void> gave_up;
  std::shared_future<void> done = gave_up.get_future().share();
  std::atomic<int> failed{0};
  run_tcp_ranks(3, milliseconds(1000), [&](int r, std::unique_ptr<Transport>& t) {
    if (r == 2) {
      done.wait();  // stays away from the barrier (alive: its heartbeats go on) until the others gave up
      return;
    }
    const std::string err = error_of<PeerLostError>([&] { t->barrier(); });
    if (r == 0) {
      EXPECT_THAT(err, HasSubstr("barrier: rank 2 (" + local_hostname() + ") did not arrive"));
    } else {
      EXPECT_THAT(err, HasSubstr("rank 0 (" + local_hostname() + ") did not release"));
    }
    if (++failed == 2) gave_up.set_value();
    done.wait();  // nobody leaves (closing its sockets) before both have timed out on their own
  });
}

// Rank 2 of 3 as a child process at `port`: it joins, passes the first barrier, lets the others start
// waiting on it, then runs `then` and exits with its result (1 if anything threw). No gtest macros run
// in the child; the exit status is the verdict. Returns the child's pid (or -1) in the parent.
pid_t fork_third_rank(int port, milliseconds timeout, const std::function<int()>& then) {
  const pid_t child = ::fork();
  if (child != 0) return child;
  int rc = 1;
  try {
    std::unique_ptr<Transport> t = make_tcp_transport(2, 3, "127.0.0.1", port, TransportOptions{timeout});
    t->barrier();
    std::this_thread::sleep_for(milliseconds(100));  // let the others start waiting on it
    rc = then();
  } catch (...) {
  }
  ::_exit(rc);
}

// The peer is a child process that leaves without any clean-up, as a crash would: the kernel closes
// its sockets. The survivors learn it at once, not after the 10 s timeout.
TEST(TcpTransport, PeerThatDiesIsNamed) {
  SKIP_TCP_UNDER_MPI();
  const int port = free_port();
  const milliseconds timeout(10000);
  const pid_t child = fork_third_rank(port, timeout, [] {
    ::_exit(0);  // the transport is never destroyed
    return 0;
  });
  ASSERT_GE(child, 0);
  run_tcp_ranks(3, {0, 1}, port, timeout, [&](int r, std::unique_ptr<Transport>& t) {
    t->barrier();
    const auto t0 = Clock::now();
    const std::string err = error_of<PeerLostError>([&] { t->recv(2); });
    EXPECT_THAT(err, HasSubstr("rank 2 (" + local_hostname() + ") closed its connection: it exited or was killed"));
    EXPECT_LT(since(t0), 1.0);
    // The survivors still talk to each other.
    t->send(1 - r, Message{MessageKind::kActivation, r, 0, {}});
    EXPECT_EQ(t->recv(1 - r).micro_batch, 1 - r);
    EXPECT_THROW(t->send(2, Message{}), PeerLostError);
  });
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child rank 2 failed before it could die on purpose";
}

// A hung peer: a child process that stops itself (SIGSTOP) with its sockets open. Rank 1 waits on
// it; rank 0 waits on rank 1, which is alive and waits itself. Both name rank 2 within the timeout
// (the watchdog: no heartbeat from it), not rank 0 its live neighbour; a send to it fails too.
TEST(TcpTransport, PeerThatHangsIsNamedByEveryRank) {
  SKIP_TCP_UNDER_MPI();
  const int port = free_port();
  const milliseconds timeout(1000);
  const pid_t child = fork_third_rank(port, timeout, [] {
    ::raise(SIGSTOP);
    return 1;  // continued: this child was meant to be killed while stopped
  });
  ASSERT_GE(child, 0);
  std::promise<void> gave_up;
  std::shared_future<void> done = gave_up.get_future().share();
  std::atomic<int> failed{0};
  run_tcp_ranks(3, {0, 1}, port, timeout, [&](int r, std::unique_ptr<Transport>& t) {
    t->barrier();
    const auto t0 = Clock::now();
    const std::string err = error_of<PeerLostError>([&] { t->recv(r == 0 ? 1 : 2); });
    EXPECT_THAT(err, HasSubstr("no message from rank 2 (" + local_hostname() + ") within 1 s, not even a heartbeat"));
    EXPECT_GE(since(t0), 0.5);
    EXPECT_LT(since(t0), 1.9);  // before rank 0's own wait on rank 1 would have given up
    EXPECT_THROW(t->send(2, Message{}), PeerLostError);
    if (++failed == 2) gave_up.set_value();
    done.wait();  // nobody closes its sockets before both have found rank 2 on their own
  });
  ::kill(child, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child rank 2 ended before it could hang";
}

// A rank whose transport is destroyed while the others wait on it (a thread that unwinds).
TEST(TcpTransport, DestroyedPeerIsNamed) {
  SKIP_TCP_UNDER_MPI();
  run_tcp_ranks(3, milliseconds(10000), [](int r, std::unique_ptr<Transport>& t) {
    t->barrier();
    if (r == 2) {
      std::this_thread::sleep_for(milliseconds(50));
      t.reset();
      return;
    }
    const auto t0 = Clock::now();
    const std::string err = error_of<PeerLostError>([&] { t->recv(2); });
    EXPECT_THAT(err, HasSubstr("rank 2 (" + local_hostname() + ") closed its connection"));
    EXPECT_LT(since(t0), 1.0);
  });
}

// An abort reaches every peer, including one that waits on another rank, and names who and why.
TEST(TcpTransport, AbortReachesEveryPeer) {
  SKIP_TCP_UNDER_MPI();
  run_tcp_ranks(3, milliseconds(10000), [](int r, std::unique_ptr<Transport>& t) {
    t->barrier();
    if (r == 2) {
      std::this_thread::sleep_for(milliseconds(50));
      t->abort("out of memory on purpose");
      t->abort("twice");  // harmless
      EXPECT_THAT(error_of<CommError>([&] { t->send(0, Message{}); }), HasSubstr("already aborted"));
      EXPECT_THROW(t->recv(0), CommError);
      EXPECT_THROW(t->barrier(), CommError);
      return;
    }
    const auto t0 = Clock::now();
    // Rank 0 waits on rank 1, which never sends: the abort of rank 2 still wakes it.
    const std::string err = error_of<PeerLostError>([&] { t->recv(r == 0 ? 1 : 2); });
    EXPECT_THAT(err, HasSubstr("rank 2 (" + local_hostname() + ") aborted the job: out of memory on purpose"));
    EXPECT_LT(since(t0), 1.0);
    EXPECT_THROW(t->barrier(), PeerLostError);  // and every later call
  });
}

}  // namespace
}  // namespace pipeswap::comm
