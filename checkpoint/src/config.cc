#include "premoe/checkpoint/config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <exception>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "premoe/common/file.h"
#include "premoe/common/json.h"
#include "premoe/common/status.h"

namespace premoe::checkpoint {
namespace {

using json = nlohmann::json;

constexpr Architecture kAllArchitectures[] = {
    Architecture::kQwen3Moe, Architecture::kQwen2Moe,   Architecture::kMixtral,
    Architecture::kOlmoe,    Architecture::kDeepseekV2, Architecture::kDeepseekV3,
};

bool IsQwen(Architecture a) { return a == Architecture::kQwen3Moe || a == Architecture::kQwen2Moe; }
bool IsDeepseek(Architecture a) {
  return a == Architecture::kDeepseekV2 || a == Architecture::kDeepseekV3;
}

// A short rendering of a JSON value for error messages. dump() throws on
// invalid UTF-8 unless told to replace it, and hostile configs may hold any
// bytes, so the handler is explicit.
std::string Describe(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 64) text = text.substr(0, 61) + "...";
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return text;
    case json::value_t::array:
      return "array " + text;
    case json::value_t::object:
      return "object " + text;
    case json::value_t::string:
      return "string " + text;
    default:
      return "number " + text;
  }
}

// A string value quoted for a message, bounded in length and UTF-8-safe.
std::string Quote(const std::string& value) {
  std::string text = json(value).dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 64) text = text.substr(0, 60) + "...\"";
  return text;
}

absl::Status TypeError(absl::string_view field, absl::string_view expected, const json& value) {
  return absl::InvalidArgumentError(
      absl::StrCat("\"", field, "\" must be ", expected, ", got ", Describe(value)));
}

absl::Status ValueError(absl::string_view field, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("\"", field, "\" ", message));
}

// JSON integers that fit int64. nlohmann stores big positives as unsigned and
// integers beyond uint64 as floats; both are refused rather than wrapped.
absl::StatusOr<int64_t> AsInt(absl::string_view field, const json& value) {
  if (value.is_number_unsigned()) {
    const auto u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TypeError(field, "an integer within int64", value);
    }
    return static_cast<int64_t>(u);
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  return TypeError(field, "an integer", value);
}

// HF's strict dataclasses refuse an int for a float field; JSON writers
// routinely emit 10000 for 10000.0, so integers are accepted here.
absl::StatusOr<double> AsDouble(absl::string_view field, const json& value) {
  if (!value.is_number()) return TypeError(field, "a number", value);
  const double d = value.get<double>();
  if (!std::isfinite(d)) return TypeError(field, "a finite number", value);
  return d;
}

// Typed, never-throwing access to the keys of one JSON object. Every accessor
// leaves its output untouched when the key is absent (so it keeps the HF
// default) and names the key, prefixed by `scope`, in errors.
class FieldReader {
 public:
  FieldReader(const json& object, std::string scope) : object_(object), scope_(std::move(scope)) {}

  const json* Find(absl::string_view key) const {
    auto it = object_.find(std::string(key));
    return it == object_.end() ? nullptr : &*it;
  }
  bool Has(absl::string_view key) const { return Find(key) != nullptr; }
  std::string Name(absl::string_view key) const { return absl::StrCat(scope_, key); }

  absl::Status Int(absl::string_view key, int64_t* out) const {
    const json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    ASSIGN_OR_RETURN(*out, AsInt(Name(key), *v));
    return absl::OkStatus();
  }
  // null -> nullopt.
  absl::Status OptionalInt(absl::string_view key, std::optional<int64_t>* out) const {
    const json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (v->is_null()) {
      out->reset();
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(*out, AsInt(Name(key), *v));
    return absl::OkStatus();
  }
  absl::Status Double(absl::string_view key, double* out) const {
    const json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    ASSIGN_OR_RETURN(*out, AsDouble(Name(key), *v));
    return absl::OkStatus();
  }
  absl::Status OptionalDouble(absl::string_view key, std::optional<double>* out) const {
    const json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (v->is_null()) {
      out->reset();
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(*out, AsDouble(Name(key), *v));
    return absl::OkStatus();
  }
  absl::Status Bool(absl::string_view key, bool* out) const {
    const json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_boolean()) return TypeError(Name(key), "true or false", *v);
    *out = v->get<bool>();
    return absl::OkStatus();
  }
  // For HF `bool | None` fields the modeling code tests for truth: null is false.
  absl::Status NullableBool(absl::string_view key, bool* out) const {
    const json* v = Find(key);
    if (v != nullptr && v->is_null()) {
      *out = false;
      return absl::OkStatus();
    }
    return Bool(key, out);
  }
  absl::Status String(absl::string_view key, std::string* out) const {
    const json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_string()) return TypeError(Name(key), "a string", *v);
    *out = v->get<std::string>();
    return absl::OkStatus();
  }
  absl::Status OptionalString(absl::string_view key, std::optional<std::string>* out) const {
    const json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (v->is_null()) {
      out->reset();
      return absl::OkStatus();
    }
    if (!v->is_string()) return TypeError(Name(key), "a string or null", *v);
    *out = v->get<std::string>();
    return absl::OkStatus();
  }
  // null -> empty.
  absl::Status IntList(absl::string_view key, std::vector<int64_t>* out) const {
    const json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    out->clear();
    if (v->is_null()) return absl::OkStatus();
    if (!v->is_array()) return TypeError(Name(key), "a list of integers", *v);
    for (size_t i = 0; i < v->size(); ++i) {
      ASSIGN_OR_RETURN(int64_t item, AsInt(absl::StrCat(Name(key), "[", i, "]"), (*v)[i]));
      out->push_back(item);
    }
    return absl::OkStatus();
  }
  // HF `int | list[int] | None` (eos_token_id); null -> empty.
  absl::Status IntOrIntList(absl::string_view key, std::vector<int64_t>* out) const {
    const json* v = Find(key);
    if (v == nullptr || v->is_array() || v->is_null()) return IntList(key, out);
    if (!v->is_number()) return TypeError(Name(key), "an integer or a list of integers", *v);
    ASSIGN_OR_RETURN(int64_t item, AsInt(Name(key), *v));
    *out = {item};
    return absl::OkStatus();
  }
  absl::Status StringList(absl::string_view key, std::vector<std::string>* out) const {
    const json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    out->clear();
    if (v->is_null()) return absl::OkStatus();
    if (!v->is_array()) return TypeError(Name(key), "a list of strings", *v);
    for (size_t i = 0; i < v->size(); ++i) {
      if (!(*v)[i].is_string()) {
        return TypeError(absl::StrCat(Name(key), "[", i, "]"), "a string", (*v)[i]);
      }
      out->push_back((*v)[i].get<std::string>());
    }
    return absl::OkStatus();
  }

 private:
  const json& object_;
  std::string scope_;
};

absl::Status CheckRange(absl::string_view field, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) {
    return ValueError(field, absl::StrCat("must be in [", lo, ", ", hi, "], got ", value));
  }
  return absl::OkStatus();
}

absl::Status CheckPositive(absl::string_view field, int64_t value) {
  return CheckRange(field, value, 1, kMaxConfigDimension);
}

absl::Status CheckPositiveFinite(absl::string_view field, double value) {
  if (!(std::isfinite(value) && value > 0)) {
    return ValueError(field, absl::StrCat("must be a positive finite number, got ", value));
  }
  return absl::OkStatus();
}

double GetMscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// Mirrors RotaryEmbeddingConfigMixin.convert_rope_params_to_dict +
// standardize_rope_params, then the parts of the RoPE initialisers that
// resolve defaults (_compute_yarn_parameters).
absl::Status ReadRope(const FieldReader& top, Architecture arch, int64_t max_position_embeddings,
                      RopeParameters* rope) {
  // A non-empty legacy rope_scaling replaces rope_parameters wholesale
  // (`rope_scaling or self.rope_parameters`).
  const json* source = nullptr;
  std::string scope;
  if (const json* scaling = top.Find("rope_scaling"); scaling != nullptr) {
    if (!scaling->is_null() && !scaling->is_object()) {
      return TypeError("rope_scaling", "an object or null", *scaling);
    }
    if (scaling->is_object() && !scaling->empty()) {
      source = scaling;
      scope = "rope_scaling.";
    }
  }
  if (source == nullptr) {
    if (const json* params = top.Find("rope_parameters"); params != nullptr) {
      if (!params->is_null() && !params->is_object()) {
        return TypeError("rope_parameters", "an object or null", *params);
      }
      if (params->is_object()) {
        source = params;
        scope = "rope_parameters.";
      }
    }
  }
  static const json kEmpty = json::object();
  const FieldReader dict(source != nullptr ? *source : kEmpty, scope);

  for (const char* layer_type : {"full_attention", "sliding_attention"}) {
    if (const json* nested = dict.Find(layer_type); nested != nullptr && nested->is_object()) {
      return ValueError(dict.Name(layer_type),
                        "is set: per-layer-type rope parameters are not supported");
    }
  }
  for (const FieldReader* reader : {&top, &dict}) {
    std::optional<double> partial;
    RETURN_IF_ERROR(reader->OptionalDouble("partial_rotary_factor", &partial));
    if (partial.has_value() && *partial != 1.0) {
      return ValueError(reader->Name("partial_rotary_factor"),
                        absl::StrCat("is ", *partial,
                                     ": only full rotary embeddings (1.0) are "
                                     "supported"));
    }
  }

  // Priority: the dictionary's rope_theta, the top-level one, the class's
  // default_theta.
  rope->theta = arch == Architecture::kMixtral ? 1e6 : 1e4;
  RETURN_IF_ERROR(top.Double("rope_theta", &rope->theta));
  RETURN_IF_ERROR(dict.Double("rope_theta", &rope->theta));

  // setdefault("rope_type", get("type", "default")): rope_type wins.
  std::string type_name = "default";
  const std::string type_key = dict.Has("rope_type") ? "rope_type" : "type";
  RETURN_IF_ERROR(dict.String(type_key, &type_name));
  const std::string type_field = dict.Name(type_key);
  if (type_name == "default") {
    rope->type = RopeType::kDefault;
  } else if (type_name == "linear") {
    rope->type = RopeType::kLinear;
  } else if (type_name == "dynamic") {
    rope->type = RopeType::kDynamic;
  } else if (type_name == "yarn") {
    rope->type = RopeType::kYarn;
  } else {
    return ValueError(type_field, absl::StrCat("is \"", type_name,
                                               "\": supported rope types are default, linear, "
                                               "dynamic, yarn"));
  }

  // Read everything that is present, whatever the type, so that a wrong type
  // is reported and DeepSeek's mscale (used by attention for any non-default
  // type) is available.
  std::optional<double> factor;
  RETURN_IF_ERROR(dict.OptionalDouble("factor", &factor));
  // standardize_rope_params fills in max_position_embeddings only when the
  // key is absent; an explicit null would reach yarn's arithmetic as None.
  std::optional<int64_t> original_max = max_position_embeddings;
  RETURN_IF_ERROR(dict.OptionalInt("original_max_position_embeddings", &original_max));
  if (!original_max.has_value() && rope->type == RopeType::kYarn) {
    return TypeError(dict.Name("original_max_position_embeddings"), "an integer",
                     *dict.Find("original_max_position_embeddings"));
  }
  rope->original_max_position_embeddings = original_max.value_or(max_position_embeddings);
  std::optional<double> attention_factor, beta_fast, beta_slow, mscale, mscale_all_dim;
  RETURN_IF_ERROR(dict.OptionalDouble("attention_factor", &attention_factor));
  RETURN_IF_ERROR(dict.OptionalDouble("beta_fast", &beta_fast));
  RETURN_IF_ERROR(dict.OptionalDouble("beta_slow", &beta_slow));
  RETURN_IF_ERROR(dict.OptionalDouble("mscale", &mscale));
  RETURN_IF_ERROR(dict.OptionalDouble("mscale_all_dim", &mscale_all_dim));
  // HF reads `get("truncate", True)`: an explicit null is falsy.
  rope->truncate = true;
  RETURN_IF_ERROR(dict.NullableBool("truncate", &rope->truncate));

  // `value or default`, as _compute_yarn_parameters writes it.
  rope->beta_fast = beta_fast.value_or(0.0) != 0.0 ? *beta_fast : 32.0;
  rope->beta_slow = beta_slow.value_or(0.0) != 0.0 ? *beta_slow : 1.0;
  rope->mscale = mscale.value_or(0.0);
  rope->mscale_all_dim = mscale_all_dim.value_or(0.0);

  if (rope->type == RopeType::kDefault) {
    rope->factor = 1.0;
    rope->attention_factor = 1.0;
    return absl::OkStatus();
  }
  if (!factor.has_value()) {
    return ValueError(dict.Name("factor"), absl::StrCat("is required for rope type ", type_name));
  }
  rope->factor = *factor;
  if (rope->type != RopeType::kYarn) {
    rope->attention_factor = 1.0;
    return absl::OkStatus();
  }
  if (attention_factor.has_value()) {
    rope->attention_factor = *attention_factor;
  } else if (rope->mscale != 0.0 && rope->mscale_all_dim != 0.0) {
    rope->attention_factor =
        GetMscale(rope->factor, rope->mscale) / GetMscale(rope->factor, rope->mscale_all_dim);
  } else {
    rope->attention_factor = GetMscale(rope->factor, 1.0);
  }
  return absl::OkStatus();
}

absl::Status ReadQuantization(const FieldReader& top, std::optional<Fp8QuantizationConfig>* out) {
  const json* q = top.Find("quantization_config");
  if (q == nullptr || q->is_null()) return absl::OkStatus();
  if (!q->is_object()) return TypeError("quantization_config", "an object or null", *q);
  const FieldReader r(*q, "quantization_config.");
  Fp8QuantizationConfig fp8;
  if (!r.Has("quant_method")) {
    return ValueError(r.Name("quant_method"), "is missing");
  }
  RETURN_IF_ERROR(r.String("quant_method", &fp8.quant_method));
  if (fp8.quant_method != "fp8") {
    return ValueError(r.Name("quant_method"),
                      absl::StrCat("is \"", fp8.quant_method,
                                   "\": only block-wise \"fp8\" quantization is supported"));
  }
  std::optional<std::string> fmt, activation_scheme, scale_fmt, expert_dtype;
  RETURN_IF_ERROR(r.OptionalString("fmt", &fmt));
  RETURN_IF_ERROR(r.OptionalString("activation_scheme", &activation_scheme));
  RETURN_IF_ERROR(r.OptionalString("scale_fmt", &scale_fmt));
  RETURN_IF_ERROR(r.OptionalString("expert_dtype", &expert_dtype));
  if (fmt.has_value()) fp8.fmt = *fmt;
  if (activation_scheme.has_value()) {
    // HF lower-cases the scheme before checking it.
    fp8.activation_scheme = *activation_scheme;
    for (char& c : fp8.activation_scheme) c = static_cast<char>(std::tolower(c));
  }
  if (scale_fmt.has_value() && *scale_fmt != "float") {
    return ValueError(r.Name("scale_fmt"),
                      absl::StrCat("is \"", *scale_fmt, "\": only \"float\" scales are supported"));
  }
  if (expert_dtype.has_value() && *expert_dtype != "fp8") {
    return ValueError(r.Name("expert_dtype"),
                      absl::StrCat("is \"", *expert_dtype, "\": only \"fp8\" is supported"));
  }
  if (const json* block = r.Find("weight_block_size"); block != nullptr) {
    if (block->is_null()) {
      fp8.weight_block_size.reset();
    } else if (!block->is_array() || block->size() != 2) {
      return TypeError(r.Name("weight_block_size"), "a list of two integers or null", *block);
    } else {
      std::array<int64_t, 2> size{};
      for (size_t i = 0; i < 2; ++i) {
        ASSIGN_OR_RETURN(
            size[i], AsInt(absl::StrCat(r.Name("weight_block_size"), "[", i, "]"), (*block)[i]));
      }
      fp8.weight_block_size = size;
    }
  }
  RETURN_IF_ERROR(r.StringList("ignored_layers", &fp8.modules_to_not_convert));
  RETURN_IF_ERROR(r.StringList("modules_to_not_convert", &fp8.modules_to_not_convert));
  std::vector<std::string> modules_to_convert;
  RETURN_IF_ERROR(r.StringList("modules_to_convert", &modules_to_convert));
  if (!modules_to_convert.empty()) {
    return ValueError(r.Name("modules_to_convert"),
                      "is set: quantizing modules beyond the Linear layers is not supported");
  }
  *out = std::move(fp8);
  return absl::OkStatus();
}

absl::StatusOr<TorchDtype> ParseTorchDtype(absl::string_view field, const std::string& name) {
  if (name == "float32" || name == "float") return TorchDtype::kFloat32;
  if (name == "float16" || name == "half") return TorchDtype::kFloat16;
  if (name == "bfloat16") return TorchDtype::kBFloat16;
  return ValueError(
      field, absl::StrCat("is \"", name, "\": supported dtypes are float32, float16, bfloat16"));
}

absl::StatusOr<ModelConfig> ParseObject(const json& root) {
  if (!root.is_object()) return TypeError("(top level)", "an object", root);
  const FieldReader top(root, "");

  const json* model_type = top.Find("model_type");
  if (model_type == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "missing required field \"model_type\" (supported: ", SupportedModelTypes(), ")"));
  }
  if (!model_type->is_string()) return TypeError("model_type", "a string", *model_type);
  const std::optional<Architecture> arch =
      ArchitectureFromModelType(model_type->get<std::string>());
  if (!arch.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported model_type ",
                                                   Quote(model_type->get<std::string>()),
                                                   " (supported: ", SupportedModelTypes(), ")"));
  }
  const Architecture a = *arch;
  ModelConfig c = ModelConfig::Defaults(a);

  RETURN_IF_ERROR(top.Int("vocab_size", &c.vocab_size));
  RETURN_IF_ERROR(top.Int("hidden_size", &c.hidden_size));
  RETURN_IF_ERROR(top.Int("intermediate_size", &c.intermediate_size));
  RETURN_IF_ERROR(top.Int("num_hidden_layers", &c.num_hidden_layers));
  RETURN_IF_ERROR(top.Int("num_attention_heads", &c.num_attention_heads));
  RETURN_IF_ERROR(top.Int("max_position_embeddings", &c.max_position_embeddings));
  RETURN_IF_ERROR(top.Double("rms_norm_eps", &c.rms_norm_eps));
  RETURN_IF_ERROR(top.String("hidden_act", &c.hidden_act));
  // ACT2FN maps both names to nn.SiLU.
  if (c.hidden_act == "swish") c.hidden_act = "silu";
  RETURN_IF_ERROR(top.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  RETURN_IF_ERROR(top.OptionalInt("bos_token_id", &c.bos_token_id));
  RETURN_IF_ERROR(top.OptionalInt("pad_token_id", &c.pad_token_id));
  RETURN_IF_ERROR(top.IntOrIntList("eos_token_id", &c.eos_token_ids));

  // The dims must be sane before anything divides by them or sizes a vector.
  if (c.num_attention_heads <= 0) {
    return ValueError("num_attention_heads",
                      absl::StrCat("must be positive, got ", c.num_attention_heads));
  }
  if (c.num_hidden_layers <= 0 || c.num_hidden_layers > kMaxConfigLayers) {
    return ValueError("num_hidden_layers", absl::StrCat("must be in [1, ", kMaxConfigLayers,
                                                        "], got ", c.num_hidden_layers));
  }

  // num_key_value_heads: null means "as many as query heads" where the class
  // resolves it in __post_init__; qwen3_moe's strict int refuses null, and
  // qwen2_moe would divide by None.
  if (IsQwen(a)) {
    RETURN_IF_ERROR(top.Int("num_key_value_heads", &c.num_key_value_heads));
  } else {
    std::optional<int64_t> kv = c.num_key_value_heads;
    RETURN_IF_ERROR(top.OptionalInt("num_key_value_heads", &kv));
    c.num_key_value_heads = kv.value_or(c.num_attention_heads);
  }

  // Expert count: the dataclass field first, then its attribute_map alias,
  // which HF sets afterwards and so wins.
  switch (a) {
    case Architecture::kQwen3Moe:
    case Architecture::kOlmoe:
      RETURN_IF_ERROR(top.Int("num_experts", &c.num_routed_experts));
      RETURN_IF_ERROR(top.Int("num_local_experts", &c.num_routed_experts));
      break;
    case Architecture::kQwen2Moe:
      RETURN_IF_ERROR(top.Int("num_experts", &c.num_routed_experts));
      break;
    case Architecture::kMixtral:
      RETURN_IF_ERROR(top.Int("num_local_experts", &c.num_routed_experts));
      RETURN_IF_ERROR(top.Int("num_experts", &c.num_routed_experts));
      break;
    case Architecture::kDeepseekV2:
      RETURN_IF_ERROR(top.Int("n_routed_experts", &c.num_routed_experts));
      RETURN_IF_ERROR(top.Int("num_experts", &c.num_routed_experts));
      break;
    case Architecture::kDeepseekV3:
      RETURN_IF_ERROR(top.Int("n_routed_experts", &c.num_routed_experts));
      RETURN_IF_ERROR(top.Int("num_local_experts", &c.num_routed_experts));
      break;
  }

  // deepseek declares `int | None` but its router cannot run without a top-k.
  if (a == Architecture::kDeepseekV2 && !top.Has("num_experts_per_tok")) {
    return absl::InvalidArgumentError(
        "missing required field \"num_experts_per_tok\" (deepseek_v2 has no default for it)");
  }
  RETURN_IF_ERROR(top.Int("num_experts_per_tok", &c.num_experts_per_tok));

  if (a == Architecture::kMixtral || a == Architecture::kOlmoe) {
    c.moe_intermediate_size = c.intermediate_size;
  } else {
    RETURN_IF_ERROR(top.Int("moe_intermediate_size", &c.moe_intermediate_size));
  }

  // head_dim: see the field's contract for the per-architecture getattr rules.
  const bool head_dim_divides = c.hidden_size % c.num_attention_heads == 0;
  const auto derive_head_dim = [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckPositive("hidden_size", c.hidden_size));
    if (!head_dim_divides) {
      return ValueError("num_attention_heads",
                        absl::StrCat("(", c.num_attention_heads, ") must divide hidden_size (",
                                     c.hidden_size, ") when head_dim is not given"));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
    return absl::OkStatus();
  };
  switch (a) {
    case Architecture::kQwen3Moe:
    case Architecture::kQwen2Moe:
    case Architecture::kOlmoe:
      if (top.Has("head_dim")) {
        RETURN_IF_ERROR(top.Int("head_dim", &c.head_dim));
      } else {
        RETURN_IF_ERROR(derive_head_dim());
      }
      break;
    case Architecture::kMixtral: {
      std::optional<int64_t> head_dim;
      RETURN_IF_ERROR(top.OptionalInt("head_dim", &head_dim));
      if (head_dim.has_value() && *head_dim != 0) {
        c.head_dim = *head_dim;
      } else {
        RETURN_IF_ERROR(derive_head_dim());
      }
      break;
    }
    case Architecture::kDeepseekV2:
    case Architecture::kDeepseekV3:
      break;  // below, from qk_rope_head_dim
  }

  if (IsQwen(a)) {
    RETURN_IF_ERROR(top.Int("decoder_sparse_step", &c.decoder_sparse_step));
    RETURN_IF_ERROR(top.IntList("mlp_only_layers", &c.mlp_only_layers));
    RETURN_IF_ERROR(top.Bool("norm_topk_prob", &c.norm_topk_prob));
    RETURN_IF_ERROR(top.Double("router_aux_loss_coef", &c.router_aux_loss_coef));
    RETURN_IF_ERROR(top.Bool("use_sliding_window", &c.use_sliding_window));
    std::optional<int64_t> window = 4096;
    RETURN_IF_ERROR(top.OptionalInt("sliding_window", &window));
    // HF stores None (qwen3_moe) or 0 (qwen2_moe) when the window is off.
    c.sliding_window = c.use_sliding_window ? window : std::nullopt;
  }

  switch (a) {
    case Architecture::kQwen3Moe:
      RETURN_IF_ERROR(top.Bool("attention_bias", &c.attention_bias));
      c.layer_types.assign(c.num_hidden_layers, c.sliding_window.has_value()
                                                    ? AttentionType::kSlidingWindow
                                                    : AttentionType::kFull);
      break;
    case Architecture::kQwen2Moe: {
      RETURN_IF_ERROR(top.Bool("qkv_bias", &c.qkv_bias));
      RETURN_IF_ERROR(
          top.Int("shared_expert_intermediate_size", &c.shared_expert_intermediate_size));
      RETURN_IF_ERROR(top.Int("max_window_layers", &c.max_window_layers));
      std::vector<std::string> names;
      RETURN_IF_ERROR(top.StringList("layer_types", &names));
      if (top.Find("layer_types") != nullptr && !top.Find("layer_types")->is_null()) {
        if (static_cast<int64_t>(names.size()) != c.num_hidden_layers) {
          return ValueError("layer_types",
                            absl::StrCat("has ", names.size(), " entries but num_hidden_layers is ",
                                         c.num_hidden_layers));
        }
        c.layer_types.clear();
        for (size_t i = 0; i < names.size(); ++i) {
          // "attention" is the legacy spelling HF remaps to full_attention.
          if (names[i] == "full_attention" || names[i] == "attention") {
            c.layer_types.push_back(AttentionType::kFull);
          } else if (names[i] == "sliding_attention") {
            c.layer_types.push_back(AttentionType::kSlidingWindow);
          } else {
            return ValueError(absl::StrCat("layer_types[", i, "]"),
                              absl::StrCat("is \"", names[i],
                                           "\": expected full_attention or sliding_attention"));
          }
        }
      } else {
        // Qwen2MoeConfig.__post_init__: sliding when (i + 1) is odd.
        c.layer_types.clear();
        for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
          const bool sliding = (i + 1) % 2 == 1 && i < c.max_window_layers && c.use_sliding_window;
          c.layer_types.push_back(sliding ? AttentionType::kSlidingWindow : AttentionType::kFull);
        }
      }
      break;
    }
    case Architecture::kMixtral: {
      std::optional<int64_t> window;
      RETURN_IF_ERROR(top.OptionalInt("sliding_window", &window));
      c.sliding_window = window;
      RETURN_IF_ERROR(top.Double("router_aux_loss_coef", &c.router_aux_loss_coef));
      c.layer_types.assign(c.num_hidden_layers, c.sliding_window.has_value()
                                                    ? AttentionType::kSlidingWindow
                                                    : AttentionType::kFull);
      break;
    }
    case Architecture::kOlmoe:
      RETURN_IF_ERROR(top.Bool("attention_bias", &c.attention_bias));
      RETURN_IF_ERROR(top.OptionalDouble("clip_qkv", &c.clip_qkv));
      RETURN_IF_ERROR(top.Bool("norm_topk_prob", &c.norm_topk_prob));
      RETURN_IF_ERROR(top.Double("router_aux_loss_coef", &c.router_aux_loss_coef));
      c.layer_types.assign(c.num_hidden_layers, AttentionType::kFull);
      break;
    case Architecture::kDeepseekV2:
    case Architecture::kDeepseekV3: {
      RETURN_IF_ERROR(top.Bool("attention_bias", &c.attention_bias));
      RETURN_IF_ERROR(top.OptionalInt("q_lora_rank", &c.q_lora_rank));
      RETURN_IF_ERROR(top.Int("kv_lora_rank", &c.kv_lora_rank));
      RETURN_IF_ERROR(top.Int("qk_nope_head_dim", &c.qk_nope_head_dim));
      RETURN_IF_ERROR(top.Int("qk_rope_head_dim", &c.qk_rope_head_dim));
      RETURN_IF_ERROR(top.Int("v_head_dim", &c.v_head_dim));
      RETURN_IF_ERROR(top.Int("n_shared_experts", &c.n_shared_experts));
      RETURN_IF_ERROR(top.Double("routed_scaling_factor", &c.routed_scaling_factor));
      RETURN_IF_ERROR(top.Int("first_k_dense_replace", &c.first_k_dense_replace));
      RETURN_IF_ERROR(top.OptionalInt("n_group", &c.n_group));
      RETURN_IF_ERROR(top.OptionalInt("topk_group", &c.topk_group));
      RETURN_IF_ERROR(top.Int("moe_layer_freq", &c.moe_layer_freq));
      c.head_dim = c.qk_rope_head_dim;
      c.layer_types.assign(c.num_hidden_layers, AttentionType::kFull);

      // Keys HF ignores but DeepSeek's own code honours: a disagreement means
      // HF would run the checkpoint unlike its authors did.
      std::optional<std::string> scoring, method;
      RETURN_IF_ERROR(top.OptionalString("scoring_func", &scoring));
      RETURN_IF_ERROR(top.OptionalString("topk_method", &method));
      if (a == Architecture::kDeepseekV2) {
        bool ignored = false;
        RETURN_IF_ERROR(top.NullableBool("norm_topk_prob", &ignored));
        c.norm_topk_prob = false;
        RETURN_IF_ERROR(top.Bool("mlp_bias", &c.mlp_bias));
        if (scoring.has_value() && *scoring != "softmax") {
          return ValueError("scoring_func", absl::StrCat("is \"", *scoring,
                                                         "\" but deepseek_v2 routes by softmax"));
        }
        if (top.Has("topk_method") && !method.has_value()) {
          return TypeError("topk_method", "a string", *top.Find("topk_method"));
        }
        const std::string m = method.value_or("greedy");
        if (m == "greedy") {
          c.topk_method = TopkMethod::kGreedy;
        } else if (m == "group_limited_greedy") {
          c.topk_method = TopkMethod::kGroupLimitedGreedy;
        } else {
          return ValueError("topk_method", absl::StrCat("is \"", m,
                                                        "\": deepseek_v2 supports greedy and "
                                                        "group_limited_greedy"));
        }
      } else {
        RETURN_IF_ERROR(top.NullableBool("norm_topk_prob", &c.norm_topk_prob));
        RETURN_IF_ERROR(top.NullableBool("rope_interleave", &c.rope_interleave));
        RETURN_IF_ERROR(top.Int("num_mtp_layers", &c.num_nextn_predict_layers));
        RETURN_IF_ERROR(top.Int("num_nextn_predict_layers", &c.num_nextn_predict_layers));
        if (scoring.has_value() && *scoring != "sigmoid") {
          return ValueError("scoring_func", absl::StrCat("is \"", *scoring,
                                                         "\" but deepseek_v3 routes by sigmoid"));
        }
        if (method.has_value() && *method != "noaux_tc") {
          return ValueError(
              "topk_method",
              absl::StrCat("is \"", *method, "\" but deepseek_v3 always selects by noaux_tc"));
        }
        if (const json* head_dim = top.Find("head_dim"); head_dim != nullptr) {
          // HF sets this extra key after head_dim = qk_rope_head_dim, so it
          // would resize the rotary tables without resizing q/k.
          ASSIGN_OR_RETURN(int64_t value, AsInt("head_dim", *head_dim));
          if (value != c.qk_rope_head_dim) {
            return ValueError("head_dim",
                              absl::StrCat("(", value, ") must equal qk_rope_head_dim (",
                                           c.qk_rope_head_dim, ") for deepseek_v3"));
          }
        }
      }
      break;
    }
  }

  RETURN_IF_ERROR(ReadRope(top, a, c.max_position_embeddings, &c.rope));

  // "dtype" wins over the legacy "torch_dtype".
  // A null "dtype" defers to torch_dtype.
  for (const char* key : {"torch_dtype", "dtype"}) {
    std::optional<std::string> name;
    RETURN_IF_ERROR(top.OptionalString(key, &name));
    if (name.has_value()) {
      ASSIGN_OR_RETURN(c.dtype, ParseTorchDtype(key, *name));
    }
  }
  RETURN_IF_ERROR(ReadQuantization(top, &c.quantization_config));

  RETURN_IF_ERROR(c.Validate());
  return c;
}

std::string FormatDouble(double v) { return absl::StrFormat("%g", v); }

}  // namespace

absl::string_view ModelTypeName(Architecture architecture) {
  switch (architecture) {
    case Architecture::kQwen3Moe:
      return "qwen3_moe";
    case Architecture::kQwen2Moe:
      return "qwen2_moe";
    case Architecture::kMixtral:
      return "mixtral";
    case Architecture::kOlmoe:
      return "olmoe";
    case Architecture::kDeepseekV2:
      return "deepseek_v2";
    case Architecture::kDeepseekV3:
      return "deepseek_v3";
  }
  return "unknown";
}

std::optional<Architecture> ArchitectureFromModelType(absl::string_view model_type) {
  for (Architecture a : kAllArchitectures) {
    if (ModelTypeName(a) == model_type) return a;
  }
  return std::nullopt;
}

std::string SupportedModelTypes() {
  std::vector<absl::string_view> names;
  for (Architecture a : kAllArchitectures) names.push_back(ModelTypeName(a));
  return absl::StrJoin(names, ", ");
}

absl::string_view RopeTypeName(RopeType type) {
  switch (type) {
    case RopeType::kDefault:
      return "default";
    case RopeType::kLinear:
      return "linear";
    case RopeType::kDynamic:
      return "dynamic";
    case RopeType::kYarn:
      return "yarn";
  }
  return "unknown";
}

absl::string_view TopkMethodName(TopkMethod method) {
  switch (method) {
    case TopkMethod::kGreedy:
      return "greedy";
    case TopkMethod::kGroupLimitedGreedy:
      return "group_limited_greedy";
    case TopkMethod::kNoauxTc:
      return "noaux_tc";
  }
  return "unknown";
}

absl::string_view TorchDtypeName(TorchDtype dtype) {
  switch (dtype) {
    case TorchDtype::kUnspecified:
      return "";
    case TorchDtype::kFloat32:
      return "float32";
    case TorchDtype::kFloat16:
      return "float16";
    case TorchDtype::kBFloat16:
      return "bfloat16";
  }
  return "unknown";
}

ModelConfig ModelConfig::Defaults(Architecture architecture) {
  // Transcribed from configuration_<type>.py of transformers 5.24; the test
  // compares a parse of {"model_type": ...} against the classes themselves.
  ModelConfig c;
  c.architecture = architecture;
  c.hidden_act = "silu";
  c.tie_word_embeddings = false;
  c.rope = RopeParameters{};
  switch (architecture) {
    case Architecture::kQwen3Moe:
      c.vocab_size = 151936;
      c.hidden_size = 2048;
      c.intermediate_size = 6144;
      c.num_hidden_layers = 24;
      c.num_attention_heads = 32;
      c.num_key_value_heads = 4;
      c.max_position_embeddings = 32768;
      c.rms_norm_eps = 1e-6;
      c.num_routed_experts = 128;
      c.num_experts_per_tok = 8;
      c.moe_intermediate_size = 768;
      c.router_aux_loss_coef = 0.001;
      c.qk_norm = QkNorm::kPerHead;
      break;
    case Architecture::kQwen2Moe:
      c.vocab_size = 151936;
      c.hidden_size = 2048;
      c.intermediate_size = 5632;
      c.num_hidden_layers = 24;
      c.num_attention_heads = 16;
      c.num_key_value_heads = 16;
      c.max_position_embeddings = 32768;
      c.rms_norm_eps = 1e-6;
      c.num_routed_experts = 60;
      c.num_experts_per_tok = 4;
      c.moe_intermediate_size = 1408;
      c.shared_expert_intermediate_size = 5632;
      c.router_aux_loss_coef = 0.001;
      c.qkv_bias = true;
      c.max_window_layers = 28;
      break;
    case Architecture::kMixtral:
      c.vocab_size = 32000;
      c.hidden_size = 4096;
      c.intermediate_size = 14336;
      c.num_hidden_layers = 32;
      c.num_attention_heads = 32;
      c.num_key_value_heads = 8;
      c.max_position_embeddings = 4096 * 32;
      c.rms_norm_eps = 1e-5;
      c.num_routed_experts = 8;
      c.num_experts_per_tok = 2;
      c.norm_topk_prob = true;
      c.router_aux_loss_coef = 0.001;
      c.bos_token_id = 1;
      c.eos_token_ids = {2};
      c.rope.theta = 1e6;
      break;
    case Architecture::kOlmoe:
      c.vocab_size = 50304;
      c.hidden_size = 2048;
      c.intermediate_size = 2048;
      c.num_hidden_layers = 16;
      c.num_attention_heads = 16;
      c.num_key_value_heads = 16;
      c.max_position_embeddings = 4096;
      c.rms_norm_eps = 1e-5;
      c.num_routed_experts = 64;
      c.num_experts_per_tok = 8;
      c.router_aux_loss_coef = 0.01;
      c.pad_token_id = 1;
      c.eos_token_ids = {50279};
      c.qk_norm = QkNorm::kFull;
      break;
    case Architecture::kDeepseekV2:
      c.vocab_size = 102400;
      c.hidden_size = 4096;
      c.intermediate_size = 11008;
      c.num_hidden_layers = 32;
      c.num_attention_heads = 32;
      c.num_key_value_heads = 32;
      c.max_position_embeddings = 2048;
      c.rms_norm_eps = 1e-6;
      c.bos_token_id = 1;
      c.eos_token_ids = {2};
      c.kv_lora_rank = 512;
      c.q_lora_rank = 1536;
      c.num_routed_experts = 64;
      c.num_experts_per_tok = 0;  // HF: None
      c.n_shared_experts = 2;
      c.qk_nope_head_dim = 128;
      c.qk_rope_head_dim = 64;
      c.v_head_dim = 128;
      c.routed_scaling_factor = 1.0;
      c.moe_intermediate_size = 1407;
      c.rope_interleave = true;
      break;
    case Architecture::kDeepseekV3:
      c.vocab_size = 129280;
      c.hidden_size = 7168;
      c.intermediate_size = 18432;
      c.moe_intermediate_size = 2048;
      c.num_hidden_layers = 61;
      c.num_attention_heads = 128;
      c.num_key_value_heads = 128;
      c.n_shared_experts = 1;
      c.num_routed_experts = 256;
      c.routed_scaling_factor = 2.5;
      c.kv_lora_rank = 512;
      c.q_lora_rank = 1536;
      c.qk_rope_head_dim = 64;
      c.v_head_dim = 128;
      c.qk_nope_head_dim = 128;
      c.n_group = 8;
      c.topk_group = 4;
      c.num_experts_per_tok = 8;
      c.first_k_dense_replace = 3;
      c.norm_topk_prob = true;
      c.max_position_embeddings = 4096;
      c.rms_norm_eps = 1e-6;
      c.bos_token_id = 0;
      c.eos_token_ids = {1};
      c.rope_interleave = true;
      c.num_nextn_predict_layers = 1;
      c.scoring_func = RouterScoring::kSigmoid;
      c.topk_method = TopkMethod::kNoauxTc;
      break;
  }
  if (IsDeepseek(architecture)) {
    c.head_dim = c.qk_rope_head_dim;
  } else {
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (architecture == Architecture::kMixtral || architecture == Architecture::kOlmoe) {
    c.moe_intermediate_size = c.intermediate_size;
  }
  c.rope.original_max_position_embeddings = c.max_position_embeddings;
  c.layer_types.assign(c.num_hidden_layers, AttentionType::kFull);
  return c;
}

absl::Status ModelConfig::Validate() const {
  const Architecture a = architecture;
  if (ModelTypeName(a) == "unknown") {
    return absl::InvalidArgumentError(
        absl::StrCat("architecture ", static_cast<int>(a), " is not a supported model type"));
  }
  RETURN_IF_ERROR(CheckPositive("vocab_size", vocab_size));
  for (const int64_t id : eos_token_ids) {
    // An eos the model can never emit would let every request run to its
    // length limit.
    RETURN_IF_ERROR(CheckRange("eos_token_id", id, 0, vocab_size - 1));
  }
  RETURN_IF_ERROR(CheckPositive("hidden_size", hidden_size));
  RETURN_IF_ERROR(CheckPositive("intermediate_size", intermediate_size));
  RETURN_IF_ERROR(CheckRange("num_hidden_layers", num_hidden_layers, 1, kMaxConfigLayers));
  RETURN_IF_ERROR(CheckPositive("num_attention_heads", num_attention_heads));
  RETURN_IF_ERROR(CheckPositive("num_key_value_heads", num_key_value_heads));
  RETURN_IF_ERROR(CheckPositive("head_dim", head_dim));
  RETURN_IF_ERROR(CheckPositive("max_position_embeddings", max_position_embeddings));
  RETURN_IF_ERROR(CheckPositiveFinite("rms_norm_eps", rms_norm_eps));
  if (hidden_act != "silu") {
    return ValueError("hidden_act",
                      absl::StrCat("is \"", hidden_act, "\": only \"silu\" is supported"));
  }

  // Attention shapes.
  if (num_attention_heads % num_key_value_heads != 0) {
    return ValueError("num_key_value_heads",
                      absl::StrCat("(", num_key_value_heads, ") must divide num_attention_heads (",
                                   num_attention_heads, ")"));
  }
  if (IsDeepseek(a) && num_key_value_heads != num_attention_heads) {
    return ValueError("num_key_value_heads",
                      absl::StrCat("(", num_key_value_heads, ") must equal num_attention_heads (",
                                   num_attention_heads, "): MLA expands keys and values per head"));
  }
  if ((a == Architecture::kOlmoe || a == Architecture::kDeepseekV2) &&
      hidden_size % num_attention_heads != 0) {
    return ValueError(
        "num_attention_heads",
        absl::StrCat("(", num_attention_heads, ") must divide hidden_size (", hidden_size, ")"));
  }
  if (a == Architecture::kOlmoe && head_dim * num_attention_heads != hidden_size) {
    return ValueError("head_dim", absl::StrCat("(", head_dim,
                                               ") must be hidden_size / "
                                               "num_attention_heads (",
                                               hidden_size / num_attention_heads,
                                               ") for olmoe, whose q_norm spans hidden_size"));
  }
  if (head_dim % 2 != 0) {
    return ValueError("head_dim",
                      absl::StrCat("(", head_dim, ") must be even: RoPE rotates pairs"));
  }
  if (IsDeepseek(a)) {
    if (q_lora_rank.has_value()) RETURN_IF_ERROR(CheckPositive("q_lora_rank", *q_lora_rank));
    RETURN_IF_ERROR(CheckPositive("kv_lora_rank", kv_lora_rank));
    RETURN_IF_ERROR(CheckRange("qk_nope_head_dim", qk_nope_head_dim, 0, kMaxConfigDimension));
    RETURN_IF_ERROR(CheckPositive("qk_rope_head_dim", qk_rope_head_dim));
    RETURN_IF_ERROR(CheckPositive("v_head_dim", v_head_dim));
    if (head_dim != qk_rope_head_dim) {
      return ValueError("head_dim", absl::StrCat("(", head_dim, ") must equal qk_rope_head_dim (",
                                                 qk_rope_head_dim, ") for deepseek"));
    }
  }
  if (clip_qkv.has_value()) RETURN_IF_ERROR(CheckPositiveFinite("clip_qkv", *clip_qkv));

  // Sliding windows.
  if (static_cast<int64_t>(layer_types.size()) != num_hidden_layers) {
    return ValueError("layer_types",
                      absl::StrCat("has ", layer_types.size(), " entries but num_hidden_layers is ",
                                   num_hidden_layers));
  }
  if (sliding_window.has_value()) {
    RETURN_IF_ERROR(CheckPositive("sliding_window", *sliding_window));
  }
  for (size_t i = 0; i < layer_types.size(); ++i) {
    if (layer_types[i] == AttentionType::kSlidingWindow && !sliding_window.has_value()) {
      return ValueError(absl::StrCat("layer_types[", i, "]"),
                        "is sliding_attention but no sliding window is in effect "
                        "(use_sliding_window false or sliding_window null)");
    }
  }

  // RoPE.
  RETURN_IF_ERROR(CheckPositiveFinite("rope_theta", rope.theta));
  if (rope.type != RopeType::kDefault) {
    RETURN_IF_ERROR(CheckPositiveFinite("rope_parameters.factor", rope.factor));
  }
  if (rope.type == RopeType::kYarn) {
    RETURN_IF_ERROR(CheckPositive("rope_parameters.original_max_position_embeddings",
                                  rope.original_max_position_embeddings));
    RETURN_IF_ERROR(CheckPositiveFinite("rope_parameters.attention_factor", rope.attention_factor));
    for (const auto& [name, value] :
         {std::pair{"beta_fast", rope.beta_fast}, std::pair{"beta_slow", rope.beta_slow},
          std::pair{"mscale", rope.mscale}, std::pair{"mscale_all_dim", rope.mscale_all_dim}}) {
      if (!std::isfinite(value)) {
        return ValueError(absl::StrCat("rope_parameters.", name),
                          absl::StrCat("must be finite, got ", value));
      }
    }
  }

  // Experts and routing.
  const int64_t min_experts = IsQwen(a) ? 0 : 1;
  RETURN_IF_ERROR(CheckRange(IsDeepseek(a)                 ? "n_routed_experts"
                             : a == Architecture::kMixtral ? "num_local_experts"
                                                           : "num_experts",
                             num_routed_experts, min_experts, kMaxConfigDimension));
  if (num_routed_experts > 0) {
    if (num_experts_per_tok < 1 || num_experts_per_tok > num_routed_experts) {
      return ValueError("num_experts_per_tok",
                        absl::StrCat("(", num_experts_per_tok, ") must be in [1, ",
                                     num_routed_experts, "], the number of routed experts"));
    }
    RETURN_IF_ERROR(CheckPositive("moe_intermediate_size", moe_intermediate_size));
  }
  RETURN_IF_ERROR(CheckRange("shared_expert_intermediate_size", shared_expert_intermediate_size, 0,
                             kMaxConfigDimension));
  RETURN_IF_ERROR(CheckRange("n_shared_experts", n_shared_experts, 0, kMaxConfigDimension));
  if (!std::isfinite(routed_scaling_factor) || routed_scaling_factor <= 0) {
    return ValueError(
        "routed_scaling_factor",
        absl::StrCat("must be a positive finite number, got ", routed_scaling_factor));
  }
  if (!std::isfinite(router_aux_loss_coef)) {
    return ValueError("router_aux_loss_coef", "must be finite");
  }
  const bool grouped = topk_method != TopkMethod::kGreedy;
  if (grouped && !n_group.has_value()) {
    return ValueError("n_group",
                      absl::StrCat("is required by topk_method ", TopkMethodName(topk_method)));
  }
  if (grouped && !topk_group.has_value()) {
    return ValueError("topk_group",
                      absl::StrCat("is required by topk_method ", TopkMethodName(topk_method)));
  }
  if (n_group.has_value()) {
    RETURN_IF_ERROR(CheckPositive("n_group", *n_group));
    if (num_routed_experts % *n_group != 0) {
      return ValueError("n_group", absl::StrCat("(", *n_group, ") must divide n_routed_experts (",
                                                num_routed_experts, ")"));
    }
  }
  if (topk_group.has_value()) {
    if (!n_group.has_value()) return ValueError("topk_group", "is set but n_group is null");
    if (*topk_group < 1 || *topk_group > *n_group) {
      return ValueError("topk_group", absl::StrCat("(", *topk_group,
                                                   ") must be in [1, n_group = ", *n_group, "]"));
    }
  }
  if (grouped) {
    const int64_t per_group = num_routed_experts / *n_group;
    if (num_experts_per_tok > *topk_group * per_group) {
      return ValueError(
          "num_experts_per_tok",
          absl::StrCat("(", num_experts_per_tok, ") exceeds the ", *topk_group * per_group,
                       " experts in topk_group (", *topk_group, ") groups of ", per_group));
    }
    if (topk_method == TopkMethod::kNoauxTc && per_group < 2) {
      return ValueError("n_group", absl::StrCat("(", *n_group,
                                                ") leaves fewer than 2 experts per group; "
                                                "noaux_tc ranks groups by their top-2 sum"));
    }
  }
  if (IsDeepseek(a)) {
    RETURN_IF_ERROR(
        CheckRange("first_k_dense_replace", first_k_dense_replace, 0, kMaxConfigDimension));
    if (moe_layer_freq != 1) {
      return ValueError("moe_layer_freq",
                        absl::StrCat("is ", moe_layer_freq,
                                     ": transformers makes every layer from first_k_dense_replace "
                                     "on sparse, so only 1 is supported"));
    }
  }
  RETURN_IF_ERROR(CheckPositive("decoder_sparse_step", decoder_sparse_step));
  for (size_t i = 0; i < mlp_only_layers.size(); ++i) {
    RETURN_IF_ERROR(CheckRange(absl::StrCat("mlp_only_layers[", i, "]"), mlp_only_layers[i], 0,
                               num_hidden_layers - 1));
  }
  RETURN_IF_ERROR(
      CheckRange("num_nextn_predict_layers", num_nextn_predict_layers, 0, kMaxConfigLayers));

  if (quantization_config.has_value()) {
    const Fp8QuantizationConfig& q = *quantization_config;
    if (q.quant_method != "fp8") {
      return ValueError("quantization_config.quant_method",
                        absl::StrCat("is \"", q.quant_method,
                                     "\": only block-wise \"fp8\" quantization is supported"));
    }
    if (q.fmt != "e4m3") {
      return ValueError("quantization_config.fmt",
                        absl::StrCat("is \"", q.fmt, "\": only \"e4m3\" is supported"));
    }
    if (q.activation_scheme != "dynamic") {
      return ValueError(
          "quantization_config.activation_scheme",
          absl::StrCat("is \"", q.activation_scheme, "\": only \"dynamic\" is supported"));
    }
    if (q.weight_block_size.has_value()) {
      for (int i = 0; i < 2; ++i) {
        RETURN_IF_ERROR(
            CheckPositive(absl::StrCat("quantization_config.weight_block_size[", i, "]"),
                          (*q.weight_block_size)[i]));
      }
    }
  }
  return absl::OkStatus();
}

bool ModelConfig::IsMoeLayer(int layer) const {
  if (layer < 0 || layer >= num_hidden_layers) return false;
  switch (architecture) {
    case Architecture::kQwen3Moe:
    case Architecture::kQwen2Moe:
      for (int64_t dense : mlp_only_layers) {
        if (dense == layer) return false;
      }
      return num_routed_experts > 0 && decoder_sparse_step > 0 &&
             (layer + 1) % decoder_sparse_step == 0;
    case Architecture::kMixtral:
    case Architecture::kOlmoe:
      return true;
    case Architecture::kDeepseekV2:
    case Architecture::kDeepseekV3:
      return layer >= first_k_dense_replace;
  }
  return false;
}

int64_t ModelConfig::NumMoeLayers() const {
  int64_t n = 0;
  for (int64_t l = 0; l < std::min(num_hidden_layers, kMaxConfigLayers); ++l) {
    if (IsMoeLayer(static_cast<int>(l))) ++n;
  }
  return n;
}

std::optional<int64_t> ModelConfig::SlidingWindow(int layer) const {
  if (layer < 0 || static_cast<size_t>(layer) >= layer_types.size()) return std::nullopt;
  if (layer_types[layer] != AttentionType::kSlidingWindow) return std::nullopt;
  return sliding_window;
}

int64_t ModelConfig::SharedExpertIntermediateSize() const {
  if (architecture == Architecture::kQwen2Moe) return shared_expert_intermediate_size;
  if (IsDeepseek(architecture)) return n_shared_experts * moe_intermediate_size;
  return 0;
}

int64_t ModelConfig::QkHeadDim() const {
  return IsDeepseek(architecture) ? qk_nope_head_dim + qk_rope_head_dim : head_dim;
}

int64_t ModelConfig::VHeadDim() const { return IsDeepseek(architecture) ? v_head_dim : head_dim; }

double ModelConfig::AttentionScale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(QkHeadDim()));
  // yarn_apply_mscale in modeling_deepseek_v{2,3}.py.
  if (IsDeepseek(architecture) && rope.type != RopeType::kDefault && rope.mscale_all_dim != 0.0) {
    const double m = GetMscale(rope.factor, rope.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

std::string ModelConfig::Summary() const {
  std::string s = absl::StrCat(ModelTypeName(architecture), ": ", num_hidden_layers, " layers (",
                               NumMoeLayers(), " MoE), hidden ", hidden_size, ", ",
                               num_attention_heads, " heads");
  if (IsDeepseek(architecture)) {
    absl::StrAppend(&s, " (MLA q_lora ",
                    q_lora_rank.has_value() ? absl::StrCat(*q_lora_rank) : "none", ", kv_lora ",
                    kv_lora_rank, ")");
  } else {
    absl::StrAppend(&s, " (", num_key_value_heads, " kv, head_dim ", head_dim, ")");
  }
  absl::StrAppend(&s, ", ", num_routed_experts, " experts top-", num_experts_per_tok);
  if (SharedExpertIntermediateSize() > 0) {
    absl::StrAppend(&s, " + ", IsDeepseek(architecture) ? n_shared_experts : 1, " shared");
  }
  absl::StrAppend(&s, ", ", scoring_func == RouterScoring::kSigmoid ? "sigmoid" : "softmax", " ",
                  TopkMethodName(topk_method));
  if (topk_method != TopkMethod::kGreedy && n_group.has_value() && topk_group.has_value()) {
    absl::StrAppend(&s, " ", *n_group, "/", *topk_group, " groups");
  }
  absl::StrAppend(&s, ", expert ffn ", moe_intermediate_size, ", vocab ", vocab_size, ", rope ",
                  RopeTypeName(rope.type));
  if (rope.type != RopeType::kDefault) absl::StrAppend(&s, " x", FormatDouble(rope.factor));
  absl::StrAppend(&s, " theta ", FormatDouble(rope.theta));
  if (sliding_window.has_value()) absl::StrAppend(&s, ", sliding window ", *sliding_window);
  if (dtype != TorchDtype::kUnspecified) absl::StrAppend(&s, ", ", TorchDtypeName(dtype));
  if (quantization_config.has_value()) {
    absl::StrAppend(&s, ", ", quantization_config->quant_method, " ", quantization_config->fmt);
    if (quantization_config->weight_block_size.has_value()) {
      absl::StrAppend(&s, " [", (*quantization_config->weight_block_size)[0], ",",
                      (*quantization_config->weight_block_size)[1], "]");
    }
  }
  return s;
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view what) {
  ASSIGN_OR_RETURN(json root, common::ParseJsonStrict(json_text, what));
  // The readers check types before every get<>(), so nothing should throw;
  // this is the backstop that keeps a missed case from escaping as an
  // exception.
  try {
    return common::WithContext(ParseObject(root), what);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": malformed config: ", e.what()));
  }
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  ASSIGN_OR_RETURN(std::string text, common::ReadFile(path, /*max_bytes=*/16 << 20));
  return ParseModelConfig(text, path);
}

absl::StatusOr<GenerationDefaults> LoadGenerationDefaults(const std::string& model_dir) {
  const std::string path = model_dir + "/generation_config.json";
  absl::StatusOr<std::string> text = common::ReadFile(path, /*max_bytes=*/1 << 20);
  if (absl::IsNotFound(text.status())) return GenerationDefaults();
  RETURN_IF_ERROR(text.status());
  ASSIGN_OR_RETURN(nlohmann::json j, common::ParseJsonStrict(*text, path));
  if (!j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a JSON object"));
  GenerationDefaults out;
  auto number = [&](const char* key, double lo,
                    double hi) -> absl::StatusOr<std::optional<double>> {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return std::nullopt;
    if (!it->is_number() || it->get<double>() < lo || it->get<double>() > hi) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", key, " must be a number in [", lo, ", ", hi, "]"));
    }
    return it->get<double>();
  };
  ASSIGN_OR_RETURN(out.temperature, number("temperature", 0, 100));
  ASSIGN_OR_RETURN(out.top_p, number("top_p", 0, 1));
  ASSIGN_OR_RETURN(std::optional<double> top_k, number("top_k", 0, 1e9));
  if (top_k.has_value()) {
    if (*top_k != static_cast<double>(static_cast<int64_t>(*top_k))) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": top_k must be an integer"));
    }
    out.top_k = static_cast<int64_t>(*top_k);
  }
  if (auto it = j.find("do_sample"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": do_sample must be true or false"));
    }
    // Greedy, as transformers' generate runs it (vLLM reads the sampling
    // fields only; a file that says greedy means greedy).
    if (!it->get<bool>()) out.temperature = 0.0;
  }
  return out;
}

}  // namespace premoe::checkpoint
