// The MPI transport: activations between CPU ranks started by mpirun or srun --mpi=pmix.
//
// Every message is the wire header (wire.h) followed by one MPI message per tensor payload chunk,
// all on one tag of a private duplicate of MPI_COMM_WORLD. MPI's non-overtaking rule (same sender,
// communicator and tag) keeps the pieces of a message and successive messages in order, so recv(src)
// simply takes the next message from src. Every wait is MPI_Test in a loop against a deadline, so a
// dead or hung peer becomes a PeerLostError instead of a hang. All MPI calls happen on the thread
// that calls the transport (the launcher initialises MPI with MPI_THREAD_FUNNELED).
//
// Watchdog: the rank a wait is on may be alive and waiting itself, on a rank that hangs. So when a
// wait reaches its deadline, this rank first pings every other rank (kPingTag) and gives them half
// the timeout, at most 1 s, to answer (kPongTag); every wait loop answers pings, so a rank inside the
// transport answers at once, and a stopped, hung or long-busy one does not. The error then names the
// rank that does not answer (the awaited one first), so every rank of a job that a hung rank stalls
// names that rank, not its live neighbour; the barrier, which MPI cannot attribute, names it too.
// A rank that only sends (a first stage computing ahead of a hung next stage) pings, without
// waiting, a peer that has taken none of its messages for half the timeout, and names it from
// send() once it has not answered for a whole timeout (a busy peer answers from its next transport
// call, as a peer's waits already need it to come back within the timeout).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <thread>

#include "pipeswap/comm/transport.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/identity.h"
#include "pipeswap/core/log.h"
#include "wire.h"

namespace pipeswap::comm {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::microseconds;

// One tag for everything: recv(src) must take whatever src sent next, in order.
constexpr int kTag = 0x5053;  // "PS"; the MPI standard guarantees tags up to 32767
// The watchdog's ping and answer (one int64: the asker's round number).
constexpr int kPingTag = kTag + 1;
constexpr int kPongTag = kTag + 2;
// How long a ping round waits for answers, at most.
constexpr std::chrono::milliseconds kAnswerGraceMax{1000};
// MPI counts are int: larger payloads go as several messages of at most this many bytes.
constexpr size_t kMaxChunk = size_t{1} << 30;
constexpr size_t kHostBytes = 256;
// How long the destructor gives outstanding requests before it leaks their buffers on purpose.
constexpr std::chrono::milliseconds kDestructorGrace{2000};

double seconds(std::chrono::milliseconds ms) { return std::chrono::duration<double>(ms).count(); }

// Sleeps between tests start short (a message that is about to arrive costs little latency) and back
// off to `cap` (a rank waiting on a slow peer leaves the cores to the peer). MPI moves a large message
// in fragments only while both sides call into it, so waits for bytes already on their way use a
// short cap (kMovingCap), and only waits for a peer to start sending back off to kIdleCap.
constexpr microseconds kIdleCap{1000};
constexpr microseconds kMovingCap{50};
class Backoff {
 public:
  explicit Backoff(microseconds cap) : cap_(cap) {}
  void reset() { nap_ = microseconds(20); }
  void wait() {
    std::this_thread::sleep_for(nap_);
    nap_ = std::min(nap_ * 2, cap_);
  }

 private:
  microseconds cap_;
  microseconds nap_{20};
};

// Requests whose buffers MPI may still write into or read from when we give up on them: freeing the
// buffers would corrupt memory, so they are parked here and never freed (a bounded leak on a path
// that ends the job anyway).
struct Abandoned {
  std::vector<uint8_t> bytes;
  std::vector<torch::Tensor> tensors;
  std::vector<MPI_Request> requests;
};
void abandon(Abandoned a) {
  static auto* graveyard = std::make_unique<std::vector<Abandoned>>().release();  // never freed, see above
  graveyard->push_back(std::move(a));
}

bool mpi_usable() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

// Posts MPI_Isend/MPI_Irecv for a payload in chunks of at most kMaxChunk bytes.
template <class Post>
void post_chunks(uint8_t* data, uint64_t nbytes, std::vector<MPI_Request>& reqs, Post post) {
  for (uint64_t off = 0; off < nbytes; off += kMaxChunk) {
    const int n = static_cast<int>(std::min<uint64_t>(kMaxChunk, nbytes - off));
    reqs.push_back(MPI_REQUEST_NULL);
    post(data + off, n, &reqs.back());
  }
}

class MpiTransport final : public Transport {
 public:
  explicit MpiTransport(const TransportOptions& opts) : opts_(opts) {
    int init = 0;
    PS_CHECK_MPI(MPI_Initialized(&init));
    PS_CHECK(init, CommError,
             "the MPI transport needs MPI to be initialised first (the launcher does it under mpirun)");
    // A private communicator: our tag cannot meet messages of other code (or of an earlier
    // transport) on MPI_COMM_WORLD, and errors on it come back as return codes instead of aborting.
    MPI_Request req = MPI_REQUEST_NULL;
    PS_CHECK_MPI(MPI_Comm_idup(MPI_COMM_WORLD, &comm_, &req));
    PS_CHECK(wait_one(&req, nullptr, Clock::now() + opts_.timeout), PeerLostError,
             "MPI start-up: not every rank joined within {} s; one may have died or hung before start-up (raise "
             "--comm-timeout if it is just slow)",
             seconds(opts_.timeout));
    PS_CHECK_MPI(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    PS_CHECK_MPI(MPI_Comm_rank(comm_, &rank_));
    PS_CHECK_MPI(MPI_Comm_size(comm_, &size_));

    std::vector<char> mine(kHostBytes, '\0');
    const std::string host = local_hostname();
    std::memcpy(mine.data(), host.data(), std::min(host.size(), kHostBytes - 1));
    std::vector<char> all(kHostBytes * size_, '\0');
    PS_CHECK_MPI(MPI_Iallgather(mine.data(), kHostBytes, MPI_CHAR, all.data(), kHostBytes, MPI_CHAR, comm_, &req));
    PS_CHECK(wait_one(&req, nullptr, Clock::now() + opts_.timeout), PeerLostError,
             "MPI start-up: host names of every rank did not arrive within {} s; a rank may have died or hung",
             seconds(opts_.timeout));
    for (int r = 0; r < size_; ++r) hosts_.emplace_back(all.data() + r * kHostBytes);  // NUL-terminated above
    posted_.resize(size_);
    out_of_step_.assign(size_, false);
    dog_ = std::make_unique<Watchdog>();
    dog_->ping_out.assign(size_, 0);
    dog_->ping_tx.assign(size_, MPI_REQUEST_NULL);
    dog_->answered.assign(size_, 0);
    dog_->probe_round.assign(size_, 0);
    dog_->probe_at.assign(size_, Clock::time_point());
    progress_.assign(size_, Clock::now());
    PS_CHECK_MPI(MPI_Irecv(&dog_->ping_in, 1, MPI_INT64_T, MPI_ANY_SOURCE, kPingTag, comm_, &dog_->ping_rx));
    PS_CHECK_MPI(MPI_Irecv(&dog_->pong_in, 1, MPI_INT64_T, MPI_ANY_SOURCE, kPongTag, comm_, &dog_->pong_rx));
    log().debug("mpi transport: rank {} of {}, comm timeout {} s", rank_, size_, seconds(opts_.timeout));
  }

  ~MpiTransport() override {
    try {
      if (!mpi_usable()) return;  // MPI is gone: nothing can be waited on or freed any more
      const auto deadline = Clock::now() + std::min(opts_.timeout, kDestructorGrace);
      bool clean = drain_sends(deadline);
      for (PendingSend& p : pending_) abandon(Abandoned{std::move(p.header), std::move(p.payloads), p.reqs});
      if (!clean) log().warn("mpi transport: {} send(s) still in flight at shutdown", pending_.size());
      pending_.clear();
      // Header receives left posted by a timed-out recv(): cancel them so the communicator can go.
      for (PostedHeader& h : posted_) {
        if (h.req == MPI_REQUEST_NULL) continue;
        MPI_Cancel(&h.req);
        if (!wait_one(&h.req, nullptr, deadline)) {
          clean = false;
          abandon(Abandoned{std::move(h.bytes), {}, {h.req}});
        }
      }
      if (dog_ && !close_watchdog(deadline)) {
        clean = false;
        (void)dog_.release();  // MPI may still touch its buffers: leaked on purpose, as above
      }
      if (barrier_req_ != MPI_REQUEST_NULL) clean = false;  // a collective cannot be cancelled
      // A communicator with requests we gave up on stays allocated, like their buffers.
      if (clean && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    } catch (const std::exception& e) {
      log().warn("mpi transport shutdown: {}", e.what());
    } catch (...) {
      // Destructors never throw.
    }
  }

  MpiTransport(const MpiTransport&) = delete;
  MpiTransport& operator=(const MpiTransport&) = delete;

  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  const std::vector<std::string>& hosts() const override { return hosts_; }
  const char* name() const override { return "mpi"; }

  void send(int dst, Message msg) override {
    check_peer(dst, "send to");
    reap();
    answer_pings();  // a stage that computes ahead answers between its sends
    watch_sends(dst);
    if (std::none_of(pending_.begin(), pending_.end(), [&](const PendingSend& p) { return p.dst == dst; })) {
      progress_[dst] = Clock::now();  // nothing owed to dst: its clock starts now
    }
    wire::Outgoing out = wire::encode(std::move(msg));
    // Queue first, post second: the entry owns the bytes MPI reads, even if a post below throws.
    pending_.push_back(PendingSend{dst, std::move(out.header), std::move(out.payloads), {}});
    PendingSend& p = pending_.back();
    p.reqs.reserve(1 + p.payloads.size() + out.payload_bytes / kMaxChunk);
    p.reqs.push_back(MPI_REQUEST_NULL);
    PS_CHECK_MPI(
        MPI_Isend(p.header.data(), static_cast<int>(p.header.size()), MPI_BYTE, dst, kTag, comm_, &p.reqs.back()));
    for (torch::Tensor& t : p.payloads) {
      post_chunks(
          static_cast<uint8_t*>(t.data_ptr()), wire::payload_bytes(t), p.reqs,
          [&](uint8_t* d, int n, MPI_Request* r) { PS_CHECK_MPI(MPI_Isend(d, n, MPI_BYTE, dst, kTag, comm_, r)); });
    }
  }

  Message recv(int src, c10::Device device) override {
    check_peer(src, "recv from");
    PS_CHECK(!out_of_step_[src], CommError,
             "recv from {}: an earlier message from it broke off half-way, so its stream is out of step", peer(src));
    reap();
    // The header size varies with the tensor count but is bounded: receive into the largest size.
    // After a timeout the receive stays posted, so a later recv(src) still gets the late message.
    PostedHeader& h = posted_[src];
    if (h.req == MPI_REQUEST_NULL) {
      h.bytes.resize(wire::kMaxHeaderBytes);
      PS_CHECK_MPI(MPI_Irecv(h.bytes.data(), static_cast<int>(h.bytes.size()), MPI_BYTE, src, kTag, comm_, &h.req));
    }
    MPI_Status st;
    if (!wait_one(&h.req, &st, Clock::now() + opts_.timeout) && !ask_peers(&h.req, &st)) {
      const int silent = silent_peer(src);
      PS_CHECK(silent != src, PeerLostError,
               "no message from {} within {} s, and it does not answer; it may have died or hung (raise "
               "--comm-timeout if it is just slow)",
               peer(src), seconds(opts_.timeout));
      PS_CHECK(silent < 0, PeerLostError,
               "{} does not answer (no message from {} within {} s, which still answers: it may wait for it); it may "
               "have died or hung (raise --comm-timeout if it is just slow)",
               peer(silent), peer(src), seconds(opts_.timeout));
      PS_THROW(PeerLostError,
               "no message from {} within {} s, although every rank still answers: it waits for another rank, or "
               "computes for longer than that (raise --comm-timeout if it is just slow)",
               peer(src), seconds(opts_.timeout));
    }
    int count = 0;
    PS_CHECK_MPI(MPI_Get_count(&st, MPI_BYTE, &count));

    Message msg;
    try {
      msg = wire::decode(h.bytes.data(), static_cast<size_t>(count), peer(src));
    } catch (...) {
      out_of_step_[src] = true;  // the payloads that follow would be read as headers
      throw;
    }
    std::vector<MPI_Request> reqs;
    try {
      for (torch::Tensor& t : msg.tensors) {
        post_chunks(
            static_cast<uint8_t*>(t.data_ptr()), wire::payload_bytes(t), reqs,
            [&](uint8_t* d, int n, MPI_Request* r) { PS_CHECK_MPI(MPI_Irecv(d, n, MPI_BYTE, src, kTag, comm_, r)); });
      }
      PS_CHECK(wait_all(reqs), PeerLostError,
               "{} stopped sending half-way through a message (no progress within {} s); it may have died or hung",
               peer(src), seconds(opts_.timeout));
    } catch (...) {
      out_of_step_[src] = true;
      abandon(Abandoned{{}, std::move(msg.tensors), std::move(reqs)});
      throw;
    }
    return wire::on_device(std::move(msg), device);
  }

  void barrier() override {
    reap();
    const auto deadline = Clock::now() + opts_.timeout;
    // A barrier that timed out earlier is still in flight: complete it before posting the next, so
    // every rank posts the same sequence of barriers.
    if (barrier_req_ == MPI_REQUEST_NULL) PS_CHECK_MPI(MPI_Ibarrier(comm_, &barrier_req_));
    if (wait_one(&barrier_req_, nullptr, deadline) || ask_peers(&barrier_req_, nullptr)) return;
    const int silent = silent_peer(-1);
    PS_CHECK(silent < 0, PeerLostError,
             "barrier: not every rank arrived within {} s, and {} does not answer; it may have died or hung (raise "
             "--comm-timeout if it is just slow)",
             seconds(opts_.timeout), peer(silent));
    PS_THROW(PeerLostError,
             "barrier: not every rank arrived within {} s, although every rank still answers: one of them computes or "
             "waits for longer than that (raise --comm-timeout if it is just slow)",
             seconds(opts_.timeout));
  }

  void flush() override {
    if (drain_sends(Clock::now() + opts_.timeout)) return;
    ask_peers(nullptr, nullptr);
    if (drain_sends(Clock::now())) return;  // the last ones left while this rank asked
    const int dst = pending_.front().dst;
    const int silent = silent_peer(dst);
    PS_CHECK(silent < 0 || silent == dst, PeerLostError,
             "{} does not answer ({} did not take a message within {} s); it may have died or hung (raise "
             "--comm-timeout if it is just slow)",
             peer(silent), peer(dst), seconds(opts_.timeout));
    PS_THROW(PeerLostError,
             "{} did not take a message within {} s{}; it may have died or hung (raise --comm-timeout if it is just "
             "slow)",
             peer(dst), seconds(opts_.timeout), silent == dst ? ", and it does not answer" : "");
  }

  void abort(const std::string& reason) noexcept override {
    try {
      log().debug("aborting the MPI job: {}", reason);  // the launcher has said why, once
    } catch (...) {
      // Logging must not stop the abort.
    }
    if (mpi_usable()) MPI_Abort(MPI_COMM_WORLD, 1);
  }

 private:
  struct PendingSend {
    int dst;
    std::vector<uint8_t> header;
    std::vector<torch::Tensor> payloads;  // contiguous CPU copies MPI reads from
    std::vector<MPI_Request> reqs;
  };
  struct PostedHeader {
    std::vector<uint8_t> bytes;
    MPI_Request req = MPI_REQUEST_NULL;
  };
  // The watchdog's buffers and requests (one heap block: leaked as a whole if MPI keeps them).
  struct Watchdog {
    int64_t ping_in = 0, pong_in = 0;
    MPI_Request ping_rx = MPI_REQUEST_NULL, pong_rx = MPI_REQUEST_NULL;  // from any rank, always posted
    std::vector<int64_t> ping_out;                                       // by peer: the round of the ping on its way
    std::vector<MPI_Request> ping_tx;                                    // by peer
    std::vector<int64_t> answered;                                       // by peer: the last round it answered
    std::deque<std::pair<int64_t, MPI_Request>> replies;                 // answers on their way (deque: they stay put)
    int64_t round = 0;
    std::vector<int64_t> probe_round;         // by peer: the round watch_sends() asked it in (0: none)
    std::vector<Clock::time_point> probe_at;  // by peer: when
    bool closing = false;                     // receives cancelled: their completions are not pings
  };

  std::string peer(int r) const { return fmt::format("rank {} ({})", r, hosts_.at(r)); }

  void check_peer(int r, const char* what) const {
    PS_CHECK(r >= 0 && r < size_ && r != rank_, CommError,
             "{} rank {}: rank {} of a world of {} can only talk to the other ranks", what, r, rank_, size_);
  }

  // Tests one request until done or the deadline; true when done.
  bool wait_one(MPI_Request* req, MPI_Status* st, Clock::time_point deadline) {
    Backoff backoff(kIdleCap);
    for (;;) {
      int done = 0;
      PS_CHECK_MPI(MPI_Test(req, &done, st ? st : MPI_STATUS_IGNORE));
      if (done) return true;
      answer_pings();
      if (Clock::now() >= deadline) return false;
      backoff.wait();
    }
  }

  // Answers the pings that have arrived and notes the answers to this rank's own; every wait loop
  // calls it, so a rank that waits in the transport answers at once.
  void answer_pings() {
    if (!dog_ || dog_->closing) return;
    Watchdog& d = *dog_;
    for (;;) {
      int done = 0;
      MPI_Status st;
      PS_CHECK_MPI(MPI_Test(&d.ping_rx, &done, &st));
      if (!done) break;
      d.replies.emplace_back(d.ping_in, MPI_REQUEST_NULL);
      PS_CHECK_MPI(
          MPI_Isend(&d.replies.back().first, 1, MPI_INT64_T, st.MPI_SOURCE, kPongTag, comm_, &d.replies.back().second));
      PS_CHECK_MPI(MPI_Irecv(&d.ping_in, 1, MPI_INT64_T, MPI_ANY_SOURCE, kPingTag, comm_, &d.ping_rx));
    }
    for (;;) {
      int done = 0;
      MPI_Status st;
      PS_CHECK_MPI(MPI_Test(&d.pong_rx, &done, &st));
      if (!done) break;
      d.answered[st.MPI_SOURCE] = std::max(d.answered[st.MPI_SOURCE], d.pong_in);
      PS_CHECK_MPI(MPI_Irecv(&d.pong_in, 1, MPI_INT64_T, MPI_ANY_SOURCE, kPongTag, comm_, &d.pong_rx));
    }
    while (!d.replies.empty()) {
      int done = 0;
      PS_CHECK_MPI(MPI_Test(&d.replies.front().second, &done, MPI_STATUS_IGNORE));
      if (!done) break;
      d.replies.pop_front();
    }
  }

  // Pings every other rank; returns the round number their answers carry.
  int64_t post_pings() {
    Watchdog& d = *dog_;
    ++d.round;
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      int done = 1;
      if (d.ping_tx[r] != MPI_REQUEST_NULL) PS_CHECK_MPI(MPI_Test(&d.ping_tx[r], &done, MPI_STATUS_IGNORE));
      if (!done) continue;  // an earlier ping still waits to be taken: r will not answer this one either
      d.ping_out[r] = d.round;
      PS_CHECK_MPI(MPI_Isend(&d.ping_out[r], 1, MPI_INT64_T, r, kPingTag, comm_, &d.ping_tx[r]));
    }
    return d.round;
  }

  // A wait reached its deadline: pings every other rank and waits until all have answered or the
  // grace is over, while `req` (if any) may still complete: true when it did (nobody is to blame).
  bool ask_peers(MPI_Request* req, MPI_Status* st) {
    post_pings();
    const auto deadline = Clock::now() + std::min(opts_.timeout / 2, kAnswerGraceMax);
    Backoff backoff(kIdleCap);
    for (;;) {
      int done = 0;
      if (req) PS_CHECK_MPI(MPI_Test(req, &done, st ? st : MPI_STATUS_IGNORE));
      if (done) return true;
      answer_pings();
      if (silent_peer(-1) < 0 || Clock::now() >= deadline) return false;
      backoff.wait();
    }
  }

  // The send side of the watchdog (see the top of the file): never waits.
  void watch_sends(int dst) {
    Watchdog& d = *dog_;
    const auto now = Clock::now();
    const bool owed = std::any_of(pending_.begin(), pending_.end(), [&](const PendingSend& p) { return p.dst == dst; });
    if (!owed || (d.probe_round[dst] != 0 && progress_[dst] > d.probe_at[dst])) d.probe_round[dst] = 0;  // it took some
    if (!owed) return;
    if (d.probe_round[dst] == 0) {
      if (now - progress_[dst] > opts_.timeout / 2) {
        d.probe_round[dst] = post_pings();
        d.probe_at[dst] = now;
      }
      return;
    }
    if (d.answered[dst] >= d.probe_round[dst]) {  // alive, only slow to take them
      d.probe_round[dst] = 0;
      progress_[dst] = now;
      return;
    }
    PS_CHECK(now - d.probe_at[dst] <= opts_.timeout, PeerLostError,
             "{} has taken none of this rank's messages for {:.1f} s, and it does not answer; it may have died or hung "
             "(raise --comm-timeout if it is just slow)",
             peer(dst), std::chrono::duration<double>(now - progress_[dst]).count());
  }

  // After ask_peers(): a rank that did not answer this round, `first` preferred; -1 if all did.
  int silent_peer(int first) const {
    const Watchdog& d = *dog_;
    if (first >= 0 && d.answered[first] < d.round) return first;
    for (int r = 0; r < size_; ++r)
      if (r != rank_ && d.answered[r] < d.round) return r;
    return -1;
  }

  // Cancels the watchdog's receives and waits for its sends; false if MPI still holds some.
  bool close_watchdog(Clock::time_point deadline) {
    Watchdog& d = *dog_;
    d.closing = true;
    std::vector<MPI_Request*> reqs{&d.ping_rx, &d.pong_rx};
    MPI_Cancel(&d.ping_rx);
    MPI_Cancel(&d.pong_rx);
    for (MPI_Request& r : d.ping_tx) reqs.push_back(&r);
    for (auto& reply : d.replies) reqs.push_back(&reply.second);
    bool clean = true;
    for (MPI_Request* r : reqs) {
      if (*r != MPI_REQUEST_NULL && !wait_one(r, nullptr, deadline)) clean = false;
    }
    return clean;
  }

  // Waits for all requests; the deadline moves on whenever one completes, so a big message only
  // has to keep moving, not to finish within one timeout.
  bool wait_all(std::vector<MPI_Request>& reqs) {
    std::vector<int> idx(reqs.size());
    auto deadline = Clock::now() + opts_.timeout;
    Backoff backoff(kMovingCap);
    for (;;) {
      int n = 0;
      PS_CHECK_MPI(MPI_Testsome(static_cast<int>(reqs.size()), reqs.data(), &n, idx.data(), MPI_STATUSES_IGNORE));
      if (n == MPI_UNDEFINED) return true;  // no active request left
      if (n > 0) {
        deadline = Clock::now() + opts_.timeout;
        backoff.reset();
        continue;
      }
      answer_pings();
      if (Clock::now() >= deadline) return false;
      backoff.wait();
    }
  }

  // Drops the sends MPI has finished with (and their tensors).
  void reap() {
    const auto now = Clock::now();
    auto done = [&](PendingSend& p) {
      int flag = 0;
      PS_CHECK_MPI(MPI_Testall(static_cast<int>(p.reqs.size()), p.reqs.data(), &flag, MPI_STATUSES_IGNORE));
      if (flag) progress_[p.dst] = now;
      return flag != 0;
    };
    pending_.erase(std::remove_if(pending_.begin(), pending_.end(), done), pending_.end());
  }

  // Waits for every pending send; the deadline moves on while sends keep completing.
  bool drain_sends(Clock::time_point deadline) {
    Backoff backoff(kMovingCap);
    const auto step = deadline - Clock::now();
    while (!pending_.empty()) {
      const size_t before = pending_.size();
      reap();
      if (pending_.empty()) return true;
      if (pending_.size() < before) {
        deadline = Clock::now() + step;
        backoff.reset();
        continue;
      }
      answer_pings();
      if (Clock::now() >= deadline) return false;
      backoff.wait();
    }
    return true;
  }

  TransportOptions opts_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  std::vector<std::string> hosts_;
  // MPI holds pointers into each entry's header and tensors: those are heap blocks that stay put
  // when an entry moves; push_back onto a deque also leaves existing entries where they are.
  std::deque<PendingSend> pending_;
  std::vector<PostedHeader> posted_;  // by source rank
  std::vector<bool> out_of_step_;     // by source rank
  MPI_Request barrier_req_ = MPI_REQUEST_NULL;
  std::unique_ptr<Watchdog> dog_;
  std::vector<Clock::time_point> progress_;  // by peer: its last completed send, or when one became owed
};

}  // namespace

std::unique_ptr<Transport> make_mpi_transport(const TransportOptions& opts) {
  return std::make_unique<MpiTransport>(opts);
}

}  // namespace pipeswap::comm
