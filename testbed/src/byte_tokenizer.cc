// The testbed's byte-level tokenizer, written as a Hugging Face tokenizer.json.
#include <cstdint>
#include <string>

#include "premoe/testbed/tasks.h"

namespace premoe::testbed {
namespace {

// GPT-2's ByteLevel alphabet: printable Latin-1 bytes stand for themselves;
// the other 68 (controls, space, 0x7f-0xa0, 0xad) map, in byte order, to
// U+0100 upwards. Returns the UTF-8 of byte `b`'s stand-in character.
std::string ByteLevelChar(int b) {
  const auto printable = [](int c) {
    return (c >= '!' && c <= '~') || (c >= 0xa1 && c <= 0xac) || (c >= 0xae && c <= 0xff);
  };
  int code_point = b;
  if (!printable(b)) {
    int n = 0;
    for (int c = 0; c < b; ++c) n += printable(c) ? 0 : 1;
    code_point = 256 + n;
  }
  std::string utf8;
  if (code_point < 0x80) {
    utf8.push_back(static_cast<char>(code_point));
  } else {  // every stand-in is below U+0800: two bytes
    utf8.push_back(static_cast<char>(0xc0 | (code_point >> 6)));
    utf8.push_back(static_cast<char>(0x80 | (code_point & 0x3f)));
  }
  return utf8;
}

nlohmann::ordered_json AddedToken(int64_t id, const char* content) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", true}};
}

nlohmann::ordered_json SpecialPiece(const char* id) {
  return {{"SpecialToken", {{"id", id}, {"type_id", 0}}}};
}

nlohmann::ordered_json SequencePiece(const char* id) {
  return {{"Sequence", {{"id", id}, {"type_id", 0}}}};
}

}  // namespace

std::string ByteTokenizerJson() {
  const nlohmann::ordered_json byte_level = {{"type", "ByteLevel"},
                                             {"add_prefix_space", false},
                                             {"trim_offsets", false},
                                             {"use_regex", false}};
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteLevelChar(b)] = b;

  nlohmann::ordered_json tokenizer;
  tokenizer["version"] = "1.0";
  tokenizer["truncation"] = nullptr;
  tokenizer["padding"] = nullptr;
  tokenizer["added_tokens"] = {AddedToken(kBosId, "<|bos|>"), AddedToken(kEosId, "<|eos|>")};
  tokenizer["normalizer"] = nullptr;
  tokenizer["pre_tokenizer"] = byte_level;
  tokenizer["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {SpecialPiece("<|bos|>"), SequencePiece("A")}},
      {"pair", {SpecialPiece("<|bos|>"), SequencePiece("A"), SequencePiece("B")}},
      {"special_tokens",
       {{"<|bos|>", {{"id", "<|bos|>"}, {"ids", {kBosId}}, {"tokens", {"<|bos|>"}}}}}}};
  tokenizer["decoder"] = byte_level;
  tokenizer["model"] = {{"type", "BPE"},
                        {"dropout", nullptr},
                        {"unk_token", nullptr},
                        {"continuing_subword_prefix", nullptr},
                        {"end_of_word_suffix", nullptr},
                        {"fuse_unk", false},
                        {"byte_fallback", false},
                        {"ignore_merges", false},
                        {"vocab", std::move(vocab)},
                        {"merges", nlohmann::ordered_json::array()}};
  return tokenizer.dump(2) + "\n";
}

std::string ByteTokenizerConfigJson() {
  // The model was trained on bare task prompts, so a chat is its one user
  // message after <|bos|>; anything else would be a format it never saw.
  const char* kTemplate =
      "{%- if messages | length != 1 or messages[0].role != 'user' -%}\n"
      "{{- raise_exception('the premoe testbed model answers a single user message (a task "
      "prompt); it has no system or multi-turn format') -}}\n"
      "{%- endif -%}\n"
      "{{- bos_token + messages[0].content -}}\n";
  const nlohmann::ordered_json config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                                         {"bos_token", "<|bos|>"},
                                         {"eos_token", "<|eos|>"},
                                         {"add_bos_token", true},
                                         {"model_max_length", 256},
                                         {"chat_template", kTemplate}};
  return config.dump(2) + "\n";
}

std::string GenerationConfigJson() {
  // Greedy: every testbed task has one right answer.
  const nlohmann::ordered_json config = {
      {"bos_token_id", kBosId}, {"eos_token_id", kEosId}, {"do_sample", false}};
  return config.dump(2) + "\n";
}

}  // namespace premoe::testbed
