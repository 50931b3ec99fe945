// Pattern store figures, in one run: Put throughput (sync and not), the close
// that writes the index snapshot, Open rebuilding the index from RocksDB
// against Open loading the snapshot, and Search p50/p99 for the flat and HNSW
// indexes, on a quiet store and with Puts running beside the searches on
// another thread. Prints a markdown table.
//
// The reference, measured in the same run: an exact inner-product scan over
// the same number of 128-float rows in one plain std::vector (what any exact
// search must at least read), so "search p50 / scan" says what the store adds
// on top of the memory it has to touch.
//
// Patterns hold 10 embeddings each (one per calibration prompt); queries are
// random unit vectors, k = 5, max voting, on the store opened from its
// snapshot. The Puts beside replace existing patterns with new embeddings
// (sync=false), as re-profiling a task does.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "premoe/store/embedded_store.h"

namespace {

using Clock = std::chrono::steady_clock;
using premoe::store::EmbeddedPatternStore;
using premoe::store::Pattern;

constexpr int kPerPattern = 10;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

Pattern Make(int i, int dim, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  Pattern p;
  p.task_name = "task" + std::to_string(i);
  p.model_fingerprint = "bench-model";
  p.metric = "peu";
  p.layers.push_back({1, std::vector<float>(64, 0.5f)});
  for (int e = 0; e < kPerPattern; ++e) {
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

struct Latency {
  double p50_us = 0, p99_us = 0;
};

Latency Percentiles(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[us.size() * 99 / 100]};
}

// `queries` searches of random unit vectors.
Latency Searches(EmbeddedPatternStore& store, int dim, int queries, std::mt19937& rng) {
  std::vector<double> us;
  std::normal_distribution<float> normal;
  std::vector<float> q(dim);
  for (int i = 0; i < queries; ++i) {
    for (float& x : q) x = normal(rng);
    const auto t = Clock::now();
    Check(store.Search(q, {.k = 5}).status());
    us.push_back(Ms(Clock::now() - t) * 1000);
  }
  return Percentiles(std::move(us));
}

// The reference: the best of `queries` exact scans (inner product with every
// row, best kept) over n rows of `dim` floats.
Latency Scan(int n, int dim, int queries, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> rows(static_cast<std::size_t>(n) * dim);
  for (float& x : rows) x = normal(rng);
  std::vector<float> q(dim);
  std::vector<double> us;
  volatile float sink = 0;
  for (int i = 0; i < queries; ++i) {
    for (float& x : q) x = normal(rng);
    const auto t = Clock::now();
    float best = -1e30f;
    for (int r = 0; r < n; ++r) {
      const float* row = rows.data() + static_cast<std::size_t>(r) * dim;
      float dot = 0;
      for (int d = 0; d < dim; ++d) dot += row[d] * q[d];
      best = std::max(best, dot);
    }
    sink = best;
    us.push_back(Ms(Clock::now() - t) * 1000);
  }
  (void)sink;
  return Percentiles(std::move(us));
}

struct Flags {
  int dim = 128;
  std::vector<int> sizes = {1'000, 10'000, 100'000};
  std::vector<std::string> indexes = {"flat", "hnsw"};
  int queries = 1000;
  int sync_puts = 200;
};

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app("store_bench: pattern store Put, open and Search figures");
  app.add_option("--dim", f.dim, "Embedding dimension")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--sizes", f.sizes, "Embeddings in the store, one row each")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::Range(kPerPattern, 10'000'000));
  app.add_option("--indexes", f.indexes, "Index kinds")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::IsMember({"flat", "hnsw"}));
  app.add_option("--queries", f.queries, "Searches per measurement")
      ->capture_default_str()
      ->check(CLI::Range(100, 1'000'000));
  app.add_option("--sync-puts", f.sync_puts, "Durable Puts timed at the end (0: none)")
      ->capture_default_str()
      ->check(CLI::Range(0, 100'000));
  CLI11_PARSE(app, argc, argv);

  const std::string root =
      (std::filesystem::temp_directory_path() / ("premoe_store_bench_" + std::to_string(getpid())))
          .string();
  std::printf(
      "| index | embeddings | put (patterns/s, sync=false) | close, writing the snapshot (ms) | "
      "open: rebuild (ms) | open: load the snapshot (ms) | scan p50 (us) | search p50 (us) | "
      "search p99 (us) | p50 / scan | with Puts beside: p50 (us) | p99 (us) | Puts/s beside |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const std::string& index : f.indexes) {
    for (int n : f.sizes) {
      std::filesystem::remove_all(root);
      EmbeddedPatternStore::Options options;
      options.path = root;
      options.index = index;
      options.sync = false;
      std::mt19937 rng(n);
      const int patterns = n / kPerPattern;
      double put_s, close_ms;
      {
        auto store = EmbeddedPatternStore::Open(options);
        Check(store.status());
        const auto t0 = Clock::now();
        for (int i = 0; i < patterns; ++i) Check((*store)->Put(Make(i, f.dim, rng)).status());
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

      const Latency scan = Scan(n, f.dim, f.queries, rng);
      const Latency quiet = Searches(**store, f.dim, f.queries, rng);
      std::atomic<bool> stop{false};
      std::atomic<int> puts{0};
      std::thread writer([&] {
        std::mt19937 wrng(n + 1);
        for (int i = 0; !stop.load(); i = (i + 1) % patterns) {
          Check((*store)->Put(Make(i, f.dim, wrng)).status());
          puts.fetch_add(1);
        }
      });
      const auto t_busy = Clock::now();
      const Latency busy = Searches(**store, f.dim, f.queries, rng);
      const double busy_s = Ms(Clock::now() - t_busy) / 1000;
      stop.store(true);
      writer.join();
      std::printf(
          "| %s | %d | %.0f | %.1f | %.1f | %.1f | %.0f | %.0f | %.0f | %.2f | %.0f | %.0f | %.0f "
          "|\n",
          index.c_str(), n, patterns / put_s, close_ms, rebuild_ms, load_ms, scan.p50_us,
          quiet.p50_us, quiet.p99_us, quiet.p50_us / scan.p50_us, busy.p50_us, busy.p99_us,
          puts.load() / busy_s);
      std::fflush(stdout);
      store->reset();
    }
  }
  if (f.sync_puts > 0) {  // durable Puts (the default, fsync per change)
    std::filesystem::remove_all(root);
    EmbeddedPatternStore::Options options;
    options.path = root;
    auto store = EmbeddedPatternStore::Open(options);
    Check(store.status());
    std::mt19937 rng(1);
    const auto t0 = Clock::now();
    for (int i = 0; i < f.sync_puts; ++i) Check((*store)->Put(Make(i, f.dim, rng)).status());
    std::printf(
        "\nput with sync=true (default): %.0f patterns/s (%d puts of %d x %d-dim embeddings)\n",
        f.sync_puts / (Ms(Clock::now() - t0) / 1000), f.sync_puts, kPerPattern, f.dim);
    store->reset();
  }
  std::filesystem::remove_all(root);
  return 0;
}
