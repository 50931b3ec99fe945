#include "premoe/worker/expert_cache.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "premoe/common/status.h"
#include "premoe/metrics/metrics.h"

namespace premoe::worker {

absl::Status ExpertCacheOptions::Validate() const {
  if (load_threads < 0) {
    return absl::InvalidArgumentError("ExpertCacheOptions.load_threads must be >= 0");
  }
  if (budget_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ExpertCacheOptions.budget_bytes must be > 0, got ", budget_bytes));
  }
  return absl::OkStatus();
}

Lease::~Lease() { cache_->Unpin(set_); }

absl::StatusOr<std::unique_ptr<ExpertCache>> ExpertCache::Create(const ExpertSource* source,
                                                                 ExpertCacheOptions options) {
  if (source == nullptr) return absl::InvalidArgumentError("ExpertCache needs an expert source");
  RETURN_IF_ERROR(options.Validate());
  if (source->expert_bytes() <= 0) {
    return absl::InvalidArgumentError("the expert source reports experts of no bytes");
  }
  std::unique_ptr<ExpertCache> cache(new ExpertCache(source, std::move(options)));
  if (cache->options_.reserve) RETURN_IF_ERROR(source->Reserve(cache->capacity_));
  return cache;
}

ExpertCache::ExpertCache(const ExpertSource* source, ExpertCacheOptions options)
    : source_(source),
      options_(std::move(options)),
      expert_bytes_(source->expert_bytes()),
      capacity_(options_.budget_bytes / expert_bytes_),
      load_threads_(options_.load_threads > 0
                        ? options_.load_threads
                        : std::clamp<int32_t>(
                              static_cast<int32_t>(std::thread::hardware_concurrency()), 1, 8)) {
  absl::MutexLock lock(&mu_);
  totals_.budget_bytes = options_.budget_bytes;
}

ExpertCache::~ExpertCache() = default;

absl::StatusOr<std::vector<ExpertCache::Key>> ExpertCache::Keys(
    const model::KeptExperts& keep) const {
  const checkpoint::ModelConfig& c = source_->config();
  // Layers and ids only: how many a layer keeps is the routing mask's rule,
  // and an expert-parallel rank caches a share that may hold fewer.
  RETURN_IF_ERROR(keep.Validate(c, /*top_k=*/0));
  std::vector<Key> keys;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.IsMoeLayer(static_cast<int>(l))) continue;
    if (const std::vector<int64_t>* kept = keep.Find(l)) {
      for (int64_t e : *kept) keys.emplace_back(l, e);
    } else {
      for (int64_t e = 0; e < c.num_routed_experts; ++e) keys.emplace_back(l, e);
    }
  }
  return keys;
}

absl::StatusOr<LoadReport> ExpertCache::Prepare(const model::KeptExperts& keep, Deadline deadline) {
  ASSIGN_OR_RETURN(const std::vector<Key> keys, Keys(keep));
  LoadReport report;
  RETURN_IF_ERROR(Ensure(keys, /*pin=*/false, /*wait_for_room=*/false, deadline, nullptr, &report));
  return report;
}

absl::StatusOr<std::unique_ptr<Lease>> ExpertCache::Acquire(const model::KeptExperts& keep,
                                                            Deadline deadline) {
  ASSIGN_OR_RETURN(const std::vector<Key> keys, Keys(keep));
  LoadReport report;
  model::ExpertSet set;
  RETURN_IF_ERROR(Ensure(keys, /*pin=*/true, /*wait_for_room=*/true, deadline, &set, &report));
  return std::unique_ptr<Lease>(new Lease(this, std::move(set), report));
}

absl::StatusOr<std::unique_ptr<Lease>> ExpertCache::TryAcquireResident(
    const model::KeptExperts& keep) {
  ASSIGN_OR_RETURN(const std::vector<Key> keys, Keys(keep));
  model::ExpertSet set;
  {
    absl::MutexLock lock(&mu_);
    for (const Key& k : keys) {
      auto it = entries_.find(k);
      if (it == entries_.end() || it->second.weights == nullptr) return nullptr;
    }
    for (const Key& k : keys) {
      Entry& e = entries_.at(k);
      ++e.pins;
      e.last_use = ++clock_;
      set.experts[k] = e.weights;
    }
  }
  LoadReport report;
  report.needed_experts = static_cast<int64_t>(keys.size());
  return std::unique_ptr<Lease>(new Lease(this, std::move(set), report));
}

absl::Status ExpertCache::Wait(Deadline deadline, const char* what) {
  if (shutdown_) return absl::UnavailableError("the expert cache is shutting down");
  if (options_.on_wait) options_.on_wait();
  if (!deadline.has_value()) {
    changed_.Wait(&mu_);
  } else {
    const auto left = *deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::steady_clock::duration::zero() ||
        (changed_.WaitWithTimeout(&mu_, absl::FromChrono(left)) &&
         std::chrono::steady_clock::now() >= *deadline)) {
      return absl::DeadlineExceededError(absl::StrCat("the deadline passed while ", what));
    }
  }
  if (shutdown_) return absl::UnavailableError("the expert cache is shutting down");
  return absl::OkStatus();
}

std::vector<absl::StatusOr<std::shared_ptr<const model::ExpertWeights>>> ExpertCache::ReadUnlocked(
    const std::vector<Key>& missing) {
  mu_.Unlock();
  std::vector<absl::StatusOr<std::shared_ptr<const model::ExpertWeights>>> loaded(
      missing.size(), absl::UnknownError("not loaded"));
  std::atomic<size_t> next{0};
  auto load = [&] {
    for (size_t i = next++; i < missing.size(); i = next++) {
      loaded[i] = source_->Load(missing[i].first, missing[i].second);
    }
  };
  const size_t threads = std::min(missing.size(), static_cast<size_t>(load_threads_));
  std::vector<std::thread> pool;
  try {
    for (size_t t = 1; t < threads; ++t) pool.emplace_back(load);
  } catch (const std::system_error&) {
    // No more threads to be had: the ones started (and this one) do it all.
  }
  load();
  for (std::thread& t : pool) t.join();
  mu_.Lock();
  return loaded;
}

absl::Status ExpertCache::Ensure(const std::vector<Key>& keys, bool pin, bool wait_for_room,
                                 Deadline deadline, model::ExpertSet* set, LoadReport* report) {
  report->needed_experts = static_cast<int64_t>(keys.size());
  if (static_cast<int64_t>(keys.size()) > capacity_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the expert cache cannot hold this pattern: it keeps ", keys.size(),
                     " experts of ", expert_bytes_, " bytes; the budget of ", options_.budget_bytes,
                     " bytes holds ", capacity_));
  }
  absl::MutexLock lock(&mu_);
  // Resident keys (and this call's placeholders) that it pins while it
  // works, so that no other call evicts them before it returns. Never
  // another call's placeholder: that call erases it if its read fails.
  std::vector<Key> held;
  auto hold = [&](const Key& k) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = entries_.find(k);
    if (it == entries_.end() || it->second.weights == nullptr) return;
    if (std::find(held.begin(), held.end(), k) != held.end()) return;
    ++it->second.pins;
    held.push_back(k);
  };
  auto release = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const Key& k : held) --entries_.at(k).pins;
    if (!held.empty()) changed_.SignalAll();
    held.clear();
  };
  while (true) {
    std::vector<Key> missing;
    bool pending = false;  // another call is reading one of them
    for (const Key& k : keys) {
      auto it = entries_.find(k);
      if (it == entries_.end()) {
        missing.push_back(k);
      } else if (it->second.weights == nullptr) {
        pending = true;
      }
    }
    if (missing.empty() && !pending) {
      for (const Key& k : keys) {
        Entry& e = entries_.at(k);
        e.last_use = ++clock_;
        if (pin) ++e.pins;
        if (set != nullptr) set->experts[k] = e.weights;
      }
      release();
      return absl::OkStatus();
    }
    if (missing.empty()) {
      // Only others' reads are outstanding: wait for them, holding ours.
      for (const Key& k : keys) hold(k);
      if (absl::Status s = Wait(deadline, "waiting for experts another request is loading");
          !s.ok()) {
        release();
        return s;
      }
      continue;
    }
    for (const Key& k : keys) hold(k);
    std::vector<std::pair<uint64_t, Key>> evictable;
    for (const auto& [k, e] : entries_) {
      if (e.pins == 0 && e.weights != nullptr) evictable.emplace_back(e.last_use, k);
    }
    const int64_t excess = static_cast<int64_t>(entries_.size() + missing.size()) - capacity_;
    if (excess > static_cast<int64_t>(evictable.size())) {
      // It fits once some requests in flight end. Let go of what this call
      // holds while it waits, so it never keeps another from fitting.
      const int64_t pinned = static_cast<int64_t>(entries_.size() - evictable.size());
      release();
      if (!wait_for_room) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "the expert cache cannot hold this pattern now: it needs ", missing.size(),
            " more experts beside ", pinned, " pinned by requests in flight, within a budget of ",
            capacity_, " experts"));
      }
      RETURN_IF_ERROR(Wait(deadline, "waiting for room in the expert cache"));
      continue;
    }
    if (excess > 0) {
      std::sort(evictable.begin(), evictable.end());
      for (int64_t i = 0; i < excess; ++i) {
        const Key& k = evictable[i].second;
        if (options_.on_evict) options_.on_evict(k.first, k.second);
        entries_.erase(k);
      }
      report->evicted_experts += excess;
      totals_.evictions += excess;
    }
    // Placeholders hold the room while the reads run outside the lock.
    for (const Key& k : missing) {
      entries_[k] = Entry{nullptr, 1, ++clock_};
      held.push_back(k);
    }
    const auto start = std::chrono::steady_clock::now();
    auto loaded = ReadUnlocked(missing);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // What loaded stays resident even when another expert failed.
    absl::Status failed;
    int64_t count = 0;
    for (size_t i = 0; i < missing.size(); ++i) {
      if (loaded[i].ok()) {
        entries_.at(missing[i]).weights = *std::move(loaded[i]);
        ++count;
        continue;
      }
      if (failed.ok()) failed = loaded[i].status();
      entries_.erase(missing[i]);
      held.erase(std::find(held.begin(), held.end(), missing[i]));
    }
    changed_.SignalAll();
    report->loaded_experts += count;
    report->loaded_bytes += count * expert_bytes_;
    report->load_seconds += seconds;
    metrics::Cache().load_seconds.Observe(seconds);
    totals_.loads += count;
    totals_.loaded_bytes += count * expert_bytes_;
    totals_.load_seconds += seconds;
    if (!failed.ok()) {
      release();
      return failed;
    }
  }
}

void ExpertCache::Unpin(const model::ExpertSet& set) {
  absl::MutexLock lock(&mu_);
  for (const auto& [k, w] : set.experts) --entries_.at(k).pins;
  changed_.SignalAll();
}

void ExpertCache::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
  changed_.SignalAll();
}

bool ExpertCache::Resident(const model::KeptExperts& keep) const {
  const absl::StatusOr<std::vector<Key>> keys = Keys(keep);
  if (!keys.ok()) return false;
  absl::MutexLock lock(&mu_);
  return std::all_of(keys->begin(), keys->end(), [&](const Key& k) {
    mu_.AssertHeld();
    auto it = entries_.find(k);
    return it != entries_.end() && it->second.weights != nullptr;
  });
}

model::KeptExperts ExpertCache::ResidentSet() const {
  model::KeptExperts out;
  absl::MutexLock lock(&mu_);
  // entries_ is ordered by (layer, expert): ids arrive sorted.
  for (const auto& [key, entry] : entries_) {
    if (entry.weights != nullptr) out.layers[key.first].push_back(key.second);
  }
  return out;
}

CacheStats ExpertCache::Stats() const {
  absl::MutexLock lock(&mu_);
  CacheStats s = totals_;
  for (const auto& [k, e] : entries_) {
    if (e.weights == nullptr) continue;
    ++s.resident_experts;
    s.pinned_experts += e.pins > 0 ? 1 : 0;
  }
  s.resident_bytes = s.resident_experts * expert_bytes_;
  return s;
}

}  // namespace premoe::worker
