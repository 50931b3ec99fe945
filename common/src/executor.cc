#include "premoe/common/executor.h"

#include <memory>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace premoe::common {

absl::Status Executor::Options::Validate() const {
  if (threads < 1 || max_queued < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": want threads >= 1 and max_queued >= 1; got ", threads, " and ", max_queued));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Executor>> Executor::Create(const Options& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::unique_ptr<Executor>(new Executor(options));
}

Executor::Executor(const Options& options) : options_(options) {
  threads_.reserve(options_.threads);
  for (int32_t i = 0; i < options_.threads; ++i) threads_.emplace_back([this] { Run(); });
}

Executor::~Executor() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

absl::Status Executor::Submit(absl::AnyInvocable<void()> task) {
  absl::MutexLock lock(&mu_);
  if (static_cast<int64_t>(tasks_.size()) >= options_.max_queued) {
    return absl::ResourceExhaustedError(
        absl::StrCat(options_.name, " is busy: ", tasks_.size(), " tasks are waiting"));
  }
  tasks_.push_back(std::move(task));
  return absl::OkStatus();
}

int64_t Executor::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(tasks_.size());
}

void Executor::Run() {
  while (true) {
    absl::AnyInvocable<void()> task;
    {
      absl::MutexLock lock(&mu_);
      // Stopping only ends a thread once the queue is drained: a queued task
      // may be what frees its caller (a reactor waiting for its result).
      mu_.Await(absl::Condition(
          +[](Executor* e)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(e->mu_) { return e->stopping_ || !e->tasks_.empty(); },
          this));
      if (tasks_.empty()) return;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

}  // namespace premoe::common
