// The calibration runner on a tiny qwen3_moe made by transformers.
#include "premoe/profiler/calibration.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "premoe/model/fingerprint.h"
#include "tests/testutil/testutil.h"

namespace premoe::profiler {
namespace {

using ::premoe::testing::StatusIs;

class CalibrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new premoe::testing::TempDir();
    auto out = premoe::testing::RunPython(
        "scripts/make_tiny_model.py",
        {"--arch", "qwen3_moe", "--out", dir_->path(), "--layers", "3", "--experts", "8"});
    ASSERT_TRUE(out.ok()) << out.status();
  }
  static void TearDownTestSuite() { delete dir_; }

  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(engine_, model::Engine::Open(dir_->path(), {.dtype = "fp32"}));
    ASSERT_OK_AND_ASSIGN(tokenizer_, tokenizer::Tokenizer::FromFile(dir_->Join("tokenizer.json")));
  }

  static premoe::testing::TempDir* dir_;
  std::unique_ptr<model::Engine> engine_;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer_;
};
premoe::testing::TempDir* CalibrationTest::dir_ = nullptr;

// Records each MoE layer's gate logits per sequence.
class LogitTap : public model::GateTap {
 public:
  void OnGate(const model::GateEvent& e) override {
    logits[e.layer].push_back(e.gate_logits.clone());
  }
  std::map<int64_t, std::vector<at::Tensor>> logits;
};

const std::vector<CalibrationSample> kSamples = {{"What is 12 + 30?", "42"},
                                                 {"Reverse: planet", "tenalp"},
                                                 {"int main(void) { return 0; }", ""}};

TEST_F(CalibrationTest, FrequencyScoresAreTheTopKSelectionRates) {
  ProfileOptions o;
  ASSERT_OK_AND_ASSIGN(o.metric, MetricOptions::Parse("frequency"));
  o.batch_size = 2;  // two batches
  ASSERT_OK_AND_ASSIGN(TaskProfile p, ProfileTask(*engine_, *tokenizer_, kSamples, o));
  EXPECT_EQ(p.samples, 3);

  // Independently: each sample alone through the engine, counting top-2 of
  // the raw logits per layer.
  std::map<int64_t, std::vector<double>> counts;
  int64_t tokens = 0;
  for (const auto& s : kSamples) {
    ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids,
                         tokenizer_->Encode(s.prompt + s.completion, true));
    tokens += static_cast<int64_t>(ids.size());
    LogitTap tap;
    model::ForwardOptions fo;
    fo.tap = &tap;
    ASSERT_OK(
        engine_->Forward({std::vector<int64_t>(ids.begin(), ids.end())}, nullptr, fo).status());
    for (const auto& [layer, list] : tap.logits) {
      auto& c = counts[layer];
      c.resize(8, 0);
      at::Tensor top = std::get<1>(list[0].topk(2, -1));
      for (int64_t i = 0; i < top.numel(); ++i) c[top.reshape({-1})[i].item<int64_t>()] += 1;
    }
  }
  EXPECT_EQ(p.tokens, tokens);
  ASSERT_EQ(p.scores.size(), counts.size());
  for (const auto& [layer, c] : counts) {
    for (int e = 0; e < 8; ++e) {
      EXPECT_NEAR(p.scores.at(layer)[e], c[e] / static_cast<double>(tokens), 1e-9)
          << "layer " << layer << " expert " << e;
    }
  }
}

TEST_F(CalibrationTest, EmbeddingsAreNormalisedPromptOnlyAndDeterministic) {
  ProfileOptions o;  // peu
  ASSERT_OK_AND_ASSIGN(TaskProfile p, ProfileTask(*engine_, *tokenizer_, kSamples, o));
  ASSERT_EQ(p.embeddings.size(), 3u);
  for (const auto& e : p.embeddings) {
    ASSERT_EQ(e.size(), 8u);
    double norm = 0;
    for (float v : e) norm += v * v;
    EXPECT_NEAR(norm, 1.0, 1e-5);
  }
  // Sample 0's embedding is its prompt's, not prompt + completion's.
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids, tokenizer_->Encode(kSamples[0].prompt, true));
  LogitTap tap;
  model::ForwardOptions fo;
  fo.tap = &tap;
  ASSERT_OK(engine_->Forward({std::vector<int64_t>(ids.begin(), ids.end())}, nullptr, fo).status());
  const int64_t first = tap.logits.begin()->first;
  ASSERT_OK_AND_ASSIGN(std::vector<float> alone,
                       MatchEmbedding({tap.logits[first][0]}, MetricOptions(), engine_->top_k()));
  for (int e = 0; e < 8; ++e) EXPECT_NEAR(p.embeddings[0][e], alone[e], 1e-5);
  // Same run, same scores.
  ASSERT_OK_AND_ASSIGN(TaskProfile again, ProfileTask(*engine_, *tokenizer_, kSamples, o));
  EXPECT_EQ(again.scores, p.scores);
}

// Layer streaming changes where the weights come from, not the arithmetic:
// for every metric and batching, the pattern must be identical.
TEST_F(CalibrationTest, StreamedProfileEqualsResidentExactly) {
  ASSERT_OK_AND_ASSIGN(auto streamed,
                       model::Engine::Open(dir_->path(), {.dtype = "fp32", .streamed = true}));
  for (const std::string metric : {"peu", "tcess", "reap", "frequency"}) {
    for (int64_t batch : {0, 2}) {
      SCOPED_TRACE(absl::StrCat(metric, " batch ", batch));
      ProfileOptions o;
      ASSERT_OK_AND_ASSIGN(o.metric, MetricOptions::Parse(metric));
      o.batch_size = batch;
      std::vector<double> fractions;
      o.on_progress = [&](const ProfileProgress& p) { fractions.push_back(p.fraction); };
      ASSERT_OK_AND_ASSIGN(TaskProfile want, ProfileTask(*engine_, *tokenizer_, kSamples, o));
      ASSERT_FALSE(fractions.empty());
      EXPECT_DOUBLE_EQ(fractions.back(), 1.0);
      EXPECT_TRUE(std::is_sorted(fractions.begin(), fractions.end()));
      ASSERT_OK_AND_ASSIGN(TaskProfile got, ProfileTask(*streamed, *tokenizer_, kSamples, o));
      EXPECT_EQ(got.scores, want.scores);
      EXPECT_EQ(got.embeddings, want.embeddings);
      EXPECT_EQ(got.tokens, want.tokens);
    }
  }
  ASSERT_OK_AND_ASSIGN(std::string resident_fp, model::ModelFingerprint(*engine_));
  ASSERT_OK_AND_ASSIGN(std::string streamed_fp, model::ModelFingerprint(*streamed));
  EXPECT_EQ(resident_fp, streamed_fp);
}

TEST_F(CalibrationTest, FingerprintNamesTheModelAndRefusesAReducedOne) {
  ASSERT_OK_AND_ASSIGN(std::string a, model::ModelFingerprint(*engine_));
  ASSERT_OK_AND_ASSIGN(std::string b, model::ModelFingerprint(*engine_));
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.size(), 32u);
  model::EngineOptions reduced{.dtype = "fp32"};
  reduced.keep.Set(1, {0, 1, 2});
  ASSERT_OK_AND_ASSIGN(auto small, model::Engine::Open(dir_->path(), reduced));
  EXPECT_THAT(model::ModelFingerprint(*small).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, "reduced"));
}

TEST(ReadCalibrationJsonlTest, ReadsBothFormsAndNamesTheBadLine) {
  premoe::testing::TempDir dir;
  const std::string good = dir.Join("good.jsonl");
  premoe::testing::WriteStringToFile(
      good, "{\"prompt\": \"a\", \"completion\": \"b\"}\n\n{\"text\": \"hello\"}\n");
  ASSERT_OK_AND_ASSIGN(auto samples, ReadCalibrationJsonl(good));
  ASSERT_EQ(samples.size(), 2u);
  EXPECT_EQ(samples[0].completion, "b");
  EXPECT_EQ(samples[1].prompt, "hello");
  EXPECT_EQ(ReadCalibrationJsonl(good, 1)->size(), 1u);

  auto bad = [&](const std::string& third_line) {
    const std::string path = dir.Join("bad.jsonl");
    premoe::testing::WriteStringToFile(
        path, "{\"text\": \"x\"}\n{\"text\": \"y\"}\n" + third_line + "\n");
    return ReadCalibrationJsonl(path).status();
  };
  EXPECT_THAT(bad("{\"text\": "), StatusIs(absl::StatusCode::kInvalidArgument, "bad.jsonl:3"));
  EXPECT_THAT(bad("{\"prompt\": \"p\"}"),
              StatusIs(absl::StatusCode::kInvalidArgument, ":3: wrong keys"));
  EXPECT_THAT(bad("{\"text\": \"\"}"),
              StatusIs(absl::StatusCode::kInvalidArgument, ":3: empty text"));
  EXPECT_THAT(bad("{\"text\": 3}"), StatusIs(absl::StatusCode::kInvalidArgument, "not a string"));
  EXPECT_THAT(bad("{\"txt\": \"a\"}"), StatusIs(absl::StatusCode::kInvalidArgument, "unknown key"));
  EXPECT_THAT(bad("[1]"), StatusIs(absl::StatusCode::kInvalidArgument, "not a JSON object"));
  premoe::testing::WriteStringToFile(dir.Join("empty.jsonl"), "\n\n");
  EXPECT_THAT(ReadCalibrationJsonl(dir.Join("empty.jsonl")).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "no samples"));
  EXPECT_THAT(ReadCalibrationJsonl(dir.Join("missing.jsonl")).status(),
              StatusIs(absl::StatusCode::kNotFound, "missing.jsonl"));
}

}  // namespace
}  // namespace premoe::profiler
