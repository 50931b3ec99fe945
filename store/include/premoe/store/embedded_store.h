// EmbeddedPatternStore: the pattern store in this process. RocksDB is the
// source of truth; an index over the L2-normalised match embeddings (the
// store's own exact flat index, or FAISS's HNSW) is derived from it. Open
// loads the index from a snapshot only when the snapshot provably reflects
// RocksDB's current state (see Options::index_snapshot), and otherwise
// rebuilds it from RocksDB, so no crash can leave the two apart.
//
// On disk (one RocksDB directory), column families:
//   patterns    id (8 bytes, big-endian) -> premoe.v1.Pattern without embeddings
//   tasks       task name                -> id
//   embeddings  (id << 20 | index) BE    -> premoe.v1.MatchEmbedding
//   changes     version BE               -> premoe.v1.ChangeEvent (for Watch)
//   meta        "schema_version", "model_fingerprint", "embedding_dim",
//               "version", "next_id"
// and beside them the files `index.snapshot` (Options::index_snapshot) and
// `acknowledged`, the newest version acknowledged to a caller: Open refuses
// with DATA_LOSS a store whose RocksDB recovers less (a damaged or truncated
// write-ahead log), or a directory with RocksDB data but no CURRENT file, and
// changes nothing in either; Repair recovers what is readable elsewhere.
// Every Put/Delete is one WriteBatch over all of them, so a change is whole or
// absent. The embedding key layout makes a pattern's embeddings one contiguous
// range and doubles as the FAISS id (at most 2^20 embeddings per pattern).
//
// Thread-safe (see PatternStore). Writes are serialised; reads (Get, List,
// Search) run concurrently with each other and with writes. Search takes no
// lock and never waits for a writer: the index is held twice (left-right),
// so it costs twice the index memory, and each change is applied to both.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "premoe/store/pattern_store.h"

namespace premoe::store {

class EmbeddedPatternStore final : public PatternStore {
 public:
  struct Options {
    // RocksDB directory. Required.
    std::string path;
    // Default false. true: RocksDB keeps its files in memory (path, which
    // must be absolute, only names the store), nothing reaches the disk, and
    // index_snapshot and sync are off: a replica or cache that is rebuilt
    // from elsewhere on restart.
    bool in_memory = false;
    // Default true: a missing store is created. false: Open fails NOT_FOUND
    // when `path` holds no store (for tools that only look at one).
    bool create_if_missing = true;
    // Default true: every change is fsynced before Put/Delete return, so an
    // acknowledged change survives power loss, and Open can tell (from the
    // `acknowledged` file) when one was lost. false survives a process crash
    // (the OS has the write) but not a machine crash, and keeps no
    // `acknowledged` file; ~100x faster Puts.
    bool sync = true;
    // The model this store serves. Default "": fixed by the first Put. When
    // set and the store already has another, Open fails FAILED_PRECONDITION.
    std::string model_fingerprint;
    // Match-embedding dimension. Default 0: fixed by the first embedding put.
    std::int32_t embedding_dim = 0;
    // Index kind. Default "flat": exact inner product (an int8 scan, then
    // the rows its error bounds cannot rule out rescored in fp32; 5 bytes
    // per dimension per embedding in each of the two copies). "hnsw" (FAISS's
    // IndexHNSWFlat, inner product): approximate, with inserts about 100x
    // slower; deletes leave tombstones that are filtered out and compacted by
    // a rebuild when they pass half the index. See docs/store.md.
    std::string index = "flat";
    // HNSW graph degree (M) and search breadth (efSearch). Defaults 32, 64.
    std::int32_t hnsw_m = 32;
    std::int32_t hnsw_ef_search = 64;
    // Largest encoded pattern (record plus embeddings). Default 64 MiB.
    std::int64_t max_record_bytes = std::int64_t{64} << 20;
    // Most bytes of match embeddings (count x dimension x 4) in the whole
    // store; a Put past it is RESOURCE_EXHAUSTED. The index holds each twice
    // (see the top of this file), plus 25%. Default 1 GiB.
    std::int64_t max_embedding_bytes = std::int64_t{1} << 30;
    // Default true: persist the index in <path>/index.snapshot when the store
    // is closed (and see snapshot_every_changes), so that Open can load it
    // instead of rebuilding from RocksDB, which re-inserts every embedding
    // (minutes for HNSW at 100k+). The file records the store version it
    // reflects, the index kind, hnsw_m and the dimension, with a checksum over
    // all of it; it is written only once that version is durable in RocksDB.
    // Open loads it only when the version equals RocksDB's and the rest
    // matches these options; anything else (missing, stale, corrupted, other
    // options) means a rebuild, reported in StoreInfo::index_source. false:
    // always rebuild, write nothing.
    bool index_snapshot = true;
    // Also write the snapshot after every N changes, so that an unclean exit
    // still finds a recent one (it is used only if nothing changed after it).
    // Each write serialises the whole index while Puts and Deletes wait
    // (reads go on). Default 0: only on close.
    std::int64_t snapshot_every_changes = 0;
    // Change-log entries kept for Watch. Each Put/Delete removes, in its own
    // WriteBatch, the entries that fall out of the newest N; a Watch from
    // before them gets OUT_OF_RANGE (see PatternStore::Watch). 0 keeps every
    // change forever. Default 100000 (a few MB).
    std::int64_t max_changes_retained = 100'000;

    absl::Status Validate() const;
  };

  // Opens (or creates) the store and loads the index snapshot or rebuilds the
  // index from RocksDB. FAILED_PRECONDITION for a store of a newer schema or
  // another model.
  static absl::StatusOr<std::unique_ptr<EmbeddedPatternStore>> Open(const Options& options);
  // Writes the index snapshot (Options::index_snapshot) unless the one on
  // disk is already current; a failure is logged, never fatal.
  ~EmbeddedPatternStore() override;

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

  // Checks the store's invariants, for tests and `premoe patterns check`:
  // every pattern has its task entry and only its own embeddings, no
  // embedding or task entry is orphaned, and the FAISS index holds exactly
  // the stored embeddings (same ids, same normalised vectors; HNSW deletions
  // accounted for), whether loaded or rebuilt. DATA_LOSS naming the first
  // violation.
  absl::Status Verify();

  // Flushes RocksDB's memtables and compacts every column family, so the
  // space of deleted patterns and trimmed change-log entries comes back and
  // the write-ahead logs are retired. Runs beside reads and writes (it takes
  // no store lock); a crash during it loses nothing.
  absl::Status Compact();

  // What Repair recovered.
  struct RepairReport {
    std::int64_t num_patterns = 0;
    std::int64_t num_embeddings = 0;
    // The repaired store's version, and the newest version the damaged one
    // had acknowledged (nullopt when its record of that was unreadable):
    // acknowledged - version changes were lost.
    std::uint64_t version = 0;
    std::optional<std::uint64_t> acknowledged;
    // How: RocksDB's recovery (when its MANIFEST is readable; a lost CURRENT
    // is pointed at the newest one), else RepairDB over the tables alone.
    std::string method;
  };
  // Copies the store directory `from`, damaged or not, into the new directory
  // `to` and recovers it there: every intact table and the write-ahead logs
  // up to their first damaged record (each change whole or absent; see
  // RepairReport::method). `from` is only read; `to` must not exist or be empty. The result
  // passes Verify, or Repair fails naming the first violation and leaves
  // `to` for inspection. Not while another process has `from` open.
  static absl::StatusOr<RepairReport> Repair(const std::string& from, const std::string& to);

  struct Impl;

 private:
  explicit EmbeddedPatternStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace premoe::store
