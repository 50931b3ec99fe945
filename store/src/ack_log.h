// AckLog: the highest store version acknowledged to a client, kept beside
// RocksDB in the file `acknowledged`.
//
// Why: RocksDB cannot tell a write-ahead log whose last record was cut short
// by a crash (that change was never acknowledged, and dropping it is right)
// from one whose fsync'd tail was damaged or truncated later (that change was
// acknowledged, and dropping it loses data). Recording each acknowledged
// version here, after RocksDB has made it durable and before the caller is
// told, lets Open compare: RocksDB recovering less than this file says is
// DATA_LOSS, never a silent rollback.
//
// Format: two 32-byte slots, version v written to slot v % 2, each
//   magic "pmacked1" | u64 version | u64 store identity | u64 XXH3-64 of the
//   24 bytes before it   (little-endian)
// A slot is one aligned 32-byte pwrite, so a torn write damages at most the
// slot being written; the other still holds the previous version.
//
// Not thread-safe: the store writes it under its writer lock.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace premoe::store::internal {

inline constexpr char kAckFile[] = "acknowledged";

class AckLog {
 public:
  struct Entry {
    std::uint64_t version = 0;
    // Identifies the store the file belongs to (a hash of RocksDB's
    // DB identity), so a file copied from another store is recognised.
    std::uint64_t identity = 0;
  };

  // The newest intact slot of `path`. NOT_FOUND when the file is absent;
  // DATA_LOSS naming the file when it holds no intact slot.
  static absl::StatusOr<Entry> Read(const std::string& path);

  // Creates `path` (replacing any file there) holding `entry` in both slots,
  // fsynced with its directory, and keeps it open for Record.
  static absl::StatusOr<std::unique_ptr<AckLog>> Create(const std::string& path, Entry entry,
                                                        bool sync);
  // Opens an existing file for Record.
  static absl::StatusOr<std::unique_ptr<AckLog>> Open(const std::string& path,
                                                      std::uint64_t identity, bool sync);
  ~AckLog();
  AckLog(const AckLog&) = delete;
  AckLog& operator=(const AckLog&) = delete;

  // Records that `version` is acknowledged: one slot written, then fdatasync
  // when `sync`.
  absl::Status Record(std::uint64_t version);

 private:
  AckLog(std::string path, int fd, std::uint64_t identity, bool sync)
      : path_(std::move(path)), fd_(fd), identity_(identity), sync_(sync) {}
  std::string path_;
  int fd_;
  std::uint64_t identity_;
  bool sync_;
};

}  // namespace premoe::store::internal
