// Moving activations between ranks. One small interface (send, recv, barrier, abort) with two CPU
// implementations in this folder: MPI (under mpirun / srun --mpi=pmix) and TCP (torchrun-style
// RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, and the single-node mode that spawns its own workers).
// The NCCL transport for GPU activations sits behind the same interface.
//
// Contract:
//  - send() returns at once; the transport keeps the message's tensors alive until they are on the
//    wire. Tensors may sit on any device: the CPU transports copy them to the host, NCCL sends
//    activations from the device. Messages between one pair of ranks arrive in the order they were sent.
//  - recv(src, device) blocks until the next message from `src` arrives, and returns its tensors on
//    `device` (NCCL receives activations there directly; the others copy them there). If none arrives within the comm
//    timeout, or the peer died or aborted, it throws PeerLostError naming the peer's rank and host.
//  - Watchdog: a rank that stops answering (dead, stopped, hung) is named by every waiting rank,
//    not only by the ones that wait on it directly: a rank whose wait times out on a peer that still
//    answers (it waits itself) names the silent rank instead (MPI: a ping round at the deadline; TCP:
//    heartbeats, which also let a recv() on a peer that answers wait up to twice the timeout, and
//    let send() find a silent peer). A rank that only sends learns it from send() too.
//  - abort() never throws; it tells every reachable peer to stop and makes their pending and future
//    recv() throw PeerLostError naming this rank.
#pragma once

#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pipeswap::comm {

enum class MessageKind : uint16_t {
  kActivation = 1,  // stage k -> stage k+1
  kOutput = 2,      // last stage -> rank 0
  kControl = 3,     // plan agreement, host names, small bookkeeping
};

struct Message {
  MessageKind kind = MessageKind::kActivation;
  int32_t micro_batch = 0;
  int32_t step = 0;                   // denoising step (0 for single-pass jobs)
  std::vector<torch::Tensor> tensors;  // any device when sent; contiguous on the wire
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Host name of every rank, gathered at start-up (error messages name the peer's host).
  virtual const std::vector<std::string>& hosts() const = 0;
  virtual void send(int dst, Message msg) = 0;
  virtual Message recv(int src, c10::Device device) = 0;
  Message recv(int src) { return recv(src, c10::Device(c10::kCPU)); }
  // Waits for every rank, bounded by the comm timeout (throws PeerLostError naming a missing rank
  // where the implementation can tell which).
  virtual void barrier() = 0;
  // Waits until every queued send has left this process.
  virtual void flush() = 0;
  virtual void abort(const std::string& reason) noexcept = 0;
  virtual const char* name() const = 0;
};

struct TransportOptions {
  std::chrono::milliseconds timeout{60000};  // --comm-timeout
};

// MPI_COMM_WORLD (MPI must already be initialised by the launcher).
std::unique_ptr<Transport> make_mpi_transport(const TransportOptions& opts);

// TCP rendezvous at master_addr:master_port (rank 0 listens there; every rank connects to every
// other one). Throws CommError naming the address when it cannot connect within the timeout.
std::unique_ptr<Transport> make_tcp_transport(int rank, int world_size, const std::string& master_addr, int master_port,
                                              const TransportOptions& opts);

// NCCL for activations between GPU ranks, with `control` (MPI or TCP) for bootstrap (rank 0's
// ncclUniqueId), message headers, outputs bound for the host and barriers. Activation tensors stay on
// `device`: a send waits (device-side) for the compute stream, a recv makes the compute stream wait
// for it, and the host never synchronises the device. Throws ConfigError when built without NCCL.
std::unique_ptr<Transport> make_nccl_transport(std::unique_ptr<Transport> control, int cuda_device,
                                               const TransportOptions& opts);

// A world of one: send/recv to self are errors, barrier is a no-op.
std::unique_ptr<Transport> make_self_transport();

}  // namespace pipeswap::comm
