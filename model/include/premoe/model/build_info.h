// What this binary was built with and what it can use at run time.
#pragma once

#include <string>

namespace premoe::model {

struct BuildInfo {
  std::string premoe_version;
  std::string torch_version;
  // Compiled with the CUDA / NCCL paths (PREMOE_WITH_CUDA).
  bool cuda_compiled = false;
  // CUDA devices visible now; 0 on machines without a GPU (the same binary runs).
  int cuda_devices = 0;
  // Threads libtorch uses for intra-op parallelism.
  int torch_threads = 0;
  // The shared object that libtorch's BLAS calls (sgemm_) bind to, e.g.
  // ".../torch/lib/libtorch_cpu.so" (torch's own MKL); empty if none is
  // loaded. Another library here (a system OpenBLAS) means a link-order bug.
  std::string blas_library;
};

// Queries libtorch. Thread-safe.
BuildInfo GetBuildInfo();

}  // namespace premoe::model
