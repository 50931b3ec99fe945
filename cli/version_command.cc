#include <cstdio>

#include "cli/commands.h"
#include "premoe/model/build_info.h"

namespace premoe::cli {

void RegisterVersion(CLI::App& app, int* exit_code) {
  CLI::App* cmd = app.add_subcommand("version", "Print the build: versions, CUDA, devices");
  cmd->callback([exit_code] {
    const model::BuildInfo info = model::GetBuildInfo();
    std::printf(
        "premoe %s\nlibtorch %s\ncuda compiled: %s\ncuda devices: %d\ncpu threads: %d\nblas: %s\n",
        info.premoe_version.c_str(), info.torch_version.c_str(), info.cuda_compiled ? "yes" : "no",
        info.cuda_devices, info.torch_threads,
        info.blas_library.empty() ? "(none loaded)" : info.blas_library.c_str());
    *exit_code = 0;
  });
}

}  // namespace premoe::cli
