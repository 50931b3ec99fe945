#include "cli/worker_flags.h"

#include "absl/strings/str_cat.h"

namespace premoe::cli {

void AddWorkerFlags(CLI::App& cmd, ServeArgs& args, absl::string_view p) {
  // Each text reads alone or after "Worker: ": prose capitalised, names not.
  cmd.add_option("--cache", args.cache,
                 absl::StrCat(p,
                              "Byte budget of resident routed experts, e.g. 64MiB (default: all of "
                              "them)"));
  cmd.add_option("--dtype", args.dtype, absl::StrCat(p, "bf16 or fp32"))->capture_default_str();
  cmd.add_option(
      "--expert-pack", args.expert_pack,
      absl::StrCat(p, "Read experts from this pack (premoe repack), not the checkpoint"));
  cmd.add_option(
         "--quant", args.quant,
         absl::StrCat(p,
                      "How matrices are held: FORMAT for routed experts (none, int8, int4, "
                      "int4:gN) and CLASS=FORMAT items (attention, mlp, shared, lm_head, all), "
                      "comma-separated; CPU only"))
      ->capture_default_str();
  cmd.add_flag("--reserve-cache", args.reserve_cache,
               absl::StrCat(p, "Fault in the whole expert cache at start, so loads only copy"));
  cmd.add_option("--device", args.device, absl::StrCat(p, "cpu, cuda or cuda:N"))
      ->capture_default_str();
  cmd.add_option("--max-batch", args.max_batch, absl::StrCat(p, "Sequences decoded together"))
      ->capture_default_str();
  cmd.add_option("--max-queue", args.max_queue,
                 absl::StrCat(p, "Requests waiting for a slot before refusals"))
      ->capture_default_str();
  cmd.add_option(
         "--world-size", args.world_size,
         absl::StrCat(p,
                      "Expert-parallel ranks, each caching its share of the experts (Gloo on "
                      "CPU; with --device cuda, rank r on cuda:r over NCCL)"))
      ->capture_default_str();
}

}  // namespace premoe::cli
