// Budgets turn scores into kept experts.
#include "premoe/profiler/selection.h"

#include <map>
#include <vector>

#include "tests/testutil/testutil.h"

namespace premoe::profiler {
namespace {

using ::premoe::testing::StatusIs;
using ::testing::ElementsAre;

// Two MoE layers (1 and 3) of 6 experts, routing top-2.
//   layer 1: mass concentrated on experts 4, 0, 2
//   layer 3: nearly flat
const std::map<int64_t, std::vector<double>> kScores = {
    {1, {0.30, 0.00, 0.15, 0.00, 0.50, 0.05}},
    {3, {0.17, 0.16, 0.18, 0.16, 0.17, 0.16}},
};

// The selection under `spec`. A failure is recorded and gives an empty
// Selection, so the test fails instead of dereferencing an error.
Selection SelectOrFail(const std::string& spec, int64_t bytes_per_expert = 100) {
  auto budget = Budget::Parse(spec);
  if (!budget.ok()) {
    ADD_FAILURE() << spec << ": " << budget.status();
    return Selection();
  }
  auto sel = Select(kScores, *budget, bytes_per_expert, 2);
  if (!sel.ok()) {
    ADD_FAILURE() << spec << ": " << sel.status();
    return Selection();
  }
  return *sel;
}

// The experts `s` keeps in `layer`; none, and a failure, without an entry.
std::vector<int64_t> Kept(const Selection& s, int64_t layer) {
  const std::vector<int64_t>* ids = s.keep.Find(layer);
  if (ids == nullptr) {
    ADD_FAILURE() << "the selection has no entry for layer " << layer;
    return {};
  }
  return *ids;
}

// A budget the test knows to be valid; a parse failure fails the test.
Budget ParsedBudget(const std::string& spec) {
  auto budget = Budget::Parse(spec);
  if (!budget.ok()) {
    ADD_FAILURE() << spec << ": " << budget.status();
    return Budget();
  }
  return *budget;
}

TEST(SelectTest, UniformKeepsTheBestMPerLayer) {
  const Selection s = SelectOrFail("2/3");
  EXPECT_THAT(Kept(s, 1), ElementsAre(0, 2, 4));
  // Ties go to the lower id: 2 (0.18), then 0 and 4 (0.17).
  EXPECT_THAT(Kept(s, 3), ElementsAre(0, 2, 4));
  EXPECT_EQ(s.top_k, 2);
  EXPECT_EQ(s.kept_experts, 6);
  EXPECT_EQ(s.expert_bytes, 600);
  // Lowering top-k explicitly.
  EXPECT_EQ(SelectOrFail("1/2").top_k, 1);
  EXPECT_EQ(Kept(SelectOrFail("1/2"), 1).size(), 2u);
}

TEST(SelectTest, FractionRoundsUpAndNeverGoesBelowTopK) {
  EXPECT_EQ(Kept(SelectOrFail("50%"), 1).size(), 3u);
  EXPECT_EQ(Kept(SelectOrFail("40%"), 1).size(), 3u);  // 2.4 -> 3
  EXPECT_EQ(Kept(SelectOrFail("10%"), 1).size(), 2u);  // 0.6 -> 1 -> top-k 2
}

TEST(SelectTest, CoverageKeepsTheFewestExpertsHoldingTheMass) {
  // Layer 1 shares: 0.5, 0.3, 0.15, 0.05, 0, 0 -> 80% needs 2, 90% needs 3.
  EXPECT_THAT(Kept(SelectOrFail("coverage:0.8"), 1), ElementsAre(0, 4));
  EXPECT_THAT(Kept(SelectOrFail("coverage:0.9"), 1), ElementsAre(0, 2, 4));
  // Layer 3 shifted by its minimum (0.16): shares 0.25, 0, 0.5, 0, 0.25, 0
  // -> 80% needs 3 (2, 0, 4).
  EXPECT_THAT(Kept(SelectOrFail("coverage:0.8"), 3), ElementsAre(0, 2, 4));
}

TEST(SelectTest, ByteBudgetAllocatesByShareOfScoreMass) {
  // 100 bytes an expert, 600 bytes: 6 experts. Top-2 per layer first
  // (layer 1: 4, 0; layer 3: 2, 0), then by share of the layer's mass:
  // layer 3's expert 4 (shifted shares 0.25, 0, 0.5, 0, 0.25, 0) before
  // layer 1's expert 2 (0.15).
  const Selection s = SelectOrFail("bytes:600B");
  EXPECT_EQ(s.kept_experts, 6);
  EXPECT_THAT(Kept(s, 1), ElementsAre(0, 2, 4));
  EXPECT_THAT(Kept(s, 3), ElementsAre(0, 2, 4));
  // 500 bytes: only layer 3's expert 4 is added.
  const Selection five = SelectOrFail("bytes:500");
  EXPECT_THAT(Kept(five, 1), ElementsAre(0, 4));
  EXPECT_THAT(Kept(five, 3), ElementsAre(0, 2, 4));
  EXPECT_EQ(s.expert_bytes, 600);
  // Too small to hold top-k everywhere.
  auto too_small = Select(kScores, ParsedBudget("bytes:300"), 100, 2);
  EXPECT_THAT(too_small.status(), StatusIs(absl::StatusCode::kInvalidArgument, "at least top-k"));
  // A budget larger than the model keeps everything.
  EXPECT_EQ(SelectOrFail("bytes:1GiB").kept_experts, 12);
}

TEST(BudgetTest, ParsesAndRefuses) {
  EXPECT_EQ(Budget::Parse("8/128")->count, 128);
  EXPECT_EQ(Budget::Parse("bytes:2GiB")->bytes, int64_t{2} << 30);
  EXPECT_EQ(Budget::Parse("bytes:1.5MiB")->bytes, 3 << 19);
  EXPECT_DOUBLE_EQ(Budget::Parse("25%")->fraction, 0.25);
  EXPECT_THAT(Budget::Parse("3/2").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "K <= M"));
  EXPECT_THAT(Budget::Parse("150%").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "(0, 100]"));
  EXPECT_THAT(Budget::Parse("half").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "unrecognised"));
  EXPECT_THAT(Budget::Parse("coverage:0").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "(0, 1]"));
  EXPECT_THAT(Select(kScores, ParsedBudget("2/7"), 100, 2).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "keeps 7 experts of a layer with 6"));
  std::map<int64_t, std::vector<double>> ragged = {{0, {1, 2}}, {1, {1}}};
  EXPECT_THAT(Select(ragged, ParsedBudget("1/1"), 1, 1).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "one per expert"));
}

}  // namespace
}  // namespace premoe::profiler
