// Status helpers used at every premoe boundary.
//
// Errors are absl::Status / absl::StatusOr<T> (whose codes are gRPC's codes).
// These macros keep call sites short:
//
//   RETURN_IF_ERROR(file->Sync());
//   ASSIGN_OR_RETURN(auto header, ParseHeader(bytes));
//   ASSIGN_OR_RETURN(auto header, common::WithContext(ParseHeader(bytes), path));
//
// WithContext() prefixes a message with where it happened ("model.safetensors: ..."),
// so errors name the file, tensor or line a person has to look at.
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace premoe::common {

// Returns `status` with its message prefixed by "`context`: ". OK passes through.
absl::Status WithContext(const absl::Status& status, absl::string_view context);

template <typename T>
absl::StatusOr<T> WithContext(absl::StatusOr<T> value, absl::string_view context) {
  if (value.ok()) return value;
  return WithContext(value.status(), context);
}

}  // namespace premoe::common

#define PREMOE_STATUS_CONCAT_INNER_(a, b) a##b
#define PREMOE_STATUS_CONCAT_(a, b) PREMOE_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status); returns it from the caller if not OK.
#define RETURN_IF_ERROR(expr)                                            \
  do {                                                                   \
    ::absl::Status premoe_status_ = (expr);                              \
    if (ABSL_PREDICT_FALSE(!premoe_status_.ok())) return premoe_status_; \
  } while (0)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status from
// the caller, otherwise moves the value into `lhs` (which may declare it).
// It expands to several statements: never use it as the unbraced body of an
// `if`, `for` or `while`.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(PREMOE_STATUS_CONCAT_(premoe_statusor_, __LINE__), lhs, rexpr)
#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr)                \
  auto statusor = (rexpr);                                          \
  if (ABSL_PREDICT_FALSE(!statusor.ok())) return statusor.status(); \
  lhs = std::move(statusor).value()
