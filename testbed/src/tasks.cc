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

const std::vector<const Task*>& AllTasks() {
  // Built once, never destroyed: tasks are used until the process ends.
  static const std::vector<const Task*>* const tasks = [] {
    std::vector<std::unique_ptr<Task>> made = internal::MakeGeneratorTasks();
    for (std::unique_ptr<Task>& task : internal::MakeTextTasks()) made.push_back(std::move(task));
    auto* out = new std::vector<const Task*>;
    for (std::unique_ptr<Task>& task : made) out->push_back(task.release());
    return out;
  }();
  return *tasks;
}

namespace {

std::string ValidTaskNames() {
  return absl::StrJoin(AllTasks(), ", ",
                       [](std::string* out, const Task* t) { out->append(t->name()); });
}

}  // namespace

absl::StatusOr<const Task*> FindTask(absl::string_view name) {
  for (const Task* task : AllTasks()) {
    if (task->name() == name) return task;
  }
  return absl::NotFoundError(
      absl::StrCat("unknown task \"", name, "\"; valid tasks: ", ValidTaskNames()));
}

absl::StatusOr<std::vector<const Task*>> ParseTaskList(absl::string_view spec) {
  if (absl::StripAsciiWhitespace(spec) == "all") return AllTasks();
  std::vector<const Task*> tasks;
  for (absl::string_view name : absl::StrSplit(spec, ',')) {
    name = absl::StripAsciiWhitespace(name);
    if (name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "task list \"", spec,
          "\" has an empty entry; want \"all\" or comma-separated names from: ", ValidTaskNames()));
    }
    absl::StatusOr<const Task*> task = FindTask(name);
    if (!task.ok()) return task.status();
    for (const Task* seen : tasks) {
      if (seen == *task) {
        return absl::InvalidArgumentError(
            absl::StrCat("task list \"", spec, "\" names task \"", name, "\" twice"));
      }
    }
    tasks.push_back(*task);
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
