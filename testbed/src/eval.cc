#include "premoe/testbed/eval.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "premoe/common/status.h"

namespace premoe::testbed {
namespace {

absl::StatusOr<std::vector<int64_t>> EncodePrompt(const tokenizer::Tokenizer& tokenizer,
                                                  absl::string_view text) {
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.Encode(text, /*add_special_tokens=*/true));
  return std::vector<int64_t>(ids.begin(), ids.end());
}

absl::Status ScoreExactMatch(const model::Engine& engine, const tokenizer::Tokenizer& tokenizer,
                             const std::vector<Sample>& samples, const EvalOptions& o,
                             TaskScore& score) {
  std::vector<model::GenerationRequest> requests;
  int64_t longest_answer = 1;
  for (const Sample& s : samples) {
    model::GenerationRequest r;
    ASSIGN_OR_RETURN(r.prompt, EncodePrompt(tokenizer, s.prompt));
    r.mask = o.mask;
    requests.push_back(std::move(r));
    ASSIGN_OR_RETURN(std::vector<int32_t> answer, tokenizer.Encode(s.completion));
    longest_answer = std::max<int64_t>(longest_answer, answer.size());
  }
  model::GenerationOptions g;
  // Room for a wrong answer to run a little longer than the right one, so a
  // model that does not stop is caught rather than cut at the right length.
  g.max_new_tokens = longest_answer + 4;
  ASSIGN_OR_RETURN(std::vector<model::GenerationResult> results, engine.Generate(requests, g));
  int64_t correct = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    const std::vector<int32_t> ids(results[i].tokens.begin(), results[i].tokens.end());
    ASSIGN_OR_RETURN(std::string text, tokenizer.Decode(ids, /*skip_special_tokens=*/true));
    if (results[i].finish_reason == model::GenerationResult::FinishReason::kEos &&
        text == samples[i].completion) {
      ++correct;
    }
  }
  score.exact_match += static_cast<double>(correct);
  return absl::OkStatus();
}

absl::Status ScoreText(const model::Engine& engine, const tokenizer::Tokenizer& tokenizer,
                       const std::vector<Sample>& samples, const EvalOptions& o, double& nll_sum,
                       int64_t& right, TaskScore& score) {
  std::vector<std::vector<int64_t>> batch;
  for (const Sample& s : samples) {
    ASSIGN_OR_RETURN(std::vector<int64_t> ids, EncodePrompt(tokenizer, s.prompt));
    if (ids.size() < 2) continue;
    batch.push_back(std::move(ids));
  }
  if (batch.empty()) return absl::OkStatus();
  model::ForwardOptions fo;
  fo.all_logits = true;
  if (o.mask != nullptr) fo.masks.assign(batch.size(), o.mask);
  ASSIGN_OR_RETURN(at::Tensor logits, engine.Forward(batch, nullptr, fo));
  std::vector<int64_t> rows, targets;
  int64_t offset = 0;
  for (const auto& ids : batch) {
    for (size_t p = 1; p < ids.size(); ++p) {
      rows.push_back(offset + static_cast<int64_t>(p) - 1);
      targets.push_back(ids[p]);
    }
    offset += static_cast<int64_t>(ids.size());
  }
  const auto lopt = at::TensorOptions().dtype(at::kLong);
  at::Tensor picked = logits.index_select(0, at::tensor(rows, lopt).to(logits.device())).cpu();
  at::Tensor t = at::tensor(targets, lopt);
  at::Tensor logp = at::log_softmax(picked, -1).gather(1, t.unsqueeze(1)).squeeze(1);
  nll_sum -= logp.to(at::kDouble).sum().item<double>();
  right += (picked.argmax(-1) == t).sum().item<int64_t>();
  score.tokens += static_cast<int64_t>(targets.size());
  return absl::OkStatus();
}

absl::StatusOr<EvalReport> EvaluateImpl(const model::Engine& engine,
                                        const tokenizer::Tokenizer& tokenizer,
                                        const std::vector<const Task*>& tasks,
                                        const EvalOptions& o) {
  std::vector<int64_t> counts;
  int64_t total = 0;
  for (const Task* task : tasks) {
    const int64_t size = task->size(o.split);
    const int64_t n = o.samples == 0 ? size : std::min(o.samples, size);
    counts.push_back(n);
    total += n;
  }
  EvalReport report;
  int64_t done = 0, em_tasks = 0, text_tasks = 0;
  for (size_t ti = 0; ti < tasks.size(); ++ti) {
    const Task& task = *tasks[ti];
    TaskScore score;
    score.task = task.name();
    score.kind = task.kind();
    score.samples = counts[ti];
    double nll_sum = 0;
    int64_t right = 0;
    for (int64_t begin = 0; begin < counts[ti]; begin += o.batch_size) {
      const int64_t end = std::min(counts[ti], begin + o.batch_size);
      std::vector<Sample> samples;
      for (int64_t i = begin; i < end; ++i) {
        ASSIGN_OR_RETURN(Sample s, task.Get(o.split, i));
        samples.push_back(std::move(s));
      }
      if (task.kind() == TaskKind::kExactMatch) {
        RETURN_IF_ERROR(ScoreExactMatch(engine, tokenizer, samples, o, score));
      } else {
        RETURN_IF_ERROR(ScoreText(engine, tokenizer, samples, o, nll_sum, right, score));
      }
      done += end - begin;
      if (o.on_progress) o.on_progress(done, total);
    }
    if (task.kind() == TaskKind::kExactMatch) {
      score.exact_match = score.samples > 0 ? score.exact_match / score.samples : 0;
      report.average_exact_match += score.exact_match;
      ++em_tasks;
    } else {
      score.token_accuracy = score.tokens > 0 ? static_cast<double>(right) / score.tokens : 0;
      score.perplexity = score.tokens > 0 ? std::exp(nll_sum / score.tokens) : 0;
      report.average_token_accuracy += score.token_accuracy;
      report.average_perplexity += score.perplexity;
      ++text_tasks;
    }
    report.tasks.push_back(std::move(score));
  }
  if (em_tasks > 0) report.average_exact_match /= em_tasks;
  if (text_tasks > 0) {
    report.average_token_accuracy /= text_tasks;
    report.average_perplexity /= text_tasks;
  }
  return report;
}

}  // namespace

absl::StatusOr<EvalReport> Evaluate(const model::Engine& engine,
                                    const tokenizer::Tokenizer& tokenizer,
                                    const std::vector<const Task*>& tasks,
                                    const EvalOptions& options) {
  if (options.samples < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("EvalOptions.samples must be >= 0, got ", options.samples));
  }
  if (options.samples == 0 && options.split == Split::kTrain) {
    return absl::InvalidArgumentError("the train split is unbounded: give a sample count");
  }
  if (options.batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("EvalOptions.batch_size must be >= 1, got ", options.batch_size));
  }
  if (tasks.empty()) return absl::InvalidArgumentError("no tasks to evaluate");
  if (options.mask != nullptr) {
    RETURN_IF_ERROR(options.mask->Validate(engine.config(), engine.top_k()));
  }
  try {
    return EvaluateImpl(engine, tokenizer, tasks, options);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("evaluation: libtorch: ", e.what_without_backtrace()));
  }
}

std::string EvalReportToJson(const EvalReport& report, Split split) {
  nlohmann::ordered_json j;
  j["split"] = std::string(SplitName(split));
  nlohmann::ordered_json tasks = nlohmann::json::array();
  for (const TaskScore& s : report.tasks) {
    nlohmann::ordered_json t;
    t["task"] = s.task;
    t["kind"] = s.kind == TaskKind::kExactMatch ? "exact_match" : "text";
    t["samples"] = s.samples;
    if (s.kind == TaskKind::kExactMatch) {
      t["exact_match"] = s.exact_match;
    } else {
      t["tokens"] = s.tokens;
      t["token_accuracy"] = s.token_accuracy;
      t["perplexity"] = s.perplexity;
    }
    tasks.push_back(std::move(t));
  }
  j["tasks"] = std::move(tasks);
  j["average_exact_match"] = report.average_exact_match;
  j["average_token_accuracy"] = report.average_token_accuracy;
  j["average_perplexity"] = report.average_perplexity;
  return j.dump(2) + "\n";
}

std::string FormatEvalReport(const EvalReport& report) {
  std::string out = absl::StrFormat("%-12s %-12s %8s %12s %10s %10s\n", "task", "kind", "samples",
                                    "exact match", "token acc", "perplexity");
  for (const TaskScore& s : report.tasks) {
    if (s.kind == TaskKind::kExactMatch) {
      absl::StrAppendFormat(&out, "%-12s %-12s %8d %11.1f%% %10s %10s\n", s.task, "exact_match",
                            s.samples, 100 * s.exact_match, "-", "-");
    } else {
      absl::StrAppendFormat(&out, "%-12s %-12s %8d %12s %9.1f%% %10.3f\n", s.task, "text",
                            s.samples, "-", 100 * s.token_accuracy, s.perplexity);
    }
  }
  bool any_em = false, any_text = false;
  for (const TaskScore& s : report.tasks) {
    (s.kind == TaskKind::kExactMatch ? any_em : any_text) = true;
  }
  absl::StrAppendFormat(
      &out, "%-12s %-12s %8s %12s %10s %10s\n", "average", "", "",
      any_em ? absl::StrFormat("%.1f%%", 100 * report.average_exact_match) : "-",
      any_text ? absl::StrFormat("%.1f%%", 100 * report.average_token_accuracy) : "-",
      any_text ? absl::StrFormat("%.3f", report.average_perplexity) : "-");
  return out;
}

}  // namespace premoe::testbed
