#include "premoe/tokenizer/text_stream.h"

#include <algorithm>

#include "absl/strings/match.h"

namespace premoe::tokenizer {
namespace {

constexpr absl::string_view kReplacement = "\xEF\xBF\xBD";

}  // namespace

TextStream::TextStream(const Tokenizer& tokenizer, std::vector<std::string> stops)
    : tokenizer_(tokenizer), stops_(std::move(stops)) {}

std::string TextStream::Add(int64_t token) {
  ids_.push_back(static_cast<int32_t>(token));
  return Emit(/*final=*/false);
}

std::string TextStream::Finish() { return Emit(/*final=*/true); }

absl::StatusOr<std::string> TextStream::Decode(size_t begin, size_t end) const {
  return tokenizer_.Decode(std::span<const int32_t>(ids_).subspan(begin, end - begin));
}

std::string TextStream::Emit(bool final) {
  if (stopped_ || !status_.ok()) return "";
  // The new text is what decoding from prefix_ gives beyond what the same
  // decode gave before: both start at the same token, so a decoder's
  // treatment of a sequence's start (Metaspace's leading space, WordPiece's
  // "##") is the same in both, and the cost is a window, not the whole text.
  absl::StatusOr<std::string> before = Decode(prefix_, read_);
  absl::StatusOr<std::string> now = Decode(prefix_, ids_.size());
  if (!before.ok() || !now.ok()) {
    status_ = before.ok() ? now.status() : before.status();
    return "";
  }
  // A trailing U+FFFD is an incomplete UTF-8 character whose remaining bytes
  // may still come: wait for them (unless this is the end).
  if (now->size() > before->size() && (final || !absl::EndsWith(*now, kReplacement))) {
    // If a longer decode ever rewrote text already emitted (no supported
    // decoder does, past a trailing U+FFFD), the emitted text stands.
    if (absl::StartsWith(*now, *before)) pending_ += now->substr(before->size());
    prefix_ = read_;
    read_ = ids_.size();
  }
  // A stop string cannot begin in text already emitted: a tail that could
  // begin one is held in pending_ until it is known.
  size_t stop_at = std::string::npos;
  for (const std::string& s : stops_) stop_at = std::min(stop_at, pending_.find(s));
  size_t limit = pending_.size();
  if (stop_at != std::string::npos) {
    limit = stop_at;
    stopped_ = true;
  } else if (!final) {
    size_t hold = 0;  // longest tail of pending_ that is a proper prefix of a stop string
    for (const std::string& s : stops_) {
      for (size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n) {
        if (absl::EndsWith(pending_, absl::string_view(s).substr(0, n))) {
          hold = n;
          break;
        }
      }
    }
    limit = pending_.size() - hold;
  }
  std::string delta = pending_.substr(0, limit);
  pending_.erase(0, limit);
  return delta;
}

}  // namespace premoe::tokenizer
