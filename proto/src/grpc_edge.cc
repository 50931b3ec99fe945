#include "premoe/proto/grpc_edge.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "premoe/common/file.h"
#include "premoe/common/status.h"

namespace premoe::rpc {

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

namespace {

// Reads a PEM file now, so that a missing or malformed one is named.
absl::Status CheckPem(const std::string& path, absl::string_view what) {
  absl::StatusOr<std::string> text = common::ReadFile(path, 1 << 20);
  if (!text.ok())
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", text.status().message()));
  if (text->find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": not a PEM file"));
  }
  return absl::OkStatus();
}

// How often gRPC looks at the files for a renewed certificate.
constexpr unsigned kTlsRefreshSeconds = 60;

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const common::TlsFiles& tls) {
  if (!tls.server_tls()) {
    if (!tls.key.empty() || !tls.client_ca.empty()) {
      return absl::InvalidArgumentError(
          "TLS: a key or client CA without a certificate (--tls-cert)");
    }
    return grpc::InsecureServerCredentials();
  }
  if (tls.key.empty())
    return absl::InvalidArgumentError("TLS: a certificate without its key (--tls-key)");
  RETURN_IF_ERROR(CheckPem(tls.cert, "--tls-cert"));
  RETURN_IF_ERROR(CheckPem(tls.key, "--tls-key"));
  if (!tls.client_ca.empty()) RETURN_IF_ERROR(CheckPem(tls.client_ca, "--tls-client-ca"));
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      tls.key, tls.cert, tls.client_ca, kTlsRefreshSeconds);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (!tls.client_ca.empty()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const common::TlsFiles& tls) {
  if (!tls.client_tls()) return grpc::InsecureChannelCredentials();
  RETURN_IF_ERROR(CheckPem(tls.ca, "--tls-ca"));
  const bool identity = tls.server_tls() && !tls.key.empty();
  if (identity) {
    RETURN_IF_ERROR(CheckPem(tls.cert, "--tls-cert"));
    RETURN_IF_ERROR(CheckPem(tls.key, "--tls-key"));
  }
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      identity ? tls.key : "", identity ? tls.cert : "", tls.ca, kTlsRefreshSeconds);
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(provider);
  options.watch_root_certs();
  if (identity) options.watch_identity_key_cert_pairs();
  return grpc::experimental::TlsCredentials(options);
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
  // Accept the keepalive pings premoe's clients send (MakeChannel) instead of
  // closing the connection as a ping flood.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             kKeepaliveTimeMs / 2);
  int port = 0;
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      ServerCredentials(options.tls);
  if (!credentials.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.who, ": ", credentials.status().message()));
  }
  builder.AddListeningPort(options.address, *credentials, &port);
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
