// The first hour of a new user (issue 23), one test per item, each through the executable (or the
// script a user runs): the exit status, the message word for word where the issue names one, the
// files left behind and the processes left behind.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "pipeswap/core/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

namespace {

using namespace pipeswap::test_support;

class FirstHourTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/pipeswap-first-hour-XXXXXX";
    dir_ = mkdtemp(tmpl);
    setenv("PIPESWAP_CACHE", (dir_ + "/cache").c_str(), 1);
    // Progress lines are timed; tests see every one of them.
    unsetenv("PIPESWAP_PROGRESS_INTERVAL");
    ASSERT_EQ(sh(exe() + " plan --log-level warn").code, 0);  // writes the demo Llama
    // Most cases need a run, not the demo's 512 tokens: two sequences of 4 keep the suite fast.
    std::ofstream(dir_ + "/ids.json") << "[[1, 2, 3, 4], [5, 6, 7, 8]]";
    small_ = " --input " + dir_ + "/ids.json ";
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  void TearDown() override { EXPECT_EQ(processes_left(), "") << "processes left behind"; }

  // A fresh working directory for one case.
  static std::string fresh(const std::string& name) {
    const std::string d = dir_ + "/" + name;
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
  }
  // `cmd` run in `cwd` (no single quotes in it: sh() wraps it in them).
  static Result in(const std::string& cwd, const std::string& cmd, int timeout_s = 120) {
    return sh("cd " + cwd + " && " + cmd, timeout_s);
  }
  static std::string files(const std::string& d) {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(d)) names.insert(e.path().filename().string());
    std::string s;
    for (const auto& n : names) s += (s.empty() ? "" : " ") + n;
    return s;
  }
  // Processes whose working directory is inside the suite's directory (every command runs in one).
  static std::string processes_left() {
    std::string out;
    for (const auto& p : fs::directory_iterator("/proc")) {
      const std::string pid = p.path().filename().string();
      if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
      std::error_code ec;
      const std::string cwd = fs::read_symlink(p.path() / "cwd", ec).string();
      if (!ec && cwd.rfind(dir_, 0) == 0) out += pid + " (" + cwd + ") ";
    }
    return out;
  }
  static int count(const std::string& hay, const std::string& needle) {
    int n = 0;
    for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + needle.size())) ++n;
    return n;
  }
  static std::vector<std::string> lines_with(const std::string& text, const std::string& needle) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
      if (line.find(needle) != std::string::npos) out.push_back(line);
    return out;
  }
  static std::string mpirun(int np) { return "mpirun -np " + std::to_string(np) + " " + exe(); }

  static inline std::string dir_;
  static inline std::string small_;  // --input with a small input
};

// 1. The README's mpirun lines work as written: its Running section sets what Open MPI needs as root and
// with more ranks than cores, at the place users copy from. pipeswap's own advice to start more ranks
// points there.
TEST_F(FirstHourTest, ReadmeMpirunSettingsLetRootAndMoreRanksThanCoresRun) {
  const std::string readme = file_bytes(source_dir() + "/README.md");
  const std::vector<std::string> exports = lines_with(readme, "export OMPI_ALLOW_RUN_AS_ROOT=1");
  ASSERT_FALSE(exports.empty()) << "README.md must show Open MPI's settings where its mpirun lines are";
  const std::string running = readme.substr(readme.find("## Running"));
  EXPECT_LT(running.find(exports.front()), running.find("mpirun -np 2 build/pipeswap run"))
      << "the settings come before the first mpirun line users copy";
  EXPECT_THAT(exports.front(), HasSubstr("OMPI_MCA_rmaps_base_oversubscribe=1"));

  const std::string d = fresh("mpirun");
  const std::string clean =
      "env -u OMPI_ALLOW_RUN_AS_ROOT -u OMPI_ALLOW_RUN_AS_ROOT_CONFIRM -u OMPI_MCA_rmaps_base_oversubscribe ";
  // More ranks than this machine's cores (CI: 2), as root in CI's containers.
  const int np = static_cast<int>(std::max(3L, sysconf(_SC_NPROCESSORS_ONLN) + 1));
  std::string chain = "cpu";
  for (int r = 1; r < np; ++r) chain += ",cpu";
  const std::string job = "mpirun -np " + std::to_string(np) + " " + exe() + " run --device-chain " + chain + small_ +
                          " --output out.safetensors --log-level warn";
  Result bare = in(d, clean + job);
  EXPECT_NE(bare.code, 0) << "Open MPI ran without the settings (is this machine bigger than its ranks?)";
  Result r = in(d, clean + "bash -c \"" + exports.front() + "; " + job + "\"", 180);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(files(d), "out.safetensors");

  // pipeswap's own advice to start more ranks names the settings.
  Result few = in(d, mpirun(2) + " run --device-chain cpu,cpu,cpu --output never.safetensors");
  EXPECT_EQ(few.code, 2) << few.output;
  EXPECT_THAT(few.output,
              HasSubstr("--device-chain has 3 entries but 2 rank(s) are running: give one entry per rank, or start "
                        "3 rank(s): leave out mpirun and pipeswap starts one per entry itself, or mpirun -np 3 "
                        "pipeswap ... (as root, or with more ranks than cores, Open MPI needs the settings in "
                        "README.md, Running)"));
  EXPECT_EQ(files(d), "out.safetensors");
}

// 2. --output never destroys an input: not the --input (the issue's case), not a model file through a
// symlink, not the --config; two outputs may not be one file; a name whose extension is not what is
// written gets a warning.
TEST_F(FirstHourTest, OutputThatIsAnInputIsRefusedAndTheInputKept) {
  const std::string d = fresh("output");
  std::ofstream(d + "/prompts.json") << "[[1, 2, 3], [4, 5, 6]]";
  const std::string before = file_bytes(d + "/prompts.json");
  Result r = in(d, exe() + " run --input prompts.json --output prompts.json");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--output prompts.json is the --input file (prompts.json): writing it would "
                                  "destroy an input of the job; choose another --output"));
  EXPECT_EQ(file_bytes(d + "/prompts.json"), before);
  EXPECT_EQ(files(d), "prompts.json");

  // A symlink to a file of the model.
  const std::string demo = dir_ + "/cache/demo-llama-v1";
  fs::create_symlink(demo + "/config.json", d + "/link.safetensors");
  const std::string config = file_bytes(demo + "/config.json");
  r = in(d, exe() + " run --output link.safetensors");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--output link.safetensors is a file of the --model checkpoint (" + demo +
                                  "/config.json): writing it would destroy an input of the job; choose another "
                                  "--output"));
  EXPECT_EQ(file_bytes(demo + "/config.json"), config);

  // The --config file, and --trace on the --output.
  std::ofstream(d + "/cfg.json") << R"({"micro_batches": 2})";
  r = in(d, exe() + " run --config cfg.json --output cfg.json");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--output cfg.json is the --config file (cfg.json)"));
  r = in(d, exe() + " run --output same.safetensors --trace ./same.safetensors" + small_);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("--output same.safetensors and --trace ./same.safetensors are the same file: give each its own"));
  EXPECT_EQ(files(d), "cfg.json link.safetensors prompts.json");

  // plan --json on the model's config.json.
  r = in(d, exe() + " plan --json " + demo + "/config.json");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("is a file of the --model checkpoint"));
  EXPECT_EQ(file_bytes(demo + "/config.json"), config);

  // A name that does not say safetensors: written, with a warning.
  r = in(d, exe() + " run --output logits.json --log-level warn" + small_);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("--output logits.json: pipeswap writes safetensors there, but the name does not end in "
                        ".safetensors"));
  EXPECT_EQ(files(d), "cfg.json link.safetensors logits.json prompts.json");
}

// 3. One line per error: one prefix, the message and its fix, no source location (that is for
// --log-level debug), once per job even under mpirun; the nearest flag for a typo, --model for a bare
// path, the right command for another command's flag.
TEST_F(FirstHourTest, ErrorsAreOneLineWithTheFix) {
  const std::string d = fresh("errors");
  Result r = in(d, exe() + " run --micro-batches 0");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(count(r.output, "\n"), 1) << r.output;
  EXPECT_EQ(count(r.output, " r0 cpu]"), 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("[error] --micro-batches: '0' is out of range: give a count from 1 to 100000"));
  EXPECT_THAT(r.output, Not(HasSubstr(".cpp:")));

  r = in(d, exe() + " run --micro-batches 0 --log-level debug");
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("--micro-batches: '0' is out of range: give a count from 1 to 100000"));
  EXPECT_THAT(r.output, HasSubstr("(launcher/src/cli.cpp:"));

  // Under mpirun: the command line fails alike on both ranks; one of them says so.
  r = in(d, mpirun(2) + " run --micro-batches 0");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(count(r.output, "--micro-batches: '0' is out of range"), 1) << r.output;
  // After start-up: one line per rank that fails, never the same rank twice.
  r = in(d, mpirun(2) + " run --device-chain cpu,cpu --input missing.json");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_EQ(count(r.output, "input file missing.json does not exist"), 1) << r.output;
  // Single-node mode: the worker that failed says why (an input error: exit 1); the others and the parent stay quiet.
  r = in(d, exe() + " run --device-chain cpu,cpu --input missing.json");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_EQ(count(r.output, "missing.json"), 1) << r.output;
  EXPECT_EQ(count(r.output, "\n"), 2) << r.output;  // the single-node start line and the error

  struct Case {
    std::string args, message;
  };
  fs::create_directories(d + "/models/mine");
  const Case cases[] = {
      {"run --devcie-chain cpu", "unknown flag --devcie-chain for `pipeswap run`: did you mean --device-chain? (see "
                                 "pipeswap run --help)"},
      {"run --blocks-to-swapp 2", "did you mean --blocks-to-swap?"},
      {"run -device-chain cpu", "did you mean --device-chain?"},
      {"run models/mine", "unexpected argument 'models/mine' for `pipeswap run`: did you mean --model models/mine? "
                          "(a checkpoint is given with --model DIR)"},
      {"run --latents x.safetensors", "--latents is a flag of `pipeswap denoise`, not of `pipeswap run`"},
      {"rnu", "unknown command 'rnu': did you mean run? (commands: run, plan, denoise, generate; see pipeswap --help)"},
      {"", "give a command: pipeswap run (the forward job), plan (the plan only), denoise (diffusion sampling) or "
             "generate (prompt to video or text); run, plan and denoise run a built-in demo with no other flags"},
  };
  for (const Case& c : cases) {
    r = in(d, exe() + " " + c.args);
    EXPECT_EQ(r.code, 2) << c.args << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(c.message)) << c.args;
    EXPECT_EQ(count(r.output, "\n"), 1) << c.args << "\n" << r.output;
  }
  EXPECT_EQ(files(d), "models");
}

// 4. Docs and behaviour agree.
TEST_F(FirstHourTest, DocsAndBehaviourAgree) {
  const std::string d = fresh("docs");
  // fp16 on CPU ranks: refused with the way out the README gives; fp16 weights under --dtype auto compute in
  // float32 there.
  Result r = in(d, exe() + " run --dtype fp16 --output a.safetensors");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--dtype fp16 is not supported on CPU ranks (LibTorch has no fp16 matmul there): "
                                  "use --dtype auto (fp16 weights then compute in float32 on CPU ranks), fp32 or "
                                  "bf16"));
  {
    const std::string m = d + "/fp16";
    fs::create_directories(m);
    fs::copy_file(dir_ + "/cache/demo-llama-v1/config.json", m + "/config.json");
    auto f = pipeswap::SafetensorsFile::open(dir_ + "/cache/demo-llama-v1/model.safetensors");
    std::vector<std::pair<std::string, torch::Tensor>> t;
    for (const auto& info : f->tensors()) t.emplace_back(info.name, f->read(info.name).to(torch::kHalf));
    pipeswap::write_safetensors(m + "/model.safetensors", t);
    std::ofstream(d + "/ids.json") << "[[1, 2, 3]]";
    r = in(d, exe() + " run --model fp16 --input ids.json --output b.safetensors");
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_THAT(r.output, HasSubstr("compute dtype float32 (stored float16 in the safetensors files; CPU ranks "
                                    "compute 16-bit weights in float32"));
  }
  // Every boolean takes `--flag`, `--flag=false` and `--flag false`; anything else is named.
  for (const std::string& args :
       {std::string("--use-non-blocking false --blocks-to-swap 1"), std::string("--use-non-blocking=false --blocks-to-swap 1"),
        std::string("--workload-split false"), std::string("--workload-split"), std::string("--lazy-load true --blocks-to-swap 1"),
        std::string("--auto-vram-balance off"), std::string("--offload-txt-emb yes")}) {
    r = in(d, exe() + " run --log-level warn --output c.safetensors " + small_ + args);
    EXPECT_EQ(r.code, 0) << args << "\n" << r.output;
  }
  r = in(d, exe() + " run --workload-split maybe");
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("--workload-split is true or false, not 'maybe': write --workload-split false, "
                                  "--workload-split=false or --workload-split"));
  // `gpu=1` is no GPU 1.
  r = in(d, exe() + " plan --device-chain gpu=1");
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("Invalid device: gpu (write cuda for each rank's own GPU, or cuda:N for GPU N; "
                                  "after = comes the weight, not a GPU index)"));
  // A plan of GPUs on a host without any says what a run would do.
  if (sh("nvidia-smi -L").code != 0) {
    r = in(d, exe() + " plan --device-chain cuda");
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_THAT(r.output, HasSubstr("no CUDA GPU is visible on this host: the plan shows the device chain as "
                                    "written, but a run here would stop with 'Invalid device: cuda'"));
  }
  // Each command's help offers its own model and inputs; plan's leaves out the run-only flags (it still
  // takes them, so a run's command line turned into a plan works).
  r = in(d, exe() + " denoise --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.output, HasSubstr("the built-in demo Wan"));
  EXPECT_THAT(r.output, Not(HasSubstr("Llama")));
  EXPECT_THAT(r.output, Not(HasSubstr("--input")));
  r = in(d, exe() + " plan --help");
  EXPECT_EQ(r.code, 0);
  for (const char* run_only : {"--threads", "--comm-timeout", "--transport", "--output", "--repeat", "--trace"})
    EXPECT_THAT(r.output, Not(HasSubstr(run_only))) << run_only;
  EXPECT_EQ(in(d, exe() + " plan --threads 2 --comm-timeout 5 --log-level warn").code, 0);
  // A weight file given for its directory.
  r = in(d, exe() + " run --model fp16/model.safetensors --input ids.json");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.output, HasSubstr("--model fp16/model.safetensors is a file, not a directory: give the "
                                  "checkpoint's directory, the one holding config.json and the .safetensors files "
                                  "(--model fp16)"));
  EXPECT_EQ(files(d), "b.safetensors c.safetensors fp16 ids.json");
}

// 5. Settings that do nothing say so (and the run goes on).
TEST_F(FirstHourTest, SettingsThatDoNothingSaySo) {
  const std::string d = fresh("idle");
  struct Case {
    std::string args, warning;
  };
  const Case cases[] = {
      {"--max-memory 1GB", "--max-memory 1GB does nothing without --lazy-load: swapped blocks are all kept in host "
                           "memory; add --lazy-load to read them from disk through a host cache of that size"},
      {"--lazy-load", "--lazy-load does nothing: no block swaps; give --blocks-to-swap N or --offload-ratio F to "
                      "stream blocks from disk"},
      {"--device-chain cpu=3,cpu=1 --auto-vram-balance",
       "--auto-vram-balance does nothing on CPU ranks: it weighs GPUs by their free memory; the chain's own weights "
       "split the blocks"},
      {"--blocks-to-swap 2", "--blocks-to-swap 2 saves no memory on CPU rank(s) 0: a CPU rank computes from host "
                             "memory, where its swapped blocks are kept as well; add --lazy-load --max-memory SIZE "
                             "to read them from disk instead"},
      {"--blocks-to-swap 2 --lazy-load --max-memory 1KB",
       "--max-memory 1KB holds none of the swapped blocks (the smallest swapped unit is 2.8 MiB): every one is read "
       "from disk on every pass"},
  };
  for (const Case& c : cases) {
    fs::remove(d + "/out.safetensors");
    Result r = in(d, exe() + " run --log-level warn --output out.safetensors " + small_ + c.args);
    EXPECT_EQ(r.code, 0) << c.args << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(c.warning)) << c.args;
    EXPECT_EQ(count(r.output, "[warning]"), 1) << c.args << "\n" << r.output;
    EXPECT_EQ(files(d), "out.safetensors") << c.args;
  }
  // --auto-vram-balance on CPUs leaves the chain's 3:1 split as it is.
  Result r = in(d, exe() + " plan --device-chain cpu=3,cpu=1 --auto-vram-balance --json plan.json");
  EXPECT_EQ(r.code, 0) << r.output;
  const auto j = nlohmann::json::parse(file_bytes(d + "/plan.json"));
  EXPECT_EQ(j["ranks"][0]["num_blocks"], 9);
  // Settings that do something stay quiet.
  r = in(d, exe() + " run --log-level warn --output out.safetensors --blocks-to-swap 2 --lazy-load --max-memory 6MB" +
                small_);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("[warning]"), std::string::npos) << r.output;
}

// 6. The host cache keeps the blocks that fit; each warm pass reads exactly the rest, as the plan says per
// pass (the issue's case: all 12 blocks swapped, a cache that holds 6, then 10).
TEST_F(FirstHourTest, WarmPassesReadWhatThePlanSaysAndNoMore) {
  const std::string d = fresh("host-cache");
  Result r = in(d, exe() + " plan --offload-ratio 1 --lazy-load --json full.json");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto full = nlohmann::json::parse(file_bytes(d + "/full.json"));
  const int64_t slab = full["ranks"][0]["slot_bytes"].get<int64_t>();  // one block's slab
  const int64_t all = full["ranks"][0]["predicted_disk_read_first_pass_bytes"].get<int64_t>();
  const int64_t block = all / 12;  // one block's tensor bytes as stored
  ASSERT_EQ(block * 12, all);
  for (int fit : {6, 10}) {
    SCOPED_TRACE(fit);
    const std::string budget = std::to_string(fit * slab + slab / 2);
    r = in(d, exe() + " plan --offload-ratio 1 --lazy-load --max-memory " + budget + " --json plan.json");
    ASSERT_EQ(r.code, 0) << r.output;
    const auto rank0 = nlohmann::json::parse(file_bytes(d + "/plan.json"))["ranks"][0];
    EXPECT_EQ(rank0["predicted_disk_read_first_pass_bytes"].get<int64_t>(), 12 * block);
    EXPECT_EQ(rank0["predicted_disk_read_pass_bytes"].get<int64_t>(), (12 - fit) * block);
    EXPECT_EQ(rank0["host_cache_blocks"].size(), static_cast<size_t>(fit));
    EXPECT_THAT(r.output, HasSubstr("disk reads " + std::string(fit == 6 ? "33.8 MiB" : "33.8 MiB") +
                                    " in the first pass"));

    r = in(d, exe() + " run --offload-ratio 1 --lazy-load --max-memory " + budget +
                  " --repeat 4 --output out.safetensors" + small_);
    ASSERT_EQ(r.code, 0) << r.output;
    const std::regex line(R"(pass (\d)/4 read (\d+) bytes from disk \(plan (\d+)\))");
    int passes = 0;
    for (auto it = std::sregex_iterator(r.output.begin(), r.output.end(), line); it != std::sregex_iterator(); ++it) {
      const int k = std::stoi((*it)[1]);
      const int64_t read = std::stoll((*it)[2]), plan = std::stoll((*it)[3]);
      EXPECT_EQ(read, plan) << "pass " << k;
      EXPECT_EQ(read, (k == 1 ? 12 : 12 - fit) * block) << "pass " << k;
      ++passes;
    }
    EXPECT_EQ(passes, 4) << r.output;
  }
  // Two ranks, each with its own cache of 3 of its 6 blocks, 2 micro-batches: every rank's passes as its
  // plan says, for both swap orders (per micro-batch, each pass sweeps twice; shared fills, once).
  for (const std::string order : {"per-micro-batch", "shared"}) {
    SCOPED_TRACE(order);
    const int sweeps = order == "shared" ? 1 : 2;
    r = in(d, mpirun(2) + " run --device-chain cpu,cpu --offload-ratio 1 --lazy-load --max-memory " +
                  std::to_string(3 * slab + slab / 2) + " --repeat 3 --micro-batches 2 --swap-order " + order +
                  " --output out.safetensors" + small_);
    ASSERT_EQ(r.code, 0) << r.output;
    const std::regex line(R"(\[[^\]]* r(\d) cpu\] \[info\] pass (\d)/3 read (\d+) bytes from disk \(plan (\d+)\))");
    int lines = 0;
    for (auto it = std::sregex_iterator(r.output.begin(), r.output.end(), line); it != std::sregex_iterator(); ++it) {
      const int k = std::stoi((*it)[2]);
      EXPECT_EQ((*it)[3], (*it)[4]) << (*it)[0];
      EXPECT_EQ(std::stoll((*it)[3]), (k == 1 ? 6 + 3 * (sweeps - 1) : 3 * sweeps) * block) << (*it)[0];
      ++lines;
    }
    EXPECT_EQ(lines, 6) << r.output;
  }
  EXPECT_EQ(files(d), "full.json out.safetensors plan.json");
}

// 7. Progress: loading (bytes and time left, per rank), forward passes and denoising steps as tqdm draws
// them; one line per update when stderr is not a terminal, none with --log-level warn.
TEST_F(FirstHourTest, ProgressLinesLikeTqdm) {
  const std::string d = fresh("progress");
  const std::string bar = R"(\[\d\d:\d\d<\d\d:\d\d, [0-9.]+ (it/s|s/it)\])";
  Result r = in(d, exe() + " denoise --steps 3 --output lat.safetensors");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(lines_with(r.output, "step ").size(), 3u) << r.output;
  for (int s = 1; s <= 3; ++s)
    EXPECT_TRUE(std::regex_search(r.output, std::regex("\\[info\\] step " + std::to_string(s) +
                                                       "/3 sigma [0-9.]+: [0-9.]+ s " + bar + "\n")))
        << r.output;
  r = in(d, exe() + " run --repeat 3 --output out.safetensors" + small_);
  ASSERT_EQ(r.code, 0) << r.output;
  for (int k = 1; k <= 3; ++k)
    EXPECT_TRUE(std::regex_search(r.output, std::regex("\\[info\\] forward pass " + std::to_string(k) +
                                                       "/3 [0-9.]+ s " + bar + "\n")))
        << r.output;
  // Loading, on every rank (an interval of 0: every poll is an update; the bar starts at 0 and ends at 100%).
  r = in(d, "PIPESWAP_PROGRESS_INTERVAL=0 " + mpirun(2) + " run --device-chain cpu,cpu --output out.safetensors" + small_);
  ASSERT_EQ(r.code, 0) << r.output;
  for (int rank : {0, 1}) {
    const std::string who = " r" + std::to_string(rank) + " cpu] \\[info\\] loading ";
    EXPECT_TRUE(std::regex_search(r.output, std::regex(who + R"(0% 0 B/[0-9.]+ MiB \[00:00<\?, [0-9.]+ [KMG]?i?B/s\])")))
        << r.output;
    EXPECT_TRUE(std::regex_search(r.output, std::regex(who + R"(100% ([0-9.]+ MiB)/\1 \[\d\d:\d\d<00:00, [0-9.]+ [KMG]?i?B/s\])")))
        << r.output;
  }
  // Quiet.
  r = in(d, exe() + " denoise --steps 3 --output lat.safetensors --log-level warn");
  ASSERT_EQ(r.code, 0) << r.output;
  r.output += in(d, "PIPESWAP_PROGRESS_INTERVAL=0 " + exe() + " run --repeat 2 --output out.safetensors --log-level warn" + small_).output;
  EXPECT_THAT(r.output, Not(HasSubstr("step ")));
  EXPECT_THAT(r.output, Not(HasSubstr("forward pass")));
  EXPECT_THAT(r.output, Not(HasSubstr("loading")));
  // On a terminal the step line is redrawn in place (carriage returns), then ended once.
  if (sh("script -qec true /dev/null").code == 0) {
    r = in(d, "script -qec \"" + exe() + " denoise --steps 3 --output lat.safetensors\" /dev/null");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_GE(count(r.output, "\r["), 3) << r.output;
    EXPECT_TRUE(std::regex_search(r.output, std::regex("step 3/3 sigma [0-9.]+: [0-9.]+ s " + bar)));
  }
  EXPECT_EQ(files(d), "lat.safetensors out.safetensors");
}

// 8. `pipeswap denoise` with no flags: the built-in tiny Wan (written on first use) on built-in inputs;
// every split and swap setting gives the same latents.
TEST_F(FirstHourTest, DenoiseRunsTheDemoWanWithNoFlags) {
  const std::string d = fresh("wan");
  fs::remove_all(dir_ + "/cache/demo-wan-v1");  // first use, whichever case ran before
  Result r = in(d, exe() + " denoise");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("writing the built-in demo model to " + dir_ + "/cache/demo-wan-v1"));
  EXPECT_THAT(r.output, HasSubstr("pipeswap denoise: " + dir_ + "/cache/demo-wan-v1 (wan), 8 blocks on 1 rank(s), 1 "
                                  "sample(s) x 48 tokens, 2 micro-batches per step"));
  EXPECT_THAT(r.output, HasSubstr("50 steps in"));
  EXPECT_THAT(r.output, HasSubstr("latents 1x16x3x8x8 float32 -> latents.safetensors"));
  EXPECT_EQ(files(d), "latents.safetensors");
  EXPECT_TRUE(fs::exists(dir_ + "/cache/demo-wan-v1/diffusion_pytorch_model.safetensors"));
  const torch::Tensor lat = pipeswap::SafetensorsFile::open(d + "/latents.safetensors")->read("latents");
  EXPECT_TRUE(torch::isfinite(lat).all().item<bool>());
  EXPECT_GT(lat.abs().max().item<double>(), 0.1);
  // The same bytes split over two ranks with blocks swapped through the disk tier.
  r = in(d, mpirun(2) + " denoise --device-chain cpu,cpu --blocks-to-swap 2 --lazy-load --max-memory 100KB "
                        "--output split.safetensors --log-level warn");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(same_bytes(d + "/split.safetensors", d + "/latents.safetensors"));
  // A checkpoint of one's own needs its inputs.
  r = in(d, exe() + " denoise --model " + dir_ + "/cache/demo-wan-v1");
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("--latents and --context are required with --model"));
  EXPECT_EQ(files(d), "latents.safetensors split.safetensors");
}

// 9. scripts/demo builds the executable only (scripts/test builds the rest), then runs it.
TEST_F(FirstHourTest, DemoScriptBuildsOnlyTheExecutable) {
  const std::string d = fresh("demo-script");
  // Stand-ins for cmake and mpirun that record what they are asked; an existing build directory.
  fs::create_directories(d + "/bin");
  fs::create_directories(d + "/build");
  std::ofstream(d + "/build/build.ninja") << "";
  for (const char* tool : {"cmake", "mpirun"}) {
    std::ofstream(d + "/bin/" + tool) << "#!/bin/sh\necho \"" << tool << " $*\" >> " << d << "/calls\n";
    fs::permissions(d + "/bin/" + tool, fs::perms::owner_all);
  }
  // Every package present, as far as scripts/deps can tell (no installing from a test).
  std::ofstream(d + "/bin/dpkg-query") << "#!/bin/sh\necho install ok installed\n";
  fs::permissions(d + "/bin/dpkg-query", fs::perms::owner_all);
  Result r = in(d, "PATH=" + d + "/bin:$PATH PIPESWAP_BUILD_DIR=" + d + "/build " + source_dir() + "/scripts/demo");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string calls = file_bytes(d + "/calls");
  EXPECT_THAT(calls, HasSubstr("cmake --build " + d + "/build -j"));
  EXPECT_THAT(calls, HasSubstr("--target pipeswap\n"));
  EXPECT_EQ(count(calls, "--target"), 1) << calls;
  EXPECT_THAT(calls, HasSubstr("mpirun -np 2 " + d + "/build/pipeswap run"));
  // mpirun refusing to start the job (as Open MPI does for root without its settings): the script says
  // where the settings are, and fails with mpirun's status.
  std::ofstream(d + "/bin/mpirun") << "#!/bin/sh\necho 'mpirun has detected an attempt to run as root.' >&2\nexit 1\n";
  r = in(d, "PATH=" + d + "/bin:$PATH PIPESWAP_BUILD_DIR=" + d + "/build " + source_dir() + "/scripts/demo");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("If Open MPI itself refused to start it (running as root, more"));
  EXPECT_THAT(r.output, HasSubstr("README.md, Running, shows the settings it needs"));
  // The README says how long each of its two first commands takes.
  const std::string readme = file_bytes(source_dir() + "/README.md");
  const std::string top = readme.substr(0, readme.find("## Running"));
  EXPECT_TRUE(std::regex_search(top, std::regex(R"(scripts/demo[^\n]*\n(.|\n)*about \d+ min)"))) << top;
}

// 10. The demo's input and the default --output are what the README says.
TEST_F(FirstHourTest, DemoInputAndDefaultOutputAreAsTheReadmeSays) {
  const std::string readme = file_bytes(source_dir() + "/README.md");
  EXPECT_THAT(readme, HasSubstr("8 sequences of 64 token ids"));
  EXPECT_THAT(readme, HasSubstr("`logits.safetensors` in the current directory"));
  EXPECT_THAT(readme, HasSubstr("`latents.safetensors` in the current directory"));
  const std::string d = fresh("defaults");
  Result r = in(d, exe() + " run");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("tokens 512 (8 x 64)"));
  EXPECT_THAT(r.output, HasSubstr("logits 8x64x1024 float32 -> logits.safetensors"));
  EXPECT_EQ(files(d), "logits.safetensors");
  r = in(d, exe() + " run --help");
  EXPECT_THAT(r.output, HasSubstr("default: logits.safetensors in the current directory"));
  EXPECT_THAT(r.output, HasSubstr("default with the demo model: 8 built-in sequences of 64 tokens"));
}

}  // namespace
