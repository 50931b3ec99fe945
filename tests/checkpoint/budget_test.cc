// The expert budget grammar: every spelling with the values it stands for,
// and bad text refused with INVALID_ARGUMENT naming it.
#include "premoe/checkpoint/budget.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "premoe/common/status.h"
#include "tests/testutil/testutil.h"

namespace premoe::checkpoint {
namespace {

using ::premoe::testing::StatusIs;
using Kind = Budget::Kind;

TEST(BudgetTest, ParsesKOverM) {
  ASSERT_OK_AND_ASSIGN(const Budget b, Budget::Parse("8/128"));
  EXPECT_EQ(b, (Budget{.kind = Kind::kUniform, .top_k = 8, .count = 128}));
  EXPECT_EQ(b.ToString(), "8/128");
  ASSERT_OK_AND_ASSIGN(const Budget padded, Budget::Parse("08/0128"));
  EXPECT_EQ(padded, b);
  ASSERT_OK_AND_ASSIGN(const Budget big, Budget::Parse("999999999/999999999"));
  EXPECT_EQ(big.count, 999'999'999);
  ASSERT_OK_AND_ASSIGN(const Budget one, Budget::Parse("1/1"));
  EXPECT_EQ(one.top_k, 1);
  EXPECT_EQ(one.count, 1);
}

TEST(BudgetTest, ParsesPercentBytesAndCoverage) {
  ASSERT_OK_AND_ASSIGN(const Budget half, Budget::Parse("50%"));
  EXPECT_EQ(half.kind, Kind::kFraction);
  EXPECT_DOUBLE_EQ(half.fraction, 0.5);
  EXPECT_EQ(half.top_k, 0);
  EXPECT_EQ(half.ToString(), "50%");
  ASSERT_OK_AND_ASSIGN(const Budget eighth, Budget::Parse("12.5%"));
  EXPECT_DOUBLE_EQ(eighth.fraction, 0.125);
  ASSERT_OK_AND_ASSIGN(const Budget all, Budget::Parse("100%"));
  EXPECT_DOUBLE_EQ(all.fraction, 1.0);

  ASSERT_OK_AND_ASSIGN(const Budget gib, Budget::Parse("bytes:2GiB"));
  EXPECT_EQ(gib.kind, Kind::kBytes);
  EXPECT_EQ(gib.bytes, int64_t{2} << 30);
  EXPECT_EQ(gib.ToString(), "bytes:2147483648");
  EXPECT_EQ(Budget::Parse("bytes:1.5MiB")->bytes, 3 << 19);
  EXPECT_EQ(Budget::Parse("bytes:7KiB")->bytes, 7 * 1024);
  EXPECT_EQ(Budget::Parse("bytes:4096")->bytes, 4096);
  EXPECT_EQ(Budget::Parse("bytes:4096B")->bytes, 4096);

  ASSERT_OK_AND_ASSIGN(const Budget cov, Budget::Parse("coverage:0.9"));
  EXPECT_EQ(cov.kind, Kind::kCoverage);
  EXPECT_DOUBLE_EQ(cov.fraction, 0.9);
  EXPECT_EQ(cov.ToString(), "coverage:0.9");
  EXPECT_DOUBLE_EQ(Budget::Parse("coverage:1")->fraction, 1.0);
  EXPECT_DOUBLE_EQ(Budget::Parse("coverage:.25")->fraction, 0.25);
}

TEST(BudgetTest, ToStringReadsBackAsTheSameBudget) {
  for (const std::string text :
       {"8/128", "2/2", "50%", "12.5%", "bytes:1536", "coverage:0.9", "coverage:1"}) {
    SCOPED_TRACE(text);
    ASSERT_OK_AND_ASSIGN(const Budget b, Budget::Parse(text));
    ASSERT_OK_AND_ASSIGN(const Budget again, Budget::Parse(b.ToString()));
    EXPECT_EQ(again, b);
  }
}

TEST(BudgetTest, UniformCountIsTheExpertsEveryLayerKeeps) {
  // 16 experts, top-2: 8/12 keeps 12; 50% keeps 8; 30% keeps ceil(4.8) = 5;
  // 10% would keep ceil(1.6) = 2, and with top-4 is raised to 4.
  EXPECT_EQ(*Budget::Parse("8/12")->UniformCount(16, 2), 12);
  EXPECT_EQ(*Budget::Parse("50%")->UniformCount(16, 2), 8);
  EXPECT_EQ(*Budget::Parse("30%")->UniformCount(16, 2), 5);
  EXPECT_EQ(*Budget::Parse("10%")->UniformCount(16, 2), 2);
  EXPECT_EQ(*Budget::Parse("10%")->UniformCount(16, 4), 4);
  // 0.3 * 10 is 3.0000000000000004 in binary: still 3 experts.
  EXPECT_EQ(*Budget::Parse("30%")->UniformCount(10, 1), 3);
  EXPECT_TRUE(Budget::Parse("50%")->IsUniform());
  EXPECT_FALSE(Budget::Parse("bytes:1MiB")->IsUniform());
  EXPECT_THAT(Budget::Parse("bytes:1MiB")->UniformCount(16, 2).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, "pattern's scores"));
  EXPECT_THAT(Budget::Parse("coverage:0.5")->UniformCount(16, 2).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, "budget \"coverage:0.5\""));
}

TEST(BudgetTest, BadTextIsInvalidArgumentNamingIt) {
  struct Case {
    std::string text;
    std::string why;
  };
  const std::vector<Case> kCases = {
      {"", "unrecognised"},
      {"8", "unrecognised"},
      {"half", "unrecognised"},
      {"first:8", "unrecognised"},
      {" 8/16", "decimal integers"},
      {"8/16 ", "decimal integers"},
      {"+2/4", "decimal integers"},
      {"-1/4", "decimal integers"},
      {"2.0/4", "decimal integers"},
      {"2/4/1", "decimal integers"},
      {"1234567890/4", "at most 9 digits"},
      {"0/4", "top-k K must be at least 1"},
      {"3/2", "M = 2 kept experts is fewer than the top-k K = 3"},
      {"0%", "(0, 100]"},
      {"150%", "(0, 100]"},
      {"-5%", "(0, 100]"},
      {" 50%", "(0, 100]"},
      {"nan%", "(0, 100]"},
      {"1e1%", "(0, 100]"},
      {"%", "(0, 100]"},
      {"coverage:0", "(0, 1]"},
      {"coverage:1.5", "(0, 1]"},
      {"coverage:", "(0, 1]"},
      {"coverage:1..", "(0, 1]"},
      {"bytes:", "positive number of bytes"},
      {"bytes:0", "positive number of bytes"},
      {"bytes:-1", "positive number of bytes"},
      {"bytes: 2GiB", "positive number of bytes"},
      {"bytes:2 GiB", "positive number of bytes"},
      {"bytes:2GB", "positive number of bytes"},
      {"bytes:GiB", "positive number of bytes"},
  };
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.text);
    const absl::StatusOr<Budget> b = Budget::Parse(c.text);
    EXPECT_THAT(b.status(),
                StatusIs(absl::StatusCode::kInvalidArgument, "budget \"" + c.text + "\": "));
    EXPECT_THAT(b.status(), StatusIs(absl::StatusCode::kInvalidArgument, c.why));
  }
  // Every refusal says what would have been right.
  EXPECT_THAT(Budget::Parse("8").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "want K/M, e.g. 8/128"));
  // Unprintable bytes are escaped in the message.
  EXPECT_THAT(Budget::Parse(std::string("8/\x01")).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "budget \"8/\\x01\""));
}

}  // namespace
}  // namespace premoe::checkpoint
