#include "cli/commands.h"

#include <cstdio>
#include <string>

#include "premoe/proto/auth.h"

namespace premoe::cli {

const char kBudgetHelp[] =
    "K/M (top-K routing over the M best experts of every MoE layer, e.g. 8/128), N% (that share "
    "of every layer's experts, e.g. 50%), bytes:SIZE (all kept experts within SIZE, e.g. "
    "bytes:2GiB) or coverage:F (per layer, the fewest best experts holding a share F of its "
    "score mass, e.g. coverage:0.9)";

namespace {
std::string& ClientKeyStorage() {
  static std::string* key = new std::string;
  return *key;
}
}  // namespace

const std::string& ClientKey() { return ClientKeyStorage(); }

common::TlsFiles& ProcessTls() {
  static common::TlsFiles* tls = new common::TlsFiles;
  return *tls;
}

absl::Status LoadClientKey(const std::string& key_file) {
  absl::StatusOr<std::string> key = rpc::LoadClientKey(key_file);
  if (!key.ok()) return key.status();
  ClientKeyStorage() = *std::move(key);
  return absl::OkStatus();
}

int ReportStatus(absl::string_view command, const absl::Status& status) {
  if (status.ok()) return 0;
  std::fprintf(stderr, "premoe %s: %s\n", std::string(command).c_str(), status.ToString().c_str());
  return 1;
}

}  // namespace premoe::cli
