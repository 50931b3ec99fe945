// A Hugging Face `tokenizer.json` tokenizer, producing exactly the ids that the
// Hugging Face `tokenizers` library produces for the same file and text.
//
// Supported (everything the DeepSeek-V3/R1, Qwen3(-MoE), GPT-OSS, Mixtral and
// Llama tokenizers use, and their close relatives):
//   model:          BPE (merges as "a b" strings or [a, b] pairs; byte_fallback;
//                   unk_token with fuse_unk; ignore_merges; continuing-subword
//                   prefix and end-of-word suffix)
//   normalizer:     Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace,
//                   Strip
//   pre_tokenizer:  Sequence, Split (string or regex; every behaviour; invert),
//                   ByteLevel, Metaspace, Digits, WhitespaceSplit
//   post_processor: TemplateProcessing, ByteLevel, BertProcessing,
//                   RobertaProcessing, Sequence
//   decoder:        Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse,
//                   Strip
//   added tokens:   special and not, normalized or not, lstrip, rstrip,
//                   single_word; matched leftmost-longest as HF does
// Anything else in the file is refused at load with INVALID_ARGUMENT naming the
// component type, never ignored.
//
// Regexes (written for Oniguruma in the file) run on PCRE2 in UTF + UCP mode.
// The one difference that matters, \s (Oniguruma: Unicode White_Space, which
// includes U+0085), is translated so both agree.
//
// Text is UTF-8. Encode() refuses invalid UTF-8 with INVALID_ARGUMENT naming
// the byte offset of the first bad sequence (the `tokenizers` library takes
// Python str and so never sees invalid UTF-8; replacing bytes silently would
// make ids that no reference produces).
//
// Thread safety: a Tokenizer is immutable after loading; Encode() and
// Decode() may be called from any number of threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace premoe::tokenizer {

namespace tokenizer_internal {
class Pipeline;
}  // namespace tokenizer_internal

struct TokenizerOptions {
  // tokenizer.json files larger than this are refused before parsing.
  // Default: 256 MiB (the largest real ones are ~30 MB).
  std::uint64_t max_file_bytes = 256ull << 20;
};

class Tokenizer {
 public:
  // Loads a tokenizer.json file. Errors name the file and the offending part.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path,
                                                             const TokenizerOptions& options = {});
  // Parses tokenizer.json contents; `what` names the source in errors.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(absl::string_view json,
                                                             absl::string_view what);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Ids of `text`. With `add_special_tokens`, the post-processor adds what the
  // file says (e.g. <s> for Llama/Mixtral); without, no tokens are added, but
  // special tokens written in the text are still recognised (as in HF).
  absl::StatusOr<std::vector<std::int32_t>> Encode(absl::string_view text,
                                                   bool add_special_tokens = false) const;

  // Text of `ids`. Ids the vocabulary does not hold decode as nothing, as in
  // `tokenizers` (a model's vocabulary is often padded past its tokenizer's,
  // and a sampled id there must not fail a request); negative ids are
  // INVALID_ARGUMENT (naming the id and its position). With `skip_special_tokens`, special tokens
  // are left out. Bytes that do not form valid UTF-8 (a partial multi-byte character at the end of
  // a stream, say) become U+FFFD, as in HF.
  absl::StatusOr<std::string> Decode(std::span<const std::int32_t> ids,
                                     bool skip_special_tokens = false) const;

  // Number of ids: one past the largest id of the model or added tokens.
  std::int32_t vocab_size() const;
  std::optional<std::int32_t> TokenToId(absl::string_view token) const;
  // The token string as stored in the file (byte-level tokens stay mapped,
  // e.g. "Ġthe"). nullopt for ids outside the vocabulary.
  std::optional<std::string> IdToToken(std::int32_t id) const;
  bool IsSpecial(std::int32_t id) const;

 private:
  explicit Tokenizer(std::unique_ptr<tokenizer_internal::Pipeline> pipeline);
  std::unique_ptr<tokenizer_internal::Pipeline> pipeline_;
};

}  // namespace premoe::tokenizer
