// Pattern store figures (issue 4), in one run: Put throughput (sync and
// not), open/rebuild time, and Search p50/p99 at 1k, 10k and 100k
// embeddings for the flat and HNSW indexes. Prints a markdown table.
//
//   store_bench [--dim 128] [--max 100000]
// Patterns hold 10 embeddings each (one per calibration prompt); queries are
// random unit vectors, k = 5, max voting.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "premoe/store/embedded_store.h"

namespace {

using Clock = std::chrono::steady_clock;
using premoe::store::EmbeddedPatternStore;
using premoe::store::Pattern;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

Pattern Make(int i, int dim, int embeddings, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  Pattern p;
  p.task_name = "task" + std::to_string(i);
  p.model_fingerprint = "bench-model";
  p.metric = "peu";
  p.layers.push_back({1, std::vector<float>(64, 0.5f)});
  for (int e = 0; e < embeddings; ++e) {
    std::vector<float> v(dim);
    for (float& x : v) x = normal(rng);
    p.embeddings.push_back({std::move(v), ""});
  }
  return p;
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "store_bench: %s\n", s.ToString().c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int dim = 128, max_embeddings = 100'000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--dim") dim = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--max") max_embeddings = std::atoi(argv[i + 1]);
  }
  constexpr int kPerPattern = 10, kQueries = 1000;
  const std::string root =
      (std::filesystem::temp_directory_path() / ("premoe_store_bench_" + std::to_string(getpid())))
          .string();
  std::printf("| index | embeddings | put (patterns/s, sync=false) | open+rebuild (ms) | "
              "search p50 (us) | search p99 (us) |\n|---|---|---|---|---|---|\n");
  for (const char* index : {"flat", "hnsw"}) {
    for (int n : {1'000, 10'000, 100'000}) {
      if (n > max_embeddings) continue;
      std::filesystem::remove_all(root);
      EmbeddedPatternStore::Options options;
      options.path = root;
      options.index = index;
      options.sync = false;
      std::mt19937 rng(n);
      double put_s;
      {
        auto store = EmbeddedPatternStore::Open(options);
        Check(store.status());
        const auto t0 = Clock::now();
        for (int i = 0; i < n / kPerPattern; ++i) {
          Check((*store)->Put(Make(i, dim, kPerPattern, rng)).status());
        }
        put_s = Ms(Clock::now() - t0) / 1000;
      }
      const auto t1 = Clock::now();
      auto store = EmbeddedPatternStore::Open(options);
      Check(store.status());
      const double open_ms = Ms(Clock::now() - t1);
      std::vector<double> us;
      std::normal_distribution<float> normal;
      std::vector<float> q(dim);
      for (int i = 0; i < kQueries; ++i) {
        for (float& x : q) x = normal(rng);
        const auto t = Clock::now();
        Check((*store)->Search(q, {.k = 5}).status());
        us.push_back(Ms(Clock::now() - t) * 1000);
      }
      std::sort(us.begin(), us.end());
      std::printf("| %s | %d | %.0f | %.1f | %.0f | %.0f |\n", index, n,
                  (n / kPerPattern) / put_s, open_ms, us[us.size() / 2],
                  us[us.size() * 99 / 100]);
      std::fflush(stdout);
    }
  }
  // Durable Puts (the default, fsync per change).
  std::filesystem::remove_all(root);
  EmbeddedPatternStore::Options options;
  options.path = root;
  auto store = EmbeddedPatternStore::Open(options);
  Check(store.status());
  std::mt19937 rng(1);
  const auto t0 = Clock::now();
  constexpr int kSyncPuts = 200;
  for (int i = 0; i < kSyncPuts; ++i) Check((*store)->Put(Make(i, dim, kPerPattern, rng)).status());
  std::printf("\nput with sync=true (default): %.0f patterns/s (%d puts of %d x %d-dim embeddings)\n",
              kSyncPuts / (Ms(Clock::now() - t0) / 1000), kSyncPuts, kPerPattern, dim);
  store->reset();
  std::filesystem::remove_all(root);
  return 0;
}
