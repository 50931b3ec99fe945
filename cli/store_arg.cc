#include "cli/store_arg.h"

#include "absl/strings/match.h"
#include "cli/commands.h"
#include "premoe/common/status.h"
#include "premoe/store/grpc_client.h"

namespace premoe::cli {

bool IsRemoteStore(const std::string& where) {
  return !absl::StrContains(where, '/') && absl::StrContains(where, ':');
}

absl::StatusOr<std::unique_ptr<store::EmbeddedPatternStore>> OpenLocalStore(const std::string& dir,
                                                                            bool create) {
  store::EmbeddedPatternStore::Options o;
  o.path = dir;
  o.create_if_missing = create;
  return store::EmbeddedPatternStore::Open(o);
}

absl::StatusOr<std::unique_ptr<store::PatternStore>> OpenStore(const std::string& where,
                                                               bool create) {
  if (IsRemoteStore(where)) {
    store::GrpcPatternStoreClient::Options o;
    o.address = where;
    o.api_key = ClientKey();
    o.tls = ProcessTls();
    ASSIGN_OR_RETURN(auto client, store::GrpcPatternStoreClient::Open(o));
    return std::unique_ptr<store::PatternStore>(std::move(client));
  }
  ASSIGN_OR_RETURN(auto embedded, OpenLocalStore(where, create));
  return std::unique_ptr<store::PatternStore>(std::move(embedded));
}

}  // namespace premoe::cli
