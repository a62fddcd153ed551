// The TCP transport: activations between CPU ranks started without MPI (torchrun-style environment,
// srun without PMIx, the single-node spawner).
//
// Start-up (bounded by the comm timeout): rank 0 listens on master_addr:master_port; every other rank
// opens its own listener on an ephemeral port, connects to rank 0 (retrying: rank 0 may start later)
// and sends a Hello with its rank, host name and listener port. Rank 0 answers with the table of every
// rank's address, port and host. Then rank i connects to the listener of every rank 0 < j < i and
// says who it is; the rendezvous sockets are the connections to rank 0. The result is one socket
// per pair of ranks, so messages between a pair arrive in order.
//
// Threads: each peer has a sender thread that owns writes to its socket (send() only queues, and the
// queue keeps the tensors alive) and a reader thread that owns reads: it reads whole frames as they
// come and files them in the peer's inbox, so a frame is never lost because the caller happened to
// be waiting for something else, and an ABORT from any peer wakes every waiting call at once. All
// shared state is guarded by one mutex; callers wait on one condition variable against a deadline.
//
// Watchdog: a sender thread with nothing to send for a quarter of the comm timeout (at most 1 s)
// sends a HEARTBEAT, and the reader notes the time of every byte it reads. A peer that sends nothing
// at all for the comm timeout is silent (stopped, hung, or cut off): send(), recv(), barrier() and
// flush() check every peer, not only the one they wait on, and throw naming the silent one. So a
// rank that waits on a live peer, which itself waits on a hung one, names the hung one rather than
// its live neighbour, and a first stage that only queues sends finds out too. A wait on a peer that
// still answers gives up after twice the timeout (time for a silent rank further on to be found).
//
// Frames: [u32 type][u64 length][payload]. DATA carries one wire message (wire.h: headers, then
// tensor bytes), BARRIER and HEARTBEAT nothing, ABORT the reason as text.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>

#include "pipeswap/comm/transport.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/identity.h"
#include "pipeswap/core/log.h"
#include "wire.h"

namespace pipeswap::comm {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kHostLen = 256;
constexpr uint64_t kMaxAbortText = 64 * 1024;
// A DATA frame longer than this is a corrupt length field, not a real activation.
constexpr uint64_t kMaxDataFrame = uint64_t{1} << 40;
// After abort(), how long ABORT frames get to leave before the sockets are shut down.
constexpr milliseconds kAbortGrace{1000};
// A peer whose connection closed may have closed it because another rank aborted the job (it met
// that ABORT and exited): how long the error waits for such an ABORT, so it names the rank that
// started it rather than a bystander.
constexpr milliseconds kLossGrace{250};
// How long rank 0 waits for the hello of a connection before it takes it for a stray caller.
constexpr milliseconds kHelloWait{5000};
// How long the destructor lets queued sends drain before it cuts the connections.
constexpr milliseconds kCloseGrace{10000};

double seconds(milliseconds ms) { return std::chrono::duration<double>(ms).count(); }
std::string errno_text(int err) { return std::generic_category().message(err); }

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, INT_MAX));
}

// Owns one file descriptor; closing never throws.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// ---------------------------------------------------------------------------------------------
// Frames and rendezvous records: packed, fixed-size, checked like the wire headers.

enum class FrameType : uint32_t { kData = 1, kBarrier = 2, kAbort = 3, kHeartbeat = 4 };

constexpr char kHelloMagic[4] = {'P', 'S', 'W', 'T'};
constexpr uint16_t kHelloVersion = 2;  // 2: HEARTBEAT frames

#pragma pack(push, 1)
struct FrameHeader {
  uint32_t type;    // FrameType
  uint64_t length;  // payload bytes after this header
};

// First bytes on every connection: who is calling. Rank 0 answers a rendezvous Hello with its own
// Hello followed by world_size TableEntry records.
struct Hello {
  char magic[4];         // "PSWT"
  uint16_t version;      // kHelloVersion
  uint16_t listen_port;  // rendezvous: this rank's mesh listener; otherwise 0
  int32_t rank;
  int32_t world_size;
  char host[kHostLen];  // NUL-terminated
};

struct TableEntry {
  char ip[64];  // numeric address as rank 0 saw the connection come from; NUL-terminated
  uint16_t port;
  char host[kHostLen];
};
#pragma pack(pop)

static_assert(sizeof(FrameHeader) == 12 && offsetof(FrameHeader, length) == 4, "frame header layout");
static_assert(sizeof(Hello) == 16 + kHostLen && offsetof(Hello, rank) == 8 && offsetof(Hello, host) == 16,
              "hello layout");
static_assert(sizeof(TableEntry) == 66 + kHostLen && offsetof(TableEntry, port) == 64, "table entry layout");

template <size_t N>
void copy_cstr(char (&dst)[N], const std::string& s) {
  std::memset(dst, 0, N);
  std::memcpy(dst, s.data(), std::min(s.size(), N - 1));
}
template <size_t N>
std::string from_cstr(const char (&src)[N]) {
  return std::string(src, strnlen(src, N));
}

Hello make_hello(int rank, int world, uint16_t listen_port) {
  Hello h{};
  std::memcpy(h.magic, kHelloMagic, sizeof(kHelloMagic));
  h.version = kHelloVersion;
  h.listen_port = listen_port;
  h.rank = rank;
  h.world_size = world;
  copy_cstr(h.host, local_hostname());
  return h;
}

bool hello_is_ours(const Hello& h) {
  return std::memcmp(h.magic, kHelloMagic, sizeof(kHelloMagic)) == 0 && h.version == kHelloVersion;
}

// ---------------------------------------------------------------------------------------------
// Socket helpers for start-up: every one bounded by a deadline.

void set_nodelay(int fd) {
  // Activations are latency-bound between stages: do not let Nagle hold back a header.
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// Waits until fd is ready for `events`; false at the deadline.
bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) return true;  // let the following call report the error
  }
}

void read_exact(int fd, void* buf, size_t n, Clock::time_point deadline, const std::string& what) {
  auto* p = static_cast<uint8_t*>(buf);
  size_t done = 0;
  while (done < n) {
    PS_CHECK(wait_fd(fd, POLLIN, deadline), CommError, "{}: timed out", what);
    const ssize_t got = ::recv(fd, p + done, n - done, 0);
    if (got < 0 && errno == EINTR) continue;
    PS_CHECK(got != 0, CommError, "{}: the other side closed the connection", what);
    PS_CHECK(got > 0, CommError, "{}: {}", what, errno_text(errno));
    done += static_cast<size_t>(got);
  }
}

void write_exact(int fd, const void* buf, size_t n, Clock::time_point deadline, const std::string& what) {
  const auto* p = static_cast<const uint8_t*>(buf);
  size_t done = 0;
  while (done < n) {
    PS_CHECK(wait_fd(fd, POLLOUT, deadline), CommError, "{}: timed out", what);
    const ssize_t put = ::send(fd, p + done, n - done, MSG_NOSIGNAL);
    if (put < 0 && errno == EINTR) continue;
    PS_CHECK(put > 0, CommError, "{}: {}", what, errno_text(errno));
    done += static_cast<size_t>(put);
  }
}

struct Address {
  sockaddr_storage addr{};
  socklen_t len = 0;
  int family() const { return addr.ss_family; }
};

std::vector<Address> resolve(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
  PS_CHECK(rc == 0, CommError, "cannot resolve the rendezvous address {}:{}: {} (check MASTER_ADDR)", host, port,
           gai_strerror(rc));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> owned(res, &::freeaddrinfo);
  std::vector<Address> out;
  for (addrinfo* a = res; a; a = a->ai_next) {
    Address x;
    std::memcpy(&x.addr, a->ai_addr, a->ai_addrlen);
    x.len = a->ai_addrlen;
    out.push_back(x);
  }
  PS_CHECK(!out.empty(), CommError, "the rendezvous address {}:{} resolves to nothing", host, port);
  return out;
}

// One non-blocking connect attempt bounded by the deadline. Returns an invalid Fd and sets *err on
// failure (ECONNREFUSED while the listener is not up yet is the usual one).
Fd try_connect(const Address& a, Clock::time_point deadline, int* err) {
  Fd fd(::socket(a.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) {
    *err = errno;
    return Fd();
  }
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&a.addr), a.len) != 0) {
    if (errno != EINPROGRESS) {
      *err = errno;
      return Fd();
    }
    if (!wait_fd(fd.get(), POLLOUT, deadline)) {
      *err = ETIMEDOUT;
      return Fd();
    }
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &soerr, &len);
    if (soerr != 0) {
      *err = soerr;
      return Fd();
    }
  }
  // The data path uses blocking I/O in its own threads; start-up reads and writes poll first.
  const int flags = ::fcntl(fd.get(), F_GETFL);
  ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
  set_nodelay(fd.get());
  return fd;
}

// Connects, retrying until the deadline: the listener may not be up yet.
Fd connect_until(const std::vector<Address>& addrs, Clock::time_point deadline, int* last_err) {
  milliseconds nap{10};
  for (;;) {
    for (const Address& a : addrs) {
      Fd fd = try_connect(a, deadline, last_err);
      if (fd) return fd;
    }
    const auto now = Clock::now();
    if (now >= deadline) return Fd();
    std::this_thread::sleep_for(std::min<Clock::duration>(nap, deadline - now));  // one last try at the deadline
    nap = std::min(nap * 2, milliseconds(200));
  }
}

// A listener on every interface of `family` (port 0: an ephemeral port).
Fd listen_on(int family, int port, const std::string& what) {
  Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  PS_CHECK(fd, CommError, "{}: cannot create a socket: {}", what, errno_text(errno));
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_any;
    a->sin6_port = htons(static_cast<uint16_t>(port));
    len = sizeof(*a);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_ANY);
    a->sin_port = htons(static_cast<uint16_t>(port));
    len = sizeof(*a);
  }
  PS_CHECK(::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) == 0, CommError,
           "{}: cannot listen on port {}: {} (is another job using it? set MASTER_PORT)", what, port,
           errno_text(errno));
  PS_CHECK(::listen(fd.get(), SOMAXCONN) == 0, CommError, "{}: listen failed: {}", what, errno_text(errno));
  return fd;
}

uint16_t local_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

int local_family(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  return ss.ss_family;
}

std::string peer_ip(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  char buf[INET6_ADDRSTRLEN] = {0};
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  if (ss.ss_family == AF_INET6) {
    ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, buf, sizeof(buf));
  } else {
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, buf, sizeof(buf));
  }
  return buf;
}

// Accepts one connection before the deadline; an invalid Fd on timeout.
Fd accept_until(int listen_fd, Clock::time_point deadline) {
  for (;;) {
    if (!wait_fd(listen_fd, POLLIN, deadline)) return Fd();
    Fd fd(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
    if (fd) {
      set_nodelay(fd.get());
      return fd;
    }
    if (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN) {
      PS_THROW(CommError, "accepting a peer connection failed: {}", errno_text(errno));
    }
  }
}

std::string list_ranks(const std::vector<int>& ranks) { return fmt::format("{}", fmt::join(ranks, ", ")); }

// ---------------------------------------------------------------------------------------------
// Data-path I/O (blocking, in the peer threads).

// Writes every byte described by iov, advancing it over partial writes. Returns 0 or an errno.
int send_all(int fd, std::vector<iovec> iov) {
  size_t i = 0;
  while (i < iov.size()) {
    if (iov[i].iov_len == 0) {
      ++i;
      continue;
    }
    msghdr mh{};
    mh.msg_iov = &iov[i];
    mh.msg_iovlen = std::min<size_t>(iov.size() - i, IOV_MAX);
    const ssize_t n = ::sendmsg(fd, &mh, MSG_NOSIGNAL);  // a dead peer is an error code, not SIGPIPE
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    size_t left = static_cast<size_t>(n);
    while (left > 0) {
      if (left >= iov[i].iov_len) {
        left -= iov[i].iov_len;
        ++i;
      } else {
        iov[i].iov_base = static_cast<uint8_t*>(iov[i].iov_base) + left;
        iov[i].iov_len -= left;
        left = 0;
      }
    }
  }
  return 0;
}

// When a peer was last heard from (any byte it sent), as steady-clock ticks.
using HeardAt = std::atomic<Clock::rep>;
void note_heard(HeardAt& at) { at.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed); }

// Reads exactly n bytes, noting in `heard` every time some arrive (a big message keeps its sender
// heard while it moves). Returns 0, -1 for end of stream, or an errno.
int recv_all(int fd, void* buf, uint64_t n, HeardAt& heard) {
  auto* p = static_cast<uint8_t*>(buf);
  uint64_t done = 0;
  while (done < n) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(n - done, size_t{1} << 30));
    const ssize_t got = ::recv(fd, p + done, want, 0);
    if (got > 0) {
      done += static_cast<uint64_t>(got);
      note_heard(heard);
    } else if (got == 0) {
      return -1;
    } else if (errno != EINTR) {
      return errno;
    }
  }
  return 0;
}

struct OutFrame {
  std::vector<uint8_t> head;  // FrameHeader, then the wire header or the abort text
  std::vector<torch::Tensor> payloads;
};

OutFrame make_frame(FrameType type, const void* body, size_t body_len, uint64_t extra_len) {
  OutFrame f;
  FrameHeader fh{static_cast<uint32_t>(type), body_len + extra_len};
  f.head.resize(sizeof(fh) + body_len);
  std::memcpy(f.head.data(), &fh, sizeof(fh));
  if (body_len) std::memcpy(f.head.data() + sizeof(fh), body, body_len);
  return f;
}

// ---------------------------------------------------------------------------------------------

class TcpTransport final : public Transport {
 public:
  TcpTransport(int rank, int world, const std::string& master_addr, int master_port, const TransportOptions& opts)
      : opts_(opts), rank_(rank), world_(world) {
    PS_CHECK(world >= 1 && rank >= 0 && rank < world, ConfigError,
             "TCP transport: rank {} is outside a world of {} (check RANK and WORLD_SIZE)", rank, world);
    PS_CHECK(master_port > 0 && master_port < 65536, ConfigError,
             "TCP transport: MASTER_PORT {} is not a port number (1..65535)", master_port);
    hosts_.assign(world, std::string());
    hosts_[rank] = local_hostname();
    for (int r = 0; r < world; ++r) {
      peers_.push_back(std::make_unique<Peer>());
      peers_.back()->rank = r;
    }
    if (world == 1) return;
    const auto deadline = Clock::now() + opts_.timeout;
    const std::string rendezvous = fmt::format("{}:{}", master_addr, master_port);
    if (rank == 0) {
      serve_rendezvous(master_addr, master_port, rendezvous, deadline);
    } else {
      join_rendezvous(master_addr, master_port, rendezvous, deadline);
    }
    start_threads();
    log().debug("tcp transport: rank {} of {} connected to every peer (rendezvous {})", rank_, world_, rendezvous);
  }

  ~TcpTransport() override {
    try {
      bool aborted = false;
      {
        std::lock_guard<std::mutex> lk(mu_);
        aborted = aborted_;
      }
      // Let queued messages leave (the peers' reader threads take them at once) before cutting.
      if (!aborted && !drain(Clock::now() + std::min(opts_.timeout, kCloseGrace), Watch::kNone)) {
        log().warn("tcp transport: closing with messages still queued to a peer that does not read");
      }
      stop_threads();
    } catch (const std::exception& e) {
      log().warn("tcp transport shutdown: {}", e.what());
    } catch (...) {
      // Destructors never throw.
    }
  }

  TcpTransport(const TcpTransport&) = delete;
  TcpTransport& operator=(const TcpTransport&) = delete;

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  const std::vector<std::string>& hosts() const override { return hosts_; }
  const char* name() const override { return "tcp"; }

  void send(int dst, Message msg) override {
    check_peer(dst, "send to");
    wire::Outgoing out = wire::encode(std::move(msg));  // copies outside the lock
    OutFrame f = make_frame(FrameType::kData, out.header.data(), out.header.size(), out.payload_bytes);
    f.payloads = std::move(out.payloads);
    std::lock_guard<std::mutex> lk(mu_);
    throw_if_aborted_locked();
    Peer& p = *peers_[dst];
    throw_if_unreachable_locked(p);
    throw_if_silent_locked(dst);  // a stage that only sends must not queue for a hung peer forever
    enqueue_locked(p, std::move(f));
  }

  Message recv(int src) override {
    check_peer(src, "recv from");
    Peer& p = *peers_[src];
    // src answers (else the watchdog throws first): it waits on another rank or computes. A second
    // timeout lets a silent rank further on be found and named, here or by its neighbours.
    const auto deadline = Clock::now() + 2 * opts_.timeout;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      throw_if_aborted_locked();
      if (!p.inbox.empty()) {
        Message m = std::move(p.inbox.front());
        p.inbox.pop_front();
        return m;
      }
      await_abort_after_loss_locked(lk, p);
      throw_if_lost_locked(p);  // only once its queued messages have been taken
      throw_if_silent_locked(src);
      PS_CHECK(Clock::now() < deadline, PeerLostError,
               "no message from {} within {} s (twice --comm-timeout), although it still answers: it waits for "
               "another rank, or computes for longer than that (raise --comm-timeout if it is just slow)",
               who(src), seconds(2 * opts_.timeout));
      wait_locked(lk, deadline);
    }
  }

  // Every rank reports to rank 0; rank 0 releases everyone once all have reported.
  void barrier() override {
    if (world_ == 1) return;
    // Twice the timeout, as in recv(): the ranks waited on still answer (the watchdog names any that
    // does not), so one of them is slow or waits itself.
    const auto deadline = Clock::now() + 2 * opts_.timeout;
    std::unique_lock<std::mutex> lk(mu_);
    throw_if_aborted_locked();
    if (rank_ != 0) {
      Peer& root = *peers_[0];
      throw_if_unreachable_locked(root);
      enqueue_locked(root, make_frame(FrameType::kBarrier, nullptr, 0, 0));
      for (;;) {
        throw_if_aborted_locked();
        if (root.barriers > 0) {
          --root.barriers;
          return;
        }
        await_abort_after_loss_locked(lk, root);
        throw_if_lost_locked(root);
        throw_if_silent_locked(0);
        PS_CHECK(Clock::now() < deadline, PeerLostError,
                 "barrier: {} did not release the barrier within {} s; a rank may be missing (rank 0's error names "
                 "it; raise --comm-timeout if it is just slow)",
                 who(0), seconds(2 * opts_.timeout));
        wait_locked(lk, deadline);
      }
    }
    for (;;) {
      throw_if_aborted_locked();
      std::vector<int> missing;
      for (int r = 1; r < world_; ++r) {
        Peer& p = *peers_[r];
        if (p.barriers > 0) continue;
        await_abort_after_loss_locked(lk, p);
        throw_if_lost_locked(p);
        missing.push_back(r);
      }
      if (missing.empty()) break;
      throw_if_silent_locked(missing.front());
      if (Clock::now() >= deadline) {
        std::vector<std::string> names;
        for (int r : missing) names.push_back(who(r));
        PS_THROW(PeerLostError,
                 "barrier: {} did not arrive within {} s, although still answering: waiting for another rank, or "
                 "busy for longer than that (raise --comm-timeout if it is just slow)",
                 fmt::join(names, ", "), seconds(2 * opts_.timeout));
      }
      wait_locked(lk, deadline);
    }
    for (int r = 1; r < world_; ++r) {
      Peer& p = *peers_[r];
      --p.barriers;
      throw_if_unreachable_locked(p);
      enqueue_locked(p, make_frame(FrameType::kBarrier, nullptr, 0, 0));
    }
  }

  void flush() override {
    if (!drain(Clock::now() + opts_.timeout, Watch::kPeers)) {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto& p : peers_) {
        if (!p->outbox.empty() || p->sending) {
          PS_THROW(PeerLostError,
                   "{} did not take data within {} s; it may have died or hung (raise --comm-timeout if it is just "
                   "slow)",
                   who(p->rank), seconds(opts_.timeout));
        }
      }
    }
    std::lock_guard<std::mutex> lk(mu_);
    throw_if_aborted_locked();
    for (auto& p : peers_) {
      PS_CHECK(p->send_error.empty(), PeerLostError, "{}", p->send_error);
    }
  }

  void abort(const std::string& reason) noexcept override {
    try {
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (aborted_) return;
        aborted_ = true;
        abort_reason_ = reason;
        const std::string text = reason.substr(0, kMaxAbortText);
        for (auto& p : peers_) {
          if (p->rank == rank_ || !p->fd || !p->send_error.empty()) continue;
          p->outbox.clear();  // undelivered data is moot now; the ABORT goes next
          enqueue_locked(*p, make_frame(FrameType::kAbort, text.data(), text.size(), 0));
        }
        cv_.notify_all();  // wake this rank's own waiting calls: they throw now
      }
      log().debug("tcp transport: aborting: {}", reason);
      drain(Clock::now() + std::min(opts_.timeout, kAbortGrace), Watch::kNone);
      // Cut every connection so peers see the end even where the ABORT frame could not go.
      for (auto& p : peers_) {
        if (p->fd) ::shutdown(p->fd.get(), SHUT_RDWR);
      }
    } catch (...) {
      // abort() is the error path's last step: it must not throw.
    }
  }

 private:
  struct Peer {
    int rank = 0;
    Fd fd;
    std::thread reader, sender;
    // Everything below is guarded by TcpTransport::mu_.
    std::deque<OutFrame> outbox;
    bool sending = false;  // the sender thread holds a frame it is writing
    bool stop = false;     // the sender thread exits once the outbox is empty
    std::condition_variable wake_sender;
    std::deque<Message> inbox;
    int barriers = 0;        // BARRIER frames received and not yet consumed
    HeardAt heard{0};        // the reader thread's last byte from this peer (atomic: read under mu_)
    std::string lost;        // why reading from this peer stopped ("" while it works)
    bool corrupt = false;    // `lost` is a protocol error rather than a vanished peer
    std::string send_error;  // why writing to this peer stopped
  };

  std::string who(int r) const { return fmt::format("rank {} ({})", r, hosts_.at(r)); }

  void check_peer(int r, const char* what) const {
    PS_CHECK(r >= 0 && r < world_ && r != rank_, CommError,
             "{} rank {}: rank {} of a world of {} can only talk to the other ranks", what, r, rank_, world_);
  }

  void throw_if_aborted_locked() const {
    PS_CHECK(!aborted_, CommError, "this rank already aborted the job ({}): the transport is closed", abort_reason_);
    if (peer_abort_) {
      PS_THROW(PeerLostError, "{} aborted the job: {}", who(peer_abort_->first), peer_abort_->second);
    }
  }

  void await_abort_after_loss_locked(std::unique_lock<std::mutex>& lk, const Peer& p) {
    if (p.lost.empty() || p.corrupt || peer_abort_) return;
    cv_.wait_for(lk, kLossGrace, [&] { return peer_abort_.has_value(); });
    throw_if_aborted_locked();
  }

  void throw_if_lost_locked(const Peer& p) const {
    if (p.lost.empty()) return;
    if (p.corrupt) throw CommError(p.lost);  // already carries the rank prefix and where it was found
    PS_THROW(PeerLostError, "{}", p.lost);
  }

  void throw_if_unreachable_locked(const Peer& p) const {
    PS_CHECK(p.send_error.empty(), PeerLostError, "{}", p.send_error);
    throw_if_lost_locked(p);
  }

  milliseconds beat_interval() const { return std::clamp(opts_.timeout / 4, milliseconds(10), milliseconds(1000)); }

  // The watchdog: the first peer, `first` preferred, that has sent nothing at all (data, heartbeats)
  // for the comm timeout; -1 while every peer answers. Peers whose connection ended are reported by
  // their loss instead, where it matters.
  int silent_peer_locked(int first) const {
    const auto now = Clock::now();
    auto silent = [&](const Peer& p) {
      if (p.rank == rank_ || !p.fd || !p.lost.empty() || !p.send_error.empty()) return false;
      if (now - Clock::time_point(Clock::duration(p.heard.load(std::memory_order_relaxed))) <= opts_.timeout) {
        return false;
      }
      // Bytes already waiting in the socket: the peer spoke, only our reader thread is behind (a busy host).
      pollfd waiting{p.fd.get(), POLLIN, 0};
      return ::poll(&waiting, 1, 0) == 0;
    };
    if (first >= 0 && silent(*peers_[first])) return first;
    for (const auto& p : peers_)
      if (silent(*p)) return p->rank;
    return -1;
  }

  void throw_if_silent_locked(int first) const {
    const int r = silent_peer_locked(first);
    PS_CHECK(r < 0, PeerLostError,
             "no message from {} within {} s, not even a heartbeat; it may have died or hung (raise --comm-timeout "
             "if its host is just overloaded)",
             who(r), seconds(opts_.timeout));
  }

  // Waits for a change, until the deadline, waking at least once a heartbeat interval so that the
  // caller's watchdog check runs.
  void wait_locked(std::unique_lock<std::mutex>& lk, Clock::time_point deadline) {
    cv_.wait_until(lk, std::min(deadline, Clock::now() + beat_interval()));
  }

  void enqueue_locked(Peer& p, OutFrame f) {
    p.outbox.push_back(std::move(f));
    p.wake_sender.notify_one();
  }

  // Waits until every outbox is empty (or its peer failed). The deadline moves on while frames keep
  // leaving, so a big message only has to keep moving. False at the deadline. Watch::kPeers: throws
  // as soon as a peer still to be served is silent.
  enum class Watch { kNone, kPeers };
  bool drain(Clock::time_point deadline, Watch watch) {
    const auto step = deadline - Clock::now();
    std::unique_lock<std::mutex> lk(mu_);
    uint64_t seen = frames_sent_;
    for (;;) {
      int busy = -1;
      for (auto& p : peers_)
        if (busy < 0 && (!p->outbox.empty() || p->sending)) busy = p->rank;
      if (busy < 0) return true;
      if (watch == Watch::kPeers) throw_if_silent_locked(busy);
      if (frames_sent_ != seen) {
        seen = frames_sent_;
        deadline = Clock::now() + step;
      }
      if (Clock::now() >= deadline) return false;
      wait_locked(lk, deadline);
    }
  }

  // ----- start-up

  void serve_rendezvous(const std::string& addr, int port, const std::string& rendezvous, Clock::time_point deadline) {
    const std::vector<Address> addrs = resolve(addr, port);
    // Prefer IPv4 when the name has both: peers try every address, and most clusters route v4.
    int family = addrs.front().family();
    for (const Address& a : addrs)
      if (a.family() == AF_INET) family = AF_INET;
    Fd listener = listen_on(family, port, fmt::format("rank 0 rendezvous at {}", rendezvous));
    std::vector<TableEntry> table(world_);
    copy_cstr(table[0].host, hosts_[0]);
    int joined = 0;
    while (joined < world_ - 1) {
      Fd c = accept_until(listener.get(), deadline);
      if (!c) {
        std::vector<int> missing;
        for (int r = 1; r < world_; ++r)
          if (!peers_[r]->fd) missing.push_back(r);
        PS_THROW(CommError,
                 "rendezvous at {}: rank(s) {} did not connect within {} s (are they running with MASTER_ADDR={} "
                 "MASTER_PORT={} and WORLD_SIZE={}?)",
                 rendezvous, list_ranks(missing), seconds(opts_.timeout), addr, port, world_);
      }
      const std::string from = peer_ip(c.get());
      Hello h{};
      try {
        // A real rank sends its hello right after connecting: a silent caller must not hold up the others.
        read_exact(c.get(), &h, sizeof(h), std::min(deadline, Clock::now() + kHelloWait),
                   fmt::format("rendezvous: reading the hello from {}", from));
      } catch (const CommError& e) {
        log().warn("{} (ignored)", e.what());
        continue;
      }
      if (!hello_is_ours(h)) {
        log().warn("rendezvous at {}: ignoring a connection from {} that is not a pipeswap rank of this build",
                   rendezvous, from);
        continue;
      }
      PS_CHECK(h.world_size == world_, CommError,
               "rendezvous at {}: rank {} from {} was started with WORLD_SIZE={} but rank 0 with {}: start every rank "
               "with the same world size",
               rendezvous, h.rank, from, h.world_size, world_);
      PS_CHECK(h.rank > 0 && h.rank < world_ && !peers_[h.rank]->fd, CommError,
               "rendezvous at {}: {} claims rank {}, which is {} (two ranks with the same RANK, or a leftover process "
               "of an earlier job on this port?)",
               rendezvous, from, h.rank, h.rank > 0 && h.rank < world_ ? "taken already" : "out of range");
      copy_cstr(table[h.rank].ip, from);
      table[h.rank].port = h.listen_port;
      std::memcpy(table[h.rank].host, h.host, kHostLen);
      table[h.rank].host[kHostLen - 1] = '\0';
      hosts_[h.rank] = from_cstr(table[h.rank].host);
      peers_[h.rank]->fd = std::move(c);
      ++joined;
    }
    const Hello mine = make_hello(0, world_, 0);
    for (int r = 1; r < world_; ++r) {
      const std::string what = fmt::format("rendezvous: sending the rank table to {}", who(r));
      write_exact(peers_[r]->fd.get(), &mine, sizeof(mine), deadline, what);
      write_exact(peers_[r]->fd.get(), table.data(), table.size() * sizeof(TableEntry), deadline, what);
    }
  }

  void join_rendezvous(const std::string& addr, int port, const std::string& rendezvous, Clock::time_point deadline) {
    const std::vector<Address> addrs = resolve(addr, port);
    int err = 0;
    Fd root = connect_until(addrs, deadline, &err);
    PS_CHECK(
        root, CommError,
        "rank {} cannot reach the rendezvous at {} (rank 0) within {} s (last error: {}): is rank 0 running, and do "
        "MASTER_ADDR and MASTER_PORT point to it?",
        rank_, rendezvous, seconds(opts_.timeout), errno_text(err));
    // The mesh listener speaks the family that reaches rank 0, so the address rank 0 sees is usable.
    Fd listener = listen_on(local_family(root.get()), 0, fmt::format("rank {} mesh listener", rank_));
    const Hello mine = make_hello(rank_, world_, local_port(listener.get()));
    write_exact(root.get(), &mine, sizeof(mine), deadline, fmt::format("rendezvous at {}: sending hello", rendezvous));

    Hello h0{};
    const std::string waiting = fmt::format(
        "rendezvous at {}: waiting for rank 0's table of every rank (rank 0 sends it once all {} ranks have connected)",
        rendezvous, world_);
    read_exact(root.get(), &h0, sizeof(h0), deadline, waiting);
    PS_CHECK(hello_is_ours(h0) && h0.rank == 0 && h0.world_size == world_, CommError,
             "rendezvous at {}: the answer is not from a pipeswap rank 0 of this build with WORLD_SIZE={}", rendezvous,
             world_);
    std::vector<TableEntry> table(world_);
    read_exact(root.get(), table.data(), table.size() * sizeof(TableEntry), deadline, waiting);
    for (int r = 0; r < world_; ++r) {
      table[r].host[kHostLen - 1] = '\0';
      table[r].ip[sizeof(table[r].ip) - 1] = '\0';
      hosts_[r] = from_cstr(table[r].host);
    }
    hosts_[rank_] = local_hostname();
    peers_[0]->fd = std::move(root);

    // Connect to every lower rank's listener (they exist: each was opened before its rank joined).
    const Hello hello = make_hello(rank_, world_, 0);
    for (int j = 1; j < rank_; ++j) {
      const std::string ip = from_cstr(table[j].ip);
      Fd c = connect_until(resolve(ip, table[j].port), deadline, &err);
      PS_CHECK(c, CommError, "rank {} cannot connect to {} at {}:{} within {} s: {}", rank_, who(j), ip, table[j].port,
               seconds(opts_.timeout), errno_text(err));
      write_exact(c.get(), &hello, sizeof(hello), deadline, fmt::format("connecting to {}", who(j)));
      peers_[j]->fd = std::move(c);
    }
    // Accept every higher rank; each says who it is.
    for (int n = rank_ + 1; n < world_; ++n) {
      Fd c = accept_until(listener.get(), deadline);
      if (!c) {
        std::vector<int> missing;
        for (int r = rank_ + 1; r < world_; ++r)
          if (!peers_[r]->fd) missing.push_back(r);
        PS_THROW(CommError, "rank(s) {} did not connect to rank {} within {} s", list_ranks(missing), rank_,
                 seconds(opts_.timeout));
      }
      Hello h{};
      read_exact(c.get(), &h, sizeof(h), deadline,
                 fmt::format("reading the hello of a peer from {}", peer_ip(c.get())));
      PS_CHECK(hello_is_ours(h) && h.world_size == world_ && h.rank > rank_ && h.rank < world_ && !peers_[h.rank]->fd,
               CommError, "rank {}: unexpected connection from {} claiming rank {} of {}", rank_, peer_ip(c.get()),
               h.rank, h.world_size);
      peers_[h.rank]->fd = std::move(c);
    }
  }

  void start_threads() {
    try {
      for (auto& p : peers_) {
        if (p->rank == rank_) continue;
        note_heard(p->heard);  // connected just now
        p->sender = std::thread([this, peer = p.get()] { send_loop(*peer); });
        p->reader = std::thread([this, peer = p.get()] { read_loop(*peer); });
      }
    } catch (...) {
      stop_threads();
      throw;
    }
  }

  // Stops the sender threads once their outboxes are empty, cuts the connections (which wakes
  // blocked reads and writes), and joins every thread. Never blocks on a peer.
  void stop_threads() noexcept {
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto& p : peers_) {
        p->stop = true;
        p->outbox.clear();  // whatever is left here could not be delivered in time
        p->wake_sender.notify_all();
      }
    }
    for (auto& p : peers_) {
      if (p->fd) ::shutdown(p->fd.get(), SHUT_RDWR);
    }
    for (auto& p : peers_) {
      if (p->sender.joinable()) p->sender.join();
      if (p->reader.joinable()) p->reader.join();
    }
  }

  void send_loop(Peer& p) {
    FrameHeader beat{static_cast<uint32_t>(FrameType::kHeartbeat), 0};
    auto last_write = Clock::now();
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      if (!p.wake_sender.wait_until(lk, last_write + beat_interval(), [&] { return !p.outbox.empty() || p.stop; })) {
        // Idle for a heartbeat interval: tell the peer this rank is alive. Not counted as a frame
        // sent (drain() must not take heartbeats for progress).
        lk.unlock();
        const int err = send_all(p.fd.get(), {{&beat, sizeof(beat)}});
        last_write = Clock::now();
        lk.lock();
        if (err != 0) return record_send_error_locked(p, err);
        continue;
      }
      if (p.outbox.empty()) return;  // stopping, nothing left
      OutFrame f = std::move(p.outbox.front());
      p.outbox.pop_front();
      p.sending = true;
      lk.unlock();
      std::vector<iovec> iov;
      iov.reserve(1 + f.payloads.size());
      iov.push_back({f.head.data(), f.head.size()});
      for (torch::Tensor& t : f.payloads) iov.push_back({t.data_ptr(), static_cast<size_t>(wire::payload_bytes(t))});
      const int err = send_all(p.fd.get(), std::move(iov));
      last_write = Clock::now();
      f = OutFrame();  // release the tensors outside the lock
      lk.lock();
      p.sending = false;
      ++frames_sent_;
      if (err != 0) return record_send_error_locked(p, err);
      cv_.notify_all();
    }
  }

  // A write failed: the peer is unreachable from now on (the sender thread ends).
  void record_send_error_locked(Peer& p, int err) {
    p.send_error = (err == EPIPE || err == ECONNRESET)
                       ? fmt::format("{} closed its connection: it exited or was killed", who(p.rank))
                       : fmt::format("sending to {} failed: {}", who(p.rank), errno_text(err));
    p.outbox.clear();
    cv_.notify_all();
  }

  void read_loop(Peer& p) {
    std::string lost;
    bool corrupt = false;
    try {
      for (;;) {
        FrameHeader fh{};
        int err = recv_all(p.fd.get(), &fh, sizeof(fh), p.heard);
        if (err != 0) {
          lost = describe_read_error(p.rank, err, /*mid_frame=*/false);
          break;
        }
        if (fh.type == static_cast<uint32_t>(FrameType::kData)) {
          std::optional<Message> m = read_data(p, fh.length, &lost);
          if (!m) break;
          std::lock_guard<std::mutex> lk(mu_);
          p.inbox.push_back(std::move(*m));
          cv_.notify_all();
        } else if (fh.type == static_cast<uint32_t>(FrameType::kHeartbeat) && fh.length == 0) {
          // recv_all noted the time
        } else if (fh.type == static_cast<uint32_t>(FrameType::kBarrier) && fh.length == 0) {
          std::lock_guard<std::mutex> lk(mu_);
          ++p.barriers;
          cv_.notify_all();
        } else if (fh.type == static_cast<uint32_t>(FrameType::kAbort) && fh.length <= kMaxAbortText) {
          std::string reason(static_cast<size_t>(fh.length), '\0');
          err = recv_all(p.fd.get(), reason.data(), fh.length, p.heard);
          if (err != 0) {
            lost = describe_read_error(p.rank, err, true);
            break;
          }
          std::lock_guard<std::mutex> lk(mu_);
          if (!peer_abort_) peer_abort_.emplace(p.rank, reason);
          cv_.notify_all();
        } else {
          corrupt = true;
          lost = detail::with_location(
              fmt::format("{} sent a frame of unknown type {} and length {}: the stream is corrupt, or the peer runs "
                          "another pipeswap build",
                          who(p.rank), fh.type, fh.length),
              __FILE__, __LINE__);
          break;
        }
      }
    } catch (const std::exception& e) {
      corrupt = true;
      lost = e.what();
    }
    std::lock_guard<std::mutex> lk(mu_);
    p.lost = lost;
    p.corrupt = corrupt;
    cv_.notify_all();
  }

  // Reads one DATA frame's payload straight into freshly allocated tensors. On failure returns
  // nothing and says why in *lost.
  // Protocol errors throw CommError (read_loop records them as the peer's error).
  std::optional<Message> read_data(Peer& p, uint64_t length, std::string* lost) {
    const std::string from = who(p.rank);
    PS_CHECK(length >= sizeof(wire::MessageHeader) && length <= kMaxDataFrame, CommError,
             "{} sent a data frame of impossible length {}: the stream is corrupt", from, length);
    std::vector<uint8_t> header(sizeof(wire::MessageHeader));
    int err = recv_all(p.fd.get(), header.data(), header.size(), p.heard);
    if (err == 0) {
      const wire::MessageHeader mh = wire::decode_message_header(header.data(), header.size(), from);
      const size_t full = wire::header_bytes(mh.num_tensors);
      PS_CHECK(length >= full, CommError, "{} sent a data frame of {} bytes, shorter than its {}-byte header", from,
               length, full);
      header.resize(full);
      err = recv_all(p.fd.get(), header.data() + sizeof(wire::MessageHeader), full - sizeof(wire::MessageHeader),
                     p.heard);
    }
    if (err != 0) {
      *lost = describe_read_error(p.rank, err, true);
      return std::nullopt;
    }
    Message m = wire::decode(header.data(), header.size(), from);
    uint64_t total = header.size();
    for (const torch::Tensor& t : m.tensors) total += wire::payload_bytes(t);
    PS_CHECK(total == length, CommError, "{} sent a data frame of {} bytes whose header describes {} bytes", from,
             length, total);
    for (torch::Tensor& t : m.tensors) {
      err = recv_all(p.fd.get(), t.data_ptr(), wire::payload_bytes(t), p.heard);
      if (err != 0) {
        *lost = describe_read_error(p.rank, err, true);
        return std::nullopt;
      }
    }
    return m;
  }

  std::string describe_read_error(int r, int err, bool mid_frame) const {
    if (err == -1 || err == ECONNRESET) {
      return fmt::format("{} closed its connection{}: it exited or was killed", who(r),
                         mid_frame ? " in the middle of a message" : "");
    }
    return fmt::format("reading from {} failed: {}", who(r), errno_text(err));
  }

  const TransportOptions opts_;
  const int rank_;
  const int world_;
  std::vector<std::string> hosts_;
  std::vector<std::unique_ptr<Peer>> peers_;  // by rank; this rank's own entry stays unconnected

  std::mutex mu_;
  std::condition_variable cv_;  // any inbox, barrier count, outbox or connection state changed
  uint64_t frames_sent_ = 0;
  bool aborted_ = false;
  std::string abort_reason_;
  std::optional<std::pair<int, std::string>> peer_abort_;  // the first peer that aborted, and why
};

}  // namespace

std::unique_ptr<Transport> make_tcp_transport(int rank, int world_size, const std::string& master_addr, int master_port,
                                              const TransportOptions& opts) {
  return std::make_unique<TcpTransport>(rank, world_size, master_addr, master_port, opts);
}

}  // namespace pipeswap::comm
