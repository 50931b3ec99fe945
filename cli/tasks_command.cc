// premoe tasks: the testbed's tasks (premoe/testbed/tasks.h). `list` shows
// them, `show` prints a few samples readably, `export` writes a split as the
// JSONL the profiler reads.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "premoe/common/file.h"
#include "premoe/testbed/tasks.h"

namespace premoe::cli {
namespace {

struct TasksArgs {
  std::string suite = std::string(testbed::kDefaultSuite);
  bool json = false;
  std::string task;
  std::string split = "eval";
  std::optional<int64_t> n;
  std::string out;
};

bool WriteStdout(absl::string_view text) {
  return std::fwrite(text.data(), 1, text.size(), stdout) == text.size();
}

int Fail(absl::string_view command, const absl::Status& status) {
  std::fprintf(stderr, "premoe tasks %.*s: %s\n", static_cast<int>(command.size()), command.data(),
               status.ToString().c_str());
  return 1;
}

// `text` as a JSON string: quoted, with newlines and quotes escaped.
std::string Quoted(const std::string& text) { return nlohmann::json(text).dump(); }

// CLI11's NonNegativeNumber prints its range as a 300-digit double.
CLI::Validator CountValidator() {
  return CLI::Validator(
      [](const std::string& value) {
        int64_t n = 0;
        return absl::SimpleAtoi(value, &n) && n >= 0 ? std::string()
                                                     : "want a count >= 0, got " + value;
      },
      "COUNT");
}

std::string SizeText(int64_t size) {
  return size == INT64_MAX ? std::string("unbounded") : absl::StrCat(size);
}

int RunList(const TasksArgs& args) {
  absl::StatusOr<const std::vector<const testbed::Task*>*> suite = testbed::SuiteTasks(args.suite);
  if (!suite.ok()) return Fail("list", suite.status());
  std::string out;
  if (args.json) {
    nlohmann::ordered_json tasks = nlohmann::ordered_json::array();
    for (const testbed::Task* task : **suite) tasks.push_back(testbed::TaskToJson(*task));
    out = tasks.dump(2) + "\n";
  } else {
    out = absl::StrFormat("%-10s %-12s %10s %12s %6s  %s\n", "name", "kind", "train", "calibration",
                          "eval", "description");
    for (const testbed::Task* task : **suite) {
      absl::StrAppendFormat(&out, "%-10s %-12s %10s %12d %6d  %s\n", task->name(),
                            testbed::TaskKindName(task->kind()),
                            SizeText(task->size(testbed::Split::kTrain)),
                            task->size(testbed::Split::kCalibration),
                            task->size(testbed::Split::kEval), task->description());
    }
  }
  if (!WriteStdout(out) || std::fflush(stdout) != 0) {
    std::fprintf(stderr, "premoe tasks list: failed to write to stdout\n");
    return 1;
  }
  return 0;
}

absl::Status TooMany(const TasksArgs& args, int64_t n, int64_t size) {
  return absl::InvalidArgumentError(absl::StrCat("--n ", n, " but task ", args.task, " has ", size,
                                                 " samples in split ", args.split));
}

// Resolves the task and split and checks that the split holds `n` samples.
struct Selection {
  const testbed::Task* task;
  testbed::Split split;
};
absl::StatusOr<Selection> Select(const TasksArgs& args, int64_t n) {
  absl::StatusOr<const testbed::Task*> task = testbed::FindTask(args.task, args.suite);
  if (!task.ok()) return task.status();
  absl::StatusOr<testbed::Split> split = testbed::ParseSplit(args.split);
  if (!split.ok()) return split.status();
  const int64_t size = (*task)->size(*split);
  if (n > size) return TooMany(args, n, size);
  return Selection{*task, *split};
}

int RunShow(const TasksArgs& args) {
  const int64_t n = args.n.value_or(5);
  absl::StatusOr<Selection> selected = Select(args, n);
  if (!selected.ok()) return Fail("show", selected.status());
  const testbed::Task& task = *selected->task;
  std::string out =
      absl::StrCat(task.name(), " (", testbed::TaskKindName(task.kind()), "), split ", args.split,
                   ": the first ", n, " of ", SizeText(task.size(selected->split)), " samples\n");
  for (int64_t i = 0; i < n; ++i) {
    absl::StatusOr<testbed::Sample> sample = task.Get(selected->split, i);
    if (!sample.ok()) return Fail("show", sample.status());
    if (task.kind() == testbed::TaskKind::kText) {
      absl::StrAppend(&out, "[", i, "] text: ", Quoted(sample->prompt), "\n");
    } else {
      absl::StrAppend(&out, "[", i, "] prompt:     ", Quoted(sample->prompt), "\n",
                      std::string(absl::StrCat("[", i, "] ").size(), ' '),
                      "completion: ", Quoted(sample->completion), "\n");
    }
  }
  if (!WriteStdout(out) || std::fflush(stdout) != 0) {
    std::fprintf(stderr, "premoe tasks show: failed to write to stdout\n");
    return 1;
  }
  return 0;
}

int RunExport(const TasksArgs& args) {
  absl::StatusOr<const testbed::Task*> task = testbed::FindTask(args.task, args.suite);
  if (!task.ok()) return Fail("export", task.status());
  absl::StatusOr<testbed::Split> split = testbed::ParseSplit(args.split);
  if (!split.ok()) return Fail("export", split.status());
  const int64_t size = (*task)->size(*split);
  if (size == INT64_MAX && !args.n.has_value()) {
    std::fprintf(stderr,
                 "premoe tasks export: split %s of task %s is unbounded; say how many samples "
                 "with --n\n",
                 args.split.c_str(), args.task.c_str());
    return 2;
  }
  const int64_t n = args.n.value_or(size);
  if (n > size) return Fail("export", TooMany(args, n, size));

  // To a file: written beside it and renamed over it at the end, so readers
  // never see half an export.
  std::unique_ptr<common::AtomicFileWriter> file;
  if (!args.out.empty()) {
    absl::StatusOr<std::unique_ptr<common::AtomicFileWriter>> opened =
        common::AtomicFileWriter::Open(args.out);
    if (!opened.ok()) return Fail("export", opened.status());
    file = std::move(*opened);
  }
  std::string buffer;
  const auto flush = [&]() -> absl::Status {
    if (file != nullptr) {
      absl::Status status = file->Append(buffer);
      buffer.clear();
      return status;
    }
    const bool ok = WriteStdout(buffer);
    buffer.clear();
    return ok ? absl::OkStatus() : absl::UnavailableError("failed to write to stdout");
  };
  for (int64_t i = 0; i < n; ++i) {
    absl::StatusOr<testbed::Sample> sample = (*task)->Get(*split, i);
    if (!sample.ok()) return Fail("export", sample.status());
    buffer += testbed::SampleToJsonLine(**task, *sample);
    if (buffer.size() >= (1 << 20)) {
      if (absl::Status status = flush(); !status.ok()) return Fail("export", status);
    }
  }
  if (absl::Status status = flush(); !status.ok()) return Fail("export", status);
  if (file != nullptr) {
    if (absl::Status status = file->Commit(); !status.ok()) return Fail("export", status);
  } else if (std::fflush(stdout) != 0) {
    return Fail("export", absl::UnavailableError("failed to write to stdout"));
  }
  return 0;
}

}  // namespace

void RegisterTasks(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<TasksArgs>();
  CLI::App* cmd = app.add_subcommand(
      "tasks", "The testbed's tasks: list them, show samples, export a split as JSONL");
  cmd->require_subcommand(1);

  CLI::App* list = cmd->add_subcommand(
      "list",
      "Name, kind, split sizes and description of every task of a suite, in registry order");
  // Suite names are checked by the library, like task and split names.
  const auto add_suite = [args](CLI::App* sub) {
    sub->add_option("--suite", args->suite, "Task suite: v1 or v2")->capture_default_str();
  };
  add_suite(list);
  list->add_flag("--json", args->json,
                 "Print a JSON array of {name, kind, description, sizes} (unbounded = INT64_MAX)");
  list->callback([args, exit_code] { *exit_code = RunList(*args); });

  // Task and split names are checked by the library, not by CLI11, so a bad
  // one is reported with the valid names and exit code 1.
  CLI::App* show = cmd->add_subcommand("show", "Print samples of a task's split readably");
  show->add_option("name", args->task, "Task name (premoe tasks list)")->required();
  add_suite(show);
  show->add_option("--split", args->split, "train, calibration or eval")->capture_default_str();
  show->add_option("--n", args->n, "Number of samples, from index 0. Default: 5")
      ->check(CountValidator());
  show->callback([args, exit_code] { *exit_code = RunShow(*args); });

  CLI::App* exp = cmd->add_subcommand(
      "export",
      "Write a task's split as JSONL: {\"prompt\", \"completion\"} per exact-match sample, "
      "{\"text\"} per text window");
  exp->add_option("name", args->task, "Task name (premoe tasks list)")->required();
  add_suite(exp);
  exp->add_option("--split", args->split, "train, calibration or eval")->required();
  exp->add_option("--n", args->n,
                  "Number of samples, from index 0. Default: the whole split; required where it "
                  "is unbounded (a generator task's train split)")
      ->check(CountValidator());
  exp->add_option("--out", args->out, "Output file. Default: stdout");
  exp->callback([args, exit_code] { *exit_code = RunExport(*args); });
}

}  // namespace premoe::cli
