#include "premoe/common/logging.h"

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace premoe::common {
namespace {

spdlog::logger& Logger() {
  // Used before InitLogging() (in libraries and tests) it logs at "info".
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::stderr_color_mt("premoe");
    l->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ %v");
    l->set_level(spdlog::level::info);
    return l;
  }();
  return *logger;
}

spdlog::level::level_enum ToSpd(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return spdlog::level::debug;
    case LogLevel::kInfo:
      return spdlog::level::info;
    case LogLevel::kWarn:
      return spdlog::level::warn;
    case LogLevel::kError:
      return spdlog::level::err;
  }
  return spdlog::level::info;
}

}  // namespace

absl::Status InitLogging(absl::string_view level) {
  std::string name(level);
  if (name.empty()) {
    const char* env = std::getenv("PREMOE_LOG_LEVEL");
    name = env != nullptr && *env != '\0' ? env : "info";
  }
  const spdlog::level::level_enum parsed = spdlog::level::from_str(name);
  // from_str maps anything it does not know to "off"; refuse instead of
  // silently disabling logs.
  if (parsed == spdlog::level::off && name != "off") {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown log level \"", name, "\" (want trace, debug, info, warn, error or off)"));
  }
  Logger().set_level(parsed);
  return absl::OkStatus();
}

bool LogEnabled(LogLevel level) { return Logger().should_log(ToSpd(level)); }

void Log(LogLevel level, absl::string_view message) {
  Logger().log(ToSpd(level), "{}", std::string_view(message.data(), message.size()));
}

}  // namespace premoe::common
