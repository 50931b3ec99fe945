// TextStream: generated tokens -> the text to stream, delta by delta.
//
// Decoders are not token-local (byte-level pieces of a UTF-8 character,
// Metaspace's leading-space strip, WordPiece's "##"), so decoding tokens one
// by one would give other text than decoding them together; re-decoding every
// generated token at each step gives the right text at a cost that grows with
// the square of its length. So each step decodes a window: from the first
// token after the last complete character (what came before it is final) to
// the end, against the same window without the new tokens; the difference is
// the new text. The streamed text equals Decode() of all the tokens. Held
// back until known: a trailing U+FFFD (an incomplete UTF-8 character whose
// remaining bytes may still come) and a tail that could be the start of a
// stop string. A stop string ends the text before it (stopped() turns true;
// ask the engine to stop). Ids the tokenizer does not know (the padding of a
// model's vocabulary past the tokenizer's) decode as nothing, as in
// Tokenizer::Decode.
//
// Not thread-safe; the tokenizer must outlive it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "premoe/tokenizer/tokenizer.h"

namespace premoe::tokenizer {

class TextStream {
 public:
  // `stops`: non-empty strings matched in the decoded text.
  TextStream(const Tokenizer& tokenizer, std::vector<std::string> stops);

  // Adds a generated token; returns the text that became final (often empty).
  std::string Add(int64_t token);
  // Returns what was held back (unless a stop string ended the text).
  std::string Finish();

  // A stop string was found: the text before it is all there is.
  bool stopped() const { return stopped_; }
  // Decoding failed (then nothing more is returned).
  const absl::Status& status() const { return status_; }

 private:
  std::string Emit(bool final);
  absl::StatusOr<std::string> Decode(size_t begin, size_t end) const;

  const Tokenizer& tokenizer_;
  std::vector<std::string> stops_;
  std::vector<int32_t> ids_;
  // The window: ids_[prefix_, read_) decoded to text already taken into
  // pending_ or emitted; ids_[read_, end) are the tokens not yet taken.
  size_t prefix_ = 0;
  size_t read_ = 0;
  // Decoded text not yet returned (a tail that may begin a stop string).
  std::string pending_;
  bool stopped_ = false;
  absl::Status status_;
};

}  // namespace premoe::tokenizer
