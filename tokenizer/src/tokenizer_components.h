// The parts of a Hugging Face tokenizer pipeline (internal to premoe::model).
//
// Each part mirrors the semantics of its counterpart in the `tokenizers`
// library (Rust), which is the reference the tests compare against; comments
// note where that behaviour is surprising and kept on purpose. None of these
// track offsets: premoe needs ids and text, not alignments.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "premoe/common/utf8.h"

namespace premoe::tokenizer::tokenizer_internal {

using json = nlohmann::json;

// ---- UTF-8 ----------------------------------------------------------------

using common::FindInvalidUtf8;
using common::Utf8Lossy;
// Length of the (valid) UTF-8 character starting at text[i].
int Utf8CharLength(unsigned char lead);
// Decodes the valid UTF-8 character at text[i].
char32_t DecodeUtf8(absl::string_view text, size_t i);
void AppendUtf8(char32_t c, std::string* out);
// Rust's char::is_whitespace (Unicode White_Space).
bool IsUnicodeWhitespace(char32_t c);

// ---- Regex ----------------------------------------------------------------

struct Match {
  size_t begin;
  size_t end;
};

// An Oniguruma-syntax pattern compiled with PCRE2 (UTF, UCP, JIT).
// Thread-safe: FindAll may run concurrently.
class Regex {
 public:
  static absl::StatusOr<std::shared_ptr<const Regex>> Compile(absl::string_view pattern);
  ~Regex();
  // Successive matches as Oniguruma's find_iter reports them (an empty match
  // right after the previous match is skipped). `text` must be valid UTF-8.
  absl::Status FindAll(absl::string_view text, std::vector<Match>* out) const;

 private:
  explicit Regex(void* code) : code_(code) {}
  void* code_;  // pcre2_code_8*
};

// A `pattern` field: {"String": s} or {"Regex": r}.
class TextPattern {
 public:
  static absl::StatusOr<TextPattern> FromJson(const json& j, absl::string_view where);
  absl::Status FindAll(absl::string_view text, std::vector<Match>* out) const;
  bool is_string() const { return regex_ == nullptr; }
  const std::string& literal() const { return literal_; }

 private:
  std::string literal_;
  std::shared_ptr<const Regex> regex_;
};

// ---- Normalizers ----------------------------------------------------------

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual absl::Status Normalize(std::string* text) const = 0;
};
// nullptr for a JSON null.
absl::StatusOr<std::unique_ptr<Normalizer>> MakeNormalizer(const json& j);

// ---- Pre-tokenizers -------------------------------------------------------

// A run of text between pipeline stages.
struct Piece {
  std::string text;
  // Begins at offset 0 of the original input (Metaspace's "first" scheme).
  bool at_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their sub-pieces; empty pieces are dropped.
  virtual absl::Status Split(std::vector<Piece>* pieces) const = 0;
};
absl::StatusOr<std::unique_ptr<PreTokenizer>> MakePreTokenizer(const json& j);

// ---- BPE model ------------------------------------------------------------

class BpeModel {
 public:
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const json& j);
  // Appends the ids of one pre-tokenized word.
  void Tokenize(absl::string_view word, std::vector<std::int32_t>* out) const;
  const std::string* IdToToken(std::int32_t id) const;
  const std::int32_t* TokenToId(absl::string_view token) const;
  // Number of vocab entries (HF's get_vocab_size for BPE).
  std::int32_t vocab_entries() const { return static_cast<std::int32_t>(vocab_.size()); }
  std::int32_t max_id() const { return static_cast<std::int32_t>(id_to_token_.size()) - 1; }

 private:
  struct Merge {
    std::int32_t rank;
    std::int32_t new_id;
  };
  static std::uint64_t PairKey(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) |
           static_cast<std::uint32_t>(b);
  }
  const Merge* FindMerge(std::int32_t a, std::int32_t b) const;

  absl::flat_hash_map<std::string, std::int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> id_present_;
  absl::flat_hash_map<std::uint64_t, Merge> merges_;
  std::int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string prefix_;                           // continuing_subword_prefix
  std::string suffix_;                           // end_of_word_suffix
  std::array<std::int32_t, 256> byte_tokens_{};  // ids of <0xXX>, -1 if absent
};

// ---- Post-processors ------------------------------------------------------

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Adds special tokens around the ids of one sequence.
  virtual void Process(std::vector<std::int32_t>* ids) const = 0;
};
// `id_known` says whether an id is in the vocabulary: a processor that would
// add an id outside it is refused, so every id Encode returns can be decoded.
absl::StatusOr<std::unique_ptr<PostProcessor>> MakePostProcessor(
    const json& j, const std::function<bool(std::int32_t)>& id_known);

// ---- Decoders -------------------------------------------------------------

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual absl::Status DecodeChain(std::vector<std::string>* tokens) const = 0;
};
absl::StatusOr<std::unique_ptr<Decoder>> MakeDecoder(const json& j);

// ---- Added tokens ---------------------------------------------------------

struct AddedToken {
  std::string content;
  std::int32_t id = 0;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

// Finds added tokens in text, leftmost-longest, as HF's aho-corasick does.
class AddedTokenMatcher {
 public:
  // `patterns[i]` is the text matched for `tokens[i]`.
  AddedTokenMatcher(std::vector<std::string> patterns, std::vector<const AddedToken*> tokens);
  // Splits `piece` into pieces and (for matches) token ids, appended to `out`
  // as (text, id) with id -1 for text.
  void Split(const Piece& piece, std::vector<std::pair<Piece, std::int32_t>>* out) const;
  bool empty() const { return tokens_.empty(); }

 private:
  struct Node {
    absl::flat_hash_map<unsigned char, std::int32_t> next;
    std::int32_t token = -1;  // index into tokens_ when a pattern ends here
  };
  std::vector<Node> nodes_;
  std::vector<const AddedToken*> tokens_;
};

}  // namespace premoe::tokenizer::tokenizer_internal
