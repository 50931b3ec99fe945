// PatternStore: the one interface to the expert-pattern store, with
// two implementations that pass the same test suite:
//   EmbeddedPatternStore   (embedded_store.h) RocksDB + FAISS in this process;
//   GrpcPatternStoreClient (grpc_client.h)    a remote premoe.v1.PatternStore.
//
// Thread safety: every method of every implementation may be called from any
// number of threads at once. Errors are absl::Status with actionable messages:
//   INVALID_ARGUMENT     malformed pattern or query (empty task name, NaN/Inf,
//                        wrong embedding dimension, record over the size limit)
//   FAILED_PRECONDITION  pattern of another model (fingerprint mismatch)
//   NOT_FOUND            unknown pattern id or task name
//   OUT_OF_RANGE         a Watch from before the changes the store retains
// A refused call changes nothing.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "premoe/store/pattern.h"

namespace premoe::store {

// Receives a watch's changes, in version order, each exactly once, on a
// thread owned by the watch (never the caller's, never a gRPC reactor's). It
// may block; the watch waits for it (backpressure). Return false to stop.
// A non-OK argument means the watch ended other than by the handle (store or
// connection closed): it is the last call.
using WatchCallback = std::function<bool(const absl::StatusOr<ChangeEvent>&)>;

// Owns a running watch. Destroying it (or Cancel()) stops delivery and waits
// until the callback is not running; neither may be called from inside the
// callback. Destroy every handle before the store that made it.
class WatchHandle {
 public:
  virtual ~WatchHandle() = default;
  virtual void Cancel() = 0;
};

class PatternStore {
 public:
  virtual ~PatternStore() = default;

  // Stores `pattern` atomically (id and version are assigned; a zero
  // created_unix_micros becomes now). A pattern for an existing task replaces
  // it and keeps its id. The first Put fixes the store's model fingerprint and
  // embedding dimension unless they were set at open. Acknowledged = durable
  // (with the embedded store's default sync writes).
  virtual absl::StatusOr<PutResult> Put(const Pattern& pattern) = 0;

  // The full record (embeddings included, as they were put).
  virtual absl::StatusOr<Pattern> Get(std::uint64_t id) = 0;
  virtual absl::StatusOr<Pattern> GetByTask(absl::string_view task_name) = 0;

  // A page of summaries in id order. A malformed page_token is INVALID_ARGUMENT.
  virtual absl::StatusOr<ListPage> List(const ListRequest& request) = 0;

  // Removes the pattern and its embeddings; returns the change's version.
  virtual absl::StatusOr<std::uint64_t> Delete(std::uint64_t id) = 0;

  // The options.k patterns most similar to `embedding` (any norm > 0; it is
  // L2-normalised), best first; ties by ascending id. Fewer when the store
  // holds fewer. `embedding.size()` must be the store's dimension.
  virtual absl::StatusOr<std::vector<SearchMatch>> Search(std::span<const float> embedding,
                                                          const SearchOptions& options) = 0;

  // Delivers every change with version > since_version (the committed ones
  // first, then live ones) to `callback`; see WatchCallback. To resume after
  // a restart, pass the last version seen. The store keeps only its newest
  // changes (EmbeddedPatternStore::Options::max_changes_retained): when
  // changes after since_version are gone (or go while the watch lags behind),
  // the callback's last call is OUT_OF_RANGE naming the oldest retained
  // version; re-list and watch from the current version (Info().version).
  virtual absl::StatusOr<std::unique_ptr<WatchHandle>> Watch(std::uint64_t since_version,
                                                             WatchCallback callback) = 0;

  virtual absl::StatusOr<StoreInfo> Info() = 0;
};

}  // namespace premoe::store
