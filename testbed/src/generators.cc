// The seven exact-match generator tasks.
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

namespace premoe::testbed::internal {
namespace {

using Rng = std::mt19937_64;

// Uniform in [0, n), n >= 1. std::uniform_int_distribution is not used: its
// mapping differs between standard libraries, and samples must not. Rejecting
// the lowest 2^64 mod n outputs leaves a multiple of n values, so every
// residue is equally likely.
std::uint64_t UniformBelow(Rng& rng, std::uint64_t n) {
  const std::uint64_t reject_below = (0 - n) % n;  // 2^64 mod n
  std::uint64_t x;
  do {
    x = rng();
  } while (x < reject_below);
  return x % n;
}

// Uniform in [lo, hi].
int UniformInt(Rng& rng, int lo, int hi) {
  return lo + static_cast<int>(UniformBelow(rng, static_cast<std::uint64_t>(hi - lo) + 1));
}

std::string RandomWord(Rng& rng, int min_letters, int max_letters) {
  const int n = UniformInt(rng, min_letters, max_letters);
  std::string word(static_cast<size_t>(n), 'a');
  for (char& c : word) c = static_cast<char>('a' + UniformInt(rng, 0, 25));
  return word;
}

// One drawn problem, before it is worded.
struct Problem {
  // The instance, independent of wording: what decides its split.
  std::string canonical;
  // The exact expected answer.
  std::string completion;
  // What templates substitute for {0}, {1}, ...
  std::vector<std::string> slots;
};

// Guards the redraw loop; the smallest instance space (binary, 4368
// instances) puts ~400 in each held-out split, so this is never reached.
constexpr int kMaxDraws = 100000;

class GeneratorTask : public Task {
 public:
  GeneratorTask(std::string name, std::string description, std::vector<std::string> templates)
      : name_(std::move(name)),
        description_(std::move(description)),
        templates_(std::move(templates)) {}

  const std::string& name() const final { return name_; }
  TaskKind kind() const final { return TaskKind::kExactMatch; }
  const std::string& description() const final { return description_; }

  int64_t size(Split split) const final {
    return split == Split::kTrain ? std::numeric_limits<int64_t>::max() : kGeneratedSplitSize;
  }

  absl::StatusOr<Sample> Get(Split split, int64_t index) const final {
    if (index < 0 || index >= size(split)) {
      return absl::OutOfRangeError(absl::StrCat("task ", name_, ": index ", index,
                                                " is outside split ", SplitName(split), " [0, ",
                                                size(split), ")"));
    }
    Rng rng(common::Hash64(absl::StrCat(name_, ":", SplitName(split), ":", index)));
    for (int draw = 0; draw < kMaxDraws; ++draw) {
      Problem problem = Draw(rng);
      if (SplitOfHash(common::Hash64(absl::StrCat(name_, ":", problem.canonical))) != split) {
        continue;
      }
      const int t = static_cast<int>(UniformBelow(rng, templates_.size()));
      return Sample{Render(problem, t), std::move(problem.completion)};
    }
    return absl::InternalError(absl::StrCat("task ", name_, ": no instance of split ",
                                            SplitName(split), " in ", kMaxDraws, " draws"));
  }

 protected:
  virtual Problem Draw(Rng& rng) const = 0;

  // Template `t` with {k} replaced by problem.slots[k].
  std::string Render(const Problem& problem, int t) const {
    std::vector<std::pair<std::string, std::string>> replacements;
    for (size_t k = 0; k < problem.slots.size(); ++k) {
      replacements.emplace_back(absl::StrCat("{", k, "}"), problem.slots[k]);
    }
    return absl::StrReplaceAll(templates_[static_cast<size_t>(t)], replacements);
  }

 private:
  const std::string name_;
  const std::string description_;
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
    std::string reversed(word.rbegin(), word.rend());
    return {word, std::move(reversed), {word}};
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
    static constexpr char kOpen[] = "([{<";
    static constexpr char kClose[] = ")]}>";
    const int n = UniformInt(rng, 1, 5);
    std::string open, close;
    for (int k = 0; k < n; ++k) {
      const int b = UniformInt(rng, 0, 3);
      open.push_back(kOpen[b]);
      close.insert(close.begin(), kClose[b]);
    }
    return {open, std::move(close), {open}};
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
    std::string hex, bits;
    for (int i = 0; i < digits; ++i) {
      const int d = UniformInt(rng, 0, 15);
      hex.push_back(kHex[d]);
      if (!bits.empty()) bits.push_back(' ');
      for (int b = 3; b >= 0; --b) bits.push_back(static_cast<char>('0' + ((d >> b) & 1)));
    }
    return {hex, std::move(bits), {hex}};
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
    std::string shifted = word;
    for (char& c : shifted) c = static_cast<char>('a' + (c - 'a' + 3) % 26);
    return {word, std::move(shifted), {word}};
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
