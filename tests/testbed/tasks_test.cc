// The testbed's tasks, checked against the contract in tasks.h. Answers,
// instances and wordings are recovered from the prompts by this file's own
// parsing and recomputed here; text windows are recomputed from the corpus
// files; the byte tokenizer is checked against premoe's tokenizer and the
// Hugging Face `tokenizers` library.
#include "premoe/testbed/tasks.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "premoe/chat/chat_format.h"
#include "premoe/common/file.h"
#include "premoe/common/hash.h"
#include "premoe/common/json.h"
#include "premoe/tokenizer/tokenizer.h"
#include "tests/testutil/testutil.h"

namespace premoe::testbed {
namespace {

using ::premoe::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr Split kSplits[] = {Split::kTrain, Split::kCalibration, Split::kEval};

// See FirstEvalSamplesArePinned.
constexpr char kPinnedAddEval0Prompt[] = "What is 61 + 83?";
constexpr char kPinnedAddEval0Completion[] = "144";
// XXH3 of the first 100 eval samples of every exact-match task.
constexpr std::uint64_t kPinnedEvalHash = 15416413541934252733ull;

std::vector<const Task*> ExactMatchTasks() {
  std::vector<const Task*> out;
  for (const Task* t : AllTasks()) {
    if (t->kind() == TaskKind::kExactMatch) out.push_back(t);
  }
  return out;
}

std::vector<const Task*> TextTasks() {
  std::vector<const Task*> out;
  for (const Task* t : AllTasks()) {
    if (t->kind() == TaskKind::kText) out.push_back(t);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Reading a prompt back: the instance it poses, the answer it wants, and its
// wording with the instance blanked out.

struct Parsed {
  std::string instance;  // canonical form, e.g. "347+85"
  std::string answer;
  std::string wording;  // the prompt with the instance replaced by placeholders
};

std::vector<std::smatch> AllMatches(const std::string& s, const std::regex& re) {
  std::vector<std::smatch> out;
  for (auto it = std::sregex_iterator(s.begin(), s.end(), re); it != std::sregex_iterator(); ++it) {
    out.push_back(*it);
  }
  return out;
}

// Words ([A-Za-z0-9] runs) that are all lowercase letters and not among
// `stop` (the task's own instruction words): the payload word candidates.
std::vector<std::smatch> PayloadWords(const std::string& prompt,
                                      const std::set<std::string>& stop) {
  static const std::regex kWord("[A-Za-z0-9]+");
  static const std::regex kLower("[a-z]+");
  std::vector<std::smatch> out;
  for (const std::smatch& m : AllMatches(prompt, kWord)) {
    if (std::regex_match(m.str(), kLower) && stop.count(m.str()) == 0) out.push_back(m);
  }
  return out;
}

std::string Blank(const std::string& s, const std::smatch& m, const std::string& placeholder) {
  return s.substr(0, static_cast<size_t>(m.position())) + placeholder +
         s.substr(static_cast<size_t>(m.position() + m.length()));
}

std::string Binary(int n) {
  std::string out;
  do {
    out.insert(out.begin(), static_cast<char>('0' + n % 2));
    n /= 2;
  } while (n > 0);
  return out;
}

// Parses `prompt` of task `name`; nullopt (with a test failure) if it does
// not pose exactly one instance of the task.
std::optional<Parsed> ParsePrompt(const std::string& name, const std::string& prompt) {
  const auto fail = [&](const std::string& why) -> std::optional<Parsed> {
    ADD_FAILURE() << name << ": " << why << " in prompt \"" << prompt << "\"";
    return std::nullopt;
  };
  if (name == "add") {
    static const std::regex kNumber("[0-9]+");
    const auto numbers = AllMatches(prompt, kNumber);
    if (numbers.size() != 2) return fail("want two numbers");
    const int a = std::stoi(numbers[0].str()), b = std::stoi(numbers[1].str());
    if (a > 99 || b > 99) return fail("operand over 99");
    return Parsed{absl::StrCat(a, "+", b), absl::StrCat(a + b),
                  std::regex_replace(prompt, kNumber, "#")};
  }
  if (name == "subtract") {
    static const std::regex kNumber("[0-9]+");
    const auto numbers = AllMatches(prompt, kNumber);
    if (numbers.size() != 2) return fail("want two numbers");
    // "Subtract 47 from 85." names the smaller number first.
    const bool from = prompt.find(" from ") != std::string::npos;
    const int a = std::stoi(numbers[from ? 1 : 0].str());
    const int b = std::stoi(numbers[from ? 0 : 1].str());
    if (a > 99 || b > a) return fail("want 99 >= minuend >= subtrahend");
    return Parsed{absl::StrCat(a, "-", b), absl::StrCat(a - b),
                  std::regex_replace(prompt, kNumber, "#")};
  }
  if (name == "reverse" || name == "caesar") {
    static const std::set<std::string> kReverseWords = {"spell", "backwards", "the",     "letters",
                                                        "of",    "is",        "written", "back",
                                                        "to",    "front",     "reversed"};
    static const std::set<std::string> kCaesarWords = {
        "with", "this", "shift", "by", "each", "letter", "of", "three", "cipher", "to", "in", "is"};
    const auto words = PayloadWords(prompt, name == "reverse" ? kReverseWords : kCaesarWords);
    if (words.size() != 1) return fail("want one payload word");
    const std::string word = words[0].str();
    const size_t max_letters = 6;
    if (word.size() < 3 || word.size() > max_letters) return fail("word length");
    std::string answer = word;
    if (name == "reverse") {
      std::reverse(answer.begin(), answer.end());
    } else {
      for (char& c : answer) c = static_cast<char>((c - 'a' + 3) % 26 + 'a');
    }
    return Parsed{word, answer, Blank(prompt, words[0], "W")};
  }
  if (name == "sort") {
    static const std::regex kDigits("[0-9]( [0-9])*");
    const auto runs = AllMatches(prompt, kDigits);
    if (runs.size() != 1) return fail("want one run of digits");
    std::string digits;
    for (char c : runs[0].str()) {
      if (c != ' ') digits.push_back(c);
    }
    if (digits.size() < 3 || digits.size() > 5) return fail("want 3-5 digits");
    std::string sorted = digits;
    std::sort(sorted.begin(), sorted.end());
    std::string answer;
    for (char c : sorted) absl::StrAppend(&answer, answer.empty() ? "" : " ", std::string(1, c));
    return Parsed{digits, answer, Blank(prompt, runs[0], "#")};
  }
  if (name == "brackets") {
    static const std::regex kOpen("[(\\[{<]+");
    if (prompt.find_first_of(")]}>") != std::string::npos) return fail("closing bracket");
    const auto runs = AllMatches(prompt, kOpen);
    if (runs.size() != 1) return fail("want one run of brackets");
    const std::string open = runs[0].str();
    if (open.size() > 5) return fail("more than 5 brackets");
    std::string answer;
    for (char c : open) {
      const char close = c == '(' ? ')' : c == '[' ? ']' : c == '{' ? '}' : '>';
      answer.insert(answer.begin(), close);
    }
    return Parsed{open, answer, Blank(prompt, runs[0], "B")};
  }
  if (name == "binary") {
    static const std::regex kHex("(0x|hex |Hex )([0-9a-f]{1,3})\\b");
    std::smatch m;
    if (!std::regex_search(prompt, m, kHex)) return fail("no hex number");
    std::string bits;
    for (char c : m[2].str()) {
      const int d = std::stoi(std::string(1, c), nullptr, 16);
      if (!bits.empty()) bits += ' ';
      bits += Binary(d + 16).substr(1);  // four bits, leading zeros kept
    }
    return Parsed{m[2].str(), bits, Blank(prompt, m, "#")};
  }
  return fail("no parser for this task");
}

// ---------------------------------------------------------------------------
// Registry, names, errors.

TEST(TasksTest, RegistryHoldsTheNineTasksInOrder) {
  std::vector<std::string> names;
  for (const Task* t : AllTasks()) names.push_back(t->name());
  EXPECT_THAT(names, ElementsAre("add", "subtract", "reverse", "sort", "brackets", "binary",
                                 "caesar", "c_headers", "licenses"));
  EXPECT_EQ(ExactMatchTasks().size(), 7u);
  EXPECT_EQ(TextTasks().size(), 2u);
  for (const Task* t : AllTasks()) {
    EXPECT_FALSE(t->description().empty()) << t->name();
    EXPECT_EQ(t->description().find('\n'), std::string::npos) << t->name();
    ASSERT_OK_AND_ASSIGN(const Task* found, FindTask(t->name()));
    EXPECT_EQ(found, t);
  }
  for (const Task* t : ExactMatchTasks()) {
    EXPECT_EQ(t->size(Split::kTrain), INT64_MAX) << t->name();
    EXPECT_EQ(t->size(Split::kCalibration), 1000) << t->name();
    EXPECT_EQ(t->size(Split::kEval), 1000) << t->name();
  }
}

TEST(TasksTest, SplitNamesRoundTripAndBadNamesListTheValidOnes) {
  for (Split s : kSplits) {
    ASSERT_OK_AND_ASSIGN(Split parsed, ParseSplit(SplitName(s)));
    EXPECT_EQ(parsed, s);
  }
  EXPECT_EQ(SplitName(Split::kCalibration), "calibration");
  EXPECT_THAT(ParseSplit("test"), StatusIs(absl::StatusCode::kInvalidArgument,
                                           "unknown split \"test\"; valid splits: train, "
                                           "calibration, eval"));
  EXPECT_THAT(ParseSplit("Eval"), StatusIs(absl::StatusCode::kInvalidArgument, "valid splits"));
}

TEST(TasksTest, FindTaskNamesTheValidTasks) {
  EXPECT_THAT(FindTask("addition"),
              StatusIs(absl::StatusCode::kNotFound,
                       "unknown task \"addition\"; valid tasks: add, subtract, reverse, sort, "
                       "brackets, binary, caesar, c_headers, licenses"));
}

TEST(TasksTest, ParseTaskList) {
  ASSERT_OK_AND_ASSIGN(auto all, ParseTaskList("all"));
  EXPECT_EQ(all, AllTasks());
  ASSERT_OK_AND_ASSIGN(auto two, ParseTaskList("sort, add"));
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0]->name(), "sort");
  EXPECT_EQ(two[1]->name(), "add");
  ASSERT_OK_AND_ASSIGN(auto one, ParseTaskList("licenses"));
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0]->name(), "licenses");

  EXPECT_THAT(ParseTaskList("add,add"),
              StatusIs(absl::StatusCode::kInvalidArgument, "names task \"add\" twice"));
  EXPECT_THAT(ParseTaskList("add,,sort"), StatusIs(absl::StatusCode::kInvalidArgument, "empty"));
  EXPECT_THAT(ParseTaskList(""), StatusIs(absl::StatusCode::kInvalidArgument, "empty"));
  EXPECT_THAT(ParseTaskList("add,mul"),
              StatusIs(absl::StatusCode::kNotFound, "unknown task \"mul\"; valid tasks: add"));
}

TEST(TasksTest, OutOfRangeIndicesAreRefused) {
  for (const Task* t : AllTasks()) {
    for (Split s : kSplits) {
      EXPECT_THAT(t->Get(s, -1), StatusIs(absl::StatusCode::kOutOfRange, t->name())) << t->name();
      if (t->size(s) < INT64_MAX) {
        EXPECT_THAT(t->Get(s, t->size(s)), StatusIs(absl::StatusCode::kOutOfRange, "outside"))
            << t->name();
        EXPECT_OK(t->Get(s, t->size(s) - 1).status());
      }
    }
  }
  // The far end of an unbounded train split is a sample like any other.
  ASSERT_OK_AND_ASSIGN(const Task* add, FindTask("add"));
  EXPECT_OK(add->Get(Split::kTrain, INT64_MAX - 1).status());
}

// ---------------------------------------------------------------------------
// Exact-match tasks.

TEST(ExactMatchTest, EveryCompletionIsTheRightAnswer) {
  for (const Task* t : ExactMatchTasks()) {
    for (Split s : kSplits) {
      for (int64_t i = 0; i < 300; ++i) {
        ASSERT_OK_AND_ASSIGN(Sample sample, t->Get(s, i));
        SCOPED_TRACE(absl::StrCat(t->name(), " ", SplitName(s), " #", i, ": \"", sample.prompt,
                                  "\" -> \"", sample.completion, "\""));
        const std::optional<Parsed> parsed = ParsePrompt(t->name(), sample.prompt);
        ASSERT_TRUE(parsed.has_value());
        EXPECT_EQ(sample.completion, parsed->answer);
        // Short, ASCII, printable answers without a trailing newline.
        EXPECT_LE(sample.prompt.size(), 60u);
        EXPECT_LE(sample.completion.size(), 14u);  // "1100 0111 0101"
        EXPECT_FALSE(sample.completion.empty());
        for (char c : sample.completion) EXPECT_TRUE(c >= 0x20 && c < 0x7f);
        for (char c : sample.prompt) EXPECT_TRUE((c >= 0x20 && c < 0x7f) || c == '\n');
      }
    }
  }
}

TEST(ExactMatchTest, SamplesAreAPureFunctionOfTheirIndex) {
  for (const Task* t : ExactMatchTasks()) {
    for (Split s : kSplits) {
      for (int64_t i : {int64_t{0}, int64_t{1}, int64_t{999}}) {
        ASSERT_OK_AND_ASSIGN(Sample a, t->Get(s, i));
        ASSERT_OK_AND_ASSIGN(Sample b, t->Get(s, i));
        EXPECT_EQ(a, b) << t->name();
      }
    }
    // Neighbouring indices differ (the index is part of the seed).
    ASSERT_OK_AND_ASSIGN(Sample first, t->Get(Split::kTrain, 0));
    int same = 0;
    for (int64_t i = 1; i < 20; ++i) {
      ASSERT_OK_AND_ASSIGN(Sample other, t->Get(Split::kTrain, i));
      same += other == first ? 1 : 0;
    }
    EXPECT_LE(same, 2) << t->name();
  }
}

// Pins the generated data across machines, compilers and releases: a change
// here means models trained and patterns profiled on the old samples no
// longer match their data. Change it only deliberately.
TEST(ExactMatchTest, FirstEvalSamplesArePinned) {
  std::string all;
  for (const Task* t : ExactMatchTasks()) {
    for (int64_t i = 0; i < 100; ++i) {
      ASSERT_OK_AND_ASSIGN(Sample sample, t->Get(Split::kEval, i));
      absl::StrAppend(&all, t->name(), "\x1f", sample.prompt, "\x1f", sample.completion, "\x1e");
    }
  }
  ASSERT_OK_AND_ASSIGN(const Task* add, FindTask("add"));
  ASSERT_OK_AND_ASSIGN(Sample first, add->Get(Split::kEval, 0));
  EXPECT_EQ(first.prompt, kPinnedAddEval0Prompt);
  EXPECT_EQ(first.completion, kPinnedAddEval0Completion);
  EXPECT_EQ(common::Hash64(all), kPinnedEvalHash);
}

TEST(ExactMatchTest, NoInstanceIsInTwoSplits) {
  for (const Task* t : ExactMatchTasks()) {
    std::map<Split, std::set<std::string>> instances;
    for (Split s : kSplits) {
      const int64_t n = s == Split::kTrain ? 5000 : 1000;
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_OK_AND_ASSIGN(Sample sample, t->Get(s, i));
        const std::optional<Parsed> parsed = ParsePrompt(t->name(), sample.prompt);
        ASSERT_TRUE(parsed.has_value());
        instances[s].insert(parsed->instance);
      }
    }
    for (const std::string& x : instances[Split::kEval]) {
      EXPECT_EQ(instances[Split::kTrain].count(x), 0u) << t->name() << " " << x << " eval+train";
      EXPECT_EQ(instances[Split::kCalibration].count(x), 0u)
          << t->name() << " " << x << " eval+calibration";
    }
    for (const std::string& x : instances[Split::kCalibration]) {
      EXPECT_EQ(instances[Split::kTrain].count(x), 0u)
          << t->name() << " " << x << " calibration+train";
    }
    // Each split draws from its own ~10% / 10% / 80% of the instances, not
    // a handful of them. binary has only ~100 eval instances in all.
    EXPECT_GE(instances[Split::kEval].size(), 80u) << t->name();
    EXPECT_GE(instances[Split::kCalibration].size(), 80u) << t->name();
    EXPECT_GE(instances[Split::kTrain].size(), 700u) << t->name();
  }
}

TEST(ExactMatchTest, PromptsAreWordedInAtLeastFourWays) {
  for (const Task* t : ExactMatchTasks()) {
    std::map<std::string, int> wordings;
    for (int64_t i = 0; i < 200; ++i) {
      ASSERT_OK_AND_ASSIGN(Sample sample, t->Get(Split::kEval, i));
      const std::optional<Parsed> parsed = ParsePrompt(t->name(), sample.prompt);
      ASSERT_TRUE(parsed.has_value());
      ++wordings[parsed->wording];
    }
    EXPECT_GE(wordings.size(), 4u) << t->name();
    // No wording dominates.
    for (const auto& [wording, count] : wordings) EXPECT_LE(count, 100) << t->name() << wording;
    // Some end in a newline and some do not.
    int with_newline = 0;
    for (const auto& [wording, count] : wordings) with_newline += wording.back() == '\n' ? 1 : 0;
    EXPECT_GE(with_newline, 1) << t->name();
    EXPECT_LT(with_newline, static_cast<int>(wordings.size())) << t->name();
  }
}

TEST(ExactMatchTest, ConcurrentCallsAgree) {
  std::vector<std::string> serial;
  for (const Task* t : ExactMatchTasks()) {
    for (int64_t i = 0; i < 50; ++i) serial.push_back(t->Get(Split::kEval, i).value().prompt);
  }
  std::vector<std::vector<std::string>> results(4);
  std::vector<std::thread> threads;
  for (auto& result : results) {
    threads.emplace_back([&result] {
      for (const Task* t : ExactMatchTasks()) {
        for (int64_t i = 0; i < 50; ++i) result.push_back(t->Get(Split::kEval, i).value().prompt);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (const auto& result : results) EXPECT_EQ(result, serial);
}

TEST(ExactMatchTest, JsonLinesHoldPromptAndCompletion) {
  ASSERT_OK_AND_ASSIGN(const Task* add, FindTask("add"));
  const std::string line = SampleToJsonLine(*add, Sample{"What is 1 + 2?\n", "3"});
  EXPECT_EQ(line, "{\"prompt\":\"What is 1 + 2?\\n\",\"completion\":\"3\"}\n");
}

// ---------------------------------------------------------------------------
// Text tasks.

TEST(TextTaskTest, EmbeddedCorpusIsTheCommittedFile) {
  for (const Task* t : TextTasks()) {
    ASSERT_OK_AND_ASSIGN(absl::string_view corpus, TextCorpus(t->name()));
    const std::string committed =
        testing::ReadFileOrDie(testing::SourceDir() + "/testbed/data/" + t->name() + ".txt");
    EXPECT_GT(committed.size(), 100000u) << t->name();
    EXPECT_TRUE(corpus == committed)
        << t->name() << ": embedded " << corpus.size() << " bytes, file " << committed.size();
    for (char c : corpus) ASSERT_EQ(static_cast<unsigned char>(c) & 0x80, 0) << t->name();
  }
  EXPECT_THAT(TextCorpus("add"), StatusIs(absl::StatusCode::kInvalidArgument, "not text"));
  EXPECT_THAT(TextCorpus("nope"), StatusIs(absl::StatusCode::kNotFound, "valid tasks"));
}

TEST(TextTaskTest, WindowsTileTheCorpusInTheirHashedSplits) {
  for (const Task* t : TextTasks()) {
    SCOPED_TRACE(t->name());
    ASSERT_OK_AND_ASSIGN(absl::string_view corpus, TextCorpus(t->name()));
    const int64_t windows = static_cast<int64_t>(corpus.size()) / 96;
    // The split of window j, from the rule in tasks.h.
    std::map<Split, std::vector<int64_t>> expected;
    for (int64_t j = 0; j < windows; ++j) {
      const std::uint64_t bucket = common::Hash64(absl::StrCat(t->name(), ":", j)) % 100;
      expected[bucket < 10   ? Split::kEval
               : bucket < 20 ? Split::kCalibration
                             : Split::kTrain]
          .push_back(j);
    }
    std::map<int64_t, std::string> by_position;
    for (Split s : kSplits) {
      ASSERT_EQ(t->size(s), static_cast<int64_t>(expected[s].size())) << SplitName(s);
      for (int64_t i = 0; i < t->size(s); ++i) {
        ASSERT_OK_AND_ASSIGN(Sample sample, t->Get(s, i));
        ASSERT_EQ(sample.prompt.size(), 96u);
        EXPECT_TRUE(sample.completion.empty());
        const int64_t j = expected[s][static_cast<size_t>(i)];
        EXPECT_EQ(sample.prompt, corpus.substr(static_cast<size_t>(j) * 96, 96));
        by_position[j] = sample.prompt;
      }
    }
    std::string rebuilt;
    for (const auto& [j, text] : by_position) rebuilt += text;
    EXPECT_TRUE(rebuilt == corpus.substr(0, static_cast<size_t>(windows) * 96));
    // ~10% / 10% / 80%.
    EXPECT_GT(t->size(Split::kEval), windows / 20);
    EXPECT_LT(t->size(Split::kEval), windows * 3 / 20);
    EXPECT_GT(t->size(Split::kCalibration), windows / 20);
    EXPECT_GT(t->size(Split::kTrain), windows * 7 / 10);
    EXPECT_EQ(SampleToJsonLine(*t, Sample{"a\tb", ""}), "{\"text\":\"a\\tb\"}\n");
  }
}

// ---------------------------------------------------------------------------
// The byte tokenizer.

// GPT-2's bytes_to_unicode, written out again: the character standing for
// byte `b` in a ByteLevel vocabulary, as UTF-8.
std::string Gpt2ByteChar(int b) {
  std::vector<int> bytes, chars;
  for (int c = 0; c < 256; ++c) {
    if ((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255)) {
      bytes.push_back(c);
      chars.push_back(c);
    }
  }
  int n = 0;
  for (int c = 0; c < 256; ++c) {
    if (std::find(bytes.begin(), bytes.end(), c) == bytes.end()) {
      bytes.push_back(c);
      chars.push_back(256 + n++);
    }
  }
  const int cp =
      chars[static_cast<size_t>(std::find(bytes.begin(), bytes.end(), b) - bytes.begin())];
  if (cp < 0x80) return std::string(1, static_cast<char>(cp));
  return {static_cast<char>(0xc0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3f))};
}

std::vector<std::int32_t> BytesOf(const std::string& s) {
  std::vector<std::int32_t> out;
  for (unsigned char c : s) out.push_back(c);
  return out;
}

// Texts whose ids must be their bytes: all of ASCII, spaces, newlines,
// multi-byte UTF-8.
std::vector<std::string> ByteTexts() {
  std::string ascii;
  for (int c = 0; c < 128; ++c) ascii.push_back(static_cast<char>(c));
  return {"Hi!",
          "",
          "hello world",
          "  two  spaces\n\ttab\r\n",
          "What is 347 + 85?\n",
          "h\xc3\xa9llo w\xc3\xb6rld",                          // héllo wörld
          "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",               // 日本語
          "emoji \xf0\x9f\x99\x82 and \xc2\xa0 nbsp \xc2\xad",  // 🙂, U+00A0, U+00AD
          ascii};
}

TEST(ByteTokenizerTest, PremoeTokenizerSeesBytes) {
  ASSERT_OK_AND_ASSIGN(auto tok,
                       tokenizer::Tokenizer::FromJson(ByteTokenizerJson(), "byte tokenizer"));
  EXPECT_EQ(tok->vocab_size(), kVocabSize);
  ASSERT_OK_AND_ASSIGN(auto hi, tok->Encode("Hi!", /*add_special_tokens=*/true));
  EXPECT_THAT(hi, ElementsAre(256, 72, 105, 33));
  ASSERT_OK_AND_ASSIGN(auto hi_plain, tok->Encode("Hi!"));
  EXPECT_THAT(hi_plain, ElementsAre(72, 105, 33));
  EXPECT_EQ(tok->TokenToId("<|bos|>"), kBosId);
  EXPECT_EQ(tok->TokenToId("<|eos|>"), kEosId);
  EXPECT_TRUE(tok->IsSpecial(kBosId));
  EXPECT_TRUE(tok->IsSpecial(kEosId));
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(tok->IdToToken(b), Gpt2ByteChar(b)) << "byte " << b;
    EXPECT_FALSE(tok->IsSpecial(b));
    // Alone, a byte decodes to itself, or to U+FFFD when it is not UTF-8 by
    // itself (as in HF).
    ASSERT_OK_AND_ASSIGN(std::string text, tok->Decode(std::vector<std::int32_t>{b}));
    EXPECT_EQ(text, b < 0x80 ? std::string(1, static_cast<char>(b)) : "\xef\xbf\xbd") << b;
  }
  for (const std::string& text : ByteTexts()) {
    ASSERT_OK_AND_ASSIGN(auto ids, tok->Encode(text));
    EXPECT_EQ(ids, BytesOf(text)) << text;
    ASSERT_OK_AND_ASSIGN(std::string back, tok->Decode(ids));
    EXPECT_EQ(back, text);
  }
  std::vector<std::int32_t> with_specials = {kBosId, 'o', 'k', kEosId};
  ASSERT_OK_AND_ASSIGN(std::string skipped,
                       tok->Decode(with_specials, /*skip_special_tokens=*/true));
  EXPECT_EQ(skipped, "ok");
  ASSERT_OK_AND_ASSIGN(std::string kept, tok->Decode(with_specials));
  EXPECT_EQ(kept, "<|bos|>ok<|eos|>");
}

TEST(ByteTokenizerTest, CommittedModelCarriesTheConfigsAndItsChatTemplateWorks) {
  // The committed model's files are what the trainer writes.
  ASSERT_OK_AND_ASSIGN(
      std::string config,
      common::ReadFile(testing::SourceDir() + "/testbed/model/tokenizer_config.json"));
  EXPECT_EQ(config, ByteTokenizerConfigJson());
  ASSERT_OK_AND_ASSIGN(
      std::string generation,
      common::ReadFile(testing::SourceDir() + "/testbed/model/generation_config.json"));
  EXPECT_EQ(generation, GenerationConfigJson());

  ASSERT_OK_AND_ASSIGN(chat::ChatFormat format,
                       chat::ChatFormat::Load(testing::SourceDir() + "/testbed/model"));
  ASSERT_TRUE(format.has_template());
  const nlohmann::ordered_json one = {{{"role", "user"}, {"content", "add 2 3 ="}}};
  ASSERT_OK_AND_ASSIGN(std::string text, format.Render(one, true));
  EXPECT_EQ(text, "<|bos|>add 2 3 =");
  // Encoded without special tokens, a chat is the bare prompt with them.
  ASSERT_OK_AND_ASSIGN(auto tok,
                       tokenizer::Tokenizer::FromJson(ByteTokenizerJson(), "byte tokenizer"));
  EXPECT_EQ(tok->Encode(text, false).value(), tok->Encode("add 2 3 =", true).value());
  const nlohmann::ordered_json two = {{{"role", "system"}, {"content", "x"}},
                                      {{"role", "user"}, {"content", "add 2 3 ="}}};
  EXPECT_THAT(format.Render(two, true),
              StatusIs(absl::StatusCode::kInvalidArgument, "answers a single user message"));
}

TEST(ByteTokenizerTest, HuggingFaceTokenizersAgree) {
  testing::TempDir tmp;
  testing::WriteStringToFile(tmp.Join("tokenizer.json"), ByteTokenizerJson());
  std::vector<std::string> texts = ByteTexts();
  texts.push_back("<|bos|>x<|eos|>");
  nlohmann::json cases;
  cases["encode"] = texts;
  std::vector<std::vector<std::int32_t>> decode = {
      {kBosId, 'o', 'k', kEosId}, {0xe6, 0x97, 0xa5}, {0xff}, {'a', 0xe6, 0x97}, {}};
  for (int b = 0; b < 256; ++b) decode.push_back({b});
  cases["decode"] = decode;
  testing::WriteStringToFile(tmp.Join("cases.json"), cases.dump());
  ASSERT_OK_AND_ASSIGN(std::string out,
                       testing::RunPython("tests/testbed/byte_tokenizer_reference.py",
                                          {tmp.Join("tokenizer.json"), tmp.Join("cases.json")}));
  ASSERT_OK_AND_ASSIGN(nlohmann::json ref, common::ParseJsonStrict(out, "reference output"));

  ASSERT_OK_AND_ASSIGN(auto tok,
                       tokenizer::Tokenizer::FromJson(ByteTokenizerJson(), "byte tokenizer"));
  EXPECT_EQ(ref["vocab_size"].get<int>(), kVocabSize);
  for (size_t k = 0; k < texts.size(); ++k) {
    ASSERT_OK_AND_ASSIGN(auto plain, tok->Encode(texts[k]));
    ASSERT_OK_AND_ASSIGN(auto special, tok->Encode(texts[k], /*add_special_tokens=*/true));
    EXPECT_EQ(plain, ref["encode"][k].get<std::vector<std::int32_t>>()) << texts[k];
    EXPECT_EQ(special, ref["encode_special"][k].get<std::vector<std::int32_t>>()) << texts[k];
    if (k < ByteTexts().size()) {
      std::vector<std::int32_t> want = BytesOf(texts[k]);
      want.insert(want.begin(), static_cast<std::int32_t>(kBosId));
      EXPECT_EQ(special, want) << texts[k];
    }
  }
  EXPECT_EQ(ref["encode"].back().get<std::vector<std::int32_t>>(),
            (std::vector<std::int32_t>{kBosId, 'x', kEosId}));
  for (size_t k = 0; k < decode.size(); ++k) {
    ASSERT_OK_AND_ASSIGN(std::string text, tok->Decode(decode[k]));
    ASSERT_OK_AND_ASSIGN(std::string skipped, tok->Decode(decode[k], /*skip_special_tokens=*/true));
    EXPECT_EQ(text, ref["decode"][k].get<std::string>()) << k;
    EXPECT_EQ(skipped, ref["decode_skip_special"][k].get<std::string>()) << k;
  }
}

}  // namespace
}  // namespace premoe::testbed
