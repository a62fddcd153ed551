// Unit tests for the prompt side of Wan's pipeline: the umT5 tokenizer (models/src/tokenizer.cpp) and text
// encoder (models/src/umt5.cpp), against transformers and diffusers themselves through the fixtures that
// tests/reference/make_t5_fixtures.py writes (umt5-tokenizer/, umt5-text-encoder/): token ids identical,
// the encoder's output and WanPipeline's prompt embeddings within 1e-5 of the largest magnitude in fp32,
// bf16 within a bound set by transformers' own bf16 error; on CUDA too where there is one.
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <torch/cuda.h>
#include <torch/types.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "expect_error.h"
#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/safetensors.h"
#include "pipeswap/models/tokenizer.h"
#include "pipeswap/models/umt5.h"
#include "test_util.h"

namespace pipeswap::models {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test_support::fixture;

std::string tokenizer_dir() { return fixture("umt5-tokenizer"); }
std::string encoder_dir() { return fixture("umt5-text-encoder"); }

json prompts_json() {
  std::ifstream in(tokenizer_dir() + "/prompts.json");
  std::stringstream text;
  text << in.rdbuf();
  return json::parse(text.str());
}

std::vector<std::string> fixture_prompts() { return prompts_json().at("prompts").get<std::vector<std::string>>(); }

torch::Tensor fixture_tensor(const std::string& file, const std::string& name) {
  return SafetensorsFile::open(file)->read(name);
}

// max |got - want| over max |want|: the measure of the reference checks (compare_fixtures.py's too).
double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  auto w = want.to(torch::kCPU, torch::kFloat64);
  auto g = got.to(torch::kCPU, torch::kFloat64);
  EXPECT_EQ(g.sizes(), w.sizes());
  return (g - w).abs().max().item<double>() / std::max(w.abs().max().item<double>(), 1e-30);
}

// A temporary directory, removed with everything in it at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "pipeswap-t5-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str() const { return path.string(); }
};

void write_file(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

// Captures what the library logs at warning level and above while it lives.
class LogCapture {
 public:
  LogCapture() : sink_(std::make_shared<spdlog::sinks::ostream_sink_mt>(text_)), level_(log().level()) {
    // The other sinks (stderr) keep quiet meanwhile, as the test main wants them.
    for (auto& s : log().sinks()) {
      sink_levels_.push_back(s->level());
      s->set_level(level_);
    }
    log().sinks().push_back(sink_);
    log().set_level(spdlog::level::warn);
  }
  ~LogCapture() {
    auto& sinks = log().sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
    for (size_t i = 0; i < sinks.size() && i < sink_levels_.size(); ++i) sinks[i]->set_level(sink_levels_[i]);
    log().set_level(level_);
  }
  std::string text() const { return text_.str(); }

 private:
  std::ostringstream text_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
  spdlog::level::level_enum level_;
  std::vector<spdlog::level::level_enum> sink_levels_;
};

#define SKIP_WITHOUT_SENTENCEPIECE()                                                                     \
  do {                                                                                                   \
    if (!T5Tokenizer::available()) GTEST_SKIP() << "built without SentencePiece (libsentencepiece-dev)"; \
  } while (0)

// ---- prompt cleaning ---------------------------------------------------------------------------------------

TEST(PromptClean, HandPickedCases) {
  EXPECT_EQ(html_unescape("Fish &amp; chips"), "Fish & chips");
  EXPECT_EQ(html_unescape("&amp;amp;"), "&amp;");                      // once
  EXPECT_EQ(clean_prompt("&amp;amp;lt;"), "&lt;");                     // diffusers unescapes twice
  EXPECT_EQ(html_unescape("&notit;"), "\xC2\xACit;");                  // the longest known prefix ("not")
  EXPECT_EQ(html_unescape("&amp"), "&");                               // a legacy name without ';'
  EXPECT_EQ(html_unescape("&bogus;"), "&bogus;");                      // unknown names stay
  EXPECT_EQ(html_unescape("&#128;&#0;"), "\xE2\x82\xAC\xEF\xBF\xBD");  // windows-1252's euro; NUL -> U+FFFD
  EXPECT_EQ(html_unescape("&#x1F600;&#11;x"), "\xF0\x9F\x98\x80x");    // an emoji; U+000B dropped
  EXPECT_EQ(html_unescape("&#;&#x;"), "&#;&#x;");
  EXPECT_EQ(clean_prompt("  a\t\n b\xE3\x80\x80"
                         "c \xC2\xA0"),
            "a b c");                                       // tab, newline, U+3000, U+00A0
  EXPECT_EQ(clean_prompt("\x1C a\x1C b \x1F"), "a\x1C b");  // U+001C..U+001F: stripped, never collapsed
  EXPECT_EQ(clean_prompt(""), "");
  EXPECT_ERROR(clean_prompt("bad \xFF byte"), ConfigError, "not valid UTF-8");
  EXPECT_ERROR(html_unescape("\xED\xA0\x80"), ConfigError, "not valid UTF-8");  // a surrogate
}

TEST(PromptClean, MatchesDiffusers) {
  const json p = prompts_json();
  for (const auto& c : p.at("clean_cases")) {
    const auto raw = c.at("raw").get<std::string>();
    EXPECT_EQ(clean_prompt(raw), c.at("clean").get<std::string>()) << "raw: " << raw.substr(0, 200);
  }
  const auto cleaned = p.at("cleaned").get<std::vector<std::string>>();
  const auto prompts = p.at("prompts").get<std::vector<std::string>>();
  ASSERT_EQ(cleaned.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(clean_prompt(prompts[i]), cleaned[i]) << "prompt " << i;
}

TEST(PromptClean, PythonWhitespace) {
  const json ws = prompts_json().at("whitespace");
  std::vector<uint32_t> isspace, white_space;
  for (char32_t c = 0; c < 0x110000; ++c) {
    if (is_python_space(c)) isspace.push_back(static_cast<uint32_t>(c));
    if (is_unicode_white_space(c)) white_space.push_back(static_cast<uint32_t>(c));
  }
  EXPECT_EQ(isspace, ws.at("isspace").get<std::vector<uint32_t>>());
  EXPECT_EQ(white_space, ws.at("regex_s").get<std::vector<uint32_t>>());
}

// ---- tokenizer -----------------------------------------------------------------------------------------------

TEST(T5Tokenizer, MatchesTransformers) {
  SKIP_WITHOUT_SENTENCEPIECE();
  const auto tok = T5Tokenizer::open(tokenizer_dir());
  const json p = prompts_json();
  const int64_t max_length = p.at("max_length").get<int64_t>();
  const PromptTokens got = tok->tokenize(fixture_prompts(), max_length);
  const std::string file = tokenizer_dir() + "/tokens.safetensors";
  const auto ids = fixture_tensor(file, "input_ids"), mask = fixture_tensor(file, "attention_mask");
  ASSERT_EQ(got.input_ids.sizes(), ids.sizes());
  for (int64_t i = 0; i < ids.size(0); ++i) {
    EXPECT_TRUE(got.input_ids[i].equal(ids[i])) << "prompt " << i << ": ids differ from transformers'";
    EXPECT_TRUE(got.attention_mask[i].equal(mask[i])) << "prompt " << i << ": attention mask differs";
    EXPECT_EQ(got.lengths[i], mask[i].sum().item<int64_t>()) << "prompt " << i;
  }
  EXPECT_EQ(tok->pad_id(), 0);
  EXPECT_EQ(tok->eos_id(), 1);
  // The empty prompt is its </s> alone; the long one lost what did not fit.
  EXPECT_EQ(got.lengths[2], 1);
  EXPECT_EQ(got.dropped[3], p.at("long_prompt_tokens").get<int64_t>() - max_length);
  EXPECT_EQ(got.lengths[3], max_length);
  for (size_t i = 0; i < got.dropped.size(); ++i)
    if (i != 3) {
      EXPECT_EQ(got.dropped[i], 0) << "prompt " << i;
    }
}

// Random strings over an alphabet of the awkward cases (tokenizer.h): the ids of transformers' tokenizer(text,
// add_special_tokens=False) for each.
TEST(T5Tokenizer, RandomStringsMatchTransformers) {
  SKIP_WITHOUT_SENTENCEPIECE();
  const auto tok = T5Tokenizer::open(tokenizer_dir());
  const json cases = prompts_json().at("random_cases");
  ASSERT_GE(cases.size(), 100u);
  int wrong = 0;
  for (const auto& c : cases) {
    const auto text = c.at("text").get<std::string>();
    const auto ids = tok->encode(text);
    if (ids != c.at("ids").get<std::vector<int64_t>>() && ++wrong <= 5) ADD_FAILURE() << "ids differ for: " << text;
  }
  EXPECT_EQ(wrong, 0) << "of " << cases.size();
}

TEST(T5Tokenizer, LongPromptTruncatedWithWarning) {
  SKIP_WITHOUT_SENTENCEPIECE();
  const auto tok = T5Tokenizer::open(tokenizer_dir());
  const auto prompts = fixture_prompts();
  LogCapture capture;
  const PromptTokens t = tok->tokenize({prompts[0], prompts[3]}, 512);
  const std::string text = capture.text();
  EXPECT_NE(text.find("prompt 1 has"), std::string::npos) << text;
  EXPECT_NE(text.find("dropped"), std::string::npos) << text;
  EXPECT_EQ(text.find("prompt 0"), std::string::npos) << "the short prompt was not truncated: " << text;
  EXPECT_EQ(t.input_ids[1][511].item<int64_t>(), tok->eos_id());  // </s> kept last
  EXPECT_GT(t.dropped[1], 0);
}

TEST(T5Tokenizer, EncodeIsWithoutCleaningOrEos) {
  SKIP_WITHOUT_SENTENCEPIECE();
  const auto tok = T5Tokenizer::open(tokenizer_dir());
  const auto ids = tok->encode("a <extra_id_0>");
  ASSERT_FALSE(ids.empty());
  EXPECT_NE(ids.back(), tok->eos_id());
  EXPECT_GE(ids.back(), 400);  // the sentinel is an added token past the 400 pieces, not text
  EXPECT_TRUE(tok->encode("").empty());
  const PromptTokens raw = tok->tokenize({"a&amp;b"}, 16, PromptCleaning::kNone);
  const PromptTokens clean = tok->tokenize({"a&amp;b"}, 16);
  EXPECT_FALSE(raw.input_ids.equal(clean.input_ids));
}

TEST(T5Tokenizer, BadFolders) {
  if (!T5Tokenizer::available()) {
    EXPECT_ERROR(T5Tokenizer::open(tokenizer_dir()), ConfigError, "without SentencePiece", "libsentencepiece-dev");
    return;
  }
  EXPECT_ERROR(T5Tokenizer::open("/nonexistent/tokenizer"), ConfigError, "does not exist", "tokenizer/");
  TempDir empty;
  EXPECT_ERROR(T5Tokenizer::open(empty.str()), ConfigError, "no spiece.model", "diffusers layout");
  TempDir broken;
  write_file(broken.path / "spiece.model", "not a model");
  EXPECT_ERROR(T5Tokenizer::open(broken.str()), ConfigError, "not a SentencePiece model");
  TempDir bad_json;
  fs::copy_file(tokenizer_dir() + "/spiece.model", bad_json.path / "spiece.model");
  write_file(bad_json.path / "tokenizer_config.json", "{");
  EXPECT_ERROR(T5Tokenizer::open(bad_json.str()), ConfigError, "tokenizer_config.json", "not valid JSON");
  write_file(bad_json.path / "tokenizer_config.json", R"({"extra_ids": "many"})");
  EXPECT_ERROR(T5Tokenizer::open(bad_json.str()), ConfigError, "tokenizer_config.json",
               "not as transformers writes it");
  EXPECT_ERROR(T5Tokenizer::open(tokenizer_dir())->tokenize({"x"}, 0), ConfigError, "max_length");
}

// Without tokenizer_config.json's added tokens, T5's convention: the extra ids after the pieces, highest first.
TEST(T5Tokenizer, SpieceModelAlone) {
  SKIP_WITHOUT_SENTENCEPIECE();
  TempDir dir;
  fs::copy_file(tokenizer_dir() + "/spiece.model", dir.path / "spiece.model");
  write_file(dir.path / "tokenizer_config.json", R"({"extra_ids": 12})");
  const auto tok = T5Tokenizer::open(dir.str());
  EXPECT_EQ(tok->vocab_size(), 412);
  EXPECT_EQ(tok->encode("<extra_id_0>"), std::vector<int64_t>{411});
  EXPECT_EQ(tok->encode("<extra_id_11>"), std::vector<int64_t>{400});
  const auto full = T5Tokenizer::open(tokenizer_dir());
  const auto prompts = fixture_prompts();
  EXPECT_TRUE(tok->tokenize(prompts).input_ids.equal(full->tokenize(prompts).input_ids));
}

// ---- text encoder --------------------------------------------------------------------------------------------

TEST(UMT5, RelativePositionBuckets) {
  const std::string file = encoder_dir() + "/encoder.safetensors";
  struct Case {
    const char* name;
    int64_t buckets, distance;
  };
  for (const Case c : {Case{"buckets_tiny", 8, 20}, Case{"buckets_umt5", 32, 128}}) {
    const auto want = fixture_tensor(file, c.name);  // relative positions -511..511
    const auto table = relative_position_buckets(512, 512, c.buckets, c.distance);
    // Row 511 holds relative positions -511..0, row 0 holds 0..511.
    const auto got = torch::cat({table[511], table[0].narrow(0, 1, 511)});
    EXPECT_TRUE(got.equal(want)) << c.name;
  }
  const auto t = relative_position_buckets(3, 5, 8, 20);
  EXPECT_EQ(t.sizes(), (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(t[1][1].item<int64_t>(), 0);  // itself
  EXPECT_EQ(t[1][2].item<int64_t>(), 5);  // one key later: the second half of the buckets
  EXPECT_EQ(t[1][0].item<int64_t>(), 1);  // one key earlier
}

TEST(UMT5, Config) {
  const auto ckpt = Checkpoint::open(encoder_dir());
  ASSERT_TRUE(is_umt5_config(ckpt->config()));
  const UMT5Config c = parse_umt5_config(ckpt->config());
  EXPECT_EQ(c.d_model, 16);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.d_kv, 4);
  EXPECT_EQ(c.num_buckets, 8);
  EXPECT_EQ(c.max_distance, 20);
  EXPECT_EQ(c.vocab_size, 416);
  // Every layer has its own relative position bias (T5 has one in the first only).
  const auto arch = make_umt5_encoder(c);
  EXPECT_EQ(arch->kind(), "text_encoder");
  EXPECT_EQ(arch->phase_names(), (std::vector<std::string>{"attn", "ffn"}));
  for (int b = 0; b < arch->num_blocks(); ++b) {
    bool bias = false;
    for (const auto& t : arch->phase_tensors(b, 0)) bias = bias || t.local == "relative_attention_bias.weight";
    EXPECT_TRUE(bias) << "block " << b;
  }
  json t5 = ckpt->config();
  t5["model_type"] = "t5";
  EXPECT_ERROR(parse_umt5_config(t5), CheckpointError, "not umt5");
  json relu = ckpt->config();
  relu["feed_forward_proj"] = "relu";
  EXPECT_ERROR(parse_umt5_config(relu), CheckpointError, "feed_forward_proj");
}

std::vector<torch::Device> devices() {
  std::vector<torch::Device> d{torch::kCPU};
  if (torch::cuda::is_available()) d.emplace_back(torch::kCUDA, 0);
  return d;
}

TEST(UMT5, MatchesTransformersFp32) {
  const std::string file = encoder_dir() + "/encoder.safetensors";
  const auto ids = fixture_tensor(file, "input_ids"), mask = fixture_tensor(file, "attention_mask");
  const auto want = fixture_tensor(file, "output");
  const auto want_embeds = fixture_tensor(encoder_dir() + "/prompt_embeds.safetensors", "output");
  for (const auto& device : devices()) {
    SCOPED_TRACE(device.str());
    const auto enc = UMT5Encoder::load(encoder_dir(), device, torch::kFloat32);
    const auto out = enc->forward(ids, mask);
    EXPECT_EQ(out.device(), device);
    EXPECT_EQ(out.scalar_type(), torch::kFloat32);
    const double err = relative_error(out, want);
    std::cout << "[ measure  ] umt5 fp32 on " << device << ": last_hidden_state within " << err
              << " of transformers (relative to its largest magnitude)\n";
    EXPECT_LE(err, 1e-5);
    PromptTokens tokens{ids, mask, {}, {}};
    const auto embeds = enc->encode(tokens);
    EXPECT_LE(relative_error(embeds, want_embeds), 1e-5);
    // Past each prompt's length the embeddings are exactly zero, as WanPipeline pads them.
    const auto pad = mask.eq(0).unsqueeze(-1).expand_as(want_embeds);
    EXPECT_EQ(embeds.to(torch::kCPU).masked_select(pad).abs().max().item<float>(), 0.0f);
  }
}

TEST(UMT5, Bf16NearTransformersBf16) {
  const std::string file = encoder_dir() + "/encoder.safetensors";
  const auto ids = fixture_tensor(file, "input_ids"), mask = fixture_tensor(file, "attention_mask");
  const auto want = fixture_tensor(file, "output");
  // transformers' own bf16 run (wo kept in fp32) against its fp32 one: ours may stray as far, twice over.
  const double theirs = std::stod(SafetensorsFile::open(file)->metadata().at("bf16_error"));
  for (const auto& device : devices()) {
    SCOPED_TRACE(device.str());
    const auto enc = UMT5Encoder::load(encoder_dir(), device, torch::kBFloat16);
    const auto out = enc->forward(ids, mask);
    EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
    const double err = relative_error(out, want);
    std::cout << "[ measure  ] umt5 bf16 on " << device << ": within " << err << " of transformers' fp32 output ("
              << "transformers' own bf16: " << theirs << ")\n";
    EXPECT_LE(err, std::max(2 * theirs, 1e-2));
  }
}

// Prompt in, embeddings out: the tokenizer and the encoder together give WanPipeline's prompt embeddings.
TEST(UMT5, PromptsToEmbeddings) {
  SKIP_WITHOUT_SENTENCEPIECE();
  const auto tok = T5Tokenizer::open(tokenizer_dir());
  const auto enc = UMT5Encoder::load(encoder_dir(), torch::kCPU, torch::kFloat32);
  const auto embeds = enc->encode(tok->tokenize(fixture_prompts()));
  const auto want = fixture_tensor(encoder_dir() + "/prompt_embeds.safetensors", "output");
  EXPECT_LE(relative_error(embeds, want), 1e-5);
}

// A sample's output does not depend on what it is batched with, nor on padding beyond its length.
TEST(UMT5, BatchMatchesSamplesAlone) {
  const std::string file = encoder_dir() + "/encoder.safetensors";
  const auto ids = fixture_tensor(file, "input_ids"), mask = fixture_tensor(file, "attention_mask");
  const auto enc = UMT5Encoder::load(encoder_dir(), torch::kCPU, torch::kFloat32);
  const auto all = enc->forward(ids, mask);
  const int64_t n = mask[0].sum().item<int64_t>();
  const auto alone = enc->forward(ids.narrow(0, 0, 1).narrow(1, 0, n));  // no padding, no mask
  EXPECT_LE(relative_error(alone[0], all[0].narrow(0, 0, n)), 1e-5);
}

// Some exporters save the tied embedding as encoder.embed_tokens.weight only.
TEST(UMT5, EmbeddingUnderEncoderName) {
  TempDir dir;
  const auto src = Checkpoint::open(encoder_dir());
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& name : src->tensor_names()) {
    const auto t = src->locate(name).file->read(name);
    tensors.emplace_back(name == "shared.weight" ? "encoder.embed_tokens.weight" : name, t);
  }
  write_safetensors((dir.path / "model.safetensors").string(), tensors);
  fs::copy_file(encoder_dir() + "/config.json", dir.path / "config.json");
  const std::string file = encoder_dir() + "/encoder.safetensors";
  const auto enc = UMT5Encoder::load(dir.str(), torch::kCPU, torch::kFloat32);
  EXPECT_EQ(enc->config().embedding, "encoder.embed_tokens.weight");
  EXPECT_LE(relative_error(enc->forward(fixture_tensor(file, "input_ids"), fixture_tensor(file, "attention_mask")),
                           fixture_tensor(file, "output")),
            1e-5);
}

TEST(UMT5, BadInput) {
  EXPECT_ERROR(UMT5Encoder::load("/nonexistent/text_encoder", torch::kCPU, torch::kFloat32), CheckpointError,
               "does not exist", "text_encoder/");
  // Wan2.1's original repo: the encoder as a pickle.
  TempDir original;
  write_file(original.path / "models_t5_umt5-xxl-enc-bf16.pth", "PK");
  EXPECT_ERROR(UMT5Encoder::load(original.str(), torch::kCPU, torch::kFloat32), CheckpointError,
               "models_t5_umt5-xxl-enc-bf16.pth", "never unpickles", "diffusers layout");
  EXPECT_ERROR(
      UMT5Encoder::load((original.path / "models_t5_umt5-xxl-enc-bf16.pth").string(), torch::kCPU, torch::kFloat32),
      CheckpointError, "pickled", "diffusers layout");
  EXPECT_ERROR(UMT5Encoder::load(encoder_dir(), torch::kCPU, torch::kHalf), ConfigError, "float32 or bfloat16");
  // A config of another family.
  TempDir t5;
  for (const auto& e : fs::directory_iterator(encoder_dir()))
    if (e.path().extension() == ".safetensors" || e.path().extension() == ".json")
      fs::copy_file(e.path(), t5.path / e.path().filename());
  json config = Checkpoint::open(encoder_dir())->config();
  config["model_type"] = "t5";
  write_file(t5.path / "config.json", config.dump());
  EXPECT_ERROR(UMT5Encoder::load(t5.str(), torch::kCPU, torch::kFloat32), CheckpointError, "not umt5");
  // Ids past the vocabulary, a mask of the wrong shape, a sample with no token.
  const auto enc = UMT5Encoder::load(encoder_dir(), torch::kCPU, torch::kFloat32);
  EXPECT_ERROR(enc->forward(torch::full({1, 4}, 416, torch::kInt64)), ConfigError, "outside umt5's vocabulary");
  EXPECT_ERROR(enc->forward(torch::ones({1, 4}, torch::kInt64), torch::ones({1, 3}, torch::kInt64)), ConfigError,
               "attention mask");
  EXPECT_ERROR(enc->forward(torch::ones({1, 4}, torch::kInt64), torch::zeros({1, 4}, torch::kInt64)), ConfigError,
               "no token");
  EXPECT_ERROR(enc->forward(torch::ones({4}, torch::kInt64)), ConfigError, "[batch, tokens]");
}

}  // namespace
}  // namespace pipeswap::models
