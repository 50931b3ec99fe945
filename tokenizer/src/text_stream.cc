#include "premoe/tokenizer/text_stream.h"

#include <algorithm>

#include "absl/strings/match.h"

namespace premoe::tokenizer {

TextStream::TextStream(const Tokenizer& tokenizer, std::vector<std::string> stops)
    : tokenizer_(tokenizer), stops_(std::move(stops)) {}

std::string TextStream::Add(int64_t token) {
  ids_.push_back(static_cast<int32_t>(token));
  return Emit(/*final=*/false);
}

std::string TextStream::Finish() { return Emit(/*final=*/true); }

std::string TextStream::Emit(bool final) {
  if (stopped_ || !status_.ok()) return "";
  absl::StatusOr<std::string> text = tokenizer_.Decode(ids_);
  if (!text.ok()) {
    status_ = text.status();
    return "";
  }
  size_t limit = text->size();
  size_t stop_at = std::string::npos;
  for (const std::string& s : stops_) stop_at = std::min(stop_at, text->find(s));
  if (stop_at != std::string::npos) {
    limit = stop_at;
    stopped_ = true;
  } else if (!final) {
    static constexpr absl::string_view kReplacement = "\xEF\xBF\xBD";
    absl::string_view view(*text);
    while (absl::EndsWith(view, kReplacement)) view.remove_suffix(kReplacement.size());
    size_t hold = 0;  // longest tail of `view` that is a proper prefix of a stop string
    for (const std::string& s : stops_) {
      for (size_t n = std::min(s.size() - 1, view.size()); n > hold; --n) {
        if (absl::EndsWith(view, absl::string_view(s).substr(0, n))) {
          hold = n;
          break;
        }
      }
    }
    limit = view.size() - hold;
  }
  // If a longer decode ever rewrote text already emitted (no supported
  // decoder does, past a trailing U+FFFD), the emitted text stands.
  if (limit <= emitted_) return "";
  std::string delta = text->substr(emitted_, limit - emitted_);
  emitted_ = limit;
  return delta;
}

}  // namespace premoe::tokenizer
