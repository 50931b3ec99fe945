#include "premoe/checkpoint/config.h"

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "premoe/checkpoint/expert_tensors.h"
#include "tests/testutil/testutil.h"

namespace premoe::checkpoint {
namespace {

using ::nlohmann::json;
using ::premoe::testing::ReadFileOrDie;
using ::premoe::testing::RunPython;
using ::premoe::testing::StatusIs;
using ::premoe::testing::TempDir;
using ::premoe::testing::WriteStringToFile;
using ::testing::HasSubstr;

constexpr Architecture kArchitectures[] = {
    Architecture::kQwen3Moe, Architecture::kQwen2Moe,   Architecture::kMixtral,
    Architecture::kOlmoe,    Architecture::kDeepseekV2, Architecture::kDeepseekV3,
};

// DeepSeek-V3's config.json as published (FP8, yarn, legacy key spellings),
// minus auto_map.
constexpr char kDeepseekV3Hub[] = R"json({
  "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1,
  "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
  "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
  "max_position_embeddings": 163840, "model_type": "deepseek_v3", "moe_intermediate_size": 2048,
  "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1,
  "norm_topk_prob": true, "num_attention_heads": 128, "num_experts_per_tok": 8,
  "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1,
  "pretraining_tp": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]},
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                   "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
  "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": true,
  "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc",
  "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": true,
  "v_head_dim": 128, "vocab_size": 129280
})json";

absl::StatusOr<ModelConfig> Parse(const json& j) { return ParseModelConfig(j.dump(), "cfg.json"); }

// {"model_type": type} plus `fields`.
json Config(absl::string_view model_type, json fields = json::object()) {
  fields["model_type"] = std::string(model_type);
  return fields;
}

std::vector<int> MoeLayers(const ModelConfig& c) {
  std::vector<int> layers;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    if (c.IsMoeLayer(l)) layers.push_back(l);
  }
  return layers;
}

std::optional<int64_t> OptionalInt(const json& v) {
  if (v.is_null()) return std::nullopt;
  return v.get<int64_t>();
}

absl::string_view QkNormName(QkNorm n) {
  switch (n) {
    case QkNorm::kNone:
      return "none";
    case QkNorm::kPerHead:
      return "per_head";
    case QkNorm::kFull:
      return "full";
  }
  return "?";
}

void ExpectNear(double actual, double expected, const std::string& what) {
  EXPECT_NEAR(actual, expected, 1e-12 * std::max(1.0, std::abs(expected))) << what;
}

// Compares a parsed config with what transformers' config class and modeling
// code made of the same file (make_configs.py's "expect" object).
void ExpectMatchesTransformers(const ModelConfig& c, const json& e) {
  EXPECT_EQ(ModelTypeName(c.architecture), e["architecture"].get<std::string>());
  for (const auto& [key, actual] : std::vector<std::pair<const char*, int64_t>>{
           {"vocab_size", c.vocab_size},
           {"hidden_size", c.hidden_size},
           {"intermediate_size", c.intermediate_size},
           {"dense_intermediate_size", c.intermediate_size},
           {"num_hidden_layers", c.num_hidden_layers},
           {"num_attention_heads", c.num_attention_heads},
           {"num_key_value_heads", c.num_key_value_heads},
           {"head_dim", c.head_dim},
           {"rotary_dim", c.head_dim},
           {"max_position_embeddings", c.max_position_embeddings},
           {"num_routed_experts", c.num_routed_experts},
           {"moe_intermediate_size", c.moe_intermediate_size},
           {"num_experts_per_tok", c.num_experts_per_tok},
           {"shared_intermediate_size", c.SharedExpertIntermediateSize()},
           {"kv_lora_rank", c.kv_lora_rank},
           {"qk_nope_head_dim", c.qk_nope_head_dim},
           {"qk_rope_head_dim", c.qk_rope_head_dim},
           {"v_head_dim", c.v_head_dim},
           {"first_k_dense_replace", c.first_k_dense_replace},
           {"decoder_sparse_step", c.decoder_sparse_step},
           {"num_nextn_predict_layers", c.num_nextn_predict_layers},
           {"rope_original_max_position_embeddings", c.rope.original_max_position_embeddings},
       }) {
    if (e.contains(key)) {
      EXPECT_EQ(actual, e[key].get<int64_t>()) << key;
    }
  }
  for (const auto& [key, actual] : std::vector<std::pair<const char*, double>>{
           {"rms_norm_eps", c.rms_norm_eps},
           {"attention_scale", c.AttentionScale()},
           {"rope_theta", c.rope.theta},
           {"rope_attention_factor", c.rope.attention_factor},
           {"rope_factor", c.rope.factor},
           {"rope_beta_fast", c.rope.beta_fast},
           {"rope_beta_slow", c.rope.beta_slow},
           {"rope_mscale", c.rope.mscale},
           {"rope_mscale_all_dim", c.rope.mscale_all_dim},
           {"routed_scaling_factor", c.routed_scaling_factor},
           {"router_aux_loss_coef", c.router_aux_loss_coef},
       }) {
    if (e.contains(key)) ExpectNear(actual, e[key].get<double>(), key);
  }
  for (const auto& [key, actual] : std::vector<std::pair<const char*, bool>>{
           {"tie_word_embeddings", c.tie_word_embeddings},
           {"attention_bias", c.attention_bias},
           {"qkv_bias", c.qkv_bias || c.attention_bias},
           {"rope_interleave", c.rope_interleave},
           {"mlp_bias", c.mlp_bias},
           {"norm_topk_prob", c.norm_topk_prob},
       }) {
    if (e.contains(key)) {
      EXPECT_EQ(actual, e[key].get<bool>()) << key;
    }
  }
  for (const auto& [key, actual] : std::vector<std::pair<const char*, std::optional<int64_t>>>{
           {"bos_token_id", c.bos_token_id},
           {"pad_token_id", c.pad_token_id},
           {"q_lora_rank", c.q_lora_rank},
           {"n_group", c.n_group},
           {"topk_group", c.topk_group},
       }) {
    if (e.contains(key)) {
      EXPECT_EQ(actual, OptionalInt(e[key])) << key;
    }
  }
  EXPECT_EQ(c.hidden_act, e["hidden_act"].get<std::string>());
  EXPECT_EQ(c.eos_token_ids, e["eos_token_ids"].get<std::vector<int64_t>>());
  EXPECT_EQ(TorchDtypeName(c.dtype), e["dtype"].is_null() ? "" : e["dtype"].get<std::string>());
  EXPECT_EQ(RopeTypeName(c.rope.type), e["rope_type"].get<std::string>());
  if (e.contains("qk_norm")) {
    EXPECT_EQ(QkNormName(c.qk_norm), e["qk_norm"].get<std::string>());
  }
  if (e.contains("scoring_func")) {
    EXPECT_EQ(c.scoring_func == RouterScoring::kSigmoid ? "sigmoid" : "softmax",
              e["scoring_func"].get<std::string>());
  }
  if (e.contains("topk_method")) {
    EXPECT_EQ(TopkMethodName(c.topk_method), e["topk_method"].get<std::string>());
  }
  if (e.contains("clip_qkv")) {
    EXPECT_EQ(c.clip_qkv, e["clip_qkv"].is_null()
                              ? std::nullopt
                              : std::optional<double>(e["clip_qkv"].get<double>()));
  }
  if (e.contains("mlp_only_layers")) {
    EXPECT_EQ(c.mlp_only_layers, e["mlp_only_layers"].get<std::vector<int64_t>>());
  }

  // The sparse layers, as the modeling code instantiated them.
  const auto expected_moe = e["moe_layers"].get<std::vector<int>>();
  EXPECT_EQ(MoeLayers(c), expected_moe);
  EXPECT_EQ(c.NumMoeLayers(), static_cast<int64_t>(expected_moe.size()));

  const json& windows = e["layer_sliding_windows"];
  ASSERT_EQ(static_cast<int64_t>(windows.size()), c.num_hidden_layers);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    EXPECT_EQ(c.SlidingWindow(l), OptionalInt(windows[l])) << "layer " << l;
  }

  const json& q = e["quantization_config"];
  EXPECT_EQ(c.quantization_config.has_value(), !q.is_null());
  if (c.quantization_config.has_value() && !q.is_null()) {
    EXPECT_EQ(c.quantization_config->quant_method, q["quant_method"].get<std::string>());
    EXPECT_EQ(c.quantization_config->fmt, q.value("fmt", std::string("e4m3")));
    EXPECT_EQ(c.quantization_config->activation_scheme, q["activation_scheme"].get<std::string>());
    ASSERT_TRUE(c.quantization_config->weight_block_size.has_value());
    EXPECT_EQ((*c.quantization_config->weight_block_size)[0],
              q["weight_block_size"][0].get<int64_t>());
    EXPECT_EQ((*c.quantization_config->weight_block_size)[1],
              q["weight_block_size"][1].get<int64_t>());
  }
  EXPECT_THAT(c.Summary(), HasSubstr(std::string(ModelTypeName(c.architecture)) + ": "));
}

TEST(ModelConfigTest, MatchesTransformersOnEveryReferenceConfig) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(const std::string out,
                       RunPython("tests/testutil/make_configs.py", {"configs", dir.path()}));
  const json cases = json::parse(out);
  ASSERT_GE(cases.size(), 30u);
  std::set<std::string> seen_architectures;
  for (const json& test_case : cases) {
    const std::string name = test_case["name"].get<std::string>();
    SCOPED_TRACE(name);
    const std::string path = test_case["path"].get<std::string>();
    const absl::StatusOr<ModelConfig> config = LoadModelConfig(path.substr(0, path.rfind('/')));
    if (test_case.contains("expect_error")) {
      EXPECT_THAT(config, StatusIs(absl::StatusCode::kInvalidArgument,
                                   test_case["expect_error"].get<std::string>()));
      continue;
    }
    ASSERT_TRUE(config.ok()) << config.status();
    ExpectMatchesTransformers(*config, test_case["expect"]);
    seen_architectures.insert(std::string(ModelTypeName(config->architecture)));
  }
  EXPECT_EQ(seen_architectures.size(), 6u);
}

TEST(ModelConfigTest, DefaultsAreWhatAnEmptyConfigParsesTo) {
  for (Architecture a : kArchitectures) {
    SCOPED_TRACE(ModelTypeName(a));
    json j = Config(ModelTypeName(a));
    ModelConfig expected = ModelConfig::Defaults(a);
    if (a == Architecture::kDeepseekV2) {
      j["num_experts_per_tok"] = 6;  // HF's default is None
      expected.num_experts_per_tok = 6;
      EXPECT_THAT(ModelConfig::Defaults(a).Validate(),
                  StatusIs(absl::StatusCode::kInvalidArgument, "num_experts_per_tok"));
    } else {
      EXPECT_OK(expected.Validate());
    }
    ASSERT_OK_AND_ASSIGN(const ModelConfig parsed, Parse(j));
    EXPECT_TRUE(parsed == expected) << parsed.Summary() << "\n" << expected.Summary();
  }
}

TEST(ModelConfigTest, ParsesThePublishedDeepseekV3Config) {
  ASSERT_OK_AND_ASSIGN(const ModelConfig c, ParseModelConfig(kDeepseekV3Hub, "config.json"));
  EXPECT_EQ(c.architecture, Architecture::kDeepseekV3);
  EXPECT_EQ(c.num_routed_experts, 256);
  EXPECT_EQ(c.NumMoeLayers(), 58);
  EXPECT_FALSE(c.IsMoeLayer(2));
  EXPECT_TRUE(c.IsMoeLayer(3));
  EXPECT_TRUE(c.IsMoeLayer(60));
  EXPECT_FALSE(c.IsMoeLayer(61));  // the MTP layer is not a decoder layer
  EXPECT_FALSE(c.IsMoeLayer(-1));
  EXPECT_EQ(c.scoring_func, RouterScoring::kSigmoid);
  EXPECT_EQ(c.topk_method, TopkMethod::kNoauxTc);
  EXPECT_EQ(c.rope.type, RopeType::kYarn);
  EXPECT_EQ(c.rope.factor, 40);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 4096);
  EXPECT_EQ(c.rope.attention_factor, 1.0);  // mscale == mscale_all_dim
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(c.AttentionScale(), m * m / std::sqrt(192.0), 1e-15);
  ASSERT_TRUE(c.quantization_config.has_value());
  EXPECT_EQ(c.quantization_config->weight_block_size, (std::array<int64_t, 2>{128, 128}));
  EXPECT_EQ(c.dtype, TorchDtype::kBFloat16);
  EXPECT_EQ(c.Summary(),
            "deepseek_v3: 61 layers (58 MoE), hidden 7168, 128 heads (MLA q_lora 1536, kv_lora "
            "512), 256 experts top-8 + 1 shared, sigmoid noaux_tc 8/4 groups, expert ffn 2048, "
            "vocab 129280, rope yarn x40 theta 10000, bfloat16, fp8 e4m3 [128,128]");
}

TEST(ModelConfigTest, LoadReadsConfigJsonFromTheDirectory) {
  TempDir dir;
  EXPECT_THAT(LoadModelConfig(dir.path()), StatusIs(absl::StatusCode::kNotFound, "config.json"));
  WriteStringToFile(dir.Join("config.json"), kDeepseekV3Hub);
  ASSERT_OK_AND_ASSIGN(const ModelConfig c, LoadModelConfig(dir.path()));
  EXPECT_EQ(c.hidden_size, 7168);
  WriteStringToFile(dir.Join("config.json"), R"({"model_type": "qwen3_moe", "hidden_size": 0})");
  EXPECT_THAT(LoadModelConfig(dir.path()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       dir.Join("config.json") + ": \"hidden_size\" must be in [1, "));
}

TEST(ModelConfigTest, ExpertCountAliasesFollowTransformersPrecedence) {
  // The attribute_map alias is applied after the dataclass field, so it wins.
  const std::tuple<Architecture, const char*, const char*> cases[] = {
      {Architecture::kQwen3Moe, "num_experts", "num_local_experts"},
      {Architecture::kOlmoe, "num_experts", "num_local_experts"},
      {Architecture::kMixtral, "num_local_experts", "num_experts"},
      {Architecture::kDeepseekV2, "n_routed_experts", "num_experts"},
      {Architecture::kDeepseekV3, "n_routed_experts", "num_local_experts"},
  };
  for (const auto& [arch, field, alias] : cases) {
    SCOPED_TRACE(ModelTypeName(arch));
    json j = Config(ModelTypeName(arch), {{field, 32}, {"num_experts_per_tok", 2}});
    ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
    EXPECT_EQ(c.num_routed_experts, 32);
    j[alias] = 16;
    ASSERT_OK_AND_ASSIGN(c, Parse(j));
    EXPECT_EQ(c.num_routed_experts, 16);
  }
  // qwen2_moe has no alias: num_local_experts is an inert extra key.
  ASSERT_OK_AND_ASSIGN(const ModelConfig q2,
                       Parse(Config("qwen2_moe", {{"num_local_experts", 16}})));
  EXPECT_EQ(q2.num_routed_experts, 60);
}

TEST(ModelConfigTest, EffectiveValuesFollowTheModelingCode) {
  // mixtral always renormalises; a stray norm_topk_prob key changes nothing.
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(Config("mixtral", {{"norm_topk_prob", false}})));
  EXPECT_TRUE(c.norm_topk_prob);
  // deepseek_v2's router ignores norm_topk_prob.
  ASSERT_OK_AND_ASSIGN(
      c, Parse(Config("deepseek_v2", {{"num_experts_per_tok", 6}, {"norm_topk_prob", true}})));
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_TRUE(c.rope_interleave);
  // qwen3_moe's window only applies with use_sliding_window.
  ASSERT_OK_AND_ASSIGN(c, Parse(Config("qwen3_moe", {{"sliding_window", 128}})));
  EXPECT_EQ(c.sliding_window, std::nullopt);
  EXPECT_EQ(c.SlidingWindow(0), std::nullopt);
  ASSERT_OK_AND_ASSIGN(
      c, Parse(Config("qwen3_moe", {{"sliding_window", 128}, {"use_sliding_window", true}})));
  EXPECT_EQ(c.SlidingWindow(0), 128);
  // qwen2_moe slides on even layers below max_window_layers.
  ASSERT_OK_AND_ASSIGN(c, Parse(Config("qwen2_moe", {{"num_hidden_layers", 6},
                                                     {"use_sliding_window", true},
                                                     {"sliding_window", 64},
                                                     {"max_window_layers", 3}})));
  EXPECT_EQ(c.SlidingWindow(0), 64);
  EXPECT_EQ(c.SlidingWindow(1), std::nullopt);
  EXPECT_EQ(c.SlidingWindow(2), 64);
  EXPECT_EQ(c.SlidingWindow(4), std::nullopt);
  EXPECT_EQ(c.SlidingWindow(99), std::nullopt);
  // Legacy "swish" is SiLU.
  ASSERT_OK_AND_ASSIGN(c, Parse(Config("olmoe", {{"hidden_act", "swish"}})));
  EXPECT_EQ(c.hidden_act, "silu");
  // dtype wins over torch_dtype; a null dtype defers to it.
  ASSERT_OK_AND_ASSIGN(c, Parse(Config("olmoe", {{"torch_dtype", "float16"}, {"dtype", nullptr}})));
  EXPECT_EQ(c.dtype, TorchDtype::kFloat16);
  // qwen with no experts is a dense model.
  ASSERT_OK_AND_ASSIGN(c, Parse(Config("qwen3_moe", {{"num_experts", 0}})));
  EXPECT_EQ(c.NumMoeLayers(), 0);
  // Yarn without an explicit attention_factor derives it from mscale.
  ASSERT_OK_AND_ASSIGN(
      c,
      Parse(Config("qwen3_moe", {{"rope_parameters",
                                  {{"rope_type", "yarn"}, {"factor", 4.0}, {"beta_fast", 0}}}})));
  EXPECT_NEAR(c.rope.attention_factor, 0.1 * std::log(4.0) + 1.0, 1e-15);
  EXPECT_EQ(c.rope.beta_fast, 32);  // `0 or 32`
  EXPECT_EQ(c.rope.original_max_position_embeddings, c.max_position_embeddings);
}

struct ErrorCase {
  const char* name;
  std::string text;
  const char* message;
};

TEST(ModelConfigErrorTest, RefusesMalformedConfigsWithAMessageNamingTheProblem) {
  const auto j = [](absl::string_view model_type, json fields) {
    return Config(model_type, std::move(fields)).dump();
  };
  const ErrorCase cases[] = {
      {"invalid json", R"({"model_type": "qwen3_moe",)", "cfg.json: invalid JSON"},
      {"duplicate key", R"({"model_type": "qwen3_moe", "hidden_size": 2, "hidden_size": 4})",
       "duplicate key \"hidden_size\""},
      {"not an object", "[1, 2]", "\"(top level)\" must be an object, got array [1,2]"},
      {"no model_type", R"({"hidden_size": 8})",
       "missing required field \"model_type\" (supported: qwen3_moe, qwen2_moe, mixtral, olmoe, "
       "deepseek_v2, deepseek_v3)"},
      {"unknown model_type", R"({"model_type": "llama"})",
       "unsupported model_type \"llama\" (supported: qwen3_moe, qwen2_moe, mixtral, olmoe, "
       "deepseek_v2, deepseek_v3)"},
      {"model_type not a string", R"({"model_type": 3})",
       "\"model_type\" must be a string, got number 3"},
      {"string for int", j("qwen3_moe", {{"hidden_size", "32"}}),
       "\"hidden_size\" must be an integer, got string \"32\""},
      {"float for int", j("mixtral", {{"num_hidden_layers", 2.0}}),
       "\"num_hidden_layers\" must be an integer, got number 2.0"},
      {"bool for int", j("olmoe", {{"vocab_size", true}}),
       "\"vocab_size\" must be an integer, got true"},
      {"null for int", j("qwen3_moe", {{"num_key_value_heads", nullptr}}),
       "\"num_key_value_heads\" must be an integer, got null"},
      {"int beyond int64", R"({"model_type": "qwen3_moe", "vocab_size": 18446744073709551615})",
       "\"vocab_size\" must be an integer within int64"},
      {"huge number", R"({"model_type": "qwen3_moe", "vocab_size": 1e400})",
       "cfg.json: invalid JSON: [json.exception.out_of_range.406] number overflow parsing '1e400'"},
      {"string for float", j("qwen3_moe", {{"rms_norm_eps", "1e-6"}}),
       "\"rms_norm_eps\" must be a number, got string \"1e-6\""},
      {"int for bool", j("qwen3_moe", {{"tie_word_embeddings", 1}}),
       "\"tie_word_embeddings\" must be true or false, got number 1"},
      {"list item", j("qwen2_moe", {{"mlp_only_layers", {1, "2"}}}),
       "\"mlp_only_layers[1]\" must be an integer, got string \"2\""},
      {"eos outside the vocabulary",
       j("qwen3_moe", {{"vocab_size", 100}, {"eos_token_id", {5, 100}}}),
       "\"eos_token_id\" must be in [0, 99], got 100"},
      {"eos string", j("qwen3_moe", {{"eos_token_id", "a"}}),
       "\"eos_token_id\" must be an integer or a list of integers, got string \"a\""},
      {"rope not object", j("qwen3_moe", {{"rope_parameters", 5}}),
       "\"rope_parameters\" must be an object or null, got number 5"},
      {"rope factor type",
       j("qwen3_moe", {{"rope_scaling", {{"type", "linear"}, {"factor", "2"}}}}),
       "\"rope_scaling.factor\" must be a number, got string \"2\""},
      {"zero hidden", j("qwen3_moe", {{"hidden_size", 0}}),
       "\"hidden_size\" must be in [1, 2147483647], got 0"},
      {"negative hidden", j("deepseek_v3", {{"hidden_size", -4}}),
       "\"hidden_size\" must be in [1, 2147483647], got -4"},
      {"negative hidden, head_dim derived", j("qwen3_moe", {{"hidden_size", -4}}),
       "\"hidden_size\" must be in [1, 2147483647], got -4"},
      {"zero heads", j("qwen3_moe", {{"num_attention_heads", 0}}),
       "\"num_attention_heads\" must be positive, got 0"},
      {"too many layers", j("qwen3_moe", {{"num_hidden_layers", 1 << 20}}),
       "\"num_hidden_layers\" must be in [1, 65536], got 1048576"},
      {"heads not dividing", j("mixtral", {{"hidden_size", 100}, {"num_attention_heads", 8}}),
       "\"num_attention_heads\" (8) must divide hidden_size (100) when head_dim is not given"},
      {"kv not dividing", j("qwen3_moe", {{"num_key_value_heads", 5}}),
       "\"num_key_value_heads\" (5) must divide num_attention_heads (32)"},
      {"mla kv heads", j("deepseek_v3", {{"num_key_value_heads", 64}}),
       "\"num_key_value_heads\" (64) must equal num_attention_heads (128)"},
      {"olmoe head_dim", j("olmoe", {{"head_dim", 64}}),
       "\"head_dim\" (64) must be hidden_size / num_attention_heads (128)"},
      {"null head_dim", j("qwen3_moe", {{"head_dim", nullptr}}),
       "\"head_dim\" must be an integer, got null"},
      {"deepseek_v3 head_dim", j("deepseek_v3", {{"head_dim", 128}}),
       "\"head_dim\" (128) must equal qk_rope_head_dim (64)"},
      {"odd head_dim", j("qwen3_moe", {{"head_dim", 63}}), "\"head_dim\" (63) must be even"},
      {"top_k above experts", j("mixtral", {{"num_experts_per_tok", 9}}),
       "\"num_experts_per_tok\" (9) must be in [1, 8], the number of routed experts"},
      {"top_k zero", j("olmoe", {{"num_experts_per_tok", 0}}), "\"num_experts_per_tok\" (0)"},
      {"no experts", j("mixtral", {{"num_local_experts", 0}}),
       "\"num_local_experts\" must be in [1, 2147483647], got 0"},
      {"n_group not dividing", j("deepseek_v3", {{"n_group", 7}}),
       "\"n_group\" (7) must divide n_routed_experts (256)"},
      {"topk_group above n_group", j("deepseek_v3", {{"topk_group", 9}}),
       "\"topk_group\" (9) must be in [1, n_group = 8]"},
      {"top_k beyond kept groups",
       j("deepseek_v3", {{"n_routed_experts", 16}, {"num_experts_per_tok", 5}, {"topk_group", 1}}),
       "\"num_experts_per_tok\" (5) exceeds the 2 experts in topk_group (1) groups of 2"},
      {"noaux one expert per group",
       j("deepseek_v3", {{"n_routed_experts", 8}, {"num_experts_per_tok", 2}}),
       "\"n_group\" (8) leaves fewer than 2 experts per group"},
      {"null n_group for v3", j("deepseek_v3", {{"n_group", nullptr}}),
       "\"n_group\" is required by topk_method noaux_tc"},
      {"group_limited_greedy without groups",
       j("deepseek_v2", {{"num_experts_per_tok", 6}, {"topk_method", "group_limited_greedy"}}),
       "\"n_group\" is required by topk_method group_limited_greedy"},
      {"v2 missing top_k", j("deepseek_v2", json::object()),
       "missing required field \"num_experts_per_tok\" (deepseek_v2 has no default for it)"},
      {"v2 unknown topk_method",
       j("deepseek_v2", {{"num_experts_per_tok", 6}, {"topk_method", "x"}}),
       "\"topk_method\" is \"x\": deepseek_v2 supports greedy and group_limited_greedy"},
      {"v3 softmax", j("deepseek_v3", {{"scoring_func", "softmax"}}),
       "\"scoring_func\" is \"softmax\" but deepseek_v3 routes by sigmoid"},
      {"v3 greedy", j("deepseek_v3", {{"topk_method", "greedy"}}),
       "\"topk_method\" is \"greedy\" but deepseek_v3 always selects by noaux_tc"},
      {"moe_layer_freq", j("deepseek_v3", {{"moe_layer_freq", 2}}),
       "\"moe_layer_freq\" is 2: transformers makes every layer from first_k_dense_replace on "
       "sparse"},
      {"negative first_k_dense_replace",
       j("deepseek_v2", {{"num_experts_per_tok", 6}, {"first_k_dense_replace", -1}}),
       "\"first_k_dense_replace\" must be in [0, 2147483647], got -1"},
      {"decoder_sparse_step zero", j("qwen2_moe", {{"decoder_sparse_step", 0}}),
       "\"decoder_sparse_step\" must be in [1, 2147483647], got 0"},
      {"mlp_only_layers out of range", j("qwen3_moe", {{"mlp_only_layers", {0, 24}}}),
       "\"mlp_only_layers[1]\" must be in [0, 23], got 24"},
      {"hidden_act", j("qwen3_moe", {{"hidden_act", "gelu"}}),
       "\"hidden_act\" is \"gelu\": only \"silu\" is supported"},
      {"rope type", j("qwen3_moe", {{"rope_parameters", {{"rope_type", "longrope"}}}}),
       "\"rope_parameters.rope_type\" is \"longrope\": supported rope types are default, linear, "
       "dynamic, yarn"},
      {"legacy rope type", j("mixtral", {{"rope_scaling", {{"type", "llama3"}, {"factor", 8}}}}),
       "\"rope_scaling.type\" is \"llama3\""},
      {"rope factor missing", j("qwen3_moe", {{"rope_parameters", {{"rope_type", "yarn"}}}}),
       "\"rope_parameters.factor\" is required for rope type yarn"},
      {"rope factor zero",
       j("qwen3_moe", {{"rope_parameters", {{"rope_type", "linear"}, {"factor", 0}}}}),
       "\"rope_parameters.factor\" must be a positive finite number, got 0"},
      {"rope theta", j("qwen3_moe", {{"rope_theta", -1}}),
       "\"rope_theta\" must be a positive finite number, got -1"},
      {"partial rotary", j("qwen3_moe", {{"partial_rotary_factor", 0.5}}),
       "\"partial_rotary_factor\" is 0.5: only full rotary embeddings (1.0) are supported"},
      {"nested rope", j("qwen2_moe", {{"rope_parameters", {{"full_attention", json::object()}}}}),
       "\"rope_parameters.full_attention\" is set: per-layer-type rope parameters are not "
       "supported"},
      {"sliding without window",
       j("qwen2_moe",
         {{"num_hidden_layers", 2}, {"layer_types", {"sliding_attention", "full_attention"}}}),
       "\"layer_types[0]\" is sliding_attention but no sliding window is in effect"},
      {"layer_types length",
       j("qwen2_moe", {{"num_hidden_layers", 2}, {"layer_types", {"full_attention"}}}),
       "\"layer_types\" has 1 entries but num_hidden_layers is 2"},
      {"layer_types value", j("qwen2_moe", {{"num_hidden_layers", 1}, {"layer_types", {"mamba"}}}),
       "\"layer_types[0]\" is \"mamba\": expected full_attention or sliding_attention"},
      {"zero window", j("mixtral", {{"sliding_window", 0}}),
       "\"sliding_window\" must be in [1, 2147483647], got 0"},
      {"dtype", j("qwen3_moe", {{"torch_dtype", "float64"}}),
       "\"torch_dtype\" is \"float64\": supported dtypes are float32, float16, bfloat16"},
      {"gptq", j("qwen3_moe", {{"quantization_config", {{"quant_method", "gptq"}, {"bits", 4}}}}),
       "\"quantization_config.quant_method\" is \"gptq\": only block-wise \"fp8\" quantization is "
       "supported"},
      {"quant_method missing", j("deepseek_v3", {{"quantization_config", {{"fmt", "e4m3"}}}}),
       "\"quantization_config.quant_method\" is missing"},
      {"fp8 e5m2",
       j("deepseek_v3", {{"quantization_config", {{"quant_method", "fp8"}, {"fmt", "e5m2"}}}}),
       "\"quantization_config.fmt\" is \"e5m2\": only \"e4m3\" is supported"},
      {"static activations",
       j("deepseek_v3",
         {{"quantization_config", {{"quant_method", "fp8"}, {"activation_scheme", "STATIC"}}}}),
       "\"quantization_config.activation_scheme\" is \"static\": only \"dynamic\" is supported"},
      {"block size",
       j("deepseek_v3",
         {{"quantization_config", {{"quant_method", "fp8"}, {"weight_block_size", {128}}}}}),
       "\"quantization_config.weight_block_size\" must be a list of two integers or null, got "
       "array [128]"},
      {"block size zero",
       j("deepseek_v3",
         {{"quantization_config", {{"quant_method", "fp8"}, {"weight_block_size", {128, 0}}}}}),
       "\"quantization_config.weight_block_size[1]\" must be in [1, 2147483647], got 0"},
      {"ue8m0 scales",
       j("deepseek_v3",
         {{"quantization_config", {{"quant_method", "fp8"}, {"scale_fmt", "ue8m0"}}}}),
       "\"quantization_config.scale_fmt\" is \"ue8m0\": only \"float\" scales are supported"},
  };
  for (const ErrorCase& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_THAT(ParseModelConfig(c.text, "cfg.json"),
                StatusIs(absl::StatusCode::kInvalidArgument, c.message));
  }
}

TEST(ModelConfigErrorTest, ValidateChecksAHandBuiltConfig) {
  ModelConfig c = ModelConfig::Defaults(Architecture::kDeepseekV3);
  EXPECT_OK(c.Validate());
  c.topk_group = 9;
  EXPECT_THAT(c.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "\"topk_group\" (9)"));
  c = ModelConfig::Defaults(Architecture::kQwen3Moe);
  c.layer_types.pop_back();
  EXPECT_THAT(c.Validate(), StatusIs(absl::StatusCode::kInvalidArgument,
                                     "\"layer_types\" has 23 entries but num_hidden_layers is 24"));
  c = ModelConfig::Defaults(Architecture::kMixtral);
  c.quantization_config = Fp8QuantizationConfig{.quant_method = "awq"};
  EXPECT_THAT(c.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "\"awq\""));
}

// Every key the parser reads, set to every JSON type and some extreme values,
// for every architecture and inside the nested objects: the parser must answer
// OK or INVALID_ARGUMENT, never throw or crash.
TEST(ModelConfigErrorTest, SurvivesHostileValuesInEveryField) {
  const std::vector<std::string> keys = {"vocab_size",
                                         "hidden_size",
                                         "intermediate_size",
                                         "num_hidden_layers",
                                         "num_attention_heads",
                                         "num_key_value_heads",
                                         "head_dim",
                                         "max_position_embeddings",
                                         "rms_norm_eps",
                                         "hidden_act",
                                         "tie_word_embeddings",
                                         "bos_token_id",
                                         "pad_token_id",
                                         "eos_token_id",
                                         "num_experts",
                                         "num_local_experts",
                                         "n_routed_experts",
                                         "num_experts_per_tok",
                                         "moe_intermediate_size",
                                         "shared_expert_intermediate_size",
                                         "decoder_sparse_step",
                                         "mlp_only_layers",
                                         "norm_topk_prob",
                                         "router_aux_loss_coef",
                                         "use_sliding_window",
                                         "sliding_window",
                                         "max_window_layers",
                                         "layer_types",
                                         "qkv_bias",
                                         "attention_bias",
                                         "clip_qkv",
                                         "q_lora_rank",
                                         "kv_lora_rank",
                                         "qk_nope_head_dim",
                                         "qk_rope_head_dim",
                                         "v_head_dim",
                                         "n_shared_experts",
                                         "routed_scaling_factor",
                                         "first_k_dense_replace",
                                         "n_group",
                                         "topk_group",
                                         "moe_layer_freq",
                                         "scoring_func",
                                         "topk_method",
                                         "mlp_bias",
                                         "rope_interleave",
                                         "num_mtp_layers",
                                         "num_nextn_predict_layers",
                                         "rope_theta",
                                         "rope_scaling",
                                         "rope_parameters",
                                         "partial_rotary_factor",
                                         "torch_dtype",
                                         "dtype",
                                         "quantization_config",
                                         "model_type"};
  const std::vector<std::string> rope_keys = {"rope_type",
                                              "type",
                                              "rope_theta",
                                              "factor",
                                              "original_max_position_embeddings",
                                              "attention_factor",
                                              "beta_fast",
                                              "beta_slow",
                                              "mscale",
                                              "mscale_all_dim",
                                              "truncate",
                                              "partial_rotary_factor",
                                              "full_attention"};
  const std::vector<std::string> quant_keys = {
      "quant_method",      "fmt",          "activation_scheme",      "weight_block_size",
      "scale_fmt",         "expert_dtype", "modules_to_not_convert", "ignored_layers",
      "modules_to_convert"};
  const std::vector<json> values = {nullptr,
                                    true,
                                    false,
                                    0,
                                    -1,
                                    1,
                                    3,
                                    7,
                                    1.5,
                                    -2.5,
                                    1e300,
                                    -1e300,
                                    9223372036854775807LL,
                                    18446744073709551615ULL,
                                    "",
                                    "silu",
                                    "yarn",
                                    "fp8",
                                    "\xff\xfe",
                                    json::array(),
                                    json::array({1, 2}),
                                    json::array({"a"}),
                                    json::object(),
                                    json({{"a", 1}})};
  int parsed = 0;
  for (Architecture a : kArchitectures) {
    for (const json& value : values) {
      for (const std::string& key : keys) {
        json j = Config(ModelTypeName(a), {{"num_experts_per_tok", 2}});
        j[key] = value;
        const auto r =
            ParseModelConfig(j.dump(-1, ' ', false, json::error_handler_t::replace), "cfg.json");
        EXPECT_TRUE(r.ok() || r.status().code() == absl::StatusCode::kInvalidArgument)
            << key << " " << r.status();
        ++parsed;
      }
      for (const char* nest : {"rope_parameters", "rope_scaling"}) {
        for (const std::string& key : rope_keys) {
          json j = Config(ModelTypeName(a), {{"num_experts_per_tok", 2}});
          j[nest] = {{"rope_type", "yarn"}, {"factor", 4}};
          j[nest][key] = value;
          const auto r =
              ParseModelConfig(j.dump(-1, ' ', false, json::error_handler_t::replace), "cfg.json");
          EXPECT_TRUE(r.ok() || r.status().code() == absl::StatusCode::kInvalidArgument)
              << nest << "." << key << " " << r.status();
        }
      }
      for (const std::string& key : quant_keys) {
        json j = Config(ModelTypeName(a), {{"num_experts_per_tok", 2}});
        j["quantization_config"] = {{"quant_method", "fp8"}};
        j["quantization_config"][key] = value;
        const auto r =
            ParseModelConfig(j.dump(-1, ' ', false, json::error_handler_t::replace), "cfg.json");
        EXPECT_TRUE(r.ok() || r.status().code() == absl::StatusCode::kInvalidArgument)
            << "quantization_config." << key << " " << r.status();
      }
    }
  }
  EXPECT_GT(parsed, 1000);

  // Byte-level mutations of a real config.
  std::mt19937 rng(7);
  const std::string base = kDeepseekV3Hub;
  const std::string alphabet = "{}[]\",:0123456789.-eEtruefalsn \xff";
  for (int i = 0; i < 3000; ++i) {
    std::string text = base;
    for (int k = 0; k < 1 + static_cast<int>(rng() % 4); ++k) {
      text[rng() % text.size()] = alphabet[rng() % alphabet.size()];
    }
    const auto r = ParseModelConfig(text, "fuzz");
    EXPECT_TRUE(r.ok() || r.status().code() == absl::StatusCode::kInvalidArgument) << r.status();
  }
}

TEST(ModelConfigExpertNameTest, ParsesBothNamingSchemesAndTheFusedLayout) {
  using P = ExpertProjection;
  using K = ExpertTensorKind;
  const std::pair<const char*, std::optional<ExpertTensorRef>> cases[] = {
      {"model.layers.3.mlp.experts.17.gate_proj.weight",
       ExpertTensorRef{3, 17, P::kGate, K::kWeight}},
      {"model.layers.3.mlp.experts.17.up_proj.weight", ExpertTensorRef{3, 17, P::kUp, K::kWeight}},
      {"model.layers.60.mlp.experts.255.down_proj.weight",
       ExpertTensorRef{60, 255, P::kDown, K::kWeight}},
      {"model.layers.3.mlp.experts.0.gate_proj.weight_scale_inv",
       ExpertTensorRef{3, 0, P::kGate, K::kWeightScaleInv}},
      {"model.layers.61.mlp.experts.9.down_proj.weight_scale_inv",
       ExpertTensorRef{61, 9, P::kDown, K::kWeightScaleInv}},
      {"model.layers.0.block_sparse_moe.experts.7.w1.weight",
       ExpertTensorRef{0, 7, P::kGate, K::kWeight}},
      {"model.layers.0.block_sparse_moe.experts.7.w3.weight",
       ExpertTensorRef{0, 7, P::kUp, K::kWeight}},
      {"model.layers.31.block_sparse_moe.experts.7.w2.weight",
       ExpertTensorRef{31, 7, P::kDown, K::kWeight}},
      {"model.layers.1.mlp.experts.gate_up_proj",
       ExpertTensorRef{1, std::nullopt, P::kGateUp, K::kWeight}},
      {"model.layers.1.mlp.experts.down_proj",
       ExpertTensorRef{1, std::nullopt, P::kDown, K::kWeight}},
      {"model.layers.1.mlp.experts.gate_up_proj_scale_inv",
       ExpertTensorRef{1, std::nullopt, P::kGateUp, K::kWeightScaleInv}},
      {"model.layers.1.mlp.experts.down_proj_scale_inv",
       ExpertTensorRef{1, std::nullopt, P::kDown, K::kWeightScaleInv}},
      {"layers.2.mlp.experts.3.up_proj.weight", ExpertTensorRef{2, 3, P::kUp, K::kWeight}},
      // Not routed-expert tensors.
      {"model.layers.3.mlp.gate.weight", std::nullopt},
      {"model.layers.3.mlp.gate.e_score_correction_bias", std::nullopt},
      {"model.layers.3.mlp.shared_experts.gate_proj.weight", std::nullopt},
      {"model.layers.3.mlp.shared_expert.down_proj.weight", std::nullopt},
      {"model.layers.3.mlp.shared_expert_gate.weight", std::nullopt},
      {"model.layers.0.mlp.gate_proj.weight", std::nullopt},
      {"model.layers.0.block_sparse_moe.gate.weight", std::nullopt},
      {"model.layers.0.self_attn.q_proj.weight", std::nullopt},
      {"model.embed_tokens.weight", std::nullopt},
      {"lm_head.weight", std::nullopt},
      // Malformed.
      {"model.layers.03.mlp.experts.1.gate_proj.weight", std::nullopt},
      {"model.layers.3.mlp.experts.01.gate_proj.weight", std::nullopt},
      {"model.layers.-3.mlp.experts.1.gate_proj.weight", std::nullopt},
      {"model.layers.3.mlp.experts.1234567890.gate_proj.weight", std::nullopt},
      {"model.layers.3.mlp.experts..gate_proj.weight", std::nullopt},
      {"model.layers.3.mlp.experts.1.gate_proj", std::nullopt},
      {"model.layers.3.mlp.experts.1.gate_proj.bias", std::nullopt},
      {"model.layers.3.mlp.experts.1.gate_proj.weight.x", std::nullopt},
      {"model.layers.3.mlp.experts.1.w1.weight", std::nullopt},
      {"model.layers.3.block_sparse_moe.experts.1.gate_proj.weight", std::nullopt},
      {"model.layers.3.block_sparse_moe.experts.gate_up_proj", std::nullopt},
      {"model.layers.3.mlp.experts.gate_up_proj.weight", std::nullopt},
      {"model.layers.3.mlp.experts.", std::nullopt},
      {"model.layers.", std::nullopt},
      {"", std::nullopt},
      {"xmodel.layers.3.mlp.experts.1.up_proj.weight", std::nullopt},
  };
  for (const auto& [name, expected] : cases) {
    EXPECT_EQ(ParseExpertTensorName(name), expected) << name;
  }
}

TEST(ModelConfigExpertNameTest, NamesRoundTrip) {
  for (Architecture a : kArchitectures) {
    for (ExpertProjection p :
         {ExpertProjection::kGate, ExpertProjection::kUp, ExpertProjection::kDown}) {
      for (ExpertTensorKind k : {ExpertTensorKind::kWeight, ExpertTensorKind::kWeightScaleInv}) {
        const std::string name = ExpertTensorName(a, 12, 34, p, k);
        EXPECT_EQ(ParseExpertTensorName(name), (ExpertTensorRef{12, 34, p, k})) << name;
      }
    }
    EXPECT_EQ(ExpertTensorName(a, 1, 2, ExpertProjection::kGateUp), "");
  }
  EXPECT_EQ(ExpertTensorName(Architecture::kMixtral, 3, 7, ExpertProjection::kGate),
            "model.layers.3.block_sparse_moe.experts.7.w1.weight");
  EXPECT_EQ(ExpertTensorName(Architecture::kDeepseekV3, 3, 7, ExpertProjection::kDown,
                             ExpertTensorKind::kWeightScaleInv),
            "model.layers.3.mlp.experts.7.down_proj.weight_scale_inv");
}

// Checkpoints written by transformers' save_pretrained, in both layouts: every
// routed-expert tensor is recognised, with the shape the config predicts, and
// nothing else is.
TEST(ModelConfigExpertNameTest, RecognisesWhatTransformersSaves) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(const std::string out,
                       RunPython("tests/testutil/make_configs.py", {"tensors", dir.path()}));
  const json checkpoints = json::parse(out);
  ASSERT_EQ(checkpoints.size(), 12u);
  for (const json& checkpoint : checkpoints) {
    const std::string layout = checkpoint["layout"].get<std::string>();
    SCOPED_TRACE(checkpoint["architecture"].get<std::string>() + " " + layout);
    const std::string path = checkpoint["path"].get<std::string>();
    ASSERT_OK_AND_ASSIGN(const ModelConfig c, LoadModelConfig(path.substr(0, path.rfind('/'))));
    const int64_t e = c.num_routed_experts, i = c.moe_intermediate_size, h = c.hidden_size;
    std::set<std::tuple<int64_t, int64_t, ExpertProjection>> found;
    for (const auto& [name, info] : checkpoint["tensors"].items()) {
      const auto shape = info["shape"].get<std::vector<int64_t>>();
      const std::optional<ExpertTensorRef> ref = ParseExpertTensorName(name);
      if (!ref.has_value()) {
        EXPECT_EQ(name.find("mlp.experts."), std::string::npos) << name;
        EXPECT_EQ(name.find("block_sparse_moe.experts."), std::string::npos) << name;
        continue;
      }
      EXPECT_TRUE(c.IsMoeLayer(static_cast<int>(ref->layer))) << name;
      EXPECT_EQ(ref->kind, ExpertTensorKind::kWeight) << name;
      if (layout == "fused") {
        ASSERT_FALSE(ref->expert.has_value()) << name;
        const std::vector<int64_t> expected = ref->projection == ExpertProjection::kGateUp
                                                  ? std::vector<int64_t>{e, 2 * i, h}
                                                  : std::vector<int64_t>{e, h, i};
        EXPECT_EQ(shape, expected) << name;
        found.insert({ref->layer, -1, ref->projection});
      } else {
        ASSERT_TRUE(ref->expert.has_value()) << name;
        EXPECT_LT(*ref->expert, e) << name;
        const std::vector<int64_t> expected = ref->projection == ExpertProjection::kDown
                                                  ? std::vector<int64_t>{h, i}
                                                  : std::vector<int64_t>{i, h};
        EXPECT_EQ(shape, expected) << name;
        EXPECT_EQ(ExpertTensorName(c.architecture, ref->layer, *ref->expert, ref->projection),
                  name);
        found.insert({ref->layer, *ref->expert, ref->projection});
      }
    }
    const int64_t per_layer = layout == "fused" ? 2 : 3 * e;
    EXPECT_EQ(static_cast<int64_t>(found.size()), c.NumMoeLayers() * per_layer);
  }
}

}  // namespace
}  // namespace premoe::checkpoint
