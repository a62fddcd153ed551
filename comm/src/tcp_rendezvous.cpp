#include "tcp_rendezvous.h"

#include <algorithm>
#include <cstring>

#include "pipeswap/core/error.h"
#include "pipeswap/core/files.h"
#include "pipeswap/core/identity.h"
#include "pipeswap/core/log.h"
#include "tcp_socket.h"

namespace pipeswap::comm::tcp {
namespace {

using std::chrono::milliseconds;

constexpr size_t kHostLen = 256;
// How long rank 0 waits for the hello of a connection before it takes it for a stray caller.
constexpr milliseconds kHelloWait{5000};

constexpr char kHelloMagic[4] = {'P', 'S', 'W', 'T'};
constexpr uint16_t kHelloVersion = 2;  // 2: HEARTBEAT frames

#pragma pack(push, 1)
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

double seconds(milliseconds ms) { return std::chrono::duration<double>(ms).count(); }

std::string list_ranks(const std::vector<int>& ranks) { return fmt::format("{}", fmt::join(ranks, ", ")); }

void serve(Mesh& mesh, int world, const std::string& addr, int port, const std::string& rendezvous,
           std::chrono::milliseconds timeout, Clock::time_point deadline) {
  const std::vector<Address> addrs = resolve(addr, port);
  // Prefer IPv4 when the name has both: peers try every address, and most clusters route v4.
  int family = addrs.front().family();
  for (const Address& a : addrs)
    if (a.family() == AF_INET) family = AF_INET;
  UniqueFd listener = listen_on(family, port, fmt::format("rank 0 rendezvous at {}", rendezvous));
  std::vector<TableEntry> table(world);
  copy_cstr(table[0].host, mesh.hosts[0]);
  int joined = 0;
  while (joined < world - 1) {
    UniqueFd c = accept_until(listener.get(), deadline);
    if (!c) {
      std::vector<int> missing;
      for (int r = 1; r < world; ++r)
        if (!mesh.fds[r]) missing.push_back(r);
      PS_THROW(CommError,
               "rendezvous at {}: rank(s) {} did not connect within {} s (are they running with MASTER_ADDR={} "
               "MASTER_PORT={} and WORLD_SIZE={}?)",
               rendezvous, list_ranks(missing), seconds(timeout), addr, port, world);
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
    PS_CHECK(h.world_size == world, CommError,
             "rendezvous at {}: rank {} from {} was started with WORLD_SIZE={} but rank 0 with {}: start every rank "
             "with the same world size",
             rendezvous, h.rank, from, h.world_size, world);
    PS_CHECK(h.rank > 0 && h.rank < world && !mesh.fds[h.rank], CommError,
             "rendezvous at {}: {} claims rank {}, which is {} (two ranks with the same RANK, or a leftover process "
             "of an earlier job on this port?)",
             rendezvous, from, h.rank, h.rank > 0 && h.rank < world ? "taken already" : "out of range");
    copy_cstr(table[h.rank].ip, from);
    table[h.rank].port = h.listen_port;
    std::memcpy(table[h.rank].host, h.host, kHostLen);
    table[h.rank].host[kHostLen - 1] = '\0';
    mesh.hosts[h.rank] = from_cstr(table[h.rank].host);
    mesh.fds[h.rank] = std::move(c);
    ++joined;
  }
  const Hello mine = make_hello(0, world, 0);
  for (int r = 1; r < world; ++r) {
    const std::string what = fmt::format("rendezvous: sending the rank table to {}", mesh.who(r));
    write_exact(mesh.fds[r].get(), &mine, sizeof(mine), deadline, what);
    write_exact(mesh.fds[r].get(), table.data(), table.size() * sizeof(TableEntry), deadline, what);
  }
}

void join(Mesh& mesh, int rank, int world, const std::string& addr, int port, const std::string& rendezvous,
          std::chrono::milliseconds timeout, Clock::time_point deadline) {
  const std::vector<Address> addrs = resolve(addr, port);
  int err = 0;
  UniqueFd root = connect_until(addrs, deadline, &err);
  PS_CHECK(root, CommError,
           "rank {} cannot reach the rendezvous at {} (rank 0) within {} s (last error: {}): is rank 0 running, and do "
           "MASTER_ADDR and MASTER_PORT point to it?",
           rank, rendezvous, seconds(timeout), errno_text(err));
  // The mesh listener speaks the family that reaches rank 0, so the address rank 0 sees is usable.
  UniqueFd listener = listen_on(local_family(root.get()), 0, fmt::format("rank {} mesh listener", rank));
  const Hello mine = make_hello(rank, world, local_port(listener.get()));
  write_exact(root.get(), &mine, sizeof(mine), deadline, fmt::format("rendezvous at {}: sending hello", rendezvous));

  Hello h0{};
  const std::string waiting = fmt::format(
      "rendezvous at {}: waiting for rank 0's table of every rank (rank 0 sends it once all {} ranks have connected)",
      rendezvous, world);
  read_exact(root.get(), &h0, sizeof(h0), deadline, waiting);
  PS_CHECK(hello_is_ours(h0) && h0.rank == 0 && h0.world_size == world, CommError,
           "rendezvous at {}: the answer is not from a pipeswap rank 0 of this build with WORLD_SIZE={}", rendezvous,
           world);
  std::vector<TableEntry> table(world);
  read_exact(root.get(), table.data(), table.size() * sizeof(TableEntry), deadline, waiting);
  for (int r = 0; r < world; ++r) {
    table[r].host[kHostLen - 1] = '\0';
    table[r].ip[sizeof(table[r].ip) - 1] = '\0';
    mesh.hosts[r] = from_cstr(table[r].host);
  }
  mesh.hosts[rank] = local_hostname();
  mesh.fds[0] = std::move(root);

  // Connect to every lower rank's listener (they exist: each was opened before its rank joined).
  const Hello hello = make_hello(rank, world, 0);
  for (int j = 1; j < rank; ++j) {
    const std::string ip = from_cstr(table[j].ip);
    UniqueFd c = connect_until(resolve(ip, table[j].port), deadline, &err);
    PS_CHECK(c, CommError, "rank {} cannot connect to {} at {}:{} within {} s: {}", rank, mesh.who(j), ip,
             table[j].port, seconds(timeout), errno_text(err));
    write_exact(c.get(), &hello, sizeof(hello), deadline, fmt::format("connecting to {}", mesh.who(j)));
    mesh.fds[j] = std::move(c);
  }
  // Accept every higher rank; each says who it is.
  for (int n = rank + 1; n < world; ++n) {
    UniqueFd c = accept_until(listener.get(), deadline);
    if (!c) {
      std::vector<int> missing;
      for (int r = rank + 1; r < world; ++r)
        if (!mesh.fds[r]) missing.push_back(r);
      PS_THROW(CommError, "rank(s) {} did not connect to rank {} within {} s", list_ranks(missing), rank,
               seconds(timeout));
    }
    Hello h{};
    read_exact(c.get(), &h, sizeof(h), deadline, fmt::format("reading the hello of a peer from {}", peer_ip(c.get())));
    PS_CHECK(hello_is_ours(h) && h.world_size == world && h.rank > rank && h.rank < world && !mesh.fds[h.rank],
             CommError, "rank {}: unexpected connection from {} claiming rank {} of {}", rank, peer_ip(c.get()), h.rank,
             h.world_size);
    mesh.fds[h.rank] = std::move(c);
  }
}

}  // namespace

std::string Mesh::who(int r) const { return fmt::format("rank {} ({})", r, hosts.at(r)); }

Mesh connect_mesh(int rank, int world, const std::string& master_addr, int master_port, milliseconds timeout) {
  Mesh mesh;
  mesh.fds.resize(static_cast<size_t>(world));
  mesh.hosts.assign(static_cast<size_t>(world), std::string());
  mesh.hosts[static_cast<size_t>(rank)] = local_hostname();
  if (world == 1) return mesh;
  const auto deadline = Clock::now() + timeout;
  const std::string rendezvous = fmt::format("{}:{}", master_addr, master_port);
  if (rank == 0) {
    serve(mesh, world, master_addr, master_port, rendezvous, timeout, deadline);
  } else {
    join(mesh, rank, world, master_addr, master_port, rendezvous, timeout, deadline);
  }
  return mesh;
}

}  // namespace pipeswap::comm::tcp
