// Text generation for Llama-family models over the ranks: prefill then decode with a K/V cache per stage (each rank
// keeps the K/V of its own blocks, allocated once for --max-batch sequences of --max-seq-len tokens).
//
// Rank 0 drives: it holds the prompts, samples every next token from the last stage's logits, and sends every other
// rank a control message per micro-batch (its rows: cache slot and position, and tokens per row) before the
// micro-batch's activation, so that the other stages follow a schedule they cannot know in advance (EOS, stop
// strings). A micro-batch either prefills one prompt that found a free cache slot, or decodes one token of up to
// max_batch / micro_batches running sequences. With prefill_chunk, a prompt longer than that is prefilled in
// chunks of that many tokens, one micro-batch each (each chunk attends to the cache the ones before it wrote), and
// between two chunks the sequences ready to decode take a micro-batch, so a long prompt does not stall them. A
// chunk follows the one before it without waiting for it: every rank runs the micro-batches in the order they
// were sent. Up to --micro-batches micro-batches are in flight at once, cycling
// through the stages: a micro-batch's next decode step enters the first stage as soon as rank 0 has its tokens,
// while the others are still in later stages. A finished sequence frees its slot at once and a waiting prompt
// takes it (continuous batching). With one micro-batch (the default) a decode step is one pass of every running
// sequence, so a swapped layer is filled once per step for all of them.
//
// Sampling happens on rank 0 only, with one random stream per prompt (seeded by --seed and the prompt's index), so
// the tokens are the same for every split, swap setting and batch composition.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "pipeswap/comm/transport.h"
#include "pipeswap/models/architecture.h"
#include "pipeswap/offload/block_weights.h"
#include "pipeswap/pipeline/plan.h"

namespace pipeswap::pipeline {

struct SamplingOptions {
  double temperature = 0;         // 0: greedy (argmax)
  int64_t top_k = 0;              // 0: off
  double top_p = 1.0;             // 1: off
  double repetition_penalty = 1;  // 1: off (transformers' RepetitionPenaltyLogitsProcessor over prompt + output)
  uint64_t seed = 0;
};

struct TextJobOptions {
  int64_t max_new_tokens = 32;
  int64_t max_batch = 1;    // sequences whose K/V the caches hold at once
  int64_t max_seq_len = 0;  // tokens per sequence (prompt + generated) the caches hold
  int micro_batches = 1;    // micro-batches in flight at once
  int64_t prefill_chunk = 0;  // prompt tokens per prefill micro-batch (0: the whole prompt in one)
  std::vector<int64_t> eos_ids;   // end a sequence (finish_reason "eos"): generation_config.json's eos_token_id
  std::vector<int64_t> stop_ids;  // end a sequence too (finish_reason "stop_token"): --stop-token's names
  SamplingOptions sampling;
};

struct TextSequence {
  std::vector<int64_t> prompt;
  std::vector<int64_t> generated;
  std::string finish_reason;  // "eos", "stop_token", "length" (max-new-tokens), "max_seq_len", "stop" (the callback)
  double first_token_seconds = 0;
};

struct TextJobResult {
  std::vector<TextSequence> sequences;  // rank 0
  int64_t prefill_tokens = 0, decode_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0, total_seconds = 0;
  int steps = 0;  // micro-batches run
};

// Rank 0: called with each new token of sequence `index`; returns true to stop that sequence (stop strings).
using TokenCallback = std::function<bool(size_t index, int64_t token)>;

// The job on every rank (`prompts` read on rank 0 only; validated there: none empty, each shorter than max_seq_len).
// The caller has allocated the architecture's K/V cache for this rank's blocks.
TextJobResult run_text_job(const Plan& plan, int rank, const models::Architecture& arch, offload::BlockWeights& weights,
                           comm::Transport& transport, const std::vector<std::vector<int64_t>>& prompts,
                           const TextJobOptions& options, torch::Device device, const TokenCallback& on_token);

// The next token from one row's float32 logits [vocab] as transformers' sampling gives it: repetition penalty over
// `seen`, then greedy, or temperature, top-k, top-p and a draw from `rng`'s next uniform number.
int64_t sample_token(const torch::Tensor& logits, const std::vector<int64_t>& seen, const SamplingOptions& s,
                     double uniform);

}  // namespace pipeswap::pipeline
