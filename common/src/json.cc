#include "premoe/common/json.h"

#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace premoe::common {
namespace {

// nlohmann's DOM builder plus the two checks. A SAX handler rather than the
// callback parser: the latter rescans the parent object each time an inner
// object closes, which made a 24k-tensor safetensors header take 10 s.
template <typename json>
class StrictDomBuilder : public nlohmann::detail::json_sax_dom_parser<json> {
  using Base = nlohmann::detail::json_sax_dom_parser<json>;

 public:
  StrictDomBuilder(json& result, int max_depth)
      : Base(result, /*allow_exceptions_=*/false), max_depth_(max_depth) {}

  bool start_object(std::size_t n) {
    if (!Enter()) return false;
    keys_.emplace_back();
    return Base::start_object(n);
  }
  bool end_object() {
    keys_.pop_back();
    --depth_;
    return Base::end_object();
  }
  bool start_array(std::size_t n) {
    if (!Enter()) return false;
    return Base::start_array(n);
  }
  bool end_array() {
    --depth_;
    return Base::end_array();
  }
  bool key(std::string& k) {
    if (!keys_.back().insert(k).second) {
      problem_ = absl::StrCat("duplicate key \"", k, "\"");
      return false;
    }
    return Base::key(k);
  }
  bool parse_error(std::size_t position, const std::string& last_token,
                   const nlohmann::detail::exception& e) {
    problem_ = e.what();
    return false;
  }

  const std::string& problem() const { return problem_; }

 private:
  bool Enter() {
    if (++depth_ > max_depth_) {
      problem_ = absl::StrCat("nesting deeper than ", max_depth_);
      return false;
    }
    return true;
  }

  int max_depth_;
  int depth_ = 0;
  std::vector<absl::flat_hash_set<std::string>> keys_;
  std::string problem_;
};

template <typename json>
absl::StatusOr<json> Parse(absl::string_view text, absl::string_view what,
                           const JsonParseOptions& options) {
  json result;
  StrictDomBuilder<json> builder(result, options.max_depth);
  bool ok = false;
  try {
    ok = json::sax_parse(text.begin(), text.end(), &builder, json::input_format_t::json,
                         /*strict=*/true, /*ignore_comments=*/false);
  } catch (const typename json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": invalid JSON: ", e.what()));
  }
  if (!ok || builder.is_errored()) {
    const std::string problem = builder.problem().empty() ? "malformed" : builder.problem();
    return absl::InvalidArgumentError(absl::StrCat(what, ": invalid JSON: ", problem));
  }
  return result;
}

}  // namespace

absl::StatusOr<nlohmann::json> ParseJsonStrict(absl::string_view text, absl::string_view what,
                                               const JsonParseOptions& options) {
  return Parse<nlohmann::json>(text, what, options);
}

absl::StatusOr<nlohmann::ordered_json> ParseOrderedJsonStrict(absl::string_view text,
                                                              absl::string_view what,
                                                              const JsonParseOptions& options) {
  return Parse<nlohmann::ordered_json>(text, what, options);
}

const char* JsonTypeName(const nlohmann::json& value) { return value.type_name(); }
const char* JsonTypeName(const nlohmann::ordered_json& value) { return value.type_name(); }

}  // namespace premoe::common
