// Pattern store figures (issue 4), in one run: Put throughput (sync and
// not), the close that writes the index snapshot, Open rebuilding the index
// from RocksDB against Open loading the snapshot, and Search p50/p99 at 1k,
// 10k and 100k embeddings for the flat and HNSW indexes. Prints a markdown
// table.
//
//   store_bench [--dim 128] [--max 100000]
// Patterns hold 10 embeddings each (one per calibration prompt); queries are
// random unit vectors, k = 5, max voting, on the store opened from its
// snapshot.
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
  std::printf(
      "| index | embeddings | put (patterns/s, sync=false) | close, writing the snapshot "
      "(ms) | open: rebuild the index (ms) | open: load the snapshot (ms) | search p50 "
      "(us) | search p99 (us) |\n|---|---|---|---|---|---|---|---|\n");
  for (const char* index : {"flat", "hnsw"}) {
    for (int n : {1'000, 10'000, 100'000}) {
      if (n > max_embeddings) continue;
      std::filesystem::remove_all(root);
      EmbeddedPatternStore::Options options;
      options.path = root;
      options.index = index;
      options.sync = false;
      std::mt19937 rng(n);
      double put_s, close_ms;
      {
        auto store = EmbeddedPatternStore::Open(options);
        Check(store.status());
        const auto t0 = Clock::now();
        for (int i = 0; i < n / kPerPattern; ++i) {
          Check((*store)->Put(Make(i, dim, kPerPattern, rng)).status());
        }
        put_s = Ms(Clock::now() - t0) / 1000;
        const auto t1 = Clock::now();
        store->reset();
        close_ms = Ms(Clock::now() - t1);
      }
      // Each Open's own measure of making its index (RocksDB's open aside).
      auto index_ms = [](EmbeddedPatternStore& s, const char* want) {
        absl::StatusOr<premoe::store::StoreInfo> info = s.Info();
        Check(info.status());
        if (info->index_source != want) {
          Check(absl::InternalError("the index was " + info->index_source + ", not " + want));
        }
        return info->index_open_micros / 1000.0;
      };
      EmbeddedPatternStore::Options rebuild = options;
      rebuild.index_snapshot = false;
      auto rebuilt = EmbeddedPatternStore::Open(rebuild);
      Check(rebuilt.status());
      const double rebuild_ms = index_ms(**rebuilt, "rebuilt");
      rebuilt->reset();
      auto store = EmbeddedPatternStore::Open(options);
      Check(store.status());
      const double load_ms = index_ms(**store, "snapshot");
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
      std::printf("| %s | %d | %.0f | %.1f | %.1f | %.1f | %.0f | %.0f |\n", index, n,
                  (n / kPerPattern) / put_s, close_ms, rebuild_ms, load_ms, us[us.size() / 2],
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
  std::printf(
      "\nput with sync=true (default): %.0f patterns/s (%d puts of %d x %d-dim embeddings)\n",
      kSyncPuts / (Ms(Clock::now() - t0) / 1000), kSyncPuts, kPerPattern, dim);
  store->reset();
  std::filesystem::remove_all(root);
  return 0;
}
