// The --keep / --mask expert specs that several commands take.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "premoe/model/engine.h"

namespace premoe::cli {

// What a spec asks for: the experts kept per MoE layer and, when the spec
// says so, the top-k to route with (0 = the model's).
struct KeepSpec {
  model::KeptExperts keep;
  int64_t top_k = 0;
};

// Mask file: {"layers": {"<layer>": [expert ids...]}, "top_k": K}. Layers
// absent keep every expert; "top_k" is optional (default: the model's).
// Range, order and top-k checks are KeptExperts::Validate's, where it is used.
absl::StatusOr<KeepSpec> ReadMaskFile(const std::string& path);

// "first:M" (the first M experts, ids 0..M-1, of every MoE layer of the
// model in model_dir, routed with its top-k; INVALID_ARGUMENT unless top-k
// <= M <= its routed experts) or a mask file path. A budget spelling
// ("8/128", "50%", ...) that is not a file is INVALID_ARGUMENT: a budget
// chooses experts from a pattern's scores, which --keep does not have.
absl::StatusOr<KeepSpec> ParseKeep(const std::string& spec, const std::string& model_dir);

// The help text of a --keep option.
extern const char kKeepHelp[];

}  // namespace premoe::cli
