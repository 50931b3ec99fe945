// Facts about this process that commands and benchmarks report.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"

namespace premoe::common {

// Resident set size now (VmRSS) and its peak so far (VmHWM), in bytes, from
// /proc/self/status. Both count file pages mapped in (e.g. checkpoint pages
// touched through an mmap) as well as anonymous memory. UNAVAILABLE where
// /proc is not mounted.
absl::StatusOr<int64_t> CurrentRssBytes();
absl::StatusOr<int64_t> PeakRssBytes();

}  // namespace premoe::common
