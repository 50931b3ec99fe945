// premoe worker: run a worker (serve) and talk to one (prepare, generate,
// status).
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/serve.h"
#include "cli/worker_flags.h"
#include "nlohmann/json.hpp"
#include "premoe/common/file.h"
#include "premoe/common/status.h"
#include "premoe/store/pattern.h"
#include "premoe/worker/client.h"
#include "premoe/worker/worker.h"

namespace premoe::cli {
namespace {

constexpr double kMiB = 1 << 20;

absl::StatusOr<std::unique_ptr<worker::WorkerClient>> Connect(const std::string& address) {
  worker::WorkerClient::Options o;
  o.api_key = ClientKey();
  o.tls = ProcessTls();
  o.address = address;
  return worker::WorkerClient::Open(o);
}

struct PrepareArgs {
  std::string address;
  std::string pattern;
  std::string budget = "50%";
};

absl::Status RunPrepare(const PrepareArgs& args) {
  ASSIGN_OR_RETURN(std::string bytes, common::ReadFile(args.pattern));
  ASSIGN_OR_RETURN(store::Pattern pattern, store::DecodePattern(bytes));
  ASSIGN_OR_RETURN(auto client, Connect(args.address));
  ASSIGN_OR_RETURN(worker::PreparedPattern p, client->Prepare(pattern, args.budget));
  std::printf(
      "pattern %s at %s: %lld experts (%.0f%% of all, %.2f MiB); loaded %lld "
      "(%.2f MiB in %.3f s), evicted %lld\n",
      p.task.c_str(), args.budget.c_str(), static_cast<long long>(p.kept_experts),
      100 * p.kept_fraction, static_cast<double>(p.kept_bytes) / kMiB,
      static_cast<long long>(p.load.loaded_experts),
      static_cast<double>(p.load.loaded_bytes) / kMiB, p.load.load_seconds,
      static_cast<long long>(p.load.evicted_experts));
  return absl::OkStatus();
}

struct RemoteGenerateArgs {
  std::string address;
  std::string prompt;
  std::string task;
  int64_t max_new_tokens = 64;
  double temperature = 0;
  uint64_t seed = 0;
  std::vector<std::string> stop;
};

absl::Status RunRemoteGenerate(const RemoteGenerateArgs& args) {
  ASSIGN_OR_RETURN(auto client, Connect(args.address));
  worker::TextRequest r;
  r.prompt = args.prompt;
  r.task = args.task;
  r.options.max_new_tokens = args.max_new_tokens;
  r.options.temperature = args.temperature;
  r.options.seed = args.seed;
  r.stop = args.stop;
  ASSIGN_OR_RETURN(worker::TextResult result,
                   client->Generate(r, [](const std::string& text, const std::vector<int64_t>&) {
                     std::fwrite(text.data(), 1, text.size(), stdout);
                     std::fflush(stdout);
                   }));
  std::fprintf(stderr, "\n[%s: %lld prompt + %lld completion tokens, first token after %.3f s]\n",
               result.finish_reason.c_str(), static_cast<long long>(result.prompt_tokens),
               static_cast<long long>(result.completion_tokens), result.time_to_first_token);
  return absl::OkStatus();
}

struct StatusArgs {
  std::string address;
  bool json = false;
};

absl::Status RunStatus(const StatusArgs& args) {
  ASSIGN_OR_RETURN(auto client, Connect(args.address));
  ASSIGN_OR_RETURN(worker::RemoteStatus remote, client->Status());
  const worker::WorkerStatus& s = remote.status;
  if (args.json) {
    nlohmann::ordered_json j;
    j["model_fingerprint"] = remote.model_fingerprint;
    j["base_bytes"] = s.base_bytes;
    j["all_experts_bytes"] = s.all_experts_bytes;
    j["budget_bytes"] = s.cache.budget_bytes;
    j["resident_experts"] = s.cache.resident_experts;
    j["resident_bytes"] = s.cache.resident_bytes;
    j["pinned_experts"] = s.cache.pinned_experts;
    j["queued"] = s.queued;
    j["running"] = s.running;
    j["cancelled"] = s.cancelled;
    j["loads"] = s.cache.loads;
    j["loaded_bytes"] = s.cache.loaded_bytes;
    j["evictions"] = s.cache.evictions;
    j["load_seconds"] = s.cache.load_seconds;
    j["patterns"] = nlohmann::ordered_json::array();
    for (const auto& p : s.patterns) {
      j["patterns"].push_back({{"task", p.task},
                               {"kept_experts", p.kept_experts},
                               {"kept_bytes", p.kept_bytes},
                               {"resident", p.resident}});
    }
    std::printf("%s\n", j.dump(2).c_str());
    return absl::OkStatus();
  }
  std::printf(
      "model %s\nbase weights %.2f MiB; experts resident %lld (%.2f MiB of a %.2f MiB "
      "budget; all experts %.2f MiB), pinned %lld\nrequests: %lld running, %lld queued; "
      "loads %lld (%.2f MiB, %.3f s), evictions %lld\n",
      remote.model_fingerprint.c_str(), static_cast<double>(s.base_bytes) / kMiB,
      static_cast<long long>(s.cache.resident_experts),
      static_cast<double>(s.cache.resident_bytes) / kMiB,
      static_cast<double>(s.cache.budget_bytes) / kMiB,
      static_cast<double>(s.all_experts_bytes) / kMiB,
      static_cast<long long>(s.cache.pinned_experts), static_cast<long long>(s.running),
      static_cast<long long>(s.queued), static_cast<long long>(s.cache.loads),
      static_cast<double>(s.cache.loaded_bytes) / kMiB, s.cache.load_seconds,
      static_cast<long long>(s.cache.evictions));
  for (const auto& p : s.patterns) {
    std::printf("  %-12s %4lld experts %8.2f MiB  %s\n", p.task.c_str(),
                static_cast<long long>(p.kept_experts), static_cast<double>(p.kept_bytes) / kMiB,
                p.resident ? "resident" : "partly evicted");
  }
  return absl::OkStatus();
}

}  // namespace

void RegisterWorker(CLI::App& app, int* exit_code) {
  CLI::App* cmd = app.add_subcommand(
      "worker", "Run a worker that serves many expert patterns of one model, or talk to one");
  cmd->require_subcommand(1);

  auto serve = std::make_shared<ServeArgs>();
  serve->role = "worker";
  serve->listen = "127.0.0.1:0";
  CLI::App* s = cmd->add_subcommand(
      "serve", "Serve premoe.v1.Worker (and grpc.health.v1.Health) until SIGINT or SIGTERM");
  s->add_option("--model", serve->model, "Model directory")->required();
  s->add_option("--listen", serve->listen, "Address to listen on")->capture_default_str();
  AddWorkerFlags(*s, *serve, "");
  s->add_option("--port-file", serve->port_file, "Write the bound port here once serving");
  AddKeyFlags(*s, *serve);
  AddMetricsFlag(*s, *serve);
  s->callback([serve, exit_code] { *exit_code = ReportStatus("worker serve", RunServe(*serve)); });

  auto prepare = std::make_shared<PrepareArgs>();
  CLI::App* p = cmd->add_subcommand("prepare", "Make a pattern's experts resident on a worker");
  p->add_option("--address", prepare->address, "Worker host:port")->required();
  p->add_option("--pattern", prepare->pattern, "Pattern file (premoe profile --out)")->required();
  p->add_option("--budget", prepare->budget, kBudgetHelp)->capture_default_str();
  p->callback(
      [prepare, exit_code] { *exit_code = ReportStatus("worker prepare", RunPrepare(*prepare)); });

  auto gen = std::make_shared<RemoteGenerateArgs>();
  CLI::App* g = cmd->add_subcommand(
      "generate", "Stream a completion from a worker to stdout (usage on stderr)");
  g->add_option("--address", gen->address, "Worker host:port")->required();
  g->add_option("--prompt", gen->prompt, "Prompt text")->required();
  g->add_option("--task", gen->task, "A prepared pattern's task (default: the full model)");
  g->add_option("--max-new-tokens", gen->max_new_tokens, "Most tokens to generate")
      ->capture_default_str();
  g->add_option("--temperature", gen->temperature, "0 = greedy")->capture_default_str();
  g->add_option("--seed", gen->seed, "Sampler seed")->capture_default_str();
  g->add_option("--stop", gen->stop, "Stop string, matched in the decoded text; repeatable")
      ->take_all();
  g->callback(
      [gen, exit_code] { *exit_code = ReportStatus("worker generate", RunRemoteGenerate(*gen)); });

  auto status = std::make_shared<StatusArgs>();
  CLI::App* st = cmd->add_subcommand("status", "What a worker holds: patterns, experts, memory");
  st->add_option("--address", status->address, "Worker host:port")->required();
  st->add_flag("--json", status->json, "Machine-readable output");
  st->callback(
      [status, exit_code] { *exit_code = ReportStatus("worker status", RunStatus(*status)); });
}

}  // namespace premoe::cli
