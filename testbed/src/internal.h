// Pieces of the task library shared between its source files; not part of the
// public API. Tests may include it to look inside the generated tasks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "premoe/testbed/tasks.h"

namespace premoe::testbed::internal {

// The split that a hash (of an instance's canonical form, or of a text
// window's name) selects: hash % 100 < 10 eval, < 20 calibration, else train.
Split SplitOfHash(std::uint64_t hash);

// ---------------------------------------------------------------------------
// Randomness. std::mt19937_64's output is fixed by the standard; the mappings
// below are premoe's own, because std::uniform_int_distribution's differ
// between standard libraries and samples must not.

using Rng = std::mt19937_64;

// Uniform in [0, n), n >= 1.
std::uint64_t UniformBelow(Rng& rng, std::uint64_t n);
// Uniform in [lo, hi], lo <= hi.
int UniformInt(Rng& rng, int lo, int hi);
// A word of UniformInt(min_letters, max_letters) letters, each uniform in a-z.
std::string RandomWord(Rng& rng, int min_letters, int max_letters);

// ---------------------------------------------------------------------------
// Domain logic, written once for both suites.

// "abc" -> "cba".
std::string Reversed(absl::string_view text);
// Each lowercase letter moved `shift` (0..25) places on, z wrapping to a.
std::string CaesarShifted(absl::string_view word, int shift);
// 1-5 brackets, each uniform in ([{<.
std::string RandomOpenBrackets(Rng& rng);
// The closing run of an opening run of ([{< brackets: "([{" -> "}])".
std::string ClosingBrackets(absl::string_view open);
// Lowercase hex digits -> 4 bits per digit, groups space separated:
// "3f" -> "0011 1111".
std::string HexToBinaryGroups(absl::string_view hex);

// ---------------------------------------------------------------------------
// Generated exact-match tasks (both suites).

// One drawn problem, before it is worded.
struct Problem {
  // The instance, independent of wording: what decides its split.
  std::string canonical;
  // The exact expected answer.
  std::string completion;
  // The instance's parts that prompts show, in the task's slot order.
  std::vector<std::string> slots;
};

// A task whose samples are drawn problem instances, bucketed into splits by
// the hash of their canonical form (tasks.h).
class GeneratedTask : public Task {
 public:
  GeneratedTask(std::string name, std::string description);

  const std::string& name() const final { return name_; }
  TaskKind kind() const final { return TaskKind::kExactMatch; }
  const std::string& description() const final { return description_; }
  // INT64_MAX for train, kGeneratedSplitSize otherwise.
  int64_t size(Split split) const final;

 protected:
  // OUT_OF_RANGE for an index outside [0, size(split)). Otherwise seeds `rng`
  // from Hash64("<name>:<split>:<index>") and returns the first Draw() whose
  // Hash64("<name>:<canonical>") selects `split`, leaving `rng` just after
  // that draw for the wording.
  absl::StatusOr<Problem> DrawInSplit(Split split, int64_t index, Rng& rng) const;

  virtual Problem Draw(Rng& rng) const = 0;

 private:
  const std::string name_;
  const std::string description_;
};

// The seven exact-match generator tasks of suite v1, in registry order.
std::vector<std::unique_ptr<Task>> MakeGeneratorTasks();
// The two text tasks, in registry order.
std::vector<std::unique_ptr<Task>> MakeTextTasks();

// ---------------------------------------------------------------------------
// Suite v2's wording grammar (grammar_tasks.cc).

// Phrases (a task's core templates, or the shared prefixes or suffixes) and
// which of them are held out for eval.
struct Phrases {
  std::vector<std::string> text;
  // Parallel to `text`.
  std::vector<bool> eval_only;
};

// Marks the max(min_eval_only, round(n / 5)) phrases with the smallest
// Hash64("<scope>:<text>") eval-only (n = text.size() > min_eval_only).
Phrases HoldOutForEval(absl::string_view scope, std::vector<std::string> text,
                       size_t min_eval_only);

// The filler phrases every v2 task may put before ("Hey, ") or after
// (" Thanks!") its core template. Held out with scopes "prefix" and "suffix",
// at least 3 of each.
const Phrases& GrammarPrefixes();
const Phrases& GrammarSuffixes();

// A v2 sample with the choices behind it.
struct WordedSample {
  Sample sample;
  // The instance (its split's key).
  std::string canonical;
  // Slot values as the prompt shows them (after the task's number formats),
  // in slot_names() order.
  std::vector<std::string> slots;
  // Index into templates(); into GrammarPrefixes() and GrammarSuffixes(), or
  // -1 for none.
  int template_id = -1;
  int prefix_id = -1;
  int suffix_id = -1;
};

// A v2 exact-match task. Core templates name their slots "{a}", "{word}", ...
// and have no other braces; templates are held out with scope
// "<task>:template", at least 6 per task.
class GrammarTask : public GeneratedTask {
 public:
  using GeneratedTask::GeneratedTask;

  virtual const Phrases& templates() const = 0;
  virtual const std::vector<std::string>& slot_names() const = 0;
  // What Get() returns, with the choices behind it. Get(s, i) is
  // GetWorded(s, i)->sample.
  virtual absl::StatusOr<WordedSample> GetWorded(Split split, int64_t index) const = 0;
};

// The twelve exact-match tasks of suite v2, in registry order.
std::vector<std::unique_ptr<Task>> MakeGrammarTasks();

// The corpora embedded at build time (testbed/cmake/EmbedFile.cmake writes
// these definitions from testbed/data/*.txt). Each array holds `size` bytes
// followed by one NUL that is not part of the corpus.
extern const unsigned char kLicensesCorpus[];
extern const std::size_t kLicensesCorpusSize;
extern const unsigned char kCHeadersCorpus[];
extern const std::size_t kCHeadersCorpusSize;

}  // namespace premoe::testbed::internal
