// InferenceClient: a client of premoe.v1.Inference, for the CLI, the
// benchmarks and tests. Speaks the router's plain structs; gRPC errors come
// back as absl::Status with the same code and message.
//
// Thread-safe: calls may run concurrently on one client.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "premoe/common/tls_files.h"
#include "premoe/router/matcher.h"
#include "premoe/router/router.h"

namespace premoe::router {

class InferenceClient {
 public:
  struct Options {
    // "host:port". Required.
    std::string address;
    // Deadline of each call. Default 5 min.
    std::chrono::milliseconds timeout{300000};
    // Sent as "authorization: Bearer <api_key>" on every call (see
    // premoe/proto/auth.h). Default "": none.
    std::string api_key;
    // TLS: ca verifies the server; cert and key are presented for mutual
    // TLS (premoe/common/tls_files.h). Default: plaintext.
    common::TlsFiles tls;
  };
  static absl::StatusOr<std::unique_ptr<InferenceClient>> Open(const Options& options);
  ~InferenceClient();

  // Streams the text through `on_text`; returns the whole result (text,
  // usage, route, times) from the last message. request.deadline, when
  // set, replaces the default timeout; canceller is not sent.
  absl::StatusOr<InferenceResult> Generate(
      const InferenceRequest& request,
      const std::function<void(const std::string&)>& on_text = nullptr);
  absl::StatusOr<MatchResult> Match(const std::string& prompt, int32_t k = 3);

  struct Impl;

 private:
  explicit InferenceClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace premoe::router
