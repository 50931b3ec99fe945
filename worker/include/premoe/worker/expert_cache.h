// ExpertCache: the routed experts a worker holds, under a byte budget.
//
// A worker's engine is opened with EngineOptions::experts_on_demand: it holds
// every weight but the routed experts. The cache makes the experts of the
// patterns it serves resident, reading only those it does not hold yet from
// its ExpertSource and evicting the least recently used ones that no
// in-flight request needs. Several patterns can be resident at once (their
// union).
//
// In-flight requests hold a Lease: its experts are pinned (never evicted)
// until the lease is destroyed, and its ExpertSet is what the engine's
// Forward reads. A forward of a batch merges its requests' sets.
//
// Thread safety: every method may be called from any thread. No lock is held
// while experts are read or while a call waits: loads of different experts
// run in parallel (two calls that need the same expert read it once, the
// second waiting for the first's read), and a call waiting for room never
// holds up another whose experts fit or are resident. Every wait ends at the
// caller's deadline or at Shutdown.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "premoe/model/engine.h"
#include "premoe/worker/expert_source.h"

namespace premoe::worker {

struct ExpertCacheOptions {
  // Most bytes of routed experts resident at once (source.expert_bytes()
  // each). Required: > 0.
  int64_t budget_bytes = 0;
  // Called (under the cache's lock; must not call back into the cache) for
  // every eviction, with (layer, expert). For tests and metrics. Default: none.
  std::function<void(int64_t, int64_t)> on_evict;
  // Called (under the cache's lock; must not call back into the cache) each
  // time a call starts to wait for room or for another call's read: a sync
  // point for tests that must see a call waiting. Default: none.
  std::function<void()> on_wait;
  // Threads that read one call's missing experts, each its share (the copy
  // and its page faults are CPU-bound). 0 = the machine's cores, at most 8.
  // Default: 0.
  int32_t load_threads = 0;
  // Ask the source to make memory for the whole budget ready now
  // (ExpertSource::Reserve), so that loads only copy: reassembly then runs
  // near memcpy speed, and the process's RSS is the budget from the start.
  // Default: false.
  bool reserve = false;

  absl::Status Validate() const;
};

// What one Prepare/Acquire did.
struct LoadReport {
  int64_t needed_experts = 0;  // experts the request named
  int64_t loaded_experts = 0;  // of those, read from the source by this call
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
  using Deadline = std::optional<std::chrono::steady_clock::time_point>;

  // `source` is not owned and must outlive the cache. INVALID_ARGUMENT for
  // bad options.
  static absl::StatusOr<std::unique_ptr<ExpertCache>> Create(const ExpertSource* source,
                                                             ExpertCacheOptions options);
  ~ExpertCache();

  // Makes every expert `keep` names resident (a MoE layer it leaves out
  // means all of that layer's experts; a layer may list fewer than the
  // routing top-k, as an expert-parallel rank's share does), evicting
  // least-recently-used unpinned experts to make room. RESOURCE_EXHAUSTED,
  // evicting nothing, when they cannot fit beside the experts pinned now (or
  // at all); a failed load leaves what was loaded before it resident. Waits
  // only for reads of its experts that another call has started, until
  // `deadline` (DEADLINE_EXCEEDED).
  absl::StatusOr<LoadReport> Prepare(const model::KeptExperts& keep, Deadline deadline = {});
  // As Prepare, then pins them until the lease is destroyed. When they fit
  // the budget but not beside the experts pinned now, waits for leases to
  // end, until `deadline` (DEADLINE_EXCEEDED) or, without one, as long as it
  // takes. RESOURCE_EXHAUSTED at once when they exceed the budget alone.
  absl::StatusOr<std::unique_ptr<Lease>> Acquire(const model::KeptExperts& keep,
                                                 Deadline deadline = {});
  // Pins `keep`'s experts if every one is resident now; nullptr (pinning
  // nothing) otherwise. Never reads, evicts or waits. INVALID_ARGUMENT for a
  // `keep` that does not fit the model.
  absl::StatusOr<std::unique_ptr<Lease>> TryAcquireResident(const model::KeptExperts& keep);

  // Ends every wait with UNAVAILABLE, now and from now on; loads under way
  // finish. For an owner about to stop.
  void Shutdown();

  // Whether every expert `keep` names is resident now.
  bool Resident(const model::KeptExperts& keep) const;
  // Every resident expert, per layer (layers with none are absent), so a
  // router can tell how many bytes a pattern would load here.
  model::KeptExperts ResidentSet() const;
  CacheStats Stats() const;
  int64_t expert_bytes() const { return expert_bytes_; }

 private:
  using Key = std::pair<int64_t, int64_t>;  // (layer, expert)
  struct Entry {
    // Null while a call reads it: the entry holds its room in the budget.
    std::shared_ptr<const model::ExpertWeights> weights;
    int64_t pins = 0;
    uint64_t last_use = 0;
  };
  ExpertCache(const ExpertSource* source, ExpertCacheOptions options);
  absl::StatusOr<std::vector<Key>> Keys(const model::KeptExperts& keep) const;
  // Makes `keys` resident and, with `pin`, pins all of them into `set`.
  // `wait_for_room`: wait (until `deadline`) for leases to end when needed.
  absl::Status Ensure(const std::vector<Key>& keys, bool pin, bool wait_for_room, Deadline deadline,
                      model::ExpertSet* set, LoadReport* report);
  // Reads `missing` from the source on up to load_threads_ threads, with mu_
  // released meanwhile; one result per key.
  std::vector<absl::StatusOr<std::shared_ptr<const model::ExpertWeights>>> ReadUnlocked(
      const std::vector<Key>& missing) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits on changed_ until it is signalled; DEADLINE_EXCEEDED (naming
  // `what`) once `deadline` has passed, UNAVAILABLE after Shutdown.
  absl::Status Wait(Deadline deadline, const char* what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Unpin(const model::ExpertSet& set);

  friend class Lease;
  const ExpertSource* const source_;
  const ExpertCacheOptions options_;
  const int64_t expert_bytes_;
  const int64_t capacity_;  // experts the budget holds
  const int32_t load_threads_;
  mutable absl::Mutex mu_;
  // Signalled when an entry finishes loading, fails, is unpinned or evicted.
  absl::CondVar changed_;
  std::map<Key, Entry> entries_ ABSL_GUARDED_BY(mu_);
  uint64_t clock_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  CacheStats totals_ ABSL_GUARDED_BY(mu_);
};

}  // namespace premoe::worker
