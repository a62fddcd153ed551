// Small collectives over a transport's control messages, through rank 0: what the ranks agree on
// before a job (the launcher's agreement: devices, free memory, budgets, the job's shape) and what
// rank 0 gathers after it (the trace). Values are typed: integers travel as int64 tensors, bytes as
// uint8 ones, never as text to parse back. Every receive checks it got the control message it
// expects, so ranks that are out of step fail with a CommError instead of mixing unrelated data.
// Collective: every rank calls the same ones, in the same order.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "pipeswap/comm/transport.h"

namespace pipeswap::pipeline {

// Every rank's values, in rank order; every rank gives the same number of values.
std::vector<std::vector<int64_t>> allgather(comm::Transport& t, const std::vector<int64_t>& mine);
// Rank 0's values on every rank (the others' `mine` is not read).
std::vector<int64_t> broadcast(comm::Transport& t, const std::vector<int64_t>& mine);
// Every rank's bytes, in rank order.
std::vector<std::string> allgather_strings(comm::Transport& t, const std::string& mine);
// Rank 0 gets every rank's bytes, in rank order; the others get an empty vector (for large per-rank
// payloads such as traces, which only rank 0 needs).
std::vector<std::string> gather_strings(comm::Transport& t, const std::string& mine);

// Rank 0 works alone (generate's text encoder, VAE decode and files) while every other rank waits for it
// without its wait counting as a silent peer: rank 0 runs `work` on a worker thread (with the caller's
// LibTorch thread count) while its calling thread, the one that owns the transport (MPI_THREAD_FUNNELED),
// sends every other rank a heartbeat each `interval`, then a last message when `work` has returned or
// thrown. The others return on that message (CommError naming `what` if rank 0's work failed); a rank 0
// that dies stops its heartbeats, and they fail within the comm timeout, naming it. `work`'s exception is
// rethrown on rank 0. Alone in the world, `work` just runs. Collective.
void rank0_alone(comm::Transport& t, const std::string& what, const std::function<void()>& work,
                 std::chrono::milliseconds interval);

}  // namespace pipeswap::pipeline
