// premoe eval: scores a model, full or pruned, on the testbed tasks.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/keep_spec.h"
#include "cli/progress.h"
#include "premoe/common/file.h"
#include "premoe/common/status.h"
#include "premoe/model/engine.h"
#include "premoe/testbed/eval.h"
#include "premoe/tokenizer/tokenizer.h"

namespace premoe::cli {
namespace {

struct EvalArgs {
  std::string model;
  std::string tasks = "all";
  std::string suite{testbed::kDefaultSuite};
  std::string split = "eval";
  int64_t samples = 200;
  std::string keep;
  std::string mask;
  std::string dtype = "fp32";
  std::string quant = "none";
  bool json = false;
  std::string json_out;
};

absl::Status RunEvalImpl(const EvalArgs& args) {
  if (std::error_code ec; !std::filesystem::is_directory(args.model, ec)) {
    return absl::NotFoundError(absl::StrCat("--model ", args.model, ": no such directory"));
  }
  ASSIGN_OR_RETURN(std::vector<const testbed::Task*> tasks,
                   testbed::ParseTaskList(args.tasks, args.suite));
  ASSIGN_OR_RETURN(testbed::Split split, testbed::ParseSplit(args.split));
  ASSIGN_OR_RETURN(std::unique_ptr<tokenizer::Tokenizer> tokenizer,
                   tokenizer::Tokenizer::FromFile(args.model + "/tokenizer.json"));
  model::EngineOptions options;
  options.dtype = args.dtype;
  RETURN_IF_ERROR(options.SetQuant(args.quant));
  KeepSpec mask;
  if (!args.keep.empty()) {
    ASSIGN_OR_RETURN(KeepSpec spec, ParseKeep(args.keep, args.model));
    options.keep = std::move(spec.keep);
    options.top_k = spec.top_k;
  } else if (!args.mask.empty()) {
    ASSIGN_OR_RETURN(mask, ParseKeep(args.mask, args.model));
    options.top_k = mask.top_k;
  }
  ASSIGN_OR_RETURN(std::unique_ptr<model::Engine> engine, model::Engine::Open(args.model, options));

  testbed::EvalOptions eo;
  eo.split = split;
  eo.samples = args.samples;
  if (!args.mask.empty()) eo.mask = &mask.keep;
  ProgressBar bar("eval");
  eo.on_progress = [&bar](int64_t done, int64_t total) {
    bar.Update(static_cast<double>(done) / static_cast<double>(std::max<int64_t>(total, 1)),
               absl::StrCat(done, "/", total, " samples"));
  };
  ASSIGN_OR_RETURN(testbed::EvalReport report, testbed::Evaluate(*engine, *tokenizer, tasks, eo));
  bar.Done();
  if (!args.json_out.empty()) {
    RETURN_IF_ERROR(
        common::WriteFileAtomically(args.json_out, testbed::EvalReportToJson(report, split)));
  }
  const std::string out =
      args.json ? testbed::EvalReportToJson(report, split) : testbed::FormatEvalReport(report);
  if (std::fwrite(out.data(), 1, out.size(), stdout) != out.size() || std::fflush(stdout) != 0) {
    return absl::DataLossError("failed to write to stdout");
  }
  return absl::OkStatus();
}

}  // namespace

void RegisterEval(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand(
      "eval",
      "Score a model on the testbed tasks: exact match by greedy decoding for the generation "
      "tasks, next-token accuracy and perplexity for the text ones; per task and on average");
  cmd->add_option("--model", args->model, "Model directory (e.g. testbed/model)")->required();
  cmd->add_option("--suite", args->suite, "Task suite: v1 or v2")->capture_default_str();
  cmd->add_option("--tasks", args->tasks, "all, or a comma-separated list of task names")
      ->capture_default_str();
  cmd->add_option("--split", args->split, "train, calibration or eval")->capture_default_str();
  cmd->add_option("--samples", args->samples,
                  "Samples per task, the first of the split; 0 = the whole split")
      ->capture_default_str();
  auto* keep = cmd->add_option(
      "--keep", args->keep,
      absl::StrCat("Load only these routed experts (a reduced model). ", kKeepHelp));
  cmd->add_option("--mask", args->mask,
                  "Load every expert but route each request only to these (the same forms as "
                  "--keep); gives the same scores as --keep with the same spec")
      ->excludes(keep);
  cmd->add_option("--dtype", args->dtype, "Compute dtype: fp32 or bf16")->capture_default_str();
  cmd->add_option("--quant", args->quant,
                  "How matrices are held: FORMAT (routed experts: none, int8, int4, int4:gN) and "
                  "CLASS=FORMAT items (attention, mlp, shared, lm_head, all), comma-separated")
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "Machine-readable output (stable keys)");
  cmd->add_option("--json-out", args->json_out,
                  "Also write the --json form to this file (one run, both forms)");
  cmd->callback([args, exit_code] { *exit_code = ReportStatus("eval", RunEvalImpl(*args)); });
}

}  // namespace premoe::cli
