// The bad-input matrix: one row per wrong flag, config file, device chain, checkpoint, input file or
// output path, and per hostile input of issue 24 (ranks started with different settings, numbers
// that would wrap, special files, duplicate keys, deep JSON, jobs the machine cannot hold, a killed
// parent), each given to the real executable (alone, under `mpirun -np 2` or its `A : B` form, as two
// torchrun-style TCP ranks, or in single-node mode with two TCP workers). Every row must
//   - print its own message (a substring naming what is wrong), under 64 KiB and without a raw
//     escape byte,
//   - exit non-zero (under mpirun: the job, which MPI_Abort ends on every rank; no rank may go on;
//     as TCP ranks: every rank),
//   - end within seconds (no hang: a rank left waiting for a failed peer is the typical bug),
//   - leave its output directory empty (no partial or temporary file) or as the row says, its own
//     checks passing (special files still special, inputs untouched), and no process behind.
// Checkpoints are variants of the built-in demo model (12 Llama blocks; with two ranks rank 0 owns
// blocks 0..5, rank 1 blocks 6..11), so a broken tensor of block 9 is seen by rank 1 only.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <map>

#include <nlohmann/json.hpp>

#include "pipeswap/core/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::ordered_json;
using ::testing::HasSubstr;
using ::testing::Not;

namespace {

using namespace pipeswap::test_support;

// kMpmd2: `mpirun -np 1 pipeswap ... : -np 1 pipeswap ... RANK1`; kTcp2: two torchrun-style ranks
// (RANK, WORLD_SIZE, MASTER_ADDR/PORT) started by the row's shell, rank 1 with RANK1 added.
enum class Launch { kAlone, kMpi2, kSingleNode2, kMpmd2, kTcp2 };

struct Row {
  std::string name;  // also the row's directory; [a-z0-9-]
  Launch launch;
  // After `pipeswap <command>`; {D} is the suite's directory, {OUT} the row's output dir, {R} the
  // row's directory, {FIX} the reference fixtures.
  std::string args;
  std::string message;  // what the output must contain
  // How the output path is given: default --output {OUT}/logits.safetensors; "" when args carry it.
  std::string output = "--output {OUT}/logits.safetensors";
  // Shell lines run before pipeswap, in the same (private mount namespace) shell.
  std::string setup = "";
  // The command line around pipeswap's: {CMD} is `[mpirun -np 2] pipeswap run ...`.
  std::string wrap = "{CMD}";
  std::string command = "run";
  std::string rank1 = "";  // kMpmd2, kTcp2: arguments rank 1 gets after the others (so they win)
  std::string check = "";  // shell lines run after pipeswap: a line printing @@BAD fails the row
  std::string left = "";   // what `ls -A {OUT}` may show afterwards (space-terminated names)

  Row as(std::string c) const { return with([&](Row& r) { r.command = std::move(c); }); }
  Row on_rank1(std::string a) const { return with([&](Row& r) { r.rank1 = std::move(a); }); }
  Row then_check(std::string c) const { return with([&](Row& r) { r.check = std::move(c); }); }
  Row leaving(std::string l) const { return with([&](Row& r) { r.left = std::move(l); }); }
  template <typename F>
  Row with(F f) const {
    Row r = *this;
    f(r);
    return r;
  }
};

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

std::string read_bytes(const std::string& p) { return file_bytes(p); }
void write_bytes(const std::string& p, const std::string& bytes) { std::ofstream(p, std::ios::binary) << bytes; }

// Splits a safetensors file into its JSON header and its data section.
std::pair<ordered_json, std::string> split_safetensors(const std::string& path) {
  const std::string b = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(b[i]);
  return {ordered_json::parse(b.substr(8, n)), b.substr(8 + n)};
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

void join_safetensors(const std::string& path, const ordered_json& header, const std::string& data) {
  const std::string text = header.dump();
  write_bytes(path, le64(text.size()) + text + data);
}

class BadInputTest : public ::testing::TestWithParam<Row> {
 protected:
  static void SetUpTestSuite() {
    dir_ = "/tmp/pipeswap-bad-input-" + std::to_string(getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_ + "/m");
    setenv("PIPESWAP_CACHE", (dir_ + "/cache").c_str(), 1);
    Result r = sh(exe() + " plan --log-level warn");  // writes the demo model
    ASSERT_EQ(r.code, 0) << r.output;
    demo_ = dir_ + "/cache/demo-llama-v1";
    write_inputs();
    write_checkpoints();
    write_configs();
    write_hostile();
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static void write_inputs() {
    const std::string d = dir_ + "/in/";
    fs::create_directories(d);
    write_bytes(d + "ok.json", "[[1, 2, 3], [4, 5, 6]]");
    write_bytes(d + "notjson.json", "[[1, 2");
    write_bytes(d + "big.json", "[[1, 2, 99999]]");
    write_bytes(d + "negative.json", "[[1, -2, 3]]");
    write_bytes(d + "uneven.json", "[[1, 2, 3], [4, 5]]");
    write_bytes(d + "empty.json", "[]");
    write_bytes(d + "strings.json", "[[\"hello\", \"world\"]]");
    write_bytes(d + "nokey.json", "{\"ids\": [[1, 2]]}");
    write_bytes(d + "float.json", "[[1.5, 2]]");
    pipeswap::write_safetensors(d + "float.safetensors", {{"input_ids", torch::ones({2, 3}, torch::kFloat32)}});
    pipeswap::write_safetensors(d + "noids.safetensors", {{"tokens", torch::ones({2, 3}, torch::kInt64)}});
    pipeswap::write_safetensors(d + "3d.safetensors", {{"input_ids", torch::ones({1, 2, 3}, torch::kInt64)}});
  }

  static std::string model(const std::string& name) {
    const std::string m = dir_ + "/m/" + name;
    fs::create_directories(m);
    return m;
  }
  static void copy_config(const std::string& m) {
    fs::copy_file(demo_ + "/config.json", m + "/config.json", fs::copy_options::overwrite_existing);
  }
  static void copy_weights(const std::string& m) {
    fs::copy_file(demo_ + "/model.safetensors", m + "/model.safetensors", fs::copy_options::overwrite_existing);
  }
  // A copy of the demo whose config.json is edited by `edit`.
  static void config_variant(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
    const std::string m = model(name);
    copy_weights(m);
    nlohmann::json c = nlohmann::json::parse(read_bytes(demo_ + "/config.json"));
    edit(c);
    write_bytes(m + "/config.json", c.dump());
  }
  // A copy of the demo whose safetensors header is edited by `edit` (the data section unchanged).
  static void header_variant(const std::string& name, const std::function<void(ordered_json&)>& edit) {
    const std::string m = model(name);
    copy_config(m);
    auto [header, data] = split_safetensors(demo_ + "/model.safetensors");
    edit(header);
    join_safetensors(m + "/model.safetensors", header, data);
  }
  // A copy of the demo whose weight file holds `tensors` (edited from the demo's own by `edit`).
  static void tensor_variant(const std::string& name,
                             const std::function<void(std::vector<std::pair<std::string, torch::Tensor>>&)>& edit) {
    const std::string m = model(name);
    copy_config(m);
    auto f = pipeswap::SafetensorsFile::open(demo_ + "/model.safetensors");
    std::vector<std::pair<std::string, torch::Tensor>> t;
    for (const auto& info : f->tensors()) t.emplace_back(info.name, f->read(info.name));
    edit(t);
    pipeswap::write_safetensors(m + "/model.safetensors", t);
  }
  // The demo split over two shards (even blocks and the rest), listed by an index edited by `edit`.
  static void sharded_variant(const std::string& name, const std::function<void(ordered_json&)>& edit) {
    const std::string m = model(name);
    copy_config(m);
    auto f = pipeswap::SafetensorsFile::open(demo_ + "/model.safetensors");
    std::vector<std::pair<std::string, torch::Tensor>> a, b;
    ordered_json index = {{"metadata", {{"total_size", f->file_size()}}}, {"weight_map", ordered_json::object()}};
    for (const auto& info : f->tensors()) {
      const bool first =
          info.name.find("layers.") == std::string::npos || info.name.find("layers.1") != std::string::npos;
      (first ? a : b).emplace_back(info.name, f->read(info.name));
      index["weight_map"][info.name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
    }
    pipeswap::write_safetensors(m + "/model-00001-of-00002.safetensors", a);
    pipeswap::write_safetensors(m + "/model-00002-of-00002.safetensors", b);
    edit(index);
    write_bytes(m + "/model.safetensors.index.json",
                index.is_null() ? std::string("{\"weight_map\": {") : index.dump());
  }

  static void write_checkpoints() {
    // config.json
    copy_weights(model("no-config"));
    copy_weights(model("config-not-json"));
    write_bytes(dir_ + "/m/config-not-json/config.json", "{\"model_type\": \"llama\",");
    config_variant("config-unknown-family", [](nlohmann::json& c) { c["model_type"] = "gpt9"; });
    config_variant("config-wrong-type", [](nlohmann::json& c) { c["hidden_size"] = "256"; });
    config_variant("config-shapes-disagree", [](nlohmann::json& c) { c["intermediate_size"] = 640; });
    copy_config(model("no-weights"));
    // the weight file itself
    {
      const std::string m = model("truncated");
      copy_config(m);
      copy_weights(m);
      fs::resize_file(m + "/model.safetensors", fs::file_size(m + "/model.safetensors") * 6 / 10);
    }
    {
      const std::string m = model("tiny-file");
      copy_config(m);
      write_bytes(m + "/model.safetensors", "\x02\x00\x00");
    }
    {
      const auto [header, data] = split_safetensors(demo_ + "/model.safetensors");
      const std::string text = header.dump();
      std::string m = model("length-huge");
      copy_config(m);
      write_bytes(m + "/model.safetensors", le64(1ull << 40) + text + data);
      m = model("length-past-file");
      copy_config(m);
      write_bytes(m + "/model.safetensors", le64(8 + text.size() + data.size()) + text + data);
      m = model("header-not-json");
      copy_config(m);
      write_bytes(m + "/model.safetensors", le64(text.size()) + text.substr(0, text.size() - 2) + "!!" + data);
    }
    header_variant("offsets-past-end", [](ordered_json& h) {
      auto& e = h["model.layers.9.mlp.down_proj.weight"]["data_offsets"];
      const uint64_t n = e[1].get<uint64_t>() - e[0].get<uint64_t>();
      e = {uint64_t{1} << 30, (uint64_t{1} << 30) + n};
    });
    header_variant("overlapping", [](ordered_json& h) {
      h["model.layers.9.mlp.down_proj.weight"]["data_offsets"] =
          h["model.layers.8.mlp.down_proj.weight"]["data_offsets"];
    });
    header_variant("huge-declared-size", [](ordered_json& h) {
      auto& e = h["model.layers.9.mlp.down_proj.weight"];
      e["shape"] = {uint64_t{1} << 20, uint64_t{1} << 20, uint64_t{1} << 10};
      e["data_offsets"] = {uint64_t{0}, uint64_t{1} << 52};
    });
    header_variant("shape-bytes-mismatch", [](ordered_json& h) {
      h["model.layers.9.mlp.down_proj.weight"]["shape"] = {256, 700};
    });
    header_variant("unknown-dtype",
                   [](ordered_json& h) { h["model.layers.9.mlp.down_proj.weight"]["dtype"] = "C64"; });
    // Same byte size as F32: the header is consistent, the element type is wrong for a weight.
    header_variant("wrong-dtype", [](ordered_json& h) { h["model.layers.9.mlp.down_proj.weight"]["dtype"] = "I32"; });
    tensor_variant("missing-tensor", [](auto& t) {
      t.erase(std::remove_if(t.begin(), t.end(),
                             [](const auto& p) { return p.first == "model.layers.9.mlp.down_proj.weight"; }),
              t.end());
    });
    tensor_variant("unexpected-tensor", [](auto& t) {
      t.emplace_back("model.layers.12.mlp.up_proj.weight", torch::zeros({704, 256}));
    });
    // sharded checkpoints
    sharded_variant("shard-missing", [](ordered_json&) {});
    fs::remove(dir_ + "/m/shard-missing/model-00002-of-00002.safetensors");
    sharded_variant("index-not-json", [](ordered_json& i) { i = nullptr; });
    sharded_variant("index-no-weight-map", [](ordered_json& i) { i.erase("weight_map"); });
    sharded_variant("index-escapes",
                    [](ordered_json& i) { i["weight_map"]["lm_head.weight"] = "../model.safetensors"; });
    sharded_variant("index-disagrees", [](ordered_json& i) {
      i["weight_map"]["model.layers.9.mlp.down_proj.weight"] = "model-00001-of-00002.safetensors";
    });
  }

  static void write_configs() {
    const std::string d = dir_ + "/cfg/";
    fs::create_directories(d);
    write_bytes(d + "notjson.json", "{\"micro_batches\": 2,");
    write_bytes(d + "unknown-key.json", "{\"blocks_to_swapp\": 1}");
    write_bytes(d + "wrong-type.json", "{\"micro_batches\": \"two\"}");
    write_bytes(d + "wrong-type-list.json", "{\"comm_timeout\": [1, 2]}");
    write_bytes(d + "array.json", "[\"micro_batches\", 2]");
    write_bytes(d + "config-key.json", "{\"config\": \"other.json\"}");
    write_bytes(d + "bad-chain.json", "{\"device_chain\": [\"cpu=1\", \"tpu=1\"]}");
  }

  // Issue 24: special files, deep JSON, duplicate keys, names that do not print as they are, a tensor
  // in two shards, an input too big for the machine, a second config for ranks that disagree.
  static void write_hostile() {
    const std::string h = dir_ + "/h/";
    fs::create_directories(h + "dir");
    ASSERT_EQ(::mkfifo((h + "fifo").c_str(), 0644), 0);
    ASSERT_EQ(::mkfifo((h + "fifo.safetensors").c_str(), 0644), 0);
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    write_bytes(h + "deep.json", deep);
    write_bytes(dir_ + "/cfg/deep.json", "{\"micro_batches\": " + deep + "}");
    write_bytes(dir_ + "/cfg/help.json", "{\"help\": true}");
    write_bytes(dir_ + "/cfg/duplicate.json", "{\"micro_batches\": 1, \"micro_batches\": 2}");
    write_bytes(dir_ + "/cfg/threads-huge.json", "{\"threads\": 1e300}");
    // 32 tokens: 128 KiB of logits, more than a pipe holds (the signal rows' write blocks), computed
    // in a fraction of the demo batch's time.
    std::string ids32 = "[[1";
    for (int i = 2; i <= 32; ++i) ids32 += ", " + std::to_string(i);
    write_bytes(h + "ids32.json", ids32 + "]]");
    write_bytes(dir_ + "/in/duplicate.json", "{\"input_ids\": [[1, 2]], \"input_ids\": [[3, 4]]}");
    // generate: the reference repo's token ids (no SentencePiece needed), and a prompts file nesting deep.
    {
      auto e = pipeswap::SafetensorsFile::open(pipeswap::test_support::fixture("wan-t2v-pipeline/expected.safetensors"));
      pipeswap::write_safetensors(h + "prompt-ids.safetensors", {{"input_ids", e->read("ids_single")},
                                                                {"attention_mask", e->read("mask_single")},
                                                                {"negative_input_ids", e->read("ids_null_single")},
                                                                {"negative_attention_mask", e->read("mask_null_single")}});
    }
    write_bytes(h + "deep-prompts.jsonl", "{\"prompt\": \"a cat\"}\n{\"prompt\": " + deep + "}\n");
    // 10^7 tokens: the plan's logits alone are 41 GB.
    pipeswap::write_safetensors(h + "huge-input.safetensors", {{"input_ids", torch::ones({1, 10000000}, torch::kInt64)}});

    std::string m = model("config-deep");
    copy_weights(m);
    write_bytes(m + "/config.json", "{\"model_type\": " + deep + "}");
    m = model("config-is-dir");
    copy_weights(m);
    fs::create_directories(m + "/config.json");
    m = model("weights-fifo");
    copy_config(m);
    ASSERT_EQ(::mkfifo((m + "/model.safetensors").c_str(), 0644), 0);
    config_variant("config-eps", [](nlohmann::json& c) { c["rms_norm_eps"] = 2e-5; });
    tensor_variant("nan-weights", [](auto& t) {
      for (auto& [name, x] : t)
        if (name == "lm_head.weight") x.index_put_({0}, std::numeric_limits<float>::quiet_NaN());
    });
    // A tensor listed twice in one header (JSON text: the parsers would keep one of the two).
    {
      m = model("header-duplicate");
      copy_config(m);
      auto [header, data] = split_safetensors(demo_ + "/model.safetensors");
      const std::string key = "model.layers.9.mlp.down_proj.weight";
      std::string text = header.dump();
      text.insert(text.size() - 1, ",\"" + key + "\":" + header[key].dump());
      write_bytes(m + "/model.safetensors", le64(text.size()) + text + data);
    }
    // The index maps one tensor twice, to both shards.
    sharded_variant("index-duplicate", [](ordered_json&) {});
    {
      const std::string p = dir_ + "/m/index-duplicate/model.safetensors.index.json";
      write_bytes(p, replace_all(read_bytes(p), "\"weight_map\":{",
                                 "\"weight_map\":{\"model.layers.9.mlp.down_proj.weight\":"
                                 "\"model-00001-of-00002.safetensors\","));
    }
    // The index puts a tensor in shard 2, and shard 1 holds a copy too.
    sharded_variant("two-shards", [](ordered_json&) {});
    {
      const std::string shard = dir_ + "/m/two-shards/model-00001-of-00002.safetensors";
      std::vector<std::pair<std::string, torch::Tensor>> t;
      {
        auto f = pipeswap::SafetensorsFile::open(shard);
        for (const auto& info : f->tensors()) t.emplace_back(info.name, f->read(info.name));
        auto d = pipeswap::SafetensorsFile::open(demo_ + "/model.safetensors");
        t.emplace_back("model.layers.9.mlp.down_proj.weight", d->read("model.layers.9.mlp.down_proj.weight"));
      }
      pipeswap::write_safetensors(shard, t);
    }
    // Names that do not print as they are.
    tensor_variant("name-escape",
                   [](auto& t) { t.emplace_back("evil\x1b[2J\x1b[31mred", torch::zeros({1})); });
    tensor_variant("name-huge", [](auto& t) { t.emplace_back(std::string(1 << 20, 'n'), torch::zeros({1})); });
    sharded_variant("shard-nul", [](ordered_json& i) {
      i["weight_map"]["lm_head.weight"] = std::string("model-00001\0.safetensors", 24);
    });
  }

  static inline std::string dir_;
  static inline std::string demo_;
};

// Runs one row from a script file (no quoting through sh()'s bash -c), in a private mount namespace
// so that rows may mount a tmpfs over their output directory; prints what is left in the output
// directory after the run, then exits with pipeswap's (or mpirun's) status.
TEST_P(BadInputTest, FailsNamedOnEveryRankFastLeavingNothing) {
  const Row& row = GetParam();
  const std::string rdir = dir_ + "/rows/" + row.name;
  const std::string out = rdir + "/out";
  fs::create_directories(out);
  auto expand = [&](std::string s) {
    for (const auto& [from, to] : {std::pair<std::string, std::string>{"{OUT}", out}, {"{R}", rdir}, {"{D}", dir_},
                                   {"{FIX}", fixtures_dir()}})
      s = replace_all(s, from, to);
    return s;
  };
  std::string args = expand(row.args);
  if (row.launch == Launch::kSingleNode2) args += " --device-chain cpu,cpu";
  // Quiet unless the row sets --log-level itself (the last value wins).
  const std::string pipeswap =
      fs::absolute(exe()).string() + " " + row.command + " --log-level warn " + args + " " + expand(row.output);
  const std::string rank1 = pipeswap + " " + expand(row.rank1);
  std::string cmd;
  switch (row.launch) {
    case Launch::kMpi2: cmd = "mpirun -np 2 " + pipeswap; break;
    case Launch::kMpmd2: cmd = "mpirun -np 1 " + pipeswap + " : -np 1 " + rank1; break;
    case Launch::kTcp2: {
      // Both ranks must fail: the row's status is 0 (a failure of the row) when either exits 0.
      const std::string env = "WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port ";
      cmd = "port=$((20000 + $$ % 30000)); (RANK=0 LOCAL_RANK=0 " + env + "exec " + pipeswap +
            ") & p0=$!; (RANK=1 LOCAL_RANK=1 " + env + "exec " + rank1 +
            "); r1=$?; wait $p0; r0=$?; echo \"@@RANKS[$r0 $r1]\"; if [ $r0 -ne 0 ] && [ $r1 -ne 0 ]; then (exit 3); "
            "else (exit 0); fi";
      break;
    }
    default: cmd = pipeswap;
  }
  const std::string script = rdir + "/run.sh";
  std::ofstream(script) << "set -u\ncd " << rdir << "\n"
                        << expand(row.setup) << "\n"
                        << replace_all(expand(row.wrap), "{CMD}", cmd) << "\n"
                        << "rc=$?\n"
                        << expand(row.check) << "\n"
                        << "echo \"@@LEFT[$(ls -A " << out << " | tr '\\n' ' ')]\"\nexit $rc\n";
  // Root may mount in a mount namespace of its own; elsewhere the tmpfs rows skip (exit 99).
  static const bool private_mounts = sh("unshare -m true").code == 0;
  Result r = sh((private_mounts ? "unshare -m bash " : "bash ") + script, 90);
  if (std::getenv("BAD_INPUT_SHOW")) std::cout << row.name << " (exit " << r.code << "):\n" << r.output;
  if (r.code == 99) GTEST_SKIP() << "this row's set-up cannot run here: " << r.output;
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, 124) << "hung: " << r.output;
  EXPECT_LT(r.seconds, 30) << r.output;
  EXPECT_THAT(r.output, HasSubstr(expand(row.message)));
  EXPECT_THAT(r.output, HasSubstr("@@LEFT[" + row.left + "]")) << "a partial or temporary output file was left behind";
  EXPECT_THAT(r.output, Not(HasSubstr("@@BAD"))) << "a check of the row failed";
  // Messages are safe to print: bounded, and no escape sequence reaches the terminal.
  EXPECT_LT(r.output.size(), 64u << 10) << r.output.substr(0, 2000);
  EXPECT_EQ(r.output.find('\x1b'), std::string::npos) << "a raw escape byte in the output";
  // No process of this row is left (the [r] keeps pgrep's own shell from matching itself); one that
  // is, is ended here by its pid so that it does not run on after the test.
  const std::string marker = replace_all(rdir, "/rows/", "/[r]ows/");
  Result left = sh("pgrep -af \"" + marker + "\" || true");
  EXPECT_EQ(left.output, "") << "processes left behind";
  if (!left.output.empty()) sh("for p in $(pgrep -f \"" + marker + "\"); do kill -9 $p; done; true");
}

// A tmpfs over the output directory, read-only or a few KiB (the logits are 2 MiB); exit 99 where
// mounting is not allowed (unprivileged containers) so the row is skipped, not passed.
const char* kReadOnlyOut = "mount -t tmpfs -o ro,size=64k tmpfs {OUT} || exit 99";
const char* kFullOut = "mount -t tmpfs -o size=64k tmpfs {OUT} || exit 99";
// /dev/full under the temporary name pipeswap writes first (<output>.tmp.<pid>): a subshell links it
// under its own pid, then `exec` keeps that pid for pipeswap.
const char* kDevFullOut = "( ln -s /dev/full {OUT}/logits.safetensors.tmp.$BASHPID && exec {CMD} )";

// The Wan reference model and inputs for `denoise` rows (tests/reference/fixtures).
const char* kWanArgs =
    "--model {FIX}/wan-t2v-diffusers --latents {FIX}/wan-t2v-diffusers/denoise.safetensors --context "
    "{FIX}/wan-t2v-diffusers/denoise.safetensors --context-null {FIX}/wan-t2v-diffusers/denoise.safetensors --steps 2 "
    "--guidance 5 --shift 3";
const char* kWanOutput = "--output {OUT}/latents.safetensors";
// `generate` rows: the reference Wan T2V repo at its small size, 2 steps (the output: the default
// {OUT}/logits.safetensors, which generate writes as latents).
const char* kGenArgs = "--model {FIX}/wan-t2v-pipeline/repo --frames 9 --height 32 --width 48 --steps 2";
std::string gen(const std::string& extra) { return std::string(kGenArgs) + " " + extra; }
// A symlinked copy of the repo in the row's directory (files may be replaced there, the fixture stays).
const char* kRepoCopy = "cp -rs {FIX}/wan-t2v-pipeline/repo {R}/repo";
// An address-space limit for rows whose job would exhaust the machine if the guard let it through
// (pipeswap maps about 1-2 GB of its own: libraries, thread stacks).
const char* kMemoryLimit = "ulimit -v 6000000";
// The wrap of the signal rows: pipeswap's temporary output name links to {R}/fifo, which the row's
// shell holds open for reading and writing (so the open succeeds) but never reads (so the write
// blocks once the pipe is full); the signal comes when pipeswap waits in that write (wchan
// pipe_write, or anon_pipe_write on newer kernels), or after 20 s.
std::string signal_while_writing(const std::string& sig) {
  return "( ln -s {R}/fifo {OUT}/logits.safetensors.tmp.$BASHPID && exec {CMD} ) & p=$!; "
         "for i in $(seq 200); do grep -qs pipe_write /proc/$p/wchan && break; sleep 0.1; done; "
         "kill -" + sig + " $p; wait $p; rc=$?; echo @@SIGNAL-SENT; (exit $rc)";
}

const Row kRows[] = {
    // --- flags ---
    {"unknown-flag", Launch::kAlone, "--frobnicate 3", "--frobnicate"},
    {"unknown-flag-mpi", Launch::kMpi2, "--blocks-to-swapp 3", "--blocks-to-swapp"},
    {"micro-batches-not-a-number", Launch::kAlone, "--micro-batches lots", "--micro-batches"},
    {"micro-batches-zero", Launch::kMpi2, "--micro-batches 0",
     "--micro-batches: '0' is out of range: give a count from 1 to 100000"},
    {"micro-batches-above-batch", Launch::kMpi2, "--micro-batches 9", "more than the 8 sequence(s)"},
    {"comm-timeout-negative", Launch::kAlone, "--comm-timeout -1",
     "--comm-timeout: '-1' is out of range: give seconds from 0.001 to 31536000"},
    {"threads-negative", Launch::kAlone, "--threads -2", "--threads: '-2' is out of range: give 0 (automatic)"},
    {"threads-too-big", Launch::kAlone, "--threads 99999999999", "--threads"},
    {"swap-and-ratio", Launch::kMpi2, "--blocks-to-swap 2 --offload-ratio 0.5",
     "--blocks-to-swap and --offload-ratio both given"},
    {"blocks-to-swap-negative", Launch::kAlone, "--blocks-to-swap=-3",
     "--blocks-to-swap: '-3' is out of range: give a block count from 0 to 100000"},
    {"offload-ratio-above-one", Launch::kAlone, "--offload-ratio 1.5", "--offload-ratio"},
    {"prefetch-depth-zero", Launch::kAlone, "--prefetch-depth 0",
     "--prefetch-depth: '0' is out of range: give a depth from 1 to 1024"},
    {"disk-workers-zero", Launch::kAlone, "--num-disk-workers 0 --lazy-load --blocks-to-swap 2",
     "--num-disk-workers: '0' is out of range: give a thread count from 1 to 64"},
    {"max-memory-not-bytes", Launch::kAlone, "--max-memory lots --blocks-to-swap 2 --lazy-load", "--max-memory"},
    {"dtype-unknown", Launch::kMpi2, "--dtype fp8", "unknown --dtype 'fp8'"},
    {"dtype-fp16-on-cpu", Launch::kAlone, "--dtype fp16", "--dtype fp16 is not supported on CPU ranks"},
    {"resident-policy-unknown", Launch::kAlone, "--blocks-to-swap 1 --resident-policy middle",
     "unknown --resident-policy 'middle'"},
    {"granularity-unknown", Launch::kAlone, "--offload-granularity layer", "unknown --offload-granularity 'layer'"},
    {"transport-unknown", Launch::kAlone, "--transport pigeon", "--transport"},
    {"bool-not-a-bool", Launch::kAlone, "--workload-split maybe", "--workload-split"},
    {"log-level-unknown", Launch::kMpi2, "--log-level loud", "unknown --log-level 'loud'"},
    {"model-without-dir", Launch::kAlone, "--model", "Model is None or device_chain is empty"},
    // --- config file ---
    {"config-missing", Launch::kAlone, "--config {D}/cfg/nope.json", "cannot read config file"},
    {"config-not-json", Launch::kMpi2, "--config {D}/cfg/notjson.json", "is not valid JSON"},
    {"config-unknown-key", Launch::kAlone, "--config {D}/cfg/unknown-key.json", "unknown key 'blocks_to_swapp'"},
    {"config-wrong-type", Launch::kMpi2, "--config {D}/cfg/wrong-type.json", "micro-batches"},
    {"config-wrong-type-list", Launch::kAlone, "--config {D}/cfg/wrong-type-list.json", "comm-timeout"},
    {"config-not-an-object", Launch::kAlone, "--config {D}/cfg/array.json", "must hold a JSON object"},
    {"config-names-config", Launch::kAlone, "--config {D}/cfg/config-key.json", "unknown key 'config'"},
    {"config-bad-chain", Launch::kMpi2, "--config {D}/cfg/bad-chain.json", "Invalid device: tpu"},
    // --- device chain ---
    {"chain-syntax", Launch::kMpi2, "--device-chain cpu=1=2,cpu", "Invalid weight '1=2'"},
    {"chain-empty-entry", Launch::kMpi2, "--device-chain cpu,,cpu", "Invalid device: <empty>"},
    {"chain-unknown-device", Launch::kMpi2, "--device-chain tpu=1,cpu=1", "Invalid device: tpu"},
    {"chain-zero-weights", Launch::kMpi2, "--device-chain cpu=0,cpu=0", "Total percentage is zero or negative"},
    {"chain-negative-weight", Launch::kMpi2, "--device-chain cpu=1,cpu=-2", "cannot be negative"},
    {"chain-weight-not-a-number", Launch::kMpi2, "--device-chain cpu=1,cpu=x", "Invalid weight 'x'"},
    {"chain-weight-infinite", Launch::kMpi2, "--device-chain cpu=inf,cpu=1", "finite"},
    {"chain-weight-nan", Launch::kAlone, "--device-chain cpu=1,cpu=nan", "finite"},
    {"chain-empty", Launch::kMpi2, "--device-chain=", "Model is None or device_chain is empty"},
    {"chain-more-entries-than-ranks", Launch::kMpi2, "--device-chain cpu,cpu,cpu",
     "has 3 entries but 2 rank(s) are running"},
    {"chain-fewer-entries-than-ranks", Launch::kMpi2, "--device-chain cpu", "has 1 entry but 2 rank(s) are running"},
    {"chain-gpu-absent", Launch::kMpi2, "--device-chain cpu,cuda:7", "Invalid device: cuda:7"},
    // 13 entries and no launcher: single-node mode starts 13 workers, more ranks than the 12 blocks.
    {"chain-more-ranks-than-blocks", Launch::kAlone,
     "--device-chain cpu,cpu,cpu,cpu,cpu,cpu,cpu,cpu,cpu,cpu,cpu,cpu,cpu", "only 12 blocks"},
    // --- checkpoint ---
    {"model-dir-missing", Launch::kMpi2, "--model {D}/m/nope --input {D}/in/ok.json", "does not exist"},
    {"config-json-missing", Launch::kAlone, "--model {D}/m/no-config --input {D}/in/ok.json",
     "config.json' is missing"},
    {"config-json-not-json", Launch::kMpi2, "--model {D}/m/config-not-json --input {D}/in/ok.json",
     "is not valid JSON"},
    {"config-json-unknown-family", Launch::kAlone, "--model {D}/m/config-unknown-family --input {D}/in/ok.json",
     "model_type 'gpt9' is not supported"},
    {"config-json-wrong-type", Launch::kAlone, "--model {D}/m/config-wrong-type --input {D}/in/ok.json",
     "'hidden_size' must be"},
    {"weights-missing", Launch::kMpi2, "--model {D}/m/no-weights --input {D}/in/ok.json",
     "has neither model.safetensors nor model.safetensors.index.json"},
    {"weights-truncated", Launch::kMpi2, "--model {D}/m/truncated --input {D}/in/ok.json", "is truncated"},
    {"weights-shorter-than-prefix", Launch::kAlone, "--model {D}/m/tiny-file --input {D}/in/ok.json",
     "shorter than the 8-byte header length"},
    {"header-length-huge", Launch::kMpi2, "--model {D}/m/length-huge --input {D}/in/ok.json",
     "claims a 1099511627776-byte JSON header"},
    {"header-length-past-file", Launch::kAlone, "--model {D}/m/length-past-file --input {D}/in/ok.json",
     "header longer than the file"},
    {"header-not-json", Launch::kAlone, "--model {D}/m/header-not-json --input {D}/in/ok.json",
     "the header is not valid JSON"},
    {"header-offsets-past-end", Launch::kMpi2, "--model {D}/m/offsets-past-end --input {D}/in/ok.json",
     "is truncated: tensor 'model.layers.9.mlp.down_proj.weight' needs data bytes [1073741824"},
    {"header-overlapping", Launch::kMpi2, "--model {D}/m/overlapping --input {D}/in/ok.json",
     "have overlapping data_offsets"},
    {"header-huge-declared-size", Launch::kMpi2, "--model {D}/m/huge-declared-size --input {D}/in/ok.json",
     "needs data bytes [0, 4503599627370496)"},
    {"header-shape-bytes-mismatch", Launch::kAlone, "--model {D}/m/shape-bytes-mismatch --input {D}/in/ok.json",
     "shape/bytes mismatch for tensor 'model.layers.9.mlp.down_proj.weight'"},
    {"header-unknown-dtype", Launch::kAlone, "--model {D}/m/unknown-dtype --input {D}/in/ok.json",
     "unknown dtype 'C64'"},
    {"tensor-wrong-dtype", Launch::kMpi2, "--model {D}/m/wrong-dtype --input {D}/in/ok.json",
     "is I32 but a floating-point weight is expected"},
    {"tensor-shapes-disagree-with-config", Launch::kMpi2, "--model {D}/m/config-shapes-disagree --input {D}/in/ok.json",
     "but config.json implies"},
    {"tensor-missing", Launch::kMpi2, "--model {D}/m/missing-tensor --input {D}/in/ok.json",
     "model.layers.9.mlp.down_proj.weight"},
    {"tensor-unexpected", Launch::kMpi2, "--model {D}/m/unexpected-tensor --input {D}/in/ok.json",
     "holds tensor 'model.layers.12.mlp.up_proj.weight'"},
    {"shard-missing", Launch::kMpi2, "--model {D}/m/shard-missing --input {D}/in/ok.json",
     "checkpoint shard 'model-00002-of-00002.safetensors'"},
    {"index-not-json", Launch::kAlone, "--model {D}/m/index-not-json --input {D}/in/ok.json", "checkpoint index"},
    {"index-without-weight-map", Launch::kAlone, "--model {D}/m/index-no-weight-map --input {D}/in/ok.json",
     "has no \"weight_map\" object"},
    {"index-escapes-the-directory", Launch::kAlone, "--model {D}/m/index-escapes --input {D}/in/ok.json",
     "which is not a plain file name"},
    {"index-disagrees-with-shard", Launch::kMpi2, "--model {D}/m/index-disagrees --input {D}/in/ok.json",
     "the index and shards disagree"},
    // --- input file ---
    {"input-missing", Launch::kMpi2, "--input {D}/in/nope.json", "input file {D}/in/nope.json does not exist"},
    {"input-required-with-model", Launch::kAlone, "--model {D}/cache/demo-llama-v1",
     "--input is required with --model"},
    {"input-not-json", Launch::kMpi2, "--input {D}/in/notjson.json", "is not valid JSON"},
    {"input-token-out-of-range", Launch::kMpi2, "--input {D}/in/big.json", "token id 99999 is out of range"},
    {"input-token-out-of-range-single-node", Launch::kSingleNode2, "--input {D}/in/big.json",
     "token id 99999 is out of range"},
    {"input-negative", Launch::kAlone, "--input {D}/in/negative.json", "non-negative integers"},
    {"input-uneven", Launch::kMpi2, "--input {D}/in/uneven.json", "sequence 1 has 2 tokens but sequence 0 has 3"},
    {"input-empty", Launch::kAlone, "--input {D}/in/empty.json", "holds no sequences"},
    {"input-strings", Launch::kAlone, "--input {D}/in/strings.json", "token ids are non-negative integers"},
    {"input-floats", Launch::kAlone, "--input {D}/in/float.json", "token ids are non-negative integers"},
    {"input-no-input-ids-key", Launch::kAlone, "--input {D}/in/nokey.json", "has no \"input_ids\" key"},
    {"input-wrong-dtype", Launch::kMpi2, "--input {D}/in/float.safetensors", "input_ids is F32, expected I64 or I32"},
    {"input-no-input-ids-tensor", Launch::kAlone, "--input {D}/in/noids.safetensors",
     "has no tensor named \"input_ids\""},
    {"input-three-dimensions", Launch::kAlone, "--input {D}/in/3d.safetensors", "input_ids has 3 dimensions"},
    // --- output path ---
    {"output-dir-missing", Launch::kMpi2, "--output {OUT}/no/such/dir/x.safetensors",
     "directory {OUT}/no/such/dir does not exist", ""},
    {"output-is-a-directory", Launch::kAlone, "--output {OUT}", "it is a directory", ""},
    {"output-empty", Launch::kAlone, "--output \"\"", "--output is empty", ""},
    {"output-dir-read-only", Launch::kMpi2, "", "is not writable", "--output {OUT}/logits.safetensors", kReadOnlyOut},
    // 32 tokens (128 KiB of logits, more than the 64 KiB tmpfs holds): the whole job runs, so a small one.
    {"output-disk-full-tmpfs", Launch::kMpi2, "--input {D}/h/ids32.json", "No space left on device", "--output {OUT}/logits.safetensors",
     kFullOut},
    {"output-disk-full-single-node", Launch::kSingleNode2, "--input {D}/h/ids32.json", "No space left on device",
     "--output {OUT}/logits.safetensors", kFullOut},
    {"output-dev-full", Launch::kAlone, "--input {D}/h/ids32.json", "No space left on device",
     "--output {OUT}/logits.safetensors", "",
     kDevFullOut},
    // ===== issue 24: hostile numbers, disagreeing ranks, special files =====
    // --- ranks started with different settings: every rank stops, naming the first difference ---
    Row{"agree-dtype-mpmd", Launch::kMpmd2, "--dtype fp32", "--dtype differs (rank 0 has 'fp32'; rank 1 has 'bf16')"}
        .on_rank1("--dtype bf16"),
    Row{"agree-chain-weights-mpmd", Launch::kMpmd2, "--device-chain cpu=1,cpu=1",
        "--device-chain differs (rank 0 has 'cpu=1,cpu=1'; rank 1 has 'cpu=3,cpu=1')"}
        .on_rank1("--device-chain cpu=3,cpu=1"),
    Row{"agree-model-config-mpmd", Launch::kMpmd2, "--model {D}/cache/demo-llama-v1 --input {D}/in/ok.json",
        "--model (config.json) differs (rank 0 has 'config.json of {D}/cache/demo-llama-v1"}
        .on_rank1("--model {D}/m/config-eps"),
    Row{"agree-micro-batches-tcp", Launch::kTcp2, "", "--micro-batches differs (rank 0 has '1'; rank 1 has '2')"}
        .on_rank1("--micro-batches 2"),
    Row{"agree-trace-tcp", Launch::kTcp2, "", "--trace differs (rank 0 has 'off'; rank 1 has 'on')"}.on_rank1(
        "--trace {OUT}/trace.json"),
    Row{"agree-swap-tcp", Launch::kTcp2, "", "--blocks-to-swap differs (rank 0 has '(not given)'; rank 1 has '2')"}
        .on_rank1("--blocks-to-swap 2"),
    Row{"agree-guidance-denoise-mpmd", Launch::kMpmd2, kWanArgs, "--guidance differs (rank 0 has '5'; rank 1 has '4')",
        kWanOutput}
        .as("denoise")
        .on_rank1("--guidance 4"),
    Row{"agree-weight-dtype-mpmd", Launch::kMpmd2, "", "--weight-dtype differs (rank 0 has 'auto'; rank 1 has 'fp8')"}
        .on_rank1("--weight-dtype fp8"),
    Row{"agree-seed-generate-mpmd", Launch::kMpmd2, gen("--prompt-ids {D}/h/prompt-ids.safetensors --seed 1"),
        "--seed differs (rank 0 has '1'; rank 1 has '2')"}
        .as("generate")
        .on_rank1("--seed 2"),
    // --- numbers: parsed once, whole and finite, inside stated ranges ---
    {"threads-million", Launch::kAlone, "--threads 1000000", "--threads: '1000000' is out of range: give 0 (automatic)"},
    {"threads-huge-in-config", Launch::kAlone, "--config {D}/cfg/threads-huge.json", "--threads: '1e+300' is out of range"},
    {"disk-workers-huge", Launch::kAlone, "--num-disk-workers 10000 --lazy-load --blocks-to-swap 2",
     "--num-disk-workers: '10000' is out of range: give a thread count from 1 to 64"},
    {"prefetch-depth-huge", Launch::kAlone, "--prefetch-depth 1e9 --blocks-to-swap 2",
     "--prefetch-depth: '1e9' is out of range: give a depth from 1 to 1024"},
    {"micro-batches-fraction", Launch::kAlone, "--micro-batches 2.5",
     "--micro-batches: '2.5' is not a whole number: give a count from 1 to 100000"},
    {"micro-batches-wraps", Launch::kMpi2, "--micro-batches 4294967297", "--micro-batches: '4294967297' is out of range"},
    {"comm-timeout-huge", Launch::kAlone, "--comm-timeout 1e300", "--comm-timeout: '1e300' is out of range"},
    {"comm-timeout-inf", Launch::kMpi2, "--comm-timeout inf", "--comm-timeout: 'inf' is not a finite number"},
    {"comm-timeout-tiny", Launch::kAlone, "--comm-timeout 0.0001", "--comm-timeout: '0.0001' is out of range"},
    {"max-memory-huge", Launch::kAlone, "--max-memory 1e30 --blocks-to-swap 2 --lazy-load",
     "--max-memory: '1e30' is 1e+30 bytes, more than the largest size accepted, 2^62 bytes"},
    {"max-memory-zero", Launch::kAlone, "--max-memory 0 --blocks-to-swap 2 --lazy-load",
     "--max-memory: '0' is 0 bytes: give a size from 1 byte to 2^62 bytes (leave --max-memory out for no limit)"},
    {"vram-budget-zero", Launch::kAlone, "--vram-budget 0", "--vram-budget: '0' is 0 bytes"},
    {"vram-budget-nan", Launch::kAlone, "--vram-budget nanGB", "--vram-budget: 'nanGB' is not a size"},
    {"chain-weights-overflow", Launch::kMpi2, "--device-chain cpu=1e308,cpu=1e308",
     "they add up to more than a number can hold"},
    Row{"steps-huge", Launch::kAlone, kWanArgs + std::string(" --steps 2000000000"),
        "--steps: '2000000000' is out of range: give a step count from 1 to 100000", kWanOutput}
        .as("denoise"),
    Row{"guidance-nan", Launch::kAlone, kWanArgs + std::string(" --guidance nan"),
        "--guidance: 'nan' is not a finite number", kWanOutput}
        .as("denoise"),
    Row{"shift-inf", Launch::kMpi2, kWanArgs + std::string(" --shift inf"), "--shift: 'inf' is not a finite number",
        kWanOutput}
        .as("denoise"),
    // generate's, fp8's and --swap-order's flags go through the same bounds
    Row{"generate-frames-huge", Launch::kAlone, gen("--prompt cat --frames 1e30"),
        "--frames: '1e30' is out of range: give a frame count from 1 to 10001"}
        .as("generate"),
    Row{"generate-height-nan", Launch::kMpi2, gen("--prompt cat --height nan"), "--height: 'nan' is not a finite number"}
        .as("generate"),
    Row{"generate-width-fraction", Launch::kAlone, gen("--prompt cat --width 480.5"),
        "--width: '480.5' is not a whole number: give pixels from 1 to 16384"}
        .as("generate"),
    Row{"generate-seed-negative", Launch::kAlone, gen("--prompt cat --seed -1"),
        "--seed: '-1' is out of range: give a seed from 0 to 9223372036854775807"}
        .as("generate"),
    Row{"generate-seed-wraps", Launch::kAlone, gen("--prompt cat --seed 18446744073709551617"),
        "--seed: '18446744073709551617' is out of range"}
        .as("generate"),
    Row{"generate-steps-huge", Launch::kAlone, gen("--prompt cat --steps 2000000000"),
        "--steps: '2000000000' is out of range: give a step count from 1 to 100000"}
        .as("generate"),
    Row{"generate-guidance-nan", Launch::kAlone, gen("--prompt cat --guidance nan"),
        "--guidance: 'nan' is not a finite number"}
        .as("generate"),
    Row{"generate-flow-shift-inf", Launch::kMpi2, gen("--prompt cat --flow-shift inf"),
        "--flow-shift: 'inf' is not a finite number"}
        .as("generate"),
    Row{"generate-fps-zero", Launch::kAlone, gen("--prompt cat --fps 0"), "--fps: '0' is out of range"}.as("generate"),
    Row{"plan-frames-huge", Launch::kAlone, gen("--frames 99999999999"), "--frames: '99999999999' is out of range", ""}
        .as("plan"),
    {"weight-dtype-unknown", Launch::kAlone, "--weight-dtype fp4", "--weight-dtype"},
    {"fp8-gemm-unknown", Launch::kMpi2, "--fp8-gemm always", "--fp8-gemm"},
    {"fp8-dequantise-unknown", Launch::kAlone, "--fp8-dequantise later", "--fp8-dequantise"},
    {"swap-order-unknown", Launch::kAlone, "--blocks-to-swap 2 --swap-order sometimes",
     "unknown --swap-order 'sometimes'"},
    // --- the plan guards the machine (ulimit -v keeps a failure of the guard from taking the machine) ---
    {"memory-huge-input", Launch::kAlone, "--input {D}/h/huge-input.safetensors",
     "the plan does not fit the machine: rank 0 (cpu on", "--output {OUT}/logits.safetensors", kMemoryLimit},
    {"memory-huge-input-mpi", Launch::kMpi2, "--input {D}/h/huge-input.safetensors",
     "--force runs it anyway", "--output {OUT}/logits.safetensors", kMemoryLimit},
    // --force: a warning, then the allocation the guard foresaw fails as an error, not a crash.
    {"memory-force", Launch::kAlone, "--input {D}/h/huge-input.safetensors --force", "--force: running anyway",
     "--output {OUT}/logits.safetensors", kMemoryLimit},
    // --- inputs are regular files: named, never waited on ---
    {"input-fifo", Launch::kMpi2, "--input {D}/h/fifo",
     "input file (--input) '{D}/h/fifo' is a FIFO (named pipe), not a regular file"},
    {"input-directory", Launch::kAlone, "--input {D}/h/dir", "'{D}/h/dir' is a directory, not a regular file"},
    {"input-device", Launch::kAlone, "--input /dev/zero", "'/dev/zero' is a character device, not a regular file"},
    {"config-fifo", Launch::kAlone, "--config {D}/h/fifo", "config file (--config) '{D}/h/fifo' is a FIFO"},
    {"config-directory", Launch::kMpi2, "--config {D}/h/dir", "'{D}/h/dir' is a directory, not a regular file"},
    Row{"latents-fifo", Launch::kAlone,
        "--model {FIX}/wan-t2v-diffusers --latents {D}/h/fifo.safetensors --context "
        "{FIX}/wan-t2v-diffusers/denoise.safetensors --guidance 1",
        "--latents file '{D}/h/fifo.safetensors' is a FIFO", kWanOutput}
        .as("denoise"),
    Row{"generate-prompts-fifo", Launch::kAlone, gen("--prompts {D}/h/fifo"),
        "--prompts file '{D}/h/fifo' is a FIFO (named pipe), not a regular file"}
        .as("generate"),
    Row{"generate-prompts-directory", Launch::kMpi2, gen("--prompts {D}/h/dir"),
        "'{D}/h/dir' is a directory, not a regular file"}
        .as("generate"),
    Row{"generate-prompts-deep", Launch::kAlone, gen("--prompts {D}/h/deep-prompts.jsonl"), "nested more than 256 deep"}
        .as("generate"),
    Row{"generate-prompt-ids-fifo", Launch::kMpi2, gen("--prompt-ids {D}/h/fifo.safetensors"),
        "'{D}/h/fifo.safetensors' is a FIFO (named pipe), not a regular file"}
        .as("generate"),
    Row{"generate-latents-fifo", Launch::kAlone,
        gen("--prompt-ids {D}/h/prompt-ids.safetensors --latents {D}/h/fifo.safetensors"),
        "--latents file '{D}/h/fifo.safetensors' is a FIFO"}
        .as("generate"),
    Row{"generate-model-index-fifo", Launch::kAlone,
        "--model {R}/repo --prompt-ids {D}/h/prompt-ids.safetensors --frames 9 --height 32 --width 48",
        "model_index.json '{R}/repo/model_index.json' is a FIFO (named pipe), not a regular file",
        "--output {OUT}/logits.safetensors", "mkdir -p {R}/repo && mkfifo {R}/repo/model_index.json"}
        .as("generate"),
    Row{"generate-scheduler-config-fifo", Launch::kMpi2,
        "--model {R}/repo --prompt-ids {D}/h/prompt-ids.safetensors --frames 9 --height 32 --width 48 --steps 2",
        "scheduler config '{R}/repo/scheduler/scheduler_config.json' is a FIFO", "--output {OUT}/logits.safetensors",
        std::string(kRepoCopy) + " && rm {R}/repo/scheduler/scheduler_config.json && "
                                 "mkfifo {R}/repo/scheduler/scheduler_config.json"}
        .as("generate"),
    {"model-weights-fifo", Launch::kMpi2, "--model {D}/m/weights-fifo --input {D}/in/ok.json",
     "safetensors file '{D}/m/weights-fifo/model.safetensors' is a FIFO (named pipe), not a regular file"},
    {"model-config-directory", Launch::kAlone, "--model {D}/m/config-is-dir --input {D}/in/ok.json",
     "config.json' is a directory, not a regular file"},
    // --- outputs: special files refused (and left as they are), distinct from each other and from inputs ---
    Row{"output-char-device", Launch::kAlone, "", "{R}/null: it is a character device, not a regular file",
        "--output {R}/null", "mknod {R}/null c 1 3 || exit 99"}
        .then_check("[ -c {R}/null ] || echo '@@BAD: the device node was replaced'"),
    Row{"output-fifo", Launch::kMpi2, "", "{R}/pipe: it is a FIFO (named pipe), not a regular file", "--output {R}/pipe",
        "mkfifo {R}/pipe"}
        .then_check("[ -p {R}/pipe ] || echo '@@BAD: the FIFO was replaced'"),
    Row{"trace-fifo", Launch::kAlone, "--trace {R}/pipe", "trace {R}/pipe: it is a FIFO", "--output {OUT}/l.safetensors",
        "mkfifo {R}/pipe"}
        .then_check("[ -p {R}/pipe ] || echo '@@BAD: the FIFO was replaced'"),
    Row{"plan-json-directory", Launch::kAlone, "--json {OUT}/plan.json",
        "cannot write plan JSON {OUT}/plan.json: it is a directory", "", "mkdir {OUT}/plan.json"}
        .as("plan")
        .leaving("plan.json "),
    {"output-equals-trace", Launch::kMpi2, "--trace {OUT}/x.safetensors",
     "--output {OUT}/x.safetensors and --trace {OUT}/x.safetensors are the same file: give each its own",
     "--output {OUT}/x.safetensors"},
    Row{"output-equals-input", Launch::kAlone, "--input {R}/ids.json",
        "--output {R}/ids.json is the --input file ({R}/ids.json): writing it would destroy an input",
        "--output {R}/ids.json",
        "cp {D}/in/ok.json {R}/ids.json"}
        .then_check("cmp -s {R}/ids.json {D}/in/ok.json || echo '@@BAD: the input was changed'"),
    Row{"output-is-model-weights", Launch::kMpi2, "--model {R}/m --input {D}/in/ok.json",
        "is a file of the --model checkpoint ({R}/m/model.safetensors)", "--output {R}/m/model.safetensors",
        "mkdir -p {R}/m && cp {D}/cache/demo-llama-v1/* {R}/m/"}
        .then_check("cmp -s {R}/m/model.safetensors {D}/cache/demo-llama-v1/model.safetensors || echo '@@BAD: changed'"),
    Row{"generate-output-char-device", Launch::kAlone, gen("--prompt cat"),
        "{R}/null.safetensors: it is a character device, not a regular file", "--output {R}/null.safetensors",
        "mknod {R}/null.safetensors c 1 3 || exit 99"}
        .as("generate")
        .then_check("[ -c {R}/null.safetensors ] || echo '@@BAD: the device node was replaced'"),
    Row{"generate-output-is-prompts", Launch::kAlone, gen("--prompts {R}/p.safetensors"),
        "--output {R}/p.safetensors is the --prompts file ({R}/p.safetensors): writing it would destroy an input",
        "--output {R}/p.safetensors", "echo '{\"prompt\": \"a cat\"}' > {R}/p.safetensors"}
        .as("generate")
        .then_check("grep -q 'a cat' {R}/p.safetensors || echo '@@BAD: the input was changed'"),
    Row{"generate-output-is-repo-weights", Launch::kMpi2,
        "--model {R}/repo --prompt cat --frames 9 --height 32 --width 48 --steps 2",
        "is a file of the --model checkpoint ({R}/repo/vae/diffusion_pytorch_model.safetensors)",
        "--output {R}/repo/vae/diffusion_pytorch_model.safetensors", kRepoCopy}
        .as("generate")
        .then_check("[ -L {R}/repo/vae/diffusion_pytorch_model.safetensors ] || echo '@@BAD: the weights were replaced'"),
    Row{"generate-trace-equals-output", Launch::kAlone, gen("--prompt cat --trace {OUT}/v.safetensors"),
        "--output {OUT}/v.safetensors and --trace {OUT}/v.safetensors are the same file",
        "--output {OUT}/v.safetensors"}
        .as("generate"),
    {"output-name-too-long", Launch::kAlone, "", "its file name is 256 bytes, longer than the 255",
     "--output {OUT}/" + std::string(256, 'n')},
    // A temporary output held open (its name links to a FIFO that nobody reads, so the write blocks),
    // then SIGTERM or SIGINT: the temporary file goes with the process.
    {"sigterm-during-write", Launch::kAlone, "--input {D}/h/ids32.json", "@@SIGNAL-SENT", "--output {OUT}/logits.safetensors",
     "mkfifo {R}/fifo && exec 3<>{R}/fifo", signal_while_writing("TERM")},
    {"sigint-during-write", Launch::kAlone, "--input {D}/h/ids32.json", "@@SIGNAL-SENT", "--output {OUT}/logits.safetensors",
     "set -m; mkfifo {R}/fifo && exec 3<>{R}/fifo", signal_while_writing("INT")},
    // --- checkpoints and inputs are unambiguous; JSON nests at most 256 deep ---
    {"header-duplicate-key", Launch::kMpi2, "--model {D}/m/header-duplicate --input {D}/in/ok.json",
     "key 'model.layers.9.mlp.down_proj.weight' appears twice in one object"},
    {"index-duplicate-key", Launch::kAlone, "--model {D}/m/index-duplicate --input {D}/in/ok.json",
     "key 'model.layers.9.mlp.down_proj.weight' appears twice in one object"},
    {"tensor-in-two-shards", Launch::kMpi2, "--model {D}/m/two-shards --input {D}/in/ok.json",
     "tensor 'model.layers.9.mlp.down_proj.weight' is in shard 'model-00001-of-00002.safetensors', but the checkpoint "
     "index in '{D}/m/two-shards' puts it in shard 'model-00002-of-00002.safetensors'"},
    {"config-json-deep", Launch::kMpi2, "--model {D}/m/config-deep --input {D}/in/ok.json", "nested more than 256 deep"},
    {"input-deep", Launch::kAlone, "--input {D}/h/deep.json", "nested more than 256 deep"},
    {"input-duplicate-key", Launch::kAlone, "--input {D}/in/duplicate.json", "key 'input_ids' appears twice"},
    {"config-file-deep", Launch::kAlone, "--config {D}/cfg/deep.json", "nested more than 256 deep"},
    {"config-file-duplicate-key", Launch::kMpi2, "--config {D}/cfg/duplicate.json", "key 'micro_batches' appears twice"},
    {"config-file-help-key", Launch::kAlone, "--config {D}/cfg/help.json", "unknown key 'help'"},
    // --- names from files print escaped and cut ---
    {"tensor-name-escape", Launch::kAlone, "--model {D}/m/name-escape --input {D}/in/ok.json",
     "holds tensor 'evil\\x1b[2J\\x1b[31mred'"},
    {"tensor-name-huge", Launch::kMpi2, "--model {D}/m/name-huge --input {D}/in/ok.json",
     "holds tensor '" + std::string(200, 'n') + "... (1048576 bytes)'"},
    {"shard-name-nul", Launch::kAlone, "--model {D}/m/shard-nul --input {D}/in/ok.json",
     "points to shard 'model-00001\\x00.safetensors'"},
    // --- no orphans; no MPI start-up without an MPI runtime ---
    {"parent-killed-single-node", Launch::kSingleNode2, "--repeat 100000", "@@PARENT-KILLED",
     "--output {OUT}/logits.safetensors", "",
     "{CMD} & p=$!; sleep 4; kill -9 $p; wait $p; rc=$?; sleep 2; echo @@PARENT-KILLED; (exit $rc)"},
    {"ompi-env-without-mpirun", Launch::kAlone, "", "no MPI runtime started this process",
     "--output {OUT}/logits.safetensors",
     "export OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_LOCAL_RANK=1; "
     "unset OMPI_MCA_orte_hnp_uri PMIX_NAMESPACE"},
};

// gtest prints a failing row by its name, not as bytes.
void PrintTo(const Row& row, std::ostream* os) { *os << row.name; }

INSTANTIATE_TEST_SUITE_P(Matrix, BadInputTest, ::testing::ValuesIn(kRows),
                         [](const ::testing::TestParamInfo<Row>& info) {
                           std::string n = info.param.name;
                           for (char& c : n) c = (c == '-') ? '_' : c;
                           return n;
                         });

// Hostile but valid: what issue 24 must not refuse, and must keep byte-identical.
class HostileButValid : public BadInputTest {};

// Settings a node may set for itself (threads, log level, timeout, host cache budget) differ between
// the ranks: the run agrees, and its logits equal the one-rank run's byte for byte.
TEST_F(HostileButValid, PerRankSettingsMayDiffer) {
  const std::string pipeswap = fs::absolute(exe()).string() + " run --log-level warn --input " + dir_ +
                               "/in/ok.json --blocks-to-swap 2 --lazy-load --output " + dir_ + "/valid/";
  fs::create_directories(dir_ + "/valid");
  Result one = sh(pipeswap + "one.safetensors", 120);
  ASSERT_EQ(one.code, 0) << one.output;
  const std::string own = " --threads 1 --log-level error --comm-timeout 30 --max-memory 64MB";
  Result mpmd = sh("mpirun -np 1 " + pipeswap + "mpmd.safetensors --device-chain cpu,cpu : -np 1 " + pipeswap +
                       "ignored.safetensors --device-chain cpu,cpu" + own,
                   120);
  ASSERT_EQ(mpmd.code, 0) << mpmd.output;
  EXPECT_TRUE(same_bytes(dir_ + "/valid/one.safetensors", dir_ + "/valid/mpmd.safetensors"));
  EXPECT_FALSE(fs::exists(dir_ + "/valid/ignored.safetensors")) << "only rank 0 writes";
  const std::string env = "WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$((20000 + $$ % 30000)) ";
  Result tcp = sh("(RANK=0 LOCAL_RANK=0 " + env + pipeswap + "tcp.safetensors --device-chain cpu,cpu) & p=$!; " +
                      "RANK=1 LOCAL_RANK=1 " + env + pipeswap + "ignored.safetensors --device-chain cpu,cpu" + own +
                      "; r1=$?; wait $p; r0=$?; (exit $((r0 + r1)))",
                  120);
  ASSERT_EQ(tcp.code, 0) << tcp.output;
  EXPECT_TRUE(same_bytes(dir_ + "/valid/one.safetensors", dir_ + "/valid/tcp.safetensors"));
}

// A legal file name of 252 bytes: the temporary name is cut to fit 255, and nothing else is left.
TEST_F(HostileButValid, LongOutputNameIsWritten) {
  const std::string out = dir_ + "/valid/long";
  fs::create_directories(out);
  const std::string name = out + "/" + std::string(252 - 12, 'n') + ".safetensors";
  Result r = sh(exe() + " run --log-level warn --output " + name, 120);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::is_regular_file(name));
  EXPECT_EQ(std::distance(fs::directory_iterator(out), fs::directory_iterator()), 1) << "a temporary file was left";
}

// An output that holds NaN (here from a NaN row of lm_head) is written, and the summary says so with
// the counts; the exit status stays 0.
TEST_F(HostileButValid, NonFiniteOutputIsAWarningWithCounts) {
  // Its own directory: under sharding the tests that also make it may run in another process.
  fs::create_directories(dir_ + "/valid");
  const std::string out = dir_ + "/valid/nan.safetensors";
  Result r = sh(exe() + " run --model " + dir_ + "/m/nan-weights --input " + dir_ + "/in/ok.json --output " + out, 120);
  ASSERT_EQ(r.code, 0) << r.output;
  // Every logit of vocabulary entry 0 is NaN: 2 sequences x 3 tokens.
  EXPECT_THAT(r.output, HasSubstr("warning: logits holds 6 NaN and 0 infinite value(s) of 6144"));
  Result clean = sh(exe() + " run --input " + dir_ + "/in/ok.json --output " + dir_ + "/valid/clean.safetensors", 120);
  ASSERT_EQ(clean.code, 0) << clean.output;
  EXPECT_THAT(clean.output, Not(HasSubstr("NaN"))) << "no warning for finite logits";
}

}  // namespace
