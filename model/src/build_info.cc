#include "premoe/model/build_info.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <torch/version.h>

#if PREMOE_CUDA_ENABLED
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace premoe::model {

BuildInfo GetBuildInfo() {
  BuildInfo info;
  info.premoe_version = "0.1.0";
  info.torch_version = TORCH_VERSION;
  info.torch_threads = at::get_num_threads();
  // The same lookup the dynamic linker does for libtorch's sgemm_ calls.
  if (void* sgemm = ::dlsym(RTLD_DEFAULT, "sgemm_"); sgemm != nullptr) {
    Dl_info where{};
    if (::dladdr(sgemm, &where) != 0 && where.dli_fname != nullptr) {
      info.blas_library = where.dli_fname;
    }
  }
#if PREMOE_CUDA_ENABLED
  info.cuda_compiled = true;
  // device_count() never throws and returns 0 without a driver.
  info.cuda_devices = static_cast<int>(c10::cuda::device_count());
#endif
  return info;
}

}  // namespace premoe::model
