// Pattern assembly on the committed testbed model (16 experts per layer,
// top-2, 4 MoE layers): what a pattern records of its profile, and the
// scores read back for selection.
#include "premoe/profiler/pattern.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "premoe/profiler/selection.h"
#include "tests/testutil/testutil.h"

namespace premoe::profiler {
namespace {

using ::premoe::testing::StatusIs;

// The prompts' XXH3-128, computed apart from premoe with libxxhash's
// XXH3_128bits (through Python's ctypes), high 64 bits first.
const std::vector<CalibrationSample> kSamples = {{"What is 12 + 30?", "42"},
                                                 {"Reverse: planet", "tenalp"}};
constexpr const char* kPromptHashes[] = {"3ed19108e3ceefface1dc428cb5c3fee",
                                         "88605f380ec90d28e7dc9b79e0406e47"};

class PatternTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = premoe::testing::SourceDir() + "/testbed/model";
    auto engine = model::Engine::Open(dir, {.dtype = "fp32"});
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = engine->release();
    auto tok = tokenizer::Tokenizer::FromFile(dir + "/tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete engine_;
  }

  static PatternOptions Options() {
    return {.task_name = "arith", .model_fingerprint = "fp-1", .created_unix_micros = 1234};
  }

  static model::Engine* engine_;
  static tokenizer::Tokenizer* tokenizer_;
};
model::Engine* PatternTest::engine_ = nullptr;
tokenizer::Tokenizer* PatternTest::tokenizer_ = nullptr;

TEST_F(PatternTest, RecordsTheProfileWithItsMetricAndPromptHashes) {
  const ProfileOptions po;  // peu
  ASSERT_OK_AND_ASSIGN(const TaskProfile profile, ProfileTask(*engine_, *tokenizer_, kSamples, po));
  ASSERT_OK_AND_ASSIGN(const store::Pattern p,
                       MakePattern(*engine_, kSamples, po, profile, Options()));
  EXPECT_EQ(p.task_name, "arith");
  EXPECT_EQ(p.model_fingerprint, "fp-1");
  EXPECT_EQ(p.created_unix_micros, 1234);
  EXPECT_EQ(p.metric, "peu");
  // peu's defaults resolved for a top-2 model.
  EXPECT_EQ(p.metric_params, (std::map<std::string, std::string>{
                                 {"k", "2"}, {"r", "per_task"}, {"transform", "max_sigmoid"}}));
  ASSERT_EQ(p.layers.size(), 4u);
  for (int32_t l = 0; l < 4; ++l) {
    SCOPED_TRACE(l);
    EXPECT_EQ(p.layers[l].layer, l);
    ASSERT_EQ(p.layers[l].scores.size(), 16u);
    for (int e = 0; e < 16; ++e) {
      EXPECT_EQ(p.layers[l].scores[e], static_cast<float>(profile.scores.at(l)[e]));
    }
  }
  EXPECT_EQ(p.calibration_samples, 2);
  EXPECT_EQ(p.calibration_tokens, profile.tokens);
  EXPECT_GT(p.calibration_tokens, 0);
  ASSERT_EQ(p.embeddings.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(p.embeddings[i].values, profile.embeddings[i]);
    EXPECT_EQ(p.embeddings[i].prompt_hash, kPromptHashes[i]);
  }

  // Another metric records its own parameters.
  ProfileOptions freq;
  ASSERT_OK_AND_ASSIGN(freq.metric, MetricOptions::Parse("frequency"));
  ASSERT_OK_AND_ASSIGN(const TaskProfile fp, ProfileTask(*engine_, *tokenizer_, kSamples, freq));
  ASSERT_OK_AND_ASSIGN(const store::Pattern f,
                       MakePattern(*engine_, kSamples, freq, fp, Options()));
  EXPECT_EQ(f.metric, "frequency");
  EXPECT_EQ(f.metric_params,
            (std::map<std::string, std::string>{{"k", "2"}, {"r", "off"}, {"transform", "one"}}));
}

TEST_F(PatternTest, CreationTimeDefaultsToNow) {
  const ProfileOptions po;
  ASSERT_OK_AND_ASSIGN(const TaskProfile profile, ProfileTask(*engine_, *tokenizer_, kSamples, po));
  PatternOptions o = Options();
  o.created_unix_micros = 0;
  const int64_t before = absl::ToUnixMicros(absl::Now());
  ASSERT_OK_AND_ASSIGN(const store::Pattern p, MakePattern(*engine_, kSamples, po, profile, o));
  const int64_t after = absl::ToUnixMicros(absl::Now());
  EXPECT_GE(p.created_unix_micros, before);
  EXPECT_LE(p.created_unix_micros, after);
}

TEST_F(PatternTest, RefusesBadOptionsAndProfilesOfOtherSamples) {
  const ProfileOptions po;
  ASSERT_OK_AND_ASSIGN(const TaskProfile profile, ProfileTask(*engine_, *tokenizer_, kSamples, po));
  PatternOptions o = Options();
  o.task_name.clear();
  EXPECT_THAT(MakePattern(*engine_, kSamples, po, profile, o),
              StatusIs(absl::StatusCode::kInvalidArgument, "task_name is empty"));
  o = Options();
  o.model_fingerprint.clear();
  EXPECT_THAT(MakePattern(*engine_, kSamples, po, profile, o),
              StatusIs(absl::StatusCode::kInvalidArgument, "model_fingerprint is empty"));
  EXPECT_THAT(MakePattern(*engine_, {kSamples[0]}, po, profile, Options()),
              StatusIs(absl::StatusCode::kInvalidArgument, "2 embeddings for 1 samples"));
  TaskProfile ragged = profile;
  ragged.scores[2].pop_back();
  EXPECT_THAT(
      MakePattern(*engine_, kSamples, po, ragged, Options()),
      StatusIs(absl::StatusCode::kInvalidArgument, "layer 2 has 15 scores for 16 routed experts"));
  TaskProfile empty = profile;
  empty.scores.clear();
  EXPECT_THAT(MakePattern(*engine_, kSamples, po, empty, Options()),
              StatusIs(absl::StatusCode::kInvalidArgument, "no scores"));
}

TEST_F(PatternTest, ScoresReadBackAsSelectTakesThem) {
  store::Pattern p;
  p.task_name = "t";
  p.layers = {{3, {0.5f, 0.25f}}, {1, {1.0f, 2.0f}}};
  ASSERT_OK_AND_ASSIGN(const auto scores, PatternScores(p));
  EXPECT_EQ(scores, (std::map<int64_t, std::vector<double>>{{1, {1.0, 2.0}}, {3, {0.5, 0.25}}}));
  ASSERT_OK_AND_ASSIGN(const Selection sel, Select(scores, *Budget::Parse("1/1"), 10, 1));
  EXPECT_EQ(sel.keep.layers.at(1), std::vector<int64_t>{1});
  EXPECT_EQ(sel.keep.layers.at(3), std::vector<int64_t>{0});

  p.layers.push_back({1, {3.0f, 4.0f}});
  EXPECT_THAT(PatternScores(p), StatusIs(absl::StatusCode::kInvalidArgument,
                                         "pattern of task \"t\": layer 1 is listed twice"));
  p.layers.clear();
  EXPECT_THAT(PatternScores(p), StatusIs(absl::StatusCode::kInvalidArgument, "no layer scores"));
}

TEST_F(PatternTest, ScoresMustFitTheModel) {
  const checkpoint::ModelConfig& config = engine_->config();
  store::Pattern p;
  p.task_name = "t";
  p.layers = {{0, std::vector<float>(16, 1.0f)}, {1, std::vector<float>(3, 1.0f)}};
  EXPECT_THAT(PatternScores(p, config),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "pattern of task \"t\": layer 1 with 3 scores does not fit the model (16 "
                       "experts per MoE layer)"));
  p.layers = {{7, std::vector<float>(16, 1.0f)}};  // the model has 4 layers
  EXPECT_THAT(PatternScores(p, config),
              StatusIs(absl::StatusCode::kInvalidArgument, "layer 7 with 16 scores"));
  p.layers = {{0, std::vector<float>(16, 0.5f)}, {2, std::vector<float>(16, 0.25f)}};
  ASSERT_OK_AND_ASSIGN(const auto scores, PatternScores(p, config));
  EXPECT_EQ(scores.at(2), std::vector<double>(16, 0.25));
}

}  // namespace
}  // namespace premoe::profiler
