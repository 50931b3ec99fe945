// Pattern store figures, in one run: Put throughput (sync and not), the close
// that writes the index snapshot, Open rebuilding the index from RocksDB
// against Open loading the snapshot, and Search p50/p99 for the flat and HNSW
// indexes, on a quiet store and with Puts running beside the searches on
// another thread. Prints a markdown table.
//
// The reference, measured in the same run: one pass reading the store's rows
// as fp32 (n x dim floats, XOR-folded as 64-bit words so that the pass is
// bound by memory, not arithmetic), the bytes an exact fp32 search has to
// read, so "search p50 / read" is the search against the memory it would
// touch. The flat index scans int8 copies, a quarter of the bytes, so it can
// come in below 1.
//
// Patterns hold 10 embeddings each (one per calibration prompt); queries are
// random unit vectors, k = 5, max voting, on the store opened from its
// snapshot. The Puts beside replace existing patterns with new embeddings
// (sync=false), as re-profiling a task does.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
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

// The reference: `queries` read passes over n rows of `dim` floats.
Latency Read(int n, int dim, int queries) {
  std::vector<std::uint64_t> words(static_cast<std::size_t>(n) * dim / 2 + 1, 0x3f8000003f800000);
  std::vector<double> us;
  volatile std::uint64_t sink = 0;
  for (int i = 0; i < queries; ++i) {
    const auto t = Clock::now();
    std::uint64_t fold = 0;
    for (std::uint64_t w : words) fold ^= w;
    sink = fold;
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
      "open: rebuild (ms) | open: load the snapshot (ms) | read fp32 rows p50 (us) | search p50 "
      "(us) | search p99 (us) | p50 / read | with Puts beside: p50 (us) | p99 (us) | Puts/s beside "
      "|\n"
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

      const Latency scan = Read(n, f.dim, f.queries);
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
