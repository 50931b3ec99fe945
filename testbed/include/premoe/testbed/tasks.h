// The testbed's tasks: what the small task-specialised MoE language model is
// trained on, and what expert pruning is measured with.
//
// Nine tasks, in registry order (AllTasks()):
//   exact match (generated):  add, subtract, reverse, sort, brackets, binary, caesar
//   text (committed corpora): c_headers, licenses
// An exact-match sample is a prompt a user might send ("What is 47 + 85?")
// and the one exact answer ("132"); each task words its prompts in several
// ways, so telling tasks apart from a prompt is a real problem. A text sample
// is a 96-byte window of a corpus (testbed/data/, embedded in the library).
//
// Splits are disjoint by construction:
//   - Generator tasks draw a problem instance (e.g. the operands 47, 85) and
//     bucket it by the XXH3 hash of its canonical form ("47+85", with the
//     task's name): hash % 100 < 10 is eval, < 20 calibration, else train.
//     Instances are redrawn until the bucket is the requested split, so an
//     instance belongs to exactly one split however it is worded. Canonical
//     forms: add "47+85" (operands in prompt order), subtract "85-47"
//     (the larger first), reverse and caesar the word, sort the digits in
//     prompt order ("5391"), brackets the opening run ("([{"), binary the
//     hex digits ("3f").
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

// Every task, in registry order (the order in the file comment above).
const std::vector<const Task*>& AllTasks();

// The task called `name`. NOT_FOUND naming the valid tasks otherwise.
absl::StatusOr<const Task*> FindTask(absl::string_view name);

// "all" (every task, registry order) or a comma-separated list of task names
// (surrounding spaces ignored) -> the tasks, in the order given. Unknown names
// are NOT_FOUND; an empty list or entry, or a name given twice, is
// INVALID_ARGUMENT.
absl::StatusOr<std::vector<const Task*>> ParseTaskList(absl::string_view spec);

// The whole embedded corpus behind a text task (testbed/data/<name>.txt as it
// was at build time). NOT_FOUND for unknown tasks, INVALID_ARGUMENT for
// exact-match ones. The view points at static storage.
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
