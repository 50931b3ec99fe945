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
#include "premoe/profiler/scores.h"
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
  store::Pattern p;
  p.task_name = task.name();
  p.model_fingerprint = fingerprint;
  p.metric = std::string(profiler::MetricName(options.metric.metric));
  p.metric_params = options.metric.Params(engine.config().num_routed_experts, engine.top_k());
  for (const auto& [layer, scores] : profile.scores) {
    p.layers.push_back({static_cast<int32_t>(layer), {scores.begin(), scores.end()}});
  }
  for (const auto& e : profile.embeddings) p.embeddings.push_back({e, ""});
  p.calibration_samples = profile.samples;
  p.calibration_tokens = profile.tokens;
  return p;
}

}  // namespace premoe::bench
