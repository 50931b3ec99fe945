// premoe generate: runs one prompt through the MoE engine and streams the
// completion to stdout as its tokens arrive. The flag parsing, the --keep
// spec, text stop strings and the router dump live here; the model work is
// the engine's (premoe/model/engine.h).
#include <ATen/ATen.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
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
  std::string device = "cpu";
  std::string keep;
  std::vector<std::string> stop;
  std::string dump_router_logits;
};

// Shortest text that reads back as the same float (JSON has no infinities:
// -inf, the logit of an expert a reduced model did not load, becomes null).
void AppendFloat(std::string* out, float v) {
  if (!std::isfinite(v)) {
    out->append("null");
    return;
  }
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, end);
}

template <typename T>
void AppendMatrix(std::string* out, const at::Tensor& m) {
  at::Tensor c = m.cpu().contiguous();
  const T* p = c.data_ptr<T>();
  const int64_t rows = c.size(0), cols = c.dim() > 1 ? c.size(1) : 1;
  out->push_back('[');
  for (int64_t r = 0; r < rows; ++r) {
    if (r > 0) out->push_back(',');
    if (c.dim() > 1) out->push_back('[');
    for (int64_t j = 0; j < cols; ++j) {
      if (j > 0) out->push_back(',');
      if constexpr (std::is_same_v<T, float>) {
        AppendFloat(out, p[r * cols + j]);
      } else {
        absl::StrAppend(out, p[r * cols + j]);
      }
    }
    if (c.dim() > 1) out->push_back(']');
  }
  out->push_back(']');
}

// --dump-router-logits: one JSON object per line per MoE layer per forward
// pass (the prefill is forward 0, each decode step one more):
//   {"forward": F, "layer": L, "sequence": [T], "position": [T],
//    "gate_logits": [[N] x T], "selected_experts": [[K] x T],
//    "routing_weights": [[K] x T]}
class JsonlRouterDump final : public model::RouterTap {
 public:
  explicit JsonlRouterDump(std::FILE* file) : file_(file) {}

  void OnRouter(const model::RouterTapEvent& ev) override {
    if (ev.layer <= last_layer_) ++forward_;
    last_layer_ = ev.layer;
    line_.clear();
    absl::StrAppend(&line_, "{\"forward\":", forward_, ",\"layer\":", ev.layer, ",\"sequence\":");
    AppendMatrix<int64_t>(&line_, ev.sequence);
    line_.append(",\"position\":");
    AppendMatrix<int64_t>(&line_, ev.position);
    line_.append(",\"gate_logits\":");
    AppendMatrix<float>(&line_, ev.gate_logits);
    line_.append(",\"selected_experts\":");
    AppendMatrix<int64_t>(&line_, ev.selected_experts);
    line_.append(",\"routing_weights\":");
    AppendMatrix<float>(&line_, ev.routing_weights.to(at::kFloat));
    line_.append("}\n");
    if (std::fwrite(line_.data(), 1, line_.size(), file_) != line_.size()) failed_ = true;
  }
  bool failed() const { return failed_; }

 private:
  std::FILE* file_;
  int64_t forward_ = -1;
  int64_t last_layer_ = std::numeric_limits<int64_t>::max();
  bool failed_ = false;
  std::string line_;
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
  options.device = args.device;
  if (!args.keep.empty()) {
    ASSIGN_OR_RETURN(KeepSpec spec, ParseKeep(args.keep, args.model));
    options.keep = std::move(spec.keep);
    options.top_k = spec.top_k;
  }
  ASSIGN_OR_RETURN(std::unique_ptr<model::Engine> engine, model::Engine::Open(args.model, options));

  std::unique_ptr<std::FILE, int (*)(std::FILE*)> dump_file(nullptr, &std::fclose);
  std::unique_ptr<JsonlRouterDump> dump;
  if (!args.dump_router_logits.empty()) {
    dump_file.reset(std::fopen(args.dump_router_logits.c_str(), "wb"));
    if (dump_file == nullptr) {
      return absl::NotFoundError(absl::StrCat("--dump-router-logits: cannot open \"",
                                              args.dump_router_logits, "\" for writing"));
    }
    dump = std::make_unique<JsonlRouterDump>(dump_file.get());
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
    if (dump->failed() || std::fclose(dump_file.release()) != 0) {
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
