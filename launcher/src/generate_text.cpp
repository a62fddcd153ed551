// `pipeswap generate` for Llama-family checkpoints: prompts tokenized with the checkpoint's own tokenizer (rank 0),
// prefill and decode over the ranks with a K/V cache per stage (pipeline/text_job.h), the text streamed to stdout on
// rank 0, and per prompt its ids, the generated ids and text to --output (JSON, written atomically).
#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "job.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/files.h"
#include "pipeswap/core/log.h"
#include "pipeswap/models/text_tokenizer.h"
#include "pipeswap/pipeline/collective.h"
#include "pipeswap/pipeline/inputs.h"
#include "pipeswap/pipeline/text_job.h"

namespace pipeswap::launcher {
namespace {

using nlohmann::json;

std::string read_file(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  PS_CHECK(in.good(), ConfigError, "{} {}: cannot read the file (does it exist, is it readable?)", flag, path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// --prompts: one prompt per line, {"prompt": TEXT} or a JSON string; blank lines skipped.
std::vector<std::string> read_prompts_jsonl(const std::string& path) {
  std::istringstream lines(read_file(path, "--prompts"));
  std::vector<std::string> prompts;
  std::string line;
  for (int n = 1; std::getline(lines, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      PS_THROW(ConfigError, "--prompts {} line {}: not JSON ({}); write one {{\"prompt\": \"...\"}} per line", path, n,
               e.what());
    }
    if (j.is_string()) {
      prompts.push_back(j.get<std::string>());
    } else {
      PS_CHECK(j.is_object() && j.contains("prompt") && j["prompt"].is_string(), ConfigError,
               "--prompts {} line {}: expected {{\"prompt\": \"...\"}} or a JSON string", path, n);
      prompts.push_back(j["prompt"].get<std::string>());
    }
  }
  PS_CHECK(!prompts.empty(), ConfigError, "--prompts {}: no prompts in the file", path);
  return prompts;
}

// --input for generation: JSON [[ids...], ...] (rows may differ in length) or [ids...].
std::vector<std::vector<int64_t>> read_ids_json(const std::string& path) {
  json j;
  try {
    j = json::parse(read_file(path, "--input"));
  } catch (const json::exception& e) {
    PS_THROW(ConfigError, "--input {}: not JSON ({}); give [[token ids...], ...]", path, e.what());
  }
  if (j.is_array() && !j.empty() && j[0].is_number_integer()) j = json::array({j});
  PS_CHECK(j.is_array() && !j.empty(), ConfigError, "--input {}: expected [[token ids...], ...]", path);
  std::vector<std::vector<int64_t>> out;
  for (const auto& row : j) {
    PS_CHECK(row.is_array(), ConfigError, "--input {}: every prompt must be a list of token ids", path);
    std::vector<int64_t> ids;
    for (const auto& v : row) {
      PS_CHECK(v.is_number_integer(), ConfigError, "--input {}: token ids must be integers, got {}", path, v.dump());
      ids.push_back(v.get<int64_t>());
    }
    out.push_back(std::move(ids));
  }
  return out;
}

// End-of-sequence ids: generation_config.json's eos_token_id (a number or a list), else the tokenizer's.
std::vector<int64_t> eos_ids(const std::string& model_dir, const models::TextTokenizer* tok) {
  std::vector<int64_t> ids;
  std::ifstream in(model_dir + "/generation_config.json");
  if (in.good()) {
    try {
      const json g = json::parse(in);
      if (g.contains("eos_token_id")) {
        const json& e = g["eos_token_id"];
        if (e.is_number_integer()) ids.push_back(e.get<int64_t>());
        if (e.is_array())
          for (const auto& v : e)
            if (v.is_number_integer()) ids.push_back(v.get<int64_t>());
      }
    } catch (const json::exception& e) {
      log().warn("{}/generation_config.json is not valid JSON ({}): its eos_token_id is not used", model_dir, e.what());
    }
  }
  if (ids.empty() && tok != nullptr && tok->eos_id()) ids.push_back(*tok->eos_id());
  return ids;
}

std::string short_text(const std::string& s) {
  std::string out = s.size() > 60 ? s.substr(0, 57) + "..." : s;
  for (char& c : out)
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  return out;
}

}  // namespace

std::string text_model_type(const std::string& model_dir) {
  std::ifstream in(model_dir + "/config.json");
  if (!in.good()) return "";
  try {
    const json c = json::parse(in);
    const std::string type = c.is_object() ? c.value("model_type", "") : "";
    return type == "llama" || type == "qwen2" || type == "mistral" ? type : "";
  } catch (const json::exception&) {
    return "";
  }
}

int cmd_generate_text(const Options& opts, const World& world, std::unique_ptr<comm::Transport>& transport) {
  const auto t_start = Clock::now();
  Options o = opts;
  comm::Transport& t = *transport;
  if (world.rank == 0 && !o.output.empty()) pipeline::check_output_path(o.output);
  PS_CHECK(!o.model.empty(), ConfigError, "generate needs --model DIR (a Llama, Qwen2 or Mistral checkpoint)");
  PS_CHECK(!o.was_given("--prompt") || !o.prompt.empty(), ConfigError,
           "--prompt is empty: give the text to continue (an empty prompt has no token to start from)");
  const int given = (o.was_given("--prompt") ? 1 : 0) + (o.prompts_file.empty() ? 0 : 1) + (o.input.empty() ? 0 : 1);
  PS_CHECK(given == 1, ConfigError,
           "generate takes exactly one of --prompt TEXT, --prompts FILE.jsonl or --input ids.json (got {})", given);
  PS_CHECK(o.max_new_tokens >= 1, ConfigError, "--max-new-tokens must be at least 1 (got {})", o.max_new_tokens);
  PS_CHECK(o.max_seq_len >= 0 && o.max_batch >= 0, ConfigError, "--max-seq-len and --max-batch must be positive");
  PS_CHECK(o.prefill_chunk >= 0, ConfigError, "--prefill-chunk must be 0 (off) or a number of tokens (got {})",
           o.prefill_chunk);
  PS_CHECK(o.temperature >= 0, ConfigError, "--temperature must not be negative (got {})", o.temperature);
  PS_CHECK(o.top_p > 0 && o.top_p <= 1, ConfigError, "--top-p must be in (0, 1] (got {})", o.top_p);
  PS_CHECK(o.top_k >= 0, ConfigError, "--top-k must not be negative (got {})", o.top_k);
  PS_CHECK(o.repetition_penalty > 0, ConfigError, "--repetition-penalty must be positive (got {})",
           o.repetition_penalty);
  set_threads(o, world);
  Job job = open_model(o, world, t, JobUse::kRun);
  PS_CHECK(job.arch->kind() == "llm", ConfigError,
           "{} is a {} diffusion transformer, not a text model: this generate is for Llama, Qwen2 and Mistral",
           job.model_dir, job.arch->family());

  // Rank 0: the prompts as ids, checked, and the cache's size; every rank learns the sizes.
  std::shared_ptr<const models::TextTokenizer> tok;
  std::vector<std::vector<int64_t>> prompts;
  std::vector<std::string> texts;
  std::vector<int64_t> sizes(3, 0);  // max_seq_len, max_batch, longest prompt
  std::vector<int64_t> eos, stop_ids;
  if (world.rank == 0) {
    const std::string tok_dir = o.tokenizer.empty() ? job.model_dir : o.tokenizer;
    if (!o.input.empty()) {
      prompts = read_ids_json(o.input);
      if (models::TextTokenizer::present(tok_dir)) tok = models::TextTokenizer::open(tok_dir);
    } else {
      tok = models::TextTokenizer::open(tok_dir);
      texts = o.prompts_file.empty() ? std::vector<std::string>{o.prompt} : read_prompts_jsonl(o.prompts_file);
      for (const auto& text : texts) prompts.push_back(tok->encode(text));
    }
    const int64_t vocab = job.arch->vocab_size();
    int64_t longest = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      PS_CHECK(!prompts[i].empty(), ConfigError,
               "prompt {} is empty (no tokens{}): give it some text or token ids", i,
               texts.empty() ? "" : ", and the tokenizer adds no BOS");
      for (int64_t id : prompts[i])
        PS_CHECK(id >= 0 && id < vocab, ConfigError,
                 "prompt {}: token id {} is outside the model's vocabulary of {} tokens (was it tokenized for another "
                 "model?)",
                 i, id, vocab);
      longest = std::max<int64_t>(longest, static_cast<int64_t>(prompts[i].size()));
    }
    const int64_t max_seq = o.max_seq_len > 0 ? o.max_seq_len : longest + o.max_new_tokens;
    for (size_t i = 0; i < prompts.size(); ++i)
      PS_CHECK(static_cast<int64_t>(prompts[i].size()) <= max_seq, ConfigError,
               "prompt {} has {} tokens, more than --max-seq-len {}: raise --max-seq-len or shorten the prompt", i,
               prompts[i].size(), max_seq);
    const int64_t max_batch =
        o.max_batch > 0 ? o.max_batch : std::min<int64_t>(static_cast<int64_t>(prompts.size()), 64);
    sizes = {max_seq, max_batch, longest};
    if (!o.ignore_eos) eos = eos_ids(job.model_dir, tok.get());
    for (const auto& name : o.stop_token) {
      PS_CHECK(tok, ConfigError, "--stop-token '{}' needs a tokenizer to look the name up (--tokenizer DIR)", name);
      const auto id = tok->stop_token_id(name);
      if (!id) {
        std::vector<std::string> specials = tok->special_tokens();
        const size_t shown = std::min<size_t>(specials.size(), 12);
        PS_THROW(ConfigError,
                 "--stop-token '{}': the tokenizer has no such token (no special or added token, no vocabulary "
                 "entry, and the text is not one token); its special tokens: {}{}",
                 name, specials.empty() ? "none" : fmt::format("{}", fmt::join(specials.begin(), specials.begin() + shown, " ")),
                 specials.size() > shown ? fmt::format(" and {} more", specials.size() - shown) : "");
      }
      stop_ids.push_back(*id);
    }
    for (const auto& s : o.stop)
      PS_CHECK(!s.empty(), ConfigError, "--stop needs a non-empty string");
    PS_CHECK(o.stop.empty() || tok, ConfigError, "--stop needs a tokenizer to decode the text (--tokenizer DIR)");
  }
  if (world.size > 1) sizes = pipeline::broadcast(t, sizes);
  o.max_seq_len = sizes[0];
  o.max_batch = sizes[1];

  JobShape shape;
  shape.batch = 1;
  shape.seq = o.prefill_chunk > 0 ? std::min(o.prefill_chunk, sizes[2]) : sizes[2];  // the largest micro-batch
  if (world.rank == 0) shape.stored_dtype = stored_dtype(job);
  if (world.size > 1) shape = agree_shape(t, shape);
  job.plan = make_job_plan(o, world, t, job, shape, o.micro_batches, 1);
  const pipeline::RankPlan& me = job.plan.ranks.at(world.rank);
  RankRuntime rt = start_rank(o, world, transport, job);
  comm::Transport& tr = *transport;
  if (!me.idle()) {
    job.arch->allocate_kv_cache(me.first_block, me.end_block, o.max_batch, o.max_seq_len,
                                torch::TensorOptions().dtype(job.plan.dtype).device(rt.device));
  }

  pipeline::TextJobOptions jo;
  jo.max_new_tokens = o.max_new_tokens;
  jo.max_batch = o.max_batch;
  jo.max_seq_len = o.max_seq_len;
  jo.micro_batches = o.micro_batches;
  jo.eos_ids = eos;
  jo.stop_ids = stop_ids;
  jo.prefill_chunk = o.prefill_chunk;
  jo.sampling.temperature = o.temperature;
  jo.sampling.top_k = o.top_k;
  jo.sampling.top_p = o.top_p;
  jo.sampling.repetition_penalty = o.repetition_penalty;
  jo.sampling.seed = o.seed;

  // Rank 0: one prompt streams token by token; several print each completion when it ends.
  const bool stream_tokens = o.stream && tok && prompts.size() == 1;
  std::vector<models::TextStreamer> streamers;
  if (tok)
    for (size_t i = 0; i < prompts.size(); ++i) streamers.emplace_back(tok, true);
  std::vector<std::vector<int64_t>> generated(prompts.size());
  auto on_token = [&](size_t i, int64_t token) {
    generated[i].push_back(token);
    if (!tok) return false;
    const std::string piece = streamers[i].push(token);
    if (stream_tokens) std::cout << piece << std::flush;
    if (o.stop.empty()) return false;
    const std::string text = tok->decode(generated[i], true);
    for (const auto& s : o.stop)
      if (text.find(s) != std::string::npos) return true;
    return false;
  };
  const pipeline::TextJobResult result =
      pipeline::run_text_job(job.plan, world.rank, *job.arch, *rt.weights, tr, prompts, jo, rt.device, on_token);
  job.arch->release_kv_cache();
  rt.trace->finish(tr);
  log_memory(me, *rt.weights, rt.device, result.steps);

  if (world.rank == 0) {
    if (stream_tokens) std::cout << streamers[0].finish() << "\n" << std::flush;
    json out = json::array();
    for (size_t i = 0; i < result.sequences.size(); ++i) {
      const auto& s = result.sequences[i];
      json row{{"index", i}, {"prompt_ids", s.prompt}, {"generated_ids", s.generated},
               {"finish_reason", s.finish_reason}};
      if (!texts.empty()) row["prompt"] = texts[i];
      if (tok) row["text"] = tok->decode(s.generated, true);
      if (o.stream && tok && !stream_tokens)
        std::cout << fmt::format("[{}] {}\n", i, tok->decode(s.generated, true)) << std::flush;
      out.push_back(std::move(row));
    }
    if (!o.output.empty()) write_text_atomically(o.output, "generation output", out.dump(1) + "\n");
  }
  tr.barrier();
  if (world.rank == 0) {
    double ttft = 0;
    for (const auto& s : result.sequences) ttft = std::max(ttft, s.first_token_seconds);
    std::string s = fmt::format("pipeswap generate: {} ({}), {} blocks on {} rank(s), {} prompt(s), K/V cache {} x {} "
                                "tokens\n",
                                job.model_dir, job.plan.family, job.plan.num_blocks, world.size, prompts.size(),
                                o.max_batch, o.max_seq_len);
    s += rank_lines(job.plan);
    s += fmt::format("  prefill {} tokens in {:.3f} s ({:.1f} tokens/s); decode {} tokens in {:.3f} s ({:.1f} "
                     "tokens/s); time to first token {:.3f} s{}; {} steps, total {:.2f} s\n",
                     result.prefill_tokens, result.prefill_seconds,
                     result.prefill_seconds > 0 ? result.prefill_tokens / result.prefill_seconds : 0.0,
                     result.decode_tokens, result.decode_seconds,
                     result.decode_seconds > 0 ? result.decode_tokens / result.decode_seconds : 0.0,
                     result.sequences.empty() ? 0.0 : result.sequences[0].first_token_seconds,
                     result.sequences.size() > 1 ? fmt::format(" (last prompt's {:.3f} s)", ttft) : "", result.steps,
                     since(t_start));
    if (job.plan.generation.known())
      s += fmt::format("  the plan predicted decode at {:.1f} tokens/s for {} sequences at once (bound by {})\n",
                       job.plan.generation.tokens_per_second, job.plan.generation.batch, job.plan.generation.bound);
    if (!o.output.empty()) s += fmt::format("  output -> {}\n", o.output);
    if (!texts.empty() && !stream_tokens)
      for (size_t i = 0; i < texts.size() && i < 3; ++i) s += fmt::format("  prompt {}: {}\n", i, short_text(texts[i]));
    std::cout << s << std::flush;
  }
  return 0;
}

}  // namespace pipeswap::launcher
