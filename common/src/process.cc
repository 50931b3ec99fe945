#include "premoe/common/process.h"

#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace premoe::common {
namespace {

// The value of a "Key:   123 kB" line of /proc/self/status, in bytes.
absl::StatusOr<int64_t> StatusField(absl::string_view key) {
  std::ifstream in("/proc/self/status");
  if (!in) return absl::UnavailableError("cannot read /proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view rest(line);
    if (!absl::ConsumePrefix(&rest, key) || !absl::ConsumePrefix(&rest, ":")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    int64_t kb = 0;
    if (!absl::ConsumeSuffix(&rest, " kB") || !absl::SimpleAtoi(rest, &kb)) break;
    return kb * 1024;
  }
  return absl::UnavailableError(absl::StrCat("/proc/self/status has no readable ", key));
}

}  // namespace

absl::StatusOr<int64_t> CurrentRssBytes() { return StatusField("VmRSS"); }
absl::StatusOr<int64_t> PeakRssBytes() { return StatusField("VmHWM"); }

}  // namespace premoe::common
