// EmbedPrompt against the profiler, on the committed testbed model: a query's
// match embedding must be exactly what ProfileTask stores for the same prompt,
// or a pattern's own calibration prompt would not find it first.
#include "premoe/profiler/probe.h"

#include <cmath>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "premoe/profiler/calibration.h"
#include "tests/testutil/testutil.h"

namespace premoe::profiler {
namespace {

using ::premoe::testing::StatusIs;

class EmbedPromptTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = premoe::testing::SourceDir() + "/testbed/model";
    ASSERT_OK_AND_ASSIGN(engine_, model::Engine::Open(dir, {.dtype = "fp32"}));
    ASSERT_OK_AND_ASSIGN(tokenizer_, tokenizer::Tokenizer::FromFile(dir + "/tokenizer.json"));
  }
  std::unique_ptr<model::Engine> engine_;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer_;
};

TEST_F(EmbedPromptTest, EqualsTheEmbeddingOfAOneSampleProfile) {
  for (const char* spec : {"peu", "tcess", "frequency", "act_logits:k=4,r=0.2", "reap"}) {
    ASSERT_OK_AND_ASSIGN(MetricOptions metric, MetricOptions::Parse(spec));
    for (const char* prompt : {"What is 12 + 30?", "Reverse: planet"}) {
      SCOPED_TRACE(std::string(spec) + " / " + prompt);
      ProfileOptions po;
      po.metric = metric;
      // A one-sample profile embeds the prompt alone (its own batch), as
      // EmbedPrompt does: the same forward, so the same floats, bit for bit.
      ASSERT_OK_AND_ASSIGN(TaskProfile profile,
                           ProfileTask(*engine_, *tokenizer_, {{prompt, "42"}}, po));
      ASSERT_EQ(profile.embeddings.size(), 1u);
      ASSERT_OK_AND_ASSIGN(std::vector<float> query,
                           EmbedPrompt(*engine_, *tokenizer_, prompt, metric));
      EXPECT_EQ(query, profile.embeddings[0]);
      ASSERT_EQ(query.size(), static_cast<std::size_t>(engine_->config().num_routed_experts));
      double norm = 0;
      for (float v : query) norm += static_cast<double>(v) * v;
      EXPECT_NEAR(std::sqrt(norm), 1.0, 1e-6);
    }
  }
}

TEST_F(EmbedPromptTest, EmbeddingsOverSeveralLayersMatchTheProfileAndTheProbe) {
  const std::string prompt = "Reverse: planet";
  for (int64_t layers : {2, 4}) {
    SCOPED_TRACE(absl::StrCat(layers, " layers"));
    ProfileOptions po;
    po.embedding_layers = layers;
    ASSERT_OK_AND_ASSIGN(TaskProfile profile,
                         ProfileTask(*engine_, *tokenizer_, {{prompt, "tenalp"}}, po));
    ASSERT_OK_AND_ASSIGN(std::vector<float> whole,
                         EmbedPrompt(*engine_, *tokenizer_, prompt, MetricOptions(), layers));
    EXPECT_EQ(whole, profile.embeddings[0]);
    const int64_t n = engine_->config().num_routed_experts;
    ASSERT_EQ(whole.size(), static_cast<size_t>(layers * n));
    // Each layer's part is the one-layer embedding of that layer, scaled so
    // the whole has norm 1; the first part is the classic embedding's.
    ASSERT_OK_AND_ASSIGN(std::vector<float> first,
                         EmbedPrompt(*engine_, *tokenizer_, prompt, MetricOptions(), 1));
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(whole[i], first[i] / std::sqrt(static_cast<double>(layers)), 1e-7);
    }
    double norm = 0;
    for (float v : whole) norm += static_cast<double>(v) * v;
    EXPECT_NEAR(std::sqrt(norm), 1.0, 1e-6);
    // A probe holding the model up to the last of those gates embeds alike.
    model::EngineOptions eo;
    eo.dtype = "fp32";
    eo.probe_moe_layers = layers;
    ASSERT_OK_AND_ASSIGN(auto probe,
                         model::Engine::Open(premoe::testing::SourceDir() + "/testbed/model", eo));
    ASSERT_OK_AND_ASSIGN(std::vector<float> probed,
                         EmbedPrompt(*probe, *tokenizer_, prompt, MetricOptions(), layers));
    EXPECT_EQ(probed, whole);
  }
  EXPECT_THAT(EmbedPrompt(*engine_, *tokenizer_, prompt, MetricOptions(), 5),
              StatusIs(absl::StatusCode::kInvalidArgument, "the model has 4"));
  ProfileOptions po;
  po.embedding_layers = 0;
  EXPECT_THAT(ProfileTask(*engine_, *tokenizer_, {{prompt, "x"}}, po),
              StatusIs(absl::StatusCode::kInvalidArgument, "MoE layers"));
}

TEST_F(EmbedPromptTest, PromptOverTheContextIsRefused) {
  // The testbed tokenizer is byte-level: 300 bytes plus BOS > 256 positions.
  EXPECT_THAT(EmbedPrompt(*engine_, *tokenizer_, std::string(300, 'a'), MetricOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument, "exceed the context of 256"));
}

}  // namespace
}  // namespace premoe::profiler
