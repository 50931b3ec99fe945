// Unit tests of the tokenizer: hand-computed BPE, error handling, invalid
// input. Parity with the Hugging Face library over a corpus and the real
// tokenizer files is tokenizer_parity_test.py.
#include "premoe/tokenizer/tokenizer.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "premoe/tokenizer/text_stream.h"
#include "tests/testutil/testutil.h"

namespace premoe::tokenizer {
namespace {

using ::premoe::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A byte-level-free BPE over a 6-token vocabulary, so expected ids can be
// worked out by hand.
std::string TinyBpe(const std::string& merges, const std::string& extra = "") {
  return absl::StrCat(R"({"version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [{"id": 6, "content": "<s>", "single_word": false, "lstrip": false,
                      "rstrip": false, "normalized": false, "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed",
                      "invert": false},
    "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [6], "tokens": ["<s>"]}}},
    "decoder": null,)",
                      extra, R"(
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false,
              "byte_fallback": false,
              "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5},
              "merges": )",
                      merges, "}}");
}

TEST(TokenizerTest, MergesLowestRankFirst) {
  // "b c" outranks "a b", so "abc" becomes a + bc, then "a bc" -> abc.
  ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromJson(TinyBpe(R"(["b c", "a b", "a bc"])"), "tiny"));
  ASSERT_OK_AND_ASSIGN(auto ids, tok->Encode("abc"));
  EXPECT_THAT(ids, ElementsAre(5));
  // Without "a bc", it stops at [a, bc].
  ASSERT_OK_AND_ASSIGN(tok, Tokenizer::FromJson(TinyBpe(R"(["b c", "a b"])"), "tiny"));
  ASSERT_OK_AND_ASSIGN(ids, tok->Encode("abc"));
  EXPECT_THAT(ids, ElementsAre(0, 4));
  // With "a b" first: [ab, c]; there is no "ab c" merge.
  ASSERT_OK_AND_ASSIGN(tok, Tokenizer::FromJson(TinyBpe(R"([["a", "b"], ["b", "c"]])"), "tiny"));
  ASSERT_OK_AND_ASSIGN(ids, tok->Encode("abc cab b"));
  EXPECT_THAT(ids, ElementsAre(3, 2, 2, 3, 1));
}

TEST(TokenizerTest, PostProcessorAddsSpecialTokensOnlyWhenAsked) {
  ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromJson(TinyBpe(R"(["a b"])"), "tiny"));
  ASSERT_OK_AND_ASSIGN(auto plain, tok->Encode("ab"));
  ASSERT_OK_AND_ASSIGN(auto with, tok->Encode("ab", /*add_special_tokens=*/true));
  EXPECT_THAT(plain, ElementsAre(3));
  EXPECT_THAT(with, ElementsAre(6, 3));
  // Special tokens written in the text are recognised either way.
  ASSERT_OK_AND_ASSIGN(auto in_text, tok->Encode("a<s>b"));
  EXPECT_THAT(in_text, ElementsAre(0, 6, 1));
  EXPECT_TRUE(tok->IsSpecial(6));
  EXPECT_FALSE(tok->IsSpecial(3));
  EXPECT_EQ(tok->vocab_size(), 7);
  EXPECT_EQ(tok->TokenToId("bc"), 4);
  EXPECT_EQ(tok->IdToToken(6), "<s>");
  EXPECT_EQ(tok->IdToToken(7), std::nullopt);
}

TEST(TokenizerTest, CharactersOutsideTheVocabWithoutUnkAreDropped) {
  // HF's BPE drops a character it cannot represent when there is no unk
  // token and no byte fallback (its neighbours then merge); ours must do the
  // same to give the same ids.
  ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromJson(TinyBpe(R"(["a b"])"), "tiny"));
  ASSERT_OK_AND_ASSIGN(auto ids, tok->Encode("axb"));
  EXPECT_THAT(ids, ElementsAre(3));
}

TEST(TokenizerTest, InvalidUtf8IsRefusedWithItsOffset) {
  ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromJson(TinyBpe(R"(["a b"])"), "tiny"));
  EXPECT_THAT(tok->Encode(std::string("ab\xff", 3)),
              StatusIs(absl::StatusCode::kInvalidArgument, "not valid UTF-8 at byte 2"));
  // Overlong encoding of '/', a lone continuation byte, a surrogate, a
  // truncated 3-byte sequence: all refused.
  for (const std::string& bad : {std::string("\xc0\xaf"), std::string("\x80"),
                                 std::string("\xed\xa0\x80"), std::string("a\xe4\xbd")}) {
    EXPECT_THAT(tok->Encode(bad), StatusIs(absl::StatusCode::kInvalidArgument, "UTF-8")) << bad;
  }
}

class RealTokenizerTest : public ::testing::Test {
 protected:
  static std::unique_ptr<Tokenizer> Load(const std::string& name) {
    auto tok = Tokenizer::FromFile(premoe::testing::SharedDir() + "/tokenizers/" + name +
                                   ".tokenizer.json");
    EXPECT_TRUE(tok.ok()) << tok.status();
    return tok.ok() ? std::move(*tok) : nullptr;
  }
};

TEST_F(RealTokenizerTest, LlamaFallsBackToBytesForCharactersOutsideTheVocab) {
  auto tok = Load("llama2");
  ASSERT_NE(tok, nullptr);
  // "▁" (28705) then the four UTF-8 bytes of U+1D11E as <0xF0><0x9D><0x84>
  // <0x9E>, whose ids are 3 + the byte value in this vocabulary.
  ASSERT_OK_AND_ASSIGN(auto ids, tok->Encode("\xF0\x9D\x84\x9E"));
  EXPECT_THAT(ids, ElementsAre(28705, 3 + 0xF0, 3 + 0x9D, 3 + 0x84, 3 + 0x9E));
  ASSERT_OK_AND_ASSIGN(auto text, tok->Decode(ids));
  EXPECT_EQ(text, "\xF0\x9D\x84\x9E");
  // A partial character decodes to U+FFFD per byte, as HF's ByteFallback does.
  const std::vector<std::int32_t> partial = {3 + 0xF0, 3 + 0x9F};
  ASSERT_OK_AND_ASSIGN(text, tok->Decode(partial));
  EXPECT_EQ(text, "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST_F(RealTokenizerTest, ByteLevelRoundTripsAndDecodesPartialCharactersLossily) {
  auto tok = Load("deepseek_v3");
  ASSERT_NE(tok, nullptr);
  const std::string text = "Grüße, 世界! \t\t 😀 <｜begin▁of▁sentence｜>x";
  ASSERT_OK_AND_ASSIGN(auto ids, tok->Encode(text));
  ASSERT_OK_AND_ASSIGN(auto back, tok->Decode(ids));
  EXPECT_EQ(back, text);
  ASSERT_OK_AND_ASSIGN(auto skipped, tok->Decode(ids, /*skip_special_tokens=*/true));
  EXPECT_EQ(skipped, "Grüße, 世界! \t\t 😀 x");
  EXPECT_THAT(tok->Decode(std::vector<std::int32_t>{1, -5}),
              StatusIs(absl::StatusCode::kInvalidArgument, "id -5 at position 1"));
  // Past the tokenizer's ids (a model's padded vocabulary): nothing, as in
  // `tokenizers`.
  ASSERT_OK_AND_ASSIGN(auto padded,
                       tok->Decode(std::vector<std::int32_t>{ids[0], tok->vocab_size(),
                                                             tok->vocab_size() + 400, ids[1]}));
  ASSERT_OK_AND_ASSIGN(auto two, tok->Decode(std::vector<std::int32_t>{ids[0], ids[1]}));
  EXPECT_EQ(padded, two);
}

// Streams `ids` one at a time; the concatenated deltas and Finish().
std::string Stream(const Tokenizer& tok, const std::vector<std::int32_t>& ids,
                   std::vector<std::string> stops = {}, bool* stopped = nullptr) {
  TextStream stream(tok, std::move(stops));
  std::string out;
  for (std::int32_t id : ids) {
    out += stream.Add(id);
    EXPECT_OK(stream.status());
    if (stream.stopped()) break;
  }
  out += stream.Finish();
  if (stopped != nullptr) *stopped = stream.stopped();
  return out;
}

// The streamed text equals the one-shot decode on every real tokenizer
// (byte-level, Metaspace, byte fallback), with characters split across
// tokens, padded-vocabulary ids among them, and stop strings anywhere.
TEST_F(RealTokenizerTest, StreamedTextEqualsTheOneShotDecode) {
  const std::string text =
      " Grüße, 世界!\n\n  def f(x):\treturn x ** 2  # 平方 😀🎉 naïve café —  end. \xF0\x9D\x84\x9E";
  for (const char* name : {"deepseek_v3", "gptoss", "llama2", "qwen3"}) {
    SCOPED_TRACE(name);
    auto tok = Load(name);
    ASSERT_NE(tok, nullptr);
    ASSERT_OK_AND_ASSIGN(std::vector<std::int32_t> ids, tok->Encode(text));
    ASSERT_OK_AND_ASSIGN(std::string whole, tok->Decode(ids));
    EXPECT_EQ(Stream(*tok, ids), whole);
    // A character's bytes as separate tokens (byte-level or byte-fallback
    // vocabularies), and ids past the tokenizer's.
    std::vector<std::int32_t> split;
    for (std::int32_t id : ids) {
      split.push_back(id);
      if (split.size() % 3 == 0) split.push_back(tok->vocab_size() + 7);
    }
    ASSERT_OK_AND_ASSIGN(whole, tok->Decode(split));
    EXPECT_EQ(Stream(*tok, split), whole);
    // Stops: the text before the first occurrence of any stop string.
    for (const std::string& stop : {std::string("世界"), std::string("x **"), std::string("😀"),
                                    std::string("\n\n"), std::string("not there")}) {
      SCOPED_TRACE(stop);
      bool stopped = false;
      const std::string streamed = Stream(*tok, ids, {stop, "zzz"}, &stopped);
      ASSERT_OK_AND_ASSIGN(whole, tok->Decode(ids));
      const size_t at = whole.find(stop);
      EXPECT_EQ(stopped, at != std::string::npos);
      EXPECT_EQ(streamed, whole.substr(0, at));
    }
  }
}

TEST_F(RealTokenizerTest, ConcurrentEncodesAgree) {
  auto tok = Load("qwen3");
  ASSERT_NE(tok, nullptr);
  const std::string text = "def f(x):\n    return x ** 2  # 平方   \n\n\n";
  ASSERT_OK_AND_ASSIGN(const auto expected, tok->Encode(text));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        auto ids = tok->Encode(text);
        if (!ids.ok() || *ids != expected) ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

struct MalformedCase {
  std::string name;
  std::string json;
  std::string message;
};

class MalformedTokenizerTest : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(MalformedTokenizerTest, IsRefusedWithAClearMessage) {
  auto tok = Tokenizer::FromJson(GetParam().json, "bad.json");
  EXPECT_THAT(tok, StatusIs(absl::StatusCode::kInvalidArgument, GetParam().message));
  if (!tok.ok()) {
    EXPECT_THAT(std::string(tok.status().message()), HasSubstr("bad.json"));
  }
}

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  if (at == std::string::npos) ADD_FAILURE() << "no " << from;
  return at == std::string::npos ? s : s.replace(at, from.size(), to);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MalformedTokenizerTest,
    ::testing::Values(
        MalformedCase{"NotJson", "{\"model\": ", "invalid JSON"},
        MalformedCase{"NotAnObject", "[1, 2]", "top level must be an object"},
        MalformedCase{"DuplicateKey", "{\"model\": {}, \"model\": {}}", "duplicate key"},
        MalformedCase{"NoModel", "{\"normalizer\": null}", "missing \"model\""},
        MalformedCase{"UnigramModel",
                      Replace(TinyBpe("[]"), "\"type\": \"BPE\"", "\"type\": \"Unigram\""),
                      "model type \"Unigram\" is not supported"},
        MalformedCase{"UnknownNormalizer",
                      Replace(TinyBpe("[]"), "\"normalizer\": null",
                              "\"normalizer\": {\"type\": \"Precompiled\"}"),
                      "normalizer type \"Precompiled\" is not supported"},
        MalformedCase{
            "UnknownPreTokenizer",
            Replace(TinyBpe("[]"), "\"type\": \"Split\"", "\"type\": \"BertPreTokenizer\""),
            "pre_tokenizer type \"BertPreTokenizer\" is not supported"},
        MalformedCase{
            "UnknownDecoder",
            Replace(TinyBpe("[]"), "\"decoder\": null", "\"decoder\": {\"type\": \"WordPiece\"}"),
            "decoder type \"WordPiece\" is not supported"},
        MalformedCase{"BadSplitBehavior", Replace(TinyBpe("[]"), "Removed", "Sideways"),
                      "unknown split behavior \"Sideways\""},
        MalformedCase{"BadRegex",
                      Replace(TinyBpe("[]"), "{\"String\": \" \"}", "{\"Regex\": \"(unclosed\"}"),
                      "does not compile"},
        MalformedCase{"MergeOfUnknownToken", TinyBpe(R"(["a z"])"),
                      "merge 0 (\"a\", \"z\") uses a token that is not in the vocab"},
        MalformedCase{"MergeNotTwoTokens", TinyBpe(R"(["a b c"])"), "is not two tokens"},
        MalformedCase{"MergeWrongType", TinyBpe(R"([7])"), "merge 0 must be"},
        MalformedCase{"VocabIdNegative", Replace(TinyBpe("[]"), "\"a\": 0", "\"a\": -1"),
                      "vocab entry \"a\""},
        MalformedCase{"UnkNotInVocab",
                      Replace(TinyBpe("[]"), "\"unk_token\": null", "\"unk_token\": \"<unk>\""),
                      "unk_token \"<unk>\" is not in the vocab"},
        MalformedCase{
            "TruncationSet",
            Replace(TinyBpe("[]"), "\"truncation\": null", "\"truncation\": {\"max_length\": 8}"),
            "\"truncation\" is set"},
        MalformedCase{"AddedTokenWithoutId", Replace(TinyBpe("[]"), "\"id\": 6, ", ""),
                      "added_tokens[0]: needs an integer \"id\""},
        MalformedCase{"AddedTokenFlagNotBool",
                      Replace(TinyBpe("[]"), "\"lstrip\": false", "\"lstrip\": \"no\""),
                      "\"lstrip\" must be a boolean"},
        MalformedCase{
            "TemplateUnknownSpecial",
            Replace(TinyBpe("[]"), "\"special_tokens\": {\"<s>\"", "\"special_tokens\": {\"<t>\""),
            "special token \"<s>\" is not in special_tokens"},
        // Found by tokenizer_json_fuzz: a template adding an id that Decode
        // would then refuse.
        MalformedCase{"TemplateIdOutsideVocab",
                      Replace(TinyBpe("[]"), "\"ids\": [6]", "\"ids\": [60]"),
                      "special token \"<s>\" has id 60, which is not in the vocabulary"},
        MalformedCase{"ComponentNotAnObject",
                      Replace(TinyBpe("[]"), "\"normalizer\": null", "\"normalizer\": 3"),
                      "normalizer: must be an object"},
        MalformedCase{"Dropout", Replace(TinyBpe("[]"), "\"dropout\": null", "\"dropout\": 0.1"),
                      "dropout is not supported"}),
    [](const ::testing::TestParamInfo<MalformedCase>& info) { return info.param.name; });

TEST(TokenizerFileTest, MissingAndOversizedFilesAreClearErrors) {
  EXPECT_THAT(Tokenizer::FromFile("/nonexistent/tokenizer.json"),
              StatusIs(absl::StatusCode::kNotFound, "/nonexistent/tokenizer.json"));
  premoe::testing::TempDir dir;
  const std::string path = dir.Join("tokenizer.json");
  premoe::testing::WriteStringToFile(path, TinyBpe("[]"));
  EXPECT_THAT(Tokenizer::FromFile(path, {.max_file_bytes = 16}),
              StatusIs(absl::StatusCode::kInvalidArgument, "over the limit"));
  EXPECT_OK(Tokenizer::FromFile(path).status());
}

}  // namespace
}  // namespace premoe::tokenizer
