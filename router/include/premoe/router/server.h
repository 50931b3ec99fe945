// InferenceServer: serves a Router as premoe.v1.Inference, with the standard
// grpc.health.v1.Health service (service "" SERVING once started;
// "premoe.v1.Inference" SERVING while the router is ready: patterns readable
// and a worker reachable) and gRPC server reflection.
//
// Limits: a request message over max_request_bytes, a prompt over the
// router's max_prompt_bytes and max_new_tokens over its limit are refused
// with INVALID_ARGUMENT naming the limit. The call's deadline passes to the
// worker; a caller that goes away (gRPC's OnCancel) cancels the worker's
// call, and so the worker's request. absl::Status becomes grpc::Status here
// and only here.
//
// gRPC's callback API over Router::GenerateAsync: no call holds a thread
// while it streams, so the server's threads do not grow with the number of
// streams. Match runs on the server's own executor. Thread-safe; the router
// must outlive the server.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "premoe/common/tls_files.h"
#include "premoe/router/router.h"

namespace premoe::rpc {
class Authenticator;  // premoe/proto/auth.h
}  // namespace premoe::rpc

namespace premoe::router {

class InferenceServer {
 public:
  struct Options {
    // Default "127.0.0.1:0" (loopback, a free port; see port()).
    std::string address = "127.0.0.1:0";
    // Largest request message accepted. Default 1 MiB.
    int32_t max_request_bytes = 1 << 20;
    // Threads that run Match (a probe forward pass). Default 2.
    int32_t executor_threads = 2;
    // API keys (premoe/proto/auth.h): Generate and Match are API calls.
    // Default null: no keys asked.
    std::shared_ptr<const rpc::Authenticator> auth;
    // TLS: this server's certificate and key, and client_ca for mutual TLS
    // (premoe/common/tls_files.h). Default: plaintext.
    common::TlsFiles tls;
    absl::Status Validate() const;
  };

  static absl::StatusOr<std::unique_ptr<InferenceServer>> Start(const Options& options,
                                                                Router* router);
  ~InferenceServer();

  int port() const;
  std::string address() const;
  // Stops accepting calls, cancels running ones after a short grace.
  // Idempotent.
  void Shutdown();

  struct Impl;

 private:
  explicit InferenceServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace premoe::router
