// premoe serve (the server, in one process or one role of a cluster) and
// premoe query (a client of its premoe.v1.Inference front door).
#include <pthread.h>
#include <signal.h>
#include <sys/random.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/serve.h"
#include "cli/worker_flags.h"
#include "nlohmann/json.hpp"
#include "premoe/common/bytes.h"
#include "premoe/common/file.h"
#include "premoe/common/status.h"
#include "premoe/metrics/metrics.h"
#include "premoe/proto/auth.h"
#include "premoe/proto/grpc_edge.h"
#include "premoe/router/client.h"
#include "premoe/router/http_server.h"
#include "premoe/router/replica.h"
#include "premoe/router/router.h"
#include "premoe/router/server.h"
#include "premoe/store/embedded_store.h"
#include "premoe/store/grpc_client.h"
#include "premoe/store/server.h"
#include "premoe/testbed/queries.h"
#include "premoe/testbed/tasks.h"
#include "premoe/tokenizer/tokenizer.h"
#include "premoe/worker/server.h"
#include "premoe/worker/worker.h"

namespace premoe::cli {
namespace {

constexpr double kMiB = 1 << 20;

absl::Status CheckModelDir(const std::string& model) {
  if (model.empty()) return absl::InvalidArgumentError("--model is required for this role");
  if (std::error_code ec; !std::filesystem::is_directory(model, ec)) {
    return absl::NotFoundError(absl::StrCat("--model ", model, ": no such directory"));
  }
  return absl::OkStatus();
}

// The worker half of a process: a Worker and its server.
struct WorkerPart {
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  std::unique_ptr<worker::Worker> worker;
  std::unique_ptr<worker::WorkerServer> server;
};

absl::StatusOr<WorkerPart> StartWorker(const ServeArgs& args, const std::string& listen,
                                       std::shared_ptr<const rpc::Authenticator> auth,
                                       const common::TlsFiles& tls) {
  RETURN_IF_ERROR(CheckModelDir(args.model));
  worker::WorkerOptions o;
  o.world_size = args.world_size;
  o.model_dir = args.model;
  o.dtype = args.dtype;
  o.expert_pack = args.expert_pack;
  o.quant = args.quant;
  o.reserve_cache = args.reserve_cache;
  o.device = args.device;
  o.max_batch = args.max_batch;
  o.max_queue = args.max_queue;
  if (!args.cache.empty()) {
    ASSIGN_OR_RETURN(o.cache_bytes, common::ParseByteSize(args.cache));
  }
  WorkerPart part;
  ASSIGN_OR_RETURN(part.tokenizer, tokenizer::Tokenizer::FromFile(args.model + "/tokenizer.json"));
  ASSIGN_OR_RETURN(part.worker, worker::Worker::Open(o));
  worker::WorkerServer::Options so;
  so.address = listen;
  so.auth = std::move(auth);
  so.tls = tls;
  ASSIGN_OR_RETURN(part.server,
                   worker::WorkerServer::Start(so, part.worker.get(), part.tokenizer.get()));
  const worker::WorkerStatus s = part.worker->Status();
  std::printf("worker on %s: base weights %.1f MiB, expert cache %.1f MiB of %.1f MiB\n",
              part.server->address().c_str(), static_cast<double>(s.base_bytes) / kMiB,
              static_cast<double>(s.cache.budget_bytes) / kMiB,
              static_cast<double>(s.all_experts_bytes) / kMiB);
  return part;
}

absl::StatusOr<std::unique_ptr<store::EmbeddedPatternStore>> OpenEmbedded(const ServeArgs& args) {
  store::EmbeddedPatternStore::Options o;
  o.path = args.store_dir;
  ASSIGN_OR_RETURN(auto s, store::EmbeddedPatternStore::Open(o));
  ASSIGN_OR_RETURN(store::StoreInfo info, s->Info());
  std::printf("pattern store %s: %lld patterns, version %llu\n", args.store_dir.c_str(),
              static_cast<long long>(info.num_patterns),
              static_cast<unsigned long long>(info.version));
  return s;
}

absl::StatusOr<router::RouterOptions> MakeRouterOptions(const ServeArgs& args) {
  RETURN_IF_ERROR(CheckModelDir(args.model));
  router::RouterOptions o;
  o.matcher.model_dir = args.model;
  o.matcher.min_similarity = args.min_similarity;
  o.matcher.min_margin = args.min_margin;
  o.matcher.fallback = args.fallback;
  if (args.voting == "max") {
    o.matcher.voting = store::Voting::kMax;
  } else if (args.voting == "mean") {
    o.matcher.voting = store::Voting::kMean;
  } else if (args.voting == "count") {
    o.matcher.voting = store::Voting::kCount;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--voting ", args.voting, ": want max, mean or count"));
  }
  o.default_budget = args.budget;
  o.max_prompt_bytes = args.max_prompt_bytes;
  o.max_new_tokens = args.max_new_tokens;
  o.chat_template_file = args.chat_template;
  o.workers.addresses = args.workers;
  o.workers.dns = args.workers_dns;
  return o;
}

// Until SIGINT or SIGTERM; SIGHUP reloads the API keys.
void WaitForSignal(const sigset_t& signals, rpc::Authenticator& auth) {
  for (;;) {
    int signal = 0;
    sigwait(&signals, &signal);
    if (signal != SIGHUP) break;
    const absl::Status reloaded = auth.Reload();
    std::printf("premoe serve: SIGHUP: API keys %s\n",
                reloaded.ok() ? "reloaded" : reloaded.ToString().c_str());
    std::fflush(stdout);
  }
  std::printf("premoe serve: shutting down\n");
  std::fflush(stdout);
}

// A random key for the calls one process makes to itself (its router to
// its worker), which no one outside the process has.
absl::StatusOr<std::string> InternalKey() {
  char bytes[16];
  if (getrandom(bytes, sizeof bytes, 0) != static_cast<ssize_t>(sizeof bytes)) {
    return absl::InternalError("getrandom failed");
  }
  return absl::BytesToHexString(absl::string_view(bytes, sizeof bytes));
}

}  // namespace

void AddMetricsFlag(CLI::App& cmd, ServeArgs& args) {
  cmd.add_option("--metrics-listen", args.metrics_listen,
                 "Serve Prometheus metrics (GET /metrics) on this address, e.g. 0.0.0.0:9400 "
                 "(a router also has them on its HTTP API)");
}

void AddKeyFlags(CLI::App& cmd, ServeArgs& args) {
  cmd.add_option("--api-key-file", args.api_key_file,
                 "API keys (one a line) that inference and read calls need; also "
                 "PREMOE_API_KEYS (comma-separated). Re-read on change and on SIGHUP");
  cmd.add_option("--admin-key-file", args.admin_key_file,
                 "Admin keys (one a line) that store Put/Delete and worker Prepare need (they also "
                 "open the API calls); also PREMOE_ADMIN_KEYS");
}

absl::Status RunServe(const ServeArgs& args) {
  if (args.role != "all" && args.role != "store" && args.role != "router" &&
      args.role != "worker") {
    return absl::InvalidArgumentError(
        absl::StrCat("--role ", args.role, ": want all, store, router or worker"));
  }
  // Signals are taken by sigwait: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  rpc::AuthOptions auth_options;
  auth_options.api_key_file = args.api_key_file;
  auth_options.admin_key_file = args.admin_key_file;
  ASSIGN_OR_RETURN(std::shared_ptr<rpc::Authenticator> auth,
                   rpc::Authenticator::Open(auth_options));
  if (!auth->enabled()) {
    for (const std::string& listen : {args.listen, args.store_listen}) {
      const absl::StatusOr<rpc::HostPort> where = rpc::ParseHostPort(listen);
      if (where.ok() && where->host != "127.0.0.1" && where->host != "localhost" &&
          where->host != "[::1]") {
        std::fprintf(stderr,
                     "premoe serve: WARNING: no API keys (--api-key-file, --admin-key-file): "
                     "anyone who reaches %s can use it, and change its patterns\n",
                     listen.c_str());
      }
    }
  }

  // Declared in the order they must stop in reverse: servers go before what
  // they serve.
  std::unique_ptr<store::PatternStore> store;
  std::unique_ptr<store::PatternStoreServer> store_server;
  WorkerPart worker;
  std::unique_ptr<router::Replica> replica;
  std::unique_ptr<router::Router> router;
  std::unique_ptr<router::InferenceServer> front;
  std::unique_ptr<router::HttpServer> http;
  int port = 0;

  if (args.role == "store" || args.role == "all") {
    ASSIGN_OR_RETURN(store, OpenEmbedded(args));
    const std::string listen = args.role == "store" ? args.listen : args.store_listen;
    if (!listen.empty()) {
      store::PatternStoreServer::Options so;
      so.address = listen;
      so.auth = auth;
      so.tls = ProcessTls();
      ASSIGN_OR_RETURN(store_server, store::PatternStoreServer::Start(so, store.get()));
      std::printf("pattern store serving on %s\n", store_server->address().c_str());
      port = store_server->port();
    }
  }
  // One process's router reaches its worker over loopback: that port takes
  // only a key this process made, so no one else can Prepare or Generate
  // there, whatever keys are configured.
  std::string internal_key;
  if (args.role == "worker") {
    ASSIGN_OR_RETURN(worker, StartWorker(args, args.listen, auth, ProcessTls()));
    port = worker.server->port();
  } else if (args.role == "all") {
    ASSIGN_OR_RETURN(internal_key, InternalKey());
    rpc::AuthOptions internal;
    internal.read_environment = false;
    internal.admin_keys = {internal_key};
    ASSIGN_OR_RETURN(std::shared_ptr<rpc::Authenticator> internal_auth,
                     rpc::Authenticator::Open(internal));
    // Plaintext on loopback: the key keeps everyone else out.
    ASSIGN_OR_RETURN(worker, StartWorker(args, "127.0.0.1:0", std::move(internal_auth), {}));
  }
  if (args.role == "router" || args.role == "all") {
    ASSIGN_OR_RETURN(router::RouterOptions ro, MakeRouterOptions(args));
    store::PatternStore* patterns = store.get();
    if (args.role == "router") {
      if (args.store.empty()) return absl::InvalidArgumentError("--role router needs --store");
      store::GrpcPatternStoreClient::Options co;
      co.address = args.store;
      co.api_key = ClientKey();
      co.tls = ProcessTls();
      ASSIGN_OR_RETURN(store, store::GrpcPatternStoreClient::Open(co));
      ASSIGN_OR_RETURN(replica, router::Replica::Start(store.get(), {}));
      if (absl::Status s = replica->WaitSynced(std::chrono::seconds(5)); !s.ok()) {
        std::fprintf(stderr,
                     "premoe serve: %s; serving, not ready (requests UNAVAILABLE) until it has "
                     "synced\n",
                     s.ToString().c_str());
      }
      patterns = replica->store();
      ro.patterns_ready = [r = replica.get()] { return r->Synced(); };
    } else {
      ro.workers.addresses = {worker.server->address()};
      ro.workers.dns.clear();
    }
    ro.workers.client.api_key = args.role == "all" ? internal_key : ClientKey();
    if (args.role == "router") ro.workers.client.tls = ProcessTls();
    ASSIGN_OR_RETURN(router, router::Router::Open(ro, patterns));
    ASSIGN_OR_RETURN(
        front, router::InferenceServer::Start(
                   {.address = args.listen, .auth = auth, .tls = ProcessTls()}, router.get()));
    std::printf(
        "router serving premoe.v1.Inference on %s (probe %.1f MiB; budget %s, "
        "min similarity %.2f, min margin %.2f, fallback %s)\n",
        front->address().c_str(), static_cast<double>(router->matcher().probe_bytes()) / kMiB,
        args.budget.c_str(), args.min_similarity, args.min_margin, args.fallback.c_str());
    port = front->port();
    if (!args.http_listen.empty()) {
      router::HttpServer::Options ho;
      ho.address = args.http_listen;
      ho.model_name = args.served_model_name.empty() ? args.model : args.served_model_name;
      ho.model_dir = args.model;
      ho.auth = auth;
      ho.tls = ProcessTls();
      ho.metrics = &metrics::TextExposition;
      ASSIGN_OR_RETURN(http, router::HttpServer::Start(ho, router.get()));
      std::printf("router serving the OpenAI HTTP API on http%s://%s (model \"%s\")\n",
                  ProcessTls().server_tls() ? "s" : "", http->address().c_str(),
                  ho.model_name.c_str());
      if (!args.http_port_file.empty()) {
        RETURN_IF_ERROR(
            common::WriteFileAtomically(args.http_port_file, absl::StrCat(http->port())));
      }
    }
  }
  std::unique_ptr<metrics::Endpoint> metrics_endpoint;
  if (!args.metrics_listen.empty()) {
    ASSIGN_OR_RETURN(metrics_endpoint, metrics::Serve(args.metrics_listen));
    std::printf("metrics on http://%s:%d/metrics\n",
                args.metrics_listen.substr(0, args.metrics_listen.rfind(':')).c_str(),
                metrics_endpoint->port());
  }
  std::fflush(stdout);
  if (!args.port_file.empty()) {
    RETURN_IF_ERROR(common::WriteFileAtomically(args.port_file, absl::StrCat(port)));
  }
  WaitForSignal(signals, *auth);
  if (http) http->Shutdown();
  if (front) front->Shutdown();
  if (worker.server) worker.server->Shutdown();
  if (store_server) store_server->Shutdown();
  return absl::OkStatus();
}

namespace {

struct QueryArgs {
  std::string address;
  std::string prompt;
  std::string testbed;  // task list: "all" or a,b
  int64_t samples = 2;
  std::string split = "eval";
  std::string task;
  std::string budget;
  bool full_model = false;
  bool match_only = false;
  int64_t max_new_tokens = 64;
  double temperature = 0;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  bool json = false;
};

std::string Quote(const std::string& s, size_t width) {
  std::string out = nlohmann::json(s).dump();
  if (out.size() > width) out = out.substr(0, width - 3) + "...";
  return out;
}

// Sends the testbed tasks' samples through the router and says, for each,
// where it went and whether the answer is right.
absl::Status RunTestbedQueries(const QueryArgs& args, router::InferenceClient& client) {
  if (args.samples < 1) return absl::InvalidArgumentError("--samples must be >= 1");
  testbed::QueryOptions qo;
  ASSIGN_OR_RETURN(qo.tasks, testbed::ParseTaskList(args.testbed));
  ASSIGN_OR_RETURN(qo.split, testbed::ParseSplit(args.split));
  qo.samples = args.samples;
  nlohmann::ordered_json all = nlohmann::ordered_json::array();
  int64_t matched = 0;
  if (!args.json) {
    std::printf("%-8s %-26s %-18s %-12s %-16s %-14s %s\n", "task", "prompt", "matched (sim)",
                "experts", "weights", "answer", "correct");
  }
  // The route of the query being answered, for the line printed once it is scored.
  router::RouteInfo route;
  auto ask = [&](const testbed::Task&,
                 const testbed::Sample& sample) -> absl::StatusOr<std::string> {
    router::InferenceRequest r;
    r.prompt = sample.prompt;
    r.options.max_new_tokens = args.max_new_tokens;
    r.task = args.task;
    r.budget = args.budget;
    r.full_model = args.full_model;
    ASSIGN_OR_RETURN(router::InferenceResult res, client.Generate(r));
    route = res.route;
    return res.text.text;
  };
  auto show = [&](const testbed::AnsweredQuery& q) {
    matched += route.task == q.task->name() ? 1 : 0;
    if (args.json) {
      all.push_back({{"task", q.task->name()},
                     {"prompt", q.sample.prompt},
                     {"expected", q.sample.completion},
                     {"answer", q.answer},
                     {"correct", q.correct},
                     {"route", router::RouteJson(route)}});
      return;
    }
    // What this request's model holds: the worker's other weights plus the
    // pattern's experts, against the same with every expert.
    const double reduced = static_cast<double>(route.base_bytes + route.kept_bytes);
    const double full = static_cast<double>(route.base_bytes + route.all_experts_bytes);
    std::printf("%-8s %-26s %-18s %-12s %-16s %-14s %s\n", q.task->name().c_str(),
                Quote(q.sample.prompt, 26).c_str(),
                absl::StrCat(route.task.empty() ? "(full)" : route.task, " (",
                             absl::StrFormat("%.2f", route.similarity), ")")
                    .c_str(),
                absl::StrFormat("%lld (%.0f%%)", static_cast<long long>(route.kept_experts),
                                100 * route.kept_fraction)
                    .c_str(),
                absl::StrFormat("%.1f/%.1f MiB", reduced / kMiB, full / kMiB).c_str(),
                Quote(q.answer, 14).c_str(), q.correct ? "yes" : "no");
  };
  ASSIGN_OR_RETURN(const testbed::QueryTally tally, testbed::AskTestbedQueries(qo, ask, show));
  if (args.json) {
    std::printf("%s\n", nlohmann::ordered_json({{"queries", all},
                                                {"correct", tally.correct},
                                                {"matched_own_task", matched},
                                                {"total", tally.total}})
                            .dump(2)
                            .c_str());
  } else {
    std::printf("%lld of %lld answers correct; %lld of %lld matched to their own task's pattern\n",
                static_cast<long long>(tally.correct), static_cast<long long>(tally.total),
                static_cast<long long>(matched), static_cast<long long>(tally.total));
  }
  return absl::OkStatus();
}

absl::Status RunQuery(const QueryArgs& args) {
  if (args.prompt.empty() == args.testbed.empty()) {
    return absl::InvalidArgumentError("give --prompt or --testbed, one of them");
  }
  ASSIGN_OR_RETURN(auto client,
                   router::InferenceClient::Open(
                       {.address = args.address, .api_key = ClientKey(), .tls = ProcessTls()}));
  if (!args.testbed.empty()) return RunTestbedQueries(args, *client);
  if (args.match_only) {
    ASSIGN_OR_RETURN(router::MatchResult m, client->Match(args.prompt, 3));
    if (args.json) {
      nlohmann::ordered_json c = nlohmann::ordered_json::array();
      for (const auto& x : m.candidates) {
        c.push_back({{"task", x.task_name}, {"similarity", x.similarity}, {"votes", x.votes}});
      }
      std::printf("%s\n", nlohmann::ordered_json({{"task", m.task},
                                                  {"decision", m.decision},
                                                  {"similarity", m.similarity},
                                                  {"candidates", c},
                                                  {"match_seconds", m.seconds}})
                              .dump(2)
                              .c_str());
      return absl::OkStatus();
    }
    std::printf("%s: %s (similarity %.3f, %.1f ms)\n", m.decision.c_str(),
                m.task.empty() ? "the full model" : m.task.c_str(), m.similarity, 1e3 * m.seconds);
    for (const auto& x : m.candidates) {
      std::printf("  %-16s %.3f\n", x.task_name.c_str(), x.similarity);
    }
    return absl::OkStatus();
  }
  router::InferenceRequest r;
  r.prompt = args.prompt;
  r.task = args.task;
  r.budget = args.budget;
  r.full_model = args.full_model;
  r.options.max_new_tokens = args.max_new_tokens;
  r.options.temperature = args.temperature;
  r.options.seed = args.seed;
  r.stop = args.stop;
  ASSIGN_OR_RETURN(router::InferenceResult res, client->Generate(r, [&](const std::string& text) {
    if (args.json) return;
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  }));
  if (args.json) {
    std::printf("%s\n", nlohmann::ordered_json({{"text", res.text.text},
                                                {"finish_reason", res.text.finish_reason},
                                                {"prompt_tokens", res.text.prompt_tokens},
                                                {"completion_tokens", res.text.completion_tokens},
                                                {"route", router::RouteJson(res.route)},
                                                {"time_to_first_token", res.time_to_first_token},
                                                {"match_seconds", res.match_seconds}})
                            .dump(2)
                            .c_str());
    return absl::OkStatus();
  }
  const router::RouteInfo& x = res.route;
  std::fprintf(stderr,
               "\n[%s: %s (%s, similarity %.3f) at %s: %lld experts (%.0f%%), worker %s; %lld + "
               "%lld tokens, first after %.3f s]\n",
               res.text.finish_reason.c_str(), x.task.empty() ? "full model" : x.task.c_str(),
               x.decision.c_str(), x.similarity, x.budget.c_str(),
               static_cast<long long>(x.kept_experts), 100 * x.kept_fraction, x.worker.c_str(),
               static_cast<long long>(res.text.prompt_tokens),
               static_cast<long long>(res.text.completion_tokens), res.time_to_first_token);
  return absl::OkStatus();
}

}  // namespace

void RegisterServe(CLI::App& app, int* exit_code) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* s = app.add_subcommand(
      "serve",
      "Serve premoe: store, router and worker in one process (the default), or one role of a "
      "cluster; until SIGINT or SIGTERM");
  s->add_option("--role", a->role, "all, store, router or worker")->capture_default_str();
  s->add_option("--listen", a->listen, "gRPC address of the role (all/router: premoe.v1.Inference)")
      ->capture_default_str();
  s->add_option("--model", a->model, "Model directory (all, router, worker)");
  s->add_option("--store-dir", a->store_dir, "Embedded store directory (all, store)")
      ->capture_default_str();
  s->add_option("--store-listen", a->store_listen,
                "all: also serve the store here, for premoe profile --store");
  s->add_option("--store", a->store, "router: the store service host:port");
  s->add_option("--workers", a->workers, "router: worker addresses")->delimiter(',');
  s->add_option("--workers-dns", a->workers_dns,
                "router: host:port whose every address is a worker (a headless Service)");
  s->add_option("--budget", a->budget, absl::StrCat("Default expert budget. ", kBudgetHelp))
      ->capture_default_str();
  s->add_option("--min-similarity", a->min_similarity, "Below it a query falls back")
      ->capture_default_str();
  s->add_option("--min-margin", a->min_margin,
                "A best match closer than this to the next pattern falls back; 0 = off")
      ->capture_default_str();
  s->add_option("--fallback", a->fallback, "full, refuse or task:NAME")->capture_default_str();
  s->add_option("--voting", a->voting, "How a pattern's embeddings vote: max, mean or count")
      ->capture_default_str();
  s->add_option("--max-prompt-bytes", a->max_prompt_bytes, "Longest prompt accepted")
      ->capture_default_str();
  s->add_option("--max-new-tokens", a->max_new_tokens, "Largest max_new_tokens accepted")
      ->capture_default_str();
  AddWorkerFlags(*s, *a, "Worker: ");
  s->add_option("--port-file", a->port_file, "Write the bound port here once serving");
  s->add_option("--http-listen", a->http_listen,
                "all, router: address of the OpenAI-compatible HTTP API (/v1/chat/completions, "
                "/v1/completions, /v1/models, /health, /metrics); \"\" turns it off")
      ->capture_default_str();
  s->add_option("--http-port-file", a->http_port_file,
                "Write the HTTP API's bound port here once serving");
  AddMetricsFlag(*s, *a);
  s->add_option("--served-model-name", a->served_model_name,
                "The model's id in the HTTP API (default: the --model argument)");
  s->add_option("--chat-template", a->chat_template,
                "all, router: a Jinja chat template file for chat requests, in place of the "
                "model's (tokenizer_config.json or chat_template.jinja)")
      ->check(CLI::ExistingFile);
  AddKeyFlags(*s, *a);
  s->callback([a, exit_code] { *exit_code = ReportStatus("serve", RunServe(*a)); });

  auto q = std::make_shared<QueryArgs>();
  CLI::App* c = app.add_subcommand(
      "query", "Send a query to a premoe server (premoe.v1.Inference) and stream the answer");
  c->add_option("--address", q->address, "Router host:port")->required();
  c->add_option("--prompt", q->prompt, "Prompt text");
  c->add_option("--testbed", q->testbed,
                "Instead of a prompt: send samples of these testbed tasks (all or a,b) and say "
                "whether each answer is right");
  c->add_option("--samples", q->samples, "With --testbed: samples per task")->capture_default_str();
  c->add_option("--split", q->split, "With --testbed: the split")->capture_default_str();
  c->add_option("--task", q->task, "Serve with this task's pattern (skip matching)");
  c->add_option("--budget", q->budget,
                absl::StrCat("Expert budget (default: the server's). ", kBudgetHelp));
  c->add_flag("--full-model", q->full_model, "Serve with every expert");
  c->add_flag("--match-only", q->match_only, "Only say which pattern the prompt would get");
  c->add_option("--max-new-tokens", q->max_new_tokens, "Most tokens to generate")
      ->capture_default_str();
  c->add_option("--temperature", q->temperature, "0 = greedy")->capture_default_str();
  c->add_option("--seed", q->seed, "Sampler seed")->capture_default_str();
  c->add_option("--stop", q->stop, "Stop string; repeatable")->take_all();
  c->add_flag("--json", q->json, "Machine-readable output");
  c->callback([q, exit_code] { *exit_code = ReportStatus("query", RunQuery(*q)); });
}

}  // namespace premoe::cli
