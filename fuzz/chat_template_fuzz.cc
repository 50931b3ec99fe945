// libFuzzer target for chat templates (chat/src/parser.cc, render.cc).
//
// Arbitrary bytes are a template: parsed, then rendered with a fixed
// conversation. Beyond what the sanitizers catch, a refusal must explain
// itself, and nothing may run away (the parser bounds nesting, the renderer
// its steps and output). Seeds: fuzz/corpus/chat_template/.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "premoe/chat/template.h"

namespace {

void Check(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  premoe::chat::Template::Limits limits;
  limits.max_output_bytes = 1 << 16;
  limits.max_steps = 20000;
  auto t = premoe::chat::Template::Parse(source, "fuzz", limits);
  if (!t.ok()) {
    Check(!t.status().message().empty());
    return 0;
  }
  static const nlohmann::ordered_json variables = {
      {"messages",
       {{{"role", "system"}, {"content", "Be brief."}},
        {{"role", "user"}, {"content", "h\xc3\xa9llo <s> {{ x }}"}},
        {{"role", "assistant"}, {"content", nullptr}}}},
      {"add_generation_prompt", true},
      {"bos_token", "<s>"},
      {"eos_token", "</s>"},
      {"tools", nullptr}};
  auto out = t->Render(variables);
  if (!out.ok()) {
    Check(!out.status().message().empty());
    return 0;
  }
  Check(static_cast<int64_t>(out->size()) <= limits.max_output_bytes);
  return 0;
}
