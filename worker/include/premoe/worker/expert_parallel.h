// C10dExpertParallel: model::ExpertParallel over libtorch's c10d collectives:
// Gloo for CPU ranks, NCCL for GPU ranks (a CUDA build).
//
// Each rank is one process (or thread) with its own engine; they meet at a
// rendezvous, a c10d store:
//   "file:///path"        a FileStore on a filesystem every rank sees;
//   "tcp://host:port"     a TCPStore served by rank 0.
// Thread safety: as model::ExpertParallel (one forward at a time; all ranks
// make the same calls in the same order).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "premoe/model/engine.h"

namespace premoe::worker {

struct ExpertParallelOptions {
  // "file:///path" or "tcp://host:port". Required.
  std::string rendezvous;
  // This rank, in [0, world_size). Required.
  int64_t rank = -1;
  // Ranks in the group, >= 1. Required.
  int64_t world_size = 0;
  // Where this rank's tensors live: "cpu" (a Gloo group) or "cuda:N" (an
  // NCCL group; one GPU per rank). Default: "cpu".
  std::string device = "cpu";
  // How long to wait for the other ranks (to join, then per collective).
  // Default: 60 s.
  std::chrono::milliseconds timeout{60'000};

  absl::Status Validate() const;
};

class C10dExpertParallel final : public model::ExpertParallel {
 public:
  // Joins the group: returns once every rank has joined. UNAVAILABLE if
  // they do not within the timeout; INVALID_ARGUMENT for bad options.
  static absl::StatusOr<std::unique_ptr<C10dExpertParallel>> Join(
      const ExpertParallelOptions& options);
  ~C10dExpertParallel() override;

  int64_t rank() const override { return rank_; }
  int64_t world_size() const override { return world_size_; }
  absl::Status AllReduceSum(at::Tensor& partial) override;

  struct Impl;

 private:
  C10dExpertParallel(std::unique_ptr<Impl> impl, int64_t rank, int64_t world_size);
  std::unique_ptr<Impl> impl_;
  int64_t rank_;
  int64_t world_size_;
};

}  // namespace premoe::worker
