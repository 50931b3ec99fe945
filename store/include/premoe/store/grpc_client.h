// GrpcPatternStoreClient: PatternStore over a premoe.v1.PatternStore service
// (server.h). Every unary call carries a deadline (Options::rpc_timeout);
// Watch streams are re-opened from the last delivered version each time
// their deadline (Options::watch_timeout) passes, so they too are bounded
// without losing or repeating a change.
//
// Thread-safe: one client may serve any number of threads (one channel).
// Errors are the server's absl::Status codes and messages; transport
// failures arrive as UNAVAILABLE or DEADLINE_EXCEEDED naming the address.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "premoe/common/tls_files.h"
#include "premoe/store/pattern_store.h"

namespace premoe::store {

class GrpcPatternStoreClient final : public PatternStore {
 public:
  struct Options {
    // "host:port" of the service. Required.
    std::string address;
    // Deadline of each unary call. Default 10 s.
    std::chrono::milliseconds rpc_timeout{10'000};
    // Lifetime of one Watch stream before it is transparently re-opened.
    // Default 5 min.
    std::chrono::milliseconds watch_timeout{300'000};
    // Largest message sent or received. Default 128 MiB (above the store's
    // default 64 MiB record limit).
    std::int32_t max_message_bytes = 128 << 20;
    // Called on a watch's thread each time it opens its stream (first and
    // every re-open), with the version it resumes after; for metrics and
    // tests. Must not block or call back into the watch. Default: none.
    std::function<void(std::uint64_t since_version)> on_watch_stream;
    // Sent as "authorization: Bearer <api_key>" on every call (see
    // premoe/proto/auth.h). Default "": none.
    std::string api_key;
    // TLS: ca verifies the server; cert and key are presented for mutual
    // TLS (premoe/common/tls_files.h). Default: plaintext.
    common::TlsFiles tls;
    absl::Status Validate() const;
  };

  // Creates the channel; does not wait for the server (calls fail UNAVAILABLE
  // until it is up).
  static absl::StatusOr<std::unique_ptr<GrpcPatternStoreClient>> Open(const Options& options);
  ~GrpcPatternStoreClient() override;

  absl::StatusOr<PutResult> Put(const Pattern& pattern) override;
  absl::StatusOr<Pattern> Get(std::uint64_t id) override;
  absl::StatusOr<Pattern> GetByTask(absl::string_view task_name) override;
  absl::StatusOr<ListPage> List(const ListRequest& request) override;
  absl::StatusOr<std::uint64_t> Delete(std::uint64_t id) override;
  absl::StatusOr<std::vector<SearchMatch>> Search(std::span<const float> embedding,
                                                  const SearchOptions& options) override;
  absl::StatusOr<std::unique_ptr<WatchHandle>> Watch(std::uint64_t since_version,
                                                     WatchCallback callback) override;
  absl::StatusOr<StoreInfo> Info() override;

  struct Impl;

 private:
  explicit GrpcPatternStoreClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace premoe::store
