// `pipeswap generate` on Llama-family checkpoints, end to end under mpirun: the token ids of transformers' greedy
// `generate` (fp32, 32 new tokens, stopping at EOS) for every prompt of tests/reference/make_generate_text_fixtures.py's
// models, at 1-3 ranks, with swapping, several prompts of different lengths in flight at once; seeded sampling the
// same for every split; bad input refused.
#include <gtest/gtest.h>
#include <gmock/gmock.h>

#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using nlohmann::json;

namespace {

using namespace pipeswap::test_support;

json read_json(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return json::parse(text.str());
}

class GenerateText : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/pipeswap-generate-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string path(const std::string& name) { return dir_ + "/" + name; }
  static std::string mpirun(int np) { return "mpirun -np " + std::to_string(np) + " "; }

  // Runs generate on `model` with `args`; returns the output JSON (fails the test on a non-zero exit).
  static json generate(const std::string& model, int np, const std::string& args, const std::string& name) {
    const std::string out = path(name + ".json");
    Result r = sh(mpirun(np) + exe() + " generate --model " + fixture(model) + " --output " + out +
                      " --log-level warn --stream false " + args,
                  120);
    EXPECT_EQ(r.code, 0) << r.output;
    if (r.code != 0) return json::array();
    return read_json(out);
  }

  static inline std::string dir_;
};

// Each prompt's generated ids equal transformers' greedy generate of that prompt alone.
void expect_reference(const json& got, const std::string& model, const std::string& what) {
  const json want = read_json(fixture(model) + "/expected.json").at("cases");
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].at("prompt_ids"), want[i].at("prompt_ids")) << what << ": prompt " << i;
    EXPECT_EQ(got[i].at("generated_ids"), want[i].at("generated_ids")) << what << ": prompt " << i;
    EXPECT_EQ(got[i].at("text"), want[i].at("text")) << what << ": prompt " << i;
  }
}

TEST_F(GenerateText, GreedyMatchesTransformersOverSplitsAndSwapping) {
  if (!fs::exists(fixture("gen-llama3/expected.json"))) GTEST_SKIP() << "run make_generate_text_fixtures.py";
  struct Case {
    int np;
    std::string args;
  };
  const std::vector<Case> cases = {
      {1, ""},
      {2, "--max-batch 3"},
      {3, "--blocks-to-swap 1"},
      {2, "--offload-ratio 0.5 --lazy-load --max-batch 2"},
      {3, "--micro-batches 2 --blocks-to-swap 1 --offload-granularity phase"},
  };
  int n = 0;
  for (const char* model : {"gen-llama3", "gen-qwen2"}) {
    for (const auto& c : cases) {
      const std::string what = std::string(model) + " -np " + std::to_string(c.np) + " " + c.args;
      SCOPED_TRACE(what);
      expect_reference(generate(model, c.np, "--prompts " + fixture(std::string(model) + "/prompts.jsonl") + " " + c.args,
                                "greedy" + std::to_string(n++)),
                       model, what);
    }
  }
}

TEST_F(GenerateText, SentencePieceAndSlidingWindow) {
  if (!fs::exists(fixture("gen-mistral/expected.json"))) GTEST_SKIP() << "run make_generate_text_fixtures.py";
  if (std::getenv("PIPESWAP_NO_SENTENCEPIECE")) GTEST_SKIP();
  expect_reference(generate("gen-mistral", 1, "--prompts " + fixture("gen-mistral/prompts.jsonl"), "mistral1"),
                   "gen-mistral", "np 1");
  expect_reference(generate("gen-mistral", 3, "--prompts " + fixture("gen-mistral/prompts.jsonl") + " --max-batch 2",
                            "mistral3"),
                   "gen-mistral", "np 3");
}

TEST_F(GenerateText, TokenIdsInputAndOnePromptStreams) {
  if (!fs::exists(fixture("gen-llama3/expected.json"))) GTEST_SKIP() << "run make_generate_text_fixtures.py";
  const json want = read_json(fixture("gen-llama3/expected.json")).at("cases");
  json ids = json::array();
  for (const auto& c : want) ids.push_back(c.at("prompt_ids"));
  std::ofstream(path("ids.json")) << ids.dump();
  expect_reference(generate("gen-llama3", 2, "--input " + path("ids.json"), "ids"), "gen-llama3", "--input");

  // One prompt: the text streams to stdout, and the summary names the rates.
  const json qwen = read_json(fixture("gen-qwen2/expected.json")).at("cases");
  Result r = sh(mpirun(1) + exe() + " generate --model " + fixture("gen-qwen2") + " --prompt \"Hello world\"" +
                " --log-level warn");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr(qwen[0].at("text").get<std::string>()));
  EXPECT_THAT(r.output, HasSubstr("decode"));
  EXPECT_THAT(r.output, HasSubstr("time to first token"));
}

TEST_F(GenerateText, SeededSamplingIsTheSameForEverySplit) {
  if (!fs::exists(fixture("gen-qwen2/expected.json"))) GTEST_SKIP() << "run make_generate_text_fixtures.py";
  const std::string sampling = " --temperature 0.8 --top-k 50 --top-p 0.9 --repetition-penalty 1.1 --seed 7 --prompts " +
                               fixture("gen-qwen2/prompts.jsonl");
  const json a = generate("gen-qwen2", 1, sampling, "sample1");
  const json b = generate("gen-qwen2", 3, sampling + " --max-batch 2 --blocks-to-swap 1", "sample3");
  const json c = generate("gen-qwen2", 2, sampling + " --micro-batches 2 --lazy-load --offload-ratio 1", "sample2");
  ASSERT_EQ(a.size(), 7u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].at("generated_ids"), b[i].at("generated_ids")) << "prompt " << i;
    EXPECT_EQ(a[i].at("generated_ids"), c[i].at("generated_ids")) << "prompt " << i;
  }
  // Sampling differs from greedy somewhere, and another seed gives other tokens.
  const json greedy = read_json(fixture("gen-qwen2/expected.json")).at("cases");
  const json d = generate("gen-qwen2", 1, sampling + " --seed 8", "sample_seed8");
  bool differs_greedy = false, differs_seed = false;
  for (size_t i = 0; i < a.size(); ++i) {
    differs_greedy |= a[i].at("generated_ids") != greedy[i].at("generated_ids");
    differs_seed |= a[i].at("generated_ids") != d[i].at("generated_ids");
  }
  EXPECT_TRUE(differs_greedy);
  EXPECT_TRUE(differs_seed);
}

TEST_F(GenerateText, StopStringsAndMaxSeqLen) {
  if (!fs::exists(fixture("gen-qwen2/expected.json"))) GTEST_SKIP() << "run make_generate_text_fixtures.py";
  const json want = read_json(fixture("gen-qwen2/expected.json")).at("cases");
  const std::string full = want[0].at("text").get<std::string>();
  // The first three ASCII letters in a row of the greedy text: a stop string the shell passes as it is.
  std::string stop;
  for (size_t i = 4; i + 3 <= full.size() && stop.empty(); ++i)
    if (std::isalpha(static_cast<unsigned char>(full[i])) && std::isalpha(static_cast<unsigned char>(full[i + 1])) &&
        std::isalpha(static_cast<unsigned char>(full[i + 2])))
      stop = full.substr(i, 3);
  ASSERT_FALSE(stop.empty()) << full;
  std::ofstream(path("one.jsonl")) << json{{"prompt", "Hello world"}}.dump() << "\n";
  const json s = generate("gen-qwen2", 2, "--prompts " + path("one.jsonl") + " --stop " + stop, "stop");
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].at("finish_reason"), "stop");
  const std::string text = s[0].at("text").get<std::string>();
  EXPECT_NE(text.find(stop), std::string::npos);
  EXPECT_LT(text.size(), full.size());
  EXPECT_EQ(full.compare(0, text.size(), text), 0) << "a prefix of the greedy text";
  // The cache ends the sequence: a prompt of P tokens in a cache of P + 5 gets 6 tokens (the last needs no room).
  const size_t prompt_len = want[0].at("prompt_ids").size();
  const json m = generate("gen-qwen2", 1, "--prompts " + path("one.jsonl") + " --max-seq-len " +
                                              std::to_string(prompt_len + 5), "maxseq");
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].at("generated_ids").size(), 6u);
  EXPECT_EQ(m[0].at("finish_reason"), "max_seq_len");
}

// The ids of expected.json's prompts as --input JSON, and the vocabulary's name of each id (tokenizer.json).
std::string write_ids(const std::string& file, const json& cases) {
  json ids = json::array();
  for (const auto& c : cases) ids.push_back(c.at("prompt_ids"));
  std::ofstream(file) << ids.dump();
  return file;
}

std::map<int64_t, std::string> vocabulary_names(const std::string& model) {
  std::map<int64_t, std::string> names;
  const json t = read_json(fixture(model) + "/tokenizer.json");
  for (const auto& [name, id] : t.at("model").at("vocab").items()) names[id.get<int64_t>()] = name;
  return names;
}

// A token the greedy continuation of `ids` makes first at index >= 3 (so it stops there), whose vocabulary name the
// shell passes as it is in double quotes (sh() itself wraps the command in single quotes).
size_t pick_stop_index(const std::vector<int64_t>& ids, const std::map<int64_t, std::string>& names) {
  for (size_t k = 3; k < ids.size(); ++k) {
    if (std::find(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids[k]) != ids.begin() + static_cast<std::ptrdiff_t>(k)) continue;
    const auto it = names.find(ids[k]);
    if (it == names.end() || it->second.empty()) continue;
    bool plain = true;
    for (char c : it->second) plain &= c != '\'' && c != '\\' && c != '"' && c != '$' && c != '`';
    if (plain) return k;
  }
  return ids.size();
}

// --stop-token ends a sequence at a token named as the tokenizer spells it (a special token such as <|eot_id|>, or
// a vocabulary entry); generation_config.json's eos_token_id list is the default set of end tokens; --ignore-eos
// drops that list but keeps --stop-token.
TEST_F(GenerateText, StopTokensByNameAndTheEosList) {
  if (!fs::exists(fixture("gen-llama3/expected.json"))) GTEST_SKIP() << "run make_generate_text_fixtures.py";
  const json want = read_json(fixture("gen-llama3/expected.json")).at("cases");
  const auto names = vocabulary_names("gen-llama3");
  const auto ref0 = want[0].at("generated_ids").get<std::vector<int64_t>>();
  const size_t k = pick_stop_index(ref0, names);
  ASSERT_LT(k, ref0.size());
  const std::string name = names.at(ref0[k]);
  const std::vector<int64_t> until(ref0.begin(), ref0.begin() + static_cast<std::ptrdiff_t>(k) + 1);
  std::ofstream(path("ids0.json")) << json::array({want[0].at("prompt_ids")}).dump();
  // The special token is never generated here: it must resolve and change nothing; the vocabulary entry stops.
  const json s = generate("gen-llama3", 2,
                          "--input " + path("ids0.json") + " --stop-token \"<|eot_id|>\" --stop-token \"" + name + "\"",
                          "stoptoken");
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].at("generated_ids").get<std::vector<int64_t>>(), until) << name;
  EXPECT_EQ(s[0].at("finish_reason"), "stop_token");
  // generation_config.json's eos_token_id as a list: a copy of the checkpoint whose list adds that token.
  const std::string model = path("llama3-eos-list");
  fs::create_directories(model);
  for (const auto& e : fs::directory_iterator(fixture("gen-llama3")))
    if (e.path().filename() != "generation_config.json") fs::create_symlink(e.path(), model + "/" + e.path().filename().string());
  const int64_t eos = read_json(fixture("gen-llama3/generation_config.json")).at("eos_token_id").get<int64_t>();
  std::ofstream(model + "/generation_config.json") << json{{"eos_token_id", {eos, ref0[k]}}}.dump();
  const std::string ids = write_ids(path("ids_all.json"), want);
  auto run = [&](const std::string& args, const std::string& out) {
    Result r = sh(mpirun(2) + exe() + " generate --model " + model + " --output " + path(out) +
                      " --log-level warn --stream false --input " + ids + " " + args,
                  120);
    EXPECT_EQ(r.code, 0) << r.output;
    return r.code == 0 ? read_json(path(out)) : json::array();
  };
  const json listed = run("", "eoslist.json");
  ASSERT_EQ(listed.size(), want.size());
  bool stopped_early = false;
  for (size_t i = 0; i < want.size(); ++i) {
    const auto ref = want[i].at("generated_ids").get<std::vector<int64_t>>();
    std::vector<int64_t> expect;
    for (int64_t t : ref) {
      expect.push_back(t);
      if (t == eos || t == ref0[k]) break;
    }
    stopped_early |= expect.size() < ref.size();
    EXPECT_EQ(listed[i].at("generated_ids").get<std::vector<int64_t>>(), expect) << "prompt " << i;
    if (expect.back() == eos || expect.back() == ref0[k]) EXPECT_EQ(listed[i].at("finish_reason"), "eos") << i;
  }
  EXPECT_TRUE(stopped_early);
  // --ignore-eos: 32 tokens each, transformers' ids up to its own EOS; --stop-token still stops.
  const json ignored = run("--ignore-eos", "ignore.json");
  ASSERT_EQ(ignored.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const auto ref = want[i].at("generated_ids").get<std::vector<int64_t>>();
    const auto got = ignored[i].at("generated_ids").get<std::vector<int64_t>>();
    EXPECT_EQ(got.size(), 32u) << "prompt " << i;
    EXPECT_TRUE(std::equal(ref.begin(), ref.end(), got.begin())) << "prompt " << i;
    EXPECT_EQ(ignored[i].at("finish_reason"), "length") << i;
  }
  const json ignored_stop = run("--ignore-eos --stop-token \"" + name + "\"", "ignore_stop.json");
  ASSERT_EQ(ignored_stop.size(), want.size());
  EXPECT_EQ(ignored_stop[0].at("generated_ids").get<std::vector<int64_t>>(), until);
  EXPECT_EQ(ignored_stop[0].at("finish_reason"), "stop_token");
}

// Chunked prefill: transformers' ids for every prompt, whatever the chunk size, split, swap setting and
// micro-batches; and between two chunks of a long prompt the running sequences decode (the trace-level schedule).
TEST_F(GenerateText, ChunkedPrefillMatchesTransformersAndInterleavesDecode) {
  if (!fs::exists(fixture("gen-mistral/expected.json"))) GTEST_SKIP() << "run make_generate_text_fixtures.py";
  struct Case {
    const char* model;
    int np;
    const char* args;
  };
  const Case cases[] = {
      {"gen-llama3", 1, "--prefill-chunk 4"},
      {"gen-qwen2", 2, "--prefill-chunk 5 --max-batch 3"},
      {"gen-mistral", 3, "--prefill-chunk 4 --blocks-to-swap 1 --max-batch 2"},  // chunks across its window of 6
      {"gen-mistral", 2, "--prefill-chunk 1 --micro-batches 2 --offload-ratio 1 --lazy-load"},
      {"gen-llama3", 2, "--prefill-chunk 3 --micro-batches 2 --blocks-to-swap 1 --swap-order shared"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.model) + " np " + std::to_string(c.np) + " " + c.args);
    const json want = read_json(fixture(std::string(c.model) + "/expected.json")).at("cases");
    const std::string ids = write_ids(path(std::string(c.model) + "_ids.json"), want);
    expect_reference(generate(c.model, c.np, "--input " + ids + " " + c.args, "chunk"), c.model, c.args);
  }
  // The schedule: the 2-token prompt is prefilled and then decodes between the 24-token prompt's chunks.
  const json want = read_json(fixture("gen-llama3/expected.json")).at("cases");
  std::ofstream(path("two.json")) << json::array({want[6].at("prompt_ids"), want[1].at("prompt_ids")}).dump();
  Result r = sh(mpirun(2) + exe() + " generate --model " + fixture("gen-llama3") + " --input " + path("two.json") +
                    " --prefill-chunk 4 --log-level trace --stream false --output " + path("two_out.json"),
                120);
  ASSERT_EQ(r.code, 0) << r.output;
  std::vector<std::string> schedule;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);)
    if (const size_t at = line.find("generation micro-batch "); at != std::string::npos)
      schedule.push_back(line.substr(line.find(": ", at) + 2));
  ASSERT_GE(schedule.size(), 8u) << r.output;
  EXPECT_EQ(schedule[0], "prefill prompt 0 tokens 0..1");
  EXPECT_EQ(schedule[1], "prefill prompt 1 tokens 0..3 (a chunk)");
  EXPECT_EQ(schedule[2], "decode prompts 0");
  EXPECT_EQ(schedule[3], "prefill prompt 1 tokens 4..7 (a chunk)");
  EXPECT_EQ(schedule[4], "decode prompts 0");
  const auto it = std::find(schedule.begin(), schedule.end(), "prefill prompt 1 tokens 20..23");
  EXPECT_NE(it, schedule.end());
  const json two = read_json(path("two_out.json"));
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0].at("generated_ids"), want[6].at("generated_ids"));
  EXPECT_EQ(two[1].at("generated_ids"), want[1].at("generated_ids"));
}

// One generate command for both architectures: the other one's flags are named in a warning.
TEST_F(GenerateText, VideoFlagsWarnOnATextModel) {
  if (!fs::exists(fixture("gen-qwen2/expected.json"))) GTEST_SKIP() << "run make_generate_text_fixtures.py";
  Result r = sh(mpirun(1) + exe() + " generate --model " + fixture("gen-qwen2") +
                " --prompt hi --max-new-tokens 2 --frames 9 --guidance 3 --stream false --output " + path("w.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--frames, --guidance do nothing for a text model (qwen2 checkpoint"));
  r = sh(mpirun(1) + exe() + " generate --model " + fixture("gen-qwen2") + " --prompt-ids x.safetensors");
  EXPECT_NE(r.code, 0);
  EXPECT_THAT(r.output, HasSubstr("give its token ids with --input ids.json"));
  r = sh(exe() + " generate --help");
  EXPECT_THAT(r.output, HasSubstr("Video (Wan2.1 T2V, diffusers repo)"));
  EXPECT_THAT(r.output, HasSubstr("Text (Llama, Qwen2, Mistral checkpoint)"));
  EXPECT_THAT(r.output, HasSubstr("--stop-token"));
  EXPECT_THAT(r.output, HasSubstr("--prefill-chunk"));
}

TEST_F(GenerateText, BadInput) {
  if (!fs::exists(fixture("gen-llama3/expected.json"))) GTEST_SKIP() << "run make_generate_text_fixtures.py";
  const std::string base = mpirun(1) + exe() + " generate --model " + fixture("gen-llama3") + " --log-level warn ";
  Result r = sh(base + "--prompt \"a long prompt of many words\" --max-seq-len 3");
  EXPECT_NE(r.code, 0);
  EXPECT_THAT(r.output, HasSubstr("more than --max-seq-len 3"));
  std::ofstream(path("empty.json")) << "[[]]";
  r = sh(base + "--input " + path("empty.json"));
  EXPECT_NE(r.code, 0);
  EXPECT_THAT(r.output, HasSubstr("is empty"));
  r = sh(mpirun(1) + exe() + " generate --model " + fixture("gen-qwen2") + " --log-level warn --prompt \"\"");
  EXPECT_NE(r.code, 0);
  EXPECT_THAT(r.output, HasSubstr("--prompt is empty"));
  std::ofstream(path("big.json")) << "[[1, 2, 100000]]";
  r = sh(base + "--input " + path("big.json"));
  EXPECT_NE(r.code, 0);
  EXPECT_THAT(r.output, HasSubstr("outside the model's vocabulary"));
  r = sh(base + "--prompt hi --stop-token \"<|no_such_token|>\"");
  EXPECT_NE(r.code, 0);
  EXPECT_THAT(r.output, HasSubstr("the tokenizer has no such token"));
  EXPECT_THAT(r.output, HasSubstr("its special tokens: <|begin_of_text|> <|end_of_text|> <|eot_id|>"));
  r = sh(base + "--prompt hi --prefill-chunk -1");
  EXPECT_NE(r.code, 0);
  EXPECT_THAT(r.output, HasSubstr("--prefill-chunk: '-1' is out of range: give a token count from 0"));
  r = sh(base);
  EXPECT_NE(r.code, 0);
  EXPECT_THAT(r.output, HasSubstr("exactly one of --prompt"));
}

}  // namespace
