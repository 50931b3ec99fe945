// Logging to stderr, so that commands whose stdout is a data stream
// (`premoe tokenize`) stay clean.
//
// The macros take absl::StrFormat arguments (printf-style, type-checked):
//   PREMOE_LOG_INFO("loaded %d experts from %s", n, path);
// The sink (spdlog) stays inside common/: its headers clash with the fmt that
// libtorch ships, so no header that torch code includes may pull them in.
// Thread-safe.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace premoe::common {

enum class LogLevel { kDebug = 1, kInfo = 2, kWarn = 3, kError = 4 };

// Sets the level from `level` ("trace", "debug", "info", "warn", "error",
// "off"); an empty string reads PREMOE_LOG_LEVEL, defaulting to "info".
absl::Status InitLogging(absl::string_view level = "");

bool LogEnabled(LogLevel level);
void Log(LogLevel level, absl::string_view message);

}  // namespace premoe::common

#define PREMOE_LOG_AT_(level, ...)                                  \
  do {                                                              \
    if (::premoe::common::LogEnabled(level)) {                      \
      ::premoe::common::Log(level, ::absl::StrFormat(__VA_ARGS__)); \
    }                                                               \
  } while (0)
#define PREMOE_LOG_DEBUG(...) PREMOE_LOG_AT_(::premoe::common::LogLevel::kDebug, __VA_ARGS__)
#define PREMOE_LOG_INFO(...) PREMOE_LOG_AT_(::premoe::common::LogLevel::kInfo, __VA_ARGS__)
#define PREMOE_LOG_WARN(...) PREMOE_LOG_AT_(::premoe::common::LogLevel::kWarn, __VA_ARGS__)
#define PREMOE_LOG_ERROR(...) PREMOE_LOG_AT_(::premoe::common::LogLevel::kError, __VA_ARGS__)
