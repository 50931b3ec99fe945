// premoe inspect: what a MoE checkpoint holds and how much weight memory it
// needs at expert budgets, on disk and as an engine holds it in each expert
// format. Reads config.json and the safetensors headers only, so it is
// instant even on a 700 GB model.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "premoe/checkpoint/inspect.h"

namespace premoe::cli {
namespace {

struct InspectArgs {
  std::string model;
  std::vector<std::string> budgets;
  std::string dtype = "bf16";
  std::vector<std::string> quants;
  bool json = false;
};

int RunInspect(const InspectArgs& args) {
  checkpoint::InspectOptions options;
  options.budgets = args.budgets;
  options.dtype = args.dtype;
  options.quants = args.quants;
  const absl::StatusOr<checkpoint::ModelSummary> summary =
      checkpoint::SummarizeModel(args.model, options);
  if (!summary.ok()) {
    std::fprintf(stderr, "premoe inspect: %s\n", summary.status().ToString().c_str());
    return 1;
  }
  const std::string out = args.json ? checkpoint::ModelSummaryToJson(*summary)
                                    : checkpoint::FormatModelSummary(*summary);
  if (std::fwrite(out.data(), 1, out.size(), stdout) != out.size() || std::fflush(stdout) != 0) {
    std::fprintf(stderr, "premoe inspect: failed to write to stdout\n");
    return 1;
  }
  return 0;
}

}  // namespace

void RegisterInspect(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<InspectArgs>();
  CLI::App* cmd = app.add_subcommand(
      "inspect",
      "Summarise a MoE checkpoint (layers, experts, parameters, bytes) and the weight memory "
      "it needs at expert budgets; reads headers only");
  // No CLI::ExistingDirectory check: a missing directory is reported like
  // every other model problem, as "premoe inspect: NOT_FOUND: ..." with exit 1.
  cmd->add_option("--model", args->model, "Model directory: config.json + safetensors")->required();
  cmd->add_option("--budget", args->budgets,
                  "K/M (top-K routing over M kept experts per MoE layer, e.g. 8/128) or N% "
                  "(that share of every layer's experts with the model's top-k); repeatable. "
                  "Default: the model's top-k over N, N/2, N/4, ... experts")
      ->take_all();
  cmd->add_option("--dtype", args->dtype, "The serving engine's compute dtype: bf16 or fp32")
      ->capture_default_str();
  cmd->add_option("--quant", args->quants,
                  "Routed expert formats to size as held (none, int8, int4, int4:gN), "
                  "comma-separated. Default: none (the dtype)")
      ->delimiter(',');
  cmd->add_flag("--json", args->json, "Print one JSON object (keys: premoe/checkpoint/inspect.h)");
  cmd->callback([args, exit_code] { *exit_code = RunInspect(*args); });
}

}  // namespace premoe::cli
