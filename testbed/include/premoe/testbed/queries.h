// Testbed prompts asked of any answering service (a server, a worker, a
// client library), scored by exact match: what `premoe query --testbed`
// prints. Unlike Evaluate (eval.h), which drives an engine itself, this takes
// the answers from a callback, so it needs no libtorch and serves any
// front end.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "premoe/testbed/tasks.h"

namespace premoe::testbed {

struct QueryOptions {
  // The tasks whose prompts are asked, in this order; text tasks among them
  // are skipped (they have no answer to match). Required: non-empty, no
  // null entries.
  std::vector<const Task*> tasks;
  // Default: eval (prompts the calibration never saw).
  Split split = Split::kEval;
  // The first `samples` of each task's split (fewer when the split is
  // smaller). Default: 2; must be >= 1.
  int64_t samples = 2;

  // INVALID_ARGUMENT naming the bad field.
  absl::Status Validate() const;
};

// One prompt and what came back.
struct AnsweredQuery {
  const Task* task = nullptr;
  // The sample's index in its split, and the sample.
  int64_t index = 0;
  Sample sample;
  std::string answer;
  // answer == sample.completion, byte for byte.
  bool correct = false;
};

struct QueryTally {
  int64_t total = 0;
  int64_t correct = 0;
};

// Asks `answer` each prompt in order (task by task, sample by sample) and
// calls `on_answer` with the outcome, on the calling thread, before asking
// the next. Stops at the first error of `answer` and returns it; a sample
// that cannot be read is returned the same way. Errors: INVALID_ARGUMENT for
// bad options.
absl::StatusOr<QueryTally> AskTestbedQueries(
    const QueryOptions& options,
    const std::function<absl::StatusOr<std::string>(const Task& task, const Sample& sample)>&
        answer,
    const std::function<void(const AnsweredQuery&)>& on_answer);

}  // namespace premoe::testbed
