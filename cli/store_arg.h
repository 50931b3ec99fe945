// The --store argument of the commands that use a pattern store.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "premoe/store/embedded_store.h"
#include "premoe/store/pattern_store.h"

namespace premoe::cli {

// Whether `where` names a store service ("host:port": a ':' and no '/')
// rather than a store directory.
bool IsRemoteStore(const std::string& where);

// The store directory `dir`, opened in this process: created when missing if
// `create`, else NOT_FOUND.
absl::StatusOr<std::unique_ptr<store::EmbeddedPatternStore>> OpenLocalStore(const std::string& dir,
                                                                            bool create);

// The store `where` names: a directory (OpenLocalStore) or a service.
absl::StatusOr<std::unique_ptr<store::PatternStore>> OpenStore(const std::string& where,
                                                               bool create);

}  // namespace premoe::cli
