// WorkerPool: the workers a router sends requests to, and the choice of one
// per request.
//
// Workers are listed statically or found through DNS (every address of a
// Kubernetes headless Service, re-resolved periodically); a background
// thread polls each one's Status. For a pattern at a budget, Assign picks,
// among reachable workers not saturated:
//   1. one with the pattern prepared and resident;
//   2. else one that can load it without evicting a hot pattern (one served
//      there within hot_window), to avoid two patterns thrashing one cache;
//   3. then the fewest missing expert bytes (the router computes the
//      pattern's kept experts and compares them with the worker's resident
//      set),
//   4. then the least loaded (requests in flight from this router plus the
//      worker's queue);
// and prepares the pattern there if needed. A pattern is prepared on a
// worker under the name "task@budget", so one task at two budgets does not
// replace itself back and forth.
//
// Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "premoe/store/pattern.h"
#include "premoe/worker/client.h"

namespace premoe::router {

struct WorkerPoolOptions {
  // Static worker addresses ("host:port").
  std::vector<std::string> addresses;
  // "host:port": every A/AAAA record of host is a worker (a headless
  // Service). At least one of addresses and dns is required.
  std::string dns;
  // How often each worker's Status is polled, and DNS re-resolved.
  // Defaults 500 ms and 5 s.
  std::chrono::milliseconds poll_interval{500};
  std::chrono::milliseconds dns_interval{5000};
  // The model's routing top-k (for selection). Required (> 0).
  int64_t top_k = 0;
  // Requests in flight (plus queued) on a worker at which it counts as
  // saturated: another worker is then preferred even if it must load.
  // Default 8.
  int64_t saturation = 8;
  // A pattern served on a worker within this window is hot there.
  // Default 30 s.
  std::chrono::milliseconds hot_window{30000};
  // WorkerClient timeouts.
  worker::WorkerClient::Options client;

  absl::Status Validate() const;
};

// What a request was given. Pass it to WorkerPool::Release when the request
// ends.
struct Assignment {
  std::string address;
  worker::WorkerClient* client = nullptr;  // owned by the pool
  // The name the pattern is prepared under ("" = the full model).
  std::string prepared_name;
  int64_t kept_experts = 0;
  int64_t kept_bytes = 0;
  int64_t all_experts_bytes = 0;
  int64_t base_bytes = 0;
  // Whether the pattern had to be (partly) loaded for this request.
  bool loaded = false;
  // Keeps the worker's record alive while the request runs (a worker that
  // leaves the DNS answer mid-request).
  std::shared_ptr<void> hold;
};

class WorkerPool {
 public:
  static absl::StatusOr<std::unique_ptr<WorkerPool>> Open(const WorkerPoolOptions& options);
  ~WorkerPool();

  // Picks a worker for `pattern` (null = the full model) at `budget` and
  // makes the pattern resident there, by `deadline` if given. `exclude`:
  // addresses not to use (a retry's failed ones). UNAVAILABLE when no worker
  // is reachable; RESOURCE_EXHAUSTED when none can hold the pattern;
  // INVALID_ARGUMENT for a bad budget; DEADLINE_EXCEEDED.
  absl::StatusOr<Assignment> Assign(
      const store::Pattern* pattern, const std::string& budget,
      const std::set<std::string>& exclude = {},
      std::optional<std::chrono::system_clock::time_point> deadline = std::nullopt);
  // The request on `a` ended. `failed`: the worker failed it (unreachable
  // or broken): it is skipped until a Status poll succeeds again.
  void Release(const Assignment& a, bool failed = false);

  // Whether a Status poll has reached at least one worker.
  bool AnyReachable() const;
  // Polls every worker now (tests; Open also does once).
  void PollNow();

  struct Impl;

 private:
  explicit WorkerPool(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace premoe::router
