// reassembly_bench: what the worker's on-demand reassembly costs,
// measured in one run, as ratios to references measured in the same run.
//
// usage: reassembly_bench --model DIR [--pattern FILE --pattern FILE]
//          [--budget 50%] [--dtype fp32] [--requests 8] [--new-tokens 32]
//
//   1. Reassembly: every routed expert made resident from the page cache
//      (the checkpoint is read once first), in bytes/s, against memcpy;
//      from the checkpoint's safetensors, and from an expert pack
//      (premoe repack) written to a temporary file for the run.
//   2. Pattern switch: pattern B made resident after A in a cache that holds
//      one pattern (the delta load), against B into an empty cache (a full
//      reload), in ms and bytes.
//   3. Mixed batch: the requests of two patterns interleaved in one batch,
//      against each pattern's requests as a batch of their own, in tokens/s.
//   4. Memory: the RSS of a worker holding the full model, the pattern at
//      --budget and at 25% (each in a child process), beside its weight bytes.
// Without --pattern, two patterns with seeded random scores stand in (on a
// random model nothing better exists). Progress on stderr, the table on stdout.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "premoe/checkpoint/expert_pack.h"
#include "premoe/checkpoint/safetensors.h"
#include "premoe/common/file.h"
#include "premoe/common/mapped_file.h"
#include "premoe/common/process.h"
#include "premoe/model/repack.h"
#include "premoe/store/pattern.h"
#include "premoe/worker/worker.h"

namespace {

using Clock = std::chrono::steady_clock;
using premoe::store::Pattern;
using premoe::worker::Worker;
using premoe::worker::WorkerOptions;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Args {
  std::string model;
  std::vector<std::string> patterns;
  std::string budget = "50%";
  std::string dtype = "fp32";
  int requests = 8;
  int new_tokens = 32;
  std::string child_budget;  // internal: --child BUDGET measures one RSS
};

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "reassembly_bench: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T Check(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) Die(absl::StrCat(what, ": ", v.status().ToString()));
  return *std::move(v);
}

// Exits 2 with CLI11's message on a flag that does not parse (a mistyped
// number must not run the default), and 1 on arguments that do not fit.
Args Parse(int argc, char** argv) {
  Args a;
  CLI::App app("reassembly_bench: what the worker's on-demand reassembly costs");
  app.add_option("--model", a.model, "Model directory")->required();
  app.add_option("--pattern", a.patterns, "Pattern file (premoe profile --out); give two or none")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--budget", a.budget, "Expert budget of the patterns")->capture_default_str();
  app.add_option("--dtype", a.dtype, "bf16 or fp32")->capture_default_str();
  app.add_option("--requests", a.requests, "Requests of the mixed batch (half per pattern)")
      ->capture_default_str()
      ->check(CLI::Range(2, 1 << 16));
  app.add_option("--new-tokens", a.new_tokens, "Tokens decoded per request")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 30));
  app.add_option("--child", a.child_budget, "Internal: measure one worker's RSS at this budget");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
  if (!a.patterns.empty() && a.patterns.size() != 2) Die("give two --pattern files or none");
  return a;
}

// Best of three copies of 512 MiB, in bytes/s.
double MemcpyBandwidth() {
  const size_t n = size_t{512} << 20;
  std::vector<char> src(n, 1), dst(n, 0);
  double best = 0;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = Clock::now();
    std::memcpy(dst.data(), src.data(), n);
    best = std::max(best, static_cast<double>(n) / Seconds(t0, Clock::now()));
  }
  if (dst[n / 2] != 1) Die("memcpy check");
  return best;
}

// Reads every byte of these files once, so the runs below read from the page cache.
void WarmPageCache(const std::vector<std::string>& paths) {
  volatile uint64_t sink = 0;
  for (const auto& path : paths) {
    auto file = Check(premoe::common::MappedFile::Open(path), "mmap");
    const auto data = file->data();
    for (size_t i = 0; i < data.size(); i += 4096) sink = sink + data[i];
  }
}

// Seconds to make every routed expert resident in a fresh worker (one
// full-model token), and the bytes loaded.
std::pair<double, int64_t> FullReassembly(Worker& worker) {
  premoe::worker::WorkRequest one;
  one.prompt = {1};
  one.options.max_new_tokens = 1;
  const auto t0 = Clock::now();
  Check(worker.Generate(one), "full model");
  return {Seconds(t0, Clock::now()), worker.Status().cache.loaded_bytes};
}

std::vector<Pattern> LoadPatterns(const Args& args, const Worker& worker) {
  std::vector<Pattern> out;
  for (const auto& path : args.patterns) {
    out.push_back(
        Check(premoe::store::DecodePattern(Check(premoe::common::ReadFile(path), path.c_str())),
              path.c_str()));
  }
  if (!out.empty()) return out;
  const auto& c = worker.engine().config();
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(0, 1);
  for (const char* task : {"A", "B"}) {
    Pattern p;
    p.task_name = task;
    p.model_fingerprint = worker.fingerprint();
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      if (!c.IsMoeLayer(static_cast<int>(l))) continue;
      premoe::store::LayerScores s{static_cast<int32_t>(l), {}};
      for (int64_t e = 0; e < c.num_routed_experts; ++e) s.scores.push_back(u(rng));
      p.layers.push_back(s);
    }
    out.push_back(p);
  }
  return out;
}

std::unique_ptr<Worker> OpenWorker(const Args& args, int64_t cache_bytes, int max_batch,
                                   const std::string& expert_pack = "", bool reserve = false) {
  WorkerOptions o;
  o.model_dir = args.model;
  o.dtype = args.dtype;
  o.expert_pack = expert_pack;
  o.reserve_cache = reserve;
  o.cache_bytes = cache_bytes;
  o.max_batch = max_batch;
  o.max_queue = 1024;
  return Check(Worker::Open(o), "worker");
}

// Runs `tasks[i]`'s requests concurrently; returns generated tokens per second.
double Throughput(Worker& worker, const std::vector<std::string>& tasks, int new_tokens) {
  const int64_t vocab = worker.engine().config().vocab_size;
  std::vector<std::thread> threads;
  std::atomic<int64_t> tokens{0};
  const auto t0 = Clock::now();
  for (size_t i = 0; i < tasks.size(); ++i) {
    threads.emplace_back([&, i] {
      premoe::worker::WorkRequest r;
      std::mt19937 rng(static_cast<unsigned>(i));
      for (int t = 0; t < 16; ++t) r.prompt.push_back(static_cast<int64_t>(rng() % vocab));
      r.task = tasks[i];
      r.options.max_new_tokens = new_tokens;
      r.options.stop_at_eos = false;
      tokens +=
          static_cast<int64_t>(Check(worker.Generate(r), "generate").generation.tokens.size());
    });
  }
  for (auto& t : threads) t.join();
  return static_cast<double>(tokens) / Seconds(t0, Clock::now());
}

int Child(const Args& args) {
  auto worker = OpenWorker(args, 0, 1);
  const auto patterns = LoadPatterns(args, *worker);
  int64_t experts_bytes = worker->Status().all_experts_bytes;
  if (args.child_budget != "100%") {
    experts_bytes = Check(worker->Prepare(patterns[0], args.child_budget), "prepare").kept_bytes;
  } else {
    premoe::worker::WorkRequest r;  // the full model: one token makes every expert resident
    r.prompt = {1};
    r.options.max_new_tokens = 1;
    Check(worker->Generate(r), "generate");
  }
  std::printf("%lld %lld\n", static_cast<long long>(premoe::common::CurrentRssBytes().value_or(0)),
              static_cast<long long>(worker->Status().base_bytes + experts_bytes));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = Parse(argc, argv);
  if (!args.child_budget.empty()) return Child(args);
  constexpr double kMiB = 1 << 20;

  std::fprintf(stderr, "memcpy bandwidth...\n");
  const double memcpy_bw = MemcpyBandwidth();
  WarmPageCache(
      Check(premoe::checkpoint::Checkpoint::Open(args.model), "checkpoint")->shard_files());

  std::fprintf(stderr, "reassembly of every expert...\n");
  auto all = OpenWorker(args, 0, args.requests);
  const auto patterns = LoadPatterns(args, *all);
  const auto [reassembly_s, reassembly_bytes] = FullReassembly(*all);
  const double reassembly_bw = static_cast<double>(reassembly_bytes) / reassembly_s;
  const auto full_stats = all->Status();

  std::fprintf(stderr, "reassembly from an expert pack...\n");
  const std::string pack = (std::filesystem::temp_directory_path() /
                            absl::StrCat("reassembly_bench-", getpid(), ".pack"))
                               .string();
  premoe::model::ExpertPackWriteOptions pack_options;
  pack_options.dtype = args.dtype;
  if (absl::Status s = premoe::model::WriteExpertPack(args.model, pack, pack_options); !s.ok()) {
    Die("repack: " + s.ToString());
  }
  WarmPageCache({pack});
  // Into memory reserved (faulted in) when the worker opened: the copy alone.
  auto bandwidth = [&](const std::string& from, bool reserve) {
    auto w = OpenWorker(args, 0, 1, from, reserve);
    const auto [s, bytes] = FullReassembly(*w);
    return static_cast<double>(bytes) / s;
  };
  const double reserved_bw = bandwidth("", true);
  const double reserved_pack_bw = bandwidth(pack, true);
  const double pack_bw = bandwidth(pack, false);
  std::filesystem::remove(pack);

  std::fprintf(stderr, "pattern switch...\n");
  const int64_t one_pattern = Check(all->Prepare(patterns[0], args.budget), "prepare").kept_bytes;
  auto empty = OpenWorker(args, one_pattern, 1);
  const auto full_reload = Check(empty->Prepare(patterns[1], args.budget), "prepare B").load;
  auto switching = OpenWorker(args, one_pattern, 1);
  Check(switching->Prepare(patterns[0], args.budget), "prepare A");
  const auto delta = Check(switching->Prepare(patterns[1], args.budget), "prepare B after A").load;

  std::fprintf(stderr, "mixed batch...\n");
  Check(all->Prepare(patterns[1], args.budget), "prepare B");
  std::vector<std::string> a(args.requests / 2, patterns[0].task_name),
      b(args.requests / 2, patterns[1].task_name), mixed;
  for (int i = 0; i < args.requests / 2; ++i) {
    mixed.push_back(patterns[0].task_name);
    mixed.push_back(patterns[1].task_name);
  }
  Throughput(*all, mixed, 4);  // warm-up
  const double mixed_tps = Throughput(*all, mixed, args.new_tokens);
  const double a_tps = Throughput(*all, a, args.new_tokens);
  const double b_tps = Throughput(*all, b, args.new_tokens);
  const double separate_tps = 2.0 / (1.0 / a_tps + 1.0 / b_tps);  // same tokens, two batches
  all.reset();

  std::fprintf(stderr, "memory...\n");
  std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>> rss;
  for (const std::string& budget : {std::string("100%"), args.budget, std::string("25%")}) {
    // A fresh process each: RSS then holds that worker alone.
    std::string cmd =
        absl::StrCat("'", std::filesystem::read_symlink("/proc/self/exe").string(), "' --model '",
                     args.model, "' --dtype ", args.dtype, " --child ", budget);
    for (const auto& p : args.patterns) absl::StrAppend(&cmd, " --pattern '", p, "'");
    FILE* f = popen(cmd.c_str(), "r");
    long long r = 0, w = 0;
    if (f == nullptr || std::fscanf(f, "%lld %lld", &r, &w) != 2 || pclose(f) != 0) {
      Die("child " + budget);
    }
    rss.push_back({budget, {r, w}});
  }

  std::printf("### Reassembly and pattern serving (%s, %s)\n\n", args.model.c_str(),
              args.dtype.c_str());
  std::printf("| | measured | against the reference |\n|---|---:|---:|\n");
  std::printf("| memcpy bandwidth (reference) | %.2f GB/s | 1.00 |\n", memcpy_bw / 1e9);
  std::printf(
      "| reassembly: %lld experts, %.1f MiB, from the page cache, %u load threads (one "
      "per core; memcpy uses one) | %.2f GB/s | %.2f |\n",
      static_cast<long long>(full_stats.cache.loads),
      static_cast<double>(full_stats.cache.loaded_bytes) / kMiB,
      std::clamp(std::thread::hardware_concurrency(), 1u, 8u), reassembly_bw / 1e9,
      reassembly_bw / memcpy_bw);
  std::printf("| the same from an expert pack (premoe repack) | %.2f GB/s | %.2f |\n",
              pack_bw / 1e9, pack_bw / memcpy_bw);
  std::printf(
      "| the same into a reserved cache (--reserve-cache: memory faulted in at start) "
      "| %.2f GB/s | %.2f |\n",
      reserved_bw / 1e9, reserved_bw / memcpy_bw);
  std::printf("| the same from an expert pack into a reserved cache | %.2f GB/s | %.2f |\n",
              reserved_pack_bw / 1e9, reserved_pack_bw / memcpy_bw);
  std::printf("| pattern switch, full reload of B (reference) | %.1f ms, %.2f MiB | 1.00 |\n",
              1e3 * full_reload.load_seconds, static_cast<double>(full_reload.loaded_bytes) / kMiB);
  std::printf(
      "| pattern switch, A -> B delta load | %.1f ms, %.2f MiB | %.2f of the time, %.2f "
      "of the bytes |\n",
      1e3 * delta.load_seconds, static_cast<double>(delta.loaded_bytes) / kMiB,
      delta.load_seconds / full_reload.load_seconds,
      static_cast<double>(delta.loaded_bytes) / static_cast<double>(full_reload.loaded_bytes));
  std::printf("| two single-pattern batches (reference) | %.0f tokens/s | 1.00 |\n", separate_tps);
  std::printf("| one mixed batch of both patterns | %.0f tokens/s | %.2f |\n", mixed_tps,
              mixed_tps / separate_tps);
  const double full_rss = static_cast<double>(rss[0].second.first);
  for (const auto& [budget, rw] : rss) {
    std::printf("| RSS holding %s of the experts | %.1f MiB (weights %.1f MiB) | %.2f |\n",
                budget.c_str(), static_cast<double>(rw.first) / kMiB,
                static_cast<double>(rw.second) / kMiB, static_cast<double>(rw.first) / full_rss);
  }
  return 0;
}
