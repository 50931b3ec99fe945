// A fake ExpertSource for expert-cache tests: a mixtral-shaped model of
// `layers` MoE layers with `experts` routed experts each, whose experts are
// empty weights of `bytes_each` bytes. It counts reads and can hold them
// back (Gate) to make a race reproducible, or fail chosen experts.
// Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "premoe/checkpoint/config.h"
#include "premoe/worker/expert_source.h"

namespace premoe::testing {

class FakeExpertSource final : public worker::ExpertSource {
 public:
  FakeExpertSource(int64_t layers, int64_t experts, int64_t bytes_each)
      : config_(checkpoint::ModelConfig::Defaults(checkpoint::Architecture::kMixtral)),
        bytes_each_(bytes_each) {
    config_.num_hidden_layers = layers;
    config_.num_routed_experts = experts;
    config_.num_experts_per_tok = 1;
  }

  const checkpoint::ModelConfig& config() const override { return config_; }
  int64_t expert_bytes() const override { return bytes_each_; }

  absl::StatusOr<std::shared_ptr<const model::ExpertWeights>> Load(int64_t layer,
                                                                   int64_t expert) const override {
    absl::MutexLock lock(&mu_);
    ++reads_;
    in_flight_.insert({layer, expert});
    max_in_flight_ = std::max<int64_t>(max_in_flight_, static_cast<int64_t>(in_flight_.size()));
    mu_.Await(absl::Condition(this, &FakeExpertSource::Open));
    in_flight_.erase({layer, expert});
    if (failing_.contains({layer, expert})) {
      return absl::DataLossError(
          absl::StrCat("expert ", expert, " of layer ", layer, " is damaged"));
    }
    return std::make_shared<const model::ExpertWeights>();
  }

  // Reads since construction or the last ResetCounters.
  int64_t experts_read() const {
    absl::MutexLock lock(&mu_);
    return reads_;
  }
  // The most reads that ran at once.
  int64_t max_in_flight() const {
    absl::MutexLock lock(&mu_);
    return max_in_flight_;
  }
  void ResetCounters() {
    absl::MutexLock lock(&mu_);
    reads_ = 0;
    max_in_flight_ = 0;
  }
  // While closed, reads start (and are counted) but do not return.
  void Gate(bool open) {
    absl::MutexLock lock(&mu_);
    open_ = open;
  }
  // Waits until `n` reads are held at a closed gate at once; false if that
  // did not happen within `timeout` (a test then fails instead of hanging).
  bool AwaitInFlight(int64_t n, absl::Duration timeout = absl::Seconds(60)) const {
    absl::MutexLock lock(&mu_);
    auto reached = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return static_cast<int64_t>(in_flight_.size()) >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }
  // Reads of (layer, expert) fail with DATA_LOSS from now on.
  void Fail(int64_t layer, int64_t expert) {
    absl::MutexLock lock(&mu_);
    failing_.insert({layer, expert});
  }

 private:
  bool Open() const ABSL_SHARED_LOCKS_REQUIRED(mu_) { return open_; }

  checkpoint::ModelConfig config_;
  const int64_t bytes_each_;
  mutable absl::Mutex mu_;
  mutable int64_t reads_ ABSL_GUARDED_BY(mu_) = 0;
  mutable int64_t max_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  mutable std::set<std::pair<int64_t, int64_t>> in_flight_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<int64_t, int64_t>> failing_ ABSL_GUARDED_BY(mu_);
  bool open_ ABSL_GUARDED_BY(mu_) = true;
};

}  // namespace premoe::testing
