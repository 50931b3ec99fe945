// Chat templates: the Jinja programs Hugging Face checkpoints ship in
// tokenizer_config.json (or chat_template.jinja) to turn a conversation into
// the exact text the model was trained on.
//
// No C++ Jinja engine is packaged, so premoe carries the subset that real
// chat templates use, with Jinja's semantics as transformers configures it
// (trim_blocks, lstrip_blocks, loop controls, its tojson, raise_exception,
// strftime_now):
//   statements  if/elif/else, for (loop.*, else, `if` filter, unpacking),
//               set (names, namespace attributes), break, continue, comments
//   expressions literals, lists, dicts, tuples, attribute and item access,
//               slicing, and/or/not, comparisons, in, is [not] <test>,
//               + - * / // % ** ~, inline if
//   filters     abs capitalize count d default first float int items join
//               last length list lower map rejectattr replace reverse safe
//               selectattr string title tojson trim upper
//   tests       defined undefined none string number integer float boolean
//               true false mapping iterable sequence odd even divisibleby
//               eq equalto ne lt gt le ge in lower upper
//   methods     str: strip lstrip rstrip split rsplit startswith endswith
//               upper lower title capitalize replace find count join;
//               dict: items keys values get
//   functions   raise_exception namespace range dict strftime_now
// Anything else (macros, includes, an unknown filter, ...) is refused when
// the template is parsed, naming the construct and its line: a template that
// loads renders with Jinja's meaning, never approximately.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace premoe::chat {

namespace jinja {
struct Program;
}

// A parsed template. Immutable; Render may run on any number of threads.
class Template {
 public:
  struct Limits {
    // Longest rendered text. Default 16 MiB.
    int64_t max_output_bytes = 16 << 20;
    // Statements, loop iterations and range() items one render may take,
    // so that no template runs away. Default 10 million.
    int64_t max_steps = 10'000'000;
  };

  // `name` says where the source came from, for errors
  // ("tokenizer_config.json's chat_template"). INVALID_ARGUMENT
  // "<name> line N: ..." for a syntax error or a construct outside the
  // subset.
  static absl::StatusOr<Template> Parse(absl::string_view source, std::string name,
                                        const Limits& limits);
  static absl::StatusOr<Template> Parse(absl::string_view source, std::string name) {
    return Parse(source, std::move(name), Limits());
  }

  // Renders with the members of `variables` (a JSON object) as the
  // template's variables. INVALID_ARGUMENT: the template's own
  // raise_exception("...") message as is, or "<name> line N: ..." for an
  // error the values caused (an undefined attribute, str + int, a limit).
  absl::StatusOr<std::string> Render(const nlohmann::ordered_json& variables) const;
  // Whether `status` (from Render) is the template's raise_exception.
  static bool IsRaised(const absl::Status& status);

  const std::string& name() const { return name_; }

 private:
  Template() = default;
  std::shared_ptr<const jinja::Program> program_;
  std::string name_;
  Limits limits_;
};

}  // namespace premoe::chat
