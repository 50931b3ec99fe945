// EmbedPrompt against the profiler, on the committed testbed model: a query's
// match embedding must be exactly what ProfileTask stores for the same prompt,
// or a pattern's own calibration prompt would not find it first.
#include "premoe/profiler/probe.h"

#include <cmath>
#include <memory>
#include <string>

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
    ASSERT_OK_AND_ASSIGN(tokenizer_, model::Tokenizer::FromFile(dir + "/tokenizer.json"));
  }
  std::unique_ptr<model::Engine> engine_;
  std::unique_ptr<model::Tokenizer> tokenizer_;
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

TEST_F(EmbedPromptTest, PromptOverTheContextIsRefused) {
  // The testbed tokenizer is byte-level: 300 bytes plus BOS > 256 positions.
  EXPECT_THAT(EmbedPrompt(*engine_, *tokenizer_, std::string(300, 'a'), MetricOptions()),
              StatusIs(absl::StatusCode::kInvalidArgument, "exceed the context of 256"));
}

}  // namespace
}  // namespace premoe::profiler
