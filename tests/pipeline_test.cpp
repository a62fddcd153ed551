// Device chain parsing and its errors, block partition properties, plan arithmetic.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <numeric>
#include <random>

#include "pipeswap/core/error.h"
#include "pipeswap/pipeline/device_chain.h"
#include "pipeswap/pipeline/forward_job.h"
#include "pipeswap/pipeline/plan.h"
#include "pipeswap/offload/residency.h"

#include <nlohmann/json.hpp>

using namespace pipeswap;
using namespace pipeswap::pipeline;
using ::testing::HasSubstr;

namespace {

std::string chain_error(const std::string& text) {
  try {
    parse_device_chain(text);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

TEST(DeviceChain, ParsesWeightedEntries) {
  auto c = parse_device_chain("cuda:0=60, cuda:1=40");
  ASSERT_EQ(c.entries.size(), 2u);
  EXPECT_EQ(c.entries[0].device.str(), "cuda:0");
  EXPECT_EQ(c.entries[1].device.index, 1);
  EXPECT_DOUBLE_EQ(c.entries[0].weight, 60);
  EXPECT_DOUBLE_EQ(c.entries[1].weight, 40);
  EXPECT_EQ(c.str(), "cuda:0=60,cuda:1=40");

  auto d = parse_device_chain("cpu=3,cpu=1,cpu,cuda");
  ASSERT_EQ(d.entries.size(), 4u);
  EXPECT_DOUBLE_EQ(d.entries[2].weight, 1.0);  // no weight: 1
  EXPECT_TRUE(d.entries[3].device.is_cuda());
  EXPECT_EQ(d.entries[3].device.index, -1);  // the rank's local GPU
  EXPECT_TRUE(parse_device_chain("auto").automatic);
  EXPECT_DOUBLE_EQ(parse_device_chain("cpu=0.5,cpu=1e1").entries[1].weight, 10);
}

TEST(DeviceChain, EveryErrorNamesTheProblemAndTheFix) {
  EXPECT_THAT(chain_error("tpu:0=1"), HasSubstr("Invalid device: tpu:0"));
  EXPECT_THAT(chain_error("cuda:x=1"), HasSubstr("Invalid device: cuda:x"));
  EXPECT_THAT(chain_error("cuda:=1"), HasSubstr("Invalid device: cuda:"));
  EXPECT_THAT(chain_error("cpu=1,,cpu=1"), HasSubstr("Invalid device: <empty>"));
  EXPECT_THAT(chain_error("cpu=0,cpu=0"), HasSubstr("Total percentage is zero or negative"));
  EXPECT_THAT(chain_error(""), HasSubstr("Model is None or device_chain is empty"));
  EXPECT_THAT(chain_error("   "), HasSubstr("Model is None or device_chain is empty"));
  EXPECT_THAT(chain_error("cpu=-1,cpu=2"), HasSubstr("cannot be negative"));
  EXPECT_THAT(chain_error("cpu=nan"), HasSubstr("finite"));
  EXPECT_THAT(chain_error("cpu=inf"), HasSubstr("finite"));
  EXPECT_THAT(chain_error("cpu=abc"), HasSubstr("Invalid weight 'abc'"));
  EXPECT_THAT(chain_error("cpu=12x"), HasSubstr("Invalid weight '12x'"));
  EXPECT_THAT(chain_error("cpu="), HasSubstr("Invalid weight ''"));
  // Each message says how to fix it.
  for (const char* bad : {"tpu=1", "cpu=0", "", "cpu=-1", "cpu=abc"}) {
    const std::string msg = chain_error(bad);
    EXPECT_TRUE(msg.find("e.g.") != std::string::npos || msg.find("use ") != std::string::npos) << msg;
  }
}

TEST(Partition, MoreRanksThanBlocksIsAnError) {
  try {
    partition_blocks(3, {1, 1, 1, 1});
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("only 3 blocks"));
    EXPECT_THAT(e.what(), HasSubstr("at most 3 ranks"));
  }
}

TEST(Partition, KnownSplits) {
  EXPECT_EQ(partition_blocks(40, {60, 40}), (std::vector<int>{24, 16}));
  EXPECT_EQ(partition_blocks(12, {3, 1}), (std::vector<int>{9, 3}));
  EXPECT_EQ(partition_blocks(10, {1, 1, 1}), (std::vector<int>{4, 3, 3}));  // tie to the earlier entry
  EXPECT_EQ(partition_blocks(4, {1, 1000, 1}), (std::vector<int>{1, 2, 1}));
  EXPECT_EQ(partition_blocks(5, {0, 1}), (std::vector<int>{1, 4}));  // zero weight still gets one block
}

// Property test over random weights and block counts: complete, at least one each, and within one
// block of the proportional share whenever every share is at least one block.
TEST(Partition, PropertiesOverRandomChains) {
  std::mt19937 rng(12345);
  for (int trial = 0; trial < 20000; ++trial) {
    const int blocks = 1 + static_cast<int>(rng() % 96);
    const int p = 1 + static_cast<int>(rng() % std::min(blocks, 9));
    std::vector<double> w(p);
    for (auto& x : w) x = (rng() % 5 == 0) ? static_cast<double>(rng() % 3) : std::uniform_real_distribution<>(0, 100)(rng);
    if (std::accumulate(w.begin(), w.end(), 0.0) <= 0) w[0] = 1;
    const auto counts = partition_blocks(blocks, w);
    ASSERT_EQ(static_cast<int>(counts.size()), p);
    EXPECT_EQ(std::accumulate(counts.begin(), counts.end(), 0), blocks);
    const double total = std::accumulate(w.begin(), w.end(), 0.0);
    bool all_at_least_one = true;
    for (int i = 0; i < p; ++i) {
      ASSERT_GE(counts[i], 1) << "trial " << trial;
      all_at_least_one = all_at_least_one && blocks * w[i] / total >= 1.0;
    }
    if (all_at_least_one) {
      for (int i = 0; i < p; ++i) {
        EXPECT_LT(std::abs(counts[i] - blocks * w[i] / total), 1.0 + 1e-9)
            << "trial " << trial << " rank " << i << " of " << p << " with " << blocks << " blocks";
      }
    }
    // Deterministic: every rank computes the same answer.
    ASSERT_EQ(partition_blocks(blocks, w), counts);
  }
}

TEST(MicroBatches, SizesDifferByAtMostOne) {
  EXPECT_EQ(micro_batch_sizes(8, 3), (std::vector<int64_t>{3, 3, 2}));
  EXPECT_EQ(micro_batch_sizes(4, 4), (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_THROW(micro_batch_sizes(2, 3), ConfigError);
  EXPECT_THROW(micro_batch_sizes(2, 0), ConfigError);
}

// A model of n identical blocks: two phases of one [4, 4] tensor each, a [10, 4] embedding and a
// [10, 4] head; enough for plan arithmetic.
class FakeArch : public models::Architecture {
 public:
  explicit FakeArch(int n, bool tied) : n_(n), tied_(tied) {}
  std::string family() const override { return "fake"; }
  int num_blocks() const override { return n_; }
  int64_t hidden_size() const override { return 4; }
  int64_t vocab_size() const override { return 10; }
  std::vector<std::string> phase_names() const override { return {"a", "b"}; }
  std::vector<models::TensorRef> phase_tensors(int block, int phase) const override {
    return {{"w", "blocks." + std::to_string(block) + "." + std::to_string(phase), {4, 4}}};
  }
  std::vector<models::PartSpec> prologue_parts() const override { return {{"embed", {{"w", "embed", {10, 4}}}}}; }
  std::vector<models::PartSpec> epilogue_parts() const override {
    return {{"head", {{"w", tied_ ? "embed" : "head", {10, 4}}}}};
  }
  models::Activation prologue(const models::WeightView&, const models::Activation&,
                              const torch::TensorOptions&) const override {
    return {};
  }
  void phase_forward(int, int, const models::WeightView&, models::Activation&) const override {}
  torch::Tensor epilogue(const models::WeightView&, const models::Activation&) const override { return {}; }
  int64_t activation_bytes(int64_t b, int64_t s, c10::ScalarType t) const override {
    return b * s * 4 * static_cast<int64_t>(c10::elementSize(t));
  }

 private:
  int n_;
  bool tied_;
};

PlanInputs inputs_for(const std::string& chain) {
  PlanInputs in;
  in.model_dir = "fake";
  in.chain = parse_device_chain(chain).entries;
  return in;
}

// Issue 16's cost model: transfer-bound ranks share fills; compute-bound ones with several stages keep
// the per-micro-batch order that pipelines; one micro-batch has nothing to share; the flag wins.
TEST(SwapOrder, TheCostModelPicks) {
  using offload::SwapOrder;
  struct Case {
    double compute, transfer;
    int m, stages;
    SwapOrder requested;
    bool shared;
  };
  const Case cases[] = {
      {0.1, 1.0, 2, 1, SwapOrder::kAuto, true},            // one stage, transfer-bound: 1.0 s against 2.0
      {1.0, 0.1, 2, 1, SwapOrder::kAuto, false},           // one stage, compute-bound: a tie, keep per micro-batch
      {0.1, 1.0, 2, 2, SwapOrder::kAuto, true},            // two stages, transfer-bound: 2.0 against 3.0
      {1.0, 0.5, 2, 2, SwapOrder::kAuto, false},           // two stages, compute-bound: 4.0 against 3.0
      {0.2, 1.0, 4, 2, SwapOrder::kAuto, true},            // the CFG pair of two samples, transfer-bound
      {0.5, 1.0, 4, 3, SwapOrder::kAuto, false},           // three stages, balanced: 6.0 against 6.0
      {0.1, 1.0, 1, 1, SwapOrder::kAuto, false},           // nothing to share
      {1.0, 0.1, 2, 2, SwapOrder::kShared, true},          // asked for
      {0.1, 1.0, 2, 1, SwapOrder::kPerMicroBatch, false},  // asked for
      {0.1, 1.0, 1, 1, SwapOrder::kShared, false},         // one micro-batch: the same thing
  };
  for (const Case& c : cases) {
    const SwapOrderChoice got = choose_swap_order(c.compute, c.transfer, c.m, c.stages, c.requested);
    EXPECT_EQ(got.shared, c.shared) << c.compute << " " << c.transfer << " m " << c.m << " p " << c.stages;
    EXPECT_DOUBLE_EQ(got.per_micro_batch_seconds, (c.m + c.stages - 1) * std::max(c.compute, c.transfer));
    EXPECT_DOUBLE_EQ(got.shared_seconds, c.stages * std::max(c.m * c.compute, c.transfer));
  }
  EXPECT_EQ(offload::parse_swap_order("per-micro-batch"), SwapOrder::kPerMicroBatch);
  EXPECT_STREQ(offload::to_string(SwapOrder::kShared), "shared");
}

// Generation's decode estimate (plan's tokens/s) on a table of stage costs: one stage is bound by its slowest
// resource; swapped weights refill once per micro-batch, or once per step with shared fills; several stages with
// one micro-batch wait for its round trip (pipeline latency) until enough micro-batches keep them busy.
TEST(Generation, DecodeEstimateTable) {
  struct Case {
    std::vector<DecodeStage> stages;
    int64_t batch;
    int m;
    bool shared;
    double step;
    const char* bound;
    int bound_rank;
  };
  const Case cases[] = {
      {{{0, 0.001, 0.004, 0}}, 8, 1, false, 0.004, "memory bandwidth", 0},     // resident, small batch
      {{{0, 0.010, 0.004, 0}}, 64, 1, false, 0.010, "compute", 0},             // resident, large batch
      {{{0, 0.001, 0.004, 0.25}}, 1, 1, false, 0.25, "swap transfers", 0},     // every layer swapped, batch 1
      {{{0, 0.010, 0.004, 0.25}}, 64, 1, false, 0.25, "swap transfers", 0},    // ... batch 64: the same step
      {{{0, 0.300, 0.004, 0.25}}, 256, 1, false, 0.30, "compute", 0},          // ... until compute-bound
      {{{0, 0.010, 0.004, 0.25}}, 64, 4, true, 0.25, "swap transfers", 0},     // shared: one fill for 4 micro-batches
      {{{0, 0.010, 0.004, 0.25}}, 64, 4, false, 1.0, "swap transfers", 0},     // cycling: a fill per micro-batch
      {{{0, 0.080, 0.004, 0.25}}, 64, 4, true, 0.32, "compute", 0},            // shared, 4 x 0.08 over the fill
      {{{0, 0.002, 0.004, 0}, {1, 0.001, 0.003, 0}}, 8, 1, false, 0.007, "pipeline latency", -1},
      {{{0, 0.002, 0.004, 0}, {1, 0.001, 0.003, 0}}, 8, 2, false, 0.008, "memory bandwidth", 0},
      {{{0, 0.002, 0.004, 0.1}, {1, 0.001, 0.003, 0.05}}, 16, 2, true, 0.15, "swap transfers", 0},
      {{{0, 0.002, 0.004, 0.01}, {1, 0.001, 0.003, 0.05}}, 16, 2, true, 0.06, "swap transfers", 1},
      {{{0, 0.002, 0.004, 0}}, 8, 1, true, 0.004, "memory bandwidth", 0},      // shared with one micro-batch: cycling
  };
  for (const Case& c : cases) {
    const GenerationEstimate g = estimate_decode(c.stages, c.batch, c.m, c.shared);
    SCOPED_TRACE("batch " + std::to_string(c.batch) + " m " + std::to_string(c.m) + (c.shared ? " shared" : ""));
    EXPECT_TRUE(g.known());
    EXPECT_NEAR(g.step_seconds, c.step, 1e-12);
    EXPECT_NEAR(g.tokens_per_second, static_cast<double>(c.batch) / c.step, 1e-6);
    EXPECT_EQ(g.bound, c.bound);
    EXPECT_EQ(g.bound_rank, c.bound_rank);
  }
  EXPECT_FALSE(estimate_decode({}, 8, 1, false).known());
  EXPECT_FALSE(estimate_decode({{0, 1, 1, 0}}, 0, 1, false).known());
}

// A Llama-shaped architecture for the plan's generation figures: 2 phases of dim x dim weights per block, K/V and
// FLOPs as the Llama formulas give them for one head of `dim`.
class LlmArch : public FakeArch {
 public:
  LlmArch(int n, int64_t dim) : FakeArch(n, false), dim_(dim) {}
  std::vector<models::TensorRef> phase_tensors(int block, int phase) const override {
    return {{"w", "blocks." + std::to_string(block) + "." + std::to_string(phase), {dim_, dim_}}};
  }
  double block_flops(int64_t batch, int64_t seq) const override {
    return 2.0 * static_cast<double>(batch * seq) * 2 * static_cast<double>(dim_ * dim_);
  }
  double decode_block_flops(int64_t rows, int64_t context) const override {
    return 2.0 * static_cast<double>(rows) * 2 * static_cast<double>(dim_ * dim_) +
           4.0 * static_cast<double>(rows * context * dim_);
  }
  int64_t kv_cache_bytes(int64_t blocks, int64_t batch, int64_t seq, c10::ScalarType t) const override {
    return 2 * blocks * batch * seq * dim_ * static_cast<int64_t>(c10::elementSize(t));
  }

 private:
  int64_t dim_;
};

// plan's figures from the ranks' plans: the stage costs follow the stated rates (GPU: 4e14 FLOP/s in bf16, 3e12
// bytes/s of HBM, 5e10 over the link), decode throughput grows with the batch while the weights' reads (or fills)
// bound it and stops growing once compute does, and the text and JSON name them.
TEST(Generation, PlanPredictsTokensPerSecond) {
  LlmArch arch(8, 4096);
  auto plan_for = [&](const std::string& chain, int64_t batch, int swap, int m) {
    PlanInputs in = inputs_for(chain);
    in.dtype = c10::ScalarType::BFloat16;
    in.kv_batch = batch;
    in.kv_seq = 32;  // a short context: the weights, not the K/V reads, decide at large batches
    in.batch = 1;
    in.seq = 16;
    in.micro_batches = m;
    in.offload.blocks_to_swap = swap;
    return make_plan(arch, in);
  };
  const Plan resident = plan_for("cuda:0", 8, 0, 1);
  ASSERT_TRUE(resident.generation.known());
  const GenerationEstimate& g = resident.generation;
  ASSERT_EQ(g.stages.size(), 1u);
  EXPECT_EQ(g.context, 16);
  EXPECT_NEAR(g.stages[0].memory,
              static_cast<double>(resident.ranks[0].weight_bytes +
                                  arch.kv_cache_bytes(8, 8, 16, c10::ScalarType::BFloat16)) / 3e12,
              1e-12);
  EXPECT_NEAR(g.stages[0].compute, 8 * arch.decode_block_flops(8, 16) / 4e14, 1e-12);
  EXPECT_EQ(g.stages[0].transfer, 0);
  EXPECT_EQ(g.bound, "memory bandwidth");
  EXPECT_GT(g.prefill_tokens_per_second, 0);
  EXPECT_EQ(g.prompt_tokens, 16);

  // Every block swapped: transfer-bound, so 8x the batch is about 8x the tokens/s, until compute takes over.
  double previous = 0;
  std::string last_bound;
  for (int64_t batch : {1, 8, 64, 512, 16384}) {
    const Plan p = plan_for("cuda:0", batch, 8, 1);
    SCOPED_TRACE("batch " + std::to_string(batch));
    ASSERT_TRUE(p.generation.known());
    EXPECT_GT(p.generation.stages[0].transfer, 0);
    EXPECT_GE(p.generation.tokens_per_second, previous);
    if (batch <= 512) {
      EXPECT_EQ(p.generation.bound, "swap transfers");
      EXPECT_NEAR(p.generation.step_seconds, p.generation.stages[0].transfer, 1e-12);
    }
    previous = p.generation.tokens_per_second;
    last_bound = p.generation.bound;
  }
  EXPECT_EQ(last_bound, "compute");
  // Two GPUs, one micro-batch: latency; two micro-batches fill the pipeline.
  EXPECT_EQ(plan_for("cuda:0,cuda:1", 8, 0, 1).generation.bound, "pipeline latency");
  const Plan two = plan_for("cuda:0,cuda:1", 8, 0, 2);
  EXPECT_EQ(two.generation.bound, "memory bandwidth");
  EXPECT_THAT(two.to_text(), HasSubstr("tokens/s, bound by memory bandwidth (rank"));
  const auto j = two.to_json();
  EXPECT_EQ(j["generation"]["batch"], 8);
  EXPECT_GT(j["generation"]["predicted_decode_tokens_per_second"].get<double>(), 0);
  // No cache, no figures.
  EXPECT_FALSE(make_plan(arch, inputs_for("cuda:0")).generation.known());
  EXPECT_FALSE(make_plan(arch, inputs_for("cuda:0")).to_json().contains("generation"));
}

TEST(Plan, RangesComponentsAndBytes) {
  FakeArch arch(10, /*tied=*/false);
  Plan plan = make_plan(arch, inputs_for("cpu=3,cpu=1,cpu=1"));
  ASSERT_EQ(plan.ranks.size(), 3u);
  EXPECT_EQ(plan.ranks[0].first_block, 0);
  EXPECT_EQ(plan.ranks[0].end_block, 6);
  EXPECT_EQ(plan.ranks[1].first_block, 6);
  EXPECT_EQ(plan.ranks[2].end_block, 10);
  EXPECT_TRUE(plan.ranks[0].prologue);
  EXPECT_FALSE(plan.ranks[0].epilogue);
  EXPECT_TRUE(plan.ranks[2].epilogue);
  // 6 blocks x 2 phases x 16 floats + embedding 40 floats.
  EXPECT_EQ(plan.ranks[0].weight_bytes, (6 * 2 * 16 + 40) * 4);
  EXPECT_EQ(plan.ranks[2].weight_bytes, (2 * 2 * 16 + 40) * 4);
  EXPECT_EQ(plan.stages(), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(plan.prev_stage(0), -1);
  EXPECT_EQ(plan.next_stage(1), 2);
  auto j = plan.to_json();
  EXPECT_EQ(j["ranks"][1]["blocks"][0], 6);
  EXPECT_EQ(j["ranks"][1]["device"], "cpu");
  EXPECT_THAT(plan.to_text(), HasSubstr("8..9 (2)"));
}

TEST(Plan, TiedEmbeddingsCountOnceOnOneRank) {
  FakeArch arch(4, /*tied=*/true);
  Plan plan = make_plan(arch, inputs_for("cpu"));
  EXPECT_EQ(plan.ranks[0].weight_bytes, (4 * 2 * 16 + 40) * 4);
  Plan two = make_plan(arch, inputs_for("cpu,cpu"));
  EXPECT_EQ(two.ranks[1].weight_bytes, (2 * 2 * 16 + 40) * 4);  // the last rank reads the tied embedding too
}

TEST(Plan, WorkloadSplitFalsePutsEverythingOnTheFirstEntry) {
  FakeArch arch(4, false);
  PlanInputs in = inputs_for("cpu=1,cpu=1");
  in.workload_split = false;
  Plan plan = make_plan(arch, in);
  EXPECT_EQ(plan.ranks[0].num_blocks(), 4);
  EXPECT_TRUE(plan.ranks[0].prologue && plan.ranks[0].epilogue);
  EXPECT_TRUE(plan.ranks[1].idle());
  EXPECT_EQ(plan.stages(), std::vector<int>{0});
}

// Issue 21: the arrangements of a chain for a job with guidance, G guidance groups x p stages, and the
// plan's pick. A Wan2.1-14B-sized DiT in bf16 on GPUs (no GPU needed: the plan is arithmetic).
std::unique_ptr<models::Architecture> wan14b() {
  return models::make_architecture(nlohmann::json{{"_class_name", "WanModel"}, {"model_type", "t2v"},
                                                  {"dim", 5120},               {"ffn_dim", 13824},
                                                  {"num_heads", 40},           {"num_layers", 40},
                                                  {"in_dim", 16},              {"out_dim", 16},
                                                  {"text_dim", 4096},          {"freq_dim", 256},
                                                  {"text_len", 512}});
}

TEST(CfgParallel, GroupsSplitTheChainAndEachHoldsEveryBlock) {
  FakeArch arch(6, false);
  PlanInputs in = inputs_for("cpu=1,cpu=2,cpu=1,cpu=2");
  in.guidance_groups = 2;
  Plan plan = make_plan(arch, in);
  ASSERT_EQ(plan.ranks.size(), 4u);
  EXPECT_EQ(plan.group_size(), 2);
  EXPECT_EQ(plan.stages(0), (std::vector<int>{0, 1}));
  EXPECT_EQ(plan.stages(1), (std::vector<int>{2, 3}));
  EXPECT_EQ(plan.leader(1), 2);
  EXPECT_EQ(plan.group_of(3), 1);
  EXPECT_EQ(plan.prev_stage(2), -1);
  EXPECT_EQ(plan.next_stage(1), -1);
  EXPECT_EQ(plan.next_stage(2), 3);
  for (int g = 0; g < 2; ++g) {
    const RankPlan& a = plan.ranks[static_cast<size_t>(2 * g)];
    const RankPlan& b = plan.ranks[static_cast<size_t>(2 * g + 1)];
    EXPECT_EQ(a.group, g);
    EXPECT_EQ(a.first_block, 0);
    EXPECT_EQ(a.end_block, 2);
    EXPECT_EQ(b.end_block, 6);
    EXPECT_TRUE(a.prologue && !a.epilogue);
    EXPECT_TRUE(b.epilogue && !b.prologue);
  }
  EXPECT_THAT(plan.to_text(), HasSubstr("CFG-parallel: 2 guidance groups x 2 rank(s)"));
  EXPECT_EQ(plan.to_json()["ranks"][3]["group"], 1);
  in.chain = parse_device_chain("cpu,cpu,cpu").entries;
  EXPECT_THROW(make_plan(arch, in), ConfigError);  // 3 ranks do not split into 2 groups
}

TEST(CfgParallel, ThePlanPicksTheFastestArrangementThatFits) {
  const auto arch = wan14b();
  struct Case {
    std::string what, chain;
    int samples;
    bool guidance;
    int64_t tokens;
    std::string budget;  // per rank, "" for none
    int requested;       // --cfg-parallel (0: auto)
    std::vector<int> candidates;  // guidance groups compared
    int chosen;          // guidance groups
  };
  const Case cases[] = {
      {"one GPU: nothing to arrange", "cuda:0", 1, true, 32760, "", 0, {1}, 1},
      {"no guidance: one branch", "cuda:0,cuda:1", 1, false, 32760, "", 0, {1}, 1},
      {"three GPUs do not split in two", "cuda:0,cuda:1,cuda:2", 1, true, 32760, "", 0, {1}, 1},
      {"one sample on 2 GPUs: both branches at once, 2x against 1.33x", "cuda:0,cuda:1", 1, true, 32760, "", 0,
       {1, 2}, 2},
      {"asked for the pipeline", "cuda:0,cuda:1", 1, true, 32760, "", 1, {1}, 1},
      {"asked for CFG-parallel", "cuda:0,cuda:1", 1, true, 1024, "20GB", 2, {2}, 2},
      {"2 samples on 4 GPUs: 2 groups x 2 stages", "cuda:0,cuda:1,cuda:2,cuda:3", 2, true, 32760, "", 0, {1, 2}, 2},
      {"4 samples on 2 GPUs", "cuda:0,cuda:1", 4, true, 32760, "", 0, {1, 2}, 2},
      {"long video, 20 GB each: the swapping hides behind compute", "cuda:0,cuda:1", 1, true, 32760, "20GB", 0,
       {1, 2}, 2},
      {"short sequence, 20 GB each: every step would fetch 16 blocks", "cuda:0,cuda:1", 1, true, 1024, "20GB", 0,
       {1, 2}, 1},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    PlanInputs in = inputs_for(c.chain);
    in.dtype = c10::ScalarType::BFloat16;
    in.batch = 1;
    in.seq = c.tokens;
    in.micro_batches = c.samples * (c.guidance ? 2 : 1);
    if (!c.budget.empty())
      in.vram_budget.assign(in.chain.size(), std::stoll(c.budget) * 1000000000LL);  // "20GB": decimal, as the flag
    const ArrangementChoice got = choose_arrangement(*arch, in, c.guidance, c.requested);
    std::vector<int> groups;
    for (const Arrangement& a : got.candidates) groups.push_back(a.guidance_groups);
    EXPECT_EQ(groups, c.candidates);
    EXPECT_EQ(got.plan().guidance_groups, c.chosen) << got.to_text();
    EXPECT_GT(got.plan().step_seconds, 0);
    for (const Arrangement& a : got.candidates) {
      EXPECT_EQ(a.plan.micro_batches, in.micro_batches / a.guidance_groups);
      // Each group holds (or swaps) every block over its ranks.
      int blocks = 0;
      for (int r : a.plan.stages(0)) blocks += a.plan.ranks[static_cast<size_t>(r)].num_blocks();
      EXPECT_EQ(blocks, 40);
    }
    // The predictions docs/benchmarks.md quotes ("plan predictions"), one line per case.
    std::cout << "[ cfg-par  ] " << c.what << "\n" << got.to_text();
    if (got.candidates.size() > 1) {
      EXPECT_THAT(got.to_text(), HasSubstr("s/step"));
      EXPECT_EQ(got.to_json().size(), got.candidates.size());
    }
  }
}

TEST(CfgParallel, WhatCannotBeAskedForIsAConfigError) {
  const auto arch = wan14b();
  PlanInputs in = inputs_for("cuda:0,cuda:1,cuda:2");
  in.micro_batches = 2;
  EXPECT_THROW(choose_arrangement(*arch, in, true, 2), ConfigError);  // odd chain
  in.chain = parse_device_chain("cuda:0,cuda:1").entries;
  in.micro_batches = 1;
  EXPECT_THROW(choose_arrangement(*arch, in, false, 2), ConfigError);  // no guidance
  in.micro_batches = 2;
  in.dtype = c10::ScalarType::BFloat16;
  in.batch = 1;
  in.seq = 1024;
  in.vram_budget.assign(2, int64_t{1000000000});  // --vram-budget 1GB
  EXPECT_THROW(choose_arrangement(*arch, in, true, 0), ConfigError);  // fits nowhere
}

}  // namespace
