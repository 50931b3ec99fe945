// libFuzzer target for encoding arbitrary text with a real byte-level
// tokenizer (DeepSeek-V3's, which has no normalizer).
//
// Properties: invalid UTF-8 is refused with INVALID_ARGUMENT; valid UTF-8
// round-trips exactly (decode(encode(x)) == x), with or without special
// tokens written in the text. Seeds: fuzz/corpus/tokenizer_encode/.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "premoe/tokenizer/tokenizer.h"

namespace {

void Check(bool condition) {
  if (!condition) std::abort();
}

std::unique_ptr<premoe::tokenizer::Tokenizer>& Tok() {
  static std::unique_ptr<premoe::tokenizer::Tokenizer> tokenizer;
  return tokenizer;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* path = std::getenv("PREMOE_FUZZ_TOKENIZER");
  auto tok = premoe::tokenizer::Tokenizer::FromFile(path != nullptr ? path : PREMOE_FUZZ_TOKENIZER);
  if (!tok.ok()) std::abort();
  Tok() = std::move(*tok);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto ids = Tok()->Encode(text);
  if (!ids.ok()) {
    Check(ids.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  auto back = Tok()->Decode(*ids);
  Check(back.ok() && *back == text);
  return 0;
}
