#include "premoe/tokenizer/tokenizer.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "premoe/common/file.h"
#include "premoe/common/json.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"
#include "tokenizer_components.h"

namespace premoe::tokenizer {
namespace tokenizer_internal {

// The whole HF pipeline: added tokens -> normalizer -> pre-tokenizer -> BPE
// -> post-processor; and ids -> tokens -> decoder for the way back.
class Pipeline {
 public:
  static absl::StatusOr<std::unique_ptr<Pipeline>> FromJson(const json& root);

  absl::StatusOr<std::vector<std::int32_t>> Encode(absl::string_view text, bool add_special) const;
  absl::StatusOr<std::string> Decode(std::span<const std::int32_t> ids, bool skip_special) const;

  std::int32_t vocab_size() const { return max_id_ + 1; }
  std::optional<std::int32_t> TokenToId(absl::string_view token) const {
    if (auto it = added_by_content_.find(token); it != added_by_content_.end()) return it->second;
    if (const std::int32_t* id = model_->TokenToId(token)) return *id;
    return std::nullopt;
  }
  const std::string* IdToToken(std::int32_t id) const {
    if (auto it = added_by_id_.find(id); it != added_by_id_.end()) return &it->second->content;
    return model_->IdToToken(id);
  }
  bool IsSpecial(std::int32_t id) const { return special_ids_.contains(id); }

 private:
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  std::vector<AddedToken> added_;
  absl::flat_hash_map<std::string, std::int32_t> added_by_content_;
  absl::flat_hash_map<std::int32_t, const AddedToken*> added_by_id_;
  absl::flat_hash_set<std::int32_t> special_ids_;
  std::unique_ptr<AddedTokenMatcher> raw_matcher_;         // normalized == false
  std::unique_ptr<AddedTokenMatcher> normalized_matcher_;  // normalized == true
  std::int32_t max_id_ = -1;
};

absl::StatusOr<std::unique_ptr<Pipeline>> Pipeline::FromJson(const json& root) {
  if (!root.is_object()) return absl::InvalidArgumentError("top level must be an object");
  for (const char* key : {"truncation", "padding"}) {
    if (auto it = root.find(key); it != root.end() && !it->is_null()) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", key,
                       "\" is set; premoe limits lengths itself and does not apply it "
                       "(set it to null)"));
    }
  }
  if (!root.contains("model")) return absl::InvalidArgumentError("missing \"model\"");
  auto p = std::make_unique<Pipeline>();
  ASSIGN_OR_RETURN(p->model_, BpeModel::FromJson(root["model"]));
  const json null_json;
  auto field = [&](const char* key) -> const json& {
    auto it = root.find(key);
    return it == root.end() ? null_json : *it;
  };
  ASSIGN_OR_RETURN(p->normalizer_, MakeNormalizer(field("normalizer")));
  ASSIGN_OR_RETURN(p->pre_tokenizer_, MakePreTokenizer(field("pre_tokenizer")));
  ASSIGN_OR_RETURN(p->decoder_, MakeDecoder(field("decoder")));
  p->max_id_ = p->model_->max_id();

  const json& added = field("added_tokens");
  if (!added.is_null() && !added.is_array()) {
    return absl::InvalidArgumentError("\"added_tokens\" must be an array");
  }
  if (added.is_array()) {
    p->added_.reserve(added.size());
    std::int32_t max_added_id = -1, next_new_id = -1;
    for (size_t k = 0; k < added.size(); ++k) {
      const json& a = added[k];
      const std::string where = absl::StrCat("added_tokens[", k, "]");
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": needs an integer \"id\" and a string \"content\""));
      }
      AddedToken t;
      const std::int64_t id = a["id"].get<std::int64_t>();
      if (id < 0 || id > (1 << 30)) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": id ", id, " out of range"));
      }
      t.id = static_cast<std::int32_t>(id);
      t.content = a["content"].get<std::string>();
      if (t.content.empty() || FindInvalidUtf8(t.content) >= 0) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": content must be non-empty UTF-8"));
      }
      for (auto [key, flag] : {std::pair{"special", &t.special},
                               {"single_word", &t.single_word},
                               {"lstrip", &t.lstrip},
                               {"rstrip", &t.rstrip},
                               {"normalized", &t.normalized}}) {
        auto it = a.find(key);
        if (it == a.end()) continue;
        if (!it->is_boolean()) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": \"", key, "\" must be a boolean"));
        }
        *flag = it->get<bool>();
      }
      // HF ignores the id written in the file: a token whose text is already
      // known keeps that id, a new one gets the next free id after the model
      // vocab. Real files agree; where one does not, HF's ids are the ones a
      // model was served with, so they win (with a warning).
      if (p->added_by_content_.contains(t.content)) continue;
      if (const std::int32_t* known = p->model_->TokenToId(t.content)) {
        t.id = *known;
      } else {
        const std::int32_t vocab = p->model_->vocab_entries();
        t.id = next_new_id < 0 ? vocab : (next_new_id >= vocab || vocab == 0 ? next_new_id : vocab);
      }
      max_added_id = std::max(max_added_id, t.id);
      next_new_id = max_added_id + 1;
      if (t.id != id) {
        PREMOE_LOG_WARN("%s: added token \"%s\" is written with id %d but gets id %d", where,
                        t.content, id, t.id);
      }
      p->added_by_content_.emplace(t.content, t.id);
      p->added_.push_back(std::move(t));
    }
  }
  std::vector<std::string> raw_patterns, normalized_patterns;
  std::vector<const AddedToken*> raw_tokens, normalized_tokens;
  for (const AddedToken& t : p->added_) {
    p->added_by_id_.emplace(t.id, &t);
    if (t.special) p->special_ids_.insert(t.id);
    p->max_id_ = std::max(p->max_id_, t.id);
    if (t.normalized) {
      // HF matches normalized tokens by their normalized text.
      std::string pattern = t.content;
      if (p->normalizer_ != nullptr) RETURN_IF_ERROR(p->normalizer_->Normalize(&pattern));
      normalized_patterns.push_back(std::move(pattern));
      normalized_tokens.push_back(&t);
    } else {
      raw_patterns.push_back(t.content);
      raw_tokens.push_back(&t);
    }
  }
  p->raw_matcher_ =
      std::make_unique<AddedTokenMatcher>(std::move(raw_patterns), std::move(raw_tokens));
  p->normalized_matcher_ = std::make_unique<AddedTokenMatcher>(std::move(normalized_patterns),
                                                               std::move(normalized_tokens));
  ASSIGN_OR_RETURN(p->post_processor_,
                   MakePostProcessor(field("post_processor"),
                                     [&](std::int32_t id) { return p->IdToToken(id) != nullptr; }));
  return p;
}

absl::StatusOr<std::vector<std::int32_t>> Pipeline::Encode(absl::string_view text,
                                                           bool add_special) const {
  if (const std::int64_t bad = FindInvalidUtf8(text); bad >= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("input is not valid UTF-8 at byte ", bad, " (of ", text.size(), ")"));
  }
  std::vector<std::int32_t> ids;
  std::vector<std::pair<Piece, std::int32_t>> raw_split, normalized_split;
  raw_matcher_->Split(Piece{std::string(text), true}, &raw_split);
  std::vector<Piece> words;
  for (auto& [piece, id] : raw_split) {
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    if (normalizer_ != nullptr) RETURN_IF_ERROR(normalizer_->Normalize(&piece.text));
    normalized_split.clear();
    normalized_matcher_->Split(piece, &normalized_split);
    for (auto& [sub, sub_id] : normalized_split) {
      if (sub_id >= 0) {
        ids.push_back(sub_id);
        continue;
      }
      words.clear();
      words.push_back(std::move(sub));
      if (pre_tokenizer_ != nullptr) RETURN_IF_ERROR(pre_tokenizer_->Split(&words));
      for (const Piece& w : words) model_->Tokenize(w.text, &ids);
    }
  }
  if (add_special && post_processor_ != nullptr) post_processor_->Process(&ids);
  return ids;
}

absl::StatusOr<std::string> Pipeline::Decode(std::span<const std::int32_t> ids,
                                             bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (size_t k = 0; k < ids.size(); ++k) {
    if (ids[k] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("id ", ids[k], " at position ", k, " is negative"));
    }
    const std::string* token = IdToToken(ids[k]);
    // Models pad their vocabulary past the tokenizer's (DeepSeek-V3: 129280
    // logits for 128815 ids) and may emit an id in that gap; `tokenizers`
    // decodes it as nothing, and so does this.
    if (token == nullptr) continue;
    if (skip_special && IsSpecial(ids[k])) continue;
    tokens.push_back(*token);
  }
  if (decoder_ == nullptr) return absl::StrJoin(tokens, " ");
  RETURN_IF_ERROR(decoder_->DecodeChain(&tokens));
  return absl::StrJoin(tokens, "");
}

}  // namespace tokenizer_internal

Tokenizer::Tokenizer(std::unique_ptr<tokenizer_internal::Pipeline> pipeline)
    : pipeline_(std::move(pipeline)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path,
                                                               const TokenizerOptions& options) {
  ASSIGN_OR_RETURN(std::string contents, common::ReadFile(path, options.max_file_bytes));
  return FromJson(contents, path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(absl::string_view json_text,
                                                               absl::string_view what) {
  ASSIGN_OR_RETURN(auto root, common::ParseJsonStrict(json_text, what));
  ASSIGN_OR_RETURN(auto pipeline,
                   common::WithContext(tokenizer_internal::Pipeline::FromJson(root), what));
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(pipeline)));
}

absl::StatusOr<std::vector<std::int32_t>> Tokenizer::Encode(absl::string_view text,
                                                            bool add_special_tokens) const {
  return pipeline_->Encode(text, add_special_tokens);
}

absl::StatusOr<std::string> Tokenizer::Decode(std::span<const std::int32_t> ids,
                                              bool skip_special_tokens) const {
  return pipeline_->Decode(ids, skip_special_tokens);
}

std::int32_t Tokenizer::vocab_size() const { return pipeline_->vocab_size(); }

std::optional<std::int32_t> Tokenizer::TokenToId(absl::string_view token) const {
  return pipeline_->TokenToId(token);
}

std::optional<std::string> Tokenizer::IdToToken(std::int32_t id) const {
  const std::string* token = pipeline_->IdToToken(id);
  if (token == nullptr) return std::nullopt;
  return *token;
}

bool Tokenizer::IsSpecial(std::int32_t id) const { return pipeline_->IsSpecial(id); }

}  // namespace premoe::tokenizer
