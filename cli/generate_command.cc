// premoe generate: runs one prompt through the MoE engine and streams the
// completion to stdout as its tokens arrive. The flags live here; the model
// work is the engine's (premoe/model/engine.h), the router dump's format
// premoe/model/gate_dump.h's.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "cli/commands.h"
#include "cli/keep_spec.h"
#include "premoe/checkpoint/config.h"
#include "premoe/common/status.h"
#include "premoe/model/engine.h"
#include "premoe/model/gate_dump.h"
#include "premoe/tokenizer/text_stream.h"
#include "premoe/tokenizer/tokenizer.h"

namespace premoe::cli {
namespace {

struct GenerateArgs {
  std::string model;
  std::string prompt;
  int64_t max_new_tokens = 64;
  double temperature = 0.0;
  double top_p = 1.0;
  int64_t top_k = 0;
  uint64_t seed = 0;
  std::string dtype = "bf16";
  std::string quant = "none";
  std::string device = "cpu";
  std::string keep;
  std::vector<std::string> stop;
  std::string dump_router_logits;
};

// Writes each delta of the completion to stdout as soon as it is final.
void Print(const std::string& delta) {
  if (delta.empty()) return;
  std::fwrite(delta.data(), 1, delta.size(), stdout);
  std::fflush(stdout);
}

absl::Status RunGenerateImpl(const GenerateArgs& args) {
  if (args.prompt.empty()) return absl::InvalidArgumentError("--prompt is empty");
  for (const std::string& s : args.stop) {
    if (s.empty()) return absl::InvalidArgumentError("--stop: a stop string is empty");
  }
  if (std::error_code ec; !std::filesystem::is_directory(args.model, ec)) {
    return absl::NotFoundError(absl::StrCat("--model ", args.model, ": no such directory"));
  }
  const std::string tokenizer_path = args.model + "/tokenizer.json";
  ASSIGN_OR_RETURN(std::unique_ptr<tokenizer::Tokenizer> tokenizer,
                   tokenizer::Tokenizer::FromFile(tokenizer_path));
  ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                   tokenizer->Encode(args.prompt, /*add_special_tokens=*/true));
  if (ids.empty()) return absl::InvalidArgumentError("--prompt encodes to no tokens");

  model::EngineOptions options;
  options.dtype = args.dtype;
  RETURN_IF_ERROR(options.SetQuant(args.quant));
  options.device = args.device;
  if (!args.keep.empty()) {
    ASSIGN_OR_RETURN(KeepSpec spec, ParseKeep(args.keep, args.model));
    options.keep = std::move(spec.keep);
    options.top_k = spec.top_k;
  }
  ASSIGN_OR_RETURN(std::unique_ptr<model::Engine> engine, model::Engine::Open(args.model, options));

  std::unique_ptr<std::FILE, int (*)(std::FILE*)> dump_file(nullptr, &std::fclose);
  std::unique_ptr<model::JsonlGateDump> dump;
  if (!args.dump_router_logits.empty()) {
    dump_file.reset(std::fopen(args.dump_router_logits.c_str(), "wb"));
    if (dump_file == nullptr) {
      return absl::NotFoundError(absl::StrCat("--dump-router-logits: cannot open \"",
                                              args.dump_router_logits, "\" for writing"));
    }
    dump = std::make_unique<model::JsonlGateDump>(dump_file.get());
  }

  tokenizer::TextStream stream(*tokenizer, args.stop);
  model::GenerationOptions gen;
  gen.max_new_tokens = args.max_new_tokens;
  gen.temperature = args.temperature;
  gen.top_p = args.top_p;
  gen.top_k = args.top_k;
  gen.seed = args.seed;
  gen.stop_requested = [&stream](int64_t) { return stream.stopped() || !stream.status().ok(); };
  model::GenerationRequest request;
  request.prompt.assign(ids.begin(), ids.end());
  ASSIGN_OR_RETURN(std::vector<model::GenerationResult> results,
                   engine->Generate({request}, gen, dump.get(), [&stream](int64_t, int64_t token) {
                     Print(stream.Add(token));
                   }));
  Print(stream.Finish());
  RETURN_IF_ERROR(stream.status());
  if (std::ferror(stdout) != 0) return absl::DataLossError("failed to write to stdout");
  if (dump != nullptr) {
    RETURN_IF_ERROR(common::WithContext(dump->status(), "--dump-router-logits"));
    if (std::fclose(dump_file.release()) != 0) {
      return absl::DataLossError(
          absl::StrCat("--dump-router-logits: failed to write \"", args.dump_router_logits, "\""));
    }
  }
  return absl::OkStatus();
}

int RunGenerate(const GenerateArgs& args) {
  absl::Status status;
  // The engine turns libtorch errors into Status; this catches what the
  // tap's tensor copies might throw.
  try {
    status = RunGenerateImpl(args);
  } catch (const std::exception& e) {
    status = absl::InternalError(e.what());
  }
  if (!status.ok()) {
    std::fflush(stdout);
    std::fprintf(stderr, "premoe generate: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace

void RegisterGenerate(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand(
      "generate",
      "Generate a completion of --prompt with a MoE checkpoint and stream it to stdout "
      "(the completion only, exactly as the tokenizer decodes it; no newline is added)");
  // No CLI::ExistingDirectory check: a missing model is reported like every
  // other model problem, as "premoe generate: NOT_FOUND: ..." with exit 1.
  cmd->add_option("--model", args->model,
                  "Model directory: config.json, safetensors checkpoint, tokenizer.json")
      ->required();
  cmd->add_option("--prompt", args->prompt,
                  "Prompt text, encoded with the tokenizer's special tokens (e.g. <s>)")
      ->required();
  cmd->add_option("--max-new-tokens", args->max_new_tokens, "Most tokens to generate")
      ->capture_default_str();
  cmd->add_option("--temperature", args->temperature, "0 = greedy; > 0 samples")
      ->capture_default_str();
  cmd->add_option("--top-p", args->top_p, "Nucleus sampling mass in (0, 1]; 1 = off")
      ->capture_default_str();
  cmd->add_option("--top-k", args->top_k,
                  "Sample from the K most likely tokens; 0 = off (not the router's top-k)")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "Sampler seed")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "Compute dtype: bf16 or fp32")->capture_default_str();
  cmd->add_option("--quant", args->quant,
                  "How matrices are held: FORMAT (routed experts: none, int8, int4, int4:gN) and "
                  "CLASS=FORMAT items (attention, mlp, shared, lm_head, all), comma-separated")
      ->capture_default_str();
  cmd->add_option("--device", args->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--keep", args->keep,
                  absl::StrCat("Load only some routed experts (a reduced model). ", kKeepHelp));
  cmd->add_option("--stop", args->stop,
                  "Stop when the completion text contains this string (matched in the decoded "
                  "text, so across token boundaries; the string and what follows are not "
                  "printed); repeatable")
      ->take_all();
  cmd->add_option("--dump-router-logits", args->dump_router_logits,
                  "Write every MoE layer's routing to FILE as JSON lines, one per layer per "
                  "forward pass: {\"forward\", \"layer\", \"sequence\": [T], \"position\": [T], "
                  "\"gate_logits\": [T][N] (raw fp32; null for experts a reduced model did not "
                  "load), \"selected_experts\": [T][K], \"routing_weights\": [T][K]}");
  cmd->callback([args, exit_code] { *exit_code = RunGenerate(*args); });
}

}  // namespace premoe::cli
