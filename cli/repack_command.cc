// premoe repack: write a model's routed experts as an expert pack (one
// page-aligned slot per expert in the engine's layout, dtype or quantized
// format), which a
// worker reads with --expert-pack; or check one.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "premoe/checkpoint/expert_pack.h"
#include "premoe/checkpoint/safetensors.h"
#include "premoe/common/status.h"
#include "premoe/model/repack.h"

namespace premoe::cli {
namespace {

struct RepackArgs {
  std::string model;
  std::string out;
  std::string dtype = "bf16";
  std::string quant = "none";
  std::string check;
};

absl::Status RunRepack(const RepackArgs& args) {
  if (!args.check.empty()) {
    ASSIGN_OR_RETURN(auto pack, checkpoint::ExpertPack::Open(args.check));
    if (!args.model.empty()) {
      ASSIGN_OR_RETURN(checkpoint::ModelConfig config, checkpoint::LoadModelConfig(args.model));
      ASSIGN_OR_RETURN(auto checkpoint, checkpoint::Checkpoint::Open(args.model));
      RETURN_IF_ERROR(
          pack->CheckFits(*checkpoint, config, pack->header().dtype, pack->header().quant));
    }
    ProgressBar bar("check");
    RETURN_IF_ERROR(pack->Verify([&](int64_t done, int64_t total) {
      bar.Update(static_cast<double>(done) / static_cast<double>(total),
                 absl::StrCat(done, "/", total, " experts"));
    }));
    bar.Done();
    const checkpoint::ExpertPackHeader& h = pack->header();
    std::printf(
        "%s: %zu MoE layers x %lld experts, %s (%s), %lld bytes each: every checksum matches%s\n",
        args.check.c_str(), h.layers.size(), static_cast<long long>(h.experts), h.dtype.c_str(),
        h.quant.ToString().c_str(), static_cast<long long>(h.slot_bytes),
        args.model.empty() ? "" : ", and it fits the model");
    return absl::OkStatus();
  }
  if (args.model.empty() || args.out.empty()) {
    return absl::InvalidArgumentError("repack needs --model and --out (or --check PACK)");
  }
  ProgressBar bar("repack");
  model::ExpertPackWriteOptions options;
  options.dtype = args.dtype;
  options.quant = args.quant;
  options.on_progress = [&](int64_t done, int64_t total) {
    bar.Update(static_cast<double>(done) / static_cast<double>(total),
               absl::StrCat(done, "/", total, " MoE layers"));
  };
  const auto start = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(model::WriteExpertPack(args.model, args.out, options));
  bar.Done();
  ASSIGN_OR_RETURN(auto pack, checkpoint::ExpertPack::Open(args.out));
  const checkpoint::ExpertPackHeader& h = pack->header();
  std::printf("wrote %s: %zu MoE layers x %lld experts, %s (%s), %lld bytes each, in %.1f s\n",
              args.out.c_str(), h.layers.size(), static_cast<long long>(h.experts), h.dtype.c_str(),
              h.quant.ToString().c_str(), static_cast<long long>(h.slot_bytes),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return absl::OkStatus();
}

}  // namespace

void RegisterRepack(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<RepackArgs>();
  CLI::App* cmd =
      app.add_subcommand("repack",
                         "Write a model's routed experts as an expert pack for fast reassembly "
                         "(premoe worker serve --expert-pack), or --check one");
  cmd->add_option("--model", args->model, "Model directory");
  cmd->add_option("--out", args->out, "Pack file to write (atomically)");
  cmd->add_option("--dtype", args->dtype, "The serving engine's dtype: bf16 or fp32")
      ->capture_default_str();
  cmd->add_option("--quant", args->quant,
                  "How the experts are held: none (the dtype), int8, int4 or int4:gN (N in "
                  "16..256); serve the pack with the same --quant")
      ->capture_default_str();
  cmd->add_option("--check", args->check,
                  "Verify this pack's checksums (and, with --model, that it fits the model)");
  cmd->callback([args, exit_code] { *exit_code = ReportStatus("repack", RunRepack(*args)); });
}

}  // namespace premoe::cli
