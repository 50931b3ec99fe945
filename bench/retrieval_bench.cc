// retrieval_bench: task-adaptive expert retrieval (TAER) on the testbed, as
// the router does it. Every task is profiled (peu, its calibration split)
// into a store; then each held-out eval prompt goes through the router's
// Matcher (the probe engine, the store's index) and counts as right when it
// lands on its own task's pattern. Prints the accuracy for each embedding
// depth (the first 1, 2, ... MoE layers), voting rule and calibration size,
// the confusion matrices of the default (one layer, max voting, the largest
// calibration size) and of the best configuration, the similarity gap
// between right and wrong candidates, and the probe's cost against a
// whole-model prefill of the same prompts, measured in the same run.
//
// With max voting it also scores decision rules, each splitting the queries
// into right (served by their own task's pattern), fallback (served by the
// fallback) and wrong (served by another task's pattern):
//   nearest           always the nearest pattern;
//   global >= T       fall back below similarity T (the router's default 0.5);
//   own quantile      fall back below the best pattern's own threshold: the
//                     q-quantile of its calibration prompts' leave-one-out
//                     similarities (each prompt against the pattern's other
//                     prompts, as max voting scores a query);
//   margin >= D       fall back when the two best patterns are closer than D.
//
// usage: retrieval_bench [--model testbed/model] [--suite v1] [--cal-samples 8,32,100]
//          [--layers 1,2,4] [--queries 100] [--margins 0.01,0.02,0.05]
//          [--quantile 0.05] [--json FILE]
// The markdown goes to stdout, progress to stderr.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench/bench_util.h"
#include "nlohmann/json.hpp"
#include "premoe/common/file.h"
#include "premoe/model/engine.h"
#include "premoe/model/fingerprint.h"
#include "premoe/profiler/calibration.h"
#include "premoe/profiler/scores.h"
#include "premoe/router/matcher.h"
#include "premoe/store/embedded_store.h"
#include "premoe/testbed/tasks.h"
#include "premoe/tokenizer/tokenizer.h"

namespace {

using namespace premoe;  // NOLINT: a benchmark's main file
using Clock = std::chrono::steady_clock;

using bench::Die;
using bench::OrDie;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// The q-quantile of a pattern's leave-one-out similarities: each calibration
// prompt's embedding against the nearest of the pattern's others (how max
// voting would score it as a query). Embeddings are unit vectors.
double LeaveOneOutQuantile(const store::Pattern& p, double q) {
  std::vector<double> loo;
  for (size_t i = 0; i < p.embeddings.size(); ++i) {
    double best = -1;
    for (size_t j = 0; j < p.embeddings.size(); ++j) {
      if (i == j) continue;
      double dot = 0;
      for (size_t d = 0; d < p.embeddings[i].values.size(); ++d) {
        dot += static_cast<double>(p.embeddings[i].values[d]) * p.embeddings[j].values[d];
      }
      best = std::max(best, dot);
    }
    loo.push_back(best);
  }
  if (loo.empty()) return -1;
  std::sort(loo.begin(), loo.end());
  return loo[static_cast<size_t>(q * static_cast<double>(loo.size() - 1))];
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir = "testbed/model", json_out;
  std::vector<int64_t> cal_sizes = {8, 32, 100}, layer_counts = {1, 2, 4};
  int64_t queries = 100;
  std::string suite{testbed::kDefaultSuite};
  std::vector<double> margins = {0.01, 0.02, 0.05};
  double quantile = 0.05;
  CLI::App app("retrieval_bench: task-adaptive expert retrieval on the testbed's held-out prompts");
  app.add_option("--model", model_dir, "Model directory")->capture_default_str();
  app.add_option("--cal-samples", cal_sizes, "Calibration sizes to compare, comma-separated")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 30));
  app.add_option("--layers", layer_counts, "Embedding depths (MoE layers) to compare")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 30));
  app.add_option("--queries", queries, "Held-out prompts per task")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 30));
  app.add_option("--suite", suite, "Task suite: v1 or v2")->capture_default_str();
  app.add_option("--margins", margins, "Margins of the margin rule, comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--quantile", quantile, "Quantile of the own-threshold rule")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--json", json_out, "Also write the figures to this JSON file");
  CLI11_PARSE(app, argc, argv);
  auto engine = OrDie(model::Engine::Open(model_dir, {.dtype = "fp32"}));
  auto tokenizer = OrDie(tokenizer::Tokenizer::FromFile(model_dir + "/tokenizer.json"));
  const std::string fingerprint = OrDie(model::ModelFingerprint(*engine));
  const std::vector<const testbed::Task*>& tasks = *OrDie(testbed::SuiteTasks(suite));
  const profiler::MetricOptions metric;  // peu
  std::map<std::string, int> index;
  for (size_t t = 0; t < tasks.size(); ++t) index[tasks[t]->name()] = static_cast<int>(t);

  // The held-out queries, the same for every configuration.
  std::vector<std::pair<int, std::string>> eval;
  for (size_t t = 0; t < tasks.size(); ++t) {
    for (int64_t i = 0; i < std::min(queries, tasks[t]->size(testbed::Split::kEval)); ++i) {
      eval.emplace_back(static_cast<int>(t), OrDie(tasks[t]->Get(testbed::Split::kEval, i)).prompt);
    }
  }

  struct Run {
    int64_t layers = 1;
    int64_t cal = 0;
    std::string voting;
    double accuracy = 0;
    std::vector<std::vector<int>> confusion;
    double right_similarity = 0, best_wrong_similarity = 0;  // means over queries
    // Max voting: per query, (pattern, similarity) best first, all tasks.
    std::vector<std::vector<std::pair<int, double>>> ranked;
    std::vector<double> own_threshold;  // per task: the own-quantile rule's
  };
  struct Outcome {
    std::string rule;
    double right = 0, fallback = 0, wrong = 0;
  };
  std::vector<Run> runs;
  std::map<int64_t, double> probe_seconds;  // per embedding depth
  std::map<int64_t, int64_t> probe_bytes;
  for (int64_t layers : layer_counts) {
    for (int64_t cal : cal_sizes) {
      store::EmbeddedPatternStore::Options so;
      so.path = "/retrieval-bench";
      so.in_memory = true;
      auto store = OrDie(store::EmbeddedPatternStore::Open(so));
      std::vector<double> own_threshold;
      for (const testbed::Task* task : tasks) {
        std::fprintf(stderr, "profiling %s on %lld calibration samples, %lld-layer embeddings\n",
                     task->name().c_str(), static_cast<long long>(cal),
                     static_cast<long long>(layers));
        profiler::ProfileOptions po;
        po.metric = metric;
        po.embedding_layers = layers;
        store::Pattern pattern =
            bench::ProfileTestbedTask(*engine, *tokenizer, *task, cal, po, fingerprint);
        own_threshold.push_back(LeaveOneOutQuantile(pattern, quantile));
        OrDie(store->Put(std::move(pattern)));
      }
      for (const std::string voting : {"max", "mean", "count"}) {
        router::MatcherOptions mo;
        mo.model_dir = model_dir;
        mo.voting = voting == "max"    ? store::Voting::kMax
                    : voting == "mean" ? store::Voting::kMean
                                       : store::Voting::kCount;
        auto matcher = OrDie(router::Matcher::Open(mo, store.get()));
        probe_bytes[layers] = matcher->probe_bytes();
        Run run;
        run.layers = layers;
        run.cal = cal;
        run.voting = voting;
        run.confusion.assign(tasks.size(), std::vector<int>(tasks.size(), 0));
        int right = 0;
        const auto start = Clock::now();
        for (const auto& [truth, prompt] : eval) {
          router::MatchResult m = OrDie(matcher->Match(prompt, static_cast<int32_t>(tasks.size())));
          const int got = index.at(m.candidates[0].task_name);
          if (voting == "max") {
            std::vector<std::pair<int, double>> ranked;
            for (const auto& c : m.candidates)
              ranked.emplace_back(index.at(c.task_name), c.similarity);
            run.ranked.push_back(std::move(ranked));
          }
          ++run.confusion[truth][got];
          right += got == truth ? 1 : 0;
          for (const auto& c : m.candidates) {
            if (index.at(c.task_name) == truth) run.right_similarity += c.similarity;
          }
          for (const auto& c : m.candidates) {
            if (index.at(c.task_name) != truth) {
              run.best_wrong_similarity += c.similarity;
              break;
            }
          }
        }
        if (voting == "max" && cal == cal_sizes.back()) probe_seconds[layers] = Seconds(start);
        run.accuracy = static_cast<double>(right) / static_cast<double>(eval.size());
        run.right_similarity /= static_cast<double>(eval.size());
        run.best_wrong_similarity /= static_cast<double>(eval.size());
        run.own_threshold = own_threshold;
        runs.push_back(run);
      }
    }
  }

  // The decision rules over max voting's rankings: each query is right,
  // fallback or wrong.
  auto outcome = [&](const Run& run, const std::string& rule, auto falls_back) {
    Outcome o;
    o.rule = rule;
    for (size_t q = 0; q < run.ranked.size(); ++q) {
      const auto& r = run.ranked[q];
      if (falls_back(r)) {
        o.fallback += 1;
      } else if (r[0].first == eval[q].first) {
        o.right += 1;
      } else {
        o.wrong += 1;
      }
    }
    const double n = static_cast<double>(run.ranked.size());
    o.right /= n;
    o.fallback /= n;
    o.wrong /= n;
    return o;
  };
  auto margin_of = [](const std::vector<std::pair<int, double>>& r) {
    return r.size() < 2 ? 1.0 : r[0].second - r[1].second;
  };
  auto rules = [&](const Run& run) {
    std::vector<Outcome> out;
    out.push_back(outcome(run, "nearest", [](const auto&) { return false; }));
    out.push_back(outcome(run, "global >= 0.5", [](const auto& r) { return r[0].second < 0.5; }));
    const std::string own = absl::StrCat("own ", quantile, "-quantile");
    out.push_back(outcome(
        run, own, [&](const auto& r) { return r[0].second < run.own_threshold[r[0].first]; }));
    for (double d : margins) {
      out.push_back(outcome(run, absl::StrCat("margin >= ", d),
                            [&](const auto& r) { return margin_of(r) < d; }));
      out.push_back(outcome(run, absl::StrCat(own, " and margin >= ", d), [&](const auto& r) {
        return r[0].second < run.own_threshold[r[0].first] || margin_of(r) < d;
      }));
    }
    return out;
  };

  // The same prompts through the whole model, one prefill each, for scale.
  const auto start = Clock::now();
  for (const auto& [truth, prompt] : eval) {
    auto ids = OrDie(tokenizer->Encode(prompt, true));
    OrDie(engine->Forward({std::vector<int64_t>(ids.begin(), ids.end())}, nullptr, {}));
  }
  const double prefill_seconds = Seconds(start);

  std::printf("## Retrieval accuracy: held-out prompts matched to their own task's pattern\n\n");
  std::printf(
      "%zu tasks, %zu eval prompts (%lld per task), patterns profiled with peu; each "
      "cell is the share of prompts that landed on their own task's pattern.\n\n",
      tasks.size(), eval.size(), static_cast<long long>(queries));
  std::printf(
      "| embedding layers | calibration prompts | max voting | mean voting | count voting "
      "| sim. own task | best other |\n|---|---|---|---|---|---|---|\n");
  const Run* best = nullptr;
  const Run* standard = nullptr;
  for (int64_t layers : layer_counts) {
    for (int64_t cal : cal_sizes) {
      std::map<std::string, const Run*> by;
      for (const Run& r : runs) {
        if (r.cal == cal && r.layers == layers) by[r.voting] = &r;
      }
      std::printf("| %lld | %lld | %.1f%% | %.1f%% | %.1f%% | %.3f | %.3f |\n",
                  static_cast<long long>(layers), static_cast<long long>(cal),
                  100 * by["max"]->accuracy, 100 * by["mean"]->accuracy,
                  100 * by["count"]->accuracy, by["max"]->right_similarity,
                  by["max"]->best_wrong_similarity);
    }
  }
  for (const Run& r : runs) {
    if (best == nullptr || r.accuracy > best->accuracy) best = &r;
    if (r.layers == layer_counts.front() && r.cal == cal_sizes.back() && r.voting == "max") {
      standard = &r;
    }
  }
  auto print_confusion = [&](const Run& run, const char* what) {
    std::printf(
        "\n### Confusion matrix, %s: %lld embedding layer(s), %s voting, %lld "
        "calibration prompts: %.1f%%\n\nRows: the prompt's task; columns: the matched "
        "pattern.\n\n| |",
        what, static_cast<long long>(run.layers), run.voting.c_str(),
        static_cast<long long>(run.cal), 100 * run.accuracy);
    for (const auto* t : tasks) std::printf(" %s |", t->name().c_str());
    std::printf("\n|---|");
    for (size_t i = 0; i < tasks.size(); ++i) std::printf("---|");
    std::printf("\n");
    for (size_t i = 0; i < tasks.size(); ++i) {
      std::printf("| **%s** |", tasks[i]->name().c_str());
      for (size_t j = 0; j < tasks.size(); ++j) std::printf(" %d |", run.confusion[i][j]);
      std::printf("\n");
    }
  };
  std::printf(
      "\n### Decision rules (max voting, %lld calibration prompts)\n\nEach query is served "
      "by its own task's pattern (right), by the fallback, or by another task's pattern "
      "(wrong).\n\n| embedding layers | rule | right | fallback | wrong |\n|---|---|---|---|---|\n",
      static_cast<long long>(cal_sizes.back()));
  for (const Run& r : runs) {
    if (r.voting != "max" || r.cal != cal_sizes.back()) continue;
    for (const Outcome& o : rules(r)) {
      std::printf("| %lld | %s | %.1f%% | %.1f%% | %.1f%% |\n", static_cast<long long>(r.layers),
                  o.rule.c_str(), 100 * o.right, 100 * o.fallback, 100 * o.wrong);
    }
  }
  print_confusion(*standard, "the paper's embedding");
  if (best != standard) print_confusion(*best, "the best configuration");
  std::printf(
      "\n### Cost of matching\n\n| embedding layers | probe weights | of the model "
      "| matching time / whole-model prefill |\n|---|---|---|---|\n");
  for (int64_t layers : layer_counts) {
    std::printf("| %lld | %.2f MiB | %.0f%% | %.2f |\n", static_cast<long long>(layers),
                static_cast<double>(probe_bytes[layers]) / (1 << 20),
                100.0 * static_cast<double>(probe_bytes[layers]) /
                    static_cast<double>(engine->weight_bytes()),
                probe_seconds[layers] / prefill_seconds);
  }
  std::printf(
      "\nMatching = embedding each of the %zu prompts with the probe plus the index "
      "search; the prefill runs the same prompts through the whole model.\n",
      eval.size());

  if (!json_out.empty()) {
    nlohmann::ordered_json j;
    j["suite"] = suite;
    j["tasks"] = nlohmann::ordered_json::array();
    for (const auto* t : tasks) j["tasks"].push_back(t->name());
    j["queries_per_task"] = queries;
    j["runs"] = nlohmann::ordered_json::array();
    for (const Run& r : runs) {
      j["runs"].push_back({{"embedding_layers", r.layers},
                           {"calibration_prompts", r.cal},
                           {"voting", r.voting},
                           {"accuracy", r.accuracy},
                           {"own_similarity", r.right_similarity},
                           {"best_other_similarity", r.best_wrong_similarity},
                           {"confusion", r.confusion}});
      if (r.voting != "max") continue;
      nlohmann::ordered_json& rj = j["runs"].back();
      rj["own_thresholds"] = r.own_threshold;
      rj["rules"] = nlohmann::ordered_json::array();
      for (const Outcome& o : rules(r)) {
        rj["rules"].push_back(
            {{"rule", o.rule}, {"right", o.right}, {"fallback", o.fallback}, {"wrong", o.wrong}});
      }
    }
    j["model_bytes"] = engine->weight_bytes();
    j["probes"] = nlohmann::ordered_json::array();
    for (int64_t layers : layer_counts) {
      j["probes"].push_back({{"embedding_layers", layers},
                             {"bytes", probe_bytes[layers]},
                             {"match_over_prefill_time", probe_seconds[layers] / prefill_seconds}});
    }
    if (absl::Status s = common::WriteFileAtomically(json_out, j.dump(2) + "\n"); !s.ok()) Die(s);
  }
  return 0;
}
