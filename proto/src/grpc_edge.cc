#include "premoe/proto/grpc_edge.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace premoe::rpc {

absl::StatusOr<HostPort> ParseHostPort(absl::string_view address) {
  const size_t colon = address.rfind(':');
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("\"", address, "\" is not host:port: ", why));
  };
  if (colon == absl::string_view::npos || colon == 0) return bad("no host");
  HostPort out;
  out.host = std::string(address.substr(0, colon));
  // An IPv6 host is bracketed, so its own colons cannot be taken for the
  // port's; an unbracketed host with a colon is ambiguous.
  const bool bracketed = out.host.size() > 2 && out.host.front() == '[' && out.host.back() == ']';
  if (!bracketed && out.host.find_first_of(":[]") != std::string::npos) {
    return bad("an IPv6 host needs brackets, as in [::1]:50051");
  }
  if (!absl::SimpleAtoi(address.substr(colon + 1), &out.port) || out.port < 0 || out.port > 65535) {
    return bad("the port is not a number from 0 to 65535");
  }
  return out;
}

absl::Status ServerOptions::Validate() const {
  if (who.empty()) return absl::InvalidArgumentError("ServerOptions.who is required");
  if (absl::StatusOr<HostPort> hp = ParseHostPort(address); !hp.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": ", hp.status().message()));
  }
  if (max_receive_bytes <= 0 || max_send_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, ": want max_receive_bytes > 0 and max_send_bytes >= 0; got ",
                     max_receive_bytes, " and ", max_send_bytes));
  }
  return absl::OkStatus();
}

Server::Server(std::string who, std::unique_ptr<grpc::Server> server, std::string host, int port)
    : who_(std::move(who)), host_(std::move(host)), port_(port), server_(std::move(server)) {}

Server::~Server() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options,
                                                      const std::vector<grpc::Service*>& services) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  // Both are process-wide switches that apply to servers built from now on.
  grpc::EnableDefaultHealthCheckService(true);
  if (options.reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default, so a second server on a busy port
  // would start and silently take half of its calls: make it fail instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  int port = 0;
  builder.AddListeningPort(options.address, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(options.max_receive_bytes);
  if (options.max_send_bytes > 0) builder.SetMaxSendMessageSize(options.max_send_bytes);
  for (grpc::Service* service : services) builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    return absl::UnavailableError(
        absl::StrCat(options.who, ": cannot listen on ", options.address));
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(true);
  for (const std::string& name : options.serving) health->SetServingStatus(name, true);
  return std::unique_ptr<Server>(
      new Server(options.who, std::move(server), DialableHost(options.address), port));
}

int Server::port() const { return port_; }

std::string Server::address() const { return absl::StrCat(host_, ":", port_); }

void Server::SetServing(const std::string& service, bool serving) {
  absl::MutexLock lock(&mu_);
  if (server_ == nullptr || shut_down_) return;
  server_->GetHealthCheckService()->SetServingStatus(service, serving);
}

void Server::Shutdown(std::chrono::milliseconds grace) {
  std::unique_ptr<grpc::Server> server;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
    server = std::move(server_);
  }
  // Outside the lock: calls ending now may still report health.
  server->GetHealthCheckService()->SetServingStatus(false);
  server->Shutdown(std::chrono::system_clock::now() + grace);
  server->Wait();
}

}  // namespace premoe::rpc
