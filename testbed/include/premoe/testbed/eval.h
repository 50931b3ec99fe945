// The evaluation harness: scores a model (full, reduced or masked) on the
// testbed tasks. Exact-match tasks are scored by greedy decoding, the way
// MATH500 is scored for the large models; text tasks by next-token accuracy
// and perplexity.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "premoe/model/engine.h"
#include "premoe/testbed/tasks.h"
#include "premoe/tokenizer/tokenizer.h"

namespace premoe::testbed {

struct EvalOptions {
  // Which split's samples are scored. Default: eval.
  Split split = Split::kEval;
  // Samples per task: the first `samples` of the split (fewer when the split
  // is smaller); 0 = the whole split (not allowed for train). Default: 200.
  int64_t samples = 200;
  // Expert mask applied to every request (not owned); null = none. Must fit
  // the engine (KeptExperts::Validate). Default: null.
  const model::KeptExperts* mask = nullptr;
  // Sequences per forward pass / Generate call. Default: 64.
  int64_t batch_size = 64;
  // Called after each batch with (samples done, samples in all). Default: none.
  std::function<void(int64_t, int64_t)> on_progress;
};

struct TaskScore {
  std::string task;
  TaskKind kind = TaskKind::kExactMatch;
  int64_t samples = 0;
  // Exact-match tasks: fraction of samples whose greedy answer (up to EOS)
  // equals the expected completion exactly.
  double exact_match = 0;
  // Text tasks: over every byte of every window (predicted from the bytes
  // before it, the first from <|bos|>): fraction where the argmax is right,
  // and exp(mean negative log-likelihood).
  double token_accuracy = 0;
  double perplexity = 0;
  int64_t tokens = 0;
};

struct EvalReport {
  std::vector<TaskScore> tasks;
  // Means over the exact-match tasks and over the text tasks (0 when none).
  double average_exact_match = 0;
  double average_token_accuracy = 0;
  double average_perplexity = 0;
};

// Scores `engine` on `tasks`. The tokenizer must be the testbed's byte-level
// one (ByteTokenizerJson) or one that encodes text the same way. Errors:
// INVALID_ARGUMENT for bad options or a sample that does not fit the
// engine's context; the engine's errors as they are.
absl::StatusOr<EvalReport> Evaluate(const model::Engine& engine,
                                    const tokenizer::Tokenizer& tokenizer,
                                    const std::vector<const Task*>& tasks,
                                    const EvalOptions& options);

// A stable JSON form: {"split", "tasks": [{"task", "kind", "samples", ...}],
// "average_exact_match", ...}, keys in a fixed order.
std::string EvalReportToJson(const EvalReport& report, Split split);
// A table for people.
std::string FormatEvalReport(const EvalReport& report);

}  // namespace premoe::testbed
