// The bad-input matrix: one row per wrong flag, config file, device chain, checkpoint, input file or
// output path, each given to the real executable (alone, under `mpirun -np 2`, or in single-node
// mode with two TCP workers). Every row must
//   - print its own message (a substring naming what is wrong),
//   - exit non-zero (under mpirun: the job, which MPI_Abort ends on every rank; no rank may go on),
//   - end within seconds (no hang: a rank left waiting for a failed peer is the typical bug),
//   - leave its output directory empty (no partial or temporary file), and no process behind.
// Checkpoints are variants of the built-in demo model (12 Llama blocks; with two ranks rank 0 owns
// blocks 0..5, rank 1 blocks 6..11), so a broken tensor of block 9 is seen by rank 1 only.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>

#include <nlohmann/json.hpp>

#include "pipeswap/core/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::ordered_json;
using ::testing::HasSubstr;

namespace {

using namespace pipeswap::test_support;

enum class Launch { kAlone, kMpi2, kSingleNode2 };

struct Row {
  std::string name;  // also the row's directory; [a-z0-9-]
  Launch launch;
  std::string args;     // after `pipeswap run`; {D} is the suite's directory, {OUT} the row's output dir
  std::string message;  // what the output must contain
  // How the output path is given: default --output {OUT}/logits.safetensors; "" when args carry it.
  std::string output = "--output {OUT}/logits.safetensors";
  // Shell lines run before pipeswap, in the same (private mount namespace) shell.
  std::string setup = "";
  // The command line around pipeswap's: {CMD} is `[mpirun -np 2] pipeswap run ...`.
  std::string wrap = "{CMD}";
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
  auto expand = [&](std::string s) { return replace_all(replace_all(s, "{OUT}", out), "{D}", dir_); };
  std::string launch;
  if (row.launch == Launch::kMpi2) launch = "mpirun -np 2 ";
  std::string args = expand(row.args);
  if (row.launch == Launch::kSingleNode2) args += " --device-chain cpu,cpu";
  // Quiet unless the row sets --log-level itself (the last value wins).
  const std::string cmd =
      launch + fs::absolute(exe()).string() + " run --log-level warn " + args + " " + expand(row.output);
  const std::string script = rdir + "/run.sh";
  std::ofstream(script) << "set -u\ncd " << rdir << "\n"
                        << expand(row.setup) << "\n"
                        << replace_all(expand(row.wrap), "{CMD}", cmd) << "\n"
                        << "rc=$?\necho \"@@LEFT[$(ls -A " << out << " | tr '\\n' ' ')]\"\nexit $rc\n";
  // Root may mount in a mount namespace of its own; elsewhere the tmpfs rows skip (exit 99).
  static const bool private_mounts = sh("unshare -m true").code == 0;
  Result r = sh((private_mounts ? "unshare -m bash " : "bash ") + script, 90);
  if (std::getenv("BAD_INPUT_SHOW")) std::cout << row.name << " (exit " << r.code << "):\n" << r.output;
  if (r.code == 99) GTEST_SKIP() << "this row's set-up cannot run here: " << r.output;
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, 124) << "hung: " << r.output;
  EXPECT_LT(r.seconds, 30) << r.output;
  EXPECT_THAT(r.output, HasSubstr(expand(row.message)));
  EXPECT_THAT(r.output, HasSubstr("@@LEFT[]")) << "a partial or temporary output file was left behind";
  // No process of this row is left (the [r] keeps pgrep's own shell from matching itself).
  const std::string marker = replace_all(rdir, "/rows/", "/[r]ows/");
  Result left = sh("pgrep -af \"" + marker + "\" || true");
  EXPECT_EQ(left.output, "") << "processes left behind";
}

// A tmpfs over the output directory, read-only or a few KiB (the logits are 2 MiB); exit 99 where
// mounting is not allowed (unprivileged containers) so the row is skipped, not passed.
const char* kReadOnlyOut = "mount -t tmpfs -o ro,size=64k tmpfs {OUT} || exit 99";
const char* kFullOut = "mount -t tmpfs -o size=64k tmpfs {OUT} || exit 99";
// /dev/full under the temporary name pipeswap writes first (<output>.tmp.<pid>): a subshell links it
// under its own pid, then `exec` keeps that pid for pipeswap.
const char* kDevFullOut = "( ln -s /dev/full {OUT}/logits.safetensors.tmp.$BASHPID && exec {CMD} )";

const Row kRows[] = {
    // --- flags ---
    {"unknown-flag", Launch::kAlone, "--frobnicate 3", "--frobnicate"},
    {"unknown-flag-mpi", Launch::kMpi2, "--blocks-to-swapp 3", "--blocks-to-swapp"},
    {"micro-batches-not-a-number", Launch::kAlone, "--micro-batches lots", "--micro-batches"},
    {"micro-batches-zero", Launch::kMpi2, "--micro-batches 0", "--micro-batches must be at least 1 (got 0)"},
    {"micro-batches-above-batch", Launch::kMpi2, "--micro-batches 9", "more than the 8 sequence(s)"},
    {"comm-timeout-negative", Launch::kAlone, "--comm-timeout -1", "--comm-timeout must be positive"},
    {"threads-negative", Launch::kAlone, "--threads -2", "--threads must be 0 (automatic) or positive"},
    {"threads-too-big", Launch::kAlone, "--threads 99999999999", "--threads"},
    {"swap-and-ratio", Launch::kMpi2, "--blocks-to-swap 2 --offload-ratio 0.5",
     "--blocks-to-swap and --offload-ratio both given"},
    {"blocks-to-swap-negative", Launch::kAlone, "--blocks-to-swap=-3", "--blocks-to-swap -3 is negative"},
    {"offload-ratio-above-one", Launch::kAlone, "--offload-ratio 1.5", "--offload-ratio"},
    {"prefetch-depth-zero", Launch::kAlone, "--prefetch-depth 0", "--prefetch-depth must be at least 1"},
    {"disk-workers-zero", Launch::kAlone, "--num-disk-workers 0 --lazy-load --blocks-to-swap 2",
     "--num-disk-workers must be at least 1"},
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
    {"output-disk-full-tmpfs", Launch::kMpi2, "", "No space left on device", "--output {OUT}/logits.safetensors",
     kFullOut},
    {"output-disk-full-single-node", Launch::kSingleNode2, "", "No space left on device",
     "--output {OUT}/logits.safetensors", kFullOut},
    {"output-dev-full", Launch::kAlone, "", "No space left on device", "--output {OUT}/logits.safetensors", "",
     kDevFullOut},
};

// gtest prints a failing row by its name, not as bytes.
void PrintTo(const Row& row, std::ostream* os) { *os << row.name; }

INSTANTIATE_TEST_SUITE_P(Matrix, BadInputTest, ::testing::ValuesIn(kRows),
                         [](const ::testing::TestParamInfo<Row>& info) {
                           std::string n = info.param.name;
                           for (char& c : n) c = (c == '-') ? '_' : c;
                           return n;
                         });

}  // namespace
