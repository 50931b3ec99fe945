// A read-only memory-mapped file.
//
// Checkpoints are read through this: tensor views point straight into the
// mapping, so opening a 700 GB model costs page-table entries, not RAM, and
// pages come from the page cache only when touched.
//
// Ownership: the mapping lives as long as the MappedFile; views into data()
// must not outlive it (hold a shared_ptr where views are handed out).
// Thread safety: immutable after Open(); any number of readers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"

namespace premoe::common {

class MappedFile {
 public:
  // Maps `path` read-only (MAP_SHARED, PROT_READ). An empty file maps to an
  // empty span. Errors: NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT (not a
  // regular file), INTERNAL for mmap failures; each names the path.
  static absl::StatusOr<std::shared_ptr<const MappedFile>> Open(const std::string& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  std::span<const std::uint8_t> data() const { return {data_, size_}; }
  std::size_t size() const { return size_; }

  // Hints that [offset, offset+length) will be read soon (madvise WILLNEED);
  // out-of-range parts are clipped. Best effort: never fails.
  void Prefetch(std::size_t offset, std::size_t length) const;

  // Drops this process's mapping of the pages of [offset, offset+length)
  // (madvise DONTNEED), so bytes already copied out stop counting in its RSS.
  // The page cache keeps them and a later read faults them back in, so
  // concurrent readers stay correct. Best effort: never fails.
  void Release(std::size_t offset, std::size_t length) const;

  // Copies bytes [offset, offset + dst.size()) of the file into `dst` with
  // pread(2): the kernel copies from the page cache, with none of a
  // mapping's page faults and page-table work, and the mapping's RSS does
  // not grow. The fast path for reading a tensor into memory that is reused.
  // OUT_OF_RANGE when the range is outside the file; INTERNAL (naming the
  // path) on a read error.
  absl::Status ReadAt(std::size_t offset, std::span<std::uint8_t> dst) const;

 private:
  MappedFile(std::string path, int fd, const std::uint8_t* data, std::size_t size)
      : path_(std::move(path)), fd_(fd), data_(data), size_(size) {}

  std::string path_;
  int fd_;  // kept open for ReadAt
  const std::uint8_t* data_;
  std::size_t size_;
};

}  // namespace premoe::common
