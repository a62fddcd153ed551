// Unit tests for core: the safetensors reader/writer and the Hugging Face checkpoint directory.
// Malformed files are written byte by byte so each validation path is hit on purpose, and every
// error test checks the text a user would read, not just the exception type.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <torch/types.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "expect_error.h"
#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/safetensors.h"

namespace pipeswap {
namespace {

namespace fs = std::filesystem;


// A fresh directory under /tmp, removed with everything in it at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/pipeswap_core_test_XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// A safetensors file by hand: length prefix, the header text as given, then data_bytes of filler.
std::string raw_safetensors(const std::string& header, size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\x5a');
}

std::vector<std::string> dir_entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// The tensor's bytes as a flat uint8 tensor, so NaN payloads and -0.0 compare bit for bit.
torch::Tensor raw_bytes(const torch::Tensor& t) { return t.contiguous().reshape({-1}).view(torch::kUInt8); }

void expect_bit_equal(const torch::Tensor& expected, const torch::Tensor& got) {
  EXPECT_EQ(expected.scalar_type(), got.scalar_type());
  EXPECT_EQ(expected.sizes(), got.sizes());
  EXPECT_TRUE(got.device().is_cpu());
  EXPECT_TRUE(torch::equal(raw_bytes(expected), raw_bytes(got)));
}

// ---------------------------------------------------------------------------------------------
// Round trips through write_safetensors and SafetensorsFile.

TEST(Safetensors, RoundTripIsBitExact) {
  TempDir tmp;
  at::manual_seed(7);
  // Random bit patterns viewed as bf16/fp16 cover NaN payloads, infinities, subnormals and -0.0.
  auto bf16 = torch::randint(-32768, 32768, {4, 16}, torch::kInt16).view(torch::kBFloat16);
  auto fp16 = torch::randint(-32768, 32768, {3, 5, 7}, torch::kInt16).view(torch::kHalf);
  auto f32 = torch::randn({6, 3});
  auto i64 = torch::tensor({std::numeric_limits<int64_t>::min(), int64_t{-1}, int64_t{0}, int64_t{42},
                            std::numeric_limits<int64_t>::max()});
  auto scalar = torch::tensor(3.25f).reshape({});  // 0-d
  auto empty = torch::empty({0, 4}, torch::kBFloat16);
  auto transposed = torch::arange(12, torch::kFloat32).reshape({3, 4}).t();  // not contiguous
  const std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"model.layers.0.w_bf16", bf16}, {"fp16", fp16},   {"f32", f32},          {"i64", i64},
      {"scalar", scalar},              {"empty", empty}, {"transposed", transposed}};
  const std::string path = tmp / "rt.safetensors";
  write_safetensors(path, tensors);
  EXPECT_EQ(dir_entries(tmp.path()), std::vector<std::string>{"rt.safetensors"});  // no temp file left

  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->data_offset() % 8, 0u) << "header must be padded to 8 bytes";
  ASSERT_EQ(file->tensors().size(), tensors.size());
  // Written in the order given, so the offset-sorted list keeps that order.
  for (size_t i = 0; i < tensors.size(); ++i) EXPECT_EQ(file->tensors()[i].name, tensors[i].first);
  EXPECT_EQ(file->at("scalar").shape, std::vector<int64_t>{});
  EXPECT_EQ(file->at("scalar").numel(), 1);
  EXPECT_EQ(file->at("empty").nbytes(), 0u);
  EXPECT_EQ(file->at("model.layers.0.w_bf16").dtype, DType::BF16);
  EXPECT_EQ(file->at("fp16").dtype, DType::F16);
  EXPECT_EQ(file->at("i64").dtype, DType::I64);
  EXPECT_TRUE(file->metadata().empty());

  uint64_t total = 0;
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    expect_bit_equal(t, file->read(name));
    total += static_cast<uint64_t>(t.numel()) * t.element_size();
  }
  EXPECT_EQ(file->bytes_read(), total);
  EXPECT_EQ(file->file_size(), file->data_offset() + total);
}

TEST(Safetensors, ReadIntoCountsBytes) {
  TempDir tmp;
  auto a = torch::arange(10, torch::kInt32);
  auto b = torch::arange(6, torch::kFloat64);
  write_safetensors(tmp / "x.safetensors", {{"a", a}, {"b", b}});
  auto file = SafetensorsFile::open(tmp / "x.safetensors");
  EXPECT_EQ(file->bytes_read(), 0u) << "open must read no tensor data";
  std::vector<double> buf(6);
  file->read_into(file->at("b"), buf.data());
  EXPECT_EQ(buf, (std::vector<double>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(file->bytes_read(), 48u);
  EXPECT_EQ(file->find("nope"), nullptr);
  EXPECT_ERROR(file->at("nope"), CheckpointError, "tensor 'nope' is not in safetensors file", "x.safetensors");
}

TEST(Safetensors, MetadataRoundTrip) {
  TempDir tmp;
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "gr\xc3\xbc\xc3\x9f \"quoted\""}};
  write_safetensors(tmp / "m.safetensors", {{"w", torch::ones({2})}}, meta);
  auto file = SafetensorsFile::open(tmp / "m.safetensors");
  EXPECT_EQ(file->metadata(), meta);
  ASSERT_EQ(file->tensors().size(), 1u) << "__metadata__ is not a tensor";
}

TEST(Safetensors, NoTensorsIsAValidFile) {
  TempDir tmp;
  write_safetensors(tmp / "e.safetensors", {});
  auto file = SafetensorsFile::open(tmp / "e.safetensors");
  EXPECT_TRUE(file->tensors().empty());
  EXPECT_EQ(file->file_size(), 16u);  // "{}" padded to 8
}

TEST(Safetensors, ReadsHandWrittenFileWithoutPadding) {
  // Other writers need not pad or order entries; gaps between tensors are allowed too.
  TempDir tmp;
  const std::string header =
      R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]},"a":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}})";
  std::string bytes = le64(header.size()) + header + std::string("\x01\x00\x02\x00??\x07\x09", 8);
  write_file(tmp / "h.safetensors", bytes);
  auto file = SafetensorsFile::open(tmp / "h.safetensors");
  ASSERT_EQ(file->tensors().size(), 2u);
  EXPECT_EQ(file->tensors()[0].name, "a");
  EXPECT_TRUE(torch::equal(file->read("a"), torch::tensor({1, 2}, torch::kInt16)));
  EXPECT_TRUE(torch::equal(file->read("b"), torch::tensor({7, 9}, torch::kUInt8)));
}

// ---------------------------------------------------------------------------------------------
// Malformed files: each is refused at open with a message naming the file and the problem.

class MalformedSafetensors : public ::testing::Test {
 protected:
  // Writes the bytes and expects open() to fail mentioning the path and every needle.
  void expect_refused(const std::string& bytes, std::initializer_list<std::string> needles) {
    write_file(path_, bytes);
    try {
      SafetensorsFile::open(path_);
      ADD_FAILURE() << "open accepted a malformed file; expected '" << *needles.begin() << "'";
    } catch (const CheckpointError& e) {
      EXPECT_PRED_FORMAT2(testing::IsSubstring, path_, e.what());
      for (const std::string& needle : needles) EXPECT_PRED_FORMAT2(testing::IsSubstring, needle, e.what());
    }
  }
  TempDir tmp_;
  std::string path_ = tmp_ / "bad.safetensors";
};

TEST_F(MalformedSafetensors, ShorterThanEightBytes) {
  expect_refused("", {"shorter than the 8-byte header length", "re-download or re-save the checkpoint"});
  expect_refused("abc", {"is 3 bytes, shorter than the 8-byte header length"});
}

TEST_F(MalformedSafetensors, HeaderLongerThanFile) {
  expect_refused(le64(100) + "{}", {"header longer than the file", "100 header bytes"});
}

TEST_F(MalformedSafetensors, HugeHeaderLengthFailsBeforeAllocating) {
  // Checked before the file size and before any allocation: were 1 TiB allocated first, this would
  // fail with std::bad_alloc (or take the machine down), not with CheckpointError.
  expect_refused(le64(uint64_t{1} << 40) + "{}", {"claims a 1099511627776-byte JSON header", "limit"});
  expect_refused(le64(~uint64_t{0}) + "{}", {"byte JSON header", "limit"});
}

TEST_F(MalformedSafetensors, NotJson) {
  expect_refused(raw_safetensors("this is not json", 0), {"header is not valid JSON"});
  expect_refused(raw_safetensors(R"({"a": {"dtype": "F32",)", 0), {"header is not valid JSON"});
}

TEST_F(MalformedSafetensors, JsonButNotAnObject) {
  expect_refused(raw_safetensors("[1, 2]", 0), {"header is JSON but not an object", "array"});
}

TEST_F(MalformedSafetensors, UnknownDtype) {
  expect_refused(raw_safetensors(R"({"a":{"dtype":"C64","shape":[2],"data_offsets":[0,2]}})", 2),
                 {"tensor 'a' has unknown dtype 'C64'", "known: F64, F32, F16, BF16"});
}

TEST_F(MalformedSafetensors, ShapeBytesMismatch) {
  expect_refused(raw_safetensors(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 20),
                 {"shape/bytes mismatch for tensor 'w'", "shape [2, 3] of F32 needs 24 bytes", "hold 20"});
}

TEST_F(MalformedSafetensors, ShapeProductOverflowIsCaught) {
  // 2^32 * 2^32 * 4 wraps to 0 in uint64: without checked multiplication this would pass as empty.
  expect_refused(
      raw_safetensors(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0),
      {"shape/bytes mismatch for tensor 'w'", "more than 2^64"});
}

TEST_F(MalformedSafetensors, ZeroDimensionMakesAnEmptyTensor) {
  // Not malformed: a zero anywhere in the shape means zero bytes, however large the other dimensions.
  write_file(path_,
             raw_safetensors(R"({"w":{"dtype":"F32","shape":[0,9223372036854775807],"data_offsets":[0,0]}})", 0));
  EXPECT_EQ(SafetensorsFile::open(path_)->at("w").nbytes(), 0u);
}

TEST_F(MalformedSafetensors, NegativeOrMissingFields) {
  struct Case {
    std::string header;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {R"({"a":[1,2]})", "header entry for tensor 'a' is not an object"},
      {R"({"a":{"shape":[1],"data_offsets":[0,4]}})", "tensor 'a' has no \"dtype\" string"},
      {R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", "tensor 'a' has no \"dtype\" string"},
      {R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", "tensor 'a' has no \"shape\" array"},
      {R"({"a":{"dtype":"F32","shape":4,"data_offsets":[0,4]}})", "tensor 'a' has no \"shape\" array"},
      {R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "not a non-negative integer"},
      {R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", "not a non-negative integer"},
      {R"({"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}})", "not a non-negative integer"},
      {R"({"a":{"dtype":"F32","shape":[1]}})", "needs \"data_offsets\" as [begin, end]"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", "needs \"data_offsets\" as [begin, end]"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", "needs \"data_offsets\" as [begin, end]"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", "needs \"data_offsets\" as [begin, end]"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", "begin after end"},
      {R"({"__metadata__":"pt"})", "\"__metadata__\" must be an object"},
      {R"({"__metadata__":{"format":1}})", "\"__metadata__\" entry 'format' is number, not a string"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    expect_refused(raw_safetensors(c.header, 16), {c.needle});
  }
}

TEST_F(MalformedSafetensors, TruncatedData) {
  expect_refused(raw_safetensors(R"({"w":{"dtype":"F32","shape":[16],"data_offsets":[0,64]}})", 60),
                 {"is truncated", "tensor 'w' needs data bytes [0, 64)", "holds only 60 bytes"});
}

TEST_F(MalformedSafetensors, OverlappingOffsets) {
  expect_refused(raw_safetensors(R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
                                 R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                 16),
                 {"tensors 'a' [0, 8) and 'b' [4, 12) have overlapping data_offsets"});
}

TEST_F(MalformedSafetensors, MissingFile) {
  EXPECT_ERROR(SafetensorsFile::open(tmp_ / "absent.safetensors"), CheckpointError,
               "cannot open safetensors file", "absent.safetensors", "No such file or directory");
}

TEST(Safetensors, TruncatedAfterOpenNamesTheTensor) {
  TempDir tmp;
  const std::string path = tmp / "t.safetensors";
  write_safetensors(path, {{"first", torch::ones({4})}, {"second", torch::ones({4})}});
  auto file = SafetensorsFile::open(path);
  // Cut the file in the middle of "second": "first" still reads, "second" must fail loudly.
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(file->data_offset() + 20)), 0);
  EXPECT_TRUE(torch::equal(file->read("first"), torch::ones({4})));
  std::vector<float> buf(4);
  EXPECT_ERROR(file->read_into(file->at("second"), buf.data()), CheckpointError, "truncated after it was opened",
               "tensor 'second'", path, "now " + std::to_string(file->data_offset() + 20) + " bytes");
  EXPECT_EQ(file->bytes_read(), 16u) << "a failed read counts nothing";
}

// ---------------------------------------------------------------------------------------------
// Writer failures: IoError naming the path, and no temp file left behind.

TEST(SafetensorsWriter, MissingDirectory) {
  TempDir tmp;
  const std::string path = tmp / "no/such/dir/out.safetensors";
  EXPECT_ERROR(write_safetensors(path, {{"w", torch::ones({2})}}), IoError, path, "No such file or directory",
               "check that the directory exists");
  EXPECT_TRUE(dir_entries(tmp.path()).empty());
}

TEST(SafetensorsWriter, RenameFailureRemovesTempFile) {
  TempDir tmp;
  // The target is a non-empty directory: the temp file is written fine, the rename fails.
  const std::string path = tmp / "out.safetensors";
  fs::create_directory(path);
  write_file(path + "/keep", "x");
  EXPECT_ERROR(write_safetensors(path, {{"w", torch::ones({2})}}), IoError, path, "renaming");
  EXPECT_EQ(dir_entries(tmp.path()), std::vector<std::string>{"out.safetensors"});
}

TEST(SafetensorsWriter, FullDiskRemovesTempFile) {
  // The writer opens "<path>.tmp.<pid>"; a symlink there to /dev/full makes every write fail with
  // ENOSPC, without mounting a small file system. Unlinking the temp name removes only the link.
  struct stat st {};
  if (::stat("/dev/full", &st) != 0 || !S_ISCHR(st.st_mode)) GTEST_SKIP() << "no /dev/full";
  TempDir tmp;
  const std::string path = tmp / "out.safetensors";
  const std::string tmp_name = path + ".tmp." + std::to_string(::getpid());
  ASSERT_EQ(::symlink("/dev/full", tmp_name.c_str()), 0);
  EXPECT_ERROR(write_safetensors(path, {{"w", torch::ones({1024})}}), IoError, path, "No space left on device",
               "free space");
  EXPECT_TRUE(dir_entries(tmp.path()).empty());
  EXPECT_EQ(::stat("/dev/full", &st), 0);
}

TEST(SafetensorsWriter, RejectsDuplicateNames) {
  TempDir tmp;
  EXPECT_ERROR(write_safetensors(tmp / "d.safetensors", {{"w", torch::ones({1})}, {"w", torch::ones({1})}}), IoError,
               "tensor name 'w' is reserved or given twice");
  EXPECT_TRUE(dir_entries(tmp.path()).empty());
}

TEST(SafetensorsWriter, ReplacesExistingFile) {
  TempDir tmp;
  const std::string path = tmp / "r.safetensors";
  write_safetensors(path, {{"old", torch::ones({100})}});
  write_safetensors(path, {{"new", torch::zeros({2}, torch::kInt8)}});
  auto file = SafetensorsFile::open(path);
  ASSERT_EQ(file->tensors().size(), 1u);
  EXPECT_EQ(file->tensors()[0].name, "new");
}

// ---------------------------------------------------------------------------------------------
// Checkpoint directories.

class CheckpointDir : public ::testing::Test {
 protected:
  void write_config() { write_file(tmp_ / "config.json", R"({"model_type": "llama", "hidden_size": 8})"); }
  // Two shards: a and b in the first, c in the second, listed by an index.
  void write_sharded() {
    write_config();
    write_safetensors(tmp_ / kShard1, {{"a", torch::ones({4})}, {"b", torch::ones({2, 2}, torch::kInt64)}});
    write_safetensors(tmp_ / kShard2, {{"c", torch::full({3, 5}, 1.5, torch::kBFloat16)}});
    write_file(tmp_ / "model.safetensors.index.json",
               std::string(R"({"metadata": {"total_size": 78}, "weight_map": {"a": ")") + kShard1 + R"(", "b": ")" +
                   kShard1 + R"(", "c": ")" + kShard2 + R"("}})");
  }
  static constexpr const char* kShard1 = "model-00001-of-00002.safetensors";
  static constexpr const char* kShard2 = "model-00002-of-00002.safetensors";
  TempDir tmp_;
};

TEST_F(CheckpointDir, SingleFile) {
  write_config();
  write_safetensors(tmp_ / "model.safetensors",
                    {{"embed", torch::arange(6, torch::kFloat32)}, {"norm", torch::ones({3})}});
  auto ck = Checkpoint::open(tmp_.path());
  EXPECT_EQ(ck->dir(), tmp_.path());
  EXPECT_EQ(ck->config().at("model_type"), "llama");
  EXPECT_EQ(ck->tensor_names(), (std::vector<std::string>{"embed", "norm"}));
  EXPECT_TRUE(ck->has("embed"));
  EXPECT_FALSE(ck->has("lm_head"));
  EXPECT_EQ(ck->opened_files(), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(ck->bytes_read(), 0u);
  TensorLocation loc = ck->locate("embed");
  ASSERT_NE(loc.info, nullptr);
  EXPECT_EQ(loc.info->name, "embed");
  EXPECT_TRUE(torch::equal(loc.file->read("embed"), torch::arange(6, torch::kFloat32)));
  EXPECT_EQ(ck->bytes_read(), 24u);
}

TEST_F(CheckpointDir, ShardedOpensOnlyWhatIsLocated) {
  write_sharded();
  auto ck = Checkpoint::open(tmp_.path());
  EXPECT_EQ(ck->tensor_names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(ck->opened_files().empty()) << "shards open lazily";

  TensorLocation c = ck->locate("c");
  EXPECT_EQ(ck->opened_files(), std::vector<std::string>{kShard2});
  EXPECT_EQ(ck->bytes_read(), 0u) << "locate reads headers only";
  std::vector<uint16_t> buf(15);
  c.file->read_into(*c.info, buf.data());
  EXPECT_EQ(ck->bytes_read(), 30u);
  expect_bit_equal(torch::full({3, 5}, 1.5, torch::kBFloat16), c.file->read("c"));

  // The same shard object is reused, not reopened.
  EXPECT_EQ(ck->locate("c").file.get(), c.file.get());
  TensorLocation a = ck->locate("a");
  EXPECT_EQ(ck->opened_files(), (std::vector<std::string>{kShard1, kShard2}));
  EXPECT_EQ(ck->bytes_read(), 60u);
  std::vector<float> fa(4);
  a.file->read_into(*a.info, fa.data());
  EXPECT_EQ(ck->bytes_read(), 76u);
}

TEST_F(CheckpointDir, ConcurrentLocateOpensEachShardOnce) {
  // Disk worker threads locate tensors at the same time; each shard must be opened once and shared.
  write_sharded();
  auto ck = Checkpoint::open(tmp_.path());
  std::vector<const SafetensorsFile*> seen(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < seen.size(); ++i) {
    threads.emplace_back([&, i] { seen[i] = ck->locate(i % 2 ? "a" : "c").file.get(); });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ck->opened_files(), (std::vector<std::string>{kShard1, kShard2}));
  for (size_t i = 2; i < seen.size(); ++i) EXPECT_EQ(seen[i], seen[i % 2]);
  EXPECT_NE(seen[0], seen[1]);
}

TEST_F(CheckpointDir, IndexWinsOverSingleFile) {
  write_sharded();
  write_safetensors(tmp_ / "model.safetensors", {{"stale", torch::ones({1})}});
  auto ck = Checkpoint::open(tmp_.path());
  EXPECT_FALSE(ck->has("stale"));
  EXPECT_TRUE(ck->has("c"));
}

TEST_F(CheckpointDir, MissingShard) {
  write_sharded();
  fs::remove(tmp_ / kShard2);
  EXPECT_ERROR(Checkpoint::open(tmp_.path()), CheckpointError,
               std::string("checkpoint shard '") + kShard2 + "' listed in", "is missing", "re-download");
}

TEST_F(CheckpointDir, IndexNamesTensorAbsentFromShard) {
  write_config();
  write_safetensors(tmp_ / kShard1, {{"a", torch::ones({4})}});
  write_file(tmp_ / "model.safetensors.index.json",
             std::string(R"({"weight_map": {"a": ")") + kShard1 + R"(", "ghost": ")" + kShard1 + R"("}})");
  auto ck = Checkpoint::open(tmp_.path());
  EXPECT_TRUE(ck->has("ghost"));
  EXPECT_ERROR(ck->locate("ghost"), CheckpointError, "tensor 'ghost'", std::string("shard '") + kShard1 + "'",
               "does not list it");
  EXPECT_NE(ck->locate("a").info, nullptr);
}

TEST_F(CheckpointDir, LocateUnknownTensor) {
  write_sharded();
  auto ck = Checkpoint::open(tmp_.path());
  EXPECT_ERROR(ck->locate("model.layers.99.mlp.up_proj.weight"), CheckpointError,
               "tensor 'model.layers.99.mlp.up_proj.weight' is not in the checkpoint", tmp_.path());
  EXPECT_TRUE(ck->opened_files().empty());
}

TEST_F(CheckpointDir, ShardNameMustStayInDirectory) {
  write_config();
  write_file(tmp_ / "model.safetensors.index.json", R"({"weight_map": {"a": "../elsewhere.safetensors"}})");
  EXPECT_ERROR(Checkpoint::open(tmp_.path()), CheckpointError, "'../elsewhere.safetensors'",
               "not a plain file name");
  write_file(tmp_ / "model.safetensors.index.json", R"({"weight_map": {"a": ".."}})");
  EXPECT_ERROR(Checkpoint::open(tmp_.path()), CheckpointError, "not a plain file name");
}

TEST_F(CheckpointDir, BadIndex) {
  write_config();
  write_file(tmp_ / "model.safetensors.index.json", R"({"metadata": {}})");
  EXPECT_ERROR(Checkpoint::open(tmp_.path()), CheckpointError, "has no \"weight_map\" object");
  write_file(tmp_ / "model.safetensors.index.json", R"({"weight_map": )");
  EXPECT_ERROR(Checkpoint::open(tmp_.path()), CheckpointError, "checkpoint index", "is not valid JSON");
  write_file(tmp_ / "model.safetensors.index.json", R"({"weight_map": {"a": 3}})");
  EXPECT_ERROR(Checkpoint::open(tmp_.path()), CheckpointError, "weight_map entry for tensor 'a' is number");
}

TEST_F(CheckpointDir, MissingConfig) {
  write_safetensors(tmp_ / "model.safetensors", {{"w", torch::ones({1})}});
  EXPECT_ERROR(Checkpoint::open(tmp_.path()), CheckpointError, tmp_ / "config.json", "is missing");
}

TEST_F(CheckpointDir, BadConfig) {
  write_safetensors(tmp_ / "model.safetensors", {{"w", torch::ones({1})}});
  write_file(tmp_ / "config.json", "{\"hidden_size\": ");
  EXPECT_ERROR(Checkpoint::open(tmp_.path()), CheckpointError, tmp_ / "config.json", "is not valid JSON");
  write_file(tmp_ / "config.json", "[]");
  EXPECT_ERROR(Checkpoint::open(tmp_.path()), CheckpointError, "is JSON but not an object");
}

TEST_F(CheckpointDir, NoWeights) {
  write_config();
  EXPECT_ERROR(Checkpoint::open(tmp_.path()), CheckpointError, "has neither model.safetensors nor "
               "model.safetensors.index.json");
}

TEST_F(CheckpointDir, MalformedSingleFileFailsAtOpen) {
  write_config();
  write_file(tmp_ / "model.safetensors", "abc");
  EXPECT_ERROR(Checkpoint::open(tmp_.path()), CheckpointError, "model.safetensors' is 3 bytes");
}

TEST(Checkpoint, MissingDirectory) {
  EXPECT_ERROR(Checkpoint::open("/tmp/pipeswap_no_such_model_dir"), CheckpointError,
               "model directory '/tmp/pipeswap_no_such_model_dir' does not exist: pass --model DIR with a Hugging "
               "Face checkpoint (config.json + model.safetensors)");
}

// ---------------------------------------------------------------------------------------------
// read_many: merged, aligned O_DIRECT reads must give exactly read_into's bytes, wherever the file
// lives and whether or not the filesystem takes O_DIRECT.

// One uint8 tensor of a hand-laid file: `gap` filler bytes before it, then `bytes` of its own.
struct Piece {
  std::string name;
  uint64_t bytes;
  uint64_t gap;
};

constexpr uint64_t kMiB = uint64_t{1} << 20;

// Sizes and gaps chosen against read_many's rules: odd sizes (nothing 4096-aligned, the header is
// 3 bytes off too), an empty tensor, a gap of exactly 1 MiB (merged) and one just over (split), a
// tensor crossing a 16 MiB request boundary, and the last one ending exactly at end of file.
std::vector<Piece> gapped_pieces() {
  return {{"a", 1, 0},
          {"b", 4095, 0},
          {"empty", 0, 0},
          {"c", 4097, 100},
          {"d", 2 * kMiB + 3, kMiB + 1},
          {"e", 700, kMiB},
          {"big", 16 * kMiB + 8197, kMiB + 1},
          {"tail", 12345, 0}};
}

// Writes the pieces with position-dependent bytes (gaps filled with 0xEE, never read into a tensor).
void write_gapped(const std::string& path, const std::vector<Piece>& pieces) {
  std::string header = "{";
  uint64_t off = 0;
  for (const Piece& p : pieces) {
    off += p.gap;
    header += fmt::format(R"({}"{}":{{"dtype":"U8","shape":[{}],"data_offsets":[{},{}]}})",
                          header.size() > 1 ? "," : "", p.name, p.bytes, off, off + p.bytes);
    off += p.bytes;
  }
  header += "}";
  header.append((8 - header.size() % 8 + 3) % 8, ' ');  // data starts 3 bytes past an 8-byte boundary
  std::string data(off, '\xee');
  // A cheap hash of the position: no two nearby bytes or 4 KiB pages alike, so a misplaced copy shows.
  off = 0;
  for (const Piece& p : pieces) {
    off += p.gap;
    for (uint64_t i = off; i < off + p.bytes; ++i) data[i] = static_cast<char>((i * 0x9E3779B97F4A7C15ull) >> 56);
    off += p.bytes;
  }
  write_file(path, le64(header.size()) + header + data);
}

// Whether other threads read the same file meanwhile, so bytes_read() deltas are not this call's.
enum class Sharing { kAlone, kConcurrent };

// Reads `names` (in that order) with one read_many into buffers that start 1 byte past an aligned
// address, and checks each against read_into.
void expect_read_many_matches(const SafetensorsFile& file, const std::vector<std::string>& names,
                              Sharing sharing = Sharing::kAlone) {
  std::vector<std::vector<char>> got(names.size());
  std::vector<ReadRequest> requests;
  uint64_t want_bytes = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    const TensorInfo& info = file.at(names[i]);
    got[i].assign(info.nbytes() + 1, '\0');
    requests.push_back({&info, got[i].data() + 1});
    want_bytes += info.nbytes();
  }
  const uint64_t before = file.bytes_read();
  file.read_many(requests);
  if (sharing == Sharing::kAlone) {
    EXPECT_EQ(file.bytes_read() - before, want_bytes) << "read_many counts tensor bytes only";
  }
  for (size_t i = 0; i < names.size(); ++i) {
    SCOPED_TRACE(names[i]);
    const TensorInfo& info = file.at(names[i]);
    std::vector<char> ref(info.nbytes());
    file.read_into(info, ref.data());
    EXPECT_TRUE(std::equal(ref.begin(), ref.end(), got[i].begin() + 1));
  }
}

std::vector<std::string> all_names_reversed() {
  std::vector<std::string> names;
  for (const Piece& p : gapped_pieces()) names.insert(names.begin(), p.name);
  return names;
}

// Sets an environment variable for one scope (tests run on one thread, so setenv is safe here).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    if (old != nullptr) old_ = old;
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_.has_value()) {
      ::setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// Every tensor, out of order, then a sparse subset and a duplicate: same bytes as read_into.
void check_read_many_everywhere(const std::string& path) {
  write_gapped(path, gapped_pieces());
  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->data_offset() % 8, 3u);
  EXPECT_EQ(file->at("tail").end + file->data_offset(), file->file_size()) << "last tensor must end at EOF";
  expect_read_many_matches(*file, all_names_reversed());
  expect_read_many_matches(*file, {"tail", "c", "a", "c"});
  expect_read_many_matches(*file, {"empty"});
  file->read_many({});  // nothing asked, nothing read
}

TEST(SafetensorsReadMany, MatchesReadIntoOnDisk) {
  TempDir tmp;
  const std::string path = tmp / "g.safetensors";
  check_read_many_everywhere(path);
  auto file = SafetensorsFile::open(path);
  expect_read_many_matches(*file, {"big"});
  // Not asserted: CI's /tmp may be a filesystem without O_DIRECT. Shown so a run says which path ran.
  std::cout << "[   INFO   ] O_DIRECT used under /tmp: " << (file->direct_io_used() ? "yes" : "no") << "\n";
  RecordProperty("direct_io_used_tmp", file->direct_io_used() ? 1 : 0);
}

TEST(SafetensorsReadMany, MatchesReadIntoOnTmpfs) {
  if (!fs::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  std::string dir = "/dev/shm/pipeswap_core_test_XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  const std::string path = dir + "/g.safetensors";
  // tmpfs refuses O_DIRECT before Linux 6.6 (fallback path) and accepts it since: both must match.
  check_read_many_everywhere(path);
  auto file = SafetensorsFile::open(path);
  expect_read_many_matches(*file, {"d", "e"});
  std::cout << "[   INFO   ] O_DIRECT used under /dev/shm: " << (file->direct_io_used() ? "yes" : "no") << "\n";
  RecordProperty("direct_io_used_shm", file->direct_io_used() ? 1 : 0);
  std::error_code ec;
  fs::remove_all(dir, ec);
}

TEST(SafetensorsReadMany, EnvVarTurnsDirectIoOff) {
  TempDir tmp;
  const std::string path = tmp / "g.safetensors";
  write_gapped(path, gapped_pieces());
  ScopedEnv env("PIPESWAP_NO_DIRECT_IO", "1");
  auto file = SafetensorsFile::open(path);
  expect_read_many_matches(*file, all_names_reversed());
  EXPECT_FALSE(file->direct_io_used());
}

// One thread per subset calls read_many on the same file at once; all see the right bytes and the
// file counts every one of them.
void expect_concurrent_reads(const std::string& path, const std::vector<Piece>& pieces,
                             const std::vector<std::vector<std::string>>& subsets) {
  write_gapped(path, pieces);
  auto file = SafetensorsFile::open(path);
  std::vector<std::thread> threads;
  uint64_t want = 0;
  for (const auto& names : subsets) {
    for (const auto& n : names) want += 2 * file->at(n).nbytes();  // read_many, then read_into to compare
    threads.emplace_back([&, names] { expect_read_many_matches(*file, names, Sharing::kConcurrent); });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(file->bytes_read(), want);
}

TEST(SafetensorsReadMany, ConcurrentCallersShareOneFile) {
  TempDir tmp;
  // The O_DIRECT descriptor is opened by whichever thread comes first; all must see the same bytes.
  expect_concurrent_reads(tmp / "g.safetensors", gapped_pieces(),
                          {{"a", "b", "c"}, {"d", "e"}, {"tail", "a"}, {"e", "c"}});
}

TEST(SafetensorsReadMany, TruncatedAfterOpenNamesTheTensor) {
  TempDir tmp;
  const std::string path = tmp / "t.safetensors";
  auto first = torch::arange(1000, torch::kInt32);
  auto second = torch::ones({20000}, torch::kInt32);
  write_safetensors(path, {{"first", first}, {"second", second}, {"third", torch::ones({4})}});
  auto file = SafetensorsFile::open(path);
  const off_t cut = static_cast<off_t>(file->data_offset() + file->at("second").begin + 30000);
  ASSERT_EQ(::truncate(path.c_str(), cut), 0);
  std::vector<int32_t> a(1000), b(20000);
  std::vector<float> c(4);
  EXPECT_ERROR(file->read_many(
                   {{&file->at("third"), c.data()}, {&file->at("second"), b.data()}, {&file->at("first"), a.data()}}),
               CheckpointError, "truncated after it was opened", "tensor 'second'", path,
               "now " + std::to_string(cut) + " bytes");
  EXPECT_TRUE(std::equal(a.begin(), a.end(), first.data_ptr<int32_t>())) << "bytes before the cut still arrive";
  EXPECT_EQ(file->bytes_read(), 4000u) << "only the tensors delivered whole are counted";
}

// One extent of several 16 MiB requests: the helper thread reads request i+1 while request i is
// copied out, so tensors crossing request boundaries, a tensor of exactly one request's size and a
// tensor longer than two requests must land whole, and a file whose size is not a multiple of 4096
// ends the last request short.
std::vector<Piece> long_extent_pieces() {
  return {{"x", 3 * 16 * kMiB + 12345, 0}, {"y", 5 * kMiB + 1, 100}, {"z", 16 * kMiB, 4096}, {"w", 777, 0}};
}

TEST(SafetensorsReadMany, ExtentOfManyRequests) {
  TempDir tmp;
  const std::string path = tmp / "long.safetensors";
  write_gapped(path, long_extent_pieces());
  auto file = SafetensorsFile::open(path);
  EXPECT_NE(file->file_size() % 4096, 0u) << "the last request must end short, at end of file";
  EXPECT_EQ(file->at("w").end + file->data_offset(), file->file_size());
  expect_read_many_matches(*file, {"w", "z", "y", "x"});
  expect_read_many_matches(*file, {"x"});
  expect_read_many_matches(*file, {"z", "w"});
  // Again buffered: the same bytes, the same count.
  ScopedEnv env("PIPESWAP_NO_DIRECT_IO", "1");
  auto buffered = SafetensorsFile::open(path);
  expect_read_many_matches(*buffered, {"w", "z", "y", "x"});
  EXPECT_FALSE(buffered->direct_io_used());
}

TEST(SafetensorsReadMany, ConcurrentCallersWithLongExtents) {
  TempDir tmp;
  // Every caller has its own bounce buffers and helper thread.
  expect_concurrent_reads(tmp / "long.safetensors", long_extent_pieces(), {{"x"}, {"y", "z"}, {"x", "w"}, {"z"}});
}

// A cut in request 2 (read by the calling thread's stream) or in request 1 (the helper's): the
// tensors before the cut arrive whole and are counted, the one it falls in is named.
void expect_cut_names(const std::string& path, const std::string& cut_in, uint64_t cut_at,
                      const std::vector<std::string>& whole) {
  SCOPED_TRACE("cut in " + cut_in);
  const std::vector<Piece> pieces = {{"p", 20 * kMiB + 3, 0}, {"q", 10 * kMiB, 0}, {"r", 20 * kMiB, 0}, {"s", 100, 0}};
  write_gapped(path, pieces);
  auto file = SafetensorsFile::open(path);
  std::vector<std::vector<char>> ref;
  uint64_t whole_bytes = 0;
  for (const auto& n : whole) {
    ref.emplace_back(file->at(n).nbytes());
    file->read_into(file->at(n), ref.back().data());
    whole_bytes += file->at(n).nbytes();
  }
  const uint64_t counted = file->bytes_read();
  const off_t cut = static_cast<off_t>(file->data_offset() + file->at(cut_in).begin + cut_at);
  ASSERT_EQ(::truncate(path.c_str(), cut), 0);
  std::vector<std::vector<char>> got;
  got.reserve(pieces.size());  // the requests point into these buffers
  std::vector<ReadRequest> requests;
  for (const char* n : {"s", "r", "q", "p"}) {
    got.emplace_back(file->at(n).nbytes());
    requests.push_back({&file->at(n), got.back().data()});
  }
  EXPECT_ERROR(file->read_many(requests), CheckpointError, "truncated after it was opened", "tensor '" + cut_in + "'",
               path, "now " + std::to_string(cut) + " bytes");
  for (size_t i = 0; i < whole.size(); ++i) {
    const size_t at = whole[i] == "p" ? 3 : 2;  // index in requests / got
    EXPECT_EQ(got[at], ref[i]) << whole[i] << " arrives whole";
  }
  EXPECT_EQ(file->bytes_read() - counted, whole_bytes) << "only the tensors delivered whole are counted";
}

TEST(SafetensorsReadMany, TruncatedInsideALongExtent) {
  TempDir tmp;
  // p: [0, 20 MiB + 3), q: [.., 30 MiB + 3), r: [.., 50 MiB + 3); requests are 16 MiB from 0.
  expect_cut_names(tmp / "r.safetensors", "r", 5 * kMiB, {"p", "q"});  // request 2: the calling thread
  expect_cut_names(tmp / "q.safetensors", "q", kMiB, {"p"});           // request 1: the helper
}

TEST(SafetensorsReadMany, RefusesTensorsOfAnotherFile) {
  TempDir tmp;
  write_safetensors(tmp / "x.safetensors", {{"w", torch::ones({4})}});
  write_safetensors(tmp / "y.safetensors", {{"w", torch::ones({4})}});
  auto x = SafetensorsFile::open(tmp / "x.safetensors");
  auto y = SafetensorsFile::open(tmp / "y.safetensors");
  std::vector<float> buf(4);
  EXPECT_ERROR(x->read_many({{&y->at("w"), buf.data()}}), Error, "tensor 'w', which is not from this file's header",
               "x.safetensors");
}

}  // namespace
}  // namespace pipeswap
