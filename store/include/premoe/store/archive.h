// Pattern archives: the portable file that moves patterns between stores and
// clusters (`premoe patterns export|import`).
//
// Format (version 1; integers little-endian):
//   header   magic "\x89premoe\n" (8 bytes) | u32 format version
//   record*  u64 payload length | u64 XXH3-64 of the payload | payload
//            (payload: one premoe.v1.Pattern, store::EncodePattern's bytes)
//   trailer  u64 0xFFFFFFFFFFFFFFFF (end marker; never a valid length) |
//            u64 record count | u64 XXH3-64 of (count, every record's checksum)
// The magic's high byte and newline catch 7-bit and line-ending mangling in
// transfer. One record per pattern keeps each well under protobuf's 2 GiB
// message limit however large the archive grows. The trailer detects a
// truncated file (it is missing, or the count disagrees) and records that
// were dropped, repeated or reordered (its checksum covers their checksums).
// Task names are unique within an archive.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "premoe/common/file.h"
#include "premoe/common/mapped_file.h"
#include "premoe/store/pattern.h"

namespace premoe::store {

// The format version this build writes, and the newest it reads.
inline constexpr std::uint32_t kArchiveFormatVersion = 1;

// Streams patterns into a new archive at `path`. Nothing appears at `path`
// until Commit() succeeds, and then the whole archive does at once (written
// beside it, fsynced and renamed); destroyed without Commit(), it leaves
// `path` as it was. Memory: one encoded pattern at a time. Not thread-safe.
class PatternArchiveWriter {
 public:
  static absl::StatusOr<std::unique_ptr<PatternArchiveWriter>> Create(const std::string& path);

  // Appends `pattern` (as it is: id and created time included).
  // INVALID_ARGUMENT for a task name already in this archive.
  absl::Status Add(const Pattern& pattern);
  // Writes the trailer and moves the archive into place. Call once.
  absl::Status Commit();

  std::int64_t count() const { return static_cast<std::int64_t>(tasks_.size()); }

 private:
  PatternArchiveWriter(std::string path, std::unique_ptr<common::AtomicFileWriter> file)
      : path_(std::move(path)), file_(std::move(file)) {}
  std::string path_;
  std::unique_ptr<common::AtomicFileWriter> file_;
  std::string checksums_;  // the records' checksums, for the trailer's
  std::set<std::string> tasks_;
};

// Reads an archive, validating all of it in Open before anything is returned.
// Thread-safe after Open (immutable; any number of readers). The file is
// memory-mapped: Read() decodes one record at a time.
class PatternArchiveReader {
 public:
  // What Open learned about each record, in file order.
  struct Entry {
    std::string task_name;
    std::string model_fingerprint;
    // Byte offset of the record (its length field) in the file.
    std::uint64_t offset = 0;
    // Length of its payload (the encoded pattern).
    std::uint64_t bytes = 0;
  };

  // Checks the header, every record's bounds and checksum, that every record
  // decodes as a pattern (of a schema this build reads), that task names are
  // unique, and the trailer. Errors name the file, and the record index and
  // byte offset where it went wrong:
  //   INVALID_ARGUMENT     not an archive (bad magic), a duplicate task name
  //   FAILED_PRECONDITION  a newer format version, or a record of a newer
  //                        pattern schema
  //   DATA_LOSS            truncated, a checksum mismatch, a record that does
  //                        not decode, a bad trailer, bytes after the trailer
  //   NOT_FOUND etc.       the file cannot be opened
  static absl::StatusOr<std::unique_ptr<PatternArchiveReader>> Open(const std::string& path);

  const std::vector<Entry>& entries() const { return entries_; }
  // Pattern `index` (< entries().size()), as it was added.
  absl::StatusOr<Pattern> Read(std::size_t index) const;

 private:
  PatternArchiveReader(std::shared_ptr<const common::MappedFile> file, std::vector<Entry> entries)
      : file_(std::move(file)), entries_(std::move(entries)) {}
  std::shared_ptr<const common::MappedFile> file_;
  std::vector<Entry> entries_;
};

}  // namespace premoe::store
