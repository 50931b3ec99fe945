// Shared test helpers: status matchers, temporary directories, and running the
// project's Python reference scripts (transformers, tokenizers, safetensors).
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#define ASSERT_OK(expr)                                           \
  do {                                                            \
    const ::absl::Status premoe_test_status_ = (expr);            \
    ASSERT_TRUE(premoe_test_status_.ok()) << premoe_test_status_; \
  } while (0)
#define EXPECT_OK(expr)                                           \
  do {                                                            \
    const ::absl::Status premoe_test_status_ = (expr);            \
    EXPECT_TRUE(premoe_test_status_.ok()) << premoe_test_status_; \
  } while (0)

// Unwraps a StatusOr in a test, failing the test (with the status) if not OK.
#define ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  ASSERT_OK_AND_ASSIGN_IMPL_(PREMOE_TEST_CONCAT_(premoe_test_sor_, __LINE__), lhs, rexpr)
#define PREMOE_TEST_CONCAT_INNER_(a, b) a##b
#define PREMOE_TEST_CONCAT_(a, b) PREMOE_TEST_CONCAT_INNER_(a, b)
#define ASSERT_OK_AND_ASSIGN_IMPL_(sor, lhs, rexpr) \
  auto sor = (rexpr);                               \
  ASSERT_TRUE(sor.ok()) << sor.status();            \
  lhs = std::move(sor).value()

namespace premoe::testing {

// Matches an absl::Status or StatusOr whose code is `code` and whose message
// contains `substring`.
MATCHER_P2(StatusIs, code, substring, "") {
  const absl::Status& status = [&]() -> const absl::Status& {
    if constexpr (std::is_same_v<std::decay_t<decltype(arg)>, absl::Status>) {
      return arg;
    } else {
      return arg.status();
    }
  }();
  *result_listener << "status is " << status;
  return status.code() == code &&
         std::string(status.message()).find(substring) != std::string::npos;
}

// A fresh directory under $TEST_TMPDIR or /tmp, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Join(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Root of the source tree (PREMOE_SOURCE_DIR, set by ctest; else the cwd).
std::string SourceDir();
// Path of a file in ../shared (the real tokenizer files), relative to SourceDir().
std::string SharedDir();

// Runs `script` (relative to SourceDir()) with the project's Python (.venv),
// passing `args`; returns its stdout. Fails with the script's stderr.
absl::StatusOr<std::string> RunPython(const std::string& script,
                                      const std::vector<std::string>& args);

// Writes/reads a whole file; test-only conveniences that abort the test on error.
void WriteStringToFile(const std::string& path, const std::string& contents);
std::string ReadFileOrDie(const std::string& path);

// The threads of this process now (the Threads line of /proc/self/status),
// for tests that a server's threads do not grow with its calls.
int ProcessThreads();

}  // namespace premoe::testing
