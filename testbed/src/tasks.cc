#include "premoe/testbed/tasks.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "internal.h"
#include "premoe/common/status.h"

namespace premoe::testbed {

absl::string_view SplitName(Split s) {
  switch (s) {
    case Split::kTrain:
      return "train";
    case Split::kCalibration:
      return "calibration";
    case Split::kEval:
      return "eval";
  }
  return "unknown";
}

absl::StatusOr<Split> ParseSplit(absl::string_view name) {
  for (Split s : {Split::kTrain, Split::kCalibration, Split::kEval}) {
    if (name == SplitName(s)) return s;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown split \"", name, "\"; valid splits: train, calibration, eval"));
}

absl::string_view TaskKindName(TaskKind kind) {
  switch (kind) {
    case TaskKind::kExactMatch:
      return "exact_match";
    case TaskKind::kText:
      return "text";
  }
  return "unknown";
}

namespace internal {

Split SplitOfHash(std::uint64_t hash) {
  const std::uint64_t bucket = hash % 100;
  if (bucket < 10) return Split::kEval;
  if (bucket < 20) return Split::kCalibration;
  return Split::kTrain;
}

}  // namespace internal

namespace {

// A suite's tasks, in registry order.
struct Suite {
  absl::string_view name;
  std::vector<const Task*> tasks;
};

// Built once, never destroyed: tasks are used until the process ends. The
// text tasks are shared: the same objects in both suites.
const std::vector<Suite>& Suites() {
  static const std::vector<Suite>* const suites = [] {
    const auto release = [](std::vector<std::unique_ptr<Task>> made) {
      std::vector<const Task*> out;
      for (std::unique_ptr<Task>& task : made) out.push_back(task.release());
      return out;
    };
    const std::vector<const Task*> text = release(internal::MakeTextTasks());
    std::vector<const Task*> v1 = release(internal::MakeGeneratorTasks());
    v1.insert(v1.end(), text.begin(), text.end());
    std::vector<const Task*> v2 = release(internal::MakeGrammarTasks());
    v2.insert(v2.end(), text.begin(), text.end());
    return new std::vector<Suite>{{"v1", std::move(v1)}, {"v2", std::move(v2)}};
  }();
  return *suites;
}

std::string ValidTaskNames(const std::vector<const Task*>& tasks) {
  return absl::StrJoin(tasks, ", ",
                       [](std::string* out, const Task* t) { out->append(t->name()); });
}

}  // namespace

const std::vector<const Task*>& AllTasks() { return Suites().front().tasks; }

absl::StatusOr<const std::vector<const Task*>*> SuiteTasks(absl::string_view suite) {
  for (const Suite& s : Suites()) {
    if (s.name == suite) return &s.tasks;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown task suite \"", suite,
      "\"; valid suites: ", absl::StrJoin(Suites(), ", ", [](std::string* out, const Suite& s) {
        absl::StrAppend(out, s.name);
      })));
}

absl::StatusOr<const Task*> FindTask(absl::string_view name, absl::string_view suite) {
  ASSIGN_OR_RETURN(const std::vector<const Task*>* tasks, SuiteTasks(suite));
  for (const Task* task : *tasks) {
    if (task->name() == name) return task;
  }
  // v1's message names no suite, as it did before there were suites.
  return absl::NotFoundError(
      absl::StrCat("unknown task \"", name, "\"", suite == kDefaultSuite ? "" : " in suite ",
                   suite == kDefaultSuite ? "" : suite, "; valid tasks: ", ValidTaskNames(*tasks)));
}

absl::StatusOr<std::vector<const Task*>> ParseTaskList(absl::string_view spec,
                                                       absl::string_view suite) {
  ASSIGN_OR_RETURN(const std::vector<const Task*>* all, SuiteTasks(suite));
  if (absl::StripAsciiWhitespace(spec) == "all") return *all;
  std::vector<const Task*> tasks;
  for (absl::string_view name : absl::StrSplit(spec, ',')) {
    name = absl::StripAsciiWhitespace(name);
    if (name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("task list \"", spec,
                       "\" has an empty entry; want \"all\" or comma-separated names from: ",
                       ValidTaskNames(*all)));
    }
    ASSIGN_OR_RETURN(const Task* task, FindTask(name, suite));
    for (const Task* seen : tasks) {
      if (seen == task) {
        return absl::InvalidArgumentError(
            absl::StrCat("task list \"", spec, "\" names task \"", name, "\" twice"));
      }
    }
    tasks.push_back(task);
  }
  return tasks;
}

std::string SampleToJsonLine(const Task& task, const Sample& sample) {
  nlohmann::ordered_json record;
  if (task.kind() == TaskKind::kText) {
    record["text"] = sample.prompt;
  } else {
    record["prompt"] = sample.prompt;
    record["completion"] = sample.completion;
  }
  // Samples are ASCII (tasks.h), so dump() cannot meet invalid UTF-8.
  return record.dump() + "\n";
}

nlohmann::ordered_json TaskToJson(const Task& task) {
  nlohmann::ordered_json out;
  out["name"] = task.name();
  out["kind"] = std::string(TaskKindName(task.kind()));
  out["description"] = task.description();
  nlohmann::ordered_json sizes;
  for (Split s : {Split::kTrain, Split::kCalibration, Split::kEval}) {
    sizes[std::string(SplitName(s))] = task.size(s);
  }
  out["sizes"] = std::move(sizes);
  return out;
}

}  // namespace premoe::testbed
