// Whole-file reads and crash-safe whole-file writes.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace premoe::common {

// The status for a failed system call on `path`: NOT_FOUND (ENOENT,
// ENOTDIR), PERMISSION_DENIED (EACCES, EPERM), else INTERNAL; the message
// names the path, the call and strerror(err).
absl::Status ErrnoStatus(int err, const std::string& path, absl::string_view what);

// Reads `path`. Files over `max_bytes` are refused with INVALID_ARGUMENT
// before anything is allocated. Errors name the path.
absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     std::uint64_t max_bytes = std::uint64_t{1} << 32);

// Writes `contents` to a temporary file beside `path`, fsyncs it, renames it
// over `path` and fsyncs the directory: a crash leaves the old file or the
// new one, never a torn mix.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

// The streaming form of WriteFileAtomically, for files too large to hold in
// one buffer (a repacked checkpoint). Append() writes to a temporary file
// beside `path`; Commit() fsyncs it, renames it over `path` and fsyncs the
// directory. Destroyed without a successful Commit(), it removes the
// temporary file and leaves `path` as it was. Not thread-safe.
class AtomicFileWriter {
 public:
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> Open(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  absl::Status Append(std::span<const std::uint8_t> bytes);
  absl::Status Append(absl::string_view bytes);
  absl::Status Commit();

 private:
  AtomicFileWriter(std::string path, std::string tmp, int fd)
      : path_(std::move(path)), tmp_(std::move(tmp)), fd_(fd) {}
  std::string path_;
  std::string tmp_;
  int fd_;
  bool committed_ = false;
};

}  // namespace premoe::common
