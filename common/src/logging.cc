#include "premoe/common/logging.h"

#include <atomic>
#include <cstdlib>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
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

std::atomic<bool> json_format{false};
thread_local std::string current_request_id;

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

absl::Status InitLogging(absl::string_view level, absl::string_view format) {
  std::string fmt(format);
  if (fmt.empty()) {
    const char* env = std::getenv("PREMOE_LOG_FORMAT");
    fmt = env != nullptr && *env != '\0' ? env : "text";
  }
  if (fmt != "text" && fmt != "json") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown log format \"", fmt, "\" (want text or json)"));
  }
  json_format = fmt == "json";
  Logger().set_pattern(json_format ? "%v" : "%Y-%m-%dT%H:%M:%S.%e %^%L%$ %v");
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
  if (json_format) {
    nlohmann::ordered_json line = {
        {"time", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone())},
        {"level",
         [&] {
           const auto name = spdlog::level::to_string_view(ToSpd(level));
           return std::string(name.data(), name.size());
         }()},
        {"msg", std::string(message)}};
    if (!current_request_id.empty()) line["request_id"] = current_request_id;
    Logger().log(ToSpd(level), "{}",
                 line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
    return;
  }
  if (!current_request_id.empty()) {
    Logger().log(ToSpd(level), "[{}] {}", current_request_id,
                 std::string_view(message.data(), message.size()));
    return;
  }
  Logger().log(ToSpd(level), "{}", std::string_view(message.data(), message.size()));
}

ScopedRequestId::ScopedRequestId(std::string id) : previous_(std::move(current_request_id)) {
  current_request_id = std::move(id);
}

ScopedRequestId::~ScopedRequestId() { current_request_id = std::move(previous_); }

std::string NewRequestId() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

}  // namespace premoe::common
