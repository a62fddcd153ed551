#include "pipeswap/pipeline/collective.h"

#include <ATen/Parallel.h>

#include <cstring>
#include <exception>
#include <future>

#include "pipeswap/core/error.h"

namespace pipeswap::pipeline {
namespace {

using comm::Message;
using comm::MessageKind;

torch::Tensor bytes_of(const std::string& s) {
  torch::Tensor t = torch::empty({static_cast<int64_t>(s.size())}, torch::kUInt8);
  if (!s.empty()) std::memcpy(t.data_ptr(), s.data(), s.size());
  return t;
}

torch::Tensor ints_of(const std::vector<int64_t>& v) {
  torch::Tensor t = torch::empty({static_cast<int64_t>(v.size())}, torch::kInt64);
  if (!v.empty()) std::memcpy(t.data_ptr(), v.data(), v.size() * sizeof(int64_t));
  return t;
}

// Receives from `src` and checks that it is a control message of one-dimensional tensors of `types`:
// otherwise the ranks are out of step (one of them is in another phase of the job).
std::vector<torch::Tensor> expect_control(comm::Transport& t, int src, const std::vector<c10::ScalarType>& types) {
  Message m = t.recv(src);
  PS_CHECK(m.kind == MessageKind::kControl && m.tensors.size() == types.size(), CommError,
           "allgather: rank {} sent a message of kind {} with {} tensor(s) where a control message with {} was "
           "expected (ranks are out of step: are all running the same build and arguments?)",
           src, static_cast<int>(m.kind), m.tensors.size(), types.size());
  for (size_t i = 0; i < types.size(); ++i) {
    const torch::Tensor& x = m.tensors[i];
    PS_CHECK(x.dim() == 1 && x.scalar_type() == types[i], CommError,
             "allgather: rank {} sent a control tensor of type {} and {} dimension(s) where {} was expected", src,
             c10::toString(x.scalar_type()), x.dim(), c10::toString(types[i]));
  }
  return std::move(m.tensors);
}

// Rank 0: every rank's tensor in rank order (its own first). The others send theirs and get {}.
std::vector<torch::Tensor> gather_tensors(comm::Transport& t, torch::Tensor mine) {
  if (t.rank() != 0) {
    t.send(0, Message{MessageKind::kControl, 0, 0, {std::move(mine)}});
    return {};
  }
  std::vector<torch::Tensor> out{std::move(mine)};
  for (int r = 1; r < t.world_size(); ++r) out.push_back(expect_control(t, r, {out[0].scalar_type()}).at(0));
  return out;
}

// Rank 0 sends `tensors` to every other rank, which receives them (checked against `types`).
std::vector<torch::Tensor> from_rank0(comm::Transport& t, std::vector<torch::Tensor> tensors,
                                      const std::vector<c10::ScalarType>& types) {
  if (t.rank() != 0) return expect_control(t, 0, types);
  for (int r = 1; r < t.world_size(); ++r) t.send(r, Message{MessageKind::kControl, 0, 0, tensors});
  return tensors;
}

std::vector<int64_t> ints_in(const torch::Tensor& x) {
  const auto* p = x.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + x.numel());
}

std::string string_in(const torch::Tensor& b, int64_t offset, int64_t length) {
  return length == 0 ? std::string()
                     : std::string(static_cast<const char*>(b.data_ptr()) + offset, static_cast<size_t>(length));
}

}  // namespace

std::vector<std::vector<int64_t>> allgather(comm::Transport& t, const std::vector<int64_t>& mine) {
  const int n = t.world_size();
  if (n == 1) return {mine};
  // Rank 0 collects every rank's values, then sends everyone the whole table as one tensor.
  torch::Tensor table;
  if (t.rank() == 0) {
    const std::vector<torch::Tensor> all = gather_tensors(t, ints_of(mine));
    for (int r = 1; r < n; ++r)
      PS_CHECK(all[r].numel() == all[0].numel(), CommError,
               "allgather: rank {} sent {} value(s) where rank 0 has {} (are all ranks running the same build?)", r,
               all[r].numel(), all[0].numel());
    table = torch::cat(all);
  } else {
    gather_tensors(t, ints_of(mine));
  }
  table = from_rank0(t, {table}, {torch::kInt64}).at(0);
  PS_CHECK(table.numel() % n == 0, CommError, "allgather: rank 0 sent {} values for a world of {}", table.numel(), n);
  const int64_t k = table.numel() / n;
  std::vector<std::vector<int64_t>> out;
  for (int r = 0; r < n; ++r) out.push_back(ints_in(table.narrow(0, r * k, k).contiguous()));
  return out;
}

std::vector<int64_t> broadcast(comm::Transport& t, const std::vector<int64_t>& mine) {
  if (t.world_size() == 1) return mine;
  return ints_in(from_rank0(t, {ints_of(mine)}, {torch::kInt64}).at(0));
}

std::vector<std::string> allgather_strings(comm::Transport& t, const std::string& mine) {
  const int n = t.world_size();
  if (n == 1) return {mine};
  // Rank 0 collects one string from every rank in rank order, then sends everyone the whole table
  // as two tensors (lengths, concatenated bytes) so the message size does not grow with the world.
  std::vector<torch::Tensor> table(2);
  std::vector<std::string> out;
  if (t.rank() == 0) {
    out = gather_strings(t, mine);
    std::vector<int64_t> lengths;
    std::string joined;
    for (const std::string& s : out) {
      lengths.push_back(static_cast<int64_t>(s.size()));
      joined += s;
    }
    table = {ints_of(lengths), bytes_of(joined)};
  } else {
    gather_strings(t, mine);
  }
  table = from_rank0(t, std::move(table), {torch::kInt64, torch::kUInt8});
  if (t.rank() == 0) return out;
  const torch::Tensor& lengths = table[0];
  const torch::Tensor& bytes = table[1];
  PS_CHECK(lengths.numel() == n, CommError, "allgather: rank 0 sent {} string lengths for a world of {}",
           lengths.numel(), n);
  const auto* len = lengths.data_ptr<int64_t>();
  int64_t off = 0;
  for (int r = 0; r < n; ++r) {
    PS_CHECK(len[r] >= 0 && off + len[r] <= bytes.numel(), CommError,
             "allgather: rank 0 sent string lengths that do not fit its {} bytes", bytes.numel());
    out.push_back(string_in(bytes, off, len[r]));
    off += len[r];
  }
  return out;
}

std::vector<std::string> gather_strings(comm::Transport& t, const std::string& mine) {
  if (t.world_size() == 1) return {mine};
  std::vector<std::string> out;
  for (const torch::Tensor& b : gather_tensors(t, bytes_of(mine))) out.push_back(string_in(b, 0, b.numel()));
  return out;
}

void rank0_alone(comm::Transport& t, const std::string& what, const std::function<void()>& work,
                 std::chrono::milliseconds interval) {
  enum : int64_t { kBusy = 0, kDone = 1, kFailed = 2 };
  if (t.world_size() == 1) {
    work();
    return;
  }
  if (t.rank() != 0) {
    for (;;) {
      const int64_t state = ints_in(expect_control(t, 0, {torch::kInt64}).at(0)).at(0);
      if (state == kDone) return;
      PS_CHECK(state == kBusy, CommError, "rank 0 failed while {} (see its error)", what);
    }
  }
  const int threads = at::get_num_threads();
  std::future<void> done = std::async(std::launch::async, [&] {
    at::set_num_threads(threads);  // OpenMP's thread count is per calling thread
    work();
  });
  auto tell = [&](int64_t state) {
    for (int r = 1; r < t.world_size(); ++r) t.send(r, Message{MessageKind::kControl, 0, 0, {ints_of({state})}});
  };
  while (done.wait_for(interval) != std::future_status::ready) tell(kBusy);
  try {
    done.get();
  } catch (...) {
    tell(kFailed);
    throw;
  }
  tell(kDone);
}

}  // namespace pipeswap::pipeline
