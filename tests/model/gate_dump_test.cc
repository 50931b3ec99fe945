// The --dump-router-logits line format, on hand-made router events.
#include "premoe/model/gate_dump.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <limits>
#include <string>

#include "tests/testutil/testutil.h"

namespace premoe::model {
namespace {

using ::premoe::testing::ReadFileOrDie;
using ::premoe::testing::TempDir;

// Two tokens of one sequence through layer `layer` of a 3-expert top-1 model
// whose expert 2 is not loaded.
GateEvent Event(int64_t layer) {
  const float inf = std::numeric_limits<float>::infinity();
  GateEvent e;
  e.layer = layer;
  e.sequence = at::tensor({0, 0}, at::kLong);
  e.position = at::tensor({4, 5}, at::kLong);
  e.gate_logits = at::tensor({1.5f, -0.25f, -inf, 0.1f, 3.0f, -inf}, at::kFloat).reshape({2, 3});
  e.selected_experts = at::tensor({0, 1}, at::kLong).reshape({2, 1});
  // bf16 weights are widened: 1 and 0.5 are exact in both.
  e.routing_weights = at::tensor({1.0f, 0.5f}, at::kFloat).reshape({2, 1}).to(at::kBFloat16);
  return e;
}

TEST(GateDumpTest, OneLineHoldsTheEventWithNullForMissingExperts) {
  EXPECT_EQ(GateEventJson(Event(3), 7),
            "{\"forward\":7,\"layer\":3,\"sequence\":[0,0],\"position\":[4,5],"
            "\"gate_logits\":[[1.5,-0.25,null],[0.1,3,null]],"
            "\"selected_experts\":[[0],[1]],\"routing_weights\":[[1],[0.5]]}\n");
}

TEST(GateDumpTest, ForwardPassesAreCountedFromTheLayerOrder) {
  TempDir dir;
  const std::string path = dir.Join("dump.jsonl");
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  JsonlGateDump dump(f);
  for (int64_t layer : {1, 3, 1, 3, 3}) dump.OnGate(Event(layer));
  ASSERT_OK(dump.status());
  ASSERT_EQ(std::fclose(f), 0);
  EXPECT_EQ(ReadFileOrDie(path), GateEventJson(Event(1), 0) + GateEventJson(Event(3), 0) +
                                     GateEventJson(Event(1), 1) + GateEventJson(Event(3), 1) +
                                     GateEventJson(Event(3), 2));
}

TEST(GateDumpTest, AFailedWriteIsDataLoss) {
  std::FILE* f = std::fopen("/dev/full", "wb");
  if (f == nullptr) GTEST_SKIP() << "no /dev/full";
  std::setvbuf(f, nullptr, _IONBF, 0);  // fail on the write, not at close
  JsonlGateDump dump(f);
  dump.OnGate(Event(0));
  EXPECT_THAT(dump.status(), premoe::testing::StatusIs(absl::StatusCode::kDataLoss, "layer 0"));
  std::fclose(f);
}

TEST(GateDumpTest, ATensorLibtorchRefusesIsAnErrorNotAnException) {
  JsonlGateDump dump(stdout);
  GateEvent e = Event(0);
  e.sequence = at::Tensor();  // undefined
  dump.OnGate(e);
  EXPECT_THAT(dump.status(), premoe::testing::StatusIs(absl::StatusCode::kInternal, "layer 0"));
}

}  // namespace
}  // namespace premoe::model
