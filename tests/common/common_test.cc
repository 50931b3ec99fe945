#include <cmath>
#include <set>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "premoe/common/executor.h"
#include "premoe/common/file.h"
#include "premoe/common/hash.h"
#include "premoe/common/json.h"
#include "premoe/common/logging.h"
#include "premoe/common/mapped_file.h"
#include "premoe/common/status.h"
#include "tests/testutil/testutil.h"

namespace premoe::common {
namespace {

using ::premoe::testing::StatusIs;

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int half, Half(x));
  ASSIGN_OR_RETURN(int quarter, Half(half));
  return quarter;
}

absl::Status CheckEven(int x) {
  RETURN_IF_ERROR(Half(x).status());
  return absl::OkStatus();
}

TEST(StatusMacrosTest, PropagateErrorsAndValues) {
  EXPECT_EQ(*Quarter(12), 3);
  EXPECT_THAT(Quarter(6), StatusIs(absl::StatusCode::kInvalidArgument, "odd"));
  EXPECT_OK(CheckEven(4));
  EXPECT_THAT(CheckEven(5), StatusIs(absl::StatusCode::kInvalidArgument, "odd"));
  EXPECT_THAT(WithContext(absl::NotFoundError("gone"), "a.bin"),
              StatusIs(absl::StatusCode::kNotFound, "a.bin: gone"));
  EXPECT_OK(WithContext(absl::OkStatus(), "a.bin"));
}

TEST(HashTest, MatchesKnownXxh3VectorsAndSeparatesFields) {
  // XXH3_64bits("") from the xxHash reference.
  EXPECT_EQ(Hash64(absl::string_view("")), 0x2D06800538D394C2ull);
  Hasher a, b;
  a.UpdateField("ab").UpdateField("c");
  b.UpdateField("a").UpdateField("bc");
  EXPECT_NE(a.HexDigest(), b.HexDigest());
  EXPECT_EQ(a.HexDigest().size(), 32u);
  Hasher c;
  c.UpdateField("ab").UpdateField("c");
  EXPECT_EQ(a.HexDigest(), c.HexDigest());
}

TEST(FileTest, AtomicWriteReadBackAndMappedView) {
  premoe::testing::TempDir dir;
  const std::string path = dir.Join("f.bin");
  ASSERT_OK(WriteFileAtomically(path, "hello mapped world"));
  ASSERT_OK_AND_ASSIGN(auto contents, ReadFile(path));
  EXPECT_EQ(contents, "hello mapped world");
  ASSERT_OK_AND_ASSIGN(auto mapped, MappedFile::Open(path));
  ASSERT_EQ(mapped->size(), 18u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(mapped->data().data()), 5), "hello");
  mapped->Prefetch(4, 1000);  // past the end: clipped, not a crash
  ASSERT_OK_AND_ASSIGN(auto h1, HashFile(path));
  ASSERT_OK(WriteFileAtomically(path, "changed"));
  ASSERT_OK_AND_ASSIGN(auto h2, HashFile(path));
  EXPECT_NE(h1, h2);
  EXPECT_THAT(ReadFile(path, /*max_bytes=*/3),
              StatusIs(absl::StatusCode::kInvalidArgument, "over the limit"));
  EXPECT_THAT(ReadFile(dir.Join("missing")), StatusIs(absl::StatusCode::kNotFound, "missing"));
  EXPECT_THAT(MappedFile::Open(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, "not a regular file"));
  ASSERT_OK(WriteFileAtomically(path, ""));
  ASSERT_OK_AND_ASSIGN(auto empty, MappedFile::Open(path));
  EXPECT_EQ(empty->size(), 0u);
}

TEST(JsonTest, StrictParsingRefusesDuplicatesDepthAndGarbage) {
  ASSERT_OK_AND_ASSIGN(auto ok, ParseJsonStrict(R"({"a": [1, {"b": 2}], "c": null})", "t"));
  EXPECT_EQ(ok["a"][1]["b"], 2);
  EXPECT_THAT(
      ParseJsonStrict(R"({"a": 1, "a": 2})", "cfg"),
      StatusIs(absl::StatusCode::kInvalidArgument, "cfg: invalid JSON: duplicate key \"a\""));
  // Same key in different objects is fine.
  EXPECT_OK(ParseJsonStrict(R"({"a": {"x": 1}, "b": {"x": 2}})", "t").status());
  EXPECT_THAT(ParseJsonStrict(std::string(100, '[') + std::string(100, ']'), "deep"),
              StatusIs(absl::StatusCode::kInvalidArgument, "nesting deeper than 64"));
  EXPECT_THAT(ParseJsonStrict("{\"a\": 1,}", "t"),
              StatusIs(absl::StatusCode::kInvalidArgument, "invalid JSON"));
  EXPECT_THAT(ParseJsonStrict("{} trailing", "t"),
              StatusIs(absl::StatusCode::kInvalidArgument, "invalid JSON"));
  EXPECT_THAT(ParseJsonStrict("", "t"),
              StatusIs(absl::StatusCode::kInvalidArgument, "invalid JSON"));
}

TEST(LoggingTest, RefusesUnknownLevels) {
  EXPECT_THAT(InitLogging("loud"),
              StatusIs(absl::StatusCode::kInvalidArgument, "unknown log level"));
  EXPECT_OK(InitLogging("warn"));
  EXPECT_FALSE(LogEnabled(LogLevel::kInfo));
  EXPECT_TRUE(LogEnabled(LogLevel::kError));
  EXPECT_OK(InitLogging("info"));
}

TEST(ExecutorTest, RunsTasksInOrderOnItsOwnThreadsAndRefusesAFullQueue) {
  EXPECT_THAT(Executor::Create({.threads = 0}), StatusIs(absl::StatusCode::kInvalidArgument, ""));
  ASSERT_OK_AND_ASSIGN(auto one,
                       Executor::Create({.name = "test executor", .threads = 1, .max_queued = 3}));
  // The first task holds the only thread, so the next three queue.
  absl::Notification started, release;
  absl::Mutex mu;
  std::vector<int> order;
  std::set<std::thread::id> threads;
  ASSERT_OK(one->Submit([&] {
    started.Notify();
    release.WaitForNotification();
  }));
  started.WaitForNotification();
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK(one->Submit([&, i] {
      absl::MutexLock lock(&mu);
      order.push_back(i);
      threads.insert(std::this_thread::get_id());
    }));
  }
  EXPECT_EQ(one->queued(), 3);
  EXPECT_THAT(one->Submit([] {}),
              StatusIs(absl::StatusCode::kResourceExhausted, "test executor is busy"));
  release.Notify();
  // The destructor runs what is queued before it returns.
  one.reset();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2}));
  ASSERT_EQ(threads.size(), 1u);
  EXPECT_NE(*threads.begin(), std::this_thread::get_id());
}

}  // namespace
}  // namespace premoe::common
