#include "cli/keep_spec.h"

#include <filesystem>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "premoe/checkpoint/budget.h"
#include "premoe/checkpoint/config.h"
#include "premoe/common/file.h"
#include "premoe/common/json.h"
#include "premoe/common/status.h"

namespace premoe::cli {
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
  absl::string_view count = spec;
  if (absl::ConsumePrefix(&count, "first:")) {
    ASSIGN_OR_RETURN(checkpoint::ModelConfig config, checkpoint::LoadModelConfig(model_dir));
    const int64_t top_k = config.num_experts_per_tok;
    int64_t m = 0;
    const bool digits = !count.empty() && count.size() <= 9 &&
                        absl::c_all_of(count, [](char c) { return absl::ascii_isdigit(c); });
    if (!digits || !absl::SimpleAtoi(count, &m) || m < top_k || m > config.num_routed_experts) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--keep \"", absl::CHexEscape(spec), "\": want first:M with the model's top-k ", top_k,
          " <= M <= ", config.num_routed_experts, " (its routed experts per MoE layer)"));
    }
    KeepSpec out;
    std::vector<int64_t> first(m);
    for (int64_t e = 0; e < m; ++e) first[e] = e;
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
      if (config.IsMoeLayer(static_cast<int>(l))) out.keep.Set(l, first);
    }
    return out;
  }
  // A file of that name wins: "masks/8/16" is a path.
  if (std::error_code ec;
      !std::filesystem::exists(spec, ec) && checkpoint::Budget::Parse(spec).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--keep \"", spec,
        "\" is a budget, and which experts a budget keeps depends on a task's pattern: give a "
        "mask file (premoe select --pattern FILE --budget ",
        spec, " --mask-out MASK) or first:M for the first M experts of every MoE layer"));
  }
  return ReadMaskFile(spec);
}

const char kKeepHelp[] =
    "Either a mask file, JSON {\"layers\": {\"<layer>\": [expert ids...]}, \"top_k\": K} "
    "(layers not listed keep every expert; \"top_k\" is optional, default the model's; each "
    "listed layer must keep at least top-k experts; premoe select --mask-out writes one), or "
    "first:M: the first M experts (ids 0..M-1) of every MoE layer with the model's top-k. "
    "first:M chooses no experts for a task: it is for sizing and speed tests";

}  // namespace premoe::cli
