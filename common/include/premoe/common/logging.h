// Logging to stderr, so that commands whose stdout is a data stream
// (`premoe tokenize`) stay clean.
//
// The macros take absl::StrFormat arguments (printf-style, type-checked):
//   PREMOE_LOG_INFO("loaded %d experts from %s", n, path);
// The sink (spdlog) stays inside common/: its headers clash with the fmt that
// libtorch ships, so no header that torch code includes may pull them in.
// Thread-safe.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace premoe::common {

enum class LogLevel { kDebug = 1, kInfo = 2, kWarn = 3, kError = 4 };

// Sets the level from `level` ("trace", "debug", "info", "warn", "error",
// "off"); an empty string reads PREMOE_LOG_LEVEL, defaulting to "info".
// `format` "text" (the default) or "json": one JSON object a line,
// {"time", "level", "msg"} and "request_id" when there is one; an empty
// string reads PREMOE_LOG_FORMAT.
absl::Status InitLogging(absl::string_view level = "", absl::string_view format = "");

// The request the calling thread works for, while it lives: every log line
// the thread writes names it ("[request_id] ..." in text, a field in JSON).
// Nests; not copyable.
class ScopedRequestId {
 public:
  explicit ScopedRequestId(std::string id);
  ~ScopedRequestId();
  ScopedRequestId(const ScopedRequestId&) = delete;
  ScopedRequestId& operator=(const ScopedRequestId&) = delete;

 private:
  std::string previous_;
};

// A new request id: 16 hex digits, random.
std::string NewRequestId();

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
