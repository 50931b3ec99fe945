#include "cli/keep_spec.h"

#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "premoe/checkpoint/config.h"
#include "premoe/common/file.h"
#include "premoe/common/json.h"
#include "premoe/common/status.h"

namespace premoe::cli {
namespace {

// "K/M" -> (K, M); nullopt when `spec` does not have that form.
std::optional<std::pair<int64_t, int64_t>> ParseUniform(absl::string_view spec) {
  std::vector<absl::string_view> parts = absl::StrSplit(spec, '/');
  int64_t k = 0, m = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &k) || !absl::SimpleAtoi(parts[1], &m)) {
    return std::nullopt;
  }
  return std::make_pair(k, m);
}

}  // namespace

absl::StatusOr<KeepSpec> ReadMaskFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, common::ReadFile(path, 64ull << 20));
  ASSIGN_OR_RETURN(nlohmann::json doc, common::ParseJsonStrict(text, path));
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": ", what, " (want {\"layers\": {\"<layer>\": [expert ids...]}, \"top_k\": K})"));
  };
  if (!doc.is_object() || !doc.contains("layers") || !doc["layers"].is_object()) {
    return bad("no \"layers\" object");
  }
  KeepSpec spec;
  for (const auto& [key, value] : doc.items()) {
    if (key == "top_k") {
      if (!value.is_number_integer() || value.get<int64_t>() < 1) {
        return bad("\"top_k\" must be an integer >= 1");
      }
      spec.top_k = value.get<int64_t>();
    } else if (key != "layers") {
      return bad(absl::StrCat("unknown key \"", key, "\""));
    }
  }
  for (const auto& [key, ids] : doc["layers"].items()) {
    int64_t layer = 0;
    if (!absl::SimpleAtoi(key, &layer)) return bad(absl::StrCat("layer key \"", key, "\""));
    if (!ids.is_array()) return bad(absl::StrCat("layer ", key, " is not an array"));
    std::vector<int64_t> experts;
    for (const auto& id : ids) {
      if (!id.is_number_integer()) return bad(absl::StrCat("layer ", key, ": non-integer id"));
      experts.push_back(id.get<int64_t>());
    }
    // Set() sorts and deduplicates: a file may list ids in any order.
    spec.keep.Set(layer, std::move(experts));
  }
  return spec;
}

absl::StatusOr<KeepSpec> ParseKeep(const std::string& spec, const std::string& model_dir) {
  if (auto uniform = ParseUniform(spec)) {
    const auto [k, m] = *uniform;
    ASSIGN_OR_RETURN(checkpoint::ModelConfig config, checkpoint::LoadModelConfig(model_dir));
    if (k < 1 || m < k || m > config.num_routed_experts) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--keep ", spec, ": want K/M with 1 <= K <= M <= ", config.num_routed_experts,
          " (the model's routed experts)"));
    }
    KeepSpec out;
    out.top_k = k;
    std::vector<int64_t> first(m);
    for (int64_t e = 0; e < m; ++e) first[e] = e;
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
      if (config.IsMoeLayer(static_cast<int>(l))) out.keep.Set(l, first);
    }
    return out;
  }
  return ReadMaskFile(spec);
}

const char kKeepHelp[] =
    "Either a mask file, JSON {\"layers\": {\"<layer>\": [expert ids...]}, \"top_k\": K} "
    "(layers not listed keep every expert; \"top_k\" is optional, default the model's; each "
    "listed layer must keep at least top-k experts), or K/M: top-K routing over the FIRST M "
    "experts (ids 0..M-1) of every MoE layer. K/M chooses no experts for a task: it is for "
    "sizing and speed tests";

}  // namespace premoe::cli
