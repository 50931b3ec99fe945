// Strict JSON parsing for files premoe reads from outside (safetensors
// headers, config.json, tokenizer.json, calibration JSONL).
//
// Stricter than nlohmann's default: duplicate object keys and nesting deeper
// than `max_depth` are errors (a duplicate key in a safetensors header could
// otherwise make two readers see two different tensors), and the error names
// `what` and the byte offset.
#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace premoe::common {

struct JsonParseOptions {
  // Nesting depth beyond which the document is refused. Default: 64.
  int max_depth = 64;
};

// Parses `text` as one JSON document. `what` names the source in errors
// ("model.safetensors header"). Errors: INVALID_ARGUMENT.
absl::StatusOr<nlohmann::json> ParseJsonStrict(absl::string_view text, absl::string_view what,
                                               const JsonParseOptions& options = {});

// The same, keeping objects' members in document order (for values that
// reach users again, as a chat template's messages do).
absl::StatusOr<nlohmann::ordered_json> ParseOrderedJsonStrict(absl::string_view text,
                                                              absl::string_view what,
                                                              const JsonParseOptions& options = {});

// "object", "array", "string", ... for error messages.
const char* JsonTypeName(const nlohmann::json& value);
const char* JsonTypeName(const nlohmann::ordered_json& value);

}  // namespace premoe::common
