// WorkerServer: serves a Worker as the gRPC service premoe.v1.Worker, with
// the standard grpc.health.v1.Health service beside it (SERVING once
// started).
//
// Prompts arrive as text and are encoded with the model's tokenizer;
// completions stream back as text deltas (tokenizer::TextStream), with stop
// strings matched in the decoded text. absl::Status becomes grpc::Status
// here and only here. Each Generate call holds a server thread while its
// request runs; the worker's scheduler never waits on a client (tokens are
// handed over through a queue the call's thread drains).
//
// Thread-safe. The worker and tokenizer must outlive the server.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "premoe/tokenizer/tokenizer.h"
#include "premoe/worker/worker.h"

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
  // Stops accepting calls, waits for running ones. Idempotent.
  void Shutdown();

  struct Impl;

 private:
  explicit WorkerServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace premoe::worker
