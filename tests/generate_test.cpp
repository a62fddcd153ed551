// `pipeswap generate` on a tiny Wan2.1 text-to-video repo in the diffusers layout, against diffusers' own
// WanPipeline run on it (tests/reference/make_generate_fixtures.py): token ids identical, prompt embeddings,
// final latents (UniPC and Euler, with and without guidance, one prompt and a batch) and decoded frames within
// float32 tolerances; every split and swap setting gives the single-rank files byte for byte; the on-demand text
// encoder is freed before the DiT loads; bad input fails with a clear error on every rank.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <regex>
#include <string>

#include <nlohmann/json.hpp>

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/safetensors.h"
#include "pipeswap/models/tokenizer.h"
#include "pipeswap/pipeline/generate_job.h"
#include "pipeswap/pipeline/video_output.h"
#include "test_util.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;

namespace {

using namespace pipeswap::test_support;

const char* kPrompt = "A cat walks on the grass, realistic style.";

std::string repo() { return fixture("wan-t2v-pipeline/repo"); }
torch::Tensor expected(const std::string& name) {
  return pipeswap::SafetensorsFile::open(fixture("wan-t2v-pipeline/expected.safetensors"))->read(name);
}
// A case's seed from the fixture's metadata (make_generate_fixtures.py --seed N moves them).
std::string case_seed(const std::string& name) {
  auto file = pipeswap::SafetensorsFile::open(fixture("wan-t2v-pipeline/expected.safetensors"));
  return std::to_string(nlohmann::json::parse(file->metadata().at(name)).at("seed").get<int64_t>());
}
double rel_error(const torch::Tensor& got, const torch::Tensor& want) {
  return (got.to(torch::kFloat64) - want.to(torch::kFloat64)).abs().max().item<double>() /
         want.abs().max().item<double>();
}

class GenerateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/pipeswap-generate-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    pipeswap::set_log_level("off");
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string path(const std::string& name) { return dir_ + "/" + name; }
  // The fixture's single case: one prompt, 9 frames of 48 x 32, its seed (the fixture's noise), then `extra`.
  static std::string single(const std::string& extra) {
    return exe() + " generate --model " + repo() + " --prompt \"" + kPrompt +
           "\" --frames 9 --height 32 --width 48 --seed " + case_seed("single") + " --log-level warn " + extra;
  }
  static torch::Tensor latents(const std::string& file) {
    return pipeswap::SafetensorsFile::open(file)->read("latents");
  }
  // uint8 [F, H, W, 3] from DIR/0000.png ...
  static torch::Tensor png_frames(const std::string& dir, int frames) {
    std::vector<torch::Tensor> f;
    for (int i = 0; i < frames; ++i) f.push_back(pipeswap::pipeline::read_png(fmt::format("{}/{:04d}.png", dir, i)));
    return torch::stack(f);
  }
  static inline std::string dir_;
};

TEST_F(GenerateTest, TokenIdsMatchTheWanPipeline) {
  if (!pipeswap::models::T5Tokenizer::available()) GTEST_SKIP() << "built without SentencePiece";
  auto tok = pipeswap::models::T5Tokenizer::open(repo() + "/tokenizer");
  auto single = tok->tokenize({kPrompt});
  EXPECT_TRUE(torch::equal(single.input_ids, expected("ids_single")));
  EXPECT_TRUE(torch::equal(single.attention_mask, expected("mask_single")));
  auto null = tok->tokenize({""});
  EXPECT_TRUE(torch::equal(null.input_ids, expected("ids_null_single")));
  const auto pairs = pipeswap::pipeline::read_prompts_jsonl(fixture("wan-t2v-pipeline/prompts.jsonl"), "");
  ASSERT_EQ(pairs.size(), 2u);
  std::vector<std::string> prompts, negatives;
  for (const auto& p : pairs) {
    prompts.push_back(p.prompt);
    negatives.push_back(p.negative);
  }
  EXPECT_TRUE(torch::equal(tok->tokenize(prompts).input_ids, expected("ids_batch")));
  EXPECT_TRUE(torch::equal(tok->tokenize(negatives).input_ids, expected("ids_null_batch")));
  EXPECT_TRUE(torch::equal(tok->tokenize(negatives).attention_mask, expected("mask_null_batch")));
}

TEST_F(GenerateTest, EmbeddingsAndNoiseMatchTheWanPipeline) {
  pipeswap::models::PromptTokens cond{expected("ids_batch"), expected("mask_batch"), {}, {}};
  pipeswap::models::PromptTokens uncond{expected("ids_null_batch"), expected("mask_null_batch"), {}, {}};
  auto enc = pipeswap::pipeline::encode_prompts(repo() + "/text_encoder", cond, uncond, {});
  EXPECT_FALSE(enc.kept);
  EXPECT_EQ(enc.fills, 0);
  EXPECT_LT(rel_error(enc.context, expected("embeds_batch")), 1e-5);
  EXPECT_LT(rel_error(enc.context_null, expected("embeds_null_batch")), 1e-5);
  // Rows past each prompt's length are zeros, as WanPipeline pads.
  const int64_t len = expected("mask_batch")[0].sum().item<int64_t>();
  EXPECT_EQ(enc.context[0].narrow(0, len, 512 - len).abs().max().item<double>(), 0.0);
  const auto shape = pipeswap::pipeline::latent_shape(2, 8, {9, 32, 48});
  EXPECT_TRUE(torch::equal(pipeswap::pipeline::initial_noise(shape, std::stoull(case_seed("batch"))), expected("noise_batch")));
}

// The text encoder's placements (issue 18 item 3): resident and swapped (all layers or one, by block or by
// phase, the embedding moved in from the host) give the on-demand embeddings bit for bit; swapped fills one
// slot per swapped unit per encoded batch; resident hands the encoder to the caller to keep.
TEST_F(GenerateTest, TextEncoderPlacementsGiveTheSameEmbeddings) {
  using pipeswap::pipeline::TextEncoderPlacement;
  using pipeswap::pipeline::TextEncoderSettings;
  pipeswap::models::PromptTokens cond{expected("ids_batch"), expected("mask_batch"), {}, {}};
  pipeswap::models::PromptTokens uncond{expected("ids_null_batch"), expected("mask_null_batch"), {}, {}};
  const std::string dir = repo() + "/text_encoder";
  const auto ref = pipeswap::pipeline::encode_prompts(dir, cond, uncond, {});
  TextEncoderSettings resident;
  resident.placement = TextEncoderPlacement::kResident;
  const auto r = pipeswap::pipeline::encode_prompts(dir, cond, uncond, resident);
  EXPECT_TRUE(r.kept);
  EXPECT_TRUE(torch::equal(r.context, ref.context));
  EXPECT_TRUE(torch::equal(r.context_null, ref.context_null));
  struct Case {
    std::optional<int> swap;
    pipeswap::offload::Granularity granularity;
    int64_t fills;  // per encoded batch
  };
  // The tiny encoder has 2 layers of 2 phases (attn, ffn).
  for (const Case& c : {Case{std::nullopt, pipeswap::offload::Granularity::kBlock, 2},
                        Case{1, pipeswap::offload::Granularity::kBlock, 1},
                        Case{std::nullopt, pipeswap::offload::Granularity::kPhase, 4}}) {
    TextEncoderSettings s;
    s.placement = TextEncoderPlacement::kSwapped;
    s.swap.blocks_to_swap = c.swap;
    s.swap.granularity = c.granularity;
    const auto w = pipeswap::pipeline::encode_prompts(dir, cond, uncond, s);
    const std::string what = fmt::format("swap {} granularity {}", c.swap ? std::to_string(*c.swap) : "all",
                                         pipeswap::offload::to_string(c.granularity));
    EXPECT_FALSE(w.kept) << what;
    EXPECT_TRUE(torch::equal(w.context, ref.context)) << what;
    EXPECT_TRUE(torch::equal(w.context_null, ref.context_null)) << what;
    EXPECT_EQ(w.fills, 2 * c.fills) << what;  // the prompts' batch and the negative prompts' batch
  }
  TextEncoderSettings bad;
  bad.placement = TextEncoderPlacement::kSwapped;
  bad.swap.blocks_to_swap = 3;
  EXPECT_THROW(pipeswap::pipeline::encode_prompts(dir, cond, uncond, bad), pipeswap::ConfigError);
  EXPECT_THROW(pipeswap::pipeline::parse_text_encoder_placement("cpu-offload"), pipeswap::ConfigError);
}

// The sampler's update and the decode are the reference's float32 arithmetic in another order: relative 1e-4 on
// the latents, one step of 255 on the frames.
TEST_F(GenerateTest, MatchesWanPipelineEndToEnd) {
  const std::string out = path("single.safetensors");
  Result r = sh(single("--steps 4 --guidance 5 --output " + out));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("4 steps of unipc"));
  EXPECT_LT(rel_error(latents(out), expected("latents_single")), 1e-4);

  // Decoded, with --save-latents: the same latents as the latents-only run, written beside the frames.
  const std::string frames = path("single-frames"), saved = path("single-saved.safetensors");
  r = sh(single("--steps 4 --guidance 5 --output " + frames + "/ --save-latents " + saved));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(torch::equal(latents(saved), latents(out)));
  const torch::Tensor want = (expected("frames_single")[0] * 255).round().to(torch::kInt32);
  const torch::Tensor got = png_frames(frames, 9).to(torch::kInt32);
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_LE((got - want).abs().max().item<int>(), 1);
  EXPECT_LT((got - want).abs().to(torch::kFloat32).mean().item<double>(), 0.05);
}

TEST_F(GenerateTest, EulerAndNoGuidanceMatch) {
  const std::string euler = path("euler.safetensors"), noguide = path("noguide.safetensors");
  Result r = sh(single("--steps 4 --guidance 5 --sampler euler --output " + euler));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_LT(rel_error(latents(euler), expected("latents_euler")), 1e-4);
  r = sh(single("--steps 2 --guidance 1 --output " + noguide));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("1 micro-batches per step"));
  EXPECT_LT(rel_error(latents(noguide), expected("latents_noguide")), 1e-4);
}

TEST_F(GenerateTest, PromptBatchMatches) {
  const std::string out = path("batch-frames");
  Result r = sh(exe() + " generate --model " + repo() + " --prompts " + fixture("wan-t2v-pipeline/prompts.jsonl") +
                " --frames 9 --height 32 --width 48 --seed " + case_seed("batch") + " --steps 3 --guidance 4 --log-level warn --output " +
                out + "/");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("2 sample(s)"));
  for (int i = 0; i < 2; ++i) {
    const torch::Tensor want = (expected("frames_batch")[i] * 255).round().to(torch::kInt32);
    const torch::Tensor got = png_frames(out + "/" + std::to_string(i), 9).to(torch::kInt32);
    EXPECT_LE((got - want).abs().max().item<int>(), 1) << "sample " << i;
  }
}

// Token ids from a file (builds without SentencePiece) give the same latents as the prompt.
TEST_F(GenerateTest, PromptIdsFile) {
  const std::string ids = path("ids.safetensors"), a = path("ids-a.safetensors"), b = path("ids-b.safetensors");
  pipeswap::write_safetensors(ids,
                              {{"input_ids", expected("ids_single")},
                               {"attention_mask", expected("mask_single")},
                               {"negative_input_ids", expected("ids_null_single")},
                               {"negative_attention_mask", expected("mask_null_single")}},
                              {});
  Result r = sh(exe() + " generate --model " + repo() + " --prompt-ids " + ids +
                " --frames 9 --height 32 --width 48 --seed " + case_seed("single") + " --steps 2 --log-level warn --output " + a);
  ASSERT_EQ(r.code, 0) << r.output;
  if (pipeswap::models::T5Tokenizer::available()) {
    r = sh(single("--steps 2 --output " + b));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_TRUE(same_bytes(a, b));
  }
}

// Every split and swap setting writes the single-rank frames byte for byte.
TEST_F(GenerateTest, SplitsAndSwapsGiveTheSingleRankFrames) {
  const std::string base = path("split-base");
  Result r = sh(single("--steps 3 --output " + base + "/"));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::vector<std::string> runs = {
      "mpirun -np 2 " + single("--steps 3 --device-chain cpu=1,cpu=1"),
      "mpirun -np 2 " + single("--steps 3 --device-chain cpu=1,cpu=2 --blocks-to-swap 1 --offload-granularity phase"),
      "mpirun -np 3 " + single("--steps 3 --device-chain cpu=1,cpu=1,cpu=1 --blocks-to-swap 1 --lazy-load"),
      "mpirun -np 2 " + single("--steps 3 --device-chain cpu=1,cpu=1 --blocks-to-swap 2 --swap-order shared"),
      single("--steps 3 --text-encoder swapped"),
      "mpirun -np 2 " + single("--steps 3 --device-chain cpu=1,cpu=1 --text-encoder resident"),
      single("--steps 3 --text-encoder swapped --text-encoder-blocks-to-swap 1 --offload-granularity phase"),
  };
  for (size_t i = 0; i < runs.size(); ++i) {
    const std::string out = path("split-" + std::to_string(i));
    r = sh(runs[i] + " --output " + out + "/", 90);
    ASSERT_EQ(r.code, 0) << runs[i] << "\n" << r.output;
    for (int f = 0; f < 9; ++f) {
      const std::string name = fmt::format("/{:04d}.png", f);
      EXPECT_TRUE(same_bytes(base + name, out + name)) << runs[i];
    }
  }
}

// The on-demand text encoder: its weights are freed before the DiT loads (the summary's host figures).
TEST_F(GenerateTest, TextEncoderFreedBeforeTheDiT) {
  Result r = sh(single("--steps 1 --log-level info --output " + path("mem.safetensors")));
  ASSERT_EQ(r.code, 0) << r.output;
  std::smatch m;
  const std::regex encode(R"(phase encode\s+[0-9.]+ s\s+host tensors peak ([0-9.]+) (\w+) after ([0-9.]+) (\w+))");
  ASSERT_TRUE(std::regex_search(r.output, m, encode)) << r.output;
  auto bytes = [](const std::string& v, const std::string& unit) {
    const double k = unit == "B" ? 1 : unit == "KiB" ? 1024.0 : unit == "MiB" ? 1048576.0 : 1073741824.0;
    return std::stod(v) * k;
  };
  const double peak = bytes(m[1], m[2]), after = bytes(m[3], m[4]);
  // The tiny encoder holds 400 x 16 embeddings and 2 layers: over 25 KiB; what stays are the embeddings.
  EXPECT_GT(peak, 25 * 1024.0) << r.output;
  EXPECT_LT(after, peak / 4) << r.output;
  EXPECT_THAT(r.output, HasSubstr("text encoder: done"));
  EXPECT_THAT(r.output, HasSubstr("ETA"));
}

TEST_F(GenerateTest, Mp4) {
  if (!pipeswap::pipeline::mp4_available()) {
    Result r = sh(single("--steps 1 --output " + path("v.mp4")));
    EXPECT_NE(r.code, 0);
    EXPECT_THAT(r.output, HasSubstr("--output frames/"));
    return;
  }
  Result r = sh(single("--steps 2 --output " + path("v.mp4")));
  ASSERT_EQ(r.code, 0) << r.output;
  auto video = pipeswap::pipeline::read_mp4(path("v.mp4"));
  EXPECT_EQ(video.codec, "h264");
  EXPECT_EQ(video.frames.sizes(), torch::IntArrayRef({9, 32, 48, 3}));
}

// `pipeswap plan` on a repo: the DiT's plan and the components' phases, before anything loads.
TEST_F(GenerateTest, PlanCoversTheComponents) {
  const std::string json_path = path("plan.json");
  Result r = sh(exe() + " plan --model " + repo() + " --frames 9 --height 32 --width 48 --json " + json_path);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("text encoder"));
  EXPECT_THAT(r.output, HasSubstr("VAE decoder"));
  EXPECT_THAT(r.output, HasSubstr("2 micro-batch"));
  std::ifstream in(json_path);
  const auto j = nlohmann::json::parse(in);
  ASSERT_EQ(j.at("components").at("phases").size(), 3u);
  const auto& encode = j["components"]["phases"][0];
  EXPECT_EQ(encode.at("placement"), "on-demand");
  // The tiny encoder: 400 x 16 embeddings and 2 layers of 16-wide attention and FFN, float32 on the CPU.
  EXPECT_GT(encode.at("weight_bytes").get<int64_t>(), 400 * 16 * 4);
  EXPECT_LT(encode.at("weight_bytes").get<int64_t>(), 200 * 1024);

  // Swapped: the device holds a slot (and the embedding while it is used), the host the layers; resident:
  // the encoder's weights stay through the denoise phase.
  const std::string swapped = path("plan-swapped.json"), resident = path("plan-resident.json");
  Result s = sh(exe() + " plan --model " + repo() + " --frames 9 --height 32 --width 48 --text-encoder swapped --json " +
                swapped);
  ASSERT_EQ(s.code, 0) << s.output;
  EXPECT_THAT(s.output, HasSubstr("swapped layers and embedding"));
  const auto js = nlohmann::json::parse(std::ifstream(swapped));
  const auto& se = js["components"]["phases"][0];
  EXPECT_EQ(se.at("placement"), "swapped");
  // Both layers swapped through 2 slots (prefetch depth 1) of one layer each, the embedding moved in: on this
  // 2-layer encoder that is all it holds anyway; UMT5-XXL's 24 layers of 400 MB go through 2 slots.
  const auto te_config = nlohmann::json::parse(std::ifstream(repo() + "/text_encoder/config.json"));
  const int64_t embedding = te_config.at("vocab_size").get<int64_t>() * te_config.at("d_model").get<int64_t>() * 4;
  EXPECT_EQ(se.at("slots").get<int64_t>(), 2);
  EXPECT_EQ(se.at("device_bytes").get<int64_t>(),
            encode.at("device_bytes").get<int64_t>() - encode.at("weight_bytes").get<int64_t>() +
                2 * se.at("slot_bytes").get<int64_t>() + embedding);
  EXPECT_LT(se.at("slot_bytes").get<int64_t>(), (encode.at("weight_bytes").get<int64_t>() - embedding) * 6 / 10);
  EXPECT_GT(se.at("host_bytes").get<int64_t>(), encode.at("host_bytes").get<int64_t>() + embedding);
  Result k = sh(exe() + " plan --model " + repo() + " --frames 9 --height 32 --width 48 --text-encoder resident --json " +
                resident);
  ASSERT_EQ(k.code, 0) << k.output;
  EXPECT_THAT(k.output, HasSubstr("stays on cpu through the job"));
  const auto jr = nlohmann::json::parse(std::ifstream(resident));
  EXPECT_EQ(jr["components"]["phases"][1].at("text_encoder_bytes").get<int64_t>(),
            encode.at("weight_bytes").get<int64_t>());
  EXPECT_EQ(jr["components"]["phases"][1].at("device_bytes").get<int64_t>(),
            j["components"]["phases"][1].at("device_bytes").get<int64_t>() + encode.at("weight_bytes").get<int64_t>());
  // The layer count belongs to the swapped placement only.
  Result bad = sh(exe() + " plan --model " + repo() + " --frames 9 --height 32 --width 48 --text-encoder-blocks-to-swap 1");
  EXPECT_NE(bad.code, 0);
  EXPECT_THAT(bad.output, HasSubstr("--text-encoder-blocks-to-swap 1 needs --text-encoder swapped"));
}

// A copy of the repo to break: links to the fixture's component folders.
std::string repo_copy(const std::string& dir, const std::vector<std::string>& components) {
  fs::create_directories(dir);
  fs::copy_file(repo() + "/model_index.json", dir + "/model_index.json", fs::copy_options::overwrite_existing);
  for (const auto& c : components) fs::create_directory_symlink(repo() + "/" + c, dir + "/" + c);
  return dir;
}

TEST_F(GenerateTest, BadInput) {
  struct Case {
    std::string args, says;
  };
  const std::string no_vae = repo_copy(path("no-vae"), {"tokenizer", "text_encoder", "transformer", "scheduler"});
  const std::string pth = repo_copy(path("pth"), {"tokenizer", "transformer", "vae", "scheduler"});
  fs::create_directories(pth + "/text_encoder");
  std::ofstream(pth + "/text_encoder/models_t5_umt5-xxl-enc-bf16.pth") << "not a pickle";
  const std::string base = " generate --model " + repo() + " --prompt cat --steps 1 ";
  const std::vector<Case> cases = {
      {" generate --model " + no_vae + " --prompt cat --frames 9 --height 32 --width 48", "lacks its vae/ folder"},
      {" generate --model " + pth + " --prompt cat --frames 9 --height 32 --width 48", "never unpickles"},
      {base + "--frames 10 --height 32 --width 48", "4k+1"},
      // One generate for text and video: the text model's flags do nothing here, and say so.
      {base + "--frames 10 --height 32 --width 48 --max-new-tokens 5 --temperature 0.5",
       "--max-new-tokens, --temperature do nothing for a Wan video repo"},
      {" generate --model " + repo() + " --input " + path("ids.json"), "--input is a text model's token ids"},
      {base + "--frames 9 --height 40 --width 48", "multiple of 16"},
      {base + "--frames 9 --height 32 --width 50", "multiple of 16"},
      {base + "--frames 9 --height 32 --width 48 --output out.avi", "--output"},
      {base + "--frames 9 --height 32 --width 48 --output " + path("o.safetensors") + " --save-latents " +
           path("s.safetensors"),
       "the output is the latents already"},
      {" generate --model " + repo() + " --frames 9", "exactly one of --prompt"},
      {" generate --model " + repo() + " --prompts " + path("missing.jsonl"), "--prompts"},
      {base + "--frames 9 --height 32 --width 48 --latents " + fixture("wan-t2v-pipeline/expected.safetensors") +
           " --output " + path("x.safetensors"),
       "--latents"},
  };
  for (const auto& c : cases) {
    Result r = sh(exe() + c.args, 60);
    EXPECT_NE(r.code, 0) << c.args << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(c.says)) << c.args;
  }
  // Every rank exits.
  Result r = sh("mpirun -np 2 " + exe() + " generate --model " + pth +
                    " --prompt cat --frames 9 --height 32 --width 48 --device-chain cpu=1,cpu=1",
                60);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_LT(r.seconds, 50);
  EXPECT_THAT(r.output, HasSubstr("never unpickles"));
}

// A prompt over 512 tokens is truncated with a warning, as diffusers does, and still runs.
TEST_F(GenerateTest, LongPromptTruncatedWithAWarning) {
  if (!pipeswap::models::T5Tokenizer::available()) GTEST_SKIP() << "built without SentencePiece";
  std::string prompt;
  for (int i = 0; i < 300; ++i) prompt += "cat dog ";
  Result r = sh(exe() + " generate --model " + repo() + " --prompt \"" + prompt +
                "\" --frames 9 --height 32 --width 48 --steps 1 --guidance 1 --log-level warn --output " +
                path("long.safetensors"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("tokens are dropped"));
}

}  // namespace
