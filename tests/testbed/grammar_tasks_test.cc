// Suite v2 (testbed/src/grammar_tasks.cc), checked against the contract in
// tasks.h. Each prompt is read back here: its fillers are stripped and its
// core matched against a regular expression built in this file from the
// template the library says it used, which recovers the slot values from the
// prompt itself. Answers, instances, the split rules and the held-out
// templates are then recomputed with this file's own code.
#include <algorithm>
#include <bitset>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "premoe/common/hash.h"
#include "premoe/testbed/tasks.h"
#include "testbed/src/internal.h"
#include "tests/testutil/testutil.h"

namespace premoe::testbed {
namespace {

using ::premoe::testing::StatusIs;
using ::testing::ElementsAre;

constexpr Split kSplits[] = {Split::kTrain, Split::kCalibration, Split::kEval};

// XXH3 of the first 100 eval samples of every v2 exact-match task (see
// FirstEvalSamplesArePinned).
constexpr std::uint64_t kPinnedEvalHash = 8421445238731037859ull;

const std::vector<const Task*>& V2() { return *SuiteTasks("v2").value(); }

std::vector<const internal::GrammarTask*> GrammarTasks() {
  std::vector<const internal::GrammarTask*> out;
  for (const Task* t : V2()) {
    if (t->kind() == TaskKind::kExactMatch) {
      out.push_back(dynamic_cast<const internal::GrammarTask*>(t));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Reading a prompt back.

// What each slot may look like in a prompt.
std::string SlotPattern(const std::string& slot) {
  static const std::map<std::string, std::string> kPatterns = {
      {"a", "([0-9]+)"},
      {"b", "([0-9]+)"},
      {"n", "([0-9]+)"},
      {"word", "([a-z]+)"},
      {"expr", "([0-9(][0-9()+*\\- ]*[0-9)])"},
      {"open", "([(\\[{<]+)"},
      {"json", "(\\{.*\\})"},
      {"key", "([a-z]+)"},
      {"hex", "((?:0x)?[0-9a-fA-F]{1,3}h?)"},
      {"from", "([A-Za-z]+)"},
      {"to", "([A-Za-z]+)"},
      {"date", "([0-9/-]+)"}};
  auto it = kPatterns.find(slot);
  return it == kPatterns.end() ? "(NO PATTERN FOR " + slot + ")" : it->second;
}

// The "{name}"s of a template, in order.
std::vector<std::string> SlotsOf(const std::string& text) {
  static const std::regex kSlot("\\{([a-z]+)\\}");
  std::vector<std::string> out;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), kSlot);
       it != std::sregex_iterator(); ++it) {
    out.push_back((*it)[1].str());
  }
  return out;
}

// A template as an anchored, case-insensitive regular expression: its text
// literal, its slots captured, and a final '?' or '.' allowed to be dropped,
// doubled, spaced off or turned into '!'.
std::regex TemplateRegex(const std::string& text) {
  std::string pattern = "^";
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '{') {
      const size_t close = text.find('}', i);
      pattern += SlotPattern(text.substr(i + 1, close - i - 1));
      i = close;
    } else if (i + 1 == text.size() && (c == '?' || c == '.')) {
      pattern += "(?: ?[?.!]{1,2})?";
    } else {
      if (std::string("^$\\.*+?()[]{}|/").find(c) != std::string::npos) pattern += '\\';
      pattern += c;
    }
  }
  return std::regex(pattern + "$", std::regex::ECMAScript | std::regex::icase);
}

// The slot values of `w`'s prompt, in slot_names() order; nullopt (with a
// test failure) when the prompt is not the template and fillers `w` names.
std::optional<std::vector<std::string>> ReadSlots(const internal::GrammarTask& task,
                                                  const internal::WordedSample& w) {
  const auto fail = [&](const std::string& why) -> std::optional<std::vector<std::string>> {
    ADD_FAILURE() << task.name() << ": " << why << " in prompt \"" << w.sample.prompt << "\"";
    return std::nullopt;
  };
  std::string core = w.sample.prompt;
  if (w.prefix_id >= 0) {
    const std::string& prefix = internal::GrammarPrefixes().text.at(w.prefix_id);
    if (!absl::StartsWithIgnoreCase(core, prefix)) return fail("no prefix \"" + prefix + "\"");
    core = core.substr(prefix.size());
  }
  if (w.suffix_id >= 0) {
    const std::string& suffix = internal::GrammarSuffixes().text.at(w.suffix_id);
    if (!absl::EndsWithIgnoreCase(core, suffix)) return fail("no suffix \"" + suffix + "\"");
    core = core.substr(0, core.size() - suffix.size());
  }
  const std::string& text = task.templates().text.at(w.template_id);
  std::smatch m;
  if (!std::regex_match(core, m, TemplateRegex(text))) {
    return fail("core does not match template \"" + text + "\"");
  }
  std::vector<std::string> values(task.slot_names().size());
  const std::vector<std::string> order = SlotsOf(text);
  for (size_t k = 0; k < order.size(); ++k) {
    const auto it = std::find(task.slot_names().begin(), task.slot_names().end(), order[k]);
    if (it == task.slot_names().end()) return fail("unknown slot " + order[k]);
    values[static_cast<size_t>(it - task.slot_names().begin())] = m[k + 1].str();
  }
  return values;
}

// ---------------------------------------------------------------------------
// Answers and instances, recomputed.

struct Expected {
  std::string answer;
  // The instance, in this file's own terms.
  std::string instance;
};

// Recursive descent over a digits-and-operators expression without spaces.
struct Evaluator {
  const std::string& s;
  size_t pos = 0;
  bool ok = true;

  int Expr() {
    int v = Term();
    while (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) {
      const char op = s[pos++];
      const int r = Term();
      v = op == '+' ? v + r : v - r;
    }
    return v;
  }
  int Term() {
    int v = Factor();
    while (pos < s.size() && s[pos] == '*') {
      ++pos;
      v *= Factor();
    }
    return v;
  }
  int Factor() {
    if (pos < s.size() && s[pos] == '(') {
      ++pos;
      const int v = Expr();
      ok = ok && pos < s.size() && s[pos] == ')';
      ++pos;
      return v;
    }
    ok = ok && pos < s.size() && absl::ascii_isdigit(static_cast<unsigned char>(s[pos]));
    return pos < s.size() ? s[pos++] - '0' : 0;
  }
};

// Unit name -> (quantity, power of ten of the base unit).
std::optional<std::pair<char, int>> Unit(const std::string& name, bool* plural_word) {
  static const std::map<std::string, std::pair<char, int>> kUnits = [] {
    std::map<std::string, std::pair<char, int>> m;
    const auto add = [&m](char q, int e, std::vector<std::string> names) {
      for (const std::string& n : names) m[n] = {q, e};
    };
    add('L', 3, {"km", "kilometre", "kilometres", "kilometer", "kilometers"});
    add('L', 0, {"m", "metre", "metres", "meter", "meters"});
    add('L', -2, {"cm", "centimetre", "centimetres", "centimeter", "centimeters"});
    add('L', -3, {"mm", "millimetre", "millimetres", "millimeter", "millimeters"});
    add('M', 3, {"kg", "kilogram", "kilograms", "kilo", "kilos"});
    add('M', 0, {"g", "gram", "grams", "gramme", "grammes"});
    add('V', 0, {"l", "L", "litre", "litres", "liter", "liters"});
    add('V', -3, {"ml", "mL", "millilitre", "millilitres", "milliliter", "milliliters"});
    return m;
  }();
  const auto it = kUnits.find(name);
  if (it == kUnits.end()) return std::nullopt;
  *plural_word = name.size() > 2 && name.back() == 's';
  return it->second;
}

// The answer to, and instance of, task `name` with slot values `v`;
// nullopt (with a test failure) if they are not a valid instance.
std::optional<Expected> Solve(const std::string& name, const std::vector<std::string>& v) {
  const auto fail = [&](const std::string& why) -> std::optional<Expected> {
    ADD_FAILURE() << name << ": " << why << " (slots " << absl::StrJoin(v, " | ") << ")";
    return std::nullopt;
  };
  if (name == "add" || name == "subtract" || name == "multiply") {
    const int a = std::stoi(v[0]), b = std::stoi(v[1]);
    if (a > 99 || b > 99) return fail("operand over 99");
    if (v[0] != absl::StrCat(a) || v[1] != absl::StrCat(b)) return fail("not plain decimal");
    const std::string pair = absl::StrCat(std::min(a, b), ",", std::max(a, b));
    if (name == "add") return Expected{absl::StrCat(a + b), pair};
    if (name == "subtract") {
      if (a < b) return fail("smaller first");
      return Expected{absl::StrCat(a - b), absl::StrCat(a, ",", b)};
    }
    if (std::min(a, b) < 2 && std::max(a, b) > 9) return fail("no operand in [2, 9]");
    if (a > 9 && b > 9) return fail("no operand in [2, 9]");
    return Expected{absl::StrCat(a * b), pair};
  }
  if (name == "reverse" || name == "sort" || name == "caesar") {
    const std::string& w = v[0];
    if (w.size() < 3 || w.size() > 6) return fail("word length");
    for (char c : w) {
      if (c < 'a' || c > 'z') return fail("not lowercase");
    }
    std::string answer = w;
    if (name == "reverse") std::reverse(answer.begin(), answer.end());
    if (name == "sort") std::sort(answer.begin(), answer.end());
    if (name == "caesar") {
      for (char& c : answer) c = static_cast<char>(c + 3 > 'z' ? c + 3 - 26 : c + 3);
    }
    return Expected{answer, w};
  }
  if (name == "expression") {
    std::string compact;
    for (char c : v[0]) {
      if (c != ' ') compact.push_back(c);
    }
    int digits = 0, parens = 0;
    for (char c : compact) {
      digits += absl::ascii_isdigit(static_cast<unsigned char>(c)) ? 1 : 0;
      parens += c == '(' ? 1 : 0;
    }
    if (digits < 2 || digits > 3 || parens > 1) return fail("shape");
    Evaluator e{compact};
    const int value = e.Expr();
    if (!e.ok || e.pos != compact.size()) return fail("not an expression");
    if (value < 0) return fail("negative");
    return Expected{absl::StrCat(value), compact};
  }
  if (name == "brackets") {
    if (v[0].size() > 5) return fail("over 5 brackets");
    std::string answer;
    for (char c : v[0])
      answer.insert(answer.begin(), c == '(' ? ')' : c == '[' ? ']' : c == '{' ? '}' : '>');
    return Expected{answer, v[0]};
  }
  if (name == "json_field") {
    const nlohmann::json j = nlohmann::json::parse(v[0], nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || j.size() < 2 || j.size() > 4) return fail("not a 2-4 key object");
    if (!j.contains(v[1])) return fail("asks for a missing key");
    const nlohmann::json& value = j[v[1]];
    if (value.is_string()) return Expected{value.get<std::string>(), v[0] + "/" + v[1]};
    if (!value.is_number_integer()) return fail("neither word nor integer");
    return Expected{value.dump(), v[0] + "/" + v[1]};
  }
  if (name == "binary") {
    std::string hex = v[0];
    if (absl::StartsWith(hex, "0x")) hex = hex.substr(2);
    if (absl::EndsWith(hex, "h")) hex.pop_back();
    if (hex.empty() || hex.size() > 3) return fail("want 1-3 hex digits");
    std::string answer;
    for (char c : hex) {
      if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return fail("not hex");
      absl::StrAppend(&answer, answer.empty() ? "" : " ",
                      std::bitset<4>(std::stoul(std::string(1, c), nullptr, 16)).to_string());
    }
    return Expected{answer, absl::AsciiStrToLower(hex)};
  }
  if (name == "units") {
    const int n = std::stoi(v[0]);
    if (n < 1 || n > 99) return fail("quantity outside [1, 99]");
    bool from_plural = false, to_plural = false;
    const auto from = Unit(v[1], &from_plural), to = Unit(v[2], &to_plural);
    if (!from || !to) return fail("unknown unit");
    if (from->first != to->first) return fail("units of different quantities");
    const std::set<std::pair<int, int>> kAllowed = {{3, 0}, {0, -2}, {0, -3}, {-2, -3}};
    if (from->first == 'L' ? kAllowed.count({from->second, to->second}) == 0
                           : from->second - to->second != 3) {
      return fail("not one of the six conversions");
    }
    if (from_plural && n == 1) return fail("1 of a plural unit");
    const bool word = v[1].size() > 2;
    if (word && !from_plural && n != 1) return fail("many of a singular unit");
    int factor = 1;
    for (int e = to->second; e < from->second; ++e) factor *= 10;
    return Expected{absl::StrCat(n * factor),
                    absl::StrCat(n, std::string(1, from->first), from->second, ">", to->second)};
  }
  if (name == "dates") {
    std::string digits;
    for (char c : v[0]) {
      if (absl::ascii_isdigit(static_cast<unsigned char>(c))) digits.push_back(c);
    }
    const bool dashed = v[0].size() == 10 && v[0][4] == '-' && v[0][7] == '-';
    const bool slashed = v[0].size() == 10 && v[0][4] == '/' && v[0][7] == '/';
    if (digits.size() != 8 || !(dashed || slashed || v[0] == digits)) return fail("date format");
    const int y = std::stoi(digits.substr(0, 4)), m = std::stoi(digits.substr(4, 2)),
              d = std::stoi(digits.substr(6, 2));
    if (y < 1950 || y > 2049) return fail("year outside 1950-2049");
    const std::chrono::year_month_day ymd{std::chrono::year(y), std::chrono::month(m),
                                          std::chrono::day(d)};
    if (!ymd.ok()) return fail("no such day");
    static const char* const kMonths[] = {"January",   "February", "March",    "April",
                                          "May",       "June",     "July",     "August",
                                          "September", "October",  "November", "December"};
    return Expected{absl::StrCat(d, " ", kMonths[m - 1], " ", y), digits};
  }
  return fail("no solver for this task");
}

// ---------------------------------------------------------------------------
// Registry.

TEST(SuiteTest, V2HoldsItsFourteenTasksInOrderAndV1IsUnchanged) {
  std::vector<std::string> names;
  for (const Task* t : V2()) names.push_back(t->name());
  EXPECT_THAT(names, ElementsAre("add", "subtract", "multiply", "reverse", "sort", "caesar",
                                 "expression", "brackets", "json_field", "binary", "units", "dates",
                                 "c_headers", "licenses"));
  // Domains, in registry order, lead the descriptions.
  const std::vector<std::string> domains = {"arithmetic", "arithmetic", "arithmetic", "strings",
                                            "strings",    "strings",    "code",       "code",
                                            "code",       "transforms", "transforms", "transforms"};
  for (size_t k = 0; k < domains.size(); ++k) {
    EXPECT_EQ(V2()[k]->kind(), TaskKind::kExactMatch) << names[k];
    EXPECT_TRUE(absl::StartsWith(V2()[k]->description(), domains[k] + ": "))
        << V2()[k]->description();
    EXPECT_NE(dynamic_cast<const internal::GrammarTask*>(V2()[k]), nullptr) << names[k];
    EXPECT_EQ(V2()[k]->size(Split::kTrain), INT64_MAX);
    EXPECT_EQ(V2()[k]->size(Split::kEval), 1000);
    EXPECT_EQ(V2()[k]->size(Split::kCalibration), 1000);
  }
  // The text tasks are v1's, the very objects.
  ASSERT_OK_AND_ASSIGN(const Task* licenses, FindTask("licenses"));
  ASSERT_OK_AND_ASSIGN(const Task* c_headers, FindTask("c_headers"));
  EXPECT_EQ(V2()[12], c_headers);
  EXPECT_EQ(V2()[13], licenses);

  ASSERT_OK_AND_ASSIGN(const std::vector<const Task*>* v1, SuiteTasks("v1"));
  EXPECT_EQ(v1, &AllTasks());
  EXPECT_EQ(v1->size(), 9u);
  EXPECT_EQ(kDefaultSuite, "v1");
  // Same names, different tasks: v1's add has its own wordings and splits.
  ASSERT_OK_AND_ASSIGN(const Task* v1_add, FindTask("add"));
  ASSERT_OK_AND_ASSIGN(const Task* v2_add, FindTask("add", "v2"));
  EXPECT_NE(v1_add, v2_add);
  EXPECT_EQ(v2_add, V2()[0]);
}

TEST(SuiteTest, UnknownSuitesAndTasksNameTheValidOnes) {
  const std::string want = "unknown task suite \"v3\"; valid suites: v1, v2";
  EXPECT_THAT(SuiteTasks("v3"), StatusIs(absl::StatusCode::kInvalidArgument, want));
  EXPECT_THAT(SuiteTasks(""), StatusIs(absl::StatusCode::kInvalidArgument, "valid suites: v1, v2"));
  EXPECT_THAT(FindTask("add", "v3"), StatusIs(absl::StatusCode::kInvalidArgument, want));
  EXPECT_THAT(ParseTaskList("all", "v3"), StatusIs(absl::StatusCode::kInvalidArgument, want));
  EXPECT_THAT(FindTask("multiply"),
              StatusIs(absl::StatusCode::kNotFound, "unknown task \"multiply\"; valid tasks: add"));
  EXPECT_THAT(FindTask("mul", "v2"),
              StatusIs(absl::StatusCode::kNotFound,
                       "unknown task \"mul\" in suite v2; valid tasks: add, subtract, multiply, "
                       "reverse, sort, caesar, expression, brackets, json_field, binary, units, "
                       "dates, c_headers, licenses"));
}

TEST(SuiteTest, ParseTaskListTakesASuite) {
  ASSERT_OK_AND_ASSIGN(auto all, ParseTaskList("all", "v2"));
  EXPECT_EQ(all, V2());
  ASSERT_OK_AND_ASSIGN(auto two, ParseTaskList(" dates , multiply", "v2"));
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0]->name(), "dates");
  EXPECT_EQ(two[1]->name(), "multiply");
  EXPECT_THAT(ParseTaskList("multiply"), StatusIs(absl::StatusCode::kNotFound, "multiply"));
  EXPECT_THAT(ParseTaskList("units,units", "v2"),
              StatusIs(absl::StatusCode::kInvalidArgument, "names task \"units\" twice"));
  EXPECT_THAT(ParseTaskList("units,", "v2"),
              StatusIs(absl::StatusCode::kInvalidArgument, "empty entry"));
  // Text tasks are in both suites; v2's exact-match tasks have no corpus.
  EXPECT_OK(TextCorpus("licenses").status());
  EXPECT_THAT(TextCorpus("json_field"), StatusIs(absl::StatusCode::kInvalidArgument, "not text"));
}

TEST(SuiteTest, OutOfRangeIndicesAreRefused) {
  for (const internal::GrammarTask* t : GrammarTasks()) {
    for (Split s : kSplits) {
      EXPECT_THAT(t->Get(s, -1), StatusIs(absl::StatusCode::kOutOfRange, "outside"));
      EXPECT_THAT(t->GetWorded(s, -1), StatusIs(absl::StatusCode::kOutOfRange, "outside"));
    }
    EXPECT_THAT(t->Get(Split::kEval, 1000), StatusIs(absl::StatusCode::kOutOfRange, "outside"));
    EXPECT_OK(t->Get(Split::kEval, 999).status());
    EXPECT_OK(t->Get(Split::kTrain, INT64_MAX - 1).status());
  }
}

// ---------------------------------------------------------------------------
// Samples.

TEST(GrammarSampleTest, EveryCompletionIsTheRightAnswer) {
  for (const internal::GrammarTask* t : GrammarTasks()) {
    for (Split s : kSplits) {
      for (int64_t i = 0; i < 400; ++i) {
        ASSERT_OK_AND_ASSIGN(internal::WordedSample w, t->GetWorded(s, i));
        const Sample& sample = w.sample;
        SCOPED_TRACE(absl::StrCat(t->name(), " ", SplitName(s), " #", i, ": \"", sample.prompt,
                                  "\" -> \"", sample.completion, "\""));
        ASSERT_OK_AND_ASSIGN(Sample plain, t->Get(s, i));
        EXPECT_EQ(plain, sample);
        const std::optional<std::vector<std::string>> slots = ReadSlots(*t, w);
        ASSERT_TRUE(slots.has_value());
        // The prompt shows exactly the slot values the library reports,
        // verbatim (never recased).
        EXPECT_EQ(*slots, w.slots);
        for (const std::string& value : w.slots) {
          EXPECT_TRUE(absl::StrContains(sample.prompt, value)) << value;
        }
        const std::optional<Expected> expected = Solve(t->name(), *slots);
        ASSERT_TRUE(expected.has_value());
        EXPECT_EQ(sample.completion, expected->answer);
        // The instance is in the split its canonical form hashes to.
        const std::uint64_t bucket =
            common::Hash64(absl::StrCat(t->name(), ":", w.canonical)) % 100;
        EXPECT_EQ(bucket < 10   ? Split::kEval
                  : bucket < 20 ? Split::kCalibration
                                : Split::kTrain,
                  s);
        // Short ASCII prompts; printable answers without a newline.
        EXPECT_LE(sample.prompt.size(), 140u);
        for (char c : sample.prompt) EXPECT_TRUE((c >= 0x20 && c < 0x7f) || c == '\n');
        EXPECT_FALSE(sample.completion.empty());
        for (char c : sample.completion) EXPECT_TRUE(c >= 0x20 && c < 0x7f);
      }
    }
  }
}

TEST(GrammarSampleTest, SamplesAreAPureFunctionOfTheirIndex) {
  for (const internal::GrammarTask* t : GrammarTasks()) {
    for (Split s : kSplits) {
      for (int64_t i : {int64_t{0}, int64_t{7}, int64_t{999}}) {
        ASSERT_OK_AND_ASSIGN(internal::WordedSample a, t->GetWorded(s, i));
        ASSERT_OK_AND_ASSIGN(internal::WordedSample b, t->GetWorded(s, i));
        EXPECT_EQ(a.sample, b.sample) << t->name();
        EXPECT_EQ(a.template_id, b.template_id);
        EXPECT_EQ(a.prefix_id, b.prefix_id);
        EXPECT_EQ(a.suffix_id, b.suffix_id);
      }
    }
    std::set<std::string> prompts;
    for (int64_t i = 0; i < 20; ++i) prompts.insert(t->Get(Split::kTrain, i).value().prompt);
    EXPECT_GE(prompts.size(), 18u) << t->name();
  }
}

TEST(GrammarSampleTest, ConcurrentCallsAgree) {
  const auto all = [] {
    std::vector<std::string> out;
    for (const internal::GrammarTask* t : GrammarTasks()) {
      for (Split s : kSplits) {
        for (int64_t i = 0; i < 40; ++i) {
          const Sample sample = t->Get(s, i).value();
          out.push_back(sample.prompt + "\x1f" + sample.completion);
        }
      }
    }
    return out;
  };
  const std::vector<std::string> serial = all();
  std::vector<std::vector<std::string>> results(4);
  std::vector<std::thread> threads;
  for (auto& result : results) threads.emplace_back([&result, &all] { result = all(); });
  for (std::thread& th : threads) th.join();
  for (const auto& result : results) EXPECT_EQ(result, serial);
}

TEST(GrammarSampleTest, NoInstanceIsInTwoSplits) {
  for (const internal::GrammarTask* t : GrammarTasks()) {
    SCOPED_TRACE(t->name());
    std::map<Split, std::set<std::string>> instances;
    // This file's instance -> the library's canonical form: one to one.
    std::map<std::string, std::string> canonical_of;
    for (Split s : kSplits) {
      const int64_t n = s == Split::kTrain ? 5000 : 1000;
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_OK_AND_ASSIGN(internal::WordedSample w, t->GetWorded(s, i));
        const std::optional<std::vector<std::string>> slots = ReadSlots(*t, w);
        ASSERT_TRUE(slots.has_value());
        const std::optional<Expected> expected = Solve(t->name(), *slots);
        ASSERT_TRUE(expected.has_value());
        instances[s].insert(expected->instance);
        const auto [it, added] = canonical_of.emplace(expected->instance, w.canonical);
        EXPECT_EQ(it->second, w.canonical) << expected->instance;
      }
    }
    std::set<std::string> canonicals;
    for (const auto& [instance, canonical] : canonical_of) canonicals.insert(canonical);
    EXPECT_EQ(canonicals.size(), canonical_of.size());
    for (const std::string& x : instances[Split::kEval]) {
      EXPECT_EQ(instances[Split::kTrain].count(x), 0u) << x << " eval+train";
      EXPECT_EQ(instances[Split::kCalibration].count(x), 0u) << x << " eval+calibration";
    }
    for (const std::string& x : instances[Split::kCalibration]) {
      EXPECT_EQ(instances[Split::kTrain].count(x), 0u) << x << " calibration+train";
    }
    // Many distinct held-out instances, even for units (594 in all, ~59 per
    // held-out split) and multiply (772, ~77).
    EXPECT_GE(instances[Split::kEval].size(), 40u);
    EXPECT_GE(instances[Split::kCalibration].size(), 40u);
    EXPECT_GE(instances[Split::kTrain].size(), 400u);
  }
}

// ---------------------------------------------------------------------------
// The wording grammar and its split.

// Held out by the rule in tasks.h, recomputed.
std::vector<bool> ExpectedEvalOnly(const std::string& scope, const std::vector<std::string>& text,
                                   size_t min_eval_only) {
  std::vector<std::pair<std::uint64_t, size_t>> ranked;
  for (size_t k = 0; k < text.size(); ++k) {
    ranked.emplace_back(common::Hash64(scope + ":" + text[k]), k);
  }
  std::sort(ranked.begin(), ranked.end());
  const size_t held_out = std::max(min_eval_only, static_cast<size_t>(text.size() / 5.0 + 0.5));
  std::vector<bool> out(text.size(), false);
  for (size_t r = 0; r < held_out; ++r) out[ranked[r].second] = true;
  return out;
}

// Case, spacing and trailing punctuation dropped: templates that differ only
// in those are near-duplicates.
std::string Skeleton(const std::string& text) {
  std::string out;
  for (char c : absl::AsciiStrToLower(text)) {
    if (!absl::ascii_isspace(static_cast<unsigned char>(c))) out.push_back(c);
  }
  while (!out.empty() && std::string("?.!:").find(out.back()) != std::string::npos) out.pop_back();
  return out;
}

TEST(GrammarTest, TemplatesAreManyDistinctAndSplitByTheirHash) {
  for (const internal::GrammarTask* t : GrammarTasks()) {
    SCOPED_TRACE(t->name());
    const internal::Phrases& templates = t->templates();
    ASSERT_EQ(templates.eval_only.size(), templates.text.size());
    EXPECT_GE(templates.text.size(), 30u);
    EXPECT_EQ(templates.eval_only,
              ExpectedEvalOnly(t->name() + ":template", templates.text, /*min_eval_only=*/6));
    const size_t eval_only = static_cast<size_t>(
        std::count(templates.eval_only.begin(), templates.eval_only.end(), true));
    EXPECT_GE(eval_only, 6u);
    EXPECT_LE(eval_only, templates.text.size() / 4);
    std::set<std::string> skeletons;
    for (const std::string& text : templates.text) {
      EXPECT_TRUE(skeletons.insert(Skeleton(text)).second) << "near-duplicate: " << text;
      // Every slot once; no other braces.
      std::vector<std::string> slots = SlotsOf(text);
      std::sort(slots.begin(), slots.end());
      std::vector<std::string> want = t->slot_names();
      std::sort(want.begin(), want.end());
      EXPECT_EQ(slots, want) << text;
      EXPECT_EQ(std::count(text.begin(), text.end(), '{'), static_cast<long>(want.size())) << text;
      EXPECT_EQ(std::count(text.begin(), text.end(), '}'), static_cast<long>(want.size())) << text;
      for (char c : text) EXPECT_TRUE((c >= 0x20 && c < 0x7f) || c == '\n') << text;
      // A prompt's numbers are its operands; a brackets prompt's brackets
      // are its run.
      if (t->name() == "add" || t->name() == "subtract" || t->name() == "multiply") {
        EXPECT_EQ(text.find_first_of("0123456789"), std::string::npos) << text;
      }
      if (t->name() == "brackets") {
        std::string rest = text;
        rest.erase(rest.find("{open}"), 6);
        EXPECT_EQ(rest.find_first_of("()[]{}<>"), std::string::npos) << text;
      }
      // Slot names are lowercase, so recasing a template keeps them.
      for (const std::string& slot : t->slot_names()) EXPECT_EQ(slot, absl::AsciiStrToLower(slot));
    }
  }
}

TEST(GrammarTest, FillersAreSharedAndSplitByTheirHash) {
  for (const auto& [scope, phrases] :
       {std::pair<std::string, const internal::Phrases*>{"prefix", &internal::GrammarPrefixes()},
        std::pair<std::string, const internal::Phrases*>{"suffix", &internal::GrammarSuffixes()}}) {
    SCOPED_TRACE(scope);
    EXPECT_GE(phrases->text.size(), 12u);
    EXPECT_EQ(phrases->eval_only, ExpectedEvalOnly(scope, phrases->text, /*min_eval_only=*/3));
    EXPECT_EQ(std::set<std::string>(phrases->text.begin(), phrases->text.end()).size(),
              phrases->text.size());
    for (const std::string& text : phrases->text) {
      // Fillers never change what a prompt asks.
      EXPECT_EQ(text.find_first_of("0123456789()[]{}<>+-*=/\n"), std::string::npos) << text;
      EXPECT_EQ(scope == "prefix" ? text.back() : text.front(), ' ') << text;
    }
  }
}

TEST(GrammarTest, EvalUsesOnlyHeldOutWordingAndEveryWordingIsUsed) {
  const internal::Phrases& prefixes = internal::GrammarPrefixes();
  const internal::Phrases& suffixes = internal::GrammarSuffixes();
  std::map<Split, std::set<int>> prefixes_used, suffixes_used;
  int samples = 0, bare = 0;
  for (const internal::GrammarTask* t : GrammarTasks()) {
    SCOPED_TRACE(t->name());
    std::map<Split, std::set<int>> used;
    for (Split s : kSplits) {
      const int64_t n = s == Split::kTrain ? 3000 : 1000;
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_OK_AND_ASSIGN(internal::WordedSample w, t->GetWorded(s, i));
        const bool eval = s == Split::kEval;
        ASSERT_GE(w.template_id, 0);
        EXPECT_EQ(t->templates().eval_only.at(w.template_id), eval) << w.sample.prompt;
        if (w.prefix_id >= 0) {
          EXPECT_EQ(prefixes.eval_only.at(w.prefix_id), eval);
        }
        if (w.suffix_id >= 0) {
          EXPECT_EQ(suffixes.eval_only.at(w.suffix_id), eval);
        }
        used[s].insert(w.template_id);
        if (w.prefix_id >= 0) prefixes_used[s].insert(w.prefix_id);
        if (w.suffix_id >= 0) suffixes_used[s].insert(w.suffix_id);
        ++samples;
        bare += w.prefix_id < 0 && w.suffix_id < 0 ? 1 : 0;
      }
    }
    for (size_t k = 0; k < t->templates().text.size(); ++k) {
      const int id = static_cast<int>(k);
      if (t->templates().eval_only[k]) {
        EXPECT_EQ(used[Split::kEval].count(id), 1u) << t->templates().text[k];
      } else {
        EXPECT_EQ(used[Split::kTrain].count(id), 1u) << t->templates().text[k];
        EXPECT_EQ(used[Split::kCalibration].count(id), 1u) << t->templates().text[k];
      }
    }
  }
  for (const auto& [phrases, used] :
       {std::pair{&prefixes, &prefixes_used}, std::pair{&suffixes, &suffixes_used}}) {
    for (size_t k = 0; k < phrases->text.size(); ++k) {
      const int id = static_cast<int>(k);
      if (phrases->eval_only[k]) {
        EXPECT_EQ((*used)[Split::kEval].count(id), 1u) << phrases->text[k];
      } else {
        EXPECT_EQ((*used)[Split::kTrain].count(id), 1u) << phrases->text[k];
        EXPECT_EQ((*used)[Split::kCalibration].count(id), 1u) << phrases->text[k];
      }
    }
  }
  // About half the prompts have no filler.
  EXPECT_GT(bare, samples * 45 / 100);
  EXPECT_LT(bare, samples * 57 / 100);
}

// The words and symbols that say what a task asks. A held-out template must
// say it with at least one that some training template uses too (in another
// sentence): then a model that learnt the training templates can answer it.
// Other words may be new to it; that is what eval measures.
const std::map<std::string, std::vector<std::string>>& KeyWords() {
  static const auto* const kKeyWords = new std::map<std::string, std::vector<std::string>>{
      {"add", {"+", "add", "sum", "plus", "total", "more", "increase"}},
      {"subtract",
       {"-", "sub", "minus", "difference", "tak", "away", "left", "less", "remov", "remain",
        "decrease", "apart"}},
      {"multiply",
       {"*", " x ", "times", "multipl", "product", "mul", "lots of", "groups of", "each",
        "how many"}},
      {"reverse",
       {"revers", "backwards", "back to front", "right to left", "mirror", "flip", "[::-1]", "rev",
        "last letter to the first"}},
      {"sort", {"sort", "alphabet", "order", "a to z", "a-z", "arrange"}},
      {"caesar",
       {"caesar", "rot3", "shift", "cipher", "encrypt", "encode", "rotate", "becomes d", "three",
        "3"}},
      {"expression", {"evaluat",     "eval(",    "comput",
                      "calculat",    "value",    "result",
                      "=",           "solve",    "simplif",
                      "print",       ">>>",      "how much",
                      "what is",     "number",   "reduce",
                      "console.log", "return",   "echo",
                      "->",          "preceden", "order of operations"}},
      {"brackets",
       {"clos", "balanc", "bracket", "complete", "finish", "match", "pair", "terminat", "nesting"}},
      {"json_field",
       {"json", "value", "key", "field", "get", "extract", "look up", "read", "find", "fetch",
        "select", "return", "show", "parse", "jq", "[\"", "['", ".{key}", "what is"}},
      {"binary", {"binary", "bits", "base 2", "base two", "bin", "hex", "base 16"}},
      {"units",
       {"convert", "how many", "how much", " in {to}", " to {to}", "into {to}", "as {to}",
        "-> {to}", "number of {to}", "unit", "express", "change", "turn", "switch", "translate",
        "rewrite", "restate", "scale"}},
      {"dates",
       {"words", "written", "write", "long", "month", "full", "readable", "spell", "format", "day",
        "english", "letter", "decode", "%b"}}};
  return *kKeyWords;
}

TEST(GrammarTest, HeldOutTemplatesUseKeyWordsThatTrainingTemplatesTeach) {
  for (const internal::GrammarTask* t : GrammarTasks()) {
    SCOPED_TRACE(t->name());
    const std::vector<std::string>& key_words = KeyWords().at(t->name());
    const internal::Phrases& templates = t->templates();
    const auto key_words_of = [&](size_t k) {
      std::set<std::string> found;
      const std::string text = absl::AsciiStrToLower(templates.text[k]);
      for (const std::string& w : key_words) {
        if (absl::StrContains(text, w)) found.insert(w);
      }
      return found;
    };
    std::set<std::string> taught;
    for (size_t k = 0; k < templates.text.size(); ++k) {
      const std::set<std::string> found = key_words_of(k);
      EXPECT_FALSE(found.empty()) << "no key word in \"" << templates.text[k] << "\"";
      if (!templates.eval_only[k]) taught.insert(found.begin(), found.end());
    }
    for (size_t k = 0; k < templates.text.size(); ++k) {
      if (!templates.eval_only[k]) continue;
      const std::set<std::string> found = key_words_of(k);
      EXPECT_TRUE(std::any_of(found.begin(), found.end(),
                              [&](const std::string& w) { return taught.count(w) > 0; }))
          << "held-out \"" << templates.text[k] << "\" says what it asks only with words no "
          << "training template uses: " << absl::StrJoin(found, ", ");
    }
  }
}

TEST(GrammarTest, SurfaceAndNumberFormatsVary) {
  std::map<std::string, std::set<std::string>> seen;  // task -> features seen
  for (const internal::GrammarTask* t : GrammarTasks()) {
    for (int64_t i = 0; i < 1000; ++i) {
      ASSERT_OK_AND_ASSIGN(internal::WordedSample w, t->GetWorded(Split::kTrain, i));
      const std::string& prompt = w.sample.prompt;
      const std::string& text = t->templates().text[static_cast<size_t>(w.template_id)];
      std::set<std::string>& f = seen[t->name()];
      // Casing: a template that starts with a capital, shown lowercase; a
      // prompt with no capitals although its template and fillers have some.
      if (w.prefix_id < 0 && absl::ascii_isupper(static_cast<unsigned char>(text[0]))) {
        f.insert(absl::ascii_islower(static_cast<unsigned char>(prompt[0])) ? "lowered first"
                                                                            : "capital first");
      }
      if (std::any_of(text.begin(), text.end(), [](char c) { return absl::ascii_isupper(c); }) &&
          w.prefix_id < 0 && w.suffix_id < 0) {
        std::string without_slots = prompt;
        for (const std::string& value : w.slots) {
          const size_t at = without_slots.find(value);
          if (at != std::string::npos) without_slots.erase(at, value.size());
        }
        if (absl::AsciiStrToLower(without_slots) == without_slots) f.insert("all lowercase");
      }
      const char last = text.back();
      if ((last == '?' || last == '.') && w.suffix_id < 0) {
        f.insert(prompt.back() == last ? "punctuation kept" : "punctuation varied");
      }
      if (t->name() == "binary") {
        const std::string& hex = w.slots[0];
        f.insert(absl::StartsWith(hex, "0x") ? "0x" : absl::EndsWith(hex, "h") ? "h" : "bare");
        if (absl::AsciiStrToLower(hex) != hex) f.insert("upper");
      }
      if (t->name() == "units") f.insert(w.slots[1].size() <= 2 ? "symbol" : "word");
      if (t->name() == "dates") {
        f.insert(absl::StrContains(w.slots[0], "-")   ? "dashes"
                 : absl::StrContains(w.slots[0], "/") ? "slashes"
                                                      : "digits");
      }
      if (t->name() == "expression") {
        f.insert(absl::StrContains(w.slots[0], " ") ? "spaced" : "compact");
      }
      if (t->name() == "multiply") {
        f.insert(std::stoi(w.slots[0]) <= 9 && std::stoi(w.slots[1]) > 9   ? "small first"
                 : std::stoi(w.slots[1]) <= 9 && std::stoi(w.slots[0]) > 9 ? "small second"
                                                                           : "both small");
      }
    }
  }
  for (const auto& [task, features] : seen) {
    SCOPED_TRACE(task);
    for (const char* feature : {"lowered first", "capital first", "all lowercase",
                                "punctuation kept", "punctuation varied"}) {
      EXPECT_EQ(features.count(feature), 1u) << feature;
    }
  }
  EXPECT_THAT(seen["binary"], ::testing::IsSupersetOf({"0x", "h", "bare", "upper"}));
  EXPECT_THAT(seen["units"], ::testing::IsSupersetOf({"symbol", "word"}));
  EXPECT_THAT(seen["dates"], ::testing::IsSupersetOf({"dashes", "slashes", "digits"}));
  EXPECT_THAT(seen["expression"], ::testing::IsSupersetOf({"spaced", "compact"}));
  EXPECT_THAT(seen["multiply"], ::testing::IsSupersetOf({"small first", "small second"}));
}

// Pins the generated data across machines, compilers and releases: a change
// here means models trained and evaluated on the old samples no longer match
// their data. Change it only deliberately.
TEST(GrammarTest, FirstEvalSamplesArePinned) {
  const std::map<std::string, std::vector<Sample>> pinned = {
      {"add",
       {{"what is 61 + 83?", "144"},
        {"Hi there. If I have 49 apples and get 16 more, how many do I have?", "65"}}},
      {"subtract",
       {{"One more: Taking 46 from 58 leaves?", "12"}, {"Taking 62 from 83 leaves?", "21"}}},
      {"multiply",
       {{"What is 76 multiplied by 2 Much appreciated!", "152"},
        {"hello. find the product of 2 and 53. thx!", "106"}}},
      {"reverse", {{"Hi there. fqgg -> reversed ?", "ggqf"}, {"echo hyfrq | rev", "qrfyh"}}},
      {"sort",
       {{"Rearrange qmwjn alphabetically.", "jmnqw"},
        {"In alphabetical order, the letters of dkgrl are", "dgklr"}}},
      {"caesar",
       {{"Shift kmf by 3 letters.", "npi"},
        {"Apply a Caesar cipher with shift three to vwx.", "yza"}}},
      {"expression", {{"6*9+4 -> ? Much appreciated!", "58"}, {"Hello. >>> 4 * 3", "12"}}},
      {"brackets", {{"Close the brackets: ([<(", ")>])"}, {"What closes { ?", "}"}}},
      {"json_field",
       {{"from {\"color\": \"blue\", \"pet\": \"wren\"}, give me color", "blue"},
        {"tell me the team in this record: {\"food\": \"bun\", \"team\": \"jets\", \"city\": "
         "\"rome\", \"color\": \"blue\"} Thx!",
         "jets"}}},
      {"binary",
       {{"Turn the hexadecimal 0x3 into binary", "0011"}, {"hex 21 -> bin", "0010 0001"}}},
      {"units", {{"change 98 kilometers into m.", "98000"}, {"hello. Give 55 l in mL.", "55000"}}},
      {"dates",
       {{"Give 2001/12/10 with the month name!", "10 December 2001"},
        {"Give 2013/01/11 with the month name.", "11 January 2013"}}}};
  std::string all;
  for (const internal::GrammarTask* t : GrammarTasks()) {
    for (int64_t i = 0; i < 100; ++i) {
      ASSERT_OK_AND_ASSIGN(Sample sample, t->Get(Split::kEval, i));
      if (i < 2) {
        EXPECT_EQ(sample, pinned.at(t->name()).at(static_cast<size_t>(i))) << t->name();
      }
      absl::StrAppend(&all, t->name(), "\x1f", sample.prompt, "\x1f", sample.completion, "\x1e");
    }
  }
  EXPECT_EQ(common::Hash64(all), kPinnedEvalHash);
}

}  // namespace
}  // namespace premoe::testbed
