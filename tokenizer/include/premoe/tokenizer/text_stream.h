// TextStream: generated tokens -> the text to stream, delta by delta.
//
// Each token re-decodes all generated ids and yields the new suffix: decoders
// are not token-local (byte-level pieces of a UTF-8 character, Metaspace's
// leading-space strip), so decoding tokens one by one would give different
// text than decoding them together. Held back until known: a trailing U+FFFD
// (an incomplete UTF-8 character whose remaining bytes may still come) and a
// tail that could be the start of a stop string. A stop string ends the text
// before it (stopped() turns true; ask the engine to stop).
//
// Not thread-safe; the tokenizer must outlive it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
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

  const Tokenizer& tokenizer_;
  std::vector<std::string> stops_;
  std::vector<int32_t> ids_;
  size_t emitted_ = 0;
  bool stopped_ = false;
  absl::Status status_;
};

}  // namespace premoe::tokenizer
