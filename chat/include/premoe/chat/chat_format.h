// A model's chat format: its chat template and the special tokens the
// template may name, rendered exactly as transformers' apply_chat_template
// renders them (then tokenized without the tokenizer's own special tokens:
// the template writes what the model needs, a BOS included).
#pragma once

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "premoe/chat/template.h"

namespace premoe::chat {

class ChatFormat {
 public:
  // Reads `model_dir`'s template as transformers does: chat_template.jinja
  // if present, else tokenizer_config.json's "chat_template" (a string, or
  // a list of {"name", "template"} whose "default" is used), and the
  // special tokens of tokenizer_config.json (bos_token, eos_token,
  // unk_token, pad_token, ...; a string or an AddedToken object).
  // `template_file`, when given (--chat-template), replaces the model's
  // template. A model without one loads: has_template() is false and
  // Render refuses. An empty `model_dir` reads only `template_file`. Errors: INVALID_ARGUMENT
  // naming the file (and line) for a malformed tokenizer_config.json or a template outside the
  // subset; NOT_FOUND for a missing template_file.
  static absl::StatusOr<ChatFormat> Load(const std::string& model_dir,
                                         const std::string& template_file = "");
  // A format from a template's text and the special tokens by name.
  static absl::StatusOr<ChatFormat> FromSource(const std::string& source, std::string name,
                                               std::map<std::string, std::string> special_tokens);

  bool has_template() const { return template_ != nullptr; }
  // The template, or null.
  const Template* chat_template() const { return template_.get(); }
  // Where the template came from ("<dir>/tokenizer_config.json"), or "".
  std::string source() const { return template_ != nullptr ? template_->name() : ""; }

  // The text of `messages` (a JSON array of objects, each with a string
  // "role" and a "content" that is a string or null; other members reach
  // the template as they are). With `add_generation_prompt`, the text ends
  // where the assistant's reply begins. INVALID_ARGUMENT: no template
  // ("this model has no chat template; ..."), malformed messages, or the
  // template refusing the conversation (its raise_exception message).
  absl::StatusOr<std::string> Render(const nlohmann::ordered_json& messages,
                                     bool add_generation_prompt) const;

 private:
  std::shared_ptr<const Template> template_;
  std::map<std::string, std::string> special_tokens_;
};

}  // namespace premoe::chat
