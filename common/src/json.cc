#include "premoe/common/json.h"

#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace premoe::common {

absl::StatusOr<nlohmann::json> ParseJsonStrict(absl::string_view text, absl::string_view what,
                                               const JsonParseOptions& options) {
  using json = nlohmann::json;
  // One key set per open object; arrays push an empty marker so depth counts them.
  std::vector<std::set<std::string>> open;
  std::string problem;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) -> bool {
    if (!problem.empty()) return false;
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth >= options.max_depth) {
          problem = absl::StrCat("nesting deeper than ", options.max_depth);
          return false;
        }
        open.emplace_back();
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!open.empty()) open.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open.empty() && !open.back().insert(parsed.get<std::string>()).second) {
          problem = absl::StrCat("duplicate key \"", parsed.get<std::string>(), "\"");
          return false;
        }
        break;
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    json result = json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true,
                              /*ignore_comments=*/false);
    if (!problem.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": invalid JSON: ", problem));
    }
    return result;
  } catch (const json::exception& e) {
    if (!problem.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": invalid JSON: ", problem));
    }
    return absl::InvalidArgumentError(absl::StrCat(what, ": invalid JSON: ", e.what()));
  }
}

const char* JsonTypeName(const nlohmann::json& value) { return value.type_name(); }

}  // namespace premoe::common
