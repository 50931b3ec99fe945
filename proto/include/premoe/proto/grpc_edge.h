// What every gRPC edge of premoe (the store's and the worker's servers and
// clients) does the same way: status conversion, client channels, and the
// address a server's clients dial.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/status.h"

namespace premoe::rpc {

// absl::Status <-> grpc::Status. Their codes are the same numbers (both are
// google.rpc.Code), so the conversion keeps code and message.
inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

inline absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// An insecure channel to `address` with both message limits set.
// INVALID_ARGUMENT, naming `who`, when gRPC cannot make one.
inline absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(absl::string_view who,
                                                                  const std::string& address,
                                                                  int32_t max_message_bytes) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(max_message_bytes);
  args.SetMaxSendMessageSize(max_message_bytes);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  if (!channel) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": cannot make a channel to ", address));
  }
  return channel;
}

// The host clients dial for a server listening on `listen_address`
// ("host:port"): a wildcard host becomes loopback.
inline std::string DialableHost(const std::string& listen_address) {
  std::string host = listen_address.substr(0, listen_address.rfind(':'));
  return host == "0.0.0.0" || host == "[::]" ? "127.0.0.1" : host;
}

}  // namespace premoe::rpc
