#include "cli/commands.h"

#include <cstdio>
#include <string>

namespace premoe::cli {

const char kBudgetHelp[] =
    "K/M (top-K routing over the M best experts of every MoE layer, e.g. 8/128), N% (that share "
    "of every layer's experts, e.g. 50%), bytes:SIZE (all kept experts within SIZE, e.g. "
    "bytes:2GiB) or coverage:F (per layer, the fewest best experts holding a share F of its "
    "score mass, e.g. coverage:0.9)";

int ReportStatus(absl::string_view command, const absl::Status& status) {
  if (status.ok()) return 0;
  std::fprintf(stderr, "premoe %s: %s\n", std::string(command).c_str(), status.ToString().c_str());
  return 1;
}

}  // namespace premoe::cli
