// Worker: serves generation for many expert patterns from one model, holding
// only the routed experts those patterns keep.
//
// The engine holds every weight but the routed experts
// (EngineOptions::experts_on_demand); an ExpertCache holds the experts of the
// prepared patterns under a byte budget. With world_size > 1 the experts are
// sharded over expert-parallel ranks (WorkerOptions::world_size). Requests name a prepared pattern
// (or none: the full model) and are decoded by one scheduler thread with
// continuous batching: a request joins the running batch at the next step
// (its prefill rides along with the others' decode steps) and leaves it when
// done, and each sequence is routed with its own pattern's mask, so requests
// of different patterns share every forward pass.
//
// Thread safety: every method may be called from any number of threads.
// Generate blocks its caller until the request ends; Submit never blocks.
// Tokens are delivered on the scheduler thread as they become final.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "premoe/model/engine.h"
#include "premoe/model/fingerprint.h"
#include "premoe/store/pattern.h"
#include "premoe/worker/expert_cache.h"

namespace premoe::worker {

struct WorkerOptions {
  // Model directory (config.json, safetensors). Required.
  std::string model_dir;
  // EngineOptions::dtype and device. Defaults: "bf16", "cpu".
  std::string dtype = "bf16";
  std::string device = "cpu";
  // EngineOptions::expert_pack: read experts from this pack (premoe repack)
  // rather than the checkpoint. Default: "" (the checkpoint).
  std::string expert_pack;
  // How matrices are held (EngineOptions::SetQuant's spec: "int4" for the
  // routed experts, "int4,attention=int8,lm_head=int8" for more); the cache
  // budget counts experts as held, scales included. An expert_pack must hold
  // the experts' format. Default: "none".
  std::string quant = "none";
  // Byte budget of resident routed experts. 0 = every routed expert of the
  // model fits. Default: 0.
  int64_t cache_bytes = 0;
  // ExpertCacheOptions::reserve: fault in the whole cache at Open, so that
  // reassembly only copies. Default: false.
  bool reserve_cache = false;
  // Sequences decoded together per step. Default: 8.
  int64_t max_batch = 8;
  // Requests waiting for a batch slot (>= 1); one more is refused with
  // RESOURCE_EXHAUSTED. Default: 64.
  int64_t max_queue = 64;
  // Prepared patterns (task names) remembered (>= 1); preparing one more
  // forgets the one least recently prepared or served (its experts stay in
  // the cache until evicted as usual, and requests using it finish). Bounds
  // what an endless stream of distinct Prepares can hold. Default: 1024.
  int64_t max_prepared_patterns = 1024;
  // Longest sequence (prompt + generated); 0 = the model's context.
  // Default: 0.
  int64_t max_context = 0;
  // Expert-parallel ranks in this worker, one thread each, meeting in a c10d
  // group. Every rank holds the weights but the routed experts (each
  // its own copy) and caches only the experts it owns (expert % world_size ==
  // rank) under cache_bytes / world_size; each decode step runs on all ranks
  // in lockstep, which all-reduce the MoE outputs, and rank 0 samples. The
  // tokens are those of one rank (tests/worker). The group is Gloo on CPU;
  // with device "cuda" rank r runs on cuda:r and the group is NCCL (a CUDA
  // build). Default: 1.
  int64_t world_size = 1;

  absl::Status Validate() const;
};

// A pattern made servable: its kept experts under a budget.
struct PreparedPattern {
  std::string task;
  // Experts kept over all MoE layers, and their bytes.
  int64_t kept_experts = 0;
  int64_t kept_bytes = 0;
  // kept_experts over all routed experts of the model.
  double kept_fraction = 0;
  // What making it resident took.
  LoadReport load;
};

struct WorkRequest {
  // Token ids, non-empty, each < vocab size.
  std::vector<int64_t> prompt;
  // A prepared pattern's task; empty = the full model (every expert).
  std::string task;
  // Sampling and stopping; `seed` seeds this request alone; stop_requested
  // (its argument is 0) is asked on the scheduler thread after each step.
  // Default: greedy, 64 tokens.
  model::GenerationOptions options;
  // options.max_new_tokens is cut to the room the prompt leaves in the
  // context, rather than refused. Default: false.
  bool fit_context = false;
  // The request fails with DEADLINE_EXCEEDED once this passes (queued or
  // running). Default: none.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  // Receives each generated token once final, on the scheduler thread;
  // return false to cancel (the request then ends CANCELLED). Must not block
  // long: the whole batch waits. Default: none.
  std::function<bool(int64_t)> on_token;
};

struct WorkResult {
  model::GenerationResult generation;
  std::string task;
  // Seconds from Generate's call to its first generated token (or to the
  // end, if none).
  double time_to_first_token = 0;
};

struct PatternStatus {
  std::string task;
  int64_t kept_experts = 0;
  int64_t kept_bytes = 0;
  // Whether every expert it keeps is resident now.
  bool resident = false;
};

struct WorkerStatus {
  CacheStats cache;
  std::vector<PatternStatus> patterns;
  int64_t queued = 0;
  int64_t running = 0;
  // Requests that ended CANCELLED (their on_token returned false) since
  // Open.
  int64_t cancelled = 0;
  // Weights the engines hold besides the routed experts (summed over ranks).
  int64_t base_bytes = 0;
  // What every routed expert of the model would take, and one of them.
  int64_t all_experts_bytes = 0;
  int64_t expert_bytes = 0;
  // The resident experts, per MoE layer (ExpertCache::ResidentSet).
  model::KeptExperts resident;
};

class Worker {
 public:
  // Opens the model (experts on demand) and starts the scheduler thread.
  static absl::StatusOr<std::unique_ptr<Worker>> Open(const WorkerOptions& options);
  // Fails requests still queued or running with UNAVAILABLE and joins the
  // scheduler.
  ~Worker();

  // Selects `pattern`'s experts under `budget` (profiler::Budget syntax:
  // "50%", "8/16", "bytes:SIZE", "coverage:F") and makes them resident,
  // replacing an earlier pattern of the same task. FAILED_PRECONDITION for a
  // pattern of another model or a budget that lowers top-k below the
  // engine's; RESOURCE_EXHAUSTED when it cannot fit beside the experts of
  // requests in flight.
  absl::StatusOr<PreparedPattern> Prepare(const store::Pattern& pattern, const std::string& budget);

  // Runs one request to its end. NOT_FOUND for a task not prepared;
  // INVALID_ARGUMENT for a bad prompt or options; RESOURCE_EXHAUSTED when the
  // queue is full or its experts cannot be made resident; CANCELLED,
  // DEADLINE_EXCEEDED as above; UNAVAILABLE when the worker shuts down.
  absl::StatusOr<WorkResult> Generate(WorkRequest request);
  // The same, without waiting: validates and admits the request and
  // returns. A request refused up front (bad input, NOT_FOUND, a full queue,
  // shutting down) returns its error, has loaded and evicted nothing, and
  // `on_done` is never called. An accepted one returns OK and ends with
  // exactly one call of `on_done`: on the scheduler thread, or on a loader
  // thread when its experts could not be made resident (RESOURCE_EXHAUSTED,
  // DEADLINE_EXCEEDED, UNAVAILABLE at shutdown). `on_done` must not block or
  // call back into the worker. Experts not yet resident are loaded on the
  // worker's own threads, so Submit never waits for a load or for room; a
  // request waiting for them counts against max_queue.
  using DoneCallback = std::function<void(absl::StatusOr<WorkResult>)>;
  absl::Status Submit(WorkRequest request, DoneCallback on_done);

  WorkerStatus Status() const;
  const model::Engine& engine() const;
  // The model fingerprint patterns must carry (model::ModelFingerprint).
  const std::string& fingerprint() const;

  struct Impl;

 private:
  explicit Worker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace premoe::worker
