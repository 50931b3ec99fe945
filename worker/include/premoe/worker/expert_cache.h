// ExpertCache: the routed experts a worker holds, under a byte budget.
//
// A worker's engine is opened with EngineOptions::experts_on_demand: it holds
// every weight but the routed experts. The cache makes the experts of the
// patterns it serves resident, loading only those it does not hold yet and
// evicting the least recently used ones that no in-flight request needs.
// Several patterns can be resident at once (their union).
//
// In-flight requests hold a Lease: its experts are pinned (never evicted)
// until the lease is destroyed, and its ExpertSet is what the engine's
// Forward reads. A forward of a batch merges its requests' sets.
//
// Thread safety: every method may be called from any thread. Loads are
// serialised (one at a time, outside the cache's lock); Acquire of experts
// that are all resident never waits for a load.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "premoe/model/engine.h"

namespace premoe::worker {

struct ExpertCacheOptions {
  // Most bytes of routed experts resident at once (engine.expert_bytes()
  // each). Required: > 0.
  int64_t budget_bytes = 0;
  // Called (under the cache's lock; must not call back into the cache) for
  // every eviction, with (layer, expert). For tests and metrics. Default: none.
  std::function<void(int64_t, int64_t)> on_evict;
  // Threads that read a Prepare's missing experts, each its share (the copy
  // and its page faults are CPU-bound). 0 = the machine's cores, at most 8.
  // Default: 0.
  int32_t load_threads = 0;
  // Allocate and fault in memory for the whole budget now (CPU), so that
  // loads only copy: reassembly then runs near memcpy speed, and the
  // process's RSS is the budget from the start. Without it, memory for an
  // expert is faulted in when the expert first loads and reused after an
  // eviction. Default: false.
  bool reserve = false;
};

// What one Prepare/Acquire did.
struct LoadReport {
  int64_t needed_experts = 0;  // experts the request named
  int64_t loaded_experts = 0;  // of those, read from the checkpoint now
  int64_t loaded_bytes = 0;
  int64_t evicted_experts = 0;  // made room for them
  double load_seconds = 0;
};

struct CacheStats {
  int64_t budget_bytes = 0;
  int64_t resident_experts = 0;
  int64_t resident_bytes = 0;
  int64_t pinned_experts = 0;  // held by at least one lease
  // Totals since the cache was made.
  int64_t loads = 0;
  int64_t loaded_bytes = 0;
  int64_t evictions = 0;
  double load_seconds = 0;
};

class ExpertCache;
class ExpertSlots;  // expert_cache.cc: the reused memory experts load into

// Pins a set of experts for one request. Destroy it before the cache.
class Lease {
 public:
  ~Lease();
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;

  // The pinned experts, for ForwardOptions::experts.
  const model::ExpertSet& experts() const { return set_; }
  const LoadReport& report() const { return report_; }

 private:
  friend class ExpertCache;
  Lease(ExpertCache* cache, model::ExpertSet set, LoadReport report)
      : cache_(cache), set_(std::move(set)), report_(report) {}
  ExpertCache* cache_;
  model::ExpertSet set_;
  LoadReport report_;
};

class ExpertCache {
 public:
  // `engine` must be opened with experts_on_demand and outlive the cache.
  // INVALID_ARGUMENT for bad options or another kind of engine.
  static absl::StatusOr<std::unique_ptr<ExpertCache>> Create(const model::Engine* engine,
                                                             ExpertCacheOptions options);

  // Makes every expert `keep` names resident (a MoE layer it leaves out
  // means all of that layer's experts; a layer may list fewer than the
  // routing top-k, as an expert-parallel rank's share does), evicting
  // least-recently-used
  // unpinned experts to make room. RESOURCE_EXHAUSTED, evicting nothing, when
  // they cannot fit beside the experts pinned now (or at all); a failed load
  // leaves what was loaded before it resident.
  absl::StatusOr<LoadReport> Prepare(const model::KeptExperts& keep);
  // As Prepare, then pins them until the lease is destroyed. When they fit
  // the budget but not beside the experts pinned now, waits for leases to
  // end, until `deadline` (DEADLINE_EXCEEDED) or, without one, as long as it
  // takes. RESOURCE_EXHAUSTED at once when they exceed the budget alone.
  absl::StatusOr<std::unique_ptr<Lease>> Acquire(
      const model::KeptExperts& keep,
      std::optional<std::chrono::steady_clock::time_point> deadline = std::nullopt);

  // Whether every expert `keep` names is resident now.
  bool Resident(const model::KeptExperts& keep) const;
  // Every resident expert, per layer (layers with none are absent), so a
  // router can tell how many bytes a pattern would load here.
  model::KeptExperts ResidentSet() const;
  CacheStats Stats() const;
  int64_t expert_bytes() const { return expert_bytes_; }

 private:
  using Key = std::pair<int64_t, int64_t>;
  struct Entry {
    std::shared_ptr<const model::ExpertWeights> weights;
    int64_t pins = 0;
    uint64_t last_use = 0;
  };

  ExpertCache(const model::Engine* engine, ExpertCacheOptions options);
  std::vector<Key> Keys(const model::KeptExperts& keep) const;
  // Loads what `keys` lack and, with `pin`, pins all of them; fills `set`.
  // `wait`: wait (until `deadline`) for pins to be released when needed.
  absl::Status Ensure(const std::vector<Key>& keys, bool pin, bool wait,
                      std::optional<std::chrono::steady_clock::time_point> deadline,
                      model::ExpertSet* set, LoadReport* report);
  // Under mu_: pins (or touches) every key if all are resident.
  bool TryPinResident(const std::vector<Key>& keys, bool pin, model::ExpertSet* set);
  void Unpin(const model::ExpertSet& set);

  friend class Lease;
  const model::Engine* engine_;
  const ExpertCacheOptions options_;
  const int64_t expert_bytes_;
  const std::shared_ptr<ExpertSlots> slots_;
  const int32_t load_threads_;
  std::mutex load_mu_;  // one loader at a time; taken before mu_
  mutable std::mutex mu_;
  std::condition_variable unpinned_;  // notified when a lease ends
  std::map<Key, Entry> entries_;
  uint64_t clock_ = 0;
  CacheStats totals_;
};

}  // namespace premoe::worker
