// The testbed trainer, evaluation harness and specialisation report.
#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "premoe/model/engine.h"
#include "premoe/testbed/eval.h"
#include "premoe/testbed/specialisation.h"
#include "premoe/testbed/trainer.h"
#include "premoe/tokenizer/tokenizer.h"
#include "tests/testutil/testutil.h"

namespace premoe::testbed {
namespace {

using ::premoe::testing::StatusIs;

TrainOptions Tiny(const std::string& out) {
  TrainOptions o;
  o.out_dir = out;
  o.steps = 30;
  o.batch_size = 8;
  o.warmup_steps = 5;
  o.progress_every = 5;
  o.shape.hidden = 32;
  o.shape.layers = 2;
  o.shape.experts = 4;
  o.shape.top_k = 2;
  o.shape.expert_intermediate = 16;
  return o;
}

TEST(TrainerTest, DeterministicFromTheSeedAndLearns) {
  premoe::testing::TempDir a, b, c;
  ASSERT_OK_AND_ASSIGN(TrainReport ra, Train(Tiny(a.path())));
  ASSERT_OK_AND_ASSIGN(TrainReport rb, Train(Tiny(b.path())));
  TrainOptions other = Tiny(c.path());
  other.seed = 2;
  ASSERT_OK(Train(other).status());
  const std::string wa = premoe::testing::ReadFileOrDie(a.Join("model.safetensors"));
  EXPECT_EQ(wa, premoe::testing::ReadFileOrDie(b.Join("model.safetensors")));
  EXPECT_NE(wa, premoe::testing::ReadFileOrDie(c.Join("model.safetensors")));
  EXPECT_EQ(ra.loss_curve, rb.loss_curve);
  // From uniform over 258 ids (ln 258 = 5.55) the loss must fall.
  ASSERT_EQ(ra.loss_curve.size(), 6u);
  EXPECT_GT(ra.loss_curve.front().second, 4.5);
  EXPECT_LT(ra.loss_curve.back().second, ra.loss_curve.front().second - 1.0);

  // The manifest records how the model was made.
  const nlohmann::json m =
      nlohmann::json::parse(premoe::testing::ReadFileOrDie(a.Join("train_manifest.json")));
  EXPECT_EQ(m["seed"], 1);
  EXPECT_EQ(m["steps"], 30);
  EXPECT_EQ(m["loss_curve"].size(), 6u);
  EXPECT_EQ(m["data"].size(), AllTasks().size());
  EXPECT_EQ(m["shape"]["experts"], 4);

  // What was written is a model the engine serves, with the trained weights.
  ASSERT_OK_AND_ASSIGN(auto engine, model::Engine::Open(a.path(), {.dtype = "fp32"}));
  EXPECT_EQ(engine->config().num_routed_experts, 4);
  ASSERT_OK_AND_ASSIGN(auto tokenizer, tokenizer::Tokenizer::FromFile(a.Join("tokenizer.json")));
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids, tokenizer->Encode("ab", true));
  EXPECT_EQ(ids, (std::vector<int32_t>{kBosId, 'a', 'b'}));
}

// DeepSeek-V3's balancing: no gradient reaches the router biases, yet they
// move every step, by exactly the update rate, against each expert's load.
TEST(TrainerTest, DeepseekRouterBiasesMoveAgainstTheLoad) {
  premoe::testing::TempDir dir;
  TrainOptions o = Tiny(dir.path());
  o.shape.architecture = "deepseek_v3";
  o.shape.layers = 3;
  o.shape.dense_layers = 1;
  o.shape.experts = 8;
  o.shape.top_k = 2;
  o.shape.groups = 4;
  o.shape.topk_groups = 2;
  o.shape.q_lora_rank = 16;
  o.shape.kv_lora_rank = 16;
  o.shape.qk_nope_head_dim = 8;
  o.shape.qk_rope_head_dim = 4;
  o.shape.v_head_dim = 8;
  o.bias_update_rate = 0.01;
  o.steps = 1;
  o.lr = 1e-30;  // the weights stay put: only the biases move
  // One step, then the loads of that step recomputed from the engine alone.
  ASSERT_OK(Train(o).status());
  ASSERT_OK_AND_ASSIGN(auto engine, model::Engine::Open(dir.path(), {.dtype = "fp32"}));
  EXPECT_EQ(engine->config().num_routed_experts, 8);
  const auto biases = engine->RouterBiases();
  ASSERT_EQ(biases.size(), 2u);  // layers 1 and 2; layer 0 is dense
  for (const auto& [layer, bias] : biases) {
    EXPECT_TRUE(layer == 1 || layer == 2) << layer;
    // Every entry moved by exactly +-rate or 0 (an expert at the mean load).
    const at::Tensor moved = bias / o.bias_update_rate;
    EXPECT_TRUE(at::allclose(moved, moved.round(), 0, 1e-4)) << bias;
    EXPECT_LE(moved.abs().max().item<double>(), 1.0 + 1e-4);
    EXPECT_GT(moved.abs().sum().item<double>(), 0.0) << "layer " << layer << " did not move";
    // Loads straddle their mean: some biases went up, some down.
    EXPECT_GT(moved.max().item<double>(), 0.5);
    EXPECT_LT(moved.min().item<double>(), -0.5);
  }
  const nlohmann::json m =
      nlohmann::json::parse(premoe::testing::ReadFileOrDie(dir.Join("train_manifest.json")));
  EXPECT_EQ(m["shape"]["architecture"], "deepseek_v3");
  EXPECT_EQ(m["balance"]["bias_update_rate"], 0.01);
}

TEST(TrainerTest, BadOptionsNameTheField) {
  TrainOptions o = Tiny("/tmp/unused");
  o.steps = 0;
  EXPECT_THAT(Train(o).status(), StatusIs(absl::StatusCode::kInvalidArgument, "steps"));
  o = Tiny("");
  EXPECT_THAT(Train(o).status(), StatusIs(absl::StatusCode::kInvalidArgument, "out_dir"));
  o = Tiny("/tmp/unused");
  o.shape.top_k = 5;
  EXPECT_THAT(Train(o).status(), StatusIs(absl::StatusCode::kInvalidArgument, "top_k"));
  o = Tiny("/tmp/unused");
  o.shape.architecture = "mixtral";
  EXPECT_THAT(Train(o).status(), StatusIs(absl::StatusCode::kInvalidArgument, "mixtral"));
  o = Tiny("/tmp/unused");
  o.shape.architecture = "deepseek_v3";
  o.shape.groups = 3;  // does not divide 4 experts
  EXPECT_THAT(Train(o).status(), StatusIs(absl::StatusCode::kInvalidArgument, "groups"));
  o.shape.groups = 2;
  o.shape.dense_layers = 2;  // no MoE layer left
  EXPECT_THAT(Train(o).status(), StatusIs(absl::StatusCode::kInvalidArgument, "dense_layers"));
}

TEST(SpecialisationTest, RandomJaccardIsTheExactExpectation) {
  // Fix A = {0..7} (by symmetry) and enumerate every 8-subset B of 16.
  double sum = 0;
  int64_t count = 0;
  for (uint32_t mask = 0; mask < (1u << 16); ++mask) {
    if (__builtin_popcount(mask) != 8) continue;
    const int inter = __builtin_popcount(mask & 0xFFu);
    sum += static_cast<double>(inter) / (16 - inter);
    ++count;
  }
  EXPECT_EQ(count, 12870);
  EXPECT_NEAR(RandomSubsetJaccard(16, 8), sum / static_cast<double>(count), 1e-12);
  EXPECT_NEAR(RandomSubsetJaccard(4, 4), 1.0, 1e-12);
}

TEST(EvalTest, RefusesBadOptions) {
  premoe::testing::TempDir dir;
  TrainOptions o = Tiny(dir.path());
  o.steps = 1;
  ASSERT_OK(Train(o).status());
  ASSERT_OK_AND_ASSIGN(auto engine, model::Engine::Open(dir.path(), {.dtype = "fp32"}));
  ASSERT_OK_AND_ASSIGN(auto tokenizer, tokenizer::Tokenizer::FromFile(dir.Join("tokenizer.json")));
  EvalOptions eo;
  eo.split = Split::kTrain;
  eo.samples = 0;
  EXPECT_THAT(Evaluate(*engine, *tokenizer, AllTasks(), eo).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "unbounded"));
  eo = EvalOptions();
  model::KeptExperts keep;
  keep.Set(0, {0});  // fewer than top-k
  eo.mask = &keep;
  EXPECT_THAT(Evaluate(*engine, *tokenizer, AllTasks(), eo).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "top-k"));
}

}  // namespace
}  // namespace premoe::testbed
