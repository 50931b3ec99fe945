// premoe patterns: the pattern store from the command line, against a store
// directory or a store service (--store DIR | host:port): list, show and
// delete patterns, export them to a portable archive and import one (patterns
// move between clusters), search with a prompt, and check a store directory.

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "cli/commands.h"
#include "cli/store_arg.h"
#include "nlohmann/json.hpp"
#include "premoe/common/status.h"
#include "premoe/router/matcher.h"
#include "premoe/store/archive.h"

namespace premoe::cli {
namespace {

using Json = nlohmann::ordered_json;

struct PatternsArgs {
  std::string store;
  bool json = false;
  // --id or --task (show, delete).
  uint64_t id = 0;
  std::string task;
  int32_t top = 8;
  // export
  std::string out;
  std::vector<std::string> tasks;
  // import
  std::string in;
  bool dry_run = false;
  // search
  std::string model;
  std::string prompt;
  int32_t k = 5;
  std::string voting = "max";
  // repair
  std::string to;
};

// UTC ISO-8601; `fraction` adds the microseconds (JSON keeps them whole).
std::string Iso8601(int64_t unix_micros, bool fraction) {
  return absl::FormatTime(fraction ? "%Y-%m-%dT%H:%M:%E6SZ" : "%Y-%m-%dT%H:%M:%SZ",
                          absl::FromUnixMicros(unix_micros), absl::UTCTimeZone());
}

absl::Status Print(absl::string_view text) {
  if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size() || std::fflush(stdout) != 0) {
    return absl::UnavailableError("failed to write to stdout");
  }
  return absl::OkStatus();
}

// Every summary in the store, a page at a time.
absl::StatusOr<std::vector<store::PatternSummary>> ListAll(store::PatternStore& s) {
  std::vector<store::PatternSummary> out;
  for (store::ListRequest request{.page_size = 1000};;) {
    ASSIGN_OR_RETURN(store::ListPage page, s.List(request));
    out.insert(out.end(), page.patterns.begin(), page.patterns.end());
    if (page.next_page_token.empty()) return out;
    request.page_token = page.next_page_token;
  }
}

// The pattern --id or --task names (CLI11 makes sure it is exactly one).
absl::StatusOr<store::Pattern> Lookup(store::PatternStore& s, const PatternsArgs& args) {
  return args.task.empty() ? s.Get(args.id) : s.GetByTask(args.task);
}

absl::Status RunList(const PatternsArgs& args) {
  ASSIGN_OR_RETURN(std::unique_ptr<store::PatternStore> s, OpenStore(args.store, false));
  ASSIGN_OR_RETURN(std::vector<store::PatternSummary> all, ListAll(*s));
  if (args.json) {
    Json list = Json::array();
    for (const store::PatternSummary& p : all) {
      list.push_back({{"id", p.id},
                      {"task", p.task_name},
                      {"metric", p.metric},
                      {"layers", p.num_layers},
                      {"embeddings", p.num_embeddings},
                      {"created", Iso8601(p.created_unix_micros, true)}});
    }
    return Print(list.dump(2) + "\n");
  }
  int width = 4;
  for (const store::PatternSummary& p : all) width = std::max<int>(width, p.task_name.size());
  std::string out = absl::StrFormat("%6s  %-*s  %-10s %6s %10s  %s\n", "id", width, "task",
                                    "metric", "layers", "embeddings", "created");
  for (const store::PatternSummary& p : all) {
    absl::StrAppendFormat(&out, "%6d  %-*s  %-10s %6d %10d  %s\n", p.id, width, p.task_name,
                          p.metric, p.num_layers, p.num_embeddings,
                          Iso8601(p.created_unix_micros, false));
  }
  return Print(out);
}

// The `top` experts of a layer by score, best first (ties: lower id first).
std::vector<int> TopExperts(const std::vector<float>& scores, int top) {
  std::vector<int> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  const auto n = std::min<std::size_t>(top, order.size());
  std::partial_sort(order.begin(), order.begin() + n, order.end(), [&](int a, int b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  order.resize(n);
  return order;
}

absl::Status RunShow(const PatternsArgs& args) {
  ASSIGN_OR_RETURN(std::unique_ptr<store::PatternStore> s, OpenStore(args.store, false));
  ASSIGN_OR_RETURN(store::Pattern p, Lookup(*s, args));
  const std::size_t dim = p.embeddings.empty() ? 0 : p.embeddings[0].values.size();
  if (args.json) {
    Json j;
    j["id"] = p.id;
    j["task"] = p.task_name;
    j["model_fingerprint"] = p.model_fingerprint;
    j["metric"] = p.metric;
    j["metric_params"] = p.metric_params;
    j["calibration"] = {{"samples", p.calibration_samples}, {"tokens", p.calibration_tokens}};
    j["created"] = Iso8601(p.created_unix_micros, true);
    j["embeddings"] = {{"count", p.embeddings.size()}, {"dim", dim}};
    Json layers = Json::array();
    for (const store::LayerScores& l : p.layers) {
      Json top = Json::array();
      for (int e : TopExperts(l.scores, args.top))
        top.push_back({{"expert", e}, {"score", l.scores[e]}});
      layers.push_back({{"layer", l.layer}, {"experts", l.scores.size()}, {"top", top}});
    }
    j["layers"] = layers;
    return Print(j.dump(2) + "\n");
  }
  std::vector<std::string> params;
  for (const auto& [key, value] : p.metric_params) params.push_back(absl::StrCat(key, "=", value));
  std::string out = absl::StrFormat(
      "pattern %d: task %s\n  model        %s\n  metric       %s %s\n  calibration  %d samples, "
      "%d tokens\n  created      %s\n  embeddings   %d of dimension %d\n"
      "  top %d experts by score per layer (expert:score):\n",
      p.id, p.task_name, p.model_fingerprint, p.metric, absl::StrJoin(params, " "),
      p.calibration_samples, p.calibration_tokens, Iso8601(p.created_unix_micros, false),
      p.embeddings.size(), dim, args.top);
  for (const store::LayerScores& l : p.layers) {
    absl::StrAppendFormat(&out, "    layer %3d ", l.layer);
    for (int e : TopExperts(l.scores, args.top))
      absl::StrAppendFormat(&out, " %3d:%.4f", e, l.scores[e]);
    out += "\n";
  }
  return Print(out);
}

absl::Status RunDelete(const PatternsArgs& args) {
  ASSIGN_OR_RETURN(std::unique_ptr<store::PatternStore> s, OpenStore(args.store, false));
  ASSIGN_OR_RETURN(store::Pattern p, Lookup(*s, args));
  ASSIGN_OR_RETURN(uint64_t version, s->Delete(p.id));
  return Print(absl::StrFormat("deleted pattern %d (task %s); store version %d\n", p.id,
                               p.task_name, version));
}

absl::Status RunExport(const PatternsArgs& args) {
  ASSIGN_OR_RETURN(std::unique_ptr<store::PatternStore> s, OpenStore(args.store, false));
  ASSIGN_OR_RETURN(std::unique_ptr<store::PatternArchiveWriter> archive,
                   store::PatternArchiveWriter::Create(args.out));
  if (!args.tasks.empty()) {
    for (const std::string& task : args.tasks) {
      ASSIGN_OR_RETURN(store::Pattern p, s->GetByTask(task));
      RETURN_IF_ERROR(archive->Add(p));
    }
  } else {
    ASSIGN_OR_RETURN(std::vector<store::PatternSummary> all, ListAll(*s));
    for (const store::PatternSummary& summary : all) {
      absl::StatusOr<store::Pattern> p = s->Get(summary.id);
      if (absl::IsNotFound(p.status())) continue;  // deleted since it was listed
      RETURN_IF_ERROR(p.status());
      RETURN_IF_ERROR(archive->Add(*p));
    }
  }
  RETURN_IF_ERROR(archive->Commit());
  return Print(absl::StrFormat("exported %d patterns to %s\n", archive->count(), args.out));
}

absl::Status RunImport(const PatternsArgs& args) {
  // The whole archive is checked before the store is touched.
  ASSIGN_OR_RETURN(std::unique_ptr<store::PatternArchiveReader> archive,
                   store::PatternArchiveReader::Open(args.in));
  const std::vector<store::PatternArchiveReader::Entry>& entries = archive->entries();
  ASSIGN_OR_RETURN(std::unique_ptr<store::PatternStore> s, OpenStore(args.store, !args.dry_run));
  ASSIGN_OR_RETURN(store::StoreInfo info, s->Info());
  // Another model's patterns are refused before anything is written (a Put
  // would refuse them one by one, after the others went in). A new store
  // takes the model of the archive's first pattern.
  const std::string model = info.model_fingerprint.empty() && !entries.empty()
                                ? entries[0].model_fingerprint
                                : info.model_fingerprint;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].model_fingerprint != model) {
      return absl::FailedPreconditionError(absl::StrCat(
          args.in, ": record ", i, " (task ", entries[i].task_name, ") is a pattern of model ",
          entries[i].model_fingerprint, ", but ",
          info.model_fingerprint.empty() ? "the archive's first pattern is of model "
                                         : absl::StrCat("store ", args.store, " serves model "),
          model, "; nothing was imported"));
    }
  }
  ASSIGN_OR_RETURN(std::vector<store::PatternSummary> present, ListAll(*s));
  std::set<std::string> tasks;
  for (const store::PatternSummary& p : present) tasks.insert(p.task_name);
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const char* how = tasks.contains(entries[i].task_name) ? "replacing the store's" : "new";
    if (args.dry_run) {
      RETURN_IF_ERROR(Print(absl::StrFormat("would import %s (%s)\n", entries[i].task_name, how)));
      continue;
    }
    ASSIGN_OR_RETURN(store::Pattern p, archive->Read(i));
    ASSIGN_OR_RETURN(store::PutResult put,
                     common::WithContext(s->Put(p), absl::StrCat("importing task ", p.task_name)));
    RETURN_IF_ERROR(
        Print(absl::StrFormat("imported %s as id %d (%s)\n", p.task_name, put.id, how)));
  }
  return Print(args.dry_run ? absl::StrFormat("dry run: %d patterns checked, nothing written\n",
                                              entries.size())
                            : absl::StrFormat("imported %d patterns from %s into %s\n",
                                              entries.size(), args.in, args.store));
}

absl::Status RunSearch(const PatternsArgs& args) {
  ASSIGN_OR_RETURN(std::unique_ptr<store::PatternStore> s, OpenStore(args.store, false));
  ASSIGN_OR_RETURN(store::ListPage first, s->List({.page_size = 1}));
  if (first.patterns.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("store ", args.store, " holds no patterns"));
  }
  if (std::error_code ec; !std::filesystem::is_directory(args.model, ec)) {
    return absl::NotFoundError(absl::StrCat("--model ", args.model, ": no such directory"));
  }
  // The router's own matcher: the query is embedded as the patterns' prompts
  // were (their metric, their layers), and every candidate is listed.
  router::MatcherOptions mo;
  mo.model_dir = args.model;
  mo.min_similarity = -1;
  mo.voting = args.voting == "mean"    ? store::Voting::kMean
              : args.voting == "count" ? store::Voting::kCount
                                       : store::Voting::kMax;
  ASSIGN_OR_RETURN(std::unique_ptr<router::Matcher> matcher,
                   common::WithContext(router::Matcher::Open(mo, s.get()),
                                       absl::StrCat("--model ", args.model)));
  ASSIGN_OR_RETURN(router::MatchResult match, matcher->Match(args.prompt, args.k));
  const std::vector<store::SearchMatch>& matches = match.candidates;
  if (args.json) {
    Json list = Json::array();
    for (const store::SearchMatch& m : matches) {
      list.push_back(
          {{"id", m.id}, {"task", m.task_name}, {"similarity", m.similarity}, {"votes", m.votes}});
    }
    return Print(list.dump(2) + "\n");
  }
  std::string out =
      absl::StrFormat("%4s %6s  %-20s %10s %5s\n", "rank", "id", "task", "similarity", "votes");
  for (std::size_t i = 0; i < matches.size(); ++i) {
    absl::StrAppendFormat(&out, "%4d %6d  %-20s %10.4f %5d\n", i + 1, matches[i].id,
                          matches[i].task_name, matches[i].similarity, matches[i].votes);
  }
  return Print(out);
}

absl::Status RunCheck(const PatternsArgs& args) {
  ASSIGN_OR_RETURN(std::unique_ptr<store::EmbeddedPatternStore> s,
                   OpenLocalStore(args.store, false));
  RETURN_IF_ERROR(s->Verify());
  ASSIGN_OR_RETURN(store::StoreInfo info, s->Info());
  return Print(absl::StrFormat("OK: %d patterns, %d embeddings, version %d; index %s in %.1f ms\n",
                               info.num_patterns, info.num_embeddings, info.version,
                               info.index_source, info.index_open_micros / 1000.0));
}

// Bytes of the files in `dir`.
std::uintmax_t DirectoryBytes(const std::string& dir) {
  std::uintmax_t total = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.is_regular_file(ec)) total += entry.file_size(ec);
  }
  return total;
}

absl::Status RunCompact(const PatternsArgs& args) {
  const std::uintmax_t before = DirectoryBytes(args.store);
  {
    ASSIGN_OR_RETURN(std::unique_ptr<store::EmbeddedPatternStore> s,
                     OpenLocalStore(args.store, false));
    RETURN_IF_ERROR(s->Compact());
  }
  return Print(absl::StrFormat("compacted %s: %d bytes before, %d after\n", args.store, before,
                               DirectoryBytes(args.store)));
}

absl::Status RunRepair(const PatternsArgs& args) {
  ASSIGN_OR_RETURN(store::EmbeddedPatternStore::RepairReport report,
                   store::EmbeddedPatternStore::Repair(args.store, args.to));
  std::string out = absl::StrFormat(
      "repaired %s into %s (%s): %d patterns, %d embeddings, version %d\n", args.store, args.to,
      report.method, report.num_patterns, report.num_embeddings, report.version);
  if (!report.acknowledged) {
    absl::StrAppend(&out,
                    "the damaged store's record of acknowledged changes is unreadable: "
                    "compare with what its clients were told\n");
  } else if (*report.acknowledged > report.version) {
    absl::StrAppendFormat(&out,
                          "LOST: the damaged store had acknowledged version %d; the %d change(s) "
                          "after version %d are not in the repaired store\n",
                          *report.acknowledged, *report.acknowledged - report.version,
                          report.version);
  } else {
    absl::StrAppend(&out, "every acknowledged change is in the repaired store\n");
  }
  return Print(out);
}

}  // namespace

void RegisterPatterns(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<PatternsArgs>();
  CLI::App* cmd = app.add_subcommand(
      "patterns",
      "The pattern store: list, show, delete, export, import, search, check, compact or repair the "
      "patterns in a store directory or service");
  cmd->require_subcommand(1);
  auto add = [&](const char* name, const char* help, absl::Status (*run)(const PatternsArgs&)) {
    CLI::App* sub = cmd->add_subcommand(name, help);
    sub->add_option("--store", args->store, "Store directory, or host:port of a store service")
        ->required();
    sub->callback([args, exit_code, name, run] {
      *exit_code = ReportStatus(absl::StrCat("patterns ", name), run(*args));
    });
    return sub;
  };
  auto which = [&](CLI::App* sub) {
    CLI::Option_group* group = sub->add_option_group("pattern", "Which pattern (one of)");
    group->add_option("--id", args->id, "Pattern id");
    group->add_option("--task", args->task, "Task name");
    group->require_option(1);
  };

  add("list", "Every pattern: id, task, metric, layers, embeddings, created (UTC)", RunList)
      ->add_flag("--json", args->json, "Print a JSON array");

  CLI::App* show =
      add("show", "Everything about one pattern, with each layer's top experts by score", RunShow);
  which(show);
  show->add_option("--top", args->top, "Experts shown per layer")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  show->add_flag("--json", args->json, "Print JSON");

  which(add("delete", "Delete one pattern", RunDelete));

  CLI::App* exp =
      add("export", "Write the store's patterns (or the named ones) to an archive", RunExport);
  exp->add_option("--out", args->out, "Archive file to write")->required();
  exp->add_option("--tasks", args->tasks, "Only these tasks, comma-separated")->delimiter(',');

  CLI::App* imp = add("import", "Put an archive's patterns into the store", RunImport);
  imp->footer(
      "Task names and creation times are kept; ids are the store's, and a task already in the "
      "store is replaced. The whole archive is validated first, and patterns of another model "
      "than the store's are refused before anything is written. A missing store directory is "
      "created (not with --dry-run).");
  imp->add_option("--in", args->in, "Archive file (premoe patterns export)")->required();
  imp->add_flag("--dry-run", args->dry_run,
                "Validate and say what would be imported; write nothing");

  CLI::App* search = add("search", "The patterns nearest to a prompt", RunSearch);
  search->footer(
      "The prompt is embedded as the router embeds a query: as `profile` embedded the "
      "calibration prompts, with the metric and parameters recorded in the store's first "
      "pattern (lowest id) and over as many MoE layers as the store's embeddings span.");
  search->add_option("--model", args->model, "Model directory the patterns were profiled on")
      ->required();
  search->add_option("--prompt", args->prompt, "Query text")->required();
  search->add_option("--k", args->k, "Patterns to show")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  search
      ->add_option("--voting", args->voting,
                   "How a pattern's embeddings combine: max (best one), mean, count")
      ->capture_default_str()
      ->check(CLI::IsMember({"max", "mean", "count"}));
  search->add_flag("--json", args->json, "Print a JSON array");

  const CLI::Validator local_dir(
      [](const std::string& where) {
        return IsRemoteStore(where) ? "needs a store directory, not a service address"
                                    : std::string();
      },
      "DIR");
  add("check", "Verify a store directory: prints OK, or the first violation (exit 1)", RunCheck)
      ->footer(
          "Every acknowledged change is in RocksDB, every pattern has its task entry and its "
          "embeddings, nothing is orphaned, and the index holds exactly the stored embeddings.")
      ->get_option("--store")
      ->check(local_dir);

  add("compact", "Flush and compact a store directory (space of deleted patterns comes back)",
      RunCompact)
      ->get_option("--store")
      ->check(local_dir);

  CLI::App* repair = add(
      "repair", "Recover what is readable of a damaged store directory into a new one", RunRepair);
  repair->footer(
      "The damaged store is only read. Its files are copied to --to and recovered there: the "
      "write-ahead logs up to their first damaged record (RocksDB's recovery), or, when its "
      "MANIFEST is lost too, every intact table (RocksDB's RepairDB). Prints what was recovered "
      "and how many acknowledged changes are missing. Stop every process using the store first.");
  repair->get_option("--store")->check(local_dir);
  repair->add_option("--to", args->to, "New directory for the repaired store")->required();
}

}  // namespace premoe::cli
