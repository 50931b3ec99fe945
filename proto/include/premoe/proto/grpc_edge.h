// What every gRPC edge of premoe (the store's, the worker's and the router's
// servers and clients) does the same way: status conversion, listen
// addresses, starting and stopping a server, client channels and deadlines.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/impl/service_type.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/status.h"
#include "premoe/common/net.h"
#include "premoe/common/tls_files.h"

namespace premoe::rpc {

// Longest status message sent: messages travel in a trailer, and one that
// echoes a huge request field (a 10 KB task name) would exceed gRPC's
// metadata limit and turn into RESOURCE_EXHAUSTED.
inline constexpr std::size_t kMaxStatusMessageBytes = 1024;

// absl::Status <-> grpc::Status. Their codes are the same numbers (both are
// google.rpc.Code), so the conversion keeps the code, and the message up to
// kMaxStatusMessageBytes (cut at a character boundary, saying how long it was).
inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  std::string message(status.message());
  if (message.size() > kMaxStatusMessageBytes) {
    std::size_t cut = kMaxStatusMessageBytes - 64;
    while (cut > 0 && (static_cast<unsigned char>(message[cut]) & 0xC0) == 0x80) --cut;
    message = absl::StrCat(message.substr(0, cut), "... (", message.size(), " bytes in all)");
  }
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::move(message));
}

inline absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// gRPC credentials from TLS files, with gRPC's own TLS stack: the files are
// watched and re-read when they change (a renewed certificate is used
// without a restart). Each file is read once here so that a missing or
// malformed one is INVALID_ARGUMENT naming it, not a handshake failure later.
// Insecure credentials when TLS is off for that side (TlsFiles).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const common::TlsFiles& tls);
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const common::TlsFiles& tls);

// HTTP/2 keepalive on every premoe channel: a ping after this long, and the
// connection (with its calls, UNAVAILABLE) given up when the answer takes
// longer than kKeepaliveTimeoutMs. A peer that stopped answering (SIGSTOP, a
// frozen node) would otherwise hold a stream until its deadline (minutes);
// servers accept pings this often (Server::Start).
inline constexpr int kKeepaliveTimeMs = 10'000;
inline constexpr int kKeepaliveTimeoutMs = 5'000;

// A channel to `address` with both message limits and keepalive set, over
// TLS when tls.client_tls(). INVALID_ARGUMENT, naming `who`, when gRPC cannot
// make one.
inline absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(
    absl::string_view who, const std::string& address, int32_t max_message_bytes,
    const common::TlsFiles& tls = {}) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(max_message_bytes);
  args.SetMaxSendMessageSize(max_message_bytes);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = ChannelCredentials(tls);
  if (!credentials.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": ", credentials.status().message()));
  }
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(address, *credentials, args);
  if (!channel) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": cannot make a channel to ", address));
  }
  return channel;
}

// premoe/common/net.h's, where every edge (gRPC, HTTP, metrics) finds it.
using common::HostPort;
using common::ParseHostPort;

// The host clients dial for a server listening on `listen_address`
// ("host:port"): a wildcard host becomes loopback.
inline std::string DialableHost(const std::string& listen_address) {
  std::string host = listen_address.substr(0, listen_address.rfind(':'));
  return host == "0.0.0.0" || host == "[::]" ? "127.0.0.1" : host;
}

// Sets the deadline of a client call: `deadline` when given, else `timeout`
// from now. Every premoe client call goes through here, so none waits
// without a deadline.
inline void SetDeadline(grpc::ClientContext& ctx,
                        std::optional<std::chrono::system_clock::time_point> deadline,
                        std::chrono::milliseconds timeout) {
  ctx.set_deadline(deadline.value_or(std::chrono::system_clock::now() + timeout));
}

// How a premoe server listens and what it runs beside its services.
struct ServerOptions {
  // Names the server in errors and logs ("worker server"). Required.
  std::string who;
  // "host:port" to listen on (ParseHostPort). Default "127.0.0.1:0":
  // loopback, any free port; "0.0.0.0:PORT" serves a cluster.
  std::string address = "127.0.0.1:0";
  // Largest message received. Default 4 MiB (gRPC's own default).
  int32_t max_receive_bytes = 4 << 20;
  // Largest message sent; 0 = gRPC's default (no limit). Default 0.
  int32_t max_send_bytes = 0;
  // Services the standard grpc.health.v1.Health service reports SERVING
  // from the start, besides "" (the server as a whole), which always is.
  // Kubernetes' gRPC probes ask by name. Default none.
  std::vector<std::string> serving;
  // gRPC server reflection. It is a process-wide gRPC plugin: every server
  // built after one that asks for it has it too. Default false.
  bool reflection = false;
  // TLS (tls.cert and tls.key; tls.client_ca for mutual TLS). Default: none.
  common::TlsFiles tls;
  absl::Status Validate() const;
};

// A running gRPC server: ServerBuilder, the health service, the bound port
// and an orderly shutdown, the same for every premoe server.
//
// Thread-safe. The services are not owned and must outlive the Server (or
// its Shutdown).
class Server {
 public:
  // Registers `services` (callback or sync), binds and starts serving.
  // INVALID_ARGUMENT for bad options; UNAVAILABLE when the address cannot
  // be bound, including a port another server holds (no SO_REUSEPORT).
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options,
                                                       const std::vector<grpc::Service*>& services);
  // Shutdown(0).
  ~Server();

  // The bound port (the chosen one when the address asked for port 0).
  int port() const;
  // "host:port" clients can dial (a wildcard host becomes 127.0.0.1).
  std::string address() const;
  // Reports `service` SERVING or NOT_SERVING on the health service. A no-op
  // once Shutdown has begun (the server then reports NOT_SERVING).
  void SetServing(const std::string& service, bool serving);

  // Reports NOT_SERVING, stops accepting calls, cancels the calls still
  // running after `grace`, and returns once every call has ended. Idempotent.
  void Shutdown(std::chrono::milliseconds grace = std::chrono::milliseconds(0));

 private:
  Server(std::string who, std::unique_ptr<grpc::Server> server, std::string host, int port);

  const std::string who_;
  const std::string host_;
  const int port_;
  absl::Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  // Null once shut down.
  std::unique_ptr<grpc::Server> server_ ABSL_GUARDED_BY(mu_);
};

}  // namespace premoe::rpc
