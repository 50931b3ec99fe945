#include "premoe/chat/template.h"

#include "absl/strings/str_cat.h"
#include "chat/src/jinja.h"
#include "premoe/common/status.h"
#include "premoe/common/utf8.h"

namespace premoe::chat {

absl::StatusOr<Template> Template::Parse(absl::string_view source, std::string name,
                                         const Limits& limits) {
  if (const int64_t bad = common::FindInvalidUtf8(source); bad >= 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, " is not valid UTF-8 at byte ", bad));
  }
  absl::StatusOr<std::unique_ptr<jinja::Program>> program = jinja::Parse(source);
  if (!program.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(name, " ", program.status().message()));
  }
  Template t;
  t.program_ = *std::move(program);
  t.name_ = std::move(name);
  t.limits_ = limits;
  return t;
}

absl::StatusOr<std::string> Template::Render(const nlohmann::ordered_json& variables) const {
  if (!variables.is_object()) {
    return absl::InvalidArgumentError("a template's variables must be a JSON object");
  }
  jinja::Dict globals;
  for (const auto& [k, v] : variables.items()) globals.emplace_back(k, jinja::FromJson(v));
  absl::StatusOr<std::string> out =
      jinja::Render(*program_, globals,
                    {.max_output_bytes = limits_.max_output_bytes, .max_steps = limits_.max_steps});
  if (!out.ok() && !IsRaised(out.status())) {
    return absl::InvalidArgumentError(absl::StrCat(name_, " ", out.status().message()));
  }
  return out;
}

bool Template::IsRaised(const absl::Status& status) {
  return status.GetPayload(jinja::kRaisedPayload).has_value();
}

}  // namespace premoe::chat
