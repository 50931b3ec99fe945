// EmbeddedPatternStore: RocksDB (truth) + a derived index (FlatIndex or
// FAISS HNSW).
//
// Why the shape:
// - One WriteBatch per change over all column families, so a crash leaves a
//   change whole or absent. The index is derived state: Open rebuilds
//   it from RocksDB unless a snapshot provably reflects RocksDB's current
//   version, so it cannot disagree with RocksDB after a crash. A snapshot
//   claims a version only once RocksDB cannot lose it (synced), because
//   RocksDB recovers a prefix of its writes: if it still holds that version,
//   it holds exactly the state the snapshot was taken of.
// - Writers are serialised by write_mu (versions must be gap-free and in
//   commit order for Watch); readers of the catalog share state_mu, so they
//   never wait on an fsync.
// - Search takes no lock at all: the index is kept twice (left-right). A
//   writer changes the copy no search reads, makes it current, waits for the
//   searches still in the other copy, then applies the same change there. A
//   search costs two atomic increments and never waits for a writer, however
//   slow the writer's index update (an HNSW insert takes milliseconds); the
//   price is twice the index memory and each change applied twice.
// - Watch reads the `changes` column family, not an in-memory queue: a
//   watcher that falls behind or resumes after a restart sees exactly the
//   committed sequence, once each.
#include "premoe/store/embedded_store.h"

#include <faiss/IndexHNSW.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>
#include <fcntl.h>
#include <omp.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/options.h>
#include <rocksdb/utilities/options_util.h>
#include <rocksdb/write_batch.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <thread>
#include <type_traits>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "premoe/common/file.h"
#include "premoe/common/hash.h"
#include "premoe/common/logging.h"
#include "premoe/common/mapped_file.h"
#include "premoe/common/status.h"
#include "premoe/common/utf8.h"
#include "premoe/store/proto_convert.h"
#include "store/src/ack_log.h"
#include "store/src/flat_index.h"
#include "store/src/little_endian.h"

namespace premoe::store {
namespace {

using idx_t = faiss::Index::idx_t;  // FAISS 1.7 spells it inside Index
using internal::AppendLittleEndian;
using internal::LoadLittleEndian;

constexpr int kEmbeddingIndexBits = 20;
constexpr std::uint64_t kMaxEmbeddingsPerPattern = std::uint64_t{1} << kEmbeddingIndexBits;
constexpr std::size_t kMaxTaskNameBytes = 256;
constexpr std::int32_t kDefaultPageSize = 100;
constexpr std::int32_t kMaxPageSize = 1000;
constexpr std::int32_t kDefaultCandidates = 64;

constexpr const char* kCfPatterns = "patterns";
constexpr const char* kCfTasks = "tasks";
constexpr const char* kCfEmbeddings = "embeddings";
constexpr const char* kCfChanges = "changes";
constexpr const char* kCfMeta = "meta";

constexpr const char* kMetaSchema = "schema_version";
constexpr const char* kMetaFingerprint = "model_fingerprint";
constexpr const char* kMetaDim = "embedding_dim";
constexpr const char* kMetaVersion = "version";
constexpr const char* kMetaNextId = "next_id";
// "1" once the store keeps its AckLog (internal::kAckFile); from then on a
// missing file is damage, not an older store.
constexpr const char* kMetaAcked = "ack_log";

// What an operator can do about the damaged store at `dir`.
std::string RepairHint(absl::string_view dir) {
  return absl::StrCat("nothing in it was changed; `premoe patterns repair --store ", dir,
                      " --to NEW_DIR` copies what is readable into NEW_DIR");
}

// The index snapshot, a file beside RocksDB's (little-endian):
//   magic "\x89pmindex" | u32 format | u32 kind (0 flat, 1 hnsw) | u32 hnsw_m
//   (0 for flat) | u32 dim | u64 store version | u64 ntotal (vectors held)
//   | u64 store identity (IdentityHash) | 32 hex digits: CatalogDigest
//   | flat: ntotal x u64 embedding key, ntotal x dim f32 rows
//   | hnsw: ntotal x i64 label_to_key (-1 = deleted), faiss::write_index bytes
//   | 32 hex digits: XXH3-128 of all that precedes.
// Format 1 held a FAISS flat index, format 2 had no identity or catalog
// digest (so another store's snapshot at the same version passed); both are
// refused, and the index rebuilt.
constexpr char kSnapshotFile[] = "index.snapshot";
constexpr char kSnapshotMagic[8] = {'\x89', 'p', 'm', 'i', 'n', 'd', 'e', 'x'};
constexpr std::uint32_t kSnapshotFormat = 3;
constexpr std::size_t kSnapshotDigestBytes = 32;
constexpr std::size_t kSnapshotHeaderBytes =
    sizeof kSnapshotMagic + 4 * 4 + 3 * 8 + kSnapshotDigestBytes;

// Big-endian so that RocksDB's bytewise order is numeric order.
std::string EncodeU64(std::uint64_t v) {
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  return out;
}

std::uint64_t DecodeU64(const rocksdb::Slice& s) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8 && i < s.size(); ++i) {
    v = (v << 8) | static_cast<std::uint8_t>(s[i]);
  }
  return v;
}

std::uint64_t EmbeddingKey(std::uint64_t id, std::uint64_t index) {
  return (id << kEmbeddingIndexBits) | index;
}

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat(what, ": rocksdb: ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

// FAISS reports errors by throwing (faiss::FaissException, std::bad_alloc);
// nothing may escape the library.
template <typename F>
absl::Status FaissCall(absl::string_view what, F&& f) {
  try {
    f();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("faiss ", what, ": ", e.what()));
  }
}

std::vector<rocksdb::ColumnFamilyDescriptor> ColumnFamilies() {
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (const char* name : {rocksdb::kDefaultColumnFamilyName.c_str(), kCfPatterns, kCfTasks,
                           kCfEmbeddings, kCfChanges, kCfMeta}) {
    cfs.emplace_back(name, rocksdb::ColumnFamilyOptions());
  }
  return cfs;
}

rocksdb::DBOptions BaseDbOptions() {
  rocksdb::DBOptions o;
  // Recovery stops at the first damaged record of the logs. After a power
  // cut that may be an unacknowledged record left half-written in
  // preallocated space (stricter modes would then refuse to open a store
  // that lost nothing); anything acknowledged that recovery drops this way
  // is caught by the AckLog check, which refuses the store.
  o.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  return o;
}

std::uint64_t IdentityHash(rocksdb::DB& db) {
  std::string identity;
  // A DB always has one (RocksDB writes IDENTITY when it creates the DB);
  // failing to read it leaves "", whose hash then fails to match.
  db.GetDbIdentity(identity).PermitUncheckedError();
  return common::Hash64(identity);
}

// The write-ahead logs in `dir`, for messages ("000012.log, 000015.log").
std::string WalFiles(const std::string& dir) {
  std::vector<std::string> logs;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".log") logs.push_back(entry.path().filename().string());
  }
  std::sort(logs.begin(), logs.end());
  return logs.empty() ? "none" : absl::StrJoin(logs, ", ");
}

// True when `dir` holds what only a store with data leaves: tables, a
// non-empty write-ahead log, premoe's own files. (A store whose creation
// was cut short leaves a MANIFEST and an empty log, and nothing to lose.)
bool HoldsStoreData(const std::string& dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::filesystem::path& p = entry.path();
    const std::string name = p.filename().string();
    // RocksDB names its logs and tables by number ("000012.log").
    const std::string stem = p.stem().string();
    const bool numbered = !stem.empty() && std::all_of(stem.begin(), stem.end(),
                                                       [](char c) { return c >= '0' && c <= '9'; });
    if ((numbered && p.extension() == ".sst") || name == internal::kAckFile ||
        name == kSnapshotFile || (numbered && p.extension() == ".log" && entry.file_size(ec) > 0)) {
      return true;
    }
  }
  return false;
}

// Compares what RocksDB recovers at `dir` with the AckLog there, opening
// RocksDB read-only so that a refusal changes nothing on disk (a read-write
// Open would already have replayed the damaged log into a table and deleted
// it).
absl::Status CheckAcknowledged(const std::string& dir) {
  // The file first: every version in it was durable in RocksDB before it was
  // written, so RocksDB read after it holds at least that version even while
  // another process is writing (which a later read-write Open then reports).
  const std::string ack_path = (std::filesystem::path(dir) / internal::kAckFile).string();
  const absl::StatusOr<internal::AckLog::Entry> acked = internal::AckLog::Read(ack_path);
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = ColumnFamilies();
  cfs.erase(cfs.begin() + 1, cfs.end() - 1);  // default and meta suffice
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  RETURN_IF_ERROR(
      FromRocks(rocksdb::DB::OpenForReadOnly(BaseDbOptions(), dir, cfs, &handles, &raw),
                absl::StrCat("opening pattern store ", dir, " (", RepairHint(dir), ")")));
  std::unique_ptr<rocksdb::DB> db(raw);
  absl::Cleanup close = [&] {
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
  };
  auto meta = [&](const char* key) -> absl::StatusOr<std::string> {
    std::string value;
    const rocksdb::Status s = db->Get(rocksdb::ReadOptions(), handles[1], key, &value);
    if (s.IsNotFound()) return std::string();
    RETURN_IF_ERROR(FromRocks(s, absl::StrCat(dir, ": meta ", key)));
    return value;
  };
  ASSIGN_OR_RETURN(const std::string keeps_log, meta(kMetaAcked));
  ASSIGN_OR_RETURN(const std::string version_text, meta(kMetaVersion));
  std::uint64_t version = 0;
  if (!version_text.empty() && !absl::SimpleAtoi(version_text, &version)) {
    return absl::DataLossError(
        absl::StrCat(dir, ": version \"", version_text, "\" is not a number"));
  }
  if (absl::IsNotFound(acked.status()) && keeps_log.empty()) {
    return absl::OkStatus();  // a store from before the AckLog: Open starts one
  }
  if (!acked.ok()) {
    return absl::DataLossError(absl::StrCat(
        dir, ": the record of acknowledged changes is unreadable (", acked.status().message(),
        "), so the store cannot show that it lost none; ", RepairHint(dir)));
  }
  if (acked->identity != IdentityHash(*db)) {
    return absl::DataLossError(absl::StrCat(dir, ": ", internal::kAckFile,
                                            " belongs to another store (copied in?); ",
                                            RepairHint(dir)));
  }
  if (acked->version > version) {
    return absl::DataLossError(
        absl::StrCat(dir, ": ", acked->version - version,
                     " acknowledged change(s) lost: the store acknowledged version ",
                     acked->version, " but RocksDB recovers only version ", version,
                     ", so a write-ahead log was damaged or truncated (logs: ", WalFiles(dir),
                     "); ", RepairHint(dir)));
  }
  return absl::OkStatus();
}

// Streams a snapshot into its file and checksum; faiss::write_index writes
// through it too (a short count makes FAISS throw, and status() says why).
class SnapshotSink final : public faiss::IOWriter {
 public:
  explicit SnapshotSink(common::AtomicFileWriter* file) : file_(file) {}
  size_t operator()(const void* ptr, size_t size, size_t nitems) override {
    const absl::string_view bytes(static_cast<const char*>(ptr), size * nitems);
    if (status_.ok()) status_ = file_->Append(bytes);
    if (!status_.ok()) return 0;
    hasher_.Update(bytes);
    return nitems;
  }
  absl::Status Append(absl::string_view bytes) {
    (*this)(bytes.data(), 1, bytes.size());
    return status_;
  }
  const absl::Status& status() const { return status_; }
  // Appends the checksum and moves the file into place.
  absl::Status Commit() {
    RETURN_IF_ERROR(status_);
    RETURN_IF_ERROR(file_->Append(hasher_.HexDigest()));
    return file_->Commit();
  }

 private:
  common::AtomicFileWriter* file_;
  common::Hasher hasher_;
  absl::Status status_;
};

// faiss::read_index's view of the index part of a snapshot.
class SpanSource final : public faiss::IOReader {
 public:
  SpanSource(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  size_t operator()(void* ptr, size_t size, size_t nitems) override {
    if (size == 0) return nitems;
    const std::size_t n = std::min(nitems, (size_ - pos_) / size);
    std::memcpy(ptr, data_ + pos_, n * size);
    pos_ += n * size;
    return n;
  }
  std::size_t left() const { return size_ - pos_; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

// The unit vector of `v`; INVALID_ARGUMENT naming `what` for NaN/Inf or zero.
absl::StatusOr<std::vector<float>> Normalized(std::span<const float> v, absl::string_view what) {
  double norm2 = 0;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " has a non-finite value (", v[i], ") at position ", i));
    }
    norm2 += static_cast<double>(v[i]) * v[i];
  }
  if (norm2 == 0) return absl::InvalidArgumentError(absl::StrCat(what, " is all zeros"));
  const double inv = 1.0 / std::sqrt(norm2);
  std::vector<float> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>(v[i] * inv);
  return out;
}

std::int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Shared by the store and its watches, so that a WatchHandle outliving the
// store (a contract violation, but cheap to survive) touches no freed memory.
struct WatchHub {
  absl::Mutex mu;
  std::uint64_t published_version ABSL_GUARDED_BY(mu) = 0;
  bool closing ABSL_GUARDED_BY(mu) = false;
  int running ABSL_GUARDED_BY(mu) = 0;  // watch threads inside Run()
};

// One copy of what Search reads: the index and, with it, who owns each of
// its vectors. Flat: FlatIndex (exact; rows carry their embedding keys).
// HNSW: FAISS's, whose internal ids are positions; label_to_key maps them to
// embedding keys, -1 for deleted ones (HNSW cannot remove), key_to_label the
// live ones. At most one of the two exists (neither before the first Put).
struct IndexCopy {
  std::unique_ptr<FlatIndex> flat;
  std::unique_ptr<faiss::IndexHNSWFlat> hnsw;
  std::vector<std::int64_t> label_to_key;                         // hnsw
  absl::flat_hash_map<std::uint64_t, std::int64_t> key_to_label;  // hnsw
  std::int64_t tombstones = 0;                                    // hnsw
  absl::flat_hash_map<std::uint64_t, std::string> task_names;     // pattern id -> task

  // Vectors held, deleted HNSW ones included.
  std::int64_t total() const { return flat ? flat->size() : hnsw ? hnsw->ntotal : 0; }
  std::int64_t live() const { return total() - tombstones; }
  std::int32_t dim() const {
    return flat ? flat->dim() : hnsw ? static_cast<std::int32_t>(hnsw->d) : 0;
  }
};

}  // namespace

absl::Status EmbeddedPatternStore::Options::Validate() const {
  if (path.empty()) return absl::InvalidArgumentError("pattern store: Options::path is empty");
  if (index != "flat" && index != "hnsw") {
    return absl::InvalidArgumentError(
        absl::StrCat("pattern store: index \"", index, "\" is not \"flat\" or \"hnsw\""));
  }
  if (embedding_dim < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("pattern store: embedding_dim ", embedding_dim, " is negative"));
  }
  if (hnsw_m < 2 || hnsw_ef_search < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("pattern store: hnsw_m must be >= 2 and hnsw_ef_search >= 1 (got ", hnsw_m,
                     ", ", hnsw_ef_search, ")"));
  }
  if (max_record_bytes <= 0 || max_embedding_bytes <= 0) {
    return absl::InvalidArgumentError(
        "pattern store: max_record_bytes and max_embedding_bytes must be positive");
  }
  if (snapshot_every_changes < 0 || max_changes_retained < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pattern store: snapshot_every_changes and max_changes_retained must be >= 0 (got ",
        snapshot_every_changes, ", ", max_changes_retained, ")"));
  }
  return absl::OkStatus();
}

struct EmbeddedPatternStore::Impl {
  Options options;
  // Options::in_memory: RocksDB's files live here; declared before db so it
  // outlives it.
  std::unique_ptr<rocksdb::Env> mem_env;
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::ColumnFamilyHandle* patterns = nullptr;
  rocksdb::ColumnFamilyHandle* tasks = nullptr;
  rocksdb::ColumnFamilyHandle* embeddings = nullptr;
  rocksdb::ColumnFamilyHandle* changes = nullptr;
  rocksdb::ColumnFamilyHandle* meta = nullptr;
  rocksdb::WriteOptions write_options;
  std::shared_ptr<WatchHub> hub = std::make_shared<WatchHub>();

  // Serialises Put and Delete. Fields below marked "writer" change only under
  // write_mu *and* state_mu (exclusive), so a writer may read them holding
  // write_mu alone (which the annotations cannot say).
  absl::Mutex write_mu;
  // absl::Mutex, not std::shared_mutex: glibc's rwlock prefers readers, so a
  // steady stream of Searches (the router's normal load) starved writers
  // (measured: 3 spinning readers slowed 108 changes from 1 s to 33 s).
  mutable absl::Mutex state_mu;
  std::string fingerprint;    // writer
  std::int32_t dim = 0;       // writer
  std::uint64_t version = 0;  // writer
  std::uint64_t next_id = 1;  // writer
  struct Entry {
    std::string task_name;
    std::uint32_t num_embeddings = 0;
  };
  absl::flat_hash_map<std::uint64_t, Entry> catalog;        // writer
  absl::flat_hash_map<std::string, std::uint64_t> by_task;  // writer

  // The index, twice (left-right, see the top of this file). copies[current]
  // is what searches enter; the other has no reader once a change is done.
  // Both change only under write_mu, and are equal between changes.
  IndexCopy copies[2];
  std::atomic<int> current{0};
  mutable std::atomic<std::int64_t> readers[2]{};

  // The versions acknowledged to callers (null in memory). Set by Open, then
  // written under write_mu.
  std::unique_ptr<internal::AckLog> ack_log;

  // Oldest change still in the change log (version + 1 when it is empty).
  std::uint64_t first_change ABSL_GUARDED_BY(write_mu) = 1;
  // The version of the index snapshot on disk, when this process wrote or
  // loaded it; changes since this process last wrote one.
  std::optional<std::uint64_t> snapshot_version ABSL_GUARDED_BY(write_mu);
  std::int64_t changes_since_snapshot ABSL_GUARDED_BY(write_mu) = 0;
  // How Open made the index ("snapshot" or "rebuilt") and how long it took.
  std::string index_source;
  std::int64_t index_open_micros = 0;

  ~Impl() {
    {
      absl::MutexLock lock(&hub->mu);
      hub->closing = true;
      // Watches still running read the database: let them leave first.
      hub->mu.Await(absl::Condition(
          +[](WatchHub* h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(h->mu) { return h->running == 0; },
          hub.get()));
    }
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
    handles.clear();
    if (db) {
      rocksdb::Status s = db->Close();
      if (!s.ok()) PREMOE_LOG_WARN("pattern store %s: close: %s", options.path, s.ToString());
    }
  }

  bool hnsw() const { return options.index == "hnsw"; }

  absl::StatusOr<std::unique_ptr<faiss::IndexHNSWFlat>> NewHnsw(std::int32_t d) const {
    std::unique_ptr<faiss::IndexHNSWFlat> out;
    RETURN_IF_ERROR(FaissCall("create index", [&] {
      out = std::make_unique<faiss::IndexHNSWFlat>(d, options.hnsw_m, faiss::METRIC_INNER_PRODUCT);
      out->hnsw.efSearch = options.hnsw_ef_search;
    }));
    return out;
  }

  // The copy writers read: the current one (both are equal between changes).
  const IndexCopy& writer_copy() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    return copies[current.load()];
  }

  // A search's entry into the current copy; LeaveCopy(side) when done.
  // seq_cst: the re-check pairs with the writer's store of `current`, so a
  // writer that saw no reader of a copy knows none will enter it.
  int EnterCopy() const {
    for (;;) {
      const int side = current.load();
      readers[side].fetch_add(1);
      if (current.load() == side) return side;
      LeaveCopy(side);
    }
  }
  void LeaveCopy(int side) const {
    if (readers[side].fetch_sub(1) == 1) readers[side].notify_all();
  }

  // Makes copies[side] current and waits until no search is left in the
  // other.
  void Switch(int side) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    current.store(side);
    std::atomic<std::int64_t>& left = readers[1 - side];
    for (std::int64_t n; (n = left.load()) != 0;) left.wait(n);
  }

  // Applies `change` to both copies, the idle one first. A change that fails
  // (or asks for a rebuild with ABORTED, as HNSW compaction does) leaves its
  // copy in no known state: the index is rebuilt from RocksDB instead.
  absl::Status ChangeIndex(const std::function<absl::Status(IndexCopy&)>& change)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    const int old = current.load();
    absl::Status status = change(copies[1 - old]);
    if (!status.ok()) return RebuildIndex(status);
    Switch(1 - old);
    status = change(copies[old]);
    if (!status.ok()) return RebuildIndex(status);
    return absl::OkStatus();
  }

  // Rebuilds the idle copy from RocksDB, makes it current and copies it
  // over the other. `why` is logged unless it is ABORTED (a planned rebuild).
  absl::Status RebuildIndex(const absl::Status& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    if (!absl::IsAborted(why)) {
      PREMOE_LOG_ERROR("pattern store %s: %s; rebuilding the index", options.path, why.ToString());
    }
    auto counted = catalog;  // a writer reads the catalog under write_mu alone
    const int idle = 1 - current.load();
    ASSIGN_OR_RETURN(copies[idle], BuildCopy(counted));
    Switch(idle);
    ASSIGN_OR_RETURN(copies[1 - idle], CloneCopy(copies[idle]));
    return absl::OkStatus();
  }

  absl::StatusOr<IndexCopy> CloneCopy(const IndexCopy& from) const {
    IndexCopy out;
    if (from.flat) {
      RETURN_IF_ERROR(
          FaissCall("clone", [&] { out.flat = std::make_unique<FlatIndex>(*from.flat); }));
    }
    if (from.hnsw) {
      // Through FAISS's own format: clone_index (1.7) does not copy an
      // IndexHNSWFlat as one.
      RETURN_IF_ERROR(FaissCall("clone", [&] {
        faiss::VectorIOWriter writer;
        faiss::write_index(from.hnsw.get(), &writer);
        faiss::VectorIOReader reader;
        reader.data = std::move(writer.data);
        std::unique_ptr<faiss::Index> read(faiss::read_index(&reader));
        out.hnsw.reset(dynamic_cast<faiss::IndexHNSWFlat*>(read.get()));
        if (!out.hnsw) throw std::runtime_error("the copy is not an IndexHNSWFlat");
        read.release();
        out.hnsw->hnsw.efSearch = from.hnsw->hnsw.efSearch;
      }));
    }
    out.label_to_key = from.label_to_key;
    out.key_to_label = from.key_to_label;
    out.tombstones = from.tombstones;
    out.task_names = from.task_names;
    return out;
  }

  // Adds unit vectors (n x d, row-major) under embedding keys.
  absl::Status IndexAdd(IndexCopy& c, std::int32_t d, const std::vector<float>& vectors,
                        const std::vector<std::uint64_t>& keys) const {
    if (keys.empty()) return absl::OkStatus();
    if (!hnsw()) {
      return FaissCall("add", [&] {  // only allocation can throw
        if (!c.flat) c.flat = std::make_unique<FlatIndex>(d);
        c.flat->Add(vectors, keys);
      });
    }
    if (!c.hnsw) {
      ASSIGN_OR_RETURN(c.hnsw, NewHnsw(d));
    }
    const auto n = static_cast<idx_t>(keys.size());
    const std::int64_t first = c.hnsw->ntotal;
    RETURN_IF_ERROR(FaissCall("add", [&] { c.hnsw->add(n, vectors.data()); }));
    for (idx_t i = 0; i < n; ++i) {
      c.label_to_key.push_back(static_cast<std::int64_t>(keys[i]));
      c.key_to_label[keys[i]] = first + i;
    }
    return absl::OkStatus();
  }

  // Removes the embeddings [EmbeddingKey(id, 0), EmbeddingKey(id, count)).
  absl::Status IndexRemove(IndexCopy& c, std::uint64_t id, std::uint32_t count) const {
    if (count == 0) return absl::OkStatus();
    if (c.flat) {
      c.flat->RemoveRange(EmbeddingKey(id, 0), EmbeddingKey(id, count));
      return absl::OkStatus();
    }
    if (c.hnsw) {
      for (std::uint32_t i = 0; i < count; ++i) {
        auto it = c.key_to_label.find(EmbeddingKey(id, i));
        if (it == c.key_to_label.end()) continue;
        c.label_to_key[it->second] = -1;
        c.key_to_label.erase(it);
        ++c.tombstones;
      }
    }
    return absl::OkStatus();
  }

  // Reloads the catalog (with no embeddings counted) from RocksDB. Open only.
  absl::Status ResetFromCatalog() {
    catalog.clear();
    by_task.clear();
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), patterns));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      v1::Pattern record;
      if (!record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return absl::DataLossError(
            absl::StrCat(options.path, ": pattern ", DecodeU64(it->key()), " does not parse"));
      }
      catalog[record.id()] = {record.task_name(), 0};
      by_task[record.task_name()] = record.id();
    }
    return FromRocks(it->status(), options.path);
  }

  // An index copy of RocksDB's embeddings, each checked against `entries`
  // (a catalog), whose num_embeddings it sets.
  absl::StatusOr<IndexCopy> BuildCopy(absl::flat_hash_map<std::uint64_t, Entry>& entries) const {
    IndexCopy out;
    for (auto& [id, entry] : entries) {
      entry.num_embeddings = 0;
      out.task_names[id] = entry.task_name;
    }
    std::vector<float> vectors;
    std::vector<std::uint64_t> keys;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), embeddings));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      const std::uint64_t key = DecodeU64(it->key());
      v1::MatchEmbedding e;
      if (!e.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return absl::DataLossError(
            absl::StrCat(options.path, ": embedding ", key, " does not parse"));
      }
      auto entry = entries.find(key >> kEmbeddingIndexBits);
      if (entry == entries.end()) {
        return absl::DataLossError(
            absl::StrCat(options.path, ": embedding ", key, " belongs to no pattern"));
      }
      ++entry->second.num_embeddings;
      if (e.values_size() != dim) {
        return absl::DataLossError(absl::StrCat(options.path, ": embedding ", key,
                                                " has dimension ", e.values_size(),
                                                ", the store's is ", dim));
      }
      ASSIGN_OR_RETURN(std::vector<float> unit,
                       Normalized({e.values().data(), static_cast<std::size_t>(e.values_size())},
                                  absl::StrCat("stored embedding ", key)));
      vectors.insert(vectors.end(), unit.begin(), unit.end());
      keys.push_back(key);
    }
    RETURN_IF_ERROR(FromRocks(it->status(), options.path));
    RETURN_IF_ERROR(IndexAdd(out, dim, vectors, keys));
    return out;
  }

  // A digest of every pattern record (id and bytes, embeddings apart), so a
  // snapshot is bound to the patterns it indexes, not only to a version
  // number (a copy of the store that went its own way shares the identity
  // and may reach the same version).
  absl::StatusOr<std::string> CatalogDigest() const {
    common::Hasher hasher;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), patterns));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      hasher.UpdateField(absl::string_view(it->key().data(), it->key().size()));
      hasher.UpdateField(absl::string_view(it->value().data(), it->value().size()));
    }
    RETURN_IF_ERROR(FromRocks(it->status(), options.path));
    return hasher.HexDigest();
  }

  std::string SnapshotPath() const {
    return (std::filesystem::path(options.path) / kSnapshotFile).string();
  }

  // Writes the snapshot of the index at the current version. write_mu: so
  // nothing changes underneath (searches may go on).
  absl::Status WriteSnapshot() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    const IndexCopy& c = writer_copy();
    // See the top of this file: the version must be durable first.
    if (!options.sync) RETURN_IF_ERROR(FromRocks(db->SyncWAL(), options.path));
    ASSIGN_OR_RETURN(std::unique_ptr<common::AtomicFileWriter> file,
                     common::AtomicFileWriter::Open(SnapshotPath()));
    SnapshotSink sink(file.get());
    std::string header(kSnapshotMagic, sizeof kSnapshotMagic);
    AppendLittleEndian(&header, kSnapshotFormat);
    AppendLittleEndian<std::uint32_t>(&header, hnsw() ? 1 : 0);
    AppendLittleEndian<std::uint32_t>(&header, hnsw() ? options.hnsw_m : 0);
    AppendLittleEndian<std::uint32_t>(&header, dim);
    AppendLittleEndian<std::uint64_t>(&header, version);
    AppendLittleEndian<std::uint64_t>(&header, c.total());
    AppendLittleEndian<std::uint64_t>(&header, IdentityHash(*db));
    ASSIGN_OR_RETURN(const std::string catalog_digest, CatalogDigest());
    header += catalog_digest;
    RETURN_IF_ERROR(sink.Append(header));
    // Raw arrays: this file is only read back on hosts of the writer's byte
    // order (the same machine's store), like FAISS's own format.
    auto append = [&](const auto& values) {
      return sink.Append(
          {reinterpret_cast<const char*>(values.data()), values.size() * sizeof(values[0])});
    };
    if (c.flat) {
      RETURN_IF_ERROR(append(c.flat->keys()));
      RETURN_IF_ERROR(append(c.flat->rows()));
    } else {
      RETURN_IF_ERROR(append(c.label_to_key));
      const absl::Status written =
          FaissCall("write_index", [&] { faiss::write_index(c.hnsw.get(), &sink); });
      RETURN_IF_ERROR(sink.status());
      RETURN_IF_ERROR(written);
    }
    RETURN_IF_ERROR(sink.Commit());
    snapshot_version = version;
    changes_since_snapshot = 0;
    return absl::OkStatus();
  }

  // WriteSnapshot where a failure must not fail the caller: the snapshot
  // only spares the next Open a rebuild.
  void SaveSnapshot() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    if (!options.index_snapshot || writer_copy().total() == 0 || snapshot_version == version) {
      return;
    }
    if (absl::Status s = WriteSnapshot(); !s.ok()) {
      PREMOE_LOG_WARN("pattern store %s: index snapshot not written: %s", options.path,
                      s.ToString());
    }
  }

  // After a committed change.
  void AfterChange() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    if (options.snapshot_every_changes > 0 &&
        ++changes_since_snapshot >= options.snapshot_every_changes) {
      SaveSnapshot();
    }
  }

  // Loads the index from the snapshot into `c`, refusing one that does not
  // reflect RocksDB's current version under these options: any error means
  // "rebuild instead". Open only, after ResetFromCatalog.
  absl::Status LoadSnapshot(IndexCopy& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    ASSIGN_OR_RETURN(std::shared_ptr<const common::MappedFile> file,
                     common::MappedFile::Open(SnapshotPath()));
    const std::uint8_t* data = file->data().data();
    const std::size_t size = file->size();
    if (size < kSnapshotHeaderBytes + kSnapshotDigestBytes ||
        std::memcmp(data, kSnapshotMagic, sizeof kSnapshotMagic) != 0) {
      return absl::DataLossError("not an index snapshot");
    }
    const std::size_t body = size - kSnapshotDigestBytes;
    if (common::Hasher().Update({data, body}).HexDigest() !=
        absl::string_view(reinterpret_cast<const char*>(data) + body, kSnapshotDigestBytes)) {
      return absl::DataLossError("checksum mismatch");
    }
    const std::uint8_t* field = data + sizeof kSnapshotMagic;
    auto next = [&]<typename T>(T) {
      const T v = LoadLittleEndian<T>(field);
      field += sizeof v;
      return v;
    };
    const auto format = next(std::uint32_t{});
    const auto kind = next(std::uint32_t{});
    const auto hnsw_m = next(std::uint32_t{});
    const auto snapshot_dim = next(std::uint32_t{});
    const auto snapshot_store_version = next(std::uint64_t{});
    const auto ntotal = next(std::uint64_t{});
    const auto identity = next(std::uint64_t{});
    const absl::string_view catalog_digest(reinterpret_cast<const char*>(field),
                                           kSnapshotDigestBytes);
    if (format != kSnapshotFormat) {
      return absl::FailedPreconditionError(absl::StrCat("snapshot format ", format));
    }
    if (identity != IdentityHash(*db)) {
      return absl::FailedPreconditionError("it was taken of another store (RocksDB identity)");
    }
    if (snapshot_store_version != version) {
      return absl::FailedPreconditionError(absl::StrCat(
          "it reflects store version ", snapshot_store_version, ", RocksDB is at ", version));
    }
    ASSIGN_OR_RETURN(const std::string catalog_now, CatalogDigest());
    if (catalog_digest != catalog_now) {
      return absl::FailedPreconditionError("it indexes other patterns than RocksDB holds");
    }
    if (kind != (hnsw() ? 1u : 0u) ||
        hnsw_m != static_cast<std::uint32_t>(hnsw() ? options.hnsw_m : 0) ||
        snapshot_dim != static_cast<std::uint32_t>(dim)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "it holds another index (kind ", kind, ", hnsw_m ", hnsw_m, ", dim ", snapshot_dim, ")"));
    }
    std::size_t pos = kSnapshotHeaderBytes;
    // Sizes from the header are checked against the bytes there are before
    // anything is allocated for them.
    auto take = [&](auto& values, std::uint64_t count) -> absl::Status {
      using T = typename std::remove_reference_t<decltype(values)>::value_type;
      if ((body - pos) / sizeof(T) < count) return absl::DataLossError("truncated");
      values.resize(count);
      std::memcpy(values.data(), data + pos, count * sizeof(T));
      pos += count * sizeof(T);
      return absl::OkStatus();
    };
    std::vector<std::int64_t> flat_keys;
    std::span<const std::int64_t> keys;
    if (!hnsw()) {
      std::vector<std::uint64_t> key_values;
      std::vector<float> rows;
      RETURN_IF_ERROR(take(key_values, ntotal));
      if (dim == 0 || ntotal > (body - pos) / sizeof(float) / static_cast<std::uint64_t>(dim)) {
        return absl::DataLossError("truncated");
      }
      RETURN_IF_ERROR(take(rows, ntotal * static_cast<std::uint64_t>(dim)));
      if (pos != body) return absl::DataLossError("bytes after the flat index");
      // What a rebuild gives: each pattern's embeddings keyed 0..n-1, once
      // each, as unit vectors. Checked, since a flipped bit under a valid
      // checksum (or a bug) would otherwise serve wrong matches.
      absl::flat_hash_map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>>
          seen;  // count, max
      absl::flat_hash_set<std::uint64_t> unique(key_values.begin(), key_values.end());
      if (unique.size() != key_values.size()) return absl::DataLossError("a key appears twice");
      for (std::uint64_t key : key_values) {
        auto& [count, max] = seen[key >> kEmbeddingIndexBits];
        ++count;
        max = std::max(max, key & ((std::uint64_t{1} << kEmbeddingIndexBits) - 1));
      }
      for (const auto& [id, count_max] : seen) {
        if (count_max.second + 1 != count_max.first) {
          return absl::DataLossError(absl::StrCat("pattern ", id, "'s embedding keys have gaps"));
        }
      }
      for (std::uint64_t r = 0; r < ntotal; ++r) {
        double norm2 = 0;
        for (std::int32_t d = 0; d < dim; ++d) {
          const double x = rows[r * dim + d];
          norm2 += x * x;
        }
        if (!(std::abs(norm2 - 1) < 1e-4)) {
          return absl::DataLossError(absl::StrCat("row ", r, " is not a unit vector"));
        }
      }
      RETURN_IF_ERROR(FaissCall("load", [&] {  // only allocation can throw
        c.flat = std::make_unique<FlatIndex>(dim);
        c.flat->Add(rows, key_values);
      }));
      flat_keys.assign(key_values.begin(), key_values.end());
      keys = flat_keys;
    } else {
      RETURN_IF_ERROR(take(c.label_to_key, ntotal));
      SpanSource source(data + pos, body - pos);
      std::unique_ptr<faiss::Index> read;
      RETURN_IF_ERROR(FaissCall("read_index", [&] { read.reset(faiss::read_index(&source)); }));
      c.hnsw.reset(dynamic_cast<faiss::IndexHNSWFlat*>(read.get()));
      if (c.hnsw == nullptr) return absl::DataLossError("the FAISS index is not HNSW");
      read.release();
      if (source.left() != 0 || static_cast<std::uint64_t>(c.hnsw->ntotal) != ntotal ||
          c.hnsw->d != dim || c.hnsw->metric_type != faiss::METRIC_INNER_PRODUCT) {
        return absl::DataLossError("the FAISS index disagrees with the snapshot's header");
      }
      c.hnsw->hnsw.efSearch = options.hnsw_ef_search;
      keys = c.label_to_key;
    }
    for (std::size_t label = 0; label < keys.size(); ++label) {
      if (keys[label] < 0) {
        if (!hnsw()) return absl::DataLossError("a flat index holds a deleted key");
        ++c.tombstones;
        continue;
      }
      const auto key = static_cast<std::uint64_t>(keys[label]);
      auto entry = catalog.find(key >> kEmbeddingIndexBits);
      if (entry == catalog.end()) {
        return absl::DataLossError(absl::StrCat("embedding ", key, " belongs to no pattern"));
      }
      ++entry->second.num_embeddings;
      if (hnsw()) c.key_to_label[key] = static_cast<std::int64_t>(label);
    }
    for (const auto& [id, entry] : catalog) c.task_names[id] = entry.task_name;
    snapshot_version = version;
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> GetMeta(const char* key) {
    std::string value;
    rocksdb::Status s = db->Get(rocksdb::ReadOptions(), meta, key, &value);
    if (s.IsNotFound()) return std::string();
    RETURN_IF_ERROR(FromRocks(s, absl::StrCat(options.path, ": meta ", key)));
    return value;
  }

  void Publish(std::uint64_t v) {
    absl::MutexLock lock(&hub->mu);
    hub->published_version = v;
  }

  // Reads pattern `id` and its embeddings from one snapshot.
  absl::StatusOr<Pattern> Read(std::uint64_t id) {
    const rocksdb::Snapshot* snap = db->GetSnapshot();
    struct Release {
      rocksdb::DB* db;
      const rocksdb::Snapshot* s;
      ~Release() { db->ReleaseSnapshot(s); }
    } release{db.get(), snap};
    rocksdb::ReadOptions ro;
    ro.snapshot = snap;
    std::string value;
    rocksdb::Status s = db->Get(ro, patterns, EncodeU64(id), &value);
    if (s.IsNotFound()) return absl::NotFoundError(absl::StrCat("no pattern with id ", id));
    RETURN_IF_ERROR(FromRocks(s, absl::StrCat("pattern ", id)));
    v1::Pattern record;
    if (!record.ParseFromString(value)) {
      return absl::DataLossError(absl::StrCat(options.path, ": pattern ", id, " does not parse"));
    }
    const std::string lower = EncodeU64(EmbeddingKey(id, 0));
    const std::string upper = EncodeU64(EmbeddingKey(id + 1, 0));
    rocksdb::Slice upper_slice(upper);
    ro.iterate_upper_bound = &upper_slice;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(ro, embeddings));
    for (it->Seek(lower); it->Valid(); it->Next()) {
      if (!record.add_embeddings()->ParseFromArray(it->value().data(),
                                                   static_cast<int>(it->value().size()))) {
        return absl::DataLossError(
            absl::StrCat(options.path, ": embedding ", DecodeU64(it->key()), " does not parse"));
      }
    }
    RETURN_IF_ERROR(FromRocks(it->status(), absl::StrCat("pattern ", id)));
    return FromProto(record);
  }

  // Adds the change record and version to `batch`, and removes the change
  // log entries that fall out of Options::max_changes_retained. Returns the
  // oldest change retained once `batch` commits.
  std::uint64_t AddChange(rocksdb::WriteBatch* batch, const ChangeEvent& event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    v1::ChangeEvent proto;
    ToProto(event, &proto);
    batch->Put(changes, EncodeU64(event.version), proto.SerializeAsString());
    batch->Put(meta, kMetaVersion, absl::StrCat(event.version));
    const auto keep = static_cast<std::uint64_t>(options.max_changes_retained);
    if (keep == 0 || event.version < first_change + keep) return first_change;
    const std::uint64_t first = event.version - keep + 1;
    // Normally one entry leaves; a range only when the option was lowered
    // (one range tombstone, rather than one per change, keeps reads fast).
    if (first == first_change + 1) {
      batch->Delete(changes, EncodeU64(first_change));
    } else {
      batch->DeleteRange(changes, EncodeU64(first_change), EncodeU64(first));
    }
    return first;
  }

  absl::Status Commit(rocksdb::WriteBatch* batch, absl::string_view what) {
    return FromRocks(db->Write(write_options, batch), absl::StrCat(options.path, ": ", what));
  }

  // Records that change `v`, committed, is about to be acknowledged.
  absl::Status Acknowledge(std::uint64_t v) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    if (!ack_log) return absl::OkStatus();
    return common::WithContext(
        ack_log->Record(v),
        absl::StrCat(options.path, ": change ", v, " is stored but not recorded as acknowledged"));
  }
};

namespace {

class EmbeddedWatch final : public WatchHandle {
 public:
  EmbeddedWatch(EmbeddedPatternStore::Impl* impl, std::uint64_t since, WatchCallback callback)
      : impl_(impl), hub_(impl->hub), next_(since + 1), callback_(std::move(callback)) {
    {
      absl::MutexLock lock(&hub_->mu);
      ++hub_->running;
    }
    thread_ = std::thread([this] { Run(); });
  }
  ~EmbeddedWatch() override { Cancel(); }

  void Cancel() override {
    {
      absl::MutexLock lock(&hub_->mu);
      cancelled_ = true;
    }
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  }

 private:
  void Run() {
    Loop();
    absl::MutexLock lock(&hub_->mu);
    --hub_->running;
  }

  bool Woken() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(hub_->mu) {
    return cancelled_ || hub_->closing || hub_->published_version >= next_;
  }

  void Loop() {
    for (;;) {
      std::uint64_t target;
      bool closing;
      {
        absl::MutexLock lock(&hub_->mu);
        hub_->mu.Await(absl::Condition(this, &EmbeddedWatch::Woken));
        if (cancelled_) return;
        closing = hub_->closing;
        target = hub_->published_version;
      }
      if (closing) {
        callback_(absl::CancelledError("pattern store closed"));
        return;
      }
      // Every version <= target is committed to `changes`; read them in order.
      rocksdb::ReadOptions ro;
      const std::string upper = EncodeU64(target + 1);
      rocksdb::Slice upper_slice(upper);
      ro.iterate_upper_bound = &upper_slice;
      std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(ro, impl_->changes));
      absl::Status status;
      for (it->Seek(EncodeU64(next_)); it->Valid(); it->Next()) {
        v1::ChangeEvent proto;
        if (!proto.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
          status =
              absl::DataLossError(absl::StrCat("change ", DecodeU64(it->key()), " does not parse"));
          break;
        }
        absl::StatusOr<ChangeEvent> event = FromProto(proto);
        if (event.ok() && event->version != next_) event = Gap(event->version);
        if (!event.ok()) {
          status = event.status();
          break;
        }
        {
          absl::MutexLock lock(&hub_->mu);
          if (cancelled_) return;
        }
        if (!callback_(event)) return;
        next_ = event->version + 1;
      }
      if (status.ok()) status = FromRocks(it->status(), "watch");
      if (status.ok() && next_ <= target) {
        status = absl::DataLossError(absl::StrCat("change log ends before version ", target));
      }
      if (!status.ok()) {
        callback_(status);
        return;
      }
    }
  }

  // Versions [next_, found) are missing from the change log. When nothing
  // older is there either, they were trimmed (max_changes_retained): the
  // watcher must start over. Otherwise the log has a hole.
  absl::Status Gap(std::uint64_t found) const {
    std::unique_ptr<rocksdb::Iterator> it(
        impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->changes));
    it->SeekToFirst();
    if (it->Valid() && DecodeU64(it->key()) < next_) {
      return absl::DataLossError(
          absl::StrCat("change log has version ", found, " where ", next_, " was expected"));
    }
    return absl::OutOfRangeError(
        absl::StrCat("pattern store ", impl_->options.path, ": changes before version ", found,
                     " are no longer retained (Options::max_changes_retained), so the watch "
                     "cannot deliver version ",
                     next_, "; re-list and watch from the current version"));
  }

  EmbeddedPatternStore::Impl* impl_;
  std::shared_ptr<WatchHub> hub_;
  std::uint64_t next_;
  WatchCallback callback_;
  bool cancelled_ ABSL_GUARDED_BY(hub_->mu) = false;
  std::thread thread_;
};

}  // namespace

EmbeddedPatternStore::EmbeddedPatternStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

EmbeddedPatternStore::~EmbeddedPatternStore() {
  absl::MutexLock write_lock(&impl_->write_mu);
  impl_->SaveSnapshot();
}

absl::StatusOr<std::unique_ptr<EmbeddedPatternStore>> EmbeddedPatternStore::Open(
    const Options& options) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->write_options.sync = options.sync && !options.in_memory;
  if (options.in_memory) impl->options.index_snapshot = false;

  const std::string& path = options.path;
  if (!options.in_memory) {
    std::error_code ec;
    if (std::filesystem::exists(std::filesystem::path(path) / "CURRENT", ec)) {
      RETURN_IF_ERROR(CheckAcknowledged(path));
    } else if (HoldsStoreData(path)) {
      // RocksDB would create a new database here and delete the old tables
      // as obsolete.
      return absl::DataLossError(absl::StrCat(
          path, ": a damaged pattern store: it holds RocksDB data but no CURRENT file; ",
          RepairHint(path)));
    } else if (!options.create_if_missing) {
      return absl::NotFoundError(absl::StrCat(path, ": no pattern store there"));
    }
  }
  rocksdb::DBOptions db_options = BaseDbOptions();
  if (options.in_memory) {
    impl->mem_env.reset(rocksdb::NewMemEnv(rocksdb::Env::Default()));
    db_options.env = impl->mem_env.get();
  }
  db_options.create_if_missing = options.create_if_missing;
  db_options.create_missing_column_families = true;
  rocksdb::DB* raw = nullptr;
  RETURN_IF_ERROR(
      FromRocks(rocksdb::DB::Open(db_options, path, ColumnFamilies(), &impl->handles, &raw),
                absl::StrCat("opening pattern store ", path)));
  impl->db.reset(raw);
  impl->patterns = impl->handles[1];
  impl->tasks = impl->handles[2];
  impl->embeddings = impl->handles[3];
  impl->changes = impl->handles[4];
  impl->meta = impl->handles[5];

  rocksdb::WriteBatch init;
  ASSIGN_OR_RETURN(std::string schema, impl->GetMeta(kMetaSchema));
  std::uint32_t schema_version = kPatternSchemaVersion;
  if (schema.empty()) {
    init.Put(impl->meta, kMetaSchema, absl::StrCat(kPatternSchemaVersion));
  } else if (!absl::SimpleAtoi(schema, &schema_version)) {
    return absl::DataLossError(
        absl::StrCat(path, ": schema version \"", schema, "\" is not a number"));
  } else if (schema_version > kPatternSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": store has schema version ", schema_version,
        ", written by a newer premoe (this build reads up to ", kPatternSchemaVersion, ")"));
  }
  ASSIGN_OR_RETURN(impl->fingerprint, impl->GetMeta(kMetaFingerprint));
  if (!options.model_fingerprint.empty()) {
    if (impl->fingerprint.empty()) {
      impl->fingerprint = options.model_fingerprint;
      init.Put(impl->meta, kMetaFingerprint, impl->fingerprint);
    } else if (impl->fingerprint != options.model_fingerprint) {
      return absl::FailedPreconditionError(absl::StrCat(path, ": store holds patterns of model ",
                                                        impl->fingerprint, ", not of model ",
                                                        options.model_fingerprint));
    }
  }
  ASSIGN_OR_RETURN(std::string dim, impl->GetMeta(kMetaDim));
  if (!dim.empty() && !absl::SimpleAtoi(dim, &impl->dim)) {
    return absl::DataLossError(absl::StrCat(path, ": embedding dim \"", dim, "\" is not a number"));
  }
  if (options.embedding_dim > 0) {
    if (impl->dim == 0) {
      impl->dim = options.embedding_dim;
      init.Put(impl->meta, kMetaDim, absl::StrCat(impl->dim));
    } else if (impl->dim != options.embedding_dim) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": store's embeddings have dimension ", impl->dim, ", not ",
                       options.embedding_dim));
    }
  }
  ASSIGN_OR_RETURN(std::string version, impl->GetMeta(kMetaVersion));
  if (!version.empty() && !absl::SimpleAtoi(version, &impl->version)) {
    return absl::DataLossError(absl::StrCat(path, ": version \"", version, "\" is not a number"));
  }
  ASSIGN_OR_RETURN(std::string next_id, impl->GetMeta(kMetaNextId));
  if (!next_id.empty() && !absl::SimpleAtoi(next_id, &impl->next_id)) {
    return absl::DataLossError(absl::StrCat(path, ": next id \"", next_id, "\" is not a number"));
  }
  // Not with sync off: the file could then outlive the unsynced log tail in
  // a machine crash and report a loss that store never promised to prevent.
  if (!options.in_memory && options.sync) {
    const std::string ack_path = (std::filesystem::path(path) / internal::kAckFile).string();
    const std::uint64_t identity = IdentityHash(*impl->db);
    ASSIGN_OR_RETURN(std::string keeps_log, impl->GetMeta(kMetaAcked));
    if (keeps_log.empty()) {
      // A new store, or one from before the AckLog: the file first, then
      // the meta key that makes its absence damage.
      ASSIGN_OR_RETURN(impl->ack_log, internal::AckLog::Create(ack_path, {impl->version, identity},
                                                               impl->write_options.sync));
      init.Put(impl->meta, kMetaAcked, "1");
    } else {
      ASSIGN_OR_RETURN(impl->ack_log,
                       internal::AckLog::Open(ack_path, identity, impl->write_options.sync));
    }
  }
  if (init.Count() > 0) RETURN_IF_ERROR(impl->Commit(&init, "initialising meta"));
  // Uncontended: nothing else sees the store yet; held for the annotations.
  absl::MutexLock write_lock(&impl->write_mu);
  {
    std::unique_ptr<rocksdb::Iterator> it(
        impl->db->NewIterator(rocksdb::ReadOptions(), impl->changes));
    it->SeekToFirst();
    RETURN_IF_ERROR(FromRocks(it->status(), absl::StrCat(path, ": change log")));
    impl->first_change = it->Valid() ? DecodeU64(it->key()) : impl->version + 1;
  }

  // Temporary snapshot files of a process that died while writing one (the
  // RocksDB lock makes this process the only writer).
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(path, ec)) {
    if (entry.path().filename().string().starts_with(absl::StrCat(kSnapshotFile, ".tmp."))) {
      std::filesystem::remove(entry.path(), ec);
    }
  }
  const auto start = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(impl->ResetFromCatalog());
  IndexCopy& first = impl->copies[0];
  absl::Status loaded = impl->options.index_snapshot
                            ? impl->LoadSnapshot(first)
                            : absl::NotFoundError("Options::index_snapshot is off");
  impl->index_source = loaded.ok() ? "snapshot" : "rebuilt";
  if (!loaded.ok()) {
    if (!absl::IsNotFound(loaded)) {  // there was a snapshot: say why it was not used
      PREMOE_LOG_WARN("pattern store %s: index snapshot not used (%s); rebuilding", path,
                      loaded.ToString());
    }
    RETURN_IF_ERROR(impl->ResetFromCatalog());
    ASSIGN_OR_RETURN(first, impl->BuildCopy(impl->catalog));
  }
  ASSIGN_OR_RETURN(impl->copies[1], impl->CloneCopy(first));
  impl->index_open_micros = std::chrono::duration_cast<std::chrono::microseconds>(
                                std::chrono::steady_clock::now() - start)
                                .count();
  PREMOE_LOG_DEBUG("pattern store %s: %d patterns, index %s in %.1f ms", path, impl->catalog.size(),
                   impl->index_source, impl->index_open_micros / 1000.0);
  impl->Publish(impl->version);
  return std::unique_ptr<EmbeddedPatternStore>(new EmbeddedPatternStore(std::move(impl)));
}

absl::StatusOr<PutResult> EmbeddedPatternStore::Put(const Pattern& pattern) {
  Impl& s = *impl_;
  const std::string where = absl::StrCat("pattern \"", pattern.task_name, "\"");
  if (pattern.task_name.empty()) {
    return absl::InvalidArgumentError("pattern has an empty task name");
  }
  RETURN_IF_ERROR(common::CheckUtf8(pattern.task_name, "the pattern's task name"));
  if (pattern.task_name.size() > kMaxTaskNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat("task name of ", pattern.task_name.size(),
                                                   " bytes is over the limit of ",
                                                   kMaxTaskNameBytes));
  }
  if (pattern.schema_version > kPatternSchemaVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": schema version ", pattern.schema_version,
                     " is newer than this build's ", kPatternSchemaVersion));
  }
  if (pattern.model_fingerprint.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": no model fingerprint"));
  }
  if (pattern.embeddings.size() >= kMaxEmbeddingsPerPattern) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", pattern.embeddings.size(),
                                                   " embeddings, over the limit of ",
                                                   kMaxEmbeddingsPerPattern - 1));
  }
  for (const LayerScores& layer : pattern.layers) {
    for (std::size_t i = 0; i < layer.scores.size(); ++i) {
      if (!std::isfinite(layer.scores[i])) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": layer ", layer.layer, " score of expert ", i, " is ", layer.scores[i]));
      }
    }
  }

  v1::Pattern record;
  ToProto(pattern, &record);
  record.set_schema_version(kPatternSchemaVersion);
  if (record.created_unix_micros() == 0) record.set_created_unix_micros(NowMicros());
  const std::size_t bytes = record.ByteSizeLong();
  if (bytes > static_cast<std::size_t>(s.options.max_record_bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " encodes to ", bytes, " bytes, over the store's limit of ",
                     s.options.max_record_bytes, " (Options::max_record_bytes)"));
  }

  absl::MutexLock write_lock(&s.write_mu);
  if (!s.fingerprint.empty() && s.fingerprint != pattern.model_fingerprint) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, " is for model ", pattern.model_fingerprint,
                     " but this store serves model ", s.fingerprint));
  }
  std::int32_t dim = s.dim;
  std::vector<float> unit_vectors;
  unit_vectors.reserve(pattern.embeddings.size() * std::max<std::size_t>(dim, 1));
  for (std::size_t i = 0; i < pattern.embeddings.size(); ++i) {
    const std::vector<float>& v = pattern.embeddings[i].values;
    if (dim == 0) dim = static_cast<std::int32_t>(v.size());
    if (static_cast<std::int32_t>(v.size()) != dim) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": embedding ", i, " has dimension ",
                                                     v.size(), ", the store's is ", dim));
    }
    ASSIGN_OR_RETURN(std::vector<float> unit,
                     Normalized(v, absl::StrCat(where, ": embedding ", i)));
    unit_vectors.insert(unit_vectors.end(), unit.begin(), unit.end());
  }

  auto existing = s.by_task.find(pattern.task_name);
  const bool replace = existing != s.by_task.end();
  const std::uint64_t id = replace ? existing->second : s.next_id;
  const std::uint32_t old_count = replace ? s.catalog[id].num_embeddings : 0;
  // Every embedding is held in memory twice (the index's two copies), so the
  // store bounds them all, not only one record.
  std::int64_t held = 0;
  for (const auto& [other, entry] : s.catalog) held += entry.num_embeddings;
  const std::int64_t after =
      held - old_count + static_cast<std::int64_t>(pattern.embeddings.size());
  if (after * dim * static_cast<std::int64_t>(sizeof(float)) > s.options.max_embedding_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat(where, ": the store would hold ", after, " embeddings of dimension ", dim,
                     " (", after * dim * sizeof(float), " bytes), over its limit of ",
                     s.options.max_embedding_bytes, " (Options::max_embedding_bytes)"));
  }
  record.set_id(id);

  rocksdb::WriteBatch batch;
  if (s.fingerprint.empty()) batch.Put(s.meta, kMetaFingerprint, pattern.model_fingerprint);
  if (s.dim == 0 && dim != 0) batch.Put(s.meta, kMetaDim, absl::StrCat(dim));
  if (!replace) batch.Put(s.meta, kMetaNextId, absl::StrCat(id + 1));
  batch.Put(s.tasks, pattern.task_name, EncodeU64(id));
  if (replace) {
    batch.DeleteRange(s.embeddings, EncodeU64(EmbeddingKey(id, 0)),
                      EncodeU64(EmbeddingKey(id + 1, 0)));
  }
  std::vector<std::uint64_t> keys;
  keys.reserve(record.embeddings_size());
  for (int i = 0; i < record.embeddings_size(); ++i) {
    keys.push_back(EmbeddingKey(id, i));
    batch.Put(s.embeddings, EncodeU64(keys.back()), record.embeddings(i).SerializeAsString());
  }
  record.clear_embeddings();
  batch.Put(s.patterns, EncodeU64(id), record.SerializeAsString());
  const ChangeEvent event{s.version + 1, ChangeEvent::Kind::kPut, id, pattern.task_name};
  const std::uint64_t first_change = s.AddChange(&batch, event);
  RETURN_IF_ERROR(s.Commit(&batch, absl::StrCat("storing ", where)));
  s.first_change = first_change;

  {
    absl::WriterMutexLock state_lock(&s.state_mu);
    if (s.fingerprint.empty()) s.fingerprint = pattern.model_fingerprint;
    s.dim = dim;
    s.version = event.version;
    if (!replace) s.next_id = id + 1;
    s.catalog[id] = {pattern.task_name, static_cast<std::uint32_t>(keys.size())};
    s.by_task[pattern.task_name] = id;
  }
  // The change is committed; a failure here rebuilds the index from RocksDB.
  RETURN_IF_ERROR(s.ChangeIndex([&](IndexCopy& c) {
    RETURN_IF_ERROR(s.IndexRemove(c, id, old_count));
    RETURN_IF_ERROR(s.IndexAdd(c, dim, unit_vectors, keys));
    c.task_names[id] = pattern.task_name;
    return absl::OkStatus();
  }));
  s.AfterChange();
  s.Publish(event.version);
  RETURN_IF_ERROR(s.Acknowledge(event.version));
  return PutResult{id, event.version};
}

absl::StatusOr<Pattern> EmbeddedPatternStore::Get(std::uint64_t id) { return impl_->Read(id); }

absl::StatusOr<Pattern> EmbeddedPatternStore::GetByTask(absl::string_view task_name) {
  std::string value;
  rocksdb::Status s = impl_->db->Get(rocksdb::ReadOptions(), impl_->tasks,
                                     rocksdb::Slice(task_name.data(), task_name.size()), &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(absl::StrCat("no pattern for task \"", task_name, "\""));
  }
  RETURN_IF_ERROR(FromRocks(s, absl::StrCat("task \"", task_name, "\"")));
  absl::StatusOr<Pattern> pattern = impl_->Read(DecodeU64(value));
  if (absl::IsNotFound(pattern.status())) {  // deleted between the two reads
    return absl::NotFoundError(absl::StrCat("no pattern for task \"", task_name, "\""));
  }
  return pattern;
}

absl::StatusOr<ListPage> EmbeddedPatternStore::List(const ListRequest& request) {
  if (request.page_size < 0 || request.page_size > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page size ", request.page_size, " is not in [0, ", kMaxPageSize, "]"));
  }
  const std::int32_t page_size = request.page_size == 0 ? kDefaultPageSize : request.page_size;
  std::uint64_t start = 0;
  if (!request.page_token.empty() &&
      (request.page_token.rfind("id:", 0) != 0 ||
       !absl::SimpleAtoi(absl::string_view(request.page_token).substr(3), &start))) {
    return absl::InvalidArgumentError(
        absl::StrCat("page token \"", request.page_token, "\" is not one List returned"));
  }
  const rocksdb::Snapshot* snap = impl_->db->GetSnapshot();
  rocksdb::ReadOptions ro;
  ro.snapshot = snap;
  ListPage page;
  absl::Status status;
  {
    std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(ro, impl_->patterns));
    for (it->Seek(EncodeU64(start)); it->Valid(); it->Next()) {
      const std::uint64_t id = DecodeU64(it->key());
      if (static_cast<std::int32_t>(page.patterns.size()) == page_size) {
        page.next_page_token = absl::StrCat("id:", id);
        break;
      }
      v1::Pattern record;
      if (!record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        status = absl::DataLossError(absl::StrCat("pattern ", id, " does not parse"));
        break;
      }
      // Embeddings of this pattern in the same snapshot: count the key range.
      const std::string upper = EncodeU64(EmbeddingKey(id + 1, 0));
      rocksdb::Slice upper_slice(upper);
      rocksdb::ReadOptions ero = ro;
      ero.iterate_upper_bound = &upper_slice;
      std::unique_ptr<rocksdb::Iterator> eit(impl_->db->NewIterator(ero, impl_->embeddings));
      std::int32_t count = 0;
      for (eit->Seek(EncodeU64(EmbeddingKey(id, 0))); eit->Valid(); eit->Next()) ++count;
      page.patterns.push_back({id, record.task_name(), record.metric().name(), record.layers_size(),
                               count, record.created_unix_micros()});
    }
    if (status.ok()) status = FromRocks(it->status(), "list");
  }
  impl_->db->ReleaseSnapshot(snap);
  RETURN_IF_ERROR(status);
  return page;
}

absl::StatusOr<std::uint64_t> EmbeddedPatternStore::Delete(std::uint64_t id) {
  Impl& s = *impl_;
  absl::MutexLock write_lock(&s.write_mu);
  auto entry = s.catalog.find(id);
  if (entry == s.catalog.end()) return absl::NotFoundError(absl::StrCat("no pattern with id ", id));
  const std::string task_name = entry->second.task_name;
  const std::uint32_t count = entry->second.num_embeddings;
  rocksdb::WriteBatch batch;
  batch.Delete(s.patterns, EncodeU64(id));
  batch.Delete(s.tasks, task_name);
  batch.DeleteRange(s.embeddings, EncodeU64(EmbeddingKey(id, 0)),
                    EncodeU64(EmbeddingKey(id + 1, 0)));
  const ChangeEvent event{s.version + 1, ChangeEvent::Kind::kDelete, id, task_name};
  const std::uint64_t first_change = s.AddChange(&batch, event);
  RETURN_IF_ERROR(s.Commit(&batch, absl::StrCat("deleting pattern ", id)));
  s.first_change = first_change;
  {
    absl::WriterMutexLock state_lock(&s.state_mu);
    s.version = event.version;
    s.catalog.erase(id);
    s.by_task.erase(task_name);
  }
  RETURN_IF_ERROR(s.ChangeIndex([&](IndexCopy& c) {
    RETURN_IF_ERROR(s.IndexRemove(c, id, count));
    c.task_names.erase(id);
    // HNSW cannot remove: compact once deleted vectors are half the index.
    if (c.tombstones > 1024 && c.tombstones * 2 > c.total()) {
      return absl::AbortedError("compacting tombstones");
    }
    return absl::OkStatus();
  }));
  s.AfterChange();
  s.Publish(event.version);
  RETURN_IF_ERROR(s.Acknowledge(event.version));
  return event.version;
}

absl::StatusOr<std::vector<SearchMatch>> EmbeddedPatternStore::Search(
    std::span<const float> embedding, const SearchOptions& options) {
  if (options.k <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("search k must be positive (got ", options.k, ")"));
  }
  if (options.candidates < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("search candidates must be >= 0 (got ", options.candidates, ")"));
  }
  const Impl& s = *impl_;
  const int side = s.EnterCopy();
  absl::Cleanup leave = [&] { s.LeaveCopy(side); };
  const IndexCopy& c = s.copies[side];
  if (c.live() == 0) return std::vector<SearchMatch>();
  if (static_cast<std::int64_t>(embedding.size()) != c.dim()) {
    return absl::InvalidArgumentError(absl::StrCat("query embedding has dimension ",
                                                   embedding.size(), ", the store's is ", c.dim()));
  }
  ASSIGN_OR_RETURN(std::vector<float> query, Normalized(embedding, "query embedding"));
  // One query gains nothing from an OpenMP team, and on a loaded machine the
  // team's spin-waits cost milliseconds (measured: flat 10k p50 8 ms with the
  // default team). Concurrency comes from concurrent Searches instead. This
  // sets only the calling thread's OpenMP default (HNSW is FAISS's).
  if (c.hnsw) omp_set_num_threads(1);

  const std::int64_t ntotal = c.total();
  const std::int64_t live = c.live();
  const bool vote = options.voting != Voting::kMax;
  const std::int64_t candidates = options.candidates == 0 ? kDefaultCandidates : options.candidates;
  std::int64_t want = vote ? candidates : std::max<std::int64_t>(4 * options.k, 16);

  struct Tally {
    float best = -2;
    double sum = 0;
    std::int32_t votes = 0;
  };
  absl::flat_hash_map<std::uint64_t, Tally> tally;
  for (;;) {
    const std::int64_t fetch = std::min(ntotal, want + c.tombstones);
    std::vector<std::pair<float, std::int64_t>> nearest;  // (similarity, key; -1: deleted)
    if (c.flat) {
      RETURN_IF_ERROR(FaissCall("search", [&] {  // only allocation can throw
        for (const auto& [sim, key] : c.flat->Search(query, fetch)) {
          nearest.emplace_back(sim, static_cast<std::int64_t>(key));
        }
      }));
    } else {
      std::vector<float> sims(fetch);
      std::vector<idx_t> labels(fetch);
      RETURN_IF_ERROR(FaissCall(
          "search", [&] { c.hnsw->search(1, query.data(), fetch, sims.data(), labels.data()); }));
      for (std::int64_t i = 0; i < fetch; ++i) {
        if (labels[i] >= 0) nearest.emplace_back(sims[i], c.label_to_key[labels[i]]);
      }
    }
    tally.clear();
    std::int64_t taken = 0;
    for (const auto& [sim, key] : nearest) {
      if (taken >= want) break;
      if (key < 0) continue;  // deleted (HNSW tombstone)
      ++taken;
      Tally& t = tally[static_cast<std::uint64_t>(key) >> kEmbeddingIndexBits];
      t.best = std::max(t.best, sim);
      t.sum += sim;
      ++t.votes;
    }
    // kMax is exact only once k distinct patterns are in (or nothing is left).
    if (vote || static_cast<std::int64_t>(tally.size()) >= options.k || want >= live) break;
    want *= 4;
  }

  std::vector<SearchMatch> matches;
  matches.reserve(tally.size());
  for (const auto& [id, t] : tally) {
    auto name = c.task_names.find(id);
    if (name == c.task_names.end()) continue;
    SearchMatch m{id, name->second, t.best, t.votes};
    if (options.voting == Voting::kMean) m.similarity = static_cast<float>(t.sum / t.votes);
    matches.push_back(std::move(m));
  }
  const bool by_count = options.voting == Voting::kCount;
  std::sort(matches.begin(), matches.end(), [&](const SearchMatch& a, const SearchMatch& b) {
    if (by_count && a.votes != b.votes) return a.votes > b.votes;
    if (a.similarity != b.similarity) return a.similarity > b.similarity;
    return a.id < b.id;
  });
  if (static_cast<std::int64_t>(matches.size()) > options.k) matches.resize(options.k);
  return matches;
}

absl::StatusOr<std::unique_ptr<WatchHandle>> EmbeddedPatternStore::Watch(
    std::uint64_t since_version, WatchCallback callback) {
  if (!callback) return absl::InvalidArgumentError("watch needs a callback");
  return std::unique_ptr<WatchHandle>(
      std::make_unique<EmbeddedWatch>(impl_.get(), since_version, std::move(callback)));
}

absl::StatusOr<StoreInfo> EmbeddedPatternStore::Info() {
  absl::ReaderMutexLock lock(&impl_->state_mu);
  StoreInfo info;
  info.model_fingerprint = impl_->fingerprint;
  info.embedding_dim = impl_->dim;
  info.version = impl_->version;
  info.num_patterns = static_cast<std::int64_t>(impl_->catalog.size());
  for (const auto& [id, entry] : impl_->catalog) info.num_embeddings += entry.num_embeddings;
  info.index_kind = impl_->options.index;
  info.index_source = impl_->index_source;
  info.index_open_micros = impl_->index_open_micros;
  return info;
}

absl::Status EmbeddedPatternStore::Verify() {
  Impl& s = *impl_;
  // Writers hold write_mu across commit and index update: take it so that
  // RocksDB and the index are compared at one point in time.
  absl::MutexLock write_lock(&s.write_mu);
  absl::ReaderMutexLock lock(&s.state_mu);
  const IndexCopy& c = s.writer_copy();
  auto fail = [&](auto&&... parts) {
    return absl::DataLossError(absl::StrCat(s.options.path, ": ", parts...));
  };
  absl::flat_hash_map<std::uint64_t, std::string> patterns;
  std::unique_ptr<rocksdb::Iterator> it(s.db->NewIterator(rocksdb::ReadOptions(), s.patterns));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    v1::Pattern record;
    const std::uint64_t id = DecodeU64(it->key());
    if (!record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return fail("pattern ", id, " does not parse");
    }
    if (record.id() != id) return fail("pattern under key ", id, " says id ", record.id());
    if (id >= s.next_id) return fail("pattern ", id, " is not below next id ", s.next_id);
    patterns[id] = record.task_name();
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "verify"));
  std::size_t tasks = 0;
  it.reset(s.db->NewIterator(rocksdb::ReadOptions(), s.tasks));
  for (it->SeekToFirst(); it->Valid(); it->Next(), ++tasks) {
    const std::uint64_t id = DecodeU64(it->value());
    auto p = patterns.find(id);
    if (p == patterns.end() || p->second != it->key().ToString()) {
      return fail("task \"", it->key().ToString(), "\" points at pattern ", id,
                  " which is missing or another task's");
    }
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "verify"));
  if (tasks != patterns.size()) return fail(patterns.size(), " patterns but ", tasks, " tasks");
  if (s.catalog.size() != patterns.size()) {
    return fail("catalog has ", s.catalog.size(), " patterns, RocksDB ", patterns.size());
  }
  absl::flat_hash_map<std::uint64_t, std::int64_t> flat_rows;  // key -> row
  for (std::int64_t r = 0; c.flat && r < c.flat->size(); ++r) flat_rows[c.flat->key(r)] = r;
  if (static_cast<std::int64_t>(flat_rows.size()) != (c.flat ? c.flat->size() : 0)) {
    return fail("the flat index holds a key twice");
  }
  std::int64_t count = 0;
  it.reset(s.db->NewIterator(rocksdb::ReadOptions(), s.embeddings));
  std::vector<float> stored(s.dim);
  for (it->SeekToFirst(); it->Valid(); it->Next(), ++count) {
    const std::uint64_t key = DecodeU64(it->key());
    if (!patterns.contains(key >> kEmbeddingIndexBits)) {
      return fail("embedding ", key, " belongs to no pattern");
    }
    v1::MatchEmbedding e;
    if (!e.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())) ||
        e.values_size() != s.dim) {
      return fail("embedding ", key, " does not parse or has the wrong dimension");
    }
    ASSIGN_OR_RETURN(std::vector<float> unit,
                     Normalized({e.values().data(), static_cast<std::size_t>(e.values_size())},
                                "stored embedding"));
    auto l = c.hnsw ? c.key_to_label.find(key) : flat_rows.find(key);
    if (l == (c.hnsw ? c.key_to_label.end() : flat_rows.end())) {
      return fail("embedding ", key, " is not in the index");
    }
    absl::Status st = FaissCall("reconstruct", [&] {
      if (c.hnsw) {
        c.hnsw->reconstruct(l->second, stored.data());
      } else {
        std::span<const float> row = c.flat->row(l->second);
        std::copy(row.begin(), row.end(), stored.begin());
      }
    });
    if (!st.ok()) return fail("embedding ", key, " is not in the index (", st.message(), ")");
    for (std::int32_t d = 0; d < s.dim; ++d) {
      if (std::abs(stored[d] - unit[d]) > 1e-6f) {
        return fail("embedding ", key, " differs in the index at position ", d);
      }
    }
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "verify"));
  const std::int64_t indexed = c.live();
  if (indexed != count) return fail("index holds ", indexed, " embeddings, RocksDB ", count);
  // The other copy must say the same (left-right: both change together).
  const IndexCopy& other = s.copies[1 - s.current.load()];
  const std::int64_t other_indexed = other.live();
  if (other_indexed != indexed || other.task_names != c.task_names) {
    return fail("the two index copies differ (", indexed, " and ", other_indexed, " embeddings)");
  }
  return absl::OkStatus();
}

absl::Status EmbeddedPatternStore::Compact() {
  Impl& s = *impl_;
  rocksdb::FlushOptions flush;
  flush.wait = true;
  RETURN_IF_ERROR(
      FromRocks(s.db->Flush(flush, s.handles), absl::StrCat(s.options.path, ": flush")));
  for (rocksdb::ColumnFamilyHandle* cf : s.handles) {
    RETURN_IF_ERROR(
        FromRocks(s.db->CompactRange(rocksdb::CompactRangeOptions(), cf, nullptr, nullptr),
                  absl::StrCat(s.options.path, ": compacting ", cf->GetName())));
  }
  return absl::OkStatus();
}

absl::StatusOr<EmbeddedPatternStore::RepairReport> EmbeddedPatternStore::Repair(
    const std::string& from, const std::string& to) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(from, ec)) {
    return absl::NotFoundError(absl::StrCat(from, ": no such directory"));
  }
  if (fs::exists(to, ec) && !fs::is_empty(to, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat(to, ": exists and is not empty; repair writes a new directory"));
  }
  RepairReport report;
  if (auto acked = internal::AckLog::Read((fs::path(from) / internal::kAckFile).string());
      acked.ok()) {
    report.acknowledged = acked->version;
  }
  fs::create_directories(to, ec);
  if (ec) return absl::InternalError(absl::StrCat(to, ": ", ec.message()));
  // RocksDB's files only: the lock is the source's, and premoe's own files
  // are remade for what the repair recovers.
  for (const auto& entry : fs::directory_iterator(from, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name == "LOCK" || name == internal::kAckFile ||
        name.starts_with(kSnapshotFile)) {
      continue;
    }
    const std::string dest = (fs::path(to) / name).string();
    fs::copy_file(entry.path(), dest, ec);
    if (ec)
      return absl::InternalError(
          absl::StrCat("copying ", entry.path().string(), ": ", ec.message()));
    // RepairDB syncs what it writes, not the copies it reads.
    const int fd = ::open(dest.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return common::ErrnoStatus(errno, dest, "open");
    const int synced = ::fsync(fd);
    ::close(fd);
    if (synced != 0) return common::ErrnoStatus(errno, dest, "fsync");
  }
  if (ec) return absl::InternalError(absl::StrCat(from, ": ", ec.message()));
  // RocksDB's own recovery first: it knows the column families from the
  // MANIFEST (which CURRENT names; a lost CURRENT is pointed at the newest)
  // and replays the write-ahead logs up to their last intact record.
  // RepairDB is the last resort: it keeps the tables, but without a MANIFEST
  // it cannot place log records of any column family but the default.
  if (!fs::exists(fs::path(to) / "CURRENT", ec)) {
    std::string newest;
    std::uint64_t newest_number = 0;
    for (const auto& entry : fs::directory_iterator(to, ec)) {
      const std::string name = entry.path().filename().string();
      std::uint64_t number = 0;
      if (name.starts_with("MANIFEST-") &&
          absl::SimpleAtoi(absl::string_view(name).substr(9), &number) && number >= newest_number) {
        newest = name;
        newest_number = number;
      }
    }
    if (!newest.empty()) {
      RETURN_IF_ERROR(
          common::WriteFileAtomically((fs::path(to) / "CURRENT").string(), newest + "\n"));
    }
  }
  rocksdb::DBOptions db_options = BaseDbOptions();
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status opened = rocksdb::DB::Open(db_options, to, ColumnFamilies(), &handles, &raw);
  report.method = "recovery to the last intact record of the write-ahead logs";
  if (!opened.ok()) {
    PREMOE_LOG_WARN("repairing %s: RocksDB's recovery failed (%s); rebuilding from the tables", to,
                    opened.ToString());
    report.method = "RocksDB RepairDB from the tables";
    RETURN_IF_ERROR(FromRocks(rocksdb::RepairDB(to, db_options, ColumnFamilies()),
                              absl::StrCat("repairing ", to)));
    db_options.create_missing_column_families = true;  // RepairDB makes those it has tables of
    RETURN_IF_ERROR(FromRocks(rocksdb::DB::Open(db_options, to, ColumnFamilies(), &handles, &raw),
                              absl::StrCat("opening repaired store ", to)));
  }
  {
    // The copied meta says an AckLog is kept; the repaired store starts a
    // new one at the version it recovered.
    std::unique_ptr<rocksdb::DB> db(raw);
    rocksdb::WriteOptions wo;
    wo.sync = true;
    const rocksdb::Status deleted = db->Delete(wo, handles.back(), kMetaAcked);
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
    RETURN_IF_ERROR(FromRocks(deleted, absl::StrCat("repairing ", to)));
    RETURN_IF_ERROR(FromRocks(db->Close(), absl::StrCat("closing repaired store ", to)));
  }
  Options options;
  options.path = to;
  options.create_if_missing = false;
  ASSIGN_OR_RETURN(std::unique_ptr<EmbeddedPatternStore> repaired, Open(options));
  RETURN_IF_ERROR(common::WithContext(repaired->Verify(), absl::StrCat("repaired store ", to)));
  ASSIGN_OR_RETURN(StoreInfo info, repaired->Info());
  report.num_patterns = info.num_patterns;
  report.num_embeddings = info.num_embeddings;
  report.version = info.version;
  return report;
}

}  // namespace premoe::store
