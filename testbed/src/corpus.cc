// The two text tasks: fixed windows of the corpora embedded at build time.
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "internal.h"
#include "premoe/common/hash.h"

namespace premoe::testbed {
namespace internal {

class TextTask final : public Task {
 public:
  TextTask(std::string name, std::string description, absl::string_view corpus)
      : name_(std::move(name)), description_(std::move(description)), corpus_(corpus) {
    // Assigning every window up front keeps Get() O(1); a corpus of ~150 KB
    // has ~1600 windows.
    const int64_t windows = static_cast<int64_t>(corpus_.size()) / kTextWindowBytes;
    for (int64_t j = 0; j < windows; ++j) {
      const Split split = SplitOfHash(common::Hash64(absl::StrCat(name_, ":", j)));
      windows_[static_cast<size_t>(split)].push_back(j);
    }
  }

  absl::string_view corpus() const { return corpus_; }
  const std::string& name() const override { return name_; }
  TaskKind kind() const override { return TaskKind::kText; }
  const std::string& description() const override { return description_; }

  int64_t size(Split split) const override {
    return static_cast<int64_t>(windows_[static_cast<size_t>(split)].size());
  }

  absl::StatusOr<Sample> Get(Split split, int64_t index) const override {
    if (index < 0 || index >= size(split)) {
      return absl::OutOfRangeError(absl::StrCat("task ", name_, ": index ", index,
                                                " is outside split ", SplitName(split), " [0, ",
                                                size(split), ")"));
    }
    const int64_t window = windows_[static_cast<size_t>(split)][static_cast<size_t>(index)];
    return Sample{std::string(corpus_.substr(static_cast<size_t>(window * kTextWindowBytes),
                                             static_cast<size_t>(kTextWindowBytes))),
                  ""};
  }

 private:
  const std::string name_;
  const std::string description_;
  const absl::string_view corpus_;
  // Window numbers of each split (indexed by Split), ascending.
  std::array<std::vector<int64_t>, 3> windows_;
};

namespace {

absl::string_view Embedded(const unsigned char* data, std::size_t size) {
  return absl::string_view(reinterpret_cast<const char*>(data), size);
}

}  // namespace

std::vector<std::unique_ptr<Task>> MakeTextTasks() {
  std::vector<std::unique_ptr<Task>> tasks;
  tasks.push_back(std::make_unique<TextTask>(
      "c_headers", "96-byte windows of glibc C headers (stdio.h, stdlib.h, string.h, ...)",
      Embedded(kCHeadersCorpus, kCHeadersCorpusSize)));
  tasks.push_back(std::make_unique<TextTask>(
      "licenses", "96-byte windows of software licence texts (Apache, GPL, LGPL, MPL, ...)",
      Embedded(kLicensesCorpus, kLicensesCorpusSize)));
  return tasks;
}

}  // namespace internal

absl::StatusOr<absl::string_view> TextCorpus(absl::string_view task_name) {
  // Text tasks are in both suites; v2's exact-match names are found too, so
  // that they get the INVALID_ARGUMENT below rather than NOT_FOUND.
  absl::StatusOr<const Task*> task = FindTask(task_name);
  if (!task.ok()) {
    absl::StatusOr<const Task*> in_v2 = FindTask(task_name, "v2");
    if (!in_v2.ok()) return task.status();
    task = in_v2;
  }
  const auto* text = dynamic_cast<const internal::TextTask*>(*task);
  if (text == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "task ", task_name, " is ", TaskKindName((*task)->kind()), ", not text: it has no corpus"));
  }
  return text->corpus();
}

}  // namespace premoe::testbed
