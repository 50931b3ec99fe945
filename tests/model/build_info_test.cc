// The binary's BLAS binding: libtorch's matmuls must run on libtorch's own
// BLAS, not on whichever libblas another dependency loaded first (see
// cmake/Dependencies.cmake).
#include "premoe/model/build_info.h"

#include <ATen/Context.h>
#include <gtest/gtest.h>

namespace premoe::model {
namespace {

TEST(BuildInfoTest, TorchGemmBindsToTorchsOwnBlas) {
  const BuildInfo info = GetBuildInfo();
  ASSERT_FALSE(info.blas_library.empty()) << "no sgemm_ in the process";
  if (!at::hasMKL()) GTEST_SKIP() << "libtorch without MKL uses the system BLAS by design";
  EXPECT_NE(info.blas_library.find("libtorch_cpu"), std::string::npos)
      << "sgemm_ binds to " << info.blas_library
      << ": libtorch_cpu must come before the system BLAS in the executable's NEEDED list";
}

TEST(BuildInfoTest, ReportsTheTorchItWasBuiltWith) {
  const BuildInfo info = GetBuildInfo();
  EXPECT_FALSE(info.torch_version.empty());
  EXPECT_GE(info.torch_threads, 1);
}

}  // namespace
}  // namespace premoe::model
