// Suite v2's twelve exact-match tasks and the wording grammar they share
// (tasks.h describes both).
//
// GetWorded(split, i) draws the instance as v1 does (GeneratedTask::
// DrawInSplit), then words it with the same generator, in this order:
//   1. the core template, uniform over the split's templates (eval: the
//      eval-only ones; train and calibration: the others);
//   2. the fillers: none 50%, a prefix 20%, a suffix 20%, both 10%, each
//      uniform over the split's part of its list;
//   3. the casing of the template's and fillers' text: as written 70%, the
//      first letter lowercased 20%, all lowercase 10%;
//   4. the trailing punctuation, where the core template ends in '?' (kept
//      70%, dropped, doubled or spaced off 10% each) or '.' (kept 70%,
//      dropped 20%, '!' 10%);
//   5. the task's formats of its slot values (Present()).
// Slot values are substituted last, so nothing above changes them.
#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "internal.h"
#include "premoe/common/hash.h"
#include "premoe/common/status.h"

namespace premoe::testbed::internal {

Phrases HoldOutForEval(absl::string_view scope, std::vector<std::string> text,
                       size_t min_eval_only) {
  const size_t n = text.size();
  const size_t held_out = std::max(min_eval_only, (n + 2) / 5);  // round(n / 5), .5 up
  std::vector<std::pair<std::uint64_t, size_t>> ranked;
  for (size_t k = 0; k < n; ++k) {
    ranked.emplace_back(common::Hash64(absl::StrCat(scope, ":", text[k])), k);
  }
  std::sort(ranked.begin(), ranked.end());
  Phrases out{std::move(text), std::vector<bool>(n, false)};
  for (size_t r = 0; r < held_out && r < n; ++r) out.eval_only[ranked[r].second] = true;
  return out;
}

// Fillers carry no digits, brackets, operators or task words, so they never
// change what a prompt asks.
const Phrases& GrammarPrefixes() {
  static const Phrases* const prefixes = new Phrases(
      HoldOutForEval("prefix",
                     {"Please ", "Hey, ", "Quick question: ", "Can you help me? ", "Hi! ",
                      "Hello. ", "Question: ", "I need this: ", "Help me out here. ", "Okay, ",
                      "Hmm, ", "Excuse me, ", "Real quick: ", "Hi there. ", "One more: "},
                     3));
  return *prefixes;
}

const Phrases& GrammarSuffixes() {
  static const Phrases* const suffixes = new Phrases(HoldOutForEval(
      "suffix",
      {" Thanks!", " Answer only.", " Thank you.", " Just the answer.", " No explanation.",
       " Be brief.", " Cheers.", " ty", " pls", " Keep it short.", " Quickly please.", " Thx!",
       " Short answer, please.", " Much appreciated!", " Nothing else."},
      3));
  return *suffixes;
}

namespace {

// Prompts leave room for the answer in the model's 256 positions.
constexpr size_t kMaxPromptBytes = 140;
// Held-out core templates per task, at the least.
constexpr size_t kMinEvalTemplates = 6;

// Indices of the phrases that `split` may use.
std::vector<int> PhrasesOfSplit(const Phrases& phrases, Split split) {
  std::vector<int> out;
  for (size_t k = 0; k < phrases.text.size(); ++k) {
    if (phrases.eval_only[k] == (split == Split::kEval)) out.push_back(static_cast<int>(k));
  }
  return out;
}

int Pick(Rng& rng, const std::vector<int>& ids) {
  return ids[static_cast<size_t>(UniformBelow(rng, ids.size()))];
}

// The grammar of one task: its templates, and the machinery of the file
// comment. Subclasses draw instances and format slot values.
class GrammarTaskBase : public GrammarTask {
 public:
  GrammarTaskBase(std::string name, std::string description, std::vector<std::string> slot_names,
                  std::vector<std::string> templates)
      : GrammarTask(name, std::move(description)),
        slot_names_(std::move(slot_names)),
        templates_(HoldOutForEval(absl::StrCat(name, ":template"), std::move(templates),
                                  kMinEvalTemplates)) {
    for (Split s : {Split::kTrain, Split::kCalibration, Split::kEval}) {
      const auto k = static_cast<size_t>(s);
      templates_of_split_[k] = PhrasesOfSplit(templates_, s);
      prefixes_of_split_[k] = PhrasesOfSplit(GrammarPrefixes(), s);
      suffixes_of_split_[k] = PhrasesOfSplit(GrammarSuffixes(), s);
    }
  }

  const Phrases& templates() const final { return templates_; }
  const std::vector<std::string>& slot_names() const final { return slot_names_; }

  absl::StatusOr<Sample> Get(Split split, int64_t index) const final {
    ASSIGN_OR_RETURN(WordedSample worded, GetWorded(split, index));
    return std::move(worded.sample);
  }

  absl::StatusOr<WordedSample> GetWorded(Split split, int64_t index) const final {
    Rng rng;
    ASSIGN_OR_RETURN(Problem problem, DrawInSplit(split, index, rng));
    const auto k = static_cast<size_t>(split);
    WordedSample out;
    out.canonical = std::move(problem.canonical);
    out.sample.completion = std::move(problem.completion);
    out.template_id = Pick(rng, templates_of_split_[k]);
    const auto fillers = UniformBelow(rng, 10);
    if (fillers == 5 || fillers == 6 || fillers == 9) {
      out.prefix_id = Pick(rng, prefixes_of_split_[k]);
    }
    if (fillers == 7 || fillers == 8 || fillers == 9) {
      out.suffix_id = Pick(rng, suffixes_of_split_[k]);
    }
    const auto casing = UniformBelow(rng, 10);
    const auto punctuation = UniformBelow(rng, 10);
    out.slots = Present(problem.slots, rng);

    // A JSON object and two long fillers can overrun the limit: the suffix
    // goes first, then the prefix. The core alone always fits.
    for (;;) {
      ASSIGN_OR_RETURN(out.sample.prompt, Compose(out, casing, punctuation));
      if (out.sample.prompt.size() <= kMaxPromptBytes) return out;
      if (out.suffix_id >= 0) {
        out.suffix_id = -1;
      } else if (out.prefix_id >= 0) {
        out.prefix_id = -1;
      } else {
        return absl::InternalError(absl::StrCat("task ", name(), ": template ", out.template_id,
                                                " makes a prompt of ", out.sample.prompt.size(),
                                                " bytes, over ", kMaxPromptBytes));
      }
    }
  }

 protected:
  // The slot values as a prompt shows them; may draw formats from `rng`.
  // By default the drawn values as they are.
  virtual std::vector<std::string> Present(const std::vector<std::string>& slots,
                                           Rng& /*rng*/) const {
    return slots;
  }

 private:
  absl::StatusOr<std::string> Compose(const WordedSample& w, std::uint64_t casing,
                                      std::uint64_t punctuation) const {
    std::string core = templates_.text[static_cast<size_t>(w.template_id)];
    if (!core.empty() && core.back() == '?') {
      if (punctuation == 7) core.pop_back();
      if (punctuation == 8) core += "?";
      if (punctuation == 9) core.insert(core.size() - 1, " ");
    } else if (!core.empty() && core.back() == '.') {
      if (punctuation == 7 || punctuation == 8) core.pop_back();
      if (punctuation == 9) core.back() = '!';
    }
    std::string frame = absl::StrCat(
        w.prefix_id < 0 ? "" : GrammarPrefixes().text[static_cast<size_t>(w.prefix_id)], core,
        w.suffix_id < 0 ? "" : GrammarSuffixes().text[static_cast<size_t>(w.suffix_id)]);
    // Slot names are lowercase, so recasing the frame leaves them intact.
    if (casing == 9) {
      absl::AsciiStrToLower(&frame);
    } else if (casing >= 7 && !frame.empty()) {
      frame[0] = absl::ascii_tolower(static_cast<unsigned char>(frame[0]));
    }
    return Substitute(frame, w.slots);
  }

  // `frame` with each "{name}" replaced by that slot's value, in one pass,
  // so braces in values (JSON, brackets) are never read as slots.
  absl::StatusOr<std::string> Substitute(absl::string_view frame,
                                         const std::vector<std::string>& values) const {
    std::string out;
    size_t pos = 0;
    while (pos < frame.size()) {
      const size_t open = frame.find('{', pos);
      if (open == absl::string_view::npos) break;
      const size_t close = frame.find('}', open);
      const auto slot = std::find(
          slot_names_.begin(), slot_names_.end(),
          frame.substr(open + 1, close == absl::string_view::npos ? absl::string_view::npos
                                                                  : close - open - 1));
      if (close == absl::string_view::npos || slot == slot_names_.end()) {
        return absl::InternalError(
            absl::StrCat("task ", name(), ": a template has a stray brace: \"", frame, "\""));
      }
      absl::StrAppend(&out, frame.substr(pos, open - pos),
                      values[static_cast<size_t>(slot - slot_names_.begin())]);
      pos = close + 1;
    }
    absl::StrAppend(&out, frame.substr(pos));
    return out;
  }

  const std::vector<std::string> slot_names_;
  const Phrases templates_;
  // Indexed by Split.
  std::array<std::vector<int>, 3> templates_of_split_, prefixes_of_split_, suffixes_of_split_;
};

// ---------------------------------------------------------------------------
// Arithmetic. Templates carry no digits, so a prompt's numbers are its
// operands.

// 100 * 100 draws; 5050 instances, a pair and its swap being one.
class AddTask final : public GrammarTaskBase {
 public:
  AddTask()
      : GrammarTaskBase("add", "arithmetic: the sum of two integers in [0, 99]", {"a", "b"},
                        {"What is {a} + {b}?",
                         "{a}+{b}=",
                         "Add {a} and {b}.",
                         "What's {a} plus {b}?",
                         "Compute the sum of {a} and {b}.",
                         "Sum {a} and {b}.",
                         "{a} plus {b} equals what?",
                         "How much is {a} + {b}?",
                         "Calculate {a}+{b}",
                         "add {a} {b}",
                         "If I have {a} apples and get {b} more, how many do I have?",
                         "What do you get when you add {b} to {a}?",
                         "Find the total of {a} and {b}.",
                         "sum({a}, {b})",
                         "{a} + {b} -> ?",
                         "Give me the sum: {a} + {b}",
                         "Tell me what {a} plus {b} makes.",
                         "I bought things for {a} and {b} dollars. What is the total?",
                         "Quick math: {a}+{b}",
                         "What is the sum of {a} and {b}?",
                         "Work out {a} + {b}.",
                         "Adding {a} to {b} gives?",
                         "Total of {a} and {b}?",
                         "{a} and {b} added together is",
                         "print({a} + {b})",
                         "Solve: {a} + {b}",
                         "Can you add {a} to {b}?",
                         "{a} plus {b}",
                         "What number is {b} more than {a}?",
                         "{a}, {b}: add them up.",
                         "Put {a} and {b} together. What is the total?",
                         "My score was {a}, then I got {b} more points. Total?",
                         "x = {a} + {b}. What is x?",
                         "Increase {a} by {b}."}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    const int a = UniformInt(rng, 0, 99);
    const int b = UniformInt(rng, 0, 99);
    return {absl::StrCat(std::min(a, b), "+", std::max(a, b)),
            absl::StrCat(a + b),
            {absl::StrCat(a), absl::StrCat(b)}};
  }
};

// The larger first ({a}), so the answer is never negative; 5050 instances.
class SubtractTask final : public GrammarTaskBase {
 public:
  SubtractTask()
      : GrammarTaskBase("subtract",
                        "arithmetic: the difference of two integers in [0, 99], the larger first",
                        {"a", "b"},
                        {"What is {a} - {b}?",
                         "{a}-{b}=",
                         "Subtract {b} from {a}.",
                         "What's {a} minus {b}?",
                         "Compute the difference between {a} and {b}.",
                         "Take {b} away from {a}.",
                         "{a} minus {b} equals what?",
                         "How much is {a} - {b}?",
                         "Calculate {a}-{b}",
                         "I had {a} apples and gave away {b}. How many are left?",
                         "What do you get when you subtract {b} from {a}?",
                         "Find the difference of {a} and {b}.",
                         "sub({a}, {b})",
                         "{a} - {b} -> ?",
                         "Give me the difference: {a} - {b}",
                         "Tell me what {a} minus {b} makes.",
                         "I had {a} dollars and spent {b}. How much is left?",
                         "Quick math: {a}-{b}",
                         "What is {b} less than {a}?",
                         "Work out {a} - {b}.",
                         "Taking {b} from {a} leaves?",
                         "How much less is {b} than {a}?",
                         "{a} take away {b} is",
                         "print({a} - {b})",
                         "Solve: {a} - {b}",
                         "Can you subtract {b} from {a}?",
                         "How far apart are {a} and {b}?",
                         "{a} less {b}",
                         "{b} subtracted from {a} is",
                         "What's left if you take {b} from {a}?",
                         "Remove {b} from {a}. What remains?",
                         "The jar held {a} sweets and {b} were eaten. How many remain?",
                         "x = {a} - {b}. What is x?",
                         "Decrease {a} by {b}."}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    int a = UniformInt(rng, 0, 99);
    int b = UniformInt(rng, 0, 99);
    if (a < b) std::swap(a, b);
    return {absl::StrCat(a, "-", b), absl::StrCat(a - b), {absl::StrCat(a), absl::StrCat(b)}};
  }
};

// 100 * 8 draws; 772 instances, 3 * 5 and 5 * 3 being one. Either operand may
// come first in the prompt (Present()).
class MultiplyTask final : public GrammarTaskBase {
 public:
  MultiplyTask()
      : GrammarTaskBase("multiply",
                        "arithmetic: the product of an integer in [0, 99] and one in [2, 9]",
                        {"a", "b"},
                        {"What is {a} * {b}?",
                         "{a}*{b}=",
                         "Multiply {a} by {b}.",
                         "What's {a} times {b}?",
                         "Compute the product of {a} and {b}.",
                         "{a} times {b} equals what?",
                         "How much is {a} * {b}?",
                         "Calculate {a}*{b}",
                         "A box holds {a} eggs. How many eggs are in {b} boxes?",
                         "What do you get when you multiply {a} by {b}?",
                         "Find the product of {a} and {b}.",
                         "mul({a}, {b})",
                         "{a} * {b} -> ?",
                         "Give me the product: {a} x {b}",
                         "Tell me what {a} times {b} makes.",
                         "Tickets cost {a} dollars each. What do {b} tickets cost?",
                         "Quick math: {a}*{b}",
                         "What is {a} multiplied by {b}?",
                         "Work out {a} x {b}.",
                         "{a} lots of {b} is?",
                         "{a} groups of {b} make how many?",
                         "{a} x {b}",
                         "print({a} * {b})",
                         "Solve: {a} * {b}",
                         "Can you multiply {a} and {b}?",
                         "What do {a} and {b} multiply to?",
                         "Each row has {a} seats. How many seats are in {b} rows?",
                         "Multiply: {a}, {b}",
                         "How many is {b} lots of {a}?",
                         "x = {a} * {b}. What is x?",
                         "Times {a} by {b}.",
                         "What's the product of {a} and {b}?",
                         "{a} multiplied by {b} gives?"}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    const int a = UniformInt(rng, 0, 99);
    const int b = UniformInt(rng, 2, 9);
    return {absl::StrCat(std::max(a, b), "*", std::min(a, b)),
            absl::StrCat(a * b),
            {absl::StrCat(a), absl::StrCat(b)}};
  }

  std::vector<std::string> Present(const std::vector<std::string>& slots, Rng& rng) const override {
    if (UniformBelow(rng, 2) == 0) return slots;
    return {slots[1], slots[0]};
  }
};

// ---------------------------------------------------------------------------
// String manipulation: a random word of 3-6 lowercase letters (~3.2e8
// instances), which no template recases.

class ReverseTask final : public GrammarTaskBase {
 public:
  ReverseTask()
      : GrammarTaskBase("reverse", "strings: a random lowercase word of 3-6 letters backwards",
                        {"word"},
                        {"Reverse: {word}",
                         "Spell '{word}' backwards.",
                         "Reverse the letters of {word}.",
                         "What is {word} written backwards?",
                         "Write \"{word}\" back to front.",
                         "{word} reversed is",
                         "reverse({word})",
                         "'{word}'[::-1]",
                         "Can you reverse the word {word}?",
                         "{word} -> reversed?",
                         "Read {word} from right to left.",
                         "Flip the word {word} around.",
                         "Mirror image of {word}, letter by letter?",
                         "How do you spell {word} in reverse?",
                         "Mirror the string {word}.",
                         "Give me {word} backwards",
                         "Backwards, {word} is",
                         "Reverse this string: \"{word}\"",
                         "What does {word} look like reversed?",
                         "rev {word}",
                         "Write the letters of {word} in reverse order.",
                         "echo {word} | rev",
                         "Turn {word} backwards.",
                         "Spell {word} from the last letter to the first.",
                         "{word} backwards?",
                         "Flip the letter order of {word}.",
                         "What's the reverse of \"{word}\"?",
                         "Reversed: {word}",
                         "Return {word} reversed.",
                         "\"{word}\" spelled backwards is what?",
                         "Take {word} and reverse it.",
                         "{word}.reverse()",
                         "Write {word} in reverse.",
                         "Reverse the string {word} for me."}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    std::string word = RandomWord(rng, 3, 6);
    return {word, Reversed(word), {word}};
  }
};

// The word's letters in alphabetical order: "dcab" -> "abcd".
class SortTask final : public GrammarTaskBase {
 public:
  SortTask()
      : GrammarTaskBase("sort",
                        "strings: the letters of a random 3-6 letter word in alphabetical order",
                        {"word"},
                        {"Sort the letters of {word}.",
                         "Sort: {word}",
                         "Put the letters of {word} in alphabetical order.",
                         "Alphabetize the letters in {word}.",
                         "''.join(sorted('{word}'))",
                         "{word} -> sorted?",
                         "Arrange the letters of {word} from a to z.",
                         "What do you get if you sort the characters of {word}?",
                         "sorted({word})",
                         "Rearrange {word} alphabetically.",
                         "Order the letters in \"{word}\" alphabetically.",
                         "Sort the characters of '{word}' in ascending order.",
                         "Give me the letters of {word}, sorted.",
                         "sort the chars: {word}",
                         "Letters of {word} in A-Z order?",
                         "Alphabetical order of the letters in {word}:",
                         "Can you sort {word} letter by letter?",
                         "How does {word} look with its letters sorted?",
                         "{word} sorted alphabetically is",
                         "Sort this word's letters: {word}",
                         "Put {word} in alphabetical order, letter by letter.",
                         "sort_letters(\"{word}\")",
                         "Rearrange the letters of {word} so they are in order.",
                         "What is {word} with the letters alphabetized?",
                         "Take {word} and sort its letters.",
                         "In alphabetical order, the letters of {word} are",
                         "Order these letters from a to z: {word}",
                         "Arrange {word} alphabetically.",
                         "Return the letters of {word} sorted.",
                         "Alphabetize: {word}",
                         "Sort the letters of {word}, smallest letter first.",
                         "{word}: sort the letters"}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    std::string word = RandomWord(rng, 3, 6);
    std::string sorted = word;
    std::sort(sorted.begin(), sorted.end());
    return {word, std::move(sorted), {word}};
  }
};

class CaesarTask final : public GrammarTaskBase {
 public:
  CaesarTask()
      : GrammarTaskBase(
            "caesar", "strings: a random 3-6 letter lowercase word Caesar-shifted by +3", {"word"},
            {"Encrypt {word} with a Caesar shift of three.",
             "ROT3 this: {word}",
             "Caesar shift by three: {word}",
             "Shift each letter of {word} three places forward.",
             "Apply a Caesar cipher with shift three to {word}.",
             "{word} in Caesar +3 is",
             "caesar({word}, 3)",
             "Encode {word} using ROT3.",
             "What is {word} after a shift of +3?",
             "Move every letter in {word} forward by three.",
             "Caesar-encrypt the word {word} (key 3).",
             "Encipher {word} with shift 3.",
             "Rotate the letters of {word} by three.",
             "{word} -> caesar+3?",
             "Shift {word} by 3 letters.",
             "What does {word} become with a Caesar shift of 3?",
             "rot3 {word}",
             "Apply ROT3 to \"{word}\".",
             "Each letter of {word} moves three on in the alphabet. Result?",
             "Use a shift-by-three cipher on {word}.",
             "Caesar cipher, key 3: {word}",
             "Encrypt: {word} (Caesar, +3)",
             "If a becomes d, what does {word} become?",
             "Shift so that a becomes d: {word}",
             "Caesar {word}",
             "Secret code time: shift {word} by three letters.",
             "{word} shifted three letters along the alphabet is",
             "Can you Caesar-shift {word} by 3?",
             "encode('{word}', shift=3)",
             "Give me {word} in ROT3.",
             "Bump each letter of {word} by three.",
             "Cipher {word} with a shift of 3."}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    std::string word = RandomWord(rng, 3, 6);
    return {word, CaesarShifted(word, 3), {word}};
  }
};

// ---------------------------------------------------------------------------
// Code-like.

// The value of a tiny expression: 2-3 single-digit operands, + - *, standard
// precedence, at most one pair of parentheses (around two of three operands).
// ~3e4 instances with a value >= 0. Shown compact ("3*(4+2)") or spaced
// ("3 * (4 + 2)").
class ExpressionTask final : public GrammarTaskBase {
 public:
  ExpressionTask()
      : GrammarTaskBase("expression",
                        "code: the value (>= 0) of 2-3 digits joined by + - *, with at most one "
                        "pair of parentheses",
                        {"expr"},
                        {"Evaluate {expr}.",
                         "{expr} = ?",
                         "What is {expr}?",
                         "Compute {expr}",
                         "print({expr})",
                         ">>> {expr}",
                         "What does {expr} evaluate to?",
                         "Calculate: {expr}",
                         "Solve {expr}",
                         "What is the value of {expr}?",
                         "eval(\"{expr}\")",
                         "y = {expr}. What is y?",
                         "Work out {expr} using the usual order of operations.",
                         "Result of {expr}?",
                         "Simplify {expr} to a single number.",
                         "int r = {expr}; // r = ?",
                         "echo $(( {expr} ))",
                         "Find the value of the expression {expr}.",
                         "How much is {expr}?",
                         "Give me the result of {expr}.",
                         "Mind the precedence: {expr}",
                         "return {expr}; // what is returned?",
                         "Evaluate the expression: {expr}",
                         "Reduce {expr} to one integer.",
                         "What number is {expr}?",
                         "console.log({expr})",
                         "Compute the value of {expr}.",
                         "{expr} -> ?",
                         "{expr} -> value?",
                         "Can you evaluate {expr} for me?",
                         "{expr} evaluates to",
                         "{expr} equals what number?",
                         ">>> print({expr})",
                         "Calculate {expr} in your head.",
                         "Let v = {expr}. Then v is?"}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    for (;;) {
      const int n = UniformInt(rng, 2, 3);
      std::array<int, 3> d{};
      std::array<char, 2> op{};
      for (int k = 0; k < n; ++k) d[static_cast<size_t>(k)] = UniformInt(rng, 0, 9);
      for (int k = 0; k + 1 < n; ++k) op[static_cast<size_t>(k)] = "+-*"[UniformInt(rng, 0, 2)];
      // 0: none; 1: around the first two operands; 2: around the last two.
      const int parens = n == 3 ? UniformInt(rng, 0, 2) : 0;
      int value;
      std::string text;
      if (n == 2) {
        value = Apply(d[0], op[0], d[1]);
        text = absl::StrCat(d[0], std::string(1, op[0]), d[1]);
      } else {
        // Without parentheses, a * after a + or - binds first.
        const bool right_first = parens == 2 || (parens == 0 && op[1] == '*' && op[0] != '*');
        value = right_first ? Apply(d[0], op[0], Apply(d[1], op[1], d[2]))
                            : Apply(Apply(d[0], op[0], d[1]), op[1], d[2]);
        text = absl::StrCat(parens == 1 ? "(" : "", d[0], std::string(1, op[0]),
                            parens == 2 ? "(" : "", d[1], parens == 1 ? ")" : "",
                            std::string(1, op[1]), d[2], parens == 2 ? ")" : "");
      }
      if (value >= 0) return {text, absl::StrCat(value), {text}};
    }
  }

  std::vector<std::string> Present(const std::vector<std::string>& slots, Rng& rng) const override {
    if (UniformBelow(rng, 2) == 0) return slots;
    std::string spaced;
    for (char c : slots[0]) {
      if (c == '+' || c == '-' || c == '*') {
        absl::StrAppend(&spaced, " ", std::string(1, c), " ");
      } else {
        spaced.push_back(c);
      }
    }
    return {spaced};
  }

 private:
  static int Apply(int x, char op, int y) { return op == '+' ? x + y : op == '-' ? x - y : x * y; }
};

// 1364 instances. Templates hold no brackets of their own.
class BracketsTask final : public GrammarTaskBase {
 public:
  BracketsTask()
      : GrammarTaskBase("brackets", "code: the closing run for 1-5 open brackets from ([{<",
                        {"open"},
                        {"Close the brackets: {open}",
                         "What closes {open}?",
                         "Balance this: {open}",
                         "Complete the bracket sequence {open}",
                         "Give the closing brackets for {open}.",
                         "Finish this so every bracket is closed: {open}",
                         "Which brackets close {open}, in order?",
                         "Write the closers for {open}",
                         "{open} needs closing:",
                         "Match these open brackets: {open}",
                         "How do I close {open}?",
                         "Supply the missing closing brackets for {open}.",
                         "My code ends with {open}. What do I type to close it all?",
                         "Close every bracket in {open}.",
                         "Balance the brackets {open}",
                         "Unclosed: {open}. Closing sequence?",
                         "Closing run for {open}?",
                         "Complete: {open}",
                         "What string balances {open}?",
                         "Finish the brackets {open}",
                         "{open} is missing its closing brackets. Write them.",
                         "Return the brackets that close {open}.",
                         "Fix the nesting: {open}",
                         "Which closing brackets match {open}?",
                         "Close these: {open}",
                         "{open} ... close it",
                         "Pair up {open} with closing brackets.",
                         "Terminate the open brackets {open}.",
                         "What closes the run {open}, innermost first?",
                         "Make {open} balanced.",
                         "Needed to close {open}:",
                         "Emit the closing brackets for {open}"}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    std::string open = RandomOpenBrackets(rng);
    return {open, ClosingBrackets(open), {open}};
  }
};

// One key's value in a JSON object of 2-4 distinct keys, as
// {"name": "ivy", "age": 7}; word values come from a short list per key,
// numbers from [0, 99]. The answer is the value's text without quotes. Over
// 1e8 instances.
class JsonFieldTask final : public GrammarTaskBase {
 public:
  JsonFieldTask()
      : GrammarTaskBase("json_field",
                        "code: the value of one key of a 2-4 key JSON object, unquoted",
                        {"json", "key"},
                        {"What is the {key} in {json}?",
                         "{json}\nWhat is {key}?",
                         "Get {key} from {json}",
                         "obj = {json}; obj.{key} = ?",
                         "Given {json}, what is the value of \"{key}\"?",
                         "{json}[\"{key}\"]",
                         "jq .{key} <<< '{json}'",
                         "Extract the \"{key}\" field: {json}",
                         "In this JSON, what is {key}? {json}",
                         "Read the {key} from {json}.",
                         "d = {json}\nprint(d['{key}'])",
                         "Look up {key} in {json}",
                         "{json} -> {key}?",
                         "Which value does {key} have in {json}?",
                         "Find the field {key} in {json}.",
                         "From {json}, give me {key}.",
                         "What value is stored under {key}? {json}",
                         "Return the {key} field of {json}",
                         "JSON: {json} Key: {key}",
                         "{key} = ? in {json}",
                         "Parse {json} and output {key}.",
                         "What's {key} here: {json}",
                         "data = {json}\ndata.{key}",
                         "Tell me the {key} in this record: {json}",
                         "Select {key} from {json}.",
                         "{json}\n{key}:",
                         "The object {json} has a {key}. What is it?",
                         "json.loads('{json}')['{key}']",
                         "Value of key {key} in {json}?",
                         "Show the {key} of {json}.",
                         "Fetch \"{key}\" out of {json}",
                         "Given the JSON {json}, what is its {key}?"}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    struct Key {
      const char* name;
      // Empty: a number in [0, 99].
      std::vector<const char*> words;
    };
    static const std::vector<Key>* const kKeys = new std::vector<Key>{
        {"name", {"anna", "ben", "carl", "dora", "eli", "fay", "gus", "ivy", "jon", "kim"}},
        {"city", {"oslo", "rome", "lima", "bern", "kyiv", "doha", "nice", "riga", "baku", "pune"}},
        {"color", {"red", "blue", "teal", "gold", "pink", "gray", "lime", "navy", "rose", "tan"}},
        {"pet", {"cat", "dog", "fish", "frog", "hare", "mole", "newt", "owl", "pony", "wren"}},
        {"food", {"rice", "soup", "cake", "kiwi", "plum", "pear", "taco", "naan", "tofu", "bun"}},
        {"team", {"lions", "hawks", "bears", "owls", "jets", "reds", "blues", "kings", "suns"}},
        {"age", {}},
        {"id", {}},
        {"size", {}},
        {"code", {}},
        {"level", {}},
        {"score", {}}};
    const int n = UniformInt(rng, 2, 4);
    // The first n of a partial Fisher-Yates shuffle: distinct keys in order.
    std::vector<size_t> order(kKeys->size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::string json = "{", asked_value;
    const int asked = UniformInt(rng, 0, n - 1);
    for (int k = 0; k < n; ++k) {
      const auto uk = static_cast<size_t>(k);
      std::swap(order[uk], order[uk + UniformBelow(rng, order.size() - uk)]);
      const Key& key = (*kKeys)[order[uk]];
      const std::string value = key.words.empty()
                                    ? absl::StrCat(UniformInt(rng, 0, 99))
                                    : std::string(key.words[UniformBelow(rng, key.words.size())]);
      absl::StrAppend(&json, k == 0 ? "" : ", ", "\"", key.name,
                      "\": ", key.words.empty() ? value : absl::StrCat("\"", value, "\""));
      if (k == asked) asked_value = value;
    }
    json += "}";
    const std::string key = (*kKeys)[order[static_cast<size_t>(asked)]].name;
    return {absl::StrCat(json, "[\"", key, "\"]"), std::move(asked_value), {json, key}};
  }
};

// ---------------------------------------------------------------------------
// Text transforms and lookups.

// Hex to binary, four bits per hex digit, groups space separated: 4368
// instances (leading zeros count). Shown as 3f, 3F, 0x3f, 0x3F or 3fh.
class BinaryTask final : public GrammarTaskBase {
 public:
  BinaryTask()
      : GrammarTaskBase(
            "binary",
            "transforms: a 1-3 digit hex number in binary, 4 bits per hex digit, space separated",
            {"hex"},
            {"Convert hex {hex} to binary.",
             "What is hexadecimal {hex} in binary?",
             "Hex {hex} in base 2?",
             "hex2bin({hex})",
             "Write the hex number {hex} as bits.",
             "{hex} (hex) -> binary",
             "Show the bits of hex value {hex}.",
             "Translate hex {hex} into binary, four bits per digit.",
             "hex {hex} = ? in binary",
             "Binary for hex {hex}?",
             "Turn the hexadecimal {hex} into binary.",
             "Express hex {hex} in base two.",
             "What bits make up hex {hex}?",
             "hex_to_bin(\"{hex}\")",
             "Base 16 to base 2: {hex}",
             "Convert {hex} from hex to binary.",
             "I have the hex value {hex}. What is it in binary?",
             "{hex} hex in binary is",
             "Give me hex {hex} as binary nibbles.",
             "Rewrite hexadecimal {hex} in binary.",
             "Hex to binary: {hex}",
             "What's {hex} (base 16) in binary?",
             "Binary representation of hex {hex}?",
             "Spell out the bits of hexadecimal {hex}.",
             "Expand hex {hex} into binary digits.",
             "From hex to bits: {hex}",
             "Decode the hex digits {hex} into binary.",
             "hex {hex} -> bin",
             "Change hex {hex} to base 2.",
             "Hexadecimal {hex}, written in binary, is",
             "Can you write hex {hex} in binary?",
             "In binary, what is the hex number {hex}?"}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    static constexpr char kHex[] = "0123456789abcdef";
    const int digits = UniformInt(rng, 1, 3);
    std::string hex;
    for (int i = 0; i < digits; ++i) hex.push_back(kHex[UniformInt(rng, 0, 15)]);
    return {hex, HexToBinaryGroups(hex), {hex}};
  }

  std::vector<std::string> Present(const std::vector<std::string>& slots, Rng& rng) const override {
    const std::string& hex = slots[0];
    switch (UniformBelow(rng, 5)) {
      case 0:
        return {hex};
      case 1:
        return {absl::AsciiStrToUpper(hex)};
      case 2:
        return {absl::StrCat("0x", hex)};
      case 3:
        return {absl::StrCat("0x", absl::AsciiStrToUpper(hex))};
      default:
        return {absl::StrCat(hex, "h")};
    }
  }
};

// A metric quantity 1-99 converted to a smaller unit by a power of ten: 99 * 6
// = 594 instances, ~59 per held-out split. Each unit is shown as a symbol or a
// word (British or American spelling, singular for 1 of the unit converted
// from).
class UnitsTask final : public GrammarTaskBase {
 public:
  UnitsTask()
      : GrammarTaskBase(
            "units",
            "transforms: 1-99 of a metric unit (km, m, cm, mm, kg, g, l, ml) in a smaller one",
            {"n", "from", "to"},
            {"Convert {n} {from} to {to}.",
             "How many {to} are in {n} {from}?",
             "{n} {from} in {to}?",
             "{n} {from} = how many {to}?",
             "What is {n} {from} in {to}?",
             "Express {n} {from} in {to}.",
             "{n} {from} -> {to}",
             "How many {to} is {n} {from}?",
             "Change {n} {from} into {to}.",
             "I have {n} {from}. How many {to} is that?",
             "convert({n}, \"{from}\", \"{to}\")",
             "{n} {from} equals how many {to}?",
             "Turn {n} {from} into {to}.",
             "Give {n} {from} in {to}.",
             "What's {n} {from} expressed in {to}?",
             "Quantity: {n} {from}. Target unit: {to}.",
             "{n} {from} to {to}",
             "Number of {to} in {n} {from}?",
             "Rewrite {n} {from} as {to}.",
             "In {to}, how much is {n} {from}?",
             "{n} {from} converted to {to} is",
             "Work out {n} {from} in {to}.",
             "Unit conversion: {n} {from} to {to}",
             "If something measures {n} {from}, what is that in {to}?",
             "Switch {n} {from} over to {to}.",
             "{from} to {to}: {n}",
             "How much is {n} {from} when measured in {to}?",
             "Translate {n} {from} into {to}.",
             "What do {n} {from} make in {to}?",
             "Scale {n} {from} to {to}.",
             "Restate {n} {from} in {to}."}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    static constexpr struct {
      const char* from;
      const char* to;
      int factor;
    } kConversions[] = {{"km", "m", 1000}, {"m", "cm", 100},  {"m", "mm", 1000},
                        {"cm", "mm", 10},  {"kg", "g", 1000}, {"l", "ml", 1000}};
    const int n = UniformInt(rng, 1, 99);
    const auto& c = kConversions[UniformInt(rng, 0, 5)];
    return {absl::StrCat(n, c.from, "->", c.to),
            absl::StrCat(n * c.factor),
            {absl::StrCat(n), c.from, c.to}};
  }

  std::vector<std::string> Present(const std::vector<std::string>& slots, Rng& rng) const override {
    const bool one = slots[0] == "1";
    return {slots[0], UnitName(slots[1], /*singular=*/one, rng),
            UnitName(slots[2], /*singular=*/false, rng)};
  }

 private:
  // A symbol (half the time) or a word for the unit with symbol `unit`.
  static std::string UnitName(const std::string& unit, bool singular, Rng& rng) {
    struct Names {
      const char* unit;
      std::vector<const char*> symbols, singulars, plurals;
    };
    static const std::vector<Names>* const kNames = new std::vector<Names>{
        {"km", {"km"}, {"kilometre", "kilometer"}, {"kilometres", "kilometers"}},
        {"m", {"m"}, {"metre", "meter"}, {"metres", "meters"}},
        {"cm", {"cm"}, {"centimetre", "centimeter"}, {"centimetres", "centimeters"}},
        {"mm", {"mm"}, {"millimetre", "millimeter"}, {"millimetres", "millimeters"}},
        {"kg", {"kg"}, {"kilogram", "kilo"}, {"kilograms", "kilos"}},
        {"g", {"g"}, {"gram", "gramme"}, {"grams", "grammes"}},
        {"l", {"l", "L"}, {"litre", "liter"}, {"litres", "liters"}},
        {"ml", {"ml", "mL"}, {"millilitre", "milliliter"}, {"millilitres", "milliliters"}}};
    for (const Names& names : *kNames) {
      if (unit != names.unit) continue;
      const std::vector<const char*>& forms = UniformBelow(rng, 2) == 0 ? names.symbols
                                              : singular                ? names.singulars
                                                                        : names.plurals;
      return forms[UniformBelow(rng, forms.size())];
    }
    return unit;  // unreachable: Draw() uses only the units above
  }
};

// An ISO date of 1950-2049 written as "5 March 2024": 36524 instances. Shown
// as 2024-03-05, 2024/03/05 or 20240305.
class DatesTask final : public GrammarTaskBase {
 public:
  DatesTask()
      : GrammarTaskBase("dates", "transforms: an ISO date of 1950-2049 as \"D Month YYYY\"",
                        {"date"},
                        {"Write {date} in words.",
                         "What is {date} as a written date?",
                         "Format {date} as day month year.",
                         "{date} -> long date?",
                         "Convert the date {date} to D Month YYYY.",
                         "How do you write {date} in full?",
                         "Spell out the date {date}.",
                         "format_date(\"{date}\")",
                         "Turn {date} into a readable date.",
                         "Give {date} with the month name.",
                         "{date} in long form is",
                         "Rewrite {date} with the month spelled out.",
                         "Write {date} like day, month name, year.",
                         "Human-readable form of {date}?",
                         "Date: {date}. Long format?",
                         "Express {date} as a date in words.",
                         "What date is {date}, written out?",
                         "Convert {date} to a long date.",
                         "strftime('%-d %B %Y') of {date}",
                         "Reformat {date} into day, month name and year.",
                         "{date} written out in full:",
                         "Change {date} into a day-month-year date with the month's name.",
                         "Print {date} in long date format.",
                         "How would {date} look on a letter?",
                         "Put {date} into words, day first.",
                         "Long date for {date}?",
                         "Make {date} readable: day, month, year.",
                         "The date {date} in plain English is",
                         "Write out {date} with the name of the month.",
                         "Show {date} as a long-form date.",
                         "Give me {date} in day month year form.",
                         "Decode the date {date}."}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    static constexpr const char* kMonths[] = {"January",   "February", "March",    "April",
                                              "May",       "June",     "July",     "August",
                                              "September", "October",  "November", "December"};
    static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const int year = UniformInt(rng, 1950, 2049);
    const int month = UniformInt(rng, 1, 12);
    const bool leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    const int day = UniformInt(rng, 1, kDays[month - 1] + (month == 2 && leap ? 1 : 0));
    const std::string iso =
        absl::StrCat(year, "-", month < 10 ? "0" : "", month, "-", day < 10 ? "0" : "", day);
    return {iso, absl::StrCat(day, " ", kMonths[month - 1], " ", year), {iso}};
  }

  std::vector<std::string> Present(const std::vector<std::string>& slots, Rng& rng) const override {
    std::string date = slots[0];  // "2024-03-05"
    switch (UniformBelow(rng, 3)) {
      case 0:
        return {date};
      case 1:
        std::replace(date.begin(), date.end(), '-', '/');
        return {date};
      default:
        date.erase(std::remove(date.begin(), date.end(), '-'), date.end());
        return {date};
    }
  }
};

}  // namespace

std::vector<std::unique_ptr<Task>> MakeGrammarTasks() {
  std::vector<std::unique_ptr<Task>> tasks;
  tasks.push_back(std::make_unique<AddTask>());
  tasks.push_back(std::make_unique<SubtractTask>());
  tasks.push_back(std::make_unique<MultiplyTask>());
  tasks.push_back(std::make_unique<ReverseTask>());
  tasks.push_back(std::make_unique<SortTask>());
  tasks.push_back(std::make_unique<CaesarTask>());
  tasks.push_back(std::make_unique<ExpressionTask>());
  tasks.push_back(std::make_unique<BracketsTask>());
  tasks.push_back(std::make_unique<JsonFieldTask>());
  tasks.push_back(std::make_unique<BinaryTask>());
  tasks.push_back(std::make_unique<UnitsTask>());
  tasks.push_back(std::make_unique<DatesTask>());
  return tasks;
}

}  // namespace premoe::testbed::internal
