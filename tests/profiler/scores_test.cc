// Expert scores against values computed by hand (std::exp, not libtorch) on
// small logits.
#include "premoe/profiler/scores.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "tests/testutil/testutil.h"

namespace premoe::profiler {
namespace {

using ::premoe::testing::StatusIs;
using ::testing::DoubleNear;
using ::testing::ElementsAre;

// Two tokens, four experts, top-2 routing.
//   token 0: s = [ 2.0, 1.0, 0.0, -1.0]   top-2 {0, 1}
//   token 1: s = [-1.0, 0.5, 3.0,  0.0]   top-2 {2, 1}
GateBatch TwoTokens() {
  GateBatch b;
  b.gate_logits = at::tensor(std::vector<float>{2, 1, 0, -1, -1, 0.5, 3, 0}).view({2, 4});
  return b;
}

std::vector<double> ScoresOf(const std::string& spec, const std::vector<GateBatch>& tasks) {
  auto options = MetricOptions::Parse(spec);
  EXPECT_TRUE(options.ok()) << options.status();
  if (!options.ok()) return {};
  auto acc = ScoreAccumulator::Create(*options, {3}, 4, 2);
  EXPECT_TRUE(acc.ok()) << acc.status();
  if (!acc.ok()) return {};
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (i > 0) acc->BeginTask();
    EXPECT_OK(acc->Add(3, tasks[i]));
  }
  auto scores = acc->Scores();
  EXPECT_TRUE(scores.ok()) << scores.status();
  return scores.ok() ? scores->at(3) : std::vector<double>();
}

double Sigmoid(double x) { return 1 / (1 + std::exp(-x)); }
// softmax over two values: the probability of the first.
double P(double a, double b) { return std::exp(a) / (std::exp(a) + std::exp(b)); }

constexpr double kTol = 1e-6;

TEST(ScoresTest, ActLogitsAllLogitsFrequencyTcess) {
  // act_logits: token 0 gives s0 = 2, s1 = 1; token 1 gives s2 = 3, s1 = 0.5.
  EXPECT_THAT(ScoresOf("act_logits", {TwoTokens()}),
              ElementsAre(DoubleNear(1.0, kTol), DoubleNear(0.75, kTol), DoubleNear(1.5, kTol),
                          DoubleNear(0.0, kTol)));
  // all_logits: the mean logit.
  EXPECT_THAT(ScoresOf("all_logits", {TwoTokens()}),
              ElementsAre(DoubleNear(0.5, kTol), DoubleNear(0.75, kTol), DoubleNear(1.5, kTol),
                          DoubleNear(-0.5, kTol)));
  // frequency: selected in top-2.
  EXPECT_THAT(ScoresOf("frequency", {TwoTokens()}),
              ElementsAre(DoubleNear(0.5, kTol), DoubleNear(1.0, kTol), DoubleNear(0.5, kTol),
                          DoubleNear(0.0, kTol)));
  // tcess: top-1 logit only.
  EXPECT_THAT(ScoresOf("tcess", {TwoTokens()}),
              ElementsAre(DoubleNear(1.0, kTol), DoubleNear(0.0, kTol), DoubleNear(1.5, kTol),
                          DoubleNear(0.0, kTol)));
}

TEST(ScoresTest, PeuThresholdIsTheMeanTopProbabilityOfTheTask) {
  const double p0 = P(2, 1), p1 = P(3, 0.5);  // top probabilities of the two tokens
  const double r = (p0 + p1) / 2;
  ASSERT_LT(p0, r);  // token 0's best expert falls below r; token 1's passes
  ASSERT_GE(p1, r);
  EXPECT_THAT(ScoresOf("peu", {TwoTokens()}),
              ElementsAre(DoubleNear(0.0, kTol), DoubleNear(0.0, kTol),
                          DoubleNear(std::max(3.0, Sigmoid(3)) / 2, kTol), DoubleNear(0.0, kTol)));
  // A fixed r of 0 keeps every selected expert, with f = max(s, sigmoid(s)).
  EXPECT_THAT(ScoresOf("peu:r=0", {TwoTokens()}),
              ElementsAre(DoubleNear(2.0 / 2, kTol),
                          DoubleNear((1.0 + std::max(0.5, Sigmoid(0.5))) / 2, kTol),
                          DoubleNear(3.0 / 2, kTol), DoubleNear(0.0, kTol)));
  // Negative logits of selected experts count positively under max(s, sigmoid(s)).
  GateBatch neg;
  neg.gate_logits = at::tensor(std::vector<float>{-1, -2, -3, -4}).view({1, 4});
  EXPECT_THAT(ScoresOf("peu:r=0", {neg}),
              ElementsAre(DoubleNear(Sigmoid(-1), kTol), DoubleNear(Sigmoid(-2), kTol),
                          DoubleNear(0.0, kTol), DoubleNear(0.0, kTol)));
}

TEST(ScoresTest, GeneralistPoolsTokensWithAThresholdPerTask) {
  // Task A: token 1 only (r = its own top probability, so it passes).
  // Task B: token 0 only (likewise). Pooled: mean over both tokens.
  GateBatch a, b;
  a.gate_logits = TwoTokens().gate_logits.narrow(0, 1, 1).clone();
  b.gate_logits = TwoTokens().gate_logits.narrow(0, 0, 1).clone();
  const double f2 = 2.0, f3 = 3.0;  // max(s, sigmoid(s)) of the top experts
  EXPECT_THAT(ScoresOf("peu", {a, b}),
              ElementsAre(DoubleNear(f2 / 2, kTol), DoubleNear(0.0, kTol), DoubleNear(f3 / 2, kTol),
                          DoubleNear(0.0, kTol)));
  // Pooled as one task instead, token 0 falls below the shared r.
  EXPECT_THAT(ScoresOf("peu", {TwoTokens()})[0], DoubleNear(0.0, kTol));
}

TEST(ScoresTest, ReapAndManAverageOverRoutedTokens) {
  GateBatch b = TwoTokens();
  b.selected_experts = at::tensor(std::vector<int64_t>{0, 1, 2, 1}).view({2, 2});
  b.routing_weights = at::tensor(std::vector<float>{0.7f, 0.3f, 0.9f, 0.1f}).view({2, 2});
  b.expert_norms = at::tensor(std::vector<float>{2.0f, 4.0f, 1.0f, 6.0f}).view({2, 2});
  EXPECT_THAT(ScoresOf("reap", {b}),
              ElementsAre(DoubleNear(0.7 * 2, kTol), DoubleNear((0.3 * 4 + 0.1 * 6) / 2, kTol),
                          DoubleNear(0.9 * 1, kTol), DoubleNear(0.0, kTol)));
  EXPECT_THAT(ScoresOf("man", {b}), ElementsAre(DoubleNear(2.0, kTol), DoubleNear(5.0, kTol),
                                                DoubleNear(1.0, kTol), DoubleNear(0.0, kTol)));
  auto acc = ScoreAccumulator::Create(*MetricOptions::Parse("reap"), {3}, 4, 2);
  ASSERT_OK(acc.status());
  EXPECT_TRUE(acc->NeedsExpertNorms());
  EXPECT_THAT(acc->Add(3, TwoTokens()), StatusIs(absl::StatusCode::kInvalidArgument, "norms"));
}

TEST(ScoresTest, RandomIsSeeded) {
  const auto a = ScoresOf("random:seed=7", {}), b = ScoresOf("random:seed=7", {});
  const auto c = ScoresOf("random:seed=8", {});
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (double v : a) EXPECT_TRUE(v >= 0 && v < 1);
}

TEST(MetricOptionsTest, ParsesAndRoundTrips) {
  ASSERT_OK_AND_ASSIGN(MetricOptions o,
                       MetricOptions::Parse("act_logits:k=4,r=0.25,transform=max_sigmoid"));
  EXPECT_EQ(o.metric, Metric::kActLogits);
  EXPECT_EQ(o.k, 4);
  EXPECT_EQ(o.r, 0.25);
  EXPECT_EQ(o.transform, Transform::kMaxSigmoid);
  ASSERT_OK_AND_ASSIGN(MetricOptions again, MetricOptions::Parse(o.ToString()));
  EXPECT_EQ(again.ToString(), o.ToString());
  EXPECT_EQ(MetricOptions::Parse("peu")->ToString(), "peu");
  const auto params = MetricOptions::Parse("peu")->Params(64, 8);
  EXPECT_EQ(params.at("k"), "8");
  EXPECT_EQ(params.at("r"), "per_task");
  EXPECT_EQ(params.at("transform"), "max_sigmoid");
  EXPECT_EQ(MetricOptions::Parse("tcess")->Params(64, 8).at("k"), "1");
}

TEST(MetricOptionsTest, FromParamsInvertsParams) {
  ASSERT_OK_AND_ASSIGN(MetricOptions peu,
                       MetricOptions::FromParams(
                           "peu", {{"k", "8"}, {"r", "per_task"}, {"transform", "max_sigmoid"}}));
  EXPECT_EQ(peu.metric, Metric::kPeu);
  EXPECT_EQ(peu.k, 8);
  EXPECT_FALSE(peu.r.has_value());  // per task, as the default
  EXPECT_EQ(peu.transform, Transform::kMaxSigmoid);
  ASSERT_OK_AND_ASSIGN(
      MetricOptions tcess,
      MetricOptions::FromParams("tcess", {{"k", "2"}, {"r", "off"}, {"transform", "identity"}}));
  EXPECT_EQ(tcess.k, 2);
  EXPECT_FALSE(tcess.r.has_value());
  for (const char* spec : {"peu", "peu:r=0.3", "tcess:k=2", "act_logits:k=4,r=0.25", "all_logits",
                           "frequency:transform=max_sigmoid", "reap", "man", "random:seed=3"}) {
    SCOPED_TRACE(spec);
    ASSERT_OK_AND_ASSIGN(MetricOptions o, MetricOptions::Parse(spec));
    ASSERT_OK_AND_ASSIGN(MetricOptions back,
                         MetricOptions::FromParams(MetricName(o.metric), o.Params(64, 8)));
    EXPECT_EQ(back.Params(64, 8), o.Params(64, 8));
    EXPECT_EQ(back.r, o.r);
    EXPECT_EQ(back.seed, o.seed);
  }
  EXPECT_THAT(MetricOptions::FromParams("tcess", {{"r", "per_task"}}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "r must be a number"));
  EXPECT_THAT(MetricOptions::FromParams("peu", {{"q", "1"}}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "unknown parameter"));
}

TEST(MetricOptionsTest, BadSpecsNameTheProblem) {
  EXPECT_THAT(MetricOptions::Parse("pue").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "unknown metric \"pue\""));
  EXPECT_THAT(MetricOptions::Parse("peu:q=1").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "unknown parameter"));
  EXPECT_THAT(MetricOptions::Parse("peu:r=1.5").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "r must be in [0, 1]"));
  EXPECT_THAT(MetricOptions::Parse("reap:k=2").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "apply to the logit metrics"));
  EXPECT_THAT(ScoreAccumulator::Create(*MetricOptions::Parse("act_logits:k=5"), {0}, 4, 2).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "exceeds"));
}

TEST(ScoreAccumulatorTest, RefusesBadInput) {
  ASSERT_OK_AND_ASSIGN(ScoreAccumulator acc,
                       ScoreAccumulator::Create(*MetricOptions::Parse("peu"), {1, 3}, 4, 2));
  EXPECT_THAT(acc.Add(2, TwoTokens()), StatusIs(absl::StatusCode::kInvalidArgument, "not a MoE"));
  GateBatch wrong;
  wrong.gate_logits = at::zeros({2, 5});
  EXPECT_THAT(acc.Add(1, wrong), StatusIs(absl::StatusCode::kInvalidArgument, "[T, 4]"));
  GateBatch inf = TwoTokens();
  inf.gate_logits[0][3] = -INFINITY;
  EXPECT_THAT(acc.Add(1, inf), StatusIs(absl::StatusCode::kInvalidArgument, "reduced model"));
  ASSERT_OK(acc.Add(1, TwoTokens()));
  EXPECT_EQ(acc.tokens(1), 2);
  // Layer 3 never saw a token.
  EXPECT_THAT(acc.Scores().status(), StatusIs(absl::StatusCode::kFailedPrecondition, "layer 3"));
}

}  // namespace
}  // namespace premoe::profiler
