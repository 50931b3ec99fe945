#include "premoe/common/logging.h"

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "spdlog/sinks/stdout_color_sinks.h"

namespace premoe::common {

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
  auto logger = spdlog::get("premoe");
  if (logger == nullptr) logger = spdlog::stderr_color_mt("premoe");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ %v");
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
  return absl::OkStatus();
}

}  // namespace premoe::common
