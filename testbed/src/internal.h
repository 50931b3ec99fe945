// Pieces of the task library shared between its source files; not part of the
// public API.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "premoe/testbed/tasks.h"

namespace premoe::testbed::internal {

// The split that a hash (of an instance's canonical form, or of a text
// window's name) selects: hash % 100 < 10 eval, < 20 calibration, else train.
Split SplitOfHash(std::uint64_t hash);

// The seven exact-match generator tasks, in registry order.
std::vector<std::unique_ptr<Task>> MakeGeneratorTasks();
// The two text tasks, in registry order.
std::vector<std::unique_ptr<Task>> MakeTextTasks();

// The corpora embedded at build time (testbed/cmake/EmbedFile.cmake writes
// these definitions from testbed/data/*.txt). Each array holds `size` bytes
// followed by one NUL that is not part of the corpus.
extern const unsigned char kLicensesCorpus[];
extern const std::size_t kLicensesCorpusSize;
extern const unsigned char kCHeadersCorpus[];
extern const std::size_t kCHeadersCorpusSize;

}  // namespace premoe::testbed::internal
