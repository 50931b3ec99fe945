// serve_bench: the one-process server (store, router, worker) on loopback
// under concurrent gRPC streams, full model against pattern-served, in one
// run. For each mode and stream count it reports requests/s, time to first
// token and per-token latency (p50/p99, as clients see them), the share of
// each request's time the router spent matching it (embedding the prompt
// with the probe plus the index search), and the threads of the process
// (/proc/self/status, sampled every 5 ms during the round).
//
// Modes: "full" asks for every expert (no matching, no pattern); "pattern"
// lets the router match each prompt to its task's pattern and serve it with
// that pattern's experts at --budget; "http" is "pattern" through the
// OpenAI-compatible HTTP API (streamed completions, Server-Sent Events, one
// keep-alive connection per client thread) instead of gRPC, so its row
// against "pattern" is the HTTP edge's cost. Every request decodes exactly
// --new-tokens tokens (EOS ignored) so the modes do the same work.
//
// Each stream is a client thread of this process making blocking calls (a
// blocking gRPC call adds no thread of gRPC's), so the server's own threads
// are the process's less the streams: that is the "server threads" column.
// A round sends max(--requests, streams) requests so that every stream is
// busy at once.
//
// usage: serve_bench --help
// The markdown goes to stdout, progress to stderr.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "bench/bench_util.h"
#include "bench/machine.h"
#include "nlohmann/json.hpp"
#include "premoe/common/file.h"
#include "premoe/model/engine.h"
#include "premoe/model/fingerprint.h"
#include "premoe/profiler/calibration.h"
#include "premoe/profiler/scores.h"
#include "premoe/router/client.h"
#include "premoe/router/http_server.h"
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

// The "Threads:" line of /proc/self/status; 0 if it cannot be read.
int ProcessThreads() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Threads:", 0) != 0) continue;
    int n = 0;
    return absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(8)), &n) ? n : 0;
  }
  return 0;
}

// Samples ProcessThreads() every 5 ms on a thread of its own until
// destroyed; peak() excludes the sampler itself.
class ThreadSampler {
 public:
  ThreadSampler() : thread_([this] { Run(); }) {}
  ~ThreadSampler() {
    stop_.Notify();
    thread_.join();
  }
  int peak() const { return peak_.load() - 1; }

 private:
  void Run() {
    do {
      peak_.store(std::max(peak_.load(), ProcessThreads()));
    } while (!stop_.WaitForNotificationWithTimeout(absl::Milliseconds(5)));
  }
  absl::Notification stop_;
  std::atomic<int> peak_{0};
  std::thread thread_;
};

struct Result {
  std::string mode;
  int streams = 0;
  double requests_per_second = 0;
  double ttft_p50 = 0, ttft_p99 = 0, token_p50 = 0, token_p99 = 0;
  double match_share = 0;  // mean over requests of match time / request time
  int threads_peak = 0;    // the process's, the highest of any round
};

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir = "testbed/model", json_out, budget = "50%", dtype = "bf16";
  std::vector<int> streams = {1, 4, 8};
  std::vector<std::string> modes = {"full", "pattern", "http"};
  int64_t requests = 48, new_tokens = 16, max_batch = 8, max_queue = 0;
  int repeat = 3;
  CLI::App app{"serve_bench: the one-process server under concurrent gRPC streams"};
  app.add_option("--model", model_dir, "Model directory")->capture_default_str();
  app.add_option("--streams,--clients", streams,
                 "Concurrent streams (client threads) per row, comma-separated")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--modes", modes, "Modes to run, comma-separated: full, pattern, http")
      ->delimiter(',')
      ->check(CLI::IsMember({"full", "pattern", "http"}))
      ->capture_default_str();
  app.add_option("--requests", requests, "Requests per round (at least the streams)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--new-tokens", new_tokens, "Tokens each request decodes")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--budget", budget, "Budget of the pattern mode")->capture_default_str();
  app.add_option("--dtype", dtype, "Worker dtype")->capture_default_str();
  app.add_option("--repeat", repeat, "Rounds per mode and stream count")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--max-batch", max_batch, "The worker's max batch")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--max-queue", max_queue,
                 "The worker's queue; 0 = the most streams, so that none is refused")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--json", json_out, "Also write the rows to this JSON file");
  CLI11_PARSE(app, argc, argv);
  const int most_streams = *std::max_element(streams.begin(), streams.end());
  if (max_queue == 0) max_queue = std::max<int64_t>(64, most_streams);
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
  wo.max_batch = max_batch;
  wo.max_queue = max_queue;
  auto w = OrDie(worker::Worker::Open(wo));
  auto worker_server = OrDie(worker::WorkerServer::Start({}, w.get(), tokenizer.get()));
  router::RouterOptions ro;
  ro.matcher.model_dir = model_dir;
  ro.workers.addresses = {worker_server->address()};
  ro.default_budget = budget;
  auto router = OrDie(router::Router::Open(ro, store.get()));
  auto server = OrDie(router::InferenceServer::Start({}, router.get()));
  auto client = OrDie(router::InferenceClient::Open({.address = server->address()}));
  auto http = OrDie(router::HttpServer::Start(
      {.address = "127.0.0.1:0", .model_name = "bench", .model_dir = model_dir}, router.get()));

  const int64_t most_requests = std::max<int64_t>(requests, most_streams);
  std::vector<std::string> prompts;
  for (int64_t i = 0; i < most_requests; ++i) {
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
  // The same request as an OpenAI client sends it: a streamed completion.
  // The first token is the first SSE event with text.
  auto send_http = [&](httplib::Client& http_client, const std::string& prompt, double* ttft,
                       double* per_token, double* match_share) {
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.set_header("Content-Type", "application/json");
    req.body = nlohmann::json({{"model", "bench"},
                               {"prompt", prompt},
                               {"max_tokens", new_tokens},
                               {"temperature", 0},
                               {"ignore_eos", true},
                               {"stream", true}})
                   .dump();
    const auto start = Clock::now();
    std::optional<Clock::time_point> first;
    std::string buffer;
    req.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
      buffer.append(data, size);
      for (size_t end = buffer.find("\n\n"); end != std::string::npos; end = buffer.find("\n\n")) {
        const std::string event = buffer.substr(0, end);
        buffer.erase(0, end + 2);
        if (!absl::StartsWith(event, "data: {")) continue;
        const nlohmann::json j = nlohmann::json::parse(event.substr(6));
        if (j.contains("error")) Die(absl::InternalError(j.dump()));
        if (!first && !j["choices"].empty() &&
            !j["choices"][0]["text"].get<std::string>().empty()) {
          first = Clock::now();
        }
      }
      return true;
    };
    httplib::Result res = http_client.send(req);
    if (!res || res->status != 200) {
      Die(absl::InternalError(
          absl::StrCat("HTTP request failed: ",
                       res ? absl::StrCat(res->status) : httplib::to_string(res.error()))));
    }
    const auto end = Clock::now();
    if (!first) first = end;
    *ttft = std::chrono::duration<double>(*first - start).count();
    *per_token = std::chrono::duration<double>(end - *first).count() /
                 static_cast<double>(std::max<int64_t>(1, new_tokens - 1));
    *match_share = 0;  // the HTTP response does not carry it; the "pattern" row has it
  };
  // Warm up both modes (the pattern mode's first requests load its experts).
  for (size_t i = 0; i < std::min<size_t>(prompts.size(), 48); ++i) {
    double a, b, c;
    send(prompts[i], false, &a, &b, &c);
  }
  double a, b, c;
  send(prompts[0], true, &a, &b, &c);
  const int idle_threads = ProcessThreads();
  const std::string load_start = bench::LoadAverage();

  std::vector<Result> results;
  for (int n : streams) {
    const size_t count = static_cast<size_t>(std::max<int64_t>(requests, n));
    // The modes alternate, `repeat` rounds each, so that the machine's noise
    // falls on both alike; requests/s is the median round's, latencies are
    // pooled over the rounds.
    std::map<std::string, std::vector<double>> rps, ttft, token, share;
    std::map<std::string, int> threads_peak;
    for (int round = 0; round < repeat; ++round) {
      for (const std::string& mode : modes) {
        std::fprintf(stderr, "%s, %d streams, round %d\n", mode.c_str(), n, round + 1);
        std::vector<double> t1(count), t2(count), t3(count);
        std::atomic<size_t> next{0};
        const auto start = Clock::now();
        int peak = 0;
        {
          ThreadSampler sampler;
          std::vector<std::thread> threads;
          for (int t = 0; t < n; ++t) {
            threads.emplace_back([&] {
              httplib::Client http_client("127.0.0.1", http->port());
              http_client.set_keep_alive(true);
              http_client.set_tcp_nodelay(true);
              http_client.set_read_timeout(std::chrono::seconds(120));
              for (size_t i = next++; i < count; i = next++) {
                if (mode == "http") {
                  send_http(http_client, prompts[i], &t1[i], &t2[i], &t3[i]);
                } else {
                  send(prompts[i], mode == "full", &t1[i], &t2[i], &t3[i]);
                }
              }
            });
          }
          for (auto& t : threads) t.join();
          peak = sampler.peak();
        }
        const double wall = std::chrono::duration<double>(Clock::now() - start).count();
        rps[mode].push_back(static_cast<double>(count) / wall);
        ttft[mode].insert(ttft[mode].end(), t1.begin(), t1.end());
        token[mode].insert(token[mode].end(), t2.begin(), t2.end());
        share[mode].insert(share[mode].end(), t3.begin(), t3.end());
        threads_peak[mode] = std::max(threads_peak[mode], peak);
      }
    }
    for (const std::string& mode : modes) {
      Result r;
      r.mode = mode;
      r.streams = n;
      r.requests_per_second = Quantile(rps[mode], 0.5);
      r.ttft_p50 = Quantile(ttft[mode], 0.5);
      r.ttft_p99 = Quantile(ttft[mode], 0.99);
      r.token_p50 = Quantile(token[mode], 0.5);
      r.token_p99 = Quantile(token[mode], 0.99);
      double sum = 0;
      for (double x : share[mode]) sum += x;
      r.match_share = sum / static_cast<double>(share[mode].size());
      r.threads_peak = threads_peak[mode];
      results.push_back(r);
    }
  }
  http->Shutdown();
  server->Shutdown();
  worker_server->Shutdown();

  const worker::WorkerStatus status = w->Status();
  std::printf("## Serving on loopback: full model against pattern-served (%s)\n\n", budget.c_str());
  std::printf(
      "max(%lld, streams) requests of %zu tasks per round, %d rounds per row (the modes "
      "alternate; requests/s is the median round's), %lld new tokens each, %s worker, max batch "
      "%lld. Times in ms. Threads: the process's peak during the rows' rounds (%d when idle, "
      "before the rows); server threads: that less the streams' client threads.\n\n",
      static_cast<long long>(requests), tasks.size(), repeat, static_cast<long long>(new_tokens),
      dtype.c_str(), static_cast<long long>(max_batch), idle_threads);
  std::printf(
      "| streams | mode | requests/s | TTFT p50 | TTFT p99 | per token p50 | per token p99 "
      "| matching share | requests/s vs full | http vs grpc: requests/s, TTFT p50, p99 | threads "
      "| server threads |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::map<int, const Result*> full, grpc;
  for (const Result& r : results) {
    if (r.mode == "full") full[r.streams] = &r;
    if (r.mode == "pattern") grpc[r.streams] = &r;
  }
  for (const Result& r : results) {
    const std::string vs_full =
        full.contains(r.streams)
            ? absl::StrFormat("%.2f", r.requests_per_second / full[r.streams]->requests_per_second)
            : "-";
    std::string vs_grpc = "-";
    if (r.mode == "http" && grpc.contains(r.streams)) {
      const Result& g = *grpc[r.streams];
      vs_grpc = absl::StrFormat("%.2f, %.2f, %.2f", r.requests_per_second / g.requests_per_second,
                                r.ttft_p50 / g.ttft_p50, r.ttft_p99 / g.ttft_p99);
    }
    std::printf("| %d | %s | %.1f | %.1f | %.1f | %.2f | %.2f | %s | %s | %s | %d | %d |\n",
                r.streams, r.mode.c_str(), r.requests_per_second, 1e3 * r.ttft_p50,
                1e3 * r.ttft_p99, 1e3 * r.token_p50, 1e3 * r.token_p99,
                r.mode == "http" ? "-" : absl::StrFormat("%.1f%%", 100 * r.match_share).c_str(),
                vs_full.c_str(), vs_grpc.c_str(), r.threads_peak, r.threads_peak - r.streams);
  }
  std::printf("\nThe worker ended with %lld experts resident (%.2f MiB of %.2f MiB).\n",
              static_cast<long long>(status.cache.resident_experts),
              static_cast<double>(status.cache.resident_bytes) / (1 << 20),
              static_cast<double>(status.all_experts_bytes) / (1 << 20));
  std::printf("Machine: %s; load average (1 min) %s at the first row, %s at the end.\n",
              bench::MachineName().c_str(), load_start.c_str(), bench::LoadAverage().c_str());
  if (!json_out.empty()) {
    nlohmann::ordered_json j = nlohmann::ordered_json::array();
    for (const Result& r : results) {
      j.push_back({{"mode", r.mode},
                   {"clients", r.streams},
                   {"requests_per_second", r.requests_per_second},
                   {"ttft_p50", r.ttft_p50},
                   {"ttft_p99", r.ttft_p99},
                   {"token_p50", r.token_p50},
                   {"token_p99", r.token_p99},
                   {"match_share", r.match_share},
                   {"threads_peak", r.threads_peak},
                   {"server_threads_peak", r.threads_peak - r.streams}});
    }
    if (absl::Status s = common::WriteFileAtomically(json_out, j.dump(2) + "\n"); !s.ok()) Die(s);
  }
  return 0;
}
