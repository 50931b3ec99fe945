// WorkerServer: serves a Worker as the gRPC service premoe.v1.Worker, with
// the standard grpc.health.v1.Health service beside it (SERVING once
// started).
//
// Prompts arrive as text and are encoded with the model's tokenizer;
// completions stream back as text deltas (tokenizer::TextStream), with stop
// strings matched in the decoded text. absl::Status becomes grpc::Status
// here and only here.
//
// gRPC's callback API: no call holds a thread while its request runs, so
// the server's threads do not grow with the number of streams. Generate
// submits its request to the worker and is fed by the worker's scheduler
// thread, which only queues tokens (a slow client never stalls a batch);
// they are written one message at a time. A client that cancels, or goes
// away, ends its request CANCELLED at the worker's next step. Prepare runs
// on the server's own executor.
//
// Thread-safe. The worker and tokenizer must outlive the server.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "premoe/common/tls_files.h"
#include "premoe/tokenizer/tokenizer.h"
#include "premoe/worker/worker.h"

namespace premoe::rpc {
class Authenticator;  // premoe/proto/auth.h
}  // namespace premoe::rpc

namespace premoe::worker {

class WorkerServer {
 public:
  struct Options {
    // Address to listen on. Default "127.0.0.1:0" (loopback, a free port;
    // see port()). "0.0.0.0:PORT" serves a cluster.
    std::string address = "127.0.0.1:0";
    // Largest message received or sent (patterns carry their embeddings).
    // Default 64 MiB.
    int32_t max_message_bytes = 64 << 20;
    // Longest prompt accepted, in bytes of text. Default 1 MiB.
    int64_t max_prompt_bytes = 1 << 20;
    // Threads that run Prepare (it loads experts). Default 2.
    int32_t executor_threads = 2;
    // API keys (premoe/proto/auth.h): Prepare is an admin call, Generate and
    // Status API calls. Default null: no keys asked.
    std::shared_ptr<const rpc::Authenticator> auth;
    // TLS: this server's certificate and key, and client_ca for mutual TLS
    // (premoe/common/tls_files.h). Default: plaintext.
    common::TlsFiles tls;
    absl::Status Validate() const;
  };

  // Binds and starts serving. UNAVAILABLE if the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<WorkerServer>> Start(const Options& options, Worker* worker,
                                                             const tokenizer::Tokenizer* tokenizer);
  // Shutdown().
  ~WorkerServer();

  int port() const;
  // "127.0.0.1:<port>" style address clients can dial.
  std::string address() const;
  // Stops accepting calls, cancels those still running after 200 ms, and
  // waits for them to end. Idempotent.
  void Shutdown();

  struct Impl;

 private:
  explicit WorkerServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace premoe::worker
