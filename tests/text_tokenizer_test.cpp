// The LLM tokenizers (models/src/text_tokenizer.cpp) against transformers itself: ids and decoded text (with and
// without special tokens) identical on the corpus of tests/reference/make_tokenizer_fixtures.py for a Llama 3-style
// and a Qwen2-style byte-level BPE (tokenizer.json) and a Llama 2-style SentencePiece BPE (tokenizer.model alone).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "expect_error.h"
#include "pipeswap/core/error.h"
#include "pipeswap/models/text_tokenizer.h"
#include "pipeswap/models/tokenizer.h"
#include "test_util.h"

namespace pipeswap::models {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test_support::fixture;

json read_json(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return json::parse(text.str());
}

std::string escaped(const std::string& s) { return json(s).dump(); }

class TokenizerFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerFixture, MatchesTransformers) {
  const std::string dir = fixture(GetParam());
  if (!fs::exists(dir + "/cases.json")) GTEST_SKIP() << "no fixture " << dir << ": run make_tokenizer_fixtures.py";
  if (GetParam() == "tok-spm" && !T5Tokenizer::available()) GTEST_SKIP() << "built without SentencePiece";
  const auto tok = TextTokenizer::open(dir);
  const json cases = read_json(dir + "/cases.json").at("cases");
  int id_mismatches = 0, text_mismatches = 0;
  for (const auto& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    const auto want = c.at("ids").get<std::vector<int64_t>>();
    const auto got = tok->encode(text);
    if (got != want && ++id_mismatches <= 5) {
      ADD_FAILURE() << GetParam() << ": ids of " << escaped(text) << "\n  got  " << json(got).dump()
                    << "\n  want " << json(want).dump();
    }
    const std::string decoded = tok->decode(want);
    const std::string decoded_skip = tok->decode(want, true);
    if ((decoded != c.at("decoded").get<std::string>() || decoded_skip != c.at("decoded_skip").get<std::string>()) &&
        ++text_mismatches <= 5) {
      ADD_FAILURE() << GetParam() << ": decode of " << escaped(text) << "\n  got  " << escaped(decoded) << " / "
                    << escaped(decoded_skip) << "\n  want " << c.at("decoded").dump() << " / "
                    << c.at("decoded_skip").dump();
    }
  }
  EXPECT_EQ(id_mismatches, 0) << "of " << cases.size() << " cases";
  EXPECT_EQ(text_mismatches, 0) << "of " << cases.size() << " cases";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerFixture, ::testing::Values("tok-llama3", "tok-qwen2", "tok-spm"));

TEST(TextTokenizer, StreamingGivesThePrefixOfTheWholeDecode) {
  const std::string dir = fixture("tok-llama3");
  if (!fs::exists(dir)) GTEST_SKIP() << "no fixture";
  const auto tok = TextTokenizer::open(dir);
  const std::string text = "Grüße 😀🎉 你好 and 👨‍👩‍👧\n\tdone";
  const auto ids = tok->encode(text, false);
  TextStreamer streamer(tok, true);
  std::string streamed;
  for (int64_t id : ids) {
    const std::string part = streamer.push(id);
    streamed += part;
    // Every piece is whole characters: no replacement character ever reaches the output.
    EXPECT_EQ(part.find("\xEF\xBF\xBD"), std::string::npos);
  }
  streamed += streamer.finish();
  EXPECT_EQ(streamed, text);
}

TEST(TextTokenizer, SpecialTokensAndErrors) {
  const std::string dir = fixture("tok-llama3");
  if (!fs::exists(dir)) GTEST_SKIP() << "no fixture";
  const auto tok = TextTokenizer::open(dir);
  EXPECT_EQ(tok->bos_id(), tok->token_id("<|begin_of_text|>"));
  EXPECT_EQ(tok->eos_id(), tok->token_id("<|end_of_text|>"));
  EXPECT_TRUE(tok->is_special(*tok->token_id("<|eot_id|>")));
  EXPECT_FALSE(tok->token_id("<|no_such_token|>").has_value());
  EXPECT_EQ(tok->encode("", true), std::vector<int64_t>{*tok->bos_id()});
  EXPECT_ERROR(tok->encode(std::string("bad \xC3\x28 utf8")), ConfigError, "not valid UTF-8");
  EXPECT_ERROR(TextTokenizer::open(fixture("llama_bias")), ConfigError, "neither tokenizer.json nor");
}

// --stop-token's names: a special token, a vocabulary entry as the file spells it, text the tokenizer makes one
// token of; the special tokens a message lists; for tokenizer.model too.
TEST(TextTokenizer, StopTokensByName) {
  const std::string dir = fixture("tok-llama3");
  if (!fs::exists(dir)) GTEST_SKIP() << "no fixture";
  const auto tok = TextTokenizer::open(dir);
  EXPECT_EQ(tok->stop_token_id("<|eot_id|>"), tok->token_id("<|eot_id|>"));
  EXPECT_EQ(tok->special_tokens(), (std::vector<std::string>{"<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"}));
  int checked = 0;
  const json vocab = read_json(dir + "/tokenizer.json").at("model").at("vocab");
  for (const auto& [name, id] : vocab.items()) {
    EXPECT_EQ(tok->stop_token_id(name), id.get<int64_t>()) << name;
    // "Ġthe" is " the" in text: where the text encodes to that one token, its text names it too.
    if (name.rfind("\xC4\xA0", 0) == 0 && name.size() > 2) {
      const std::string text = " " + name.substr(2);
      if (tok->encode(text, false) == std::vector<int64_t>{id.get<int64_t>()} && !tok->token_id(text)) {
        EXPECT_EQ(tok->stop_token_id(text), id.get<int64_t>()) << text;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 0);
  EXPECT_FALSE(tok->stop_token_id("<|no_such_token|>").has_value());
  EXPECT_FALSE(tok->stop_token_id("").has_value());
  EXPECT_FALSE(tok->stop_token_id(std::string("\xC3\x28")).has_value());  // not UTF-8: no error, no token
  if (T5Tokenizer::available() && fs::exists(fixture("tok-spm"))) {
    const auto spm = TextTokenizer::open(fixture("tok-spm"));
    EXPECT_EQ(spm->stop_token_id("</s>"), spm->eos_id());
    const auto specials = spm->special_tokens();
    EXPECT_NE(std::find(specials.begin(), specials.end(), "</s>"), specials.end());
  }
}

}  // namespace
}  // namespace pipeswap::models
