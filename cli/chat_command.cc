// premoe chat render: what the model sees for a conversation, rendered with
// its chat template (and tokenized, with --model) exactly as the server
// renders chat requests. One JSON object per stdin line, one per stdout line.
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "premoe/chat/chat_format.h"
#include "premoe/common/json.h"
#include "premoe/tokenizer/tokenizer.h"

namespace premoe::cli {
namespace {

struct ChatRenderArgs {
  std::string model;
  std::string chat_template;
  bool variables = false;
};

int RunChatRender(const ChatRenderArgs& args) {
  if (args.model.empty() && args.chat_template.empty()) {
    std::fprintf(stderr, "premoe chat render: give --model, --chat-template or both\n");
    return 2;
  }
  absl::StatusOr<chat::ChatFormat> format = chat::ChatFormat::Load(args.model, args.chat_template);
  if (!format.ok()) return ReportStatus("chat render", format.status());
  if (args.variables && !format->has_template()) {
    return ReportStatus("chat render", absl::InvalidArgumentError("--variables: no chat template"));
  }
  std::unique_ptr<tokenizer::Tokenizer> tok;
  if (!args.model.empty()) {
    auto t = tokenizer::Tokenizer::FromFile(args.model + "/tokenizer.json");
    if (!t.ok()) return ReportStatus("chat render", t.status());
    tok = *std::move(t);
  }
  std::ios::sync_with_stdio(false);
  std::string line;
  int64_t line_number = 0;
  while (std::getline(std::cin, line)) {
    ++line_number;
    nlohmann::ordered_json out = nlohmann::ordered_json::object();
    absl::StatusOr<nlohmann::ordered_json> in =
        common::ParseOrderedJsonStrict(line, absl::StrCat("stdin line ", line_number));
    absl::StatusOr<std::string> text = absl::InternalError("unset");
    if (!in.ok()) {
      text = in.status();
    } else if (!in->is_object()) {
      text =
          absl::InvalidArgumentError(absl::StrCat("stdin line ", line_number, " is not an object"));
    } else if (args.variables) {
      text = format->chat_template()->Render(*in);
    } else {
      text = format->Render(in->value("messages", nlohmann::ordered_json()),
                            in->value("add_generation_prompt", true));
    }
    if (text.ok() && tok != nullptr) {
      // As apply_chat_template: the template wrote the special tokens.
      absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(*text, /*add_special_tokens=*/false);
      if (ids.ok()) {
        out["ids"] = *ids;
      } else {
        text = ids.status();
      }
    }
    if (text.ok()) {
      out["text"] = *text;
    } else {
      out.erase("ids");
      out["error"] = std::string(text.status().message());
    }
    std::cout << out.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  }
  std::cout.flush();
  return std::cout.good() ? 0 : 1;
}

}  // namespace

void RegisterChat(CLI::App& app, int* exit_code) {
  CLI::App* chat = app.add_subcommand("chat", "Chat templates");
  chat->require_subcommand(1);
  auto args = std::make_shared<ChatRenderArgs>();
  CLI::App* cmd = chat->add_subcommand(
      "render",
      "Render conversations as the server does: each stdin line a JSON object "
      "{\"messages\": [...], \"add_generation_prompt\": true}, each stdout line "
      "{\"text\": ..., \"ids\": [...]} or {\"error\": ...}");
  cmd->add_option("--model", args->model,
                  "Model directory: its chat template, special tokens and tokenizer")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--chat-template", args->chat_template,
                  "A Jinja chat template file, in place of the model's")
      ->check(CLI::ExistingFile);
  cmd->add_flag("--variables", args->variables,
                "Each line is the template's whole set of variables (for testing templates)");
  cmd->callback([args, exit_code] { *exit_code = RunChatRender(*args); });
}

}  // namespace premoe::cli
