#include "premoe/worker/expert_cache.h"

#include <ATen/ATen.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <new>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"
#include "premoe/common/status.h"

namespace premoe::worker {

// Memory for experts, one slot per expert, reused: an evicted expert's slot
// goes back to the free list once the last forward using it lets go, and the
// next load reads into it. Reused slots are already faulted in, so a load is
// one copy from the page cache (no page faults, no zeroing), and the heap
// does not fragment under churn. Slots are never returned to the system:
// the resident set's high-water mark, at most about the budget, stays.
// On CUDA the caching allocator plays this part.
class ExpertSlots : public std::enable_shared_from_this<ExpertSlots> {
 public:
  explicit ExpertSlots(const model::Engine& engine)
      : hidden_(engine.config().hidden_size),
        inter_(engine.config().moe_intermediate_size),
        options_(at::TensorOptions()
                     .dtype(engine.options().dtype == "fp32" ? at::kFloat : at::kBFloat16)
                     .device(at::Device(engine.options().device))),
        bytes_(static_cast<size_t>(engine.expert_bytes())) {}
  ~ExpertSlots() {
    for (void* p : free_) std::free(p);
  }

  // CPU: makes `n` slots ready (faulted in) now, so that loads into them
  // are a copy and nothing more.
  void Reserve(int64_t n) {
    if (!options_.device().is_cpu()) return;
    std::vector<void*> made;
    for (int64_t i = 0; i < n; ++i) made.push_back(NewSlot());
    std::lock_guard lock(mu_);
    free_.insert(free_.end(), made.begin(), made.end());
  }

  // Empty tensors of an expert's shape, backed by one slot.
  std::shared_ptr<model::ExpertWeights> Take() {
    auto w = std::make_shared<model::ExpertWeights>();
    if (!options_.device().is_cpu()) {
      w->gate_up = at::empty({2 * inter_, hidden_}, options_);
      w->down = at::empty({hidden_, inter_}, options_);
      return w;
    }
    void* slot = nullptr;
    {
      std::lock_guard lock(mu_);
      if (!free_.empty()) {
        slot = free_.back();
        free_.pop_back();
      }
    }
    if (slot == nullptr) slot = NewSlot();
    std::weak_ptr<ExpertSlots> self = weak_from_this();
    at::Tensor block = at::from_blob(
        slot, {static_cast<int64_t>(bytes_ / options_.dtype().itemsize())},
        [self](void* p) {
          if (auto pool = self.lock()) {
            pool->Give(p);
          } else {
            std::free(p);
          }
        },
        options_);
    w->gate_up = block.narrow(0, 0, 2 * inter_ * hidden_).view({2 * inter_, hidden_});
    w->down = block.narrow(0, 2 * inter_ * hidden_, hidden_ * inter_).view({hidden_, inter_});
    return w;
  }

 private:
  // Fresh memory for one slot, page-aligned and faulted in with one call
  // rather than a fault per page as the load's copy touches it. (Not
  // MADV_HUGEPAGE: with the usual defrag=madvise the kernel then compacts
  // memory synchronously, and loads ran at half the speed.)
  void* NewSlot() const {
    void* slot = nullptr;
    if (::posix_memalign(&slot, 4096, bytes_) != 0) throw std::bad_alloc();
#ifdef MADV_POPULATE_WRITE
    (void)::madvise(slot, (bytes_ + 4095) / 4096 * 4096, MADV_POPULATE_WRITE);
#endif
    return slot;
  }

  void Give(void* slot) {
    std::lock_guard lock(mu_);
    free_.push_back(slot);
  }

  const int64_t hidden_, inter_;
  const at::TensorOptions options_;
  const size_t bytes_;
  std::mutex mu_;
  std::vector<void*> free_;
};

Lease::~Lease() { cache_->Unpin(set_); }

absl::StatusOr<std::unique_ptr<ExpertCache>> ExpertCache::Create(const model::Engine* engine,
                                                                 ExpertCacheOptions options) {
  if (engine == nullptr || !engine->options().experts_on_demand) {
    return absl::InvalidArgumentError(
        "ExpertCache needs an engine opened with EngineOptions::experts_on_demand");
  }
  if (options.load_threads < 0) {
    return absl::InvalidArgumentError("ExpertCacheOptions.load_threads must be >= 0");
  }
  if (options.budget_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ExpertCacheOptions.budget_bytes must be > 0, got ", options.budget_bytes));
  }
  return std::unique_ptr<ExpertCache>(new ExpertCache(engine, std::move(options)));
}

ExpertCache::ExpertCache(const model::Engine* engine, ExpertCacheOptions options)
    : engine_(engine),
      options_(std::move(options)),
      expert_bytes_(engine->expert_bytes()),
      slots_(std::make_shared<ExpertSlots>(*engine)),
      load_threads_(options_.load_threads > 0
                        ? options_.load_threads
                        : std::clamp<int32_t>(
                              static_cast<int32_t>(std::thread::hardware_concurrency()), 1, 8)) {
  totals_.budget_bytes = options_.budget_bytes;
  if (options_.reserve) slots_->Reserve(options_.budget_bytes / expert_bytes_);
}

std::vector<ExpertCache::Key> ExpertCache::Keys(const model::KeptExperts& keep) const {
  const checkpoint::ModelConfig& c = engine_->config();
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

absl::StatusOr<LoadReport> ExpertCache::Prepare(const model::KeptExperts& keep) {
  // Layers and ids only: how many a layer keeps is the routing mask's rule,
  // and an expert-parallel rank caches a share that may hold fewer.
  RETURN_IF_ERROR(keep.Validate(engine_->config(), /*top_k=*/0));
  LoadReport report;
  RETURN_IF_ERROR(
      Ensure(Keys(keep), /*pin=*/false, /*wait=*/false, std::nullopt, nullptr, &report));
  return report;
}

absl::StatusOr<std::unique_ptr<Lease>> ExpertCache::Acquire(
    const model::KeptExperts& keep, std::optional<std::chrono::steady_clock::time_point> deadline) {
  // Layers and ids only: how many a layer keeps is the routing mask's rule,
  // and an expert-parallel rank caches a share that may hold fewer.
  RETURN_IF_ERROR(keep.Validate(engine_->config(), /*top_k=*/0));
  LoadReport report;
  model::ExpertSet set;
  RETURN_IF_ERROR(Ensure(Keys(keep), /*pin=*/true, /*wait=*/true, deadline, &set, &report));
  return std::unique_ptr<Lease>(new Lease(this, std::move(set), report));
}

bool ExpertCache::TryPinResident(const std::vector<Key>& keys, bool pin, model::ExpertSet* set) {
  for (const Key& k : keys) {
    if (!entries_.contains(k)) return false;
  }
  for (const Key& k : keys) {
    Entry& e = entries_.at(k);
    if (pin) ++e.pins;
    e.last_use = ++clock_;
    if (set != nullptr) set->experts[k] = e.weights;
  }
  return true;
}

absl::Status ExpertCache::Ensure(const std::vector<Key>& keys, bool pin, bool wait,
                                 std::optional<std::chrono::steady_clock::time_point> deadline,
                                 model::ExpertSet* set, LoadReport* report) {
  report->needed_experts = static_cast<int64_t>(keys.size());
  {
    std::lock_guard lock(mu_);
    if (TryPinResident(keys, pin, set)) return absl::OkStatus();
  }
  const int64_t capacity = options_.budget_bytes / expert_bytes_;
  if (static_cast<int64_t>(keys.size()) > capacity) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the expert cache cannot hold this pattern: it keeps ", keys.size(), " experts of ",
        expert_bytes_, " bytes; the budget of ", options_.budget_bytes, " bytes holds ", capacity));
  }
  std::lock_guard loading(load_mu_);
  std::vector<Key> missing, held;
  std::unique_lock lock(mu_);
  while (true) {
    // Another loader may have brought them in while this one waited.
    if (TryPinResident(keys, pin, set)) return absl::OkStatus();
    // Hold what is resident (so the evictions below skip it) and count
    // what is not.
    missing.clear();
    held.clear();
    for (const Key& k : keys) {
      auto it = entries_.find(k);
      if (it == entries_.end()) {
        missing.push_back(k);
      } else {
        ++it->second.pins;
        held.push_back(k);
      }
    }
    const int64_t excess = static_cast<int64_t>(entries_.size() + missing.size()) - capacity;
    std::vector<std::pair<uint64_t, Key>> evictable;
    for (const auto& [k, e] : entries_) {
      if (e.pins == 0) evictable.emplace_back(e.last_use, k);
    }
    if (excess <= static_cast<int64_t>(evictable.size())) {
      if (excess > 0) {
        std::sort(evictable.begin(), evictable.end());
        for (int64_t i = 0; i < excess; ++i) {
          const Key& k = evictable[i].second;
          if (options_.on_evict) options_.on_evict(k.first, k.second);
          entries_.erase(k);
        }
        report->evicted_experts = excess;
        totals_.evictions += excess;
      }
      break;
    }
    for (const Key& k : held) --entries_.at(k).pins;
    if (!wait) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the expert cache cannot hold this pattern now: it needs ", missing.size(),
                       " more experts beside ", entries_.size() - evictable.size(),
                       " pinned by requests in flight, within a budget of ", capacity, " experts"));
    }
    // It fits once some requests in flight end.
    if (!deadline.has_value()) {
      unpinned_.wait(lock);
    } else if (unpinned_.wait_until(lock, *deadline) == std::cv_status::timeout) {
      return absl::DeadlineExceededError(
          "the deadline passed while waiting for room in the expert cache");
    }
  }
  lock.unlock();
  // Read outside mu_: requests whose experts are resident keep going.
  const auto start = std::chrono::steady_clock::now();
  std::vector<absl::StatusOr<std::shared_ptr<const model::ExpertWeights>>> loaded(
      missing.size(), absl::UnknownError("not loaded"));
  std::atomic<size_t> next{0};
  auto load = [&] {
    for (size_t i = next++; i < missing.size(); i = next++) {
      try {
        std::shared_ptr<model::ExpertWeights> w = slots_->Take();
        absl::Status status = engine_->LoadExpertInto(missing[i].first, missing[i].second, *w);
        if (status.ok()) {
          loaded[i] = std::shared_ptr<const model::ExpertWeights>(std::move(w));
        } else {
          loaded[i] = std::move(status);
        }
      } catch (const std::exception& e) {  // bad_alloc, or libtorch's c10::Error
        loaded[i] = absl::ResourceExhaustedError(
            absl::StrCat("no memory for an expert of ", expert_bytes_, " bytes: ", e.what()));
      }
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
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  lock.lock();
  // What loaded stays resident even when another expert failed.
  absl::Status status;
  int64_t count = 0;
  for (size_t i = 0; i < loaded.size(); ++i) {
    if (!loaded[i].ok()) {
      if (status.ok()) status = loaded[i].status();
      continue;
    }
    entries_[missing[i]] = Entry{*std::move(loaded[i]), 0, ++clock_};
    ++count;
  }
  for (const Key& k : held) --entries_.at(k).pins;
  report->loaded_experts = count;
  report->loaded_bytes = report->loaded_experts * expert_bytes_;
  report->load_seconds = seconds;
  totals_.loads += report->loaded_experts;
  totals_.loaded_bytes += report->loaded_bytes;
  totals_.load_seconds += seconds;
  RETURN_IF_ERROR(status);
  TryPinResident(keys, pin, set);  // all resident now: evictions happen under load_mu_ only
  return absl::OkStatus();
}

void ExpertCache::Unpin(const model::ExpertSet& set) {
  {
    std::lock_guard lock(mu_);
    for (const auto& [k, w] : set.experts) --entries_.at(k).pins;
  }
  unpinned_.notify_all();
}

bool ExpertCache::Resident(const model::KeptExperts& keep) const {
  const std::vector<Key> keys = Keys(keep);
  std::lock_guard lock(mu_);
  return std::all_of(keys.begin(), keys.end(), [&](const Key& k) { return entries_.contains(k); });
}

model::KeptExperts ExpertCache::ResidentSet() const {
  model::KeptExperts out;
  std::lock_guard lock(mu_);
  // entries_ is ordered by (layer, expert): ids arrive sorted.
  for (const auto& [key, entry] : entries_) out.layers[key.first].push_back(key.second);
  return out;
}

CacheStats ExpertCache::Stats() const {
  std::lock_guard lock(mu_);
  CacheStats s = totals_;
  s.resident_experts = static_cast<int64_t>(entries_.size());
  s.resident_bytes = s.resident_experts * expert_bytes_;
  for (const auto& [k, e] : entries_) s.pinned_experts += e.pins > 0 ? 1 : 0;
  return s;
}

}  // namespace premoe::worker
