// quality_bench: the counterpart of the PreMoe paper's Table 1 on the
// testbed. For every task: the full model's score, then, for every metric,
// the task's own pattern (profiled on its calibration split) at 50% and 75%
// expert reduction (uniform per layer) and at a byte budget (non-uniform),
// scored on the eval split with the pattern's mask. Also a calibration-size
// sweep for peu, and profiling throughput against plain prefill throughput
// on the same tokens, measured in the same run.
//
// A task's score is exact match for the generation tasks and next-token
// accuracy for the text tasks; retention = pruned average / full average.
//
// Then memory against quality: for every expert format (--formats) and every
// budget (full, 50%, 75% and a byte budget of 3/8 of the unquantized
// experts' bytes as held in the compute dtype, so a smaller format keeps
// more experts in the same bytes),
// the peu patterns' average score and retention against the full
// unquantized model, the bytes held, the text tasks' perplexity, and the
// fraction of calibration tokens whose greedy choice differs from the full
// unquantized model's.
//
// usage: quality_bench [--model testbed/model] [--cal-samples 100]
//          [--eval-samples 200] [--json FILE] [--metrics peu,tcess,...]
//          [--formats none int8 int4:g128 int4:g32] [--formats-only]
// The markdown table goes to stdout, progress to stderr.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "premoe/checkpoint/inspect.h"
#include "premoe/common/file.h"
#include "premoe/model/engine.h"
#include "premoe/profiler/calibration.h"
#include "premoe/profiler/selection.h"
#include "premoe/testbed/eval.h"
#include "premoe/tokenizer/tokenizer.h"

namespace {

using namespace premoe;  // NOLINT: a benchmark's main file
using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const absl::Status& s) {
  std::fprintf(stderr, "quality_bench: %s\n", s.ToString().c_str());
  std::exit(1);
}
template <typename T>
T OrDie(absl::StatusOr<T> v) {
  if (!v.ok()) Die(v.status());
  return std::move(*v);
}

double Primary(const testbed::TaskScore& s) {
  return s.kind == testbed::TaskKind::kExactMatch ? s.exact_match : s.token_accuracy;
}

struct Setup {
  const model::Engine* engine;
  const tokenizer::Tokenizer* tokenizer;
  int64_t cal_samples, eval_samples, per_expert_bytes, full_expert_bytes;
};

std::vector<profiler::CalibrationSample> Calibration(const testbed::Task& t, int64_t n) {
  std::vector<profiler::CalibrationSample> out;
  for (int64_t i = 0; i < std::min(n, t.size(testbed::Split::kCalibration)); ++i) {
    testbed::Sample s = OrDie(t.Get(testbed::Split::kCalibration, i));
    out.push_back({s.prompt, s.completion});
  }
  return out;
}

testbed::TaskScore Evaluate(const model::Engine& engine, const Setup& s, const testbed::Task& t,
                            const model::KeptExperts* mask) {
  testbed::EvalOptions eo;
  eo.samples = s.eval_samples;
  eo.mask = mask;
  testbed::EvalReport r = OrDie(testbed::Evaluate(engine, *s.tokenizer, {&t}, eo));
  return r.tasks.front();
}

double Score(const Setup& s, const testbed::Task& t, const model::KeptExperts* mask) {
  return Primary(Evaluate(*s.engine, s, t, mask));
}

// Greedy next-token choices of `engine` over `texts` (each with its task's
// mask, or none), one row of argmaxes per text.
std::vector<at::Tensor> Argmaxes(const model::Engine& engine,
                                 const std::vector<std::vector<int64_t>>& texts,
                                 const std::vector<const model::KeptExperts*>& masks) {
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < texts.size(); ++i) {
    model::ForwardOptions fo;
    fo.all_logits = true;
    if (masks[i] != nullptr) fo.masks = {masks[i]};
    out.push_back(OrDie(engine.Forward({texts[i]}, nullptr, fo)).argmax(-1));
  }
  return out;
}

constexpr double kMiB = 1 << 20;

// The memory x quality table (see the top of the file). Returns its rows
// for the JSON and appends the markdown to `table`.
nlohmann::ordered_json FormatTable(const std::string& model_dir, const std::string& dtype,
                                   const Setup& setup, const std::vector<std::string>& formats,
                                   const std::vector<profiler::TaskProfile>& peu,
                                   std::string* table) {
  const std::vector<const testbed::Task*>& tasks = testbed::AllTasks();
  const int64_t n = setup.engine->config().num_routed_experts, k = setup.engine->top_k();
  const int64_t layers = setup.engine->config().NumMoeLayers();
  const std::vector<std::pair<std::string, std::string>> budgets = {
      {"full", ""},
      {"50%", absl::StrCat(k, "/", n / 2)},
      {"75%", absl::StrCat(k, "/", n / 4)},
      {"bytes 3/8",
       absl::StrCat("bytes:", n * layers * setup.engine->expert_bytes() * 3 / 8, "B")}};
  // Greedy choices are compared on calibration texts (prompt + completion),
  // 8 per task, each under its own task's pattern.
  std::vector<std::vector<int64_t>> texts;
  std::vector<size_t> text_task;
  for (size_t ti = 0; ti < tasks.size(); ++ti) {
    for (const auto& c : Calibration(*tasks[ti], 8)) {
      auto ids = OrDie(setup.tokenizer->Encode(c.prompt + c.completion, true));
      texts.emplace_back(ids.begin(), ids.end());
      text_task.push_back(ti);
    }
  }
  nlohmann::ordered_json rows = nlohmann::json::array();
  absl::StrAppend(table,
                  "| quant | budget | experts kept | expert MiB | all weights MiB | average | "
                  "retention | text perplexity | greedy tokens changed |\n"
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
  std::vector<at::Tensor> reference;  // the full unquantized model's choices
  double reference_avg = 0;
  for (const std::string& format : formats) {
    model::EngineOptions eo;
    eo.dtype = dtype;
    if (auto s = eo.SetQuant(format); !s.ok()) Die(s);
    auto engine = OrDie(model::Engine::Open(model_dir, eo));
    const int64_t expert_bytes = engine->expert_bytes();
    const int64_t non_expert = engine->weight_bytes() - n * layers * expert_bytes;
    for (const auto& [label, spec] : budgets) {
      std::vector<model::KeptExperts> keeps(tasks.size());
      int64_t kept = n * layers;  // per task, averaged below
      if (!spec.empty()) {
        const profiler::Budget budget = OrDie(profiler::Budget::Parse(spec));
        kept = 0;
        for (size_t ti = 0; ti < tasks.size(); ++ti) {
          const profiler::Selection sel =
              OrDie(profiler::Select(peu[ti].scores, budget, expert_bytes, k));
          keeps[ti] = sel.keep;
          kept += sel.kept_experts;
        }
        kept /= static_cast<int64_t>(tasks.size());
      }
      double avg = 0, ppl = 0;
      int text_tasks = 0;
      std::vector<double> scores;
      for (size_t ti = 0; ti < tasks.size(); ++ti) {
        const testbed::TaskScore score =
            Evaluate(*engine, setup, *tasks[ti], spec.empty() ? nullptr : &keeps[ti]);
        scores.push_back(Primary(score));
        avg += Primary(score) / static_cast<double>(tasks.size());
        if (score.kind == testbed::TaskKind::kText) {
          ppl += score.perplexity;
          ++text_tasks;
        }
      }
      if (text_tasks > 0) ppl /= text_tasks;
      std::vector<const model::KeptExperts*> masks;
      for (size_t ti : text_task) masks.push_back(spec.empty() ? nullptr : &keeps[ti]);
      const std::vector<at::Tensor> choices = Argmaxes(*engine, texts, masks);
      if (reference.empty()) {
        reference = choices;
        reference_avg = avg;
      }
      int64_t changed = 0, tokens = 0;
      for (size_t i = 0; i < choices.size(); ++i) {
        changed += choices[i].ne(reference[i]).sum().item<int64_t>();
        tokens += choices[i].numel();
      }
      const double held = static_cast<double>(kept * expert_bytes);
      const double retention = reference_avg > 0 ? avg / reference_avg : 0;
      const double changed_fraction = static_cast<double>(changed) / static_cast<double>(tokens);
      std::fprintf(stderr, "%-10s %-9s experts %.2f MiB average %.3f retention %.3f\n",
                   format.c_str(), label.c_str(), held / kMiB, avg, retention);
      absl::StrAppendFormat(
          table, "| %s | %s | %d of %d | %.2f | %.2f | **%.1f** | %.1f%% | %.3f | %.2f%% |\n",
          format, label, kept, n * layers, held / kMiB,
          (static_cast<double>(non_expert) + held) / kMiB, 100 * avg, 100 * retention, ppl,
          100 * changed_fraction);
      rows.push_back({{"format", format},
                      {"budget", label},
                      {"spec", spec},
                      {"kept_experts", kept},
                      {"expert_bytes", kept * expert_bytes},
                      {"weight_bytes", non_expert + kept * expert_bytes},
                      {"scores", scores},
                      {"average", avg},
                      {"retention", retention},
                      {"text_perplexity", ppl},
                      {"greedy_changed", changed_fraction}});
    }
  }
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir = "testbed/model", json_out;
  int64_t cal = 100, eval = 200;
  std::vector<std::string> metrics = {"peu",       "tcess", "act_logits", "all_logits",
                                      "frequency", "reap",  "man",        "random"};
  std::vector<std::string> formats = {"none", "int8", "int4:g128", "int4:g32"};
  std::string dtype = "fp32";
  bool formats_only = false;
  CLI::App app("quality_bench: every metric's pattern at expert budgets on the testbed");
  app.add_option("--model", model_dir, "Model directory")->capture_default_str();
  app.add_option("--cal-samples", cal, "Calibration samples per task's pattern")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 30));
  app.add_option("--eval-samples", eval, "Eval samples per task")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 30));
  app.add_option("--json", json_out, "Also write the figures to this JSON file");
  app.add_option("--metrics", metrics, "Metrics to compare, comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--formats", formats,
                 "Formats of the memory x quality table, space-separated, each an "
                 "EngineOptions::SetQuant spec (int4, or int4,attention=int8,lm_head=int8); the "
                 "first is the reference")
      ->capture_default_str();
  app.add_option("--dtype", dtype, "Compute dtype: fp32 or bf16")->capture_default_str();
  app.add_flag("--formats-only", formats_only,
               "Only the memory x quality table (no metric table, sweep or throughput)");
  CLI11_PARSE(app, argc, argv);
  auto engine = OrDie(model::Engine::Open(model_dir, {.dtype = dtype}));
  auto tokenizer = OrDie(tokenizer::Tokenizer::FromFile(model_dir + "/tokenizer.json"));
  const checkpoint::ModelSummary summary = OrDie(checkpoint::SummarizeModel(model_dir));
  const int64_t n = engine->config().num_routed_experts, k = engine->top_k();
  Setup setup{engine.get(),
              tokenizer.get(),
              cal,
              eval,
              summary.expert_layers.front().bytes_per_expert,
              summary.bytes.routed_experts};
  const std::vector<const testbed::Task*>& tasks = testbed::AllTasks();

  // Budgets: 50% and 75% reduction, uniform; and a byte budget holding 3/8 of
  // the routed experts' bytes, spent where each layer's score mass is.
  const std::vector<std::pair<std::string, std::string>> budgets = {
      {"50%", absl::StrCat(k, "/", n / 2)},
      {"75%", absl::StrCat(k, "/", n / 4)},
      {"bytes 3/8", absl::StrCat("bytes:", setup.full_expert_bytes * 3 / 8, "B")}};

  nlohmann::ordered_json out;
  out["model"] = model_dir;
  out["cal_samples"] = cal;
  out["eval_samples"] = eval;
  out["dtype"] = dtype;
  std::vector<std::string> names;
  for (const auto* t : tasks) names.push_back(t->name());
  out["tasks"] = names;

  // Profiles: per metric, per task.
  auto profile = [&](const std::string& metric, const testbed::Task& t, int64_t samples) {
    profiler::ProfileOptions po;
    po.metric = OrDie(profiler::MetricOptions::Parse(metric));
    return OrDie(profiler::ProfileTask(*engine, *tokenizer, Calibration(t, samples), po));
  };
  if (!formats.empty()) {
    std::vector<profiler::TaskProfile> peu;
    for (const auto* t : tasks) peu.push_back(profile("peu", *t, cal));
    std::string table;
    out["formats"] = FormatTable(model_dir, dtype, setup, formats, peu, &table);
    std::printf(
        "## Memory against quality: expert formats x budgets (peu patterns, %s compute)\n\n%s\n",
        dtype.c_str(), table.c_str());
  }
  if (formats_only) {
    if (!json_out.empty()) {
      if (auto s = common::WriteFileAtomically(json_out, out.dump(1) + "\n"); !s.ok()) Die(s);
    }
    return 0;
  }

  std::vector<double> full;
  for (const auto* t : tasks) full.push_back(Score(setup, *t, nullptr));
  double full_avg = 0;
  for (double v : full) full_avg += v / static_cast<double>(full.size());
  out["full"] = full;
  std::fprintf(stderr, "full model: average %.3f\n", full_avg);

  nlohmann::ordered_json rows = nlohmann::json::array();
  std::string table = absl::StrCat("| metric | budget | ", absl::StrJoin(names, " | "),
                                   " | average | retention |\n|---|---|");
  for (size_t i = 0; i < names.size() + 2; ++i) absl::StrAppend(&table, "---:|");
  absl::StrAppendFormat(&table, "\n| full model | all %d |", n);
  for (double v : full) absl::StrAppendFormat(&table, " %.1f |", 100 * v);
  absl::StrAppendFormat(&table, " **%.1f** | 100%% |\n", 100 * full_avg);
  for (const std::string& metric : metrics) {
    std::vector<profiler::TaskProfile> profiles;
    for (const auto* t : tasks) profiles.push_back(profile(metric, *t, cal));
    for (const auto& [label, spec] : budgets) {
      const profiler::Budget budget = OrDie(profiler::Budget::Parse(spec));
      std::vector<double> scores;
      for (size_t ti = 0; ti < tasks.size(); ++ti) {
        const profiler::Selection sel =
            OrDie(profiler::Select(profiles[ti].scores, budget, setup.per_expert_bytes, k));
        scores.push_back(Score(setup, *tasks[ti], &sel.keep));
      }
      double avg = 0;
      for (double v : scores) avg += v / static_cast<double>(scores.size());
      const double retention = full_avg > 0 ? avg / full_avg : 0;
      std::fprintf(stderr, "%-10s %-9s average %.3f retention %.3f\n", metric.c_str(),
                   label.c_str(), avg, retention);
      absl::StrAppendFormat(&table, "| %s | %s |", metric, label);
      for (double v : scores) absl::StrAppendFormat(&table, " %.1f |", 100 * v);
      absl::StrAppendFormat(&table, " **%.1f** | %.1f%% |\n", 100 * avg, 100 * retention);
      rows.push_back({{"metric", metric},
                      {"budget", label},
                      {"spec", spec},
                      {"scores", scores},
                      {"average", avg},
                      {"retention", retention}});
    }
  }
  out["rows"] = rows;

  // Calibration-size sweep for peu at 75% reduction.
  std::string sweep =
      "| peu calibration samples | average at 75% reduction | retention |\n|---:|---:|---:|\n";
  nlohmann::ordered_json sweep_rows = nlohmann::json::array();
  for (int64_t samples : {5, 10, 50, 200}) {
    const profiler::Budget budget = OrDie(profiler::Budget::Parse(budgets[1].second));
    double avg = 0;
    for (const auto* t : tasks) {
      const profiler::TaskProfile p = profile("peu", *t, samples);
      const profiler::Selection sel =
          OrDie(profiler::Select(p.scores, budget, setup.per_expert_bytes, k));
      avg += Score(setup, *t, &sel.keep) / static_cast<double>(tasks.size());
    }
    absl::StrAppendFormat(&sweep, "| %d | %.1f | %.1f%% |\n", samples, 100 * avg,
                          100 * avg / full_avg);
    sweep_rows.push_back({{"samples", samples}, {"average", avg}, {"retention", avg / full_avg}});
    std::fprintf(stderr, "peu with %lld calibration samples: %.3f\n",
                 static_cast<long long>(samples), avg);
  }
  out["calibration_sweep"] = sweep_rows;

  // Tap cost: prefill of the same calibration tokens with and without the
  // scoring tap (best of 3), and the whole profiling run (which also runs
  // the prompts alone for the match embeddings).
  class ScoringTap : public model::GateTap {
   public:
    explicit ScoringTap(profiler::ScoreAccumulator* acc) : acc_(acc) {}
    void OnGate(const model::GateEvent& e) override {
      if (!acc_->Add(e.layer, {e.gate_logits}).ok()) std::abort();
    }
    profiler::ScoreAccumulator* acc_;
  };
  std::vector<profiler::CalibrationSample> all;
  std::vector<std::vector<int64_t>> prefill;
  for (const auto* t : tasks) {
    for (const auto& s : Calibration(*t, 16)) {
      all.push_back(s);
      auto ids = OrDie(tokenizer->Encode(s.prompt + s.completion, true));
      prefill.emplace_back(ids.begin(), ids.end());
    }
  }
  int64_t tokens = 0;
  for (const auto& p : prefill) tokens += static_cast<int64_t>(p.size());
  std::vector<int64_t> layers;
  for (const auto& l : summary.expert_layers) layers.push_back(l.layer);
  auto run_prefill = [&](model::GateTap* tap) {
    const auto a = Clock::now();
    for (size_t b = 0; b < prefill.size(); b += 16) {
      std::vector<std::vector<int64_t>> batch(prefill.begin() + b,
                                              prefill.begin() + std::min(prefill.size(), b + 16));
      model::ForwardOptions fo;
      fo.tap = tap;
      if (!engine->Forward(batch, nullptr, fo).ok()) Die(absl::InternalError("prefill failed"));
    }
    return std::chrono::duration<double>(Clock::now() - a).count();
  };
  double t_plain = 1e30, t_tap = 1e30, t_profile = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    t_plain = std::min(t_plain, run_prefill(nullptr));
    auto acc = OrDie(profiler::ScoreAccumulator::Create(profiler::MetricOptions(), layers, n, k));
    ScoringTap tap(&acc);
    t_tap = std::min(t_tap, run_prefill(&tap));
    (void)OrDie(acc.Scores());
    const auto a = Clock::now();
    (void)OrDie(profiler::ProfileTask(*engine, *tokenizer, all, profiler::ProfileOptions()));
    t_profile = std::min(t_profile, std::chrono::duration<double>(Clock::now() - a).count());
  }
  out["prefill_tokens_per_s"] = tokens / t_plain;
  out["tapped_prefill_tokens_per_s"] = tokens / t_tap;
  out["profile_tokens_per_s"] = tokens / t_profile;
  std::printf(
      "## Quality at expert budgets (%lld calibration samples per task, %lld eval samples)\n\n%s\n",
      static_cast<long long>(cal), static_cast<long long>(eval), table.c_str());
  std::printf("## Calibration size (peu)\n\n%s\n", sweep.c_str());
  std::printf(
      "## Profiling throughput\n\n| | calibration tokens/s | against prefill |\n|---|---:|---:|\n"
      "| prefill (no tap) | %.0f | 1.00 |\n| prefill with the peu scoring tap | %.0f | %.2f |\n"
      "| whole profile run (scores + prompt embeddings) | %.0f | %.2f |\n",
      tokens / t_plain, tokens / t_tap, t_plain / t_tap, tokens / t_profile, t_plain / t_profile);
  if (!json_out.empty()) {
    if (auto s = common::WriteFileAtomically(json_out, out.dump(1) + "\n"); !s.ok()) Die(s);
  }
  return 0;
}
