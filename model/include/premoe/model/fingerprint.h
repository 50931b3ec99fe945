// The model fingerprint: what ties an expert pattern to the model it was
// profiled on.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "premoe/model/engine.h"

namespace premoe::model {

// The model fingerprint patterns carry: XXH3-128 (hex) of the canonical
// config (architecture and sizes) and every router gate weight, in layer order.
// A pattern made for another model is refused where its fingerprint differs.
// Thread-safe; reads the engine's router weights.
absl::StatusOr<std::string> ModelFingerprint(const Engine& engine);

}  // namespace premoe::model
