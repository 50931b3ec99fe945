#include "cli/commands.h"

namespace premoe::cli {
void RegisterInspect(CLI::App& app, int* exit_code) {}
}  // namespace premoe::cli
