// Tests of premoe/checkpoint/inspect.h.
//
// Expected numbers never come from the checkpoint headers that SummarizeModel
// reads: tests/testutil/inspect_reference.py builds the tiny models with
// transformers, saves them, and counts parameters and bytes from the
// nn.Module tree; hand-made checkpoints are counted by hand below.
#include "premoe/checkpoint/inspect.h"

#include <sys/resource.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "premoe/checkpoint/config.h"
#include "premoe/checkpoint/safetensors.h"
#include "premoe/common/status.h"
#include "tests/testutil/testutil.h"

namespace premoe::checkpoint {
namespace {

using ::nlohmann::json;
using ::premoe::testing::ReadFileOrDie;
using ::premoe::testing::RunPython;
using ::premoe::testing::StatusIs;
using ::premoe::testing::TempDir;
using ::premoe::testing::WriteStringToFile;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<int64_t> Ints(const json& j) { return j.get<std::vector<int64_t>>(); }

void ExpectTally(const WeightTally& got, const json& want, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(got.total, want.at("total").get<int64_t>());
  EXPECT_EQ(got.routed_experts, want.at("routed_experts").get<int64_t>());
  EXPECT_EQ(got.non_expert, want.at("non_expert").get<int64_t>());
  EXPECT_EQ(got.embeddings, want.at("embeddings").get<int64_t>());
  EXPECT_EQ(got.attention, want.at("attention").get<int64_t>());
  EXPECT_EQ(got.norms, want.at("norms").get<int64_t>());
  EXPECT_EQ(got.dense_mlp, want.at("dense_mlp").get<int64_t>());
  EXPECT_EQ(got.shared_experts, want.at("shared_experts").get<int64_t>());
  EXPECT_EQ(got.routers, want.at("routers").get<int64_t>());
  EXPECT_EQ(got.other, want.at("other").get<int64_t>());
}

std::vector<std::string> Budgets(const ModelSummary& s) {
  std::vector<std::string> out;
  for (const BudgetMemory& b : s.budgets) out.push_back(b.budget.ToString());
  return out;
}

// ---- Tiny models saved by transformers ------------------------------------

class InspectReferenceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    absl::StatusOr<std::string> out =
        RunPython("tests/testutil/inspect_reference.py", {dir_->path()});
    if (!out.ok()) {
      error_ = new std::string(out.status().ToString());
      return;
    }
    cases_ = new json(json::parse(*out));
  }
  static void TearDownTestSuite() {
    delete cases_;
    delete error_;
    delete dir_;
    cases_ = nullptr;
    error_ = nullptr;
    dir_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(error_, nullptr) << *error_; }

  static const json& Cases() { return *cases_; }
  static const json& Case(const std::string& name) {
    for (const json& c : *cases_) {
      if (c["name"] == name) return c;
    }
    ADD_FAILURE() << "no case " << name;
    static const json kNone = json::object();
    return kNone;
  }

  // non_expert + M * bytes_per_expert over the MoE layers, from the module.
  static int64_t ExpectedWeightBytes(const json& expect, int64_t kept) {
    int64_t bytes = expect["bytes"]["non_expert"].get<int64_t>();
    for (const json& layer : expect["expert_layers"]) {
      bytes += kept * layer["bytes_per_expert"].get<int64_t>();
    }
    return bytes;
  }

 private:
  static TempDir* dir_;
  static json* cases_;
  static std::string* error_;
};
TempDir* InspectReferenceTest::dir_ = nullptr;
json* InspectReferenceTest::cases_ = nullptr;
std::string* InspectReferenceTest::error_ = nullptr;

TEST_F(InspectReferenceTest, CoversEveryArchitectureInBothLayoutsAndShardedCheckpoints) {
  std::set<std::pair<std::string, bool>> arch_layouts;
  int sharded = 0;
  for (const json& c : Cases()) {
    const std::string name = c["name"];
    arch_layouts.insert({c["expect"]["architecture"], name.find("fused") != std::string::npos});
    if (c["checkpoint"]["sharded"].get<bool>()) {
      ++sharded;
      EXPECT_GT(c["checkpoint"]["files"].size(), 1u) << name;
    }
  }
  EXPECT_EQ(arch_layouts.size(), 12u);
  EXPECT_GE(sharded, 2);
}

TEST_F(InspectReferenceTest, CountsMatchTheTransformersModules) {
  const std::map<std::string, std::string> kDtypeNames = {
      {"float32", "F32"}, {"bfloat16", "BF16"}, {"float16", "F16"}};
  for (const json& c : Cases()) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    const json& e = c["expect"];
    ASSERT_OK_AND_ASSIGN(const ModelSummary s, SummarizeModel(c["path"].get<std::string>()));

    EXPECT_EQ(s.architecture, e["architecture"].get<std::string>());
    EXPECT_EQ(s.num_layers, e["num_layers"].get<int64_t>());
    EXPECT_EQ(s.moe_layers, Ints(e["moe_layers"]));
    EXPECT_EQ(s.dense_layers, Ints(e["dense_layers"]));
    EXPECT_TRUE(s.mtp_layers.empty());
    EXPECT_EQ(s.num_routed_experts, e["num_routed_experts"].get<int64_t>());
    EXPECT_EQ(s.top_k, e["top_k"].get<int64_t>());
    EXPECT_EQ(s.num_shared_experts, e["num_shared_experts"].get<int64_t>());
    EXPECT_EQ(s.shared_expert_intermediate_size,
              e["shared_expert_intermediate_size"].get<int64_t>());
    EXPECT_EQ(s.hidden_size, e["hidden_size"].get<int64_t>());
    EXPECT_EQ(s.vocab_size, e["vocab_size"].get<int64_t>());

    ExpectTally(s.params, e["params"], "params");
    ExpectTally(s.bytes, e["bytes"], "bytes");
    EXPECT_EQ(s.params.mtp, 0);
    EXPECT_EQ(s.bytes.mtp, 0);
    // The checkpoint holds the state dict: the parameters plus persistent
    // buffers, which only deepseek_v3 has (its routers' score-correction bias).
    const int64_t buffers = s.architecture == "deepseek_v3"
                                ? static_cast<int64_t>(s.moe_layers.size()) * s.num_routed_experts
                                : 0;
    EXPECT_EQ(s.params.total, e["num_parameters"].get<int64_t>() + buffers);

    ASSERT_EQ(s.expert_layers.size(), e["expert_layers"].size());
    const ExpertLayout layout =
        name.find("fused") != std::string::npos ? ExpertLayout::kFused : ExpertLayout::kPerExpert;
    for (size_t k = 0; k < s.expert_layers.size(); ++k) {
      const json& want = e["expert_layers"][k];
      const MoeLayerSummary& got = s.expert_layers[k];
      EXPECT_EQ(got.layer, want["layer"].get<int64_t>());
      EXPECT_EQ(got.layout, layout);
      EXPECT_EQ(got.num_experts, want["num_experts"].get<int64_t>());
      EXPECT_EQ(got.params_per_expert, want["params_per_expert"].get<int64_t>());
      EXPECT_EQ(got.bytes_per_expert, want["bytes_per_expert"].get<int64_t>());
    }

    EXPECT_EQ(s.sharded, c["checkpoint"]["sharded"].get<bool>());
    EXPECT_EQ(s.files.size(), c["checkpoint"]["files"].size());
    EXPECT_EQ(s.num_tensors, c["checkpoint"]["num_tensors"].get<int64_t>());
    EXPECT_EQ(s.bytes_by_dtype,
              (std::map<std::string, int64_t>{
                  {kDtypeNames.at(c["dtype"]), e["bytes"]["total"].get<int64_t>()}}));
    EXPECT_EQ(s.full_weight_bytes, e["bytes"]["total"].get<int64_t>());
  }
}

TEST_F(InspectReferenceTest, DefaultBudgetsHalveTheExpertsDownToTopK) {
  const std::map<std::string, std::vector<std::string>> kExpected = {
      {"qwen3_moe_per_expert", {"2/4", "2/2"}},
      {"qwen3_moe_dense_layers_tied_bf16", {"2/8", "2/4", "2/2"}},
      {"qwen2_moe_sharded_bf16", {"2/8", "2/4", "2/2"}},
      {"mixtral_fused_sharded_fp16", {"2/6", "2/3"}},  // 6 / 4 = 1 < top-2
      {"deepseek_v3_wide_bf16", {"4/16", "4/8", "4/4"}},
  };
  for (const auto& [name, budgets] : kExpected) {
    SCOPED_TRACE(name);
    const json& c = Case(name);
    const json& e = c["expect"];
    ASSERT_OK_AND_ASSIGN(const ModelSummary s, SummarizeModel(c["path"].get<std::string>()));
    EXPECT_EQ(Budgets(s), budgets);
    const double full = static_cast<double>(e["bytes"]["total"].get<int64_t>());
    for (const BudgetMemory& b : s.budgets) {
      SCOPED_TRACE(b.budget.ToString());
      const int64_t want = ExpectedWeightBytes(e, b.budget.kept_experts);
      EXPECT_EQ(b.weight_bytes, want);
      EXPECT_DOUBLE_EQ(b.kept_fraction, static_cast<double>(b.budget.kept_experts) /
                                            e["num_routed_experts"].get<double>());
      EXPECT_DOUBLE_EQ(b.fraction_of_full, static_cast<double>(want) / full);
    }
    ASSERT_FALSE(s.budgets.empty());
    EXPECT_EQ(s.budgets.front().weight_bytes, e["bytes"]["total"].get<int64_t>());
    EXPECT_DOUBLE_EQ(s.budgets.front().fraction_of_full, 1.0);
  }
}

TEST_F(InspectReferenceTest, ExplicitBudgetsKeepTheirOrderAndMayLowerTopK) {
  const json& c = Case("deepseek_v3_wide_bf16");  // 16 experts top-4, MoE layers 2 and 3
  ASSERT_OK_AND_ASSIGN(
      const ModelSummary s,
      SummarizeModel(c["path"].get<std::string>(), {.budgets = {"2/8", "4/16", "1/1", "04/5"}}));
  EXPECT_THAT(Budgets(s), ElementsAre("2/8", "4/16", "1/1", "4/5"));
  // 3,072 bytes per bf16 expert (3 x 16 x 32 x 2) in each of the 2 MoE layers.
  const int64_t non_expert = c["expect"]["bytes"]["non_expert"].get<int64_t>();
  ASSERT_EQ(s.expert_layers.size(), 2u);
  EXPECT_EQ(s.expert_layers[0].bytes_per_expert, 3 * 16 * 32 * 2);
  EXPECT_EQ(s.budgets[0].weight_bytes, non_expert + 2 * 8 * 3072);
  EXPECT_EQ(s.budgets[1].weight_bytes, non_expert + 2 * 16 * 3072);
  EXPECT_EQ(s.budgets[2].weight_bytes, non_expert + 2 * 1 * 3072);
  EXPECT_EQ(s.budgets[3].weight_bytes, non_expert + 2 * 5 * 3072);
  EXPECT_DOUBLE_EQ(s.budgets[3].kept_fraction, 5.0 / 16.0);
  EXPECT_EQ(s.budgets[1].weight_bytes, s.full_weight_bytes);
}

// "N%" is the model's top-k over ceil(N% of the experts), never fewer than
// the top-k: the same count Select keeps in every layer.
TEST_F(InspectReferenceTest, PercentBudgetsResolveToKOverM) {
  const json& c = Case("deepseek_v3_wide_bf16");  // 16 experts top-4, 2 MoE layers
  ASSERT_OK_AND_ASSIGN(
      const ModelSummary s,
      SummarizeModel(c["path"].get<std::string>(), {.budgets = {"50%", "10%", "30%", "2/8"}}));
  EXPECT_THAT(Budgets(s), ElementsAre("4/8", "4/4", "4/5", "2/8"));
  ASSERT_EQ(s.budgets.size(), 4u);
  EXPECT_EQ(s.budgets[0].asked, "50%");
  EXPECT_EQ(s.budgets[1].asked, "10%");  // 1.6 experts, raised to the top-k
  EXPECT_EQ(s.budgets[2].asked, "30%");  // 4.8 experts, rounded up
  EXPECT_EQ(s.budgets[3].asked, "2/8");
  const int64_t non_expert = c["expect"]["bytes"]["non_expert"].get<int64_t>();
  EXPECT_EQ(s.budgets[0].weight_bytes, non_expert + 2 * 8 * 3072);
  EXPECT_DOUBLE_EQ(s.budgets[0].kept_fraction, 0.5);
  EXPECT_EQ(s.budgets[1].weight_bytes, non_expert + 2 * 4 * 3072);
  EXPECT_EQ(s.budgets[2].weight_bytes, non_expert + 2 * 5 * 3072);
  EXPECT_THAT(FormatModelSummary(s), HasSubstr("  50% (4/8)"));
  const json j = json::parse(ModelSummaryToJson(s));
  EXPECT_EQ(j["budgets"][0]["budget"], "4/8");
  EXPECT_EQ(j["budgets"][0]["asked"], "50%");
  EXPECT_EQ(j["budgets"][3]["asked"], "2/8");
}

TEST_F(InspectReferenceTest, BudgetErrorsNameTheBudget) {
  const std::string path = Case("qwen3_moe_per_expert")["path"];  // 4 experts, top-2
  const std::vector<std::pair<std::string, std::string>> kCases = {
      // Syntax.
      {"", "want K/M"},
      {"2", "want K/M"},
      {"2/", "want K/M"},
      {"/4", "want K/M"},
      {"2x4", "want K/M"},
      {"2/4/1", "want K/M"},
      {" 2/4", "want K/M"},
      {"2/4 ", "want K/M"},
      {"-1/4", "want K/M"},
      {"+2/4", "want K/M"},
      {"2.0/4", "want K/M"},
      {"1234567890/4", "want K/M"},
      // Against the model.
      {"0/4", "top-k K must be at least 1"},
      {"0/0", "top-k K must be at least 1"},
      {"3/4", "K = 3 exceeds the model's top-k 2"},
      {"2/5", "M = 5 kept experts exceeds the 4 routed experts"},
      {"2/1", "M = 1 kept experts is fewer than the top-k K = 2"},
  };
  for (const auto& [budget, why] : kCases) {
    SCOPED_TRACE(budget);
    const absl::StatusOr<ModelSummary> s = SummarizeModel(path, {.budgets = {"2/2", budget}});
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, why));
    const absl::StatusOr<Budget> parsed = Budget::Parse(budget);
    const std::string named = parsed.ok() ? absl::StrCat("budget \"", parsed->ToString(), "\"")
                                          : absl::StrCat("budget \"", budget, "\"");
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, named));
  }
}

TEST_F(InspectReferenceTest, HumanReportShowsStructureSizesAndBudgets) {
  const json& c = Case("deepseek_v3_wide_bf16");
  ASSERT_OK_AND_ASSIGN(const ModelSummary s, SummarizeModel(c["path"].get<std::string>()));
  const std::string text = FormatModelSummary(s);
  EXPECT_THAT(text, HasSubstr("architecture  deepseek_v3: 4 layers (2 MoE)"));
  EXPECT_THAT(text, HasSubstr("layers        4: 2 MoE (2-3), 2 dense (0-1)\n"));
  EXPECT_THAT(text, HasSubstr("16 routed per MoE layer (width 16), top-4, 2 shared"));
  const std::string total = absl::StrCat(c["expect"]["params"]["total"].get<int64_t>());
  // 88544 -> "88,544" next to "0.09M".
  EXPECT_THAT(text, HasSubstr(absl::StrCat(total.substr(0, 2), ",", total.substr(2))));
  EXPECT_THAT(text, HasSubstr("0.09M"));
  EXPECT_THAT(text, HasSubstr("  4/8            50.0%"));
  EXPECT_EQ(text.back(), '\n');
}

// The CLI prints exactly what the library formats; errors go to stderr with
// exit code 1. Needs the premoe binary (built by the same build).
TEST_F(InspectReferenceTest, CommandLinePrintsTheLibrarysJson) {
  const char* binary_dir = std::getenv("PREMOE_BINARY_DIR");
  const std::string premoe =
      absl::StrCat(binary_dir != nullptr ? binary_dir : "build", "/cli/premoe");
  if (std::system(absl::StrCat("test -x '", premoe, "'").c_str()) != 0) {
    GTEST_SKIP() << premoe << " is not built";
  }
  const std::string path = Case("mixtral_fused_sharded_fp16")["path"];
  TempDir out;
  const std::string command =
      absl::StrCat("'", premoe, "' inspect --model '", path, "' --json --budget 2/6 1/3 > '",
                   out.Join("stdout"), "' 2> '", out.Join("stderr"), "'");
  int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << ReadFileOrDie(out.Join("stderr"));
  ASSERT_OK_AND_ASSIGN(const ModelSummary s, SummarizeModel(path, {.budgets = {"2/6", "1/3"}}));
  EXPECT_EQ(ReadFileOrDie(out.Join("stdout")), ModelSummaryToJson(s));

  status = std::system(absl::StrCat("'", premoe, "' inspect --model '", path, "' --budget 3/6 > '",
                                    out.Join("stdout"), "' 2> '", out.Join("stderr"), "'")
                           .c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_EQ(ReadFileOrDie(out.Join("stdout")), "");
  EXPECT_THAT(ReadFileOrDie(out.Join("stderr")), HasSubstr("premoe inspect: INVALID_ARGUMENT: "));
  EXPECT_THAT(ReadFileOrDie(out.Join("stderr")), HasSubstr("budget \"3/6\""));
}

// ---- Budgets alone -----------------------------------------------------------

TEST(ExpertBudgetTest, SyntaxIsCheckedBeforeAnyFileIsOpened) {
  EXPECT_THAT(SummarizeModel("/nonexistent/model", {.budgets = {"8"}}),
              StatusIs(absl::StatusCode::kInvalidArgument, "budget \"8\": want K/M"));
  EXPECT_THAT(SummarizeModel("/nonexistent/model", {.budgets = {"8/128"}}),
              StatusIs(absl::StatusCode::kNotFound, "/nonexistent/model"));
  // A budget whose per-layer counts need a pattern's scores is refused as early.
  EXPECT_THAT(SummarizeModel("/nonexistent/model", {.budgets = {"coverage:0.9"}}),
              StatusIs(absl::StatusCode::kInvalidArgument, "budget \"coverage:0.9\": inspect"));
  EXPECT_THAT(SummarizeModel("/nonexistent/model", {.budgets = {"bytes:2GiB"}}),
              StatusIs(absl::StatusCode::kInvalidArgument, "pattern's scores"));
}

// ---- Hand-made checkpoints -----------------------------------------------------

// A checkpoint described tensor by tensor (zeros), written with SafetensorsWriter.
class HandCheckpoint {
 public:
  void Put(const std::string& name, DType dtype, std::vector<int64_t> shape) {
    tensors_[name] = {dtype, std::move(shape)};
  }
  // A block-wise FP8 weight and its F32 [1, 1] scale (every dim <= 128 here).
  void PutFp8(const std::string& name, std::vector<int64_t> shape) {
    Put(name, DType::kF8E4M3, std::move(shape));
    Put(name + "_scale_inv", DType::kF32, {1, 1});
  }
  void Erase(const std::string& name) { tensors_.erase(name); }
  void EraseIf(const std::function<bool(const std::string&)>& pred) {
    std::erase_if(tensors_, [&](const auto& entry) { return pred(entry.first); });
  }

  absl::Status Write(const std::string& dir, const std::string& config) const {
    SafetensorsWriter writer;
    for (const auto& [name, tensor] : tensors_) {
      int64_t numel = 1;
      for (int64_t d : tensor.second) numel *= d;
      const std::vector<uint8_t> zeros(static_cast<size_t>(numel * DTypeSize(tensor.first)));
      RETURN_IF_ERROR(writer.Add(name, tensor.first, tensor.second, zeros));
    }
    WriteStringToFile(dir + "/config.json", config);
    return writer.Write(dir + "/model.safetensors");
  }

 private:
  std::map<std::string, std::pair<DType, std::vector<int64_t>>> tensors_;
};

// qwen3_moe, 2 layers, hidden 8, 2 heads of 4 (1 kv head), 4 experts of width
// 4, top-2, vocab 16. `extra` is spliced into the JSON object.
std::string QwenConfig(const std::string& extra = "", int num_layers = 2) {
  return absl::StrCat(
      R"({"model_type": "qwen3_moe", "vocab_size": 16, "hidden_size": 8,
          "intermediate_size": 12, "num_attention_heads": 2, "num_key_value_heads": 1,
          "head_dim": 4, "moe_intermediate_size": 4, "num_experts": 4,
          "num_experts_per_tok": 2, "num_hidden_layers": )",
      num_layers, extra, "}");
}

HandCheckpoint TinyQwen(bool fused) {
  HandCheckpoint c;
  const DType f32 = DType::kF32;
  c.Put("model.embed_tokens.weight", f32, {16, 8});
  c.Put("lm_head.weight", f32, {16, 8});
  c.Put("model.norm.weight", f32, {8});
  for (int l = 0; l < 2; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    c.Put(p + "self_attn.q_proj.weight", f32, {8, 8});
    c.Put(p + "self_attn.k_proj.weight", f32, {4, 8});
    c.Put(p + "self_attn.v_proj.weight", f32, {4, 8});
    c.Put(p + "self_attn.o_proj.weight", f32, {8, 8});
    c.Put(p + "self_attn.q_norm.weight", f32, {4});
    c.Put(p + "self_attn.k_norm.weight", f32, {4});
    c.Put(p + "input_layernorm.weight", f32, {8});
    c.Put(p + "post_attention_layernorm.weight", f32, {8});
    c.Put(p + "mlp.gate.weight", f32, {4, 8});
    if (fused) {
      c.Put(p + "mlp.experts.gate_up_proj", f32, {4, 8, 8});
      c.Put(p + "mlp.experts.down_proj", f32, {4, 8, 4});
      continue;
    }
    for (int e = 0; e < 4; ++e) {
      const std::string x = absl::StrCat(p, "mlp.experts.", e, ".");
      c.Put(x + "gate_proj.weight", f32, {4, 8});
      c.Put(x + "up_proj.weight", f32, {4, 8});
      c.Put(x + "down_proj.weight", f32, {8, 4});
    }
  }
  return c;
}

TEST(InspectHandMadeTest, CountsAHandCountedCheckpointInBothLayouts) {
  for (bool fused : {false, true}) {
    SCOPED_TRACE(fused ? "fused" : "per-expert");
    TempDir dir;
    ASSERT_OK(TinyQwen(fused).Write(dir.path(), QwenConfig()));
    ASSERT_OK_AND_ASSIGN(const ModelSummary s, SummarizeModel(dir.path(), {.budgets = {"1/2"}}));
    // embed + lm_head 2 x 16 x 8; final norm 8, per layer two norms of 8;
    // attention per layer q 64 + k 32 + v 32 + o 64 + q/k norms 4 + 4;
    // router per layer 4 x 8; one expert 3 x 4 x 8 = 96, 4 per layer.
    EXPECT_EQ(s.params, (WeightTally{.total = 1528,
                                     .routed_experts = 2 * 4 * 96,
                                     .non_expert = 760,
                                     .mtp = 0,
                                     .embeddings = 256,
                                     .attention = 2 * 200,
                                     .norms = 8 + 2 * 16,
                                     .dense_mlp = 0,
                                     .shared_experts = 0,
                                     .routers = 2 * 32,
                                     .other = 0}));
    EXPECT_EQ(s.bytes.total, 4 * 1528);
    EXPECT_EQ(s.bytes.non_expert, 4 * 760);
    ASSERT_EQ(s.expert_layers.size(), 2u);
    for (const MoeLayerSummary& l : s.expert_layers) {
      EXPECT_EQ(l.layout, fused ? ExpertLayout::kFused : ExpertLayout::kPerExpert);
      EXPECT_EQ(l.params_per_expert, 96);
      EXPECT_EQ(l.bytes_per_expert, 384);
    }
    ASSERT_EQ(s.budgets.size(), 1u);
    EXPECT_EQ(s.budgets[0].weight_bytes, 4 * 760 + 2 * 2 * 384);
    EXPECT_DOUBLE_EQ(s.budgets[0].fraction_of_full, (4.0 * 760 + 2 * 2 * 384) / (4.0 * 1528));
  }
}

TEST(InspectHandMadeTest, JsonHasTheDocumentedKeysInOrder) {
  TempDir dir;
  ASSERT_OK(TinyQwen(false).Write(dir.path(), QwenConfig()));
  ASSERT_OK_AND_ASSIGN(const ModelSummary s, SummarizeModel(dir.path()));
  const std::string text = ModelSummaryToJson(s);
  EXPECT_EQ(text.find('\n'), text.size() - 1);  // one line
  const nlohmann::ordered_json j = nlohmann::ordered_json::parse(text);
  std::vector<std::string> keys;
  for (const auto& [key, value] : j.items()) keys.push_back(key);
  EXPECT_THAT(keys, ElementsAre("format_version", "model_dir", "architecture", "config_summary",
                                "num_layers", "moe_layers", "dense_layers", "mtp_layers",
                                "num_routed_experts", "top_k", "num_shared_experts",
                                "shared_expert_intermediate_size", "moe_intermediate_size",
                                "hidden_size", "vocab_size", "checkpoint", "params", "bytes",
                                "expert_layers", "full_weight_bytes", "budgets", "held"));
  EXPECT_EQ(j["format_version"], 1);
  EXPECT_EQ(j["architecture"], "qwen3_moe");
  EXPECT_EQ(j["moe_layers"].get<std::vector<int64_t>>(), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(j["params"]["total"], 1528);
  EXPECT_EQ(j["params"]["routed_experts"], 768);
  EXPECT_EQ(j["bytes"]["non_expert"], 4 * 760);
  EXPECT_EQ(j["checkpoint"]["bytes_by_dtype"]["F32"], 4 * 1528);
  EXPECT_EQ(j["expert_layers"][1]["layout"], "per_expert");
  EXPECT_EQ(j["expert_layers"][1]["bytes_per_expert"], 384);
  ASSERT_EQ(j["budgets"].size(), 2u);  // 2/4, 2/2
  EXPECT_EQ(j["budgets"][1]["budget"], "2/2");
  EXPECT_EQ(j["budgets"][1]["kept_fraction"], 0.5);
  EXPECT_EQ(j["budgets"][1]["weight_bytes"], 4 * 760 + 2 * 2 * 384);
}

struct MismatchCase {
  std::string what;
  bool fused = false;
  std::string config_extra;
  int num_layers = 2;
  std::function<void(HandCheckpoint&)> mutate;
  std::vector<std::string> message;  // substrings
};

TEST(InspectHandMadeTest, CheckpointConfigMismatchesNameTheTensor) {
  const DType f32 = DType::kF32;
  const std::vector<MismatchCase> kCases = {
      {.what = "an expert index beyond the config's count",
       .mutate =
           [&](HandCheckpoint& c) {
             c.Put("model.layers.0.mlp.experts.4.gate_proj.weight", f32, {4, 8});
           },
       .message = {"\"model.layers.0.mlp.experts.4.gate_proj.weight\"", "4 routed experts"}},
      {.what = "routed experts in a layer the config makes dense",
       .config_extra = R"(, "mlp_only_layers": [1])",
       .mutate = [](HandCheckpoint&) {},
       .message = {"\"model.layers.1.mlp.experts.0.down_proj.weight\"", "makes layer 1 dense"}},
      {.what = "an expert missing a projection",
       .mutate = [](HandCheckpoint& c) { c.Erase("model.layers.1.mlp.experts.2.up_proj.weight"); },
       .message = {"missing routed expert 2", "\"model.layers.1.mlp.experts.2.up_proj.weight\""}},
      {.what = "a MoE layer without experts",
       .mutate =
           [](HandCheckpoint& c) {
             c.EraseIf(
                 [](const std::string& n) { return n.starts_with("model.layers.1.mlp.experts."); });
           },
       .message = {"layer 1", "no routed-expert tensor",
                   "\"model.layers.1.mlp.experts.0.gate_proj.weight\""}},
      {.what = "an expert of the wrong shape",
       .mutate =
           [&](HandCheckpoint& c) {
             c.Put("model.layers.0.mlp.experts.3.down_proj.weight", f32, {8, 5});
           },
       .message = {"\"model.layers.0.mlp.experts.3.down_proj.weight\"", "[8, 5]", "[8, 4]"}},
      {.what = "an expert of another dtype",
       .mutate =
           [](HandCheckpoint& c) {
             c.Put("model.layers.0.mlp.experts.2.gate_proj.weight", DType::kBF16, {4, 8});
           },
       .message = {"\"model.layers.0.mlp.experts.2.gate_proj.weight\" is BF16 [4, 8]",
                   "F32 [4, 8]"}},
      {.what = "a scale on one expert only",
       .mutate =
           [&](HandCheckpoint& c) {
             c.Put("model.layers.0.mlp.experts.1.gate_proj.weight_scale_inv", f32, {1, 1});
           },
       .message = {"\"model.layers.0.mlp.experts.1.gate_proj.weight_scale_inv\"",
                   "no counterpart"}},
      {.what = "per-expert and fused tensors in one layer",
       .mutate =
           [&](HandCheckpoint& c) {
             c.Put("model.layers.0.mlp.experts.down_proj", f32, {4, 8, 4});
           },
       .message = {"\"model.layers.0.mlp.experts.down_proj\" is stored fused", "per_expert"}},
      {.what = "a fused tensor with the wrong number of experts",
       .fused = true,
       .mutate =
           [&](HandCheckpoint& c) {
             c.Put("model.layers.0.mlp.experts.gate_up_proj", f32, {3, 8, 8});
           },
       .message = {"\"model.layers.0.mlp.experts.gate_up_proj\" has shape [3, 8, 8]", "[4, 8, 8]"}},
      {.what = "a fused layer missing down_proj",
       .fused = true,
       .mutate = [](HandCheckpoint& c) { c.Erase("model.layers.1.mlp.experts.down_proj"); },
       .message = {"\"model.layers.1.mlp.experts.down_proj\""}},
      {.what = "a layer beyond num_hidden_layers",
       .mutate =
           [&](HandCheckpoint& c) {
             c.Put("model.layers.2.self_attn.q_proj.weight", f32, {8, 8});
           },
       .message = {"\"model.layers.2.self_attn.q_proj.weight\"", "num_hidden_layers 2"}},
      {.what = "a layer the checkpoint lacks",
       .num_layers = 3,
       .mutate = [](HandCheckpoint&) {},
       .message = {"num_hidden_layers 3", "no tensor of layer 2"}},
      {.what = "a router with the wrong number of rows",
       .mutate =
           [&](HandCheckpoint& c) {
             c.Put("model.layers.0.mlp.gate.weight", f32, {5, 8});
           },
       .message = {"\"model.layers.0.mlp.gate.weight\"", "[5, 8]", "4 routed experts"}},
      {.what = "an embedding of the wrong vocabulary",
       .mutate =
           [&](HandCheckpoint& c) {
             c.Put("model.embed_tokens.weight", f32, {17, 8});
           },
       .message = {"\"model.embed_tokens.weight\" has shape [17, 8]", "[16, 8]"}},
  };
  for (const MismatchCase& mismatch : kCases) {
    SCOPED_TRACE(mismatch.what);
    HandCheckpoint checkpoint = TinyQwen(mismatch.fused);
    mismatch.mutate(checkpoint);
    TempDir dir;
    ASSERT_OK(checkpoint.Write(dir.path(), QwenConfig(mismatch.config_extra, mismatch.num_layers)));
    const absl::StatusOr<ModelSummary> s = SummarizeModel(dir.path());
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kFailedPrecondition, dir.path() + ": "));
    for (const std::string& part : mismatch.message) {
      EXPECT_THAT(s, StatusIs(absl::StatusCode::kFailedPrecondition, part));
    }
  }
}

// deepseek_v3 with block-wise FP8 weights and one MTP layer, 2 layers (layer 0
// dense), hidden 8, 4 experts of width 4, 1 shared expert.
constexpr char kDeepseekFp8Config[] = R"({
  "model_type": "deepseek_v3", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 12,
  "moe_intermediate_size": 4, "num_hidden_layers": 2, "num_attention_heads": 2,
  "num_key_value_heads": 2, "q_lora_rank": 4, "kv_lora_rank": 4, "qk_nope_head_dim": 2,
  "qk_rope_head_dim": 2, "v_head_dim": 2, "n_routed_experts": 4, "num_experts_per_tok": 2,
  "n_group": 2, "topk_group": 1, "n_shared_experts": 1, "first_k_dense_replace": 1,
  "num_nextn_predict_layers": 1,
  "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                          "weight_block_size": [128, 128]}})";

HandCheckpoint TinyDeepseekFp8() {
  HandCheckpoint c;
  const DType bf16 = DType::kBF16;
  c.Put("model.embed_tokens.weight", bf16, {16, 8});
  c.Put("lm_head.weight", bf16, {16, 8});
  c.Put("model.norm.weight", bf16, {8});
  for (int l = 0; l < 2; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    c.PutFp8(p + "self_attn.q_a_proj.weight", {4, 8});
    c.PutFp8(p + "self_attn.o_proj.weight", {8, 4});
    c.Put(p + "self_attn.q_a_layernorm.weight", bf16, {4});
    c.Put(p + "input_layernorm.weight", bf16, {8});
    c.Put(p + "post_attention_layernorm.weight", bf16, {8});
  }
  c.PutFp8("model.layers.0.mlp.gate_proj.weight", {12, 8});
  c.PutFp8("model.layers.0.mlp.up_proj.weight", {12, 8});
  c.PutFp8("model.layers.0.mlp.down_proj.weight", {8, 12});
  c.Put("model.layers.1.mlp.gate.weight", bf16, {4, 8});
  c.Put("model.layers.1.mlp.gate.e_score_correction_bias", DType::kF32, {4});
  for (const std::string x : {"model.layers.1.mlp.shared_experts.", "model.layers.1.mlp.experts.0.",
                              "model.layers.1.mlp.experts.1.", "model.layers.1.mlp.experts.2.",
                              "model.layers.1.mlp.experts.3."}) {
    c.PutFp8(x + "gate_proj.weight", {4, 8});
    c.PutFp8(x + "up_proj.weight", {4, 8});
    c.PutFp8(x + "down_proj.weight", {8, 4});
  }
  // The MTP layer (index num_hidden_layers), abridged.
  c.Put("model.layers.2.enorm.weight", bf16, {8});
  c.Put("model.layers.2.eh_proj.weight", bf16, {8, 16});
  c.PutFp8("model.layers.2.mlp.experts.0.gate_proj.weight", {4, 8});
  return c;
}

TEST(InspectHandMadeTest, Fp8ScalesCountAsBytesAndMtpLayersStandApart) {
  TempDir dir;
  ASSERT_OK(TinyDeepseekFp8().Write(dir.path(), kDeepseekFp8Config));
  ASSERT_OK_AND_ASSIGN(const ModelSummary s, SummarizeModel(dir.path()));
  EXPECT_THAT(s.moe_layers, ElementsAre(1));
  EXPECT_THAT(s.dense_layers, ElementsAre(0));
  EXPECT_THAT(s.mtp_layers, ElementsAre(2));
  EXPECT_EQ(s.num_shared_experts, 1);
  // An FP8 [r, c] weight: r * c parameters, r * c + 4 bytes with its scale.
  const int64_t expert_params = 3 * 32, expert_bytes = 3 * (32 + 4);
  EXPECT_EQ(s.params, (WeightTally{.total = 852 + 4 * expert_params + 168,
                                   .routed_experts = 4 * expert_params,
                                   .non_expert = 852,
                                   .mtp = 8 + 128 + 32,
                                   .embeddings = 2 * 128,
                                   .attention = 2 * (32 + 32 + 4),
                                   .norms = 8 + 2 * 16,
                                   .dense_mlp = 3 * 96,
                                   .shared_experts = expert_params,
                                   .routers = 32 + 4,
                                   .other = 0}));
  EXPECT_EQ(s.bytes, (WeightTally{.total = 1240 + 4 * expert_bytes + 308,
                                  .routed_experts = 4 * expert_bytes,
                                  .non_expert = 1240,
                                  .mtp = 16 + 256 + 36,
                                  .embeddings = 2 * 256,
                                  .attention = 2 * (36 + 36 + 8),
                                  .norms = 16 + 2 * 32,
                                  .dense_mlp = 3 * (96 + 4),
                                  .shared_experts = expert_bytes,
                                  .routers = 64 + 16,
                                  .other = 0}));
  EXPECT_EQ(s.bytes_by_dtype, (std::map<std::string, int64_t>{
                                  {"BF16", 944}, {"F32", 23 * 4 + 16}, {"F8_E4M3", 928}}));
  ASSERT_EQ(s.expert_layers.size(), 1u);
  EXPECT_EQ(s.expert_layers[0].params_per_expert, expert_params);
  EXPECT_EQ(s.expert_layers[0].bytes_per_expert, expert_bytes);
  // The MTP layer is on disk but not in any weight-memory figure.
  EXPECT_EQ(s.full_weight_bytes, 1240 + 4 * expert_bytes);
  EXPECT_EQ(Budgets(s), (std::vector<std::string>{"2/4", "2/2"}));
  EXPECT_EQ(s.budgets[1].weight_bytes, 1240 + 2 * expert_bytes);
  EXPECT_THAT(FormatModelSummary(s), HasSubstr("MTP layers (not loaded)"));
}

// What an engine holds is not what the file holds: FP8 weights become the
// compute dtype (routers fp32), and routed experts take their format's bytes.
TEST(InspectHandMadeTest, HeldMemoryIsInTheComputeDtypeAndTheExpertFormat) {
  TempDir dir;
  ASSERT_OK(TinyDeepseekFp8().Write(dir.path(), kDeepseekFp8Config));
  ASSERT_OK_AND_ASSIGN(const ModelSummary s,
                       SummarizeModel(dir.path(), {.quants = {"none", "int8"}}));
  // 852 non-expert parameters, 36 of them routers (gate 4 x 8, bias 4):
  // 816 in bf16 and 36 in fp32. One expert, 96 parameters: 192 bytes in
  // bf16; as int8, gate_up [8, 8] 64 codes + 8 fp32 scales = 96, down at
  // 128, [8, 4] 32 codes + 32 = 64, the slot 192.
  EXPECT_EQ(s.held_dtype, "bf16");
  EXPECT_EQ(s.held_non_expert_bytes, 816 * 2 + 36 * 4);
  using Held = std::vector<std::pair<std::string, int64_t>>;
  EXPECT_EQ(s.held_expert_bytes, (Held{{"none", 192}, {"int8", 192}}));
  ASSERT_EQ(s.budgets.size(), 2u);  // 2/4, 2/2
  EXPECT_EQ(s.budgets[0].held_bytes, (Held{{"none", 1776 + 4 * 192}, {"int8", 1776 + 4 * 192}}));
  EXPECT_EQ(s.budgets[1].held_bytes, (Held{{"none", 1776 + 2 * 192}, {"int8", 1776 + 2 * 192}}));
  EXPECT_THAT(FormatModelSummary(s), HasSubstr("weight memory as premoe holds it (bf16 compute"));
  const nlohmann::ordered_json j = nlohmann::ordered_json::parse(ModelSummaryToJson(s));
  EXPECT_EQ(j["held"]["non_expert_bytes"], 1776);
  EXPECT_EQ(j["budgets"][1]["held_bytes"]["int8"], 1776 + 2 * 192);

  ASSERT_OK_AND_ASSIGN(const ModelSummary fp32, SummarizeModel(dir.path(), {.dtype = "fp32"}));
  EXPECT_EQ(fp32.held_non_expert_bytes, 852 * 4);
  EXPECT_EQ(fp32.held_expert_bytes, (Held{{"none", 96 * 4}}));
  // Spellings are checked before any file is opened; a group that does not
  // divide the expert's dimensions names the matrix.
  EXPECT_THAT(SummarizeModel("/nonexistent", {.quants = {"int3"}}),
              StatusIs(absl::StatusCode::kInvalidArgument, "unknown format"));
  EXPECT_THAT(SummarizeModel("/nonexistent", {.dtype = "fp16"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "dtype must be"));
  EXPECT_THAT(SummarizeModel(dir.path(), {.quants = {"int4:g16"}}),
              StatusIs(absl::StatusCode::kInvalidArgument, "not a positive multiple of the group"));
}

TEST(InspectHandMadeTest, LayersBeyondTheDeclaredMtpLayersAreRefused) {
  HandCheckpoint checkpoint = TinyDeepseekFp8();
  checkpoint.Put("model.layers.3.enorm.weight", DType::kBF16, {8});
  TempDir dir;
  ASSERT_OK(checkpoint.Write(dir.path(), kDeepseekFp8Config));
  EXPECT_THAT(SummarizeModel(dir.path()),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       "\"model.layers.3.enorm.weight\" belongs to layer 3 but config.json has "
                       "num_hidden_layers 2 and 1 MTP layer(s)"));
}

TEST(InspectHandMadeTest, AModelWithoutExpertsHasNoBudgets) {
  HandCheckpoint c;
  const DType f32 = DType::kF32;
  c.Put("model.embed_tokens.weight", f32, {16, 8});
  c.Put("lm_head.weight", f32, {16, 8});
  c.Put("model.norm.weight", f32, {8});
  c.Put("model.layers.0.self_attn.q_proj.weight", f32, {8, 8});
  c.Put("model.layers.0.input_layernorm.weight", f32, {8});
  c.Put("model.layers.0.mlp.gate_proj.weight", f32, {12, 8});
  c.Put("model.layers.0.mlp.up_proj.weight", f32, {12, 8});
  c.Put("model.layers.0.mlp.down_proj.weight", f32, {8, 12});
  TempDir dir;
  ASSERT_OK(c.Write(dir.path(), R"({"model_type": "qwen2_moe", "num_experts": 0,
      "vocab_size": 16, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1,
      "num_attention_heads": 2, "num_key_value_heads": 1})"));
  ASSERT_OK_AND_ASSIGN(const ModelSummary s, SummarizeModel(dir.path()));
  EXPECT_TRUE(s.moe_layers.empty());
  EXPECT_THAT(s.dense_layers, ElementsAre(0));
  EXPECT_EQ(s.num_routed_experts, 0);
  EXPECT_EQ(s.num_shared_experts, 0);
  EXPECT_EQ(s.params.dense_mlp, 3 * 96);
  EXPECT_EQ(s.params.routed_experts, 0);
  EXPECT_TRUE(s.budgets.empty());
  EXPECT_EQ(s.full_weight_bytes, s.bytes.total);
  EXPECT_THAT(FormatModelSummary(s), HasSubstr("none: the model has no routed experts"));
  EXPECT_THAT(SummarizeModel(dir.path(), {.budgets = {"1/1"}}),
              StatusIs(absl::StatusCode::kInvalidArgument, "budget \"1/1\": the model has no MoE"));
}

// ---- A DeepSeek-V3-sized checkpoint ------------------------------------------

// The script writes DeepSeek-V3's hub config and a ~690 GB checkpoint of 63
// sparse shards (headers only, the data are holes). Summarising it must not
// touch the data: reading it would fault in ~170 million pages.
TEST(InspectDeepSeekV3Test, SummarisesA690GbCheckpointFromItsHeadersAlone) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(const std::string out, RunPython("tests/testutil/inspect_reference.py",
                                                        {"deepseek_v3_full", dir.path()}));
  const json ref = json::parse(out);
  const json& e = ref["expect"];

  rusage before{}, after{};
  ASSERT_EQ(getrusage(RUSAGE_SELF, &before), 0);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_OK_AND_ASSIGN(const ModelSummary s,
                       SummarizeModel(dir.path(), {.budgets = {"8/256", "8/128", "4/64"}}));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(getrusage(RUSAGE_SELF, &after), 0);
  const long faults = (after.ru_minflt - before.ru_minflt) + (after.ru_majflt - before.ru_majflt);
  RecordProperty("seconds", std::to_string(seconds));
  RecordProperty("page_faults", std::to_string(faults));
  // Parsing the headers (~20 MB of JSON) costs ~10^5 faults; 1 GB of data 2.6 x 10^5.
  EXPECT_LT(faults, 1'000'000);

  EXPECT_EQ(s.num_layers, 61);
  EXPECT_EQ(s.moe_layers.size(), 58u);
  EXPECT_EQ(s.moe_layers.front(), 3);
  EXPECT_THAT(s.dense_layers, ElementsAre(0, 1, 2));
  EXPECT_THAT(s.mtp_layers, ElementsAre(61));
  EXPECT_EQ(s.num_routed_experts, 256);
  EXPECT_EQ(s.top_k, 8);
  EXPECT_EQ(s.files.size(), ref["num_files"].get<size_t>());
  EXPECT_EQ(s.num_tensors, ref["num_tensors"].get<int64_t>());

  // Parameters: the module's, category by category; the total is the
  // published 671B (transformers does not build the MTP layer).
  const json& p = e["params"];
  EXPECT_EQ(s.params.total - s.params.mtp, 671'026'419'200);
  EXPECT_EQ(s.params.total - s.params.mtp, p["total"].get<int64_t>());
  EXPECT_EQ(s.params.routed_experts, p["routed_experts"].get<int64_t>());
  EXPECT_EQ(s.params.embeddings, p["embeddings"].get<int64_t>());
  EXPECT_EQ(s.params.attention, p["attention"].get<int64_t>());
  EXPECT_EQ(s.params.norms, p["norms"].get<int64_t>());
  EXPECT_EQ(s.params.dense_mlp, p["dense_mlp"].get<int64_t>());
  EXPECT_EQ(s.params.shared_experts, p["shared_experts"].get<int64_t>());
  EXPECT_EQ(s.params.routers, p["routers"].get<int64_t>());
  EXPECT_EQ(s.params.other, 0);
  EXPECT_EQ(s.params.mtp, ref["mtp_params"].get<int64_t>());
  ExpectTally(s.bytes, ref["bytes"], "bytes");
  EXPECT_EQ(s.bytes.mtp, ref["bytes"]["mtp"].get<int64_t>());

  // One FP8 expert: 3 x 2048 x 7168 bytes + 3 scales of 16 x 56 F32.
  const int64_t expert_bytes = 3 * (2048 * 7168 + 16 * 56 * 4);
  EXPECT_EQ(ref["bytes_per_expert"].get<int64_t>(), expert_bytes);
  for (const MoeLayerSummary& l : s.expert_layers) {
    EXPECT_EQ(l.bytes_per_expert, expert_bytes) << l.layer;
    EXPECT_EQ(l.params_per_expert, 3 * 2048 * 7168) << l.layer;
  }
  const int64_t non_expert = ref["bytes"]["non_expert"].get<int64_t>();
  ASSERT_EQ(s.budgets.size(), 3u);
  EXPECT_EQ(s.budgets[0].weight_bytes, non_expert + 58 * 256 * expert_bytes);
  EXPECT_EQ(s.budgets[1].weight_bytes, non_expert + 58 * 128 * expert_bytes);
  EXPECT_EQ(s.budgets[2].weight_bytes, non_expert + 58 * 64 * expert_bytes);
  EXPECT_EQ(s.full_weight_bytes, s.budgets[0].weight_bytes);
}

}  // namespace
}  // namespace premoe::checkpoint
