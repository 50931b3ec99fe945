// Logging: spdlog, configured once per process.
//
// Libraries log through the PREMOE_LOG_* macros (fmt-style formatting); binaries
// call InitLogging() once. Thread-safe. Logs go to stderr so that commands whose
// stdout is a data stream (`premoe tokenize`) stay clean.
#pragma once

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "spdlog/spdlog.h"

namespace premoe::common {

// Sets the level from `level` ("trace", "debug", "info", "warn", "error",
// "off"); an empty string reads PREMOE_LOG_LEVEL, defaulting to "info".
absl::Status InitLogging(absl::string_view level = "");

}  // namespace premoe::common

#define PREMOE_LOG_DEBUG(...) ::spdlog::debug(__VA_ARGS__)
#define PREMOE_LOG_INFO(...) ::spdlog::info(__VA_ARGS__)
#define PREMOE_LOG_WARN(...) ::spdlog::warn(__VA_ARGS__)
#define PREMOE_LOG_ERROR(...) ::spdlog::error(__VA_ARGS__)
