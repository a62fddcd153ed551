// Sockets for the TCP transport (internal to comm/): start-up calls that are each bounded by a
// deadline (connect, accept, exact reads and writes), and the blocking calls of the data path, which
// run in the transport's peer threads.
//
// What this file must not do: know about ranks, frames or messages. The rendezvous
// (tcp_rendezvous.h) and the data path (tcp_transport.cpp) say what the bytes mean.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "pipeswap/core/unique_fd.h"

namespace pipeswap::comm::tcp {

using Clock = std::chrono::steady_clock;

// ----- start-up: every call bounded by a deadline

// Waits until fd is ready for `events`; false at the deadline.
bool wait_fd(int fd, short events, Clock::time_point deadline);
// Exactly n bytes, or CommError "<what>: timed out / the other side closed the connection / <errno>".
void read_exact(int fd, void* buf, size_t n, Clock::time_point deadline, const std::string& what);
void write_exact(int fd, const void* buf, size_t n, Clock::time_point deadline, const std::string& what);

struct Address {
  sockaddr_storage addr{};
  socklen_t len = 0;
  int family() const { return addr.ss_family; }
};
// Every address of host:port. Throws CommError naming it when it resolves to nothing.
std::vector<Address> resolve(const std::string& host, int port);
// Connects to one of `addrs`, retrying until the deadline (the listener may not be up yet). An
// invalid descriptor at the deadline, with the last error in *last_err.
UniqueFd connect_until(const std::vector<Address>& addrs, Clock::time_point deadline, int* last_err);
// A listener on every interface of `family` (port 0: an ephemeral port). `what` names it in errors.
UniqueFd listen_on(int family, int port, const std::string& what);
// Accepts one connection before the deadline; an invalid descriptor on timeout.
UniqueFd accept_until(int listen_fd, Clock::time_point deadline);
uint16_t local_port(int fd);
int local_family(int fd);
// The numeric address of the other end ("?" when unknown).
std::string peer_ip(int fd);

// ----- data path: blocking, in the peer threads

// Writes every byte described by iov, advancing it over partial writes. Returns 0 or an errno (a
// dead peer is an error code, not SIGPIPE).
int send_all(int fd, std::vector<iovec> iov);

// When a peer was last heard from (any byte it sent), as steady-clock ticks.
using HeardAt = std::atomic<Clock::rep>;
void note_heard(HeardAt& at);
// Reads exactly n bytes, noting in `heard` every time some arrive (a big message keeps its sender
// heard while it moves). Returns 0, -1 for end of stream, or an errno.
int recv_all(int fd, void* buf, uint64_t n, HeardAt& heard);

}  // namespace pipeswap::comm::tcp
