// Expert parallelism over c10d Gloo: two CPU ranks (threads here, each with
// its own process group) must give the tokens one rank gives.
#include "premoe/worker/expert_parallel.h"

#include <ATen/ATen.h>

#include <thread>

#include "premoe/testbed/tasks.h"
#include "premoe/tokenizer/tokenizer.h"
#include "tests/testutil/load_expert.h"
#include "tests/testutil/testutil.h"

namespace premoe::worker {
namespace {

using ::premoe::testing::StatusIs;

std::string ModelDir() { return premoe::testing::SourceDir() + "/testbed/model"; }

// Runs fn(rank, group) on `world` threads, each with its own group.
void OnRanks(int world, const std::string& rendezvous,
             const std::function<void(int, C10dExpertParallel&)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      auto group = C10dExpertParallel::Join({rendezvous, r, world});
      ASSERT_TRUE(group.ok()) << group.status();
      fn(r, **group);
    });
  }
  for (auto& t : threads) t.join();
}

TEST(ExpertParallelTest, TwoGlooRanksGiveTheTokensOfOne) {
  ASSERT_OK_AND_ASSIGN(auto engine, model::Engine::Open(ModelDir(), {.dtype = "fp32"}));
  ASSERT_OK_AND_ASSIGN(auto tokenizer,
                       tokenizer::Tokenizer::FromFile(ModelDir() + "/tokenizer.json"));
  std::vector<model::GenerationRequest> requests;
  for (const std::string task : {"add", "reverse", "sort", "caesar"}) {
    ASSERT_OK_AND_ASSIGN(const testbed::Task* t, testbed::FindTask(task));
    ASSERT_OK_AND_ASSIGN(testbed::Sample s, t->Get(testbed::Split::kEval, 0));
    ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids, tokenizer->Encode(s.prompt, true));
    requests.push_back({std::vector<int64_t>(ids.begin(), ids.end()), nullptr});
  }
  model::GenerationOptions go;
  go.max_new_tokens = 16;
  ASSERT_OK_AND_ASSIGN(auto want, engine->Generate(requests, go));

  premoe::testing::TempDir dir;
  std::vector<std::vector<model::GenerationResult>> got(2);
  OnRanks(2, "file://" + dir.Join("rendezvous"), [&](int r, C10dExpertParallel& group) {
    EXPECT_EQ(group.world_size(), 2);
    model::GenerationOptions o = go;
    o.expert_parallel = &group;
    auto results = engine->Generate(requests, o);
    ASSERT_TRUE(results.ok()) << results.status();
    got[r] = *results;
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(got[r].size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(got[r][i].tokens, want[i].tokens) << "rank " << r << " request " << i;
    }
  }
}

// Each rank holds only the experts it owns (an on-demand engine with half the
// experts in its set); the summed outputs are the one-rank model's.
TEST(ExpertParallelTest, RanksHoldingHalfTheExpertsEachMatchTheWholeModel) {
  ASSERT_OK_AND_ASSIGN(auto resident, model::Engine::Open(ModelDir(), {.dtype = "fp32"}));
  ASSERT_OK_AND_ASSIGN(
      auto on_demand,
      model::Engine::Open(ModelDir(), {.dtype = "fp32", .experts_on_demand = true}));
  const checkpoint::ModelConfig& c = resident->config();
  model::KeptExperts all;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    std::vector<int64_t> every;
    for (int64_t e = 0; e < c.num_routed_experts; ++e) every.push_back(e);
    if (c.IsMoeLayer(static_cast<int>(l))) all.Set(l, every);
  }
  const std::vector<std::vector<int64_t>> prompts = {{256, 87, 104, 97, 116}, {256, 50, 43, 50}};
  model::ForwardOptions fo;
  fo.all_logits = true;
  ASSERT_OK_AND_ASSIGN(at::Tensor want, resident->Forward(prompts, nullptr, fo));

  premoe::testing::TempDir dir;
  std::vector<at::Tensor> got(2);
  OnRanks(2, "file://" + dir.Join("rendezvous"), [&](int r, C10dExpertParallel& group) {
    model::ExpertSet mine;
    for (const auto& [layer, experts] : all.layers) {
      for (int64_t e : experts) {
        if (!group.Owns(e)) continue;
        auto w = premoe::testing::LoadExpert(*on_demand, layer, e);
        ASSERT_TRUE(w.ok()) << w.status();
        mine.experts[{layer, e}] = *w;
      }
    }
    EXPECT_EQ(mine.experts.size(), all.layers.size() * c.num_routed_experts / 2);
    model::ForwardOptions o = fo;
    o.experts = &mine;
    o.masks = {&all, &all};
    o.expert_parallel = &group;
    auto logits = on_demand->Forward(prompts, nullptr, o);
    ASSERT_TRUE(logits.ok()) << logits.status();
    got[r] = *logits;
  });
  ASSERT_TRUE(got[0].defined() && got[1].defined());
  EXPECT_TRUE(at::equal(got[0], got[1]));  // every rank holds the same sums
  EXPECT_LT((got[0] - want).abs().max().item<float>(), 1e-4);
}

TEST(ExpertParallelTest, BadOptionsAreRefused) {
  EXPECT_THAT(C10dExpertParallel::Join({"file:///tmp/x", 2, 2}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "not in [0, world_size 2)"));
  EXPECT_THAT(C10dExpertParallel::Join({"udp://x", 0, 1}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "neither file"));
  EXPECT_THAT(C10dExpertParallel::Join({"tcp://localhost", 0, 1}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "tcp://host:port"));
}

}  // namespace
}  // namespace premoe::worker
