#include "premoe/worker/expert_source.h"

#include <ATen/ATen.h>
#include <sys/mman.h>

#include <cstdlib>
#include <new>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace premoe::worker {
namespace {

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
      : layout_(engine.expert_layout()),
        device_(engine.options().device),
        bytes_(static_cast<size_t>(layout_.bytes)) {
    const int64_t h = engine.config().hidden_size, inter = engine.config().moe_intermediate_size;
    if (layout_.format.quantized()) {
      dtype_ = at::kByte;
      gate_up_shape_ = {layout_.gate_up_bytes};
      down_shape_ = {layout_.down_bytes};
    } else {
      dtype_ = engine.options().dtype == "fp32" ? at::kFloat : at::kBFloat16;
      gate_up_shape_ = {2 * inter, h};
      down_shape_ = {h, inter};
    }
  }
  ~ExpertSlots() {
    for (void* p : free_) std::free(p);
  }

  // CPU: makes `n` slots ready (faulted in) now, so that loads into them
  // are a copy and nothing more.
  void Reserve(int64_t n) {
    if (!device_.is_cpu()) return;
    std::vector<void*> made;
    try {
      for (int64_t i = 0; i < n; ++i) made.push_back(NewSlot());
    } catch (...) {
      for (void* p : made) std::free(p);
      throw;
    }
    absl::MutexLock lock(&mu_);
    free_.insert(free_.end(), made.begin(), made.end());
  }

  // Empty tensors of an expert's shape (the engine's expert layout), backed
  // by one slot. Throws std::bad_alloc or c10::Error when there is no memory.
  std::shared_ptr<model::ExpertWeights> Take() {
    auto w = std::make_shared<model::ExpertWeights>();
    const auto options = at::TensorOptions().dtype(dtype_).device(device_);
    if (!device_.is_cpu()) {
      w->gate_up = at::empty(gate_up_shape_, options);
      w->down = at::empty(down_shape_, options);
      return w;
    }
    void* slot = nullptr;
    {
      absl::MutexLock lock(&mu_);
      if (!free_.empty()) {
        slot = free_.back();
        free_.pop_back();
      }
    }
    if (slot == nullptr) slot = NewSlot();
    std::weak_ptr<ExpertSlots> self = weak_from_this();
    at::Tensor block = at::from_blob(
        slot, {static_cast<int64_t>(bytes_)},
        [self](void* p) {
          if (auto pool = self.lock()) {
            pool->Give(p);
          } else {
            std::free(p);
          }
        },
        at::TensorOptions().dtype(at::kByte));
    // The pack's slot layout, so that a pack reads into the slot with one
    // pread (checkpoint::ExpertPack::Read).
    w->gate_up = block.narrow(0, 0, layout_.gate_up_bytes).view(dtype_).view(gate_up_shape_);
    w->down =
        block.narrow(0, layout_.down_offset, layout_.down_bytes).view(dtype_).view(down_shape_);
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
    absl::MutexLock lock(&mu_);
    free_.push_back(slot);
  }

  const checkpoint::ExpertSlotLayout layout_;
  const at::Device device_;
  const size_t bytes_;
  at::ScalarType dtype_ = at::kBFloat16;
  std::vector<int64_t> gate_up_shape_, down_shape_;
  absl::Mutex mu_;
  std::vector<void*> free_ ABSL_GUARDED_BY(mu_);
};

class EngineSource final : public ExpertSource {
 public:
  explicit EngineSource(const model::Engine* engine)
      : engine_(engine), slots_(std::make_shared<ExpertSlots>(*engine)) {}

  const checkpoint::ModelConfig& config() const override { return engine_->config(); }
  int64_t expert_bytes() const override { return engine_->expert_bytes(); }

  absl::StatusOr<std::shared_ptr<const model::ExpertWeights>> Load(int64_t layer,
                                                                   int64_t expert) const override {
    try {
      std::shared_ptr<model::ExpertWeights> w = slots_->Take();
      absl::Status status = engine_->LoadExpertInto(layer, expert, *w);
      if (!status.ok()) return status;
      return std::shared_ptr<const model::ExpertWeights>(std::move(w));
    } catch (const std::exception& e) {  // bad_alloc, or libtorch's c10::Error
      return absl::ResourceExhaustedError(absl::StrCat(
          "no memory for an expert of ", engine_->expert_bytes(), " bytes: ", e.what()));
    }
  }

  absl::Status Reserve(int64_t experts) const override {
    try {
      slots_->Reserve(experts);
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot reserve memory for ", experts,
                                                       " experts of ", engine_->expert_bytes(),
                                                       " bytes: ", e.what()));
    }
  }

 private:
  const model::Engine* const engine_;
  const std::shared_ptr<ExpertSlots> slots_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ExpertSource>> EngineExpertSource(const model::Engine* engine) {
  if (engine == nullptr || !engine->options().experts_on_demand) {
    return absl::InvalidArgumentError(
        "an engine expert source needs an engine opened with EngineOptions::experts_on_demand");
  }
  return std::unique_ptr<ExpertSource>(new EngineSource(engine));
}

}  // namespace premoe::worker
