// Suite v1's seven exact-match generator tasks, and the randomness, domain
// logic and redraw loop that both suites' generated tasks share.
//
// Get(split, i) seeds an mt19937_64 from Hash64("<task>:<split>:<i>"), draws
// problem instances until one hashes into `split` (tasks.h explains the
// buckets), then picks the wording with the same generator. The expected
// number of draws is 10 for eval and calibration, 1.25 for train.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "internal.h"
#include "premoe/common/hash.h"
#include "premoe/common/status.h"

namespace premoe::testbed::internal {

// std::uniform_int_distribution is not used: its mapping differs between
// standard libraries, and samples must not. Rejecting the lowest 2^64 mod n
// outputs leaves a multiple of n values, so every residue is equally likely.
std::uint64_t UniformBelow(Rng& rng, std::uint64_t n) {
  const std::uint64_t reject_below = (0 - n) % n;  // 2^64 mod n
  std::uint64_t x;
  do {
    x = rng();
  } while (x < reject_below);
  return x % n;
}

int UniformInt(Rng& rng, int lo, int hi) {
  return lo + static_cast<int>(UniformBelow(rng, static_cast<std::uint64_t>(hi - lo) + 1));
}

std::string RandomWord(Rng& rng, int min_letters, int max_letters) {
  const int n = UniformInt(rng, min_letters, max_letters);
  std::string word(static_cast<size_t>(n), 'a');
  for (char& c : word) c = static_cast<char>('a' + UniformInt(rng, 0, 25));
  return word;
}

std::string Reversed(absl::string_view text) { return std::string(text.rbegin(), text.rend()); }

std::string CaesarShifted(absl::string_view word, int shift) {
  std::string out(word);
  for (char& c : out) c = static_cast<char>('a' + (c - 'a' + shift) % 26);
  return out;
}

std::string RandomOpenBrackets(Rng& rng) {
  static constexpr char kOpen[] = "([{<";
  const int n = UniformInt(rng, 1, 5);
  std::string open;
  for (int k = 0; k < n; ++k) open.push_back(kOpen[UniformInt(rng, 0, 3)]);
  return open;
}

std::string ClosingBrackets(absl::string_view open) {
  std::string close;
  for (auto it = open.rbegin(); it != open.rend(); ++it) {
    close.push_back(*it == '(' ? ')' : *it == '[' ? ']' : *it == '{' ? '}' : '>');
  }
  return close;
}

std::string HexToBinaryGroups(absl::string_view hex) {
  std::string bits;
  for (char h : hex) {
    const int d = h <= '9' ? h - '0' : h - 'a' + 10;
    if (!bits.empty()) bits.push_back(' ');
    for (int b = 3; b >= 0; --b) bits.push_back(static_cast<char>('0' + ((d >> b) & 1)));
  }
  return bits;
}

namespace {

// Guards the redraw loop; the smallest instance space of either suite
// (units, 594 instances) puts ~59 in each held-out split, so ~10 draws are
// expected and this is never reached.
constexpr int kMaxDraws = 100000;

}  // namespace

GeneratedTask::GeneratedTask(std::string name, std::string description)
    : name_(std::move(name)), description_(std::move(description)) {}

int64_t GeneratedTask::size(Split split) const {
  return split == Split::kTrain ? std::numeric_limits<int64_t>::max() : kGeneratedSplitSize;
}

absl::StatusOr<Problem> GeneratedTask::DrawInSplit(Split split, int64_t index, Rng& rng) const {
  if (index < 0 || index >= size(split)) {
    return absl::OutOfRangeError(absl::StrCat("task ", name_, ": index ", index,
                                              " is outside split ", SplitName(split), " [0, ",
                                              size(split), ")"));
  }
  rng.seed(common::Hash64(absl::StrCat(name_, ":", SplitName(split), ":", index)));
  for (int draw = 0; draw < kMaxDraws; ++draw) {
    Problem problem = Draw(rng);
    if (SplitOfHash(common::Hash64(absl::StrCat(name_, ":", problem.canonical))) == split) {
      return problem;
    }
  }
  return absl::InternalError(absl::StrCat("task ", name_, ": no instance of split ",
                                          SplitName(split), " in ", kMaxDraws, " draws"));
}

namespace {

// A v1 task: a handful of templates with positional slots {0}, {1}, ...,
// one chosen uniformly per sample.
class GeneratorTask : public GeneratedTask {
 public:
  GeneratorTask(std::string name, std::string description, std::vector<std::string> templates)
      : GeneratedTask(std::move(name), std::move(description)), templates_(std::move(templates)) {}

  absl::StatusOr<Sample> Get(Split split, int64_t index) const final {
    Rng rng;
    ASSIGN_OR_RETURN(Problem problem, DrawInSplit(split, index, rng));
    const int t = static_cast<int>(UniformBelow(rng, templates_.size()));
    return Sample{Render(problem, t), std::move(problem.completion)};
  }

 private:
  // Template `t` with {k} replaced by problem.slots[k].
  std::string Render(const Problem& problem, int t) const {
    std::vector<std::pair<std::string, std::string>> replacements;
    for (size_t k = 0; k < problem.slots.size(); ++k) {
      replacements.emplace_back(absl::StrCat("{", k, "}"), problem.slots[k]);
    }
    return absl::StrReplaceAll(templates_[static_cast<size_t>(t)], replacements);
  }

  const std::vector<std::string> templates_;
};

class AddTask final : public GeneratorTask {
 public:
  AddTask()
      : GeneratorTask("add", "Sum of two integers in [0, 99]",
                      {"What is {0} + {1}?", "{0}+{1}=", "Add {0} and {1}.",
                       "Compute the sum of {0} and {1}:", "{0} plus {1}\n", "Calculate {0} + {1}\n",
                       "What's {0} plus {1}?"}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    const int a = UniformInt(rng, 0, 99);
    const int b = UniformInt(rng, 0, 99);
    return {absl::StrCat(a, "+", b), absl::StrCat(a + b), {absl::StrCat(a), absl::StrCat(b)}};
  }
};

// The difference of two numbers in [0, 99], the larger first, so the answer
// is never negative. Its prompts are worded like add's ("What is 85 - 47?"
// beside "What is 47 + 85?"), so the router must tell the two apart by a
// sign or a word.
class SubtractTask final : public GeneratorTask {
 public:
  SubtractTask()
      : GeneratorTask("subtract", "Difference of two integers in [0, 99], the larger first",
                      {"What is {0} - {1}?", "{0}-{1}=", "Subtract {1} from {0}.",
                       "Compute the difference {0} minus {1}:", "{0} minus {1}\n",
                       "Calculate {0} - {1}\n", "What's {0} take away {1}?"}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    int a = UniformInt(rng, 0, 99);
    int b = UniformInt(rng, 0, 99);
    if (a < b) std::swap(a, b);
    return {absl::StrCat(a, "-", b), absl::StrCat(a - b), {absl::StrCat(a), absl::StrCat(b)}};
  }
};

class ReverseTask final : public GeneratorTask {
 public:
  ReverseTask()
      : GeneratorTask("reverse", "Reverse a random lowercase word of 3-6 letters",
                      {"Reverse: {0}", "Spell '{0}' backwards.", "Reverse the letters of {0}\n",
                       "What is {0} written backwards?",
                       "Write \"{0}\" back to front:", "{0} reversed is"}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    std::string word = RandomWord(rng, 3, 6);
    return {word, Reversed(word), {word}};
  }
};

class SortTask final : public GeneratorTask {
 public:
  SortTask()
      : GeneratorTask("sort", "Sort 3-5 digits ascending, space separated",
                      {"Sort: {0}", "Put in order: {0}", "Sort these digits ascending: {0}\n",
                       "Arrange from smallest to largest: {0}",
                       "{0} -> sorted:", "Order low to high: {0}?"}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    const int n = UniformInt(rng, 3, 5);
    std::string digits;
    for (int k = 0; k < n; ++k) digits.push_back(static_cast<char>('0' + UniformInt(rng, 0, 9)));
    std::string sorted = digits;
    std::sort(sorted.begin(), sorted.end());
    return {digits, SpaceSeparated(sorted), {SpaceSeparated(digits)}};
  }

 private:
  static std::string SpaceSeparated(const std::string& digits) {
    std::string out;
    for (char c : digits) {
      if (!out.empty()) out.push_back(' ');
      out.push_back(c);
    }
    return out;
  }
};

class BracketsTask final : public GeneratorTask {
 public:
  BracketsTask()
      : GeneratorTask(
            "brackets", "Close an unclosed run of 1-5 brackets from ([{<",
            {"Close the brackets: {0}", "Balance this: {0}", "Complete the sequence {0}\n",
             "{0} needs closing:", "What closes {0}?", "Finish the brackets {0}"}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    std::string open = RandomOpenBrackets(rng);
    return {open, ClosingBrackets(open), {open}};
  }
};

// Hex to binary, four bits per hex digit (leading zeros kept, groups space
// separated): a digit-wise mapping like the cipher, rather than decimal
// conversion, which a 4-layer model cannot compute in one forward pass.
class BinaryTask final : public GeneratorTask {
 public:
  BinaryTask()
      : GeneratorTask(
            "binary",
            "Write a 1-3 digit hex number in binary, 4 bits per hex digit, space separated",
            {"Convert 0x{0} to binary.", "0x{0} in base 2?", "What is hex {0} in binary?\n",
             "bin(0x{0}) =", "Write 0x{0} as bits:", "Hex {0} to binary"}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    static constexpr char kHex[] = "0123456789abcdef";
    const int digits = UniformInt(rng, 1, 3);
    std::string hex;
    for (int i = 0; i < digits; ++i) hex.push_back(kHex[UniformInt(rng, 0, 15)]);
    return {hex, HexToBinaryGroups(hex), {hex}};
  }
};

class CaesarTask final : public GeneratorTask {
 public:
  CaesarTask()
      : GeneratorTask("caesar", "Caesar-shift a 3-6 letter lowercase word by +3",
                      {"Encrypt with Caesar +3: {0}", "ROT3 this: {0}", "Caesar shift by 3: {0}\n",
                       "Shift each letter of {0} by three.", "Apply Caesar cipher (shift 3) to {0}",
                       "{0} in Caesar +3 is"}) {}

 protected:
  Problem Draw(Rng& rng) const override {
    std::string word = RandomWord(rng, 3, 6);
    return {word, CaesarShifted(word, 3), {word}};
  }
};

}  // namespace

std::vector<std::unique_ptr<Task>> MakeGeneratorTasks() {
  std::vector<std::unique_ptr<Task>> tasks;
  tasks.push_back(std::make_unique<AddTask>());
  tasks.push_back(std::make_unique<SubtractTask>());
  tasks.push_back(std::make_unique<ReverseTask>());
  tasks.push_back(std::make_unique<SortTask>());
  tasks.push_back(std::make_unique<BracketsTask>());
  tasks.push_back(std::make_unique<BinaryTask>());
  tasks.push_back(std::make_unique<CaesarTask>());
  return tasks;
}

}  // namespace premoe::testbed::internal
