#include "cli/commands.h"

#include <cstdio>
#include <string>

namespace premoe::cli {

int ReportStatus(absl::string_view command, const absl::Status& status) {
  if (status.ok()) return 0;
  std::fprintf(stderr, "premoe %s: %s\n", std::string(command).c_str(), status.ToString().c_str());
  return 1;
}

}  // namespace premoe::cli
