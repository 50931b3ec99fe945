#include "premoe/worker/expert_parallel.h"

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if PREMOE_CUDA_ENABLED
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "premoe/common/status.h"

namespace premoe::worker {

absl::Status ExpertParallelOptions::Validate() const {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(absl::StrCat("ExpertParallelOptions: rank ", rank,
                                                   " is not in [0, world_size ", world_size, ")"));
  }
  if (!absl::StartsWith(rendezvous, "file://") && !absl::StartsWith(rendezvous, "tcp://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("ExpertParallelOptions.rendezvous \"", rendezvous,
                     "\" is neither file:///path nor tcp://host:port"));
  }
  if (device != "cpu" && !absl::StartsWith(device, "cuda:")) {
    return absl::InvalidArgumentError(absl::StrCat("ExpertParallelOptions.device \"", device,
                                                   "\" is neither \"cpu\" nor \"cuda:N\""));
  }
  return absl::OkStatus();
}

struct C10dExpertParallel::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> group;  // Gloo on CPU, NCCL on CUDA
};

C10dExpertParallel::C10dExpertParallel(std::unique_ptr<Impl> impl, int64_t rank, int64_t world_size)
    : impl_(std::move(impl)), rank_(rank), world_size_(world_size) {}

C10dExpertParallel::~C10dExpertParallel() = default;

absl::StatusOr<std::unique_ptr<C10dExpertParallel>> C10dExpertParallel::Join(
    const ExpertParallelOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  const int rank = static_cast<int>(options.rank), size = static_cast<int>(options.world_size);
  try {
    absl::string_view where = options.rendezvous;
    if (absl::ConsumePrefix(&where, "file://")) {
      impl->store = c10::make_intrusive<c10d::FileStore>(std::string(where), size);
    } else {
      absl::ConsumePrefix(&where, "tcp://");
      const size_t colon = where.rfind(':');
      int port = 0;
      if (colon == absl::string_view::npos || !absl::SimpleAtoi(where.substr(colon + 1), &port)) {
        return absl::InvalidArgumentError(
            absl::StrCat("rendezvous ", options.rendezvous, ": want tcp://host:port"));
      }
      c10d::TCPStoreOptions o;
      o.port = static_cast<uint16_t>(port);
      o.isServer = rank == 0;
      o.numWorkers = size;
      o.timeout = options.timeout;
      impl->store = c10::make_intrusive<c10d::TCPStore>(std::string(where.substr(0, colon)), o);
    }
    impl->store->setTimeout(options.timeout);
    if (options.device == "cpu") {
      auto gloo = c10d::ProcessGroupGloo::Options::create(options.timeout);
      gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      impl->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, rank, size, gloo);
    } else {
#if PREMOE_CUDA_ENABLED
      // The communicator is made on first use, on the device of the tensors
      // (this rank's cuda:N).
      auto nccl = c10d::ProcessGroupNCCL::Options::create();
      nccl->timeout = options.timeout;
      impl->group = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl->store, rank, size, nccl);
#else
      return absl::UnimplementedError(absl::StrCat("expert parallelism on ", options.device,
                                                   " needs a premoe built with CUDA (NCCL)"));
#endif
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("expert-parallel rank ", rank, " of ", size,
                                               " could not join ", options.rendezvous, ": ",
                                               e.what()));
  }
  return std::unique_ptr<C10dExpertParallel>(
      new C10dExpertParallel(std::move(impl), options.rank, options.world_size));
}

absl::Status C10dExpertParallel::AllReduceSum(at::Tensor& partial) {
  if (world_size_ == 1) return absl::OkStatus();
  try {
    std::vector<at::Tensor> tensors = {partial};
    impl_->group->allreduce(tensors)->wait();
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("expert-parallel all-reduce on rank ", rank_, ": ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace premoe::worker
