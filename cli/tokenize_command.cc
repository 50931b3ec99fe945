// premoe tokenize: one document per stdin line -> one JSON id array per line,
// or back with --decode. Other tools (tests, the profiler's data prep) rely on
// this exact contract.
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "premoe/common/json.h"
#include "premoe/tokenizer/tokenizer.h"

namespace premoe::cli {
namespace {

struct TokenizeArgs {
  std::string tokenizer;
  bool add_special_tokens = false;
  bool decode = false;
  bool skip_special_tokens = false;
};

int RunTokenize(const TokenizeArgs& args) {
  auto tokenizer = tokenizer::Tokenizer::FromFile(args.tokenizer);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "premoe tokenize: %s\n", tokenizer.status().ToString().c_str());
    return 1;
  }
  std::ios::sync_with_stdio(false);
  std::string line, out;
  std::int64_t line_number = 0;
  while (std::getline(std::cin, line)) {
    ++line_number;
    out.clear();
    if (!args.decode) {
      auto ids = (*tokenizer)->Encode(line, args.add_special_tokens);
      if (!ids.ok()) {
        std::fprintf(stderr, "premoe tokenize: stdin line %lld: %s\n",
                     static_cast<long long>(line_number), ids.status().ToString().c_str());
        return 1;
      }
      out.push_back('[');
      for (size_t k = 0; k < ids->size(); ++k) {
        if (k > 0) out.push_back(',');
        absl::StrAppend(&out, (*ids)[k]);
      }
      out.append("]\n");
    } else {
      auto parsed = common::ParseJsonStrict(line, absl::StrCat("stdin line ", line_number));
      std::vector<std::int32_t> ids;
      bool ok = parsed.ok() && parsed->is_array();
      if (ok) {
        for (const auto& v : *parsed) {
          if (!v.is_number_integer() || v.get<std::int64_t>() < INT32_MIN ||
              v.get<std::int64_t>() > INT32_MAX) {
            ok = false;
            break;
          }
          ids.push_back(static_cast<std::int32_t>(v.get<std::int64_t>()));
        }
      }
      if (!ok) {
        std::fprintf(stderr,
                     "premoe tokenize --decode: stdin line %lld: want a JSON array of ids\n",
                     static_cast<long long>(line_number));
        return 1;
      }
      auto text = (*tokenizer)->Decode(ids, args.skip_special_tokens);
      if (!text.ok()) {
        std::fprintf(stderr, "premoe tokenize --decode: stdin line %lld: %s\n",
                     static_cast<long long>(line_number), text.status().ToString().c_str());
        return 1;
      }
      out = std::move(*text);
      out.push_back('\n');
    }
    std::cout.write(out.data(), static_cast<std::streamsize>(out.size()));
  }
  std::cout.flush();
  return std::cout.good() ? 0 : 1;
}

}  // namespace

void RegisterTokenize(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize",
      "Encode stdin, one document per line, to one JSON array of token ids per line "
      "(or decode such arrays back to text with --decode)");
  cmd->add_option("--tokenizer", args->tokenizer, "Hugging Face tokenizer.json")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_flag("--add-special-tokens", args->add_special_tokens,
                "Apply the tokenizer's post-processor (e.g. add <s>)");
  cmd->add_flag("--decode", args->decode, "Read id arrays, write text");
  cmd->add_flag("--skip-special-tokens", args->skip_special_tokens,
                "With --decode, leave special tokens out of the text");
  cmd->callback([args, exit_code] { *exit_code = RunTokenize(*args); });
}

}  // namespace premoe::cli
