// NCCL transport for activations between GPU ranks. See transport.h for the contract.
//
// Streams and events:
//  - compute: LibTorch's current stream on the rank's device (the model runs there).
//  - comm: one stream of our own for ncclSend / ncclRecv, in the order the stage issues them.
//  - send: an event recorded on compute makes comm wait until the activation is computed; a second
//    event recorded on comm after ncclSend tells when the tensor may be freed (reaped later by
//    polling, never by blocking the host).
//  - recv: after ncclRecv an event recorded on comm makes compute wait before it reads the tensor.
// Only activations travel over NCCL, stage k -> stage k+1, so the dependency graph of the streams is
// a chain and cannot deadlock.
//
// Watchdog: every NCCL receive is watched by a thread of its own. A receive is posted only after its
// header arrived, so its sender has already issued the matching send: one that has not completed
// within --comm-timeout means the sender died or hangs mid-transfer (its kernels never arrive, and the
// compute stream waiting on them would block the host forever at its next synchronisation). The
// watchdog aborts the communicator, which ends the stuck kernels, and the next transport call on
// this rank throws PeerLostError naming the silent rank and its host. Sends are not watched that way
// (a send completes only when the next stage gets round to receiving, which a slow stage may take
// longer than the timeout to do); a receiver that died is seen by the control transport, and one that
// hangs by flush()'s deadline. Headers (shapes, micro-batch ids) and everything bound for the host
// (the last stage's logits for rank 0) travel over the control transport.
//
// --trace: each send's and receive's NCCL kernels are timed on the comm stream (trace::DeviceRange,
// lane "nccl"), so the timeline shows when the bytes moved on the GPU, beside the copy stream's slot
// fills and the compute stream's blocks; the stage's own "send"/"recv" ranges (lane "comm") are host
// time, i.e. when the transfer was issued. A transfer runs while both ends' kernels run: the overlap
// of the sender's "nccl send" and the receiver's "nccl recv" is its time on the link.
#include "pipeswap/comm/transport.h"
#include "pipeswap/core/error.h"

#ifdef PIPESWAP_HAVE_CUDA
#include <c10/core/impl/VirtualGuardImpl.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "pipeswap/core/cuda_handles.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/torch_compat.h"
#include "pipeswap/core/trace.h"
#include "pipeswap/core/weights.h"
#include "wire.h"

#ifdef PIPESWAP_TORCH_CUDA  // PyTorch's LibTorch: its CUDA allocator can hand out buffers on our stream
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif
#endif

namespace pipeswap::comm {

#ifndef PIPESWAP_HAVE_CUDA
std::unique_ptr<Transport> make_nccl_transport(std::unique_ptr<Transport>, int, const TransportOptions&) {
  PS_THROW(ConfigError, "this pipeswap was built without CUDA and NCCL: rebuild where the CUDA toolkit is found");
}
#else
namespace {

using cuda::EventPtr;  // shared with the watchdog
using cuda::make_event;

ncclDataType_t bytes_type() { return ncclUint8; }

// The communicator, destroyed at the end unless abort() ended it first (ncclCommAbort).
struct CommDestroy {
  void operator()(ncclComm_t c) const noexcept { ncclCommDestroy(c); }
};
using CommPtr = std::unique_ptr<ncclComm, CommDestroy>;

// The bootstrap: rank 0's unique id, handed to every other rank over the control transport.
ncclUniqueId share_unique_id(Transport& control) {
  ncclUniqueId id{};
  if (control.rank() == 0) {
    PS_CHECK_NCCL(ncclGetUniqueId(&id));
    torch::Tensor bytes = torch::empty({static_cast<int64_t>(sizeof(id.internal))}, torch::kUInt8);
    std::memcpy(bytes.data_ptr(), id.internal, sizeof(id.internal));
    for (int r = 1; r < control.world_size(); ++r) control.send(r, Message{MessageKind::kControl, 0, 0, {bytes}});
    return id;
  }
  const Message m = control.recv(0);
  PS_CHECK(m.kind == MessageKind::kControl && m.tensors.size() == 1 && m.tensors[0].scalar_type() == torch::kUInt8 &&
               m.tensors[0].numel() == static_cast<int64_t>(sizeof(id.internal)),
           CommError,
           "NCCL bootstrap: rank 0 sent something other than its {}-byte unique id (ranks are out of step: are all "
           "running the same build and arguments?)",
           sizeof(id.internal));
  std::memcpy(id.internal, m.tensors[0].data_ptr(), sizeof(id.internal));
  return id;
}

class NcclTransport final : public Transport {
 public:
  NcclTransport(std::unique_ptr<Transport> control, int device, const TransportOptions& opts)
      : control_(std::move(control)), device_(device), opts_(opts) {
    PS_CHECK_CUDA(cudaSetDevice(device_));
    const ncclUniqueId id = share_unique_id(*control_);
    ncclComm_t comm = nullptr;
    PS_CHECK_NCCL(ncclCommInitRank(&comm, control_->world_size(), id, control_->rank()));
    comm_.reset(comm);
    stream_ = cuda::make_stream(cudaStreamNonBlocking);
    watchdog_ = std::thread([this] { watch(); });
    log().info("NCCL {} communicator ready on cuda:{}", NCCL_VERSION_CODE, device_);
  }

  ~NcclTransport() override {
    try {
      if (!lost_) flush();
    } catch (const std::exception& e) {
      log().warn("NCCL transport: pending sends not finished at shutdown: {}", e.what());
    }
    {
      std::lock_guard<std::mutex> lock(watch_mutex_);
      stop_ = true;
    }
    watch_cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    // Then the members: comm_ (destroyed unless abort() ended it) before stream_.
  }

  int rank() const override { return control_->rank(); }
  int world_size() const override { return control_->world_size(); }
  const std::vector<std::string>& hosts() const override { return control_->hosts(); }
  const char* name() const override { return "nccl"; }

  void send(int dst, Message msg) override {
    if (msg.kind != MessageKind::kActivation) {  // host-bound: over the control transport
      control_->send(dst, std::move(msg));
      return;
    }
    check_lost();
    reap();
    // The header goes over the control transport: per tensor an int64 vector {dtype, shape...}, the
    // dtype as the wire's versioned code (wire.h).
    Message header{msg.kind, msg.micro_batch, msg.step, {}};
    for (const auto& t : msg.tensors) {
      auto meta = torch::empty({t.dim() + 1}, torch::kInt64);
      meta[0] = static_cast<int64_t>(wire::dtype_code(t.scalar_type()));
      for (int64_t d = 0; d < t.dim(); ++d) meta[d + 1] = t.size(d);
      header.tensors.push_back(meta);
    }
    control_->send(dst, std::move(header));
    cudaStream_t compute = compute_stream();
    EventPtr computed = make_event();
    PS_CHECK_CUDA(cudaEventRecord(computed.get(), compute));
    PS_CHECK_CUDA(cudaStreamWaitEvent(stream_.get(), computed.get(), 0));
    TracedTransfer traced(*this, trace::Kind::kSend, "nccl send", dst, msg.tensors);
    Pending p;
    for (auto& t : msg.tensors) {
      torch::Tensor c = t.contiguous();
      if (c.nbytes() > 0)  // an empty tensor carries only its shape (the header has it)
        PS_CHECK_NCCL(
            ncclSend(c.data_ptr(), static_cast<size_t>(c.nbytes()), bytes_type(), dst, comm_.get(), stream_.get()));
      p.tensors.push_back(c);
    }
    traced.end();
    p.done = make_event();
    PS_CHECK_CUDA(cudaEventRecord(p.done.get(), stream_.get()));
    p.since = std::chrono::steady_clock::now();
    pending_.push_back(std::move(p));
  }

  Message recv(int src, c10::Device device) override {
    check_lost();
    Message header = control_->recv(src);  // on the host: the activation headers are read here
    if (header.kind != MessageKind::kActivation) return wire::on_device(std::move(header), device);
    const std::string from = fmt::format("rank {} ({})", src, host_of(src));
    Message msg{header.kind, header.micro_batch, header.step, {}};
    const auto options = torch::TensorOptions().device(torch::kCUDA, static_cast<int8_t>(device_));
    cudaStream_t compute = compute_stream();
#ifdef PIPESWAP_TORCH_CUDA
    // The buffers come from the allocator's pool of the comm stream, so a receive does not wait for
    // the compute already queued: the next micro-batch's activation arrives while this stage still
    // computes the current one. recordStream below keeps a buffer from being reused before compute
    // has read it.
    const c10::cuda::CUDAStream comm_stream = c10::cuda::getStreamFromExternal(stream_.get(), device_);
#else
    // The buffers come from LibTorch's allocator on the compute stream: comm waits for compute so
    // that a buffer is not written while its previous use is still running.
    EventPtr before = make_event();
    PS_CHECK_CUDA(cudaEventRecord(before.get(), compute));
    PS_CHECK_CUDA(cudaStreamWaitEvent(stream_.get(), before.get(), 0));
#endif
    for (const auto& meta : header.tensors) {
      const auto* m = meta.data_ptr<int64_t>();
      std::vector<int64_t> shape(m + 1, m + meta.numel());
      torch::Tensor t;
      {
#ifdef PIPESWAP_TORCH_CUDA
        c10::cuda::CUDAStreamGuard on_comm(comm_stream);
#endif
        t = torch::empty(shape, options.dtype(wire::scalar_type_of(static_cast<uint8_t>(m[0]), from)));
      }
      msg.tensors.push_back(t);
    }
    {
      TracedTransfer traced(*this, trace::Kind::kRecv, "nccl recv", src, msg.tensors);
      for (const auto& t : msg.tensors)
        if (t.nbytes() > 0)
          PS_CHECK_NCCL(
              ncclRecv(t.data_ptr(), static_cast<size_t>(t.nbytes()), bytes_type(), src, comm_.get(), stream_.get()));
    }
    EventPtr arrived = make_event();
    PS_CHECK_CUDA(cudaEventRecord(arrived.get(), stream_.get()));
    PS_CHECK_CUDA(cudaStreamWaitEvent(compute, arrived.get(), 0));
#ifdef PIPESWAP_TORCH_CUDA
    const c10::cuda::CUDAStream compute_c10 = c10::cuda::getStreamFromExternal(compute, device_);
    for (const auto& t : msg.tensors)
      if (t.nbytes() > 0) c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), compute_c10);
#endif
    watch_op(arrived, src, "receive an activation from");
    check_async_error();
    if (device != options.device()) {
      for (auto& t : msg.tensors) t = t.to(device);
    }
    return msg;
  }

  void barrier() override { control_->barrier(); }

  void flush() override {
    const auto deadline = std::chrono::steady_clock::now() + opts_.timeout;
    while (!pending_.empty()) {
      check_lost();
      reap();
      check_async_error();
      if (pending_.empty()) break;
      if (std::chrono::steady_clock::now() > deadline) {
        abort("NCCL send did not complete within --comm-timeout");
        PS_THROW(PeerLostError, "an NCCL send did not complete within {} s: the receiving rank may have died",
                 opts_.timeout.count() / 1000.0);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    check_lost();
    control_->flush();
  }

  void abort(const std::string& reason) noexcept override {
    abort_comm();
    control_->abort(reason);
  }

 private:
  // The NCCL kernels of one send or receive, timed on the comm stream when --trace is on (a device
  // range needs a c10 stream, which only PyTorch's CUDA LibTorch makes from ours; elsewhere nothing).
  class TracedTransfer {
   public:
    TracedTransfer(const NcclTransport& t, trace::Kind kind, const char* name, int peer,
                   const std::vector<torch::Tensor>& tensors) {
#ifdef PIPESWAP_TORCH_CUDA
      if (!trace::enabled()) return;
      trace::Args what;
      what.peer = peer;
      what.bytes = total_nbytes(tensors);
      range_.emplace(kind, name, what, c10::Stream(c10::cuda::getStreamFromExternal(t.stream_.get(), t.device_)),
                     trace::Lane::kNccl);
#else
      (void)t, (void)kind, (void)name, (void)peer, (void)tensors;
#endif
    }
    void end() { range_.reset(); }

   private:
    std::optional<trace::DeviceRange> range_;
  };

  struct Pending {
    std::vector<torch::Tensor> tensors;
    EventPtr done;
    std::chrono::steady_clock::time_point since;
  };

  cudaStream_t compute_stream() const {
    c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
    auto s = compat::native_stream(impl.getStream(c10::Device(c10::DeviceType::CUDA, static_cast<int8_t>(device_))));
    PS_CHECK(s.has_value(), ConfigError, "the NCCL transport needs LibTorch 2.2 or later (this is {})",
             compat::torch_version());
    return static_cast<cudaStream_t>(*s);
  }

  // Drops sends whose NCCL operation finished (their tensors may be freed now).
  void reap() {
    while (!pending_.empty()) {
      cudaError_t q = cudaEventQuery(pending_.front().done.get());
      if (q == cudaErrorNotReady) return;
      PS_CHECK_CUDA(q);
      pending_.pop_front();
    }
  }

  // Ends every outstanding NCCL kernel of this communicator (from the watchdog or on an error).
  void abort_comm() noexcept {
    std::lock_guard<std::mutex> lock(comm_mutex_);
    if (comm_) ncclCommAbort(comm_.release());
  }

  void watch_op(const EventPtr& done, int peer, const char* what) {
    {
      std::lock_guard<std::mutex> lock(watch_mutex_);
      watched_.push_back(Watched{done, peer, what, std::chrono::steady_clock::now()});
    }
    watch_cv_.notify_all();
  }

  std::string host_of(int r) const {
    const auto& h = control_->hosts();
    return r >= 0 && r < static_cast<int>(h.size()) ? h[r] : std::string("?");
  }

  // The watchdog thread: completes, or times out, the oldest watched operations first.
  void watch() {
    std::unique_lock<std::mutex> lock(watch_mutex_);
    while (!stop_) {
      while (!watched_.empty()) {
        const cudaError_t q = cudaEventQuery(watched_.front().done.get());
        if (q != cudaErrorNotReady) {  // done (or a CUDA error the main thread will meet itself)
          watched_.pop_front();
          continue;
        }
        const Watched& w = watched_.front();
        if (std::chrono::steady_clock::now() - w.since > opts_.timeout) {
          lost_message_ = fmt::format(
              "rank {} (host {}) is silent: this rank waited {:.0f} s (--comm-timeout) to {} it over NCCL; the NCCL "
              "communicator was aborted (is rank {} dead or hung? see its log)",
              w.peer, host_of(w.peer), opts_.timeout.count() / 1000.0, std::string(w.what) + " rank " +
                                                                           std::to_string(w.peer),
              w.peer);
          lost_ = true;
          watched_.clear();
          lock.unlock();
          log().error("{}", lost_message_);
          abort_comm();
          lock.lock();
        }
        break;
      }
      watch_cv_.wait_for(lock, std::chrono::milliseconds(50));
    }
  }

  void check_lost() {
    if (!lost_) return;
    std::lock_guard<std::mutex> lock(watch_mutex_);
    PS_THROW(PeerLostError, "{}", lost_message_);
  }

  void check_async_error() {
    check_lost();
    ncclResult_t async = ncclSuccess;
    PS_CHECK_NCCL(ncclCommGetAsyncError(comm_.get(), &async));
    if (async != ncclSuccess && async != ncclInProgress) {
      abort("NCCL asynchronous error");
      PS_THROW(CommError, "NCCL reported an asynchronous error: {}", ncclGetErrorString(async));
    }
  }

  std::unique_ptr<Transport> control_;
  int device_;
  TransportOptions opts_;
  cuda::StreamPtr stream_;
  CommPtr comm_;           // empty once aborted
  std::mutex comm_mutex_;  // comm_ against a concurrent abort from the watchdog
  std::deque<Pending> pending_;

  struct Watched {
    EventPtr done;
    int peer;
    const char* what;
    std::chrono::steady_clock::time_point since;
  };
  std::mutex watch_mutex_;
  std::condition_variable watch_cv_;
  std::deque<Watched> watched_;
  bool stop_ = false;
  std::atomic<bool> lost_{false};
  std::string lost_message_;
  std::thread watchdog_;
};

}  // namespace

std::unique_ptr<Transport> make_nccl_transport(std::unique_ptr<Transport> control, int cuda_device,
                                               const TransportOptions& opts) {
  return std::make_unique<NcclTransport>(std::move(control), cuda_device, opts);
}
#endif

}  // namespace pipeswap::comm
