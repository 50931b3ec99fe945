// PatternStoreServer: serves a PatternStore (normally an EmbeddedPatternStore)
// as the gRPC service premoe.v1.PatternStore.
//
// The service uses gRPC's callback API and never blocks a reactor: unary
// calls run on the server's own executor (RocksDB fsyncs and FAISS searches
// block), and each Watch is a server-write reactor fed by a store watch whose
// thread waits when the client reads slowly. absl::Status becomes
// grpc::Status here and only here (the codes are the same).
//
// Thread-safe. The server does not own the store, which must outlive it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "premoe/common/tls_files.h"
#include "premoe/store/pattern_store.h"

namespace premoe::rpc {
class Authenticator;  // premoe/proto/auth.h
}  // namespace premoe::rpc

namespace premoe::store {

class PatternStoreServer {
 public:
  struct Options {
    // Address to listen on. Default "127.0.0.1:0" (loopback, any free port;
    // see port()). Use "0.0.0.0:PORT" to serve a cluster.
    std::string address = "127.0.0.1:0";
    // Threads that run unary calls. Default 4.
    std::int32_t executor_threads = 4;
    // Largest message received or sent. Default 128 MiB.
    std::int32_t max_message_bytes = 128 << 20;
    // Watch streams one client host may hold open at once (each costs a
    // thread of the store until it ends); one more is RESOURCE_EXHAUSTED.
    // A router holds one. Default 16.
    std::int32_t max_watches_per_client = 16;
    // API keys (premoe/proto/auth.h): Put and Delete are admin calls, the
    // rest API calls. Default null: no keys asked.
    std::shared_ptr<const rpc::Authenticator> auth;
    // TLS: this server's certificate and key, and client_ca for mutual TLS
    // (premoe/common/tls_files.h). Default: plaintext.
    common::TlsFiles tls;
    absl::Status Validate() const;
  };

  // Binds and starts serving. UNAVAILABLE if the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<PatternStoreServer>> Start(const Options& options,
                                                                   PatternStore* store);
  // Shutdown().
  ~PatternStoreServer();

  // The bound port (the chosen one when the address asked for port 0).
  int port() const;
  // "127.0.0.1:<port>" style address clients can dial.
  std::string address() const;

  // Ends open Watch streams (clients see CANCELLED or UNAVAILABLE), waits for
  // running calls, and stops. Idempotent.
  void Shutdown();

  struct Impl;

 private:
  explicit PatternStoreServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace premoe::store
