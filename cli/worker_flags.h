// The worker flags that `premoe serve` (all and worker roles) and
// `premoe worker serve` share, registered in one place so the two commands
// take the same spellings, defaults and help.
#pragma once

#include "CLI/CLI.hpp"
#include "absl/strings/string_view.h"
#include "cli/serve.h"

namespace premoe::cli {

// Adds --cache, --dtype, --expert-pack, --quant, --reserve-cache, --device,
// --max-batch, --max-queue and --world-size to `cmd`, bound to `args`
// (which must outlive the parse). Every help text starts with `help_prefix`,
// e.g. "Worker: " where the command serves other roles too; empty for none.
// The texts read alone or after such a prefix.
void AddWorkerFlags(CLI::App& cmd, ServeArgs& args, absl::string_view help_prefix);

}  // namespace premoe::cli
