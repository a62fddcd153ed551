#include "tcp_socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <memory>
#include <thread>

#include "pipeswap/core/error.h"
#include "pipeswap/core/files.h"

namespace pipeswap::comm::tcp {

namespace {

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, INT_MAX));
}

void set_nodelay(int fd) {
  // Activations are latency-bound between stages: do not let Nagle hold back a header.
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// One non-blocking connect attempt bounded by the deadline. Returns an invalid descriptor and sets *err on
// failure (ECONNREFUSED while the listener is not up yet is the usual one).
UniqueFd try_connect(const Address& a, Clock::time_point deadline, int* err) {
  UniqueFd fd(::socket(a.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) {
    *err = errno;
    return {};
  }
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&a.addr), a.len) != 0) {
    if (errno != EINPROGRESS) {
      *err = errno;
      return {};
    }
    if (!wait_fd(fd.get(), POLLOUT, deadline)) {
      *err = ETIMEDOUT;
      return {};
    }
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &soerr, &len);
    if (soerr != 0) {
      *err = soerr;
      return {};
    }
  }
  // The data path uses blocking I/O in its own threads; start-up reads and writes poll first.
  const int flags = ::fcntl(fd.get(), F_GETFL);
  ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
  set_nodelay(fd.get());
  return fd;
}

}  // namespace

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

// Connects, retrying until the deadline: the listener may not be up yet.
UniqueFd connect_until(const std::vector<Address>& addrs, Clock::time_point deadline, int* last_err) {
  std::chrono::milliseconds nap{10};
  for (;;) {
    for (const Address& a : addrs) {
      UniqueFd fd = try_connect(a, deadline, last_err);
      if (fd) return fd;
    }
    const auto now = Clock::now();
    if (now >= deadline) return {};
    std::this_thread::sleep_for(std::min<Clock::duration>(nap, deadline - now));  // one last try at the deadline
    nap = std::min(nap * 2, std::chrono::milliseconds(200));
  }
}

// A listener on every interface of `family` (port 0: an ephemeral port).
UniqueFd listen_on(int family, int port, const std::string& what) {
  UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
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

// Accepts one connection before the deadline; an invalid UniqueFd on timeout.
UniqueFd accept_until(int listen_fd, Clock::time_point deadline) {
  for (;;) {
    if (!wait_fd(listen_fd, POLLIN, deadline)) return {};
    UniqueFd fd(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
    if (fd) {
      set_nodelay(fd.get());
      return fd;
    }
    if (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN) {
      PS_THROW(CommError, "accepting a peer connection failed: {}", errno_text(errno));
    }
  }
}

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

}  // namespace pipeswap::comm::tcp
