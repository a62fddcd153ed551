// The TCP transport's data path: activations between CPU ranks started without MPI (torchrun-style
// environment, srun without PMIx, the single-node spawner). The connections come from the rendezvous
// (tcp_rendezvous.h), the socket calls from tcp_socket.h.
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
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "pipeswap/comm/transport.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/files.h"
#include "pipeswap/core/log.h"
#include "tcp_rendezvous.h"
#include "tcp_socket.h"
#include "wire.h"

namespace pipeswap::comm {
namespace {

using std::chrono::milliseconds;
using tcp::Clock;
using tcp::HeardAt;

constexpr uint64_t kMaxAbortText = 64 * 1024;
// A DATA frame longer than this is a corrupt length field, not a real activation.
constexpr uint64_t kMaxDataFrame = uint64_t{1} << 40;
// After abort(), how long ABORT frames get to leave before the sockets are shut down.
constexpr milliseconds kAbortGrace{1000};
// A peer whose connection closed may have closed it because another rank aborted the job (it met
// that ABORT and exited): how long the error waits for such an ABORT, so it names the rank that
// started it rather than a bystander.
constexpr milliseconds kLossGrace{250};
// How long the destructor lets queued sends drain before it cuts the connections.
constexpr milliseconds kCloseGrace{10000};

double seconds(milliseconds ms) { return std::chrono::duration<double>(ms).count(); }

// Frames: packed, fixed-size, checked like the wire headers.
enum class FrameType : uint32_t { kData = 1, kBarrier = 2, kAbort = 3, kHeartbeat = 4 };

#pragma pack(push, 1)
struct FrameHeader {
  uint32_t type;    // FrameType
  uint64_t length;  // payload bytes after this header
};
#pragma pack(pop)
static_assert(sizeof(FrameHeader) == 12 && offsetof(FrameHeader, length) == 4, "frame header layout");

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
    tcp::Mesh mesh = tcp::connect_mesh(rank, world, master_addr, master_port, opts_.timeout);
    hosts_ = std::move(mesh.hosts);
    for (int r = 0; r < world; ++r) {
      peers_.push_back(std::make_unique<Peer>());
      peers_.back()->rank = r;
      peers_.back()->fd = std::move(mesh.fds[static_cast<size_t>(r)]);
    }
    if (world == 1) return;
    start_threads();
    log().debug("tcp transport: rank {} of {} connected to every peer (rendezvous {}:{})", rank_, world_, master_addr,
                master_port);
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

  Message recv(int src, c10::Device device) override {
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
        lk.unlock();  // a copy to the device runs outside the lock
        return wire::on_device(std::move(m), device);
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
    UniqueFd fd;
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
      PS_THROW(PeerAbortedError, "{} aborted the job: {}", who(peer_abort_->first), peer_abort_->second);
    }
  }

  void await_abort_after_loss_locked(std::unique_lock<std::mutex>& lk, const Peer& p) {
    if (p.lost.empty() || p.corrupt || peer_abort_) return;
    cv_.wait_for(lk, kLossGrace, [&] { return peer_abort_.has_value(); });
    throw_if_aborted_locked();
  }

  void throw_if_lost_locked(const Peer& p) const {
    if (p.lost.empty()) return;
    if (p.corrupt) PS_THROW(CommError, "{}", p.lost);
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

  // ----- threads

  void start_threads() {
    try {
      for (auto& p : peers_) {
        if (p->rank == rank_) continue;
        tcp::note_heard(p->heard);  // connected just now
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
        const int err = tcp::send_all(p.fd.get(), {{&beat, sizeof(beat)}});
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
      const int err = tcp::send_all(p.fd.get(), std::move(iov));
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
        int err = tcp::recv_all(p.fd.get(), &fh, sizeof(fh), p.heard);
        if (err != 0) {
          lost = describe_read_error(p.rank, err, Where::kBetweenFrames);
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
          err = tcp::recv_all(p.fd.get(), reason.data(), fh.length, p.heard);
          if (err != 0) {
            lost = describe_read_error(p.rank, err, Where::kMidFrame);
            break;
          }
          std::lock_guard<std::mutex> lk(mu_);
          if (!peer_abort_) peer_abort_.emplace(p.rank, reason);
          cv_.notify_all();
        } else {
          corrupt = true;
          lost = fmt::format(
              "{} sent a frame of unknown type {} and length {}: the stream is corrupt, or the peer runs another "
              "pipeswap build",
              who(p.rank), fh.type, fh.length);
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
    int err = tcp::recv_all(p.fd.get(), header.data(), header.size(), p.heard);
    if (err == 0) {
      const wire::MessageHeader mh = wire::decode_message_header(header.data(), header.size(), from);
      const size_t full = wire::header_bytes(mh.num_tensors);
      PS_CHECK(length >= full, CommError, "{} sent a data frame of {} bytes, shorter than its {}-byte header", from,
               length, full);
      header.resize(full);
      err = tcp::recv_all(p.fd.get(), header.data() + sizeof(wire::MessageHeader), full - sizeof(wire::MessageHeader),
                          p.heard);
    }
    if (err != 0) {
      *lost = describe_read_error(p.rank, err, Where::kMidFrame);
      return std::nullopt;
    }
    Message m = wire::decode(header.data(), header.size(), from);
    uint64_t total = header.size();
    for (const torch::Tensor& t : m.tensors) total += wire::payload_bytes(t);
    PS_CHECK(total == length, CommError, "{} sent a data frame of {} bytes whose header describes {} bytes", from,
             length, total);
    for (torch::Tensor& t : m.tensors) {
      err = tcp::recv_all(p.fd.get(), t.data_ptr(), wire::payload_bytes(t), p.heard);
      if (err != 0) {
        *lost = describe_read_error(p.rank, err, Where::kMidFrame);
        return std::nullopt;
      }
    }
    return m;
  }

  // Where in the stream a read failed: a connection closed between frames is a peer that left.
  enum class Where { kBetweenFrames, kMidFrame };
  std::string describe_read_error(int r, int err, Where where) const {
    if (err == -1 || err == ECONNRESET) {
      return fmt::format("{} closed its connection{}: it exited or was killed", who(r),
                         where == Where::kMidFrame ? " in the middle of a message" : "");
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
