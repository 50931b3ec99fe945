#include "premoe/testbed/queries.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "premoe/common/status.h"

namespace premoe::testbed {

absl::Status QueryOptions::Validate() const {
  if (tasks.empty()) return absl::InvalidArgumentError("QueryOptions: no tasks");
  for (const Task* t : tasks) {
    if (t == nullptr) return absl::InvalidArgumentError("QueryOptions: a null task");
  }
  if (samples < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("QueryOptions: samples must be >= 1, got ", samples));
  }
  return absl::OkStatus();
}

absl::StatusOr<QueryTally> AskTestbedQueries(
    const QueryOptions& options,
    const std::function<absl::StatusOr<std::string>(const Task& task, const Sample& sample)>&
        answer,
    const std::function<void(const AnsweredQuery&)>& on_answer) {
  RETURN_IF_ERROR(options.Validate());
  QueryTally tally;
  for (const Task* task : options.tasks) {
    if (task->kind() != TaskKind::kExactMatch) continue;
    const int64_t n = std::min(options.samples, task->size(options.split));
    for (int64_t i = 0; i < n; ++i) {
      AnsweredQuery q;
      q.task = task;
      q.index = i;
      ASSIGN_OR_RETURN(q.sample, task->Get(options.split, i));
      ASSIGN_OR_RETURN(q.answer, answer(*task, q.sample));
      q.correct = q.answer == q.sample.completion;
      ++tally.total;
      tally.correct += q.correct ? 1 : 0;
      if (on_answer) on_answer(q);
    }
  }
  return tally;
}

}  // namespace premoe::testbed
