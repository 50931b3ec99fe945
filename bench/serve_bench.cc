// serve_bench: the one-process server (store, router, worker) on loopback
// under concurrent gRPC clients, full model against pattern-served, in one
// run. For each mode and client count it reports requests/s, time to first
// token and per-token latency (p50/p99, as clients see them), and the share
// of each request's time the router spent matching it (embedding the prompt
// with the probe plus the index search).
//
// Modes: "full" asks for every expert (no matching, no pattern); "pattern"
// lets the router match each prompt to its task's pattern and serve it with
// that pattern's experts at --budget. Every request decodes exactly
// --new-tokens tokens (EOS ignored) so the two modes do the same work.
//
// usage: serve_bench [--model testbed/model] [--clients 1,4,8]
//          [--requests 48] [--new-tokens 16] [--budget 50%] [--dtype bf16]
//          [--repeat 3]
//          [--json FILE]
// The markdown goes to stdout, progress to stderr.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "nlohmann/json.hpp"
#include "premoe/common/file.h"
#include "premoe/model/engine.h"
#include "premoe/model/fingerprint.h"
#include "premoe/profiler/calibration.h"
#include "premoe/profiler/scores.h"
#include "premoe/router/client.h"
#include "premoe/router/router.h"
#include "premoe/router/server.h"
#include "premoe/store/embedded_store.h"
#include "premoe/testbed/tasks.h"
#include "premoe/tokenizer/tokenizer.h"
#include "premoe/worker/server.h"
#include "premoe/worker/worker.h"

namespace {

using namespace premoe;  // NOLINT: a benchmark's main file
using Clock = std::chrono::steady_clock;

using bench::Die;
using bench::OrDie;

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

struct Result {
  std::string mode;
  int clients = 0;
  double requests_per_second = 0;
  double ttft_p50 = 0, ttft_p99 = 0, token_p50 = 0, token_p99 = 0;
  double match_share = 0;  // mean over requests of match time / request time
};

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir = "testbed/model", json_out, budget = "50%", dtype = "bf16";
  std::vector<int> clients = {1, 4, 8};
  int64_t requests = 48, new_tokens = 16;
  int repeat = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model") {
      model_dir = value;
    } else if (flag == "--json") {
      json_out = value;
    } else if (flag == "--budget") {
      budget = value;
    } else if (flag == "--dtype") {
      dtype = value;
    } else if (flag == "--requests") {
      (void)absl::SimpleAtoi(value, &requests);
    } else if (flag == "--repeat") {
      (void)absl::SimpleAtoi(value, &repeat);
    } else if (flag == "--new-tokens") {
      (void)absl::SimpleAtoi(value, &new_tokens);
    } else if (flag == "--clients") {
      clients.clear();
      for (absl::string_view v : absl::StrSplit(value, ',')) {
        int c = 0;
        if (!absl::SimpleAtoi(v, &c) || c <= 0) Die(absl::InvalidArgumentError("--clients"));
        clients.push_back(c);
      }
    } else {
      Die(absl::InvalidArgumentError(absl::StrCat("unknown flag ", flag)));
    }
  }
  const std::vector<std::string> tasks = {"add", "reverse", "sort", "caesar", "binary", "brackets"};

  // Patterns of the tasks (peu, 32 calibration prompts each) in a store.
  std::fprintf(stderr, "profiling %zu tasks\n", tasks.size());
  store::EmbeddedPatternStore::Options so;
  so.path = "/serve-bench";
  so.in_memory = true;
  auto store = OrDie(store::EmbeddedPatternStore::Open(so));
  {
    auto engine = OrDie(model::Engine::Open(model_dir, {.dtype = "fp32"}));
    auto tokenizer = OrDie(tokenizer::Tokenizer::FromFile(model_dir + "/tokenizer.json"));
    const std::string fingerprint = OrDie(model::ModelFingerprint(*engine));
    for (const std::string& name : tasks) {
      OrDie(store->Put(bench::ProfileTestbedTask(
          *engine, *tokenizer, *OrDie(testbed::FindTask(name)), 32, {}, fingerprint)));
    }
  }
  // The one-process server, as `premoe serve` builds it.
  auto tokenizer = OrDie(tokenizer::Tokenizer::FromFile(model_dir + "/tokenizer.json"));
  worker::WorkerOptions wo;
  wo.model_dir = model_dir;
  wo.dtype = dtype;
  wo.max_batch = 8;
  auto w = OrDie(worker::Worker::Open(wo));
  auto worker_server = OrDie(worker::WorkerServer::Start({}, w.get(), tokenizer.get()));
  router::RouterOptions ro;
  ro.matcher.model_dir = model_dir;
  ro.workers.addresses = {worker_server->address()};
  ro.default_budget = budget;
  auto router = OrDie(router::Router::Open(ro, store.get()));
  auto server = OrDie(router::InferenceServer::Start({}, router.get()));
  auto client = OrDie(router::InferenceClient::Open({.address = server->address()}));

  std::vector<std::string> prompts;
  for (int64_t i = 0; i < requests; ++i) {
    const testbed::Task* task = OrDie(testbed::FindTask(tasks[i % tasks.size()]));
    prompts.push_back(OrDie(task->Get(testbed::Split::kEval, i / tasks.size())).prompt);
  }
  auto send = [&](const std::string& prompt, bool full, double* ttft, double* per_token,
                  double* match_share) {
    router::InferenceRequest r;
    r.prompt = prompt;
    r.full_model = full;
    r.options.max_new_tokens = new_tokens;
    r.options.stop_at_eos = false;
    const auto start = Clock::now();
    std::optional<Clock::time_point> first;
    router::InferenceResult res = OrDie(client->Generate(r, [&](const std::string&) {
      if (!first) first = Clock::now();
    }));
    const auto end = Clock::now();
    const double total = std::chrono::duration<double>(end - start).count();
    if (!first) first = end;
    *ttft = std::chrono::duration<double>(*first - start).count();
    *per_token = std::chrono::duration<double>(end - *first).count() /
                 static_cast<double>(std::max<int64_t>(1, res.text.completion_tokens - 1));
    *match_share = res.match_seconds / total;
  };
  // Warm up both modes (the pattern mode's first requests load its experts).
  for (const std::string& p : prompts) {
    double a, b, c;
    send(p, false, &a, &b, &c);
  }
  double a, b, c;
  send(prompts[0], true, &a, &b, &c);

  std::vector<Result> results;
  for (int n : clients) {
    // The modes alternate, `repeat` rounds each, so that the machine's noise
    // falls on both alike; requests/s is the median round's, latencies are
    // pooled over the rounds.
    std::map<std::string, std::vector<double>> rps, ttft, token, share;
    for (int round = 0; round < repeat; ++round) {
      for (const std::string mode : {"full", "pattern"}) {
        std::fprintf(stderr, "%s, %d clients, round %d\n", mode.c_str(), n, round + 1);
        std::vector<double> t1(prompts.size()), t2(prompts.size()), t3(prompts.size());
        std::atomic<size_t> next{0};
        const auto start = Clock::now();
        std::vector<std::thread> threads;
        for (int t = 0; t < n; ++t) {
          threads.emplace_back([&] {
            for (size_t i = next++; i < prompts.size(); i = next++) {
              send(prompts[i], mode == "full", &t1[i], &t2[i], &t3[i]);
            }
          });
        }
        for (auto& t : threads) t.join();
        const double wall = std::chrono::duration<double>(Clock::now() - start).count();
        rps[mode].push_back(static_cast<double>(prompts.size()) / wall);
        ttft[mode].insert(ttft[mode].end(), t1.begin(), t1.end());
        token[mode].insert(token[mode].end(), t2.begin(), t2.end());
        share[mode].insert(share[mode].end(), t3.begin(), t3.end());
      }
    }
    for (const std::string mode : {"full", "pattern"}) {
      Result r;
      r.mode = mode;
      r.clients = n;
      r.requests_per_second = Quantile(rps[mode], 0.5);
      r.ttft_p50 = Quantile(ttft[mode], 0.5);
      r.ttft_p99 = Quantile(ttft[mode], 0.99);
      r.token_p50 = Quantile(token[mode], 0.5);
      r.token_p99 = Quantile(token[mode], 0.99);
      double sum = 0;
      for (double x : share[mode]) sum += x;
      r.match_share = sum / static_cast<double>(share[mode].size());
      results.push_back(r);
    }
  }
  server->Shutdown();
  worker_server->Shutdown();

  const worker::WorkerStatus status = w->Status();
  std::printf("## Serving on loopback: full model against pattern-served (%s)\n\n", budget.c_str());
  std::printf(
      "%lld requests of %zu tasks per round, %d rounds per row (the modes alternate; "
      "requests/s is the median round's), %lld new tokens each, %s worker, max batch 8. "
      "Times in ms.\n\n",
      static_cast<long long>(requests), tasks.size(), repeat, static_cast<long long>(new_tokens),
      dtype.c_str());
  std::printf(
      "| clients | mode | requests/s | TTFT p50 | TTFT p99 | per token p50 | per token p99 "
      "| matching share | requests/s vs full |\n|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < results.size(); i += 2) {
    const Result& full = results[i];
    for (const Result* r : {&results[i], &results[i + 1]}) {
      std::printf("| %d | %s | %.1f | %.1f | %.1f | %.2f | %.2f | %.1f%% | %.2f |\n", r->clients,
                  r->mode.c_str(), r->requests_per_second, 1e3 * r->ttft_p50, 1e3 * r->ttft_p99,
                  1e3 * r->token_p50, 1e3 * r->token_p99, 100 * r->match_share,
                  r->requests_per_second / full.requests_per_second);
    }
  }
  std::printf("\nThe worker ended with %lld experts resident (%.2f MiB of %.2f MiB).\n",
              static_cast<long long>(status.cache.resident_experts),
              static_cast<double>(status.cache.resident_bytes) / (1 << 20),
              static_cast<double>(status.all_experts_bytes) / (1 << 20));
  if (!json_out.empty()) {
    nlohmann::ordered_json j = nlohmann::ordered_json::array();
    for (const Result& r : results) {
      j.push_back({{"mode", r.mode},
                   {"clients", r.clients},
                   {"requests_per_second", r.requests_per_second},
                   {"ttft_p50", r.ttft_p50},
                   {"ttft_p99", r.ttft_p99},
                   {"token_p50", r.token_p50},
                   {"token_p99", r.token_p99},
                   {"match_share", r.match_share}});
    }
    if (absl::Status s = common::WriteFileAtomically(json_out, j.dump(2) + "\n"); !s.ok()) Die(s);
  }
  return 0;
}
