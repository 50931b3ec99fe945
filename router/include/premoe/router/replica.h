// Replica: a router's local copy of a remote pattern store, kept fresh
// through Watch, so matching searches an index in this process instead of
// calling the store per query (and keeps working, on what it last saw, while
// the store is away).
//
// The copy is an in-memory EmbeddedPatternStore (same index, same search).
// Start lists the source and copies every pattern, then applies the source's
// changes as they are watched; when the watch ends (store restarted,
// connection lost, or OUT_OF_RANGE after falling behind) it re-lists,
// removes what the source no longer has, and watches again, with a growing
// pause between attempts.
//
// Thread-safe. The source must outlive the replica.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "premoe/store/pattern_store.h"

namespace premoe::router {

class Replica {
 public:
  struct Options {
    // The model patterns must be of; others are skipped (logged). Default
    // "": whatever the source holds.
    std::string model_fingerprint;
    // First pause before a resync; doubles up to max_retry. Defaults 200 ms,
    // 5 s.
    std::chrono::milliseconds retry{200};
    std::chrono::milliseconds max_retry{5000};
  };

  // Starts syncing in the background; returns at once.
  static absl::StatusOr<std::unique_ptr<Replica>> Start(store::PatternStore* source,
                                                        const Options& options);
  // Stops the watch and the sync thread.
  ~Replica();

  // The local copy, to search and read (writing to it is the replica's job).
  store::PatternStore* store();
  // Waits until synced; DEADLINE_EXCEEDED with the last sync error if not
  // by `timeout`.
  absl::Status WaitSynced(std::chrono::milliseconds timeout) const;
  // OK once the copy has synced with the source (at least once); until
  // then UNAVAILABLE naming why not (the last sync error).
  absl::Status Synced() const;
  // The source version the copy reflects.
  uint64_t version() const;

  struct Impl;

 private:
  explicit Replica(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace premoe::router
