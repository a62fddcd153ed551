// The TCP transport's rendezvous (internal to comm/), apart from its data path as c10d keeps the
// Store apart from the Backend. Bounded by the comm timeout: rank 0 listens on
// master_addr:master_port; every other rank opens its own listener on an ephemeral port, connects to
// rank 0 (retrying: rank 0 may start later) and sends a Hello with its rank, host name and listener
// port. Rank 0 answers with the table of every rank's address, port and host. Then rank i connects to
// the listener of every rank 0 < j < i and says who it is; the rendezvous sockets are the connections
// to rank 0. The result is one socket per pair of ranks, so messages between a pair arrive in order.
//
// What this file must not do: send or read frames. The sockets it returns are the data path's.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "pipeswap/core/unique_fd.h"

namespace pipeswap::comm::tcp {

// Every rank's connection and host, by rank (this rank's own descriptor stays invalid).
struct Mesh {
  std::vector<UniqueFd> fds;
  std::vector<std::string> hosts;
  // "rank 3 (node7)" for messages.
  std::string who(int r) const;
};

// Connects this rank to every other one through the rendezvous at master_addr:master_port, within
// `timeout`. A world of one connects nothing. Throws CommError naming the ranks that did not come,
// or what is wrong with one that did (another world size, a rank taken twice, another build).
Mesh connect_mesh(int rank, int world, const std::string& master_addr, int master_port,
                  std::chrono::milliseconds timeout);

}  // namespace pipeswap::comm::tcp
