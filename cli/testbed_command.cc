// premoe testbed: trains the testbed model and reports how its experts
// specialise by task.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/commands.h"
#include "premoe/common/file.h"
#include "premoe/common/status.h"
#include "premoe/model/engine.h"
#include "premoe/testbed/specialisation.h"
#include "premoe/testbed/trainer.h"
#include "premoe/tokenizer/tokenizer.h"

namespace premoe::cli {
namespace {

struct SpecialisationArgs {
  std::string model;
  std::string tasks = "all";
  std::string suite{testbed::kDefaultSuite};
  std::string split = "calibration";
  int64_t samples = 200;
  std::string json_out;
};

absl::Status RunSpecialisation(const SpecialisationArgs& args) {
  ASSIGN_OR_RETURN(std::vector<const testbed::Task*> tasks,
                   testbed::ParseTaskList(args.tasks, args.suite));
  testbed::SpecialisationOptions o;
  ASSIGN_OR_RETURN(o.split, testbed::ParseSplit(args.split));
  o.samples = args.samples;
  ASSIGN_OR_RETURN(std::unique_ptr<tokenizer::Tokenizer> tokenizer,
                   tokenizer::Tokenizer::FromFile(args.model + "/tokenizer.json"));
  model::EngineOptions eo;
  eo.dtype = "fp32";
  ASSIGN_OR_RETURN(std::unique_ptr<model::Engine> engine, model::Engine::Open(args.model, eo));
  ASSIGN_OR_RETURN(testbed::SpecialisationReport report,
                   testbed::MeasureSpecialisation(*engine, *tokenizer, tasks, o));
  if (!args.json_out.empty()) {
    RETURN_IF_ERROR(
        common::WriteFileAtomically(args.json_out, testbed::SpecialisationToJson(report)));
  }
  const std::string md = testbed::SpecialisationToMarkdown(report);
  std::fwrite(md.data(), 1, md.size(), stdout);
  return absl::OkStatus();
}

}  // namespace

void RegisterTestbed(CLI::App& app, int* exit_code) {
  CLI::App* cmd = app.add_subcommand(
      "testbed", "The testbed: a small task-specialised MoE the project trains to measure quality");
  cmd->require_subcommand(1);

  auto train = std::make_shared<testbed::TrainOptions>();
  CLI::App* t = cmd->add_subcommand(
      "train", "Train the testbed model from scratch (deterministic from --seed) into --out");
  t->add_option("--out", train->out_dir, "Output model directory")->required();
  t->add_option("--seed", train->seed)->capture_default_str();
  t->add_option("--steps", train->steps)->capture_default_str();
  t->add_option("--suite", train->suite, "Task suite: v1 or v2")->capture_default_str();
  t->add_option("--tasks", train->tasks, "all, or a comma-separated list of task names")
      ->capture_default_str();
  t->add_option("--batch-size", train->batch_size, "Sequences per step")->capture_default_str();
  t->add_option("--lr", train->lr, "Peak AdamW learning rate")->capture_default_str();
  t->add_option("--text-weight", train->text_weight,
                "Sampling weight of a text task (an exact-match task has 1)")
      ->capture_default_str();
  t->add_flag("!--uniform-sampling", train->adaptive_sampling,
              "Sample exact-match tasks evenly (default: in proportion to their recent loss)");
  t->add_option("--checkpoint-every", train->checkpoint_every,
                "Also write the model every N steps; 0 = at the end only")
      ->capture_default_str();
  t->add_option("--warmup-steps", train->warmup_steps)->capture_default_str();
  t->add_option("--aux-loss-coef", train->aux_loss_coef,
                "Softmax routers: load-balancing loss coefficient")
      ->capture_default_str();
  t->add_option("--bias-update-rate", train->bias_update_rate,
                "Sigmoid routers: step of the auxiliary-loss-free bias update")
      ->capture_default_str();
  t->add_option("--seq-aux-loss-coef", train->seq_aux_loss_coef,
                "Sigmoid routers: sequence-wise balance loss coefficient")
      ->capture_default_str();
  t->add_option("--threads", train->threads, "Intra-op threads; 0 = libtorch's default")
      ->capture_default_str();
  t->add_option("--architecture", train->shape.architecture, "qwen3_moe or deepseek_v3")
      ->capture_default_str();
  t->add_option("--hidden", train->shape.hidden)->capture_default_str();
  t->add_option("--layers", train->shape.layers)->capture_default_str();
  t->add_option("--experts", train->shape.experts)->capture_default_str();
  t->add_option("--top-k", train->shape.top_k)->capture_default_str();
  t->add_option("--expert-intermediate", train->shape.expert_intermediate)->capture_default_str();
  t->add_option("--heads", train->shape.heads)->capture_default_str();
  t->add_option("--kv-heads", train->shape.kv_heads)->capture_default_str();
  t->add_option("--dense-layers", train->shape.dense_layers, "deepseek_v3: first dense layers")
      ->capture_default_str();
  t->add_option("--shared-experts", train->shape.shared_experts)->capture_default_str();
  t->add_option("--groups", train->shape.groups, "deepseek_v3: expert groups")
      ->capture_default_str();
  t->add_option("--topk-groups", train->shape.topk_groups)->capture_default_str();
  t->add_option("--routed-scaling-factor", train->shape.routed_scaling_factor)
      ->capture_default_str();
  t->add_option("--q-lora-rank", train->shape.q_lora_rank)->capture_default_str();
  t->add_option("--kv-lora-rank", train->shape.kv_lora_rank)->capture_default_str();
  t->add_option("--qk-nope-head-dim", train->shape.qk_nope_head_dim)->capture_default_str();
  t->add_option("--qk-rope-head-dim", train->shape.qk_rope_head_dim)->capture_default_str();
  t->add_option("--v-head-dim", train->shape.v_head_dim)->capture_default_str();
  t->callback([train, exit_code] {
    // The manifest records the command line as given.
    // (/proc reports a size of 0, so common::ReadFile would read nothing.)
    std::ifstream in("/proc/self/cmdline", std::ios::binary);
    const std::string cmdline((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
    train->command =
        absl::StrJoin(absl::StrSplit(absl::StripSuffix(cmdline, std::string(1, '\0')), '\0'), " ");
    train->on_progress = [](const testbed::TrainProgress& p) {
      std::fprintf(stderr,
                   "step %lld/%lld  loss %.4f  aux %.3f  max/mean load %.2f  lr %.2e  %.0fs (eta "
                   "%.0fs)\n",
                   static_cast<long long>(p.step), static_cast<long long>(p.steps), p.loss,
                   p.aux_loss, p.max_load_ratio, p.lr, p.elapsed_s,
                   p.elapsed_s / p.step * static_cast<double>(p.steps - p.step));
    };
    auto report = testbed::Train(*train);
    if (report.ok()) {
      std::printf("trained %lld steps in %.0f s, final loss %.4f -> %s\n",
                  static_cast<long long>(train->steps), report->wall_s, report->final_loss,
                  train->out_dir.c_str());
    }
    *exit_code = ReportStatus("testbed train", report.status());
  });

  auto spec = std::make_shared<SpecialisationArgs>();
  CLI::App* s = cmd->add_subcommand(
      "specialisation",
      "Per MoE layer, the Jaccard overlap of tasks' top-half expert sets (by selection "
      "frequency) beside that of random sets: a markdown table, and JSON with --json-out");
  s->add_option("--model", spec->model, "Model directory")->required();
  s->add_option("--suite", spec->suite, "Task suite: v1 or v2")->capture_default_str();
  s->add_option("--tasks", spec->tasks)->capture_default_str();
  s->add_option("--split", spec->split)->capture_default_str();
  s->add_option("--samples", spec->samples, "Samples per task")->capture_default_str();
  s->add_option("--json-out", spec->json_out, "Write the full report (frequencies too) here");
  s->callback([spec, exit_code] {
    *exit_code = ReportStatus("testbed specialisation", RunSpecialisation(*spec));
  });
}

}  // namespace premoe::cli
