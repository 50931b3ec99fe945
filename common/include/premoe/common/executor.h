// Executor: a fixed pool of threads that runs submitted tasks in FIFO order,
// for a component's heavy work (a probe forward pass, a Prepare that loads
// experts) so that gRPC's callback threads never run it. The number of
// threads is fixed at construction, whatever the number of requests, and the
// queue is bounded: a full queue refuses work rather than growing without
// limit under a flood of requests.
//
// Thread-safe. The destructor runs every task already queued (including those
// they submit while it drains), then joins the threads; nothing may submit
// once it has returned.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace premoe::common {

class Executor {
 public:
  struct Options {
    // Names the executor in errors ("router executor"). Default "executor".
    std::string name = "executor";
    // Threads running tasks (>= 1). Default 2.
    int32_t threads = 2;
    // Tasks queued and not yet started beyond which Submit refuses (>= 1).
    // Default 4096.
    int64_t max_queued = 4096;
    absl::Status Validate() const;
  };

  // INVALID_ARGUMENT for options that do not validate.
  static absl::StatusOr<std::unique_ptr<Executor>> Create(const Options& options);
  ~Executor();

  // Queues `task`; never blocks and never runs it on the calling thread.
  // RESOURCE_EXHAUSTED (naming the executor) when max_queued tasks wait.
  absl::Status Submit(absl::AnyInvocable<void()> task);

  // Tasks queued, not yet started.
  int64_t queued() const;

 private:
  explicit Executor(const Options& options);
  void Run();

  const Options options_;
  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace premoe::common
