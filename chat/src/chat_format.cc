#include "premoe/chat/chat_format.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "premoe/common/file.h"
#include "premoe/common/json.h"
#include "premoe/common/status.h"
#include "premoe/common/utf8.h"

namespace premoe::chat {
namespace {

constexpr uint64_t kMaxFileBytes = 16 << 20;

// The special tokens apply_chat_template passes (transformers'
// special_tokens_map): a string, or an AddedToken object's "content".
absl::StatusOr<std::map<std::string, std::string>> SpecialTokens(
    const nlohmann::ordered_json& config, const std::string& file) {
  std::map<std::string, std::string> out;
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                          "cls_token", "mask_token"}) {
    auto it = config.find(key);
    if (it == config.end() || it->is_null()) continue;
    if (it->is_string()) {
      out[key] = it->get<std::string>();
    } else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
      out[key] = (*it)["content"].get<std::string>();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": ", key, " is ", common::JsonTypeName(*it),
                       "; want a string or an object with a string \"content\""));
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<ChatFormat> ChatFormat::FromSource(
    const std::string& source, std::string name,
    std::map<std::string, std::string> special_tokens) {
  ChatFormat f;
  ASSIGN_OR_RETURN(Template t, Template::Parse(source, std::move(name)));
  f.template_ = std::make_shared<const Template>(std::move(t));
  f.special_tokens_ = std::move(special_tokens);
  return f;
}

absl::StatusOr<ChatFormat> ChatFormat::Load(const std::string& model_dir,
                                            const std::string& template_file) {
  std::map<std::string, std::string> special;
  std::string source, name;
  const std::string config_path = model_dir + "/tokenizer_config.json";
  std::error_code ec;
  if (!model_dir.empty() && std::filesystem::exists(config_path, ec)) {
    ASSIGN_OR_RETURN(std::string text, common::ReadFile(config_path, kMaxFileBytes));
    ASSIGN_OR_RETURN(nlohmann::ordered_json config,
                     common::ParseOrderedJsonStrict(text, config_path));
    if (!config.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(config_path, " is not a JSON object"));
    }
    ASSIGN_OR_RETURN(special, SpecialTokens(config, config_path));
    if (auto it = config.find("chat_template"); it != config.end() && !it->is_null()) {
      name = config_path + "'s chat_template";
      if (it->is_string()) {
        source = it->get<std::string>();
      } else if (it->is_array()) {
        for (const auto& entry : *it) {
          if (entry.is_object() && entry.value("name", "") == "default" &&
              entry.contains("template") && entry["template"].is_string()) {
            source = entry["template"].get<std::string>();
          }
        }
        if (source.empty()) {
          return absl::InvalidArgumentError(absl::StrCat(
              config_path,
              ": chat_template is a list with no {\"name\": \"default\", \"template\": ...}"));
        }
      } else {
        return absl::InvalidArgumentError(absl::StrCat(config_path, ": chat_template is ",
                                                       common::JsonTypeName(*it),
                                                       "; want a string or a list"));
      }
    }
  }
  const std::string jinja_path = model_dir + "/chat_template.jinja";
  std::string file = template_file;
  if (file.empty() && !model_dir.empty() && std::filesystem::exists(jinja_path, ec)) {
    file = jinja_path;
  }
  if (!file.empty()) {
    ASSIGN_OR_RETURN(source, common::ReadFile(file, kMaxFileBytes));
    name = file;
  }
  if (source.empty() && name.empty()) {
    ChatFormat f;
    f.special_tokens_ = std::move(special);
    return f;
  }
  return FromSource(source, std::move(name), std::move(special));
}

absl::StatusOr<std::string> ChatFormat::Render(const nlohmann::ordered_json& messages,
                                               bool add_generation_prompt) const {
  if (template_ == nullptr) {
    return absl::InvalidArgumentError(
        "this model has no chat template (no chat_template in its tokenizer_config.json and no "
        "chat_template.jinja), so chat messages cannot be rendered; send a prompt, or start the "
        "server with --chat-template FILE");
  }
  if (!messages.is_array()) return absl::InvalidArgumentError("messages must be a JSON array");
  for (size_t k = 0; k < messages.size(); ++k) {
    const nlohmann::ordered_json& m = messages[k];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("message ", k, " has no string \"role\""));
    }
    auto content = m.find("content");
    if (content != m.end() && !content->is_string() && !content->is_null()) {
      return absl::InvalidArgumentError(absl::StrCat("message ", k, "'s content is ",
                                                     common::JsonTypeName(*content),
                                                     "; want a string or null"));
    }
  }
  nlohmann::ordered_json variables = nlohmann::ordered_json::object();
  for (const auto& [k, v] : special_tokens_) variables[k] = v;
  variables["messages"] = messages;
  variables["add_generation_prompt"] = add_generation_prompt;
  variables["tools"] = nullptr;
  variables["documents"] = nullptr;
  absl::StatusOr<std::string> text = template_->Render(variables);
  if (!text.ok() && Template::IsRaised(text.status())) {
    return absl::InvalidArgumentError(
        absl::StrCat("the model's chat template refused the messages: ", text.status().message()));
  }
  return text;
}

}  // namespace premoe::chat
