// The testbed's tasks: what the small task-specialised MoE language model is
// trained on, and what expert pruning is measured with. They come in two
// suites. Names are unique within a suite, and both suites share their text
// tasks (the same Task objects).
//
// Suite "v1" (the default; the committed model was trained on it; AllTasks()),
// nine tasks in registry order:
//   exact match (generated):  add, subtract, reverse, sort, brackets, binary, caesar
//   text (committed corpora): c_headers, licenses
// An exact-match sample is a prompt a user might send ("What is 47 + 85?")
// and the one exact answer ("132"); each task words its prompts in several
// ways, so telling tasks apart from a prompt is a real problem. A text sample
// is a 96-byte window of a corpus (testbed/data/, embedded in the library).
//
// Suite "v2", fourteen tasks in registry order: twelve generated exact-match
// tasks in four domains, then v1's two text tasks. A v2 task's description
// starts with its domain ("arithmetic: ", "strings: ", "code: ",
// "transforms: ").
//   arithmetic: add (a + b, a, b in [0, 99]), subtract (a - b, the larger
//               first), multiply (a * b, a in [0, 99], b in [2, 9], either
//               order in the prompt): decimal answers
//   strings:    reverse, sort (the letters alphabetically), caesar (+3): a
//               random 3-6 letter lowercase word
//   code:       expression ("3*(4+2)" -> "18": 2-3 single digits, + - *, at
//               most one pair of parentheses, value >= 0), brackets ("([{" ->
//               "}])"), json_field (the value of one key of a 2-4 key JSON
//               object, unquoted)
//   transforms: binary ("3f" -> "0011 1111"), units ("5 km in metres" ->
//               "5000": a power-of-ten metric conversion to the smaller
//               unit), dates (an ISO date of 1950-2049 -> "5 March 2024")
// Each v2 task words its prompts from a grammar: 30 or more hand-written core
// templates with named slots; an optional prefix ("Hey, ") and suffix
// (" Thanks!") from lists shared by all tasks; the template's own text cased
// as written, with its first letter lowercased, or all lowercase; a trailing
// '?' or '.' kept, dropped or varied; and task-defined formats of slot values
// (hex "0x3F" / "3fh", unit names "km" / "kilometres", dates "2024/03/05" /
// "20240305", expressions with or without spaces). Slot values themselves are
// never recased, and the answer never depends on the wording. Prompts are at
// most 140 bytes (fillers are dropped, suffix first, to stay within that).
//
// Splits are disjoint by construction:
//   - Generator tasks draw a problem instance (e.g. the operands 47, 85) and
//     bucket it by the XXH3 hash of its canonical form ("47+85", with the
//     task's name): hash % 100 < 10 is eval, < 20 calibration, else train.
//     Instances are redrawn until the bucket is the requested split, so an
//     instance belongs to exactly one split however it is worded. Canonical
//     forms in v1: add "47+85" (operands in prompt order), subtract "85-47"
//     (the larger first), reverse and caesar the word, sort the digits in
//     prompt order ("5391"), brackets the opening run ("([{"), binary the
//     hex digits ("3f"). v2 keys commutative pairs so that both orders are
//     one instance ("47+85" for 85 + 47, "85*3" for 3 * 85), and uses the
//     expression without spaces, the word, the opening run, the lowercase
//     hex digits, "<n><from>-><to>" ("5km->m"), the ISO date, and the JSON
//     object's text with the key asked for ('{"pet": "cat", "age": 7}["age"]').
//   - v2 also splits by wording: for each task the max(6, round(n / 5)) of
//     its n core templates with the smallest Hash64("<task>:template:<text>")
//     are eval-only, and so are the max(3, round(n / 5)) of the n prefixes
//     and of the n suffixes with the smallest Hash64("prefix:<text>") /
//     Hash64("suffix:<text>"). Eval samples use only eval-only templates and
//     fillers; train and calibration samples use only the others. Eval
//     therefore measures how a model does on wording it never saw.
//   - Text tasks cut the corpus into consecutive non-overlapping windows of
//     kTextWindowBytes (the last partial window is dropped); window j goes
//     to the split given by Hash64("<task>:<j>") % 100 the same way.
//
// Every sample is a pure function of (task, split, index): the same bytes on
// every call, machine and run (std::mt19937_64, whose output the standard
// fixes, with premoe's own uniform-integer mapping; XXH3 for every hash).
// Prompts, completions and corpora are ASCII.
//
// Thread safety: every Task is immutable; all functions here may be called
// from any number of threads at once. Tasks live for the whole process.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace premoe::testbed {

enum class Split { kTrain, kCalibration, kEval };

// "train", "calibration", "eval".
absl::string_view SplitName(Split s);
// The inverse of SplitName. Anything else is INVALID_ARGUMENT naming the
// valid splits.
absl::StatusOr<Split> ParseSplit(absl::string_view name);

enum class TaskKind { kExactMatch, kText };

// "exact_match", "text".
absl::string_view TaskKindName(TaskKind kind);

// One sample. Exact-match tasks: `prompt` is what a user sends, `completion`
// the exact expected answer (no trailing newline; the model is trained to
// emit completion then EOS). Text tasks: `prompt` holds the whole text window
// and `completion` is empty.
struct Sample {
  std::string prompt;
  std::string completion;

  bool operator==(const Sample&) const = default;
};

// Samples per split of a generator task, for calibration and eval.
inline constexpr int64_t kGeneratedSplitSize = 1000;
// Bytes per window of a text task.
inline constexpr int64_t kTextWindowBytes = 96;

class Task {  // immutable, thread-safe
 public:
  virtual ~Task() = default;
  // Short identifier, e.g. "add"; what FindTask() and the CLI take.
  virtual const std::string& name() const = 0;
  virtual TaskKind kind() const = 0;
  // One line, for `premoe tasks list`.
  virtual const std::string& description() const = 0;
  // Number of samples in `split`. Generator tasks: train is effectively
  // unbounded (INT64_MAX); calibration and eval have kGeneratedSplitSize
  // each. Text tasks: the number of windows assigned to the split.
  virtual int64_t size(Split split) const = 0;
  // The index-th sample of `split`, 0 <= index < size(split). A pure
  // function of (task, split, index). OUT_OF_RANGE outside [0, size).
  // Text tasks return a split's windows in corpus order.
  virtual absl::StatusOr<Sample> Get(Split split, int64_t index) const = 0;
};

// The suite every function here uses unless told otherwise.
inline constexpr absl::string_view kDefaultSuite = "v1";

// Every task of suite v1, in registry order (the order in the file comment
// above). The same as *SuiteTasks("v1").
const std::vector<const Task*>& AllTasks();

// Every task of `suite` ("v1" or "v2"), in registry order. INVALID_ARGUMENT
// naming the valid suites otherwise. The vector lives for the whole process.
absl::StatusOr<const std::vector<const Task*>*> SuiteTasks(absl::string_view suite);

// The task of `suite` called `name`. NOT_FOUND naming the suite's tasks
// otherwise; INVALID_ARGUMENT for an unknown suite.
absl::StatusOr<const Task*> FindTask(absl::string_view name,
                                     absl::string_view suite = kDefaultSuite);

// "all" (every task of `suite`, registry order) or a comma-separated list of
// task names (surrounding spaces ignored) -> the tasks, in the order given.
// Unknown names are NOT_FOUND; an empty list or entry, a name given twice or
// an unknown suite is INVALID_ARGUMENT.
absl::StatusOr<std::vector<const Task*>> ParseTaskList(absl::string_view spec,
                                                       absl::string_view suite = kDefaultSuite);

// The whole embedded corpus behind a text task (testbed/data/<name>.txt as it
// was at build time). NOT_FOUND for names of no suite, INVALID_ARGUMENT for
// exact-match tasks. The view points at static storage.
absl::StatusOr<absl::string_view> TextCorpus(absl::string_view task_name);

// One JSONL record (with its trailing '\n') for `sample` of `task`: the
// format `premoe tasks export` writes and the profiler reads.
//   exact match: {"prompt": ..., "completion": ...}
//   text:        {"text": ...}
std::string SampleToJsonLine(const Task& task, const Sample& sample);

// {"name", "kind", "description", "sizes": {"train", "calibration", "eval"}}
// for `premoe tasks list --json`. Unbounded sizes are INT64_MAX.
nlohmann::ordered_json TaskToJson(const Task& task);

// The byte-level tokenizer, as Hugging Face tokenizer.json text: ids 0..255
// are the 256 bytes (GPT-2 ByteLevel byte->unicode alphabet, id == byte
// value), kBosId = "<|bos|>" and kEosId = "<|eos|>" (special added tokens).
// Model: BPE with that vocab and no merges; pre_tokenizer ByteLevel
// {add_prefix_space: false, trim_offsets: false, use_regex: false}; decoder
// ByteLevel; post_processor TemplateProcessing that prepends <|bos|> to single
// sequences ("<|bos|> $A") and to pairs ("<|bos|> $A $B"). Loads in both
// premoe::tokenizer::Tokenizer and Hugging Face `tokenizers`, which give the same
// ids: a text's UTF-8 bytes, after kBosId when special tokens are added.
// (The literal text "<|bos|>" or "<|eos|>" in an input is the special token.)
constexpr int64_t kBosId = 256, kEosId = 257, kVocabSize = 258;
std::string ByteTokenizerJson();
// Its tokenizer_config.json: the special tokens and a chat template that
// renders one user message as "<|bos|>" + the message (the model knows no
// chat format; other conversations are refused by the template).
std::string ByteTokenizerConfigJson();
// Its generation_config.json: greedy decoding (do_sample false).
std::string GenerationConfigJson();

}  // namespace premoe::testbed
