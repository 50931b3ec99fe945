// premoe profile: turns a task's calibration samples into an expert pattern.
// premoe select: a pattern plus a budget -> the kept experts and their memory.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "cli/store_arg.h"
#include "nlohmann/json.hpp"
#include "premoe/checkpoint/inspect.h"
#include "premoe/checkpoint/safetensors.h"
#include "premoe/common/file.h"
#include "premoe/common/process.h"
#include "premoe/common/status.h"
#include "premoe/model/engine.h"
#include "premoe/model/fingerprint.h"
#include "premoe/profiler/calibration.h"
#include "premoe/profiler/pattern.h"
#include "premoe/profiler/selection.h"
#include "premoe/store/pattern.h"
#include "premoe/testbed/tasks.h"
#include "premoe/tokenizer/tokenizer.h"

namespace premoe::cli {
namespace {

struct ProfileArgs {
  std::string model;
  std::string task;
  std::string data;
  std::string testbed_task;
  std::string split = "calibration";
  std::string metric = "peu";
  int64_t samples = 100;
  std::string out;
  std::string store;
  bool streamed = false;
  int64_t batch = -1;  // -1: 16 resident, all samples streamed
  int64_t embedding_layers = 1;
};

absl::Status RunProfile(const ProfileArgs& args) {
  if (args.data.empty() == args.testbed_task.empty()) {
    return absl::InvalidArgumentError("give exactly one of --data FILE and --testbed-task NAME");
  }
  if (args.out.empty() == args.store.empty()) {
    return absl::InvalidArgumentError("give exactly one of --out FILE and --store DIR_OR_ADDR");
  }
  if (args.samples < 1) return absl::InvalidArgumentError("--samples must be >= 1");
  ASSIGN_OR_RETURN(profiler::MetricOptions metric, profiler::MetricOptions::Parse(args.metric));
  std::vector<profiler::CalibrationSample> samples;
  if (!args.data.empty()) {
    ASSIGN_OR_RETURN(samples, profiler::ReadCalibrationJsonl(args.data, args.samples));
  } else {
    ASSIGN_OR_RETURN(const testbed::Task* task, testbed::FindTask(args.testbed_task));
    ASSIGN_OR_RETURN(testbed::Split split, testbed::ParseSplit(args.split));
    const int64_t n = std::min(args.samples, task->size(split));
    for (int64_t i = 0; i < n; ++i) {
      ASSIGN_OR_RETURN(testbed::Sample s, task->Get(split, i));
      samples.push_back({s.prompt, s.completion});
    }
  }
  if (std::error_code ec; !std::filesystem::is_directory(args.model, ec)) {
    return absl::NotFoundError(absl::StrCat("--model ", args.model, ": no such directory"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<tokenizer::Tokenizer> tokenizer,
                   tokenizer::Tokenizer::FromFile(args.model + "/tokenizer.json"));
  if (args.batch < -1) return absl::InvalidArgumentError("--batch must be >= 0");
  model::EngineOptions eo;
  eo.dtype = "fp32";  // router logits as the checkpoint defines them
  eo.streamed = args.streamed;
  ASSIGN_OR_RETURN(std::unique_ptr<model::Engine> engine, model::Engine::Open(args.model, eo));

  profiler::ProfileOptions po;
  po.metric = metric;
  po.embedding_layers = args.embedding_layers;
  // A streamed pass reads the whole checkpoint: one pass for all samples.
  po.batch_size = args.batch >= 0 ? args.batch : (args.streamed ? 0 : 16);
  const auto start = std::chrono::steady_clock::now();
  ProgressBar bar("profile " + args.task);
  po.on_progress = [&bar](const profiler::ProfileProgress& p) {
    bar.Update(p.fraction, absl::StrCat(p.samples_done, "/", p.samples_total, " samples"));
  };
  ASSIGN_OR_RETURN(profiler::TaskProfile profile,
                   profiler::ProfileTask(*engine, *tokenizer, samples, po));
  bar.Done();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  profiler::PatternOptions pattern;
  pattern.task_name = args.task;
  ASSIGN_OR_RETURN(pattern.model_fingerprint, model::ModelFingerprint(*engine));
  ASSIGN_OR_RETURN(const store::Pattern p,
                   profiler::MakePattern(*engine, samples, po, profile, pattern));
  if (!args.out.empty()) {
    RETURN_IF_ERROR(common::WriteFileAtomically(args.out, store::EncodePattern(p)));
    std::printf("pattern of task %s (%s, %lld samples, %lld tokens) -> %s\n", p.task_name.c_str(),
                args.metric.c_str(), static_cast<long long>(p.calibration_samples),
                static_cast<long long>(p.calibration_tokens), args.out.c_str());
  } else {
    ASSIGN_OR_RETURN(std::unique_ptr<store::PatternStore> s,
                     OpenStore(args.store, /*create=*/true));
    ASSIGN_OR_RETURN(store::PutResult put, s->Put(p));
    std::printf("pattern of task %s (%s, %lld samples) -> store %s as id %llu (version %llu)\n",
                p.task_name.c_str(), args.metric.c_str(),
                static_cast<long long>(p.calibration_samples), args.store.c_str(),
                static_cast<unsigned long long>(put.id),
                static_cast<unsigned long long>(put.version));
  }
  // What profiling cost, for sizing a run on a bigger model.
  ASSIGN_OR_RETURN(std::unique_ptr<const checkpoint::Checkpoint> checkpoint,
                   checkpoint::Checkpoint::Open(args.model));
  ASSIGN_OR_RETURN(const int64_t peak, common::PeakRssBytes());
  constexpr double kMiB = 1 << 20;
  std::printf(
      "%s: %lld tokens in %.1f s (%.0f tokens/s); peak RSS %.1f MiB for a %.1f MiB "
      "checkpoint\n",
      args.streamed ? "streamed" : "resident", static_cast<long long>(profile.tokens), seconds,
      static_cast<double>(profile.tokens) / std::max(seconds, 1e-9),
      static_cast<double>(peak) / kMiB, static_cast<double>(checkpoint->total_bytes()) / kMiB);
  return absl::OkStatus();
}

struct SelectArgs {
  std::string pattern;
  std::string budget;
  std::string model;
  std::string mask_out;
  std::string dtype = "bf16";
  std::string quant = "none";
  bool json = false;
};

absl::Status RunSelect(const SelectArgs& args) {
  ASSIGN_OR_RETURN(std::string bytes, common::ReadFile(args.pattern, int64_t{1} << 30));
  ASSIGN_OR_RETURN(store::Pattern p, store::DecodePattern(bytes));
  ASSIGN_OR_RETURN(profiler::Budget budget, profiler::Budget::Parse(args.budget));
  // Bytes as an engine holds them (compute dtype, the experts' format), so
  // a bytes budget buys what a worker with the same --dtype/--quant holds.
  ASSIGN_OR_RETURN(
      checkpoint::ModelSummary summary,
      checkpoint::SummarizeModel(args.model, {.dtype = args.dtype, .quants = {args.quant}}));
  if (summary.expert_layers.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(args.model, " has no MoE layer"));
  }
  ASSIGN_OR_RETURN(const auto scores, profiler::PatternScores(p, summary.config));
  const int64_t per_expert = summary.held_expert_bytes.front().second;
  ASSIGN_OR_RETURN(profiler::Selection sel,
                   profiler::Select(scores, budget, per_expert, summary.top_k));
  nlohmann::ordered_json mask;
  nlohmann::ordered_json layers = nlohmann::json::object();
  for (const auto& [layer, experts] : sel.keep.layers) layers[std::to_string(layer)] = experts;
  mask["layers"] = layers;
  mask["top_k"] = sel.top_k;
  if (!args.mask_out.empty()) {
    RETURN_IF_ERROR(common::WriteFileAtomically(args.mask_out, mask.dump() + "\n"));
  }
  const int64_t full =
      summary.held_non_expert_bytes +
      summary.num_routed_experts * static_cast<int64_t>(summary.expert_layers.size()) * per_expert;
  const int64_t weights = summary.held_non_expert_bytes + sel.expert_bytes;
  if (args.json) {
    nlohmann::ordered_json j;
    j["task"] = p.task_name;
    j["budget"] = budget.ToString();
    j["mask"] = mask;
    j["kept_experts"] = sel.kept_experts;
    j["expert_bytes"] = sel.expert_bytes;
    j["weight_bytes"] = weights;
    j["full_weight_bytes"] = full;
    std::printf("%s\n", j.dump(2).c_str());
    return absl::OkStatus();
  }
  std::printf("task %s, budget %s: top-%lld routing\n", p.task_name.c_str(),
              budget.ToString().c_str(), static_cast<long long>(sel.top_k));
  for (const auto& [layer, experts] : sel.keep.layers) {
    std::printf("  layer %3lld keeps %3zu: %s\n", static_cast<long long>(layer), experts.size(),
                nlohmann::json(experts).dump().c_str());
  }
  auto mib = [](int64_t b) { return static_cast<double>(b) / (1 << 20); };
  std::printf("routed experts kept: %lld (%.1f MiB); weights %.1f MiB of %.1f MiB (%.1f%%)\n",
              static_cast<long long>(sel.kept_experts), mib(sel.expert_bytes), mib(weights),
              mib(full), 100.0 * static_cast<double>(weights) / static_cast<double>(full));
  return absl::OkStatus();
}

}  // namespace

void RegisterProfile(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<ProfileArgs>();
  CLI::App* cmd =
      app.add_subcommand("profile",
                         "Profile a task: score every routed expert from the router logits on its "
                         "calibration samples, and write the expert pattern to a file or a store");
  cmd->add_option("--model", args->model, "Model directory")->required();
  cmd->add_option("--task", args->task, "Task name the pattern is stored under")->required();
  cmd->add_option("--data", args->data,
                  "Calibration JSONL: {\"prompt\", \"completion\"} or {\"text\"} per line");
  cmd->add_option("--testbed-task", args->testbed_task, "Use a testbed task's samples instead");
  cmd->add_option("--split", args->split, "Testbed split for --testbed-task")
      ->capture_default_str();
  cmd->add_option("--metric", args->metric,
                  "peu, tcess, act_logits, all_logits, frequency, reap, man, random; parameters "
                  "as peu:r=0.3 or tcess:k=2")
      ->capture_default_str();
  cmd->add_option("--samples", args->samples, "Most calibration samples used")
      ->capture_default_str();
  cmd->add_option("--out", args->out, "Write the pattern (premoe.v1.Pattern) to this file");
  cmd->add_option("--store", args->store, "Or Put it into a store: a directory or host:port");
  cmd->add_flag("--streamed", args->streamed,
                "Load one layer at a time from the mmap'd checkpoint (a model larger than "
                "memory); the same scores");
  cmd->add_option("--batch", args->batch,
                  "Samples per forward pass; 0 = all (default: 16, or all with --streamed, "
                  "where each pass reads the whole checkpoint)");
  cmd->add_option("--embedding-layers", args->embedding_layers,
                  "MoE layers the match embeddings span (the router's probe holds the model up "
                  "to the last one); every pattern of a store must use the same")
      ->capture_default_str();
  cmd->callback([args, exit_code] { *exit_code = ReportStatus("profile", RunProfile(*args)); });

  auto sel = std::make_shared<SelectArgs>();
  CLI::App* s = app.add_subcommand(
      "select",
      "Apply a budget to a pattern: the experts each layer keeps and the memory they take");
  s->add_option("--pattern", sel->pattern, "Pattern file (premoe profile --out)")->required();
  s->add_option("--budget", sel->budget, kBudgetHelp)->required();
  s->add_option("--model", sel->model, "Model directory (for expert sizes)")->required();
  s->add_option("--mask-out", sel->mask_out,
                "Write the kept experts as a mask file for --keep / --mask");
  s->add_option("--dtype", sel->dtype, "The serving engine's compute dtype: bf16 or fp32")
      ->capture_default_str();
  s->add_option("--quant", sel->quant,
                "How the serving engine holds routed experts: none, int8, int4, int4:gN")
      ->capture_default_str();
  s->add_flag("--json", sel->json, "Machine-readable output");
  s->callback([sel, exit_code] { *exit_code = ReportStatus("select", RunSelect(*sel)); });
}

}  // namespace premoe::cli
