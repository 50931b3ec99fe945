// Helpers shared by the benchmarks that build a store of testbed patterns.
#pragma once

#include <errno.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "premoe/model/engine.h"
#include "premoe/profiler/calibration.h"
#include "premoe/profiler/pattern.h"
#include "premoe/store/pattern.h"
#include "premoe/testbed/tasks.h"
#include "premoe/tokenizer/tokenizer.h"

namespace premoe::bench {

// A benchmark has no one to hand an error to: say it and stop.
[[noreturn]] inline void Die(const absl::Status& s) {
  std::fprintf(stderr, "%s: %s\n", program_invocation_short_name, s.ToString().c_str());
  std::exit(1);
}
template <typename T>
T OrDie(absl::StatusOr<T> v) {
  if (!v.ok()) Die(v.status());
  return std::move(*v);
}

// `task`'s pattern profiled on its first `samples` calibration samples with
// `options`, as `premoe profile --testbed-task` records it.
inline store::Pattern ProfileTestbedTask(const model::Engine& engine,
                                         const tokenizer::Tokenizer& tokenizer,
                                         const testbed::Task& task, int64_t samples,
                                         const profiler::ProfileOptions& options,
                                         const std::string& fingerprint) {
  std::vector<profiler::CalibrationSample> cal;
  for (int64_t i = 0; i < std::min(samples, task.size(testbed::Split::kCalibration)); ++i) {
    testbed::Sample s = OrDie(task.Get(testbed::Split::kCalibration, i));
    cal.push_back({s.prompt, s.completion});
  }
  profiler::TaskProfile profile = OrDie(profiler::ProfileTask(engine, tokenizer, cal, options));
  return OrDie(profiler::MakePattern(engine, cal, options, profile,
                                     {.task_name = task.name(), .model_fingerprint = fingerprint}));
}

}  // namespace premoe::bench
