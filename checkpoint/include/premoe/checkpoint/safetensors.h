// Reading and writing checkpoints in the safetensors format
// (https://github.com/huggingface/safetensors), the format every model premoe
// serves is distributed in.
//
// Byte layout of one .safetensors file (integers little-endian):
//
//   [0, 8)         N, a u64: the length of the header
//   [8, 8 + N)     the header: a UTF-8 JSON object, right-padded with spaces
//   [8 + N, EOF)   the data section: every tensor's bytes, row-major (C order),
//                  elements in their little-endian encoding
//
// The header maps each tensor name to
//   {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
// where [begin, end) is relative to the start of the data section, plus an
// optional "__metadata__": {string: string}. A 0-d tensor has shape [] and one
// element; a tensor with a 0 in its shape has no bytes (begin == end).
//
// The reader is strict, because checkpoints come from outside: any malformed
// or hostile file gives INVALID_ARGUMENT (never a crash or an allocation
// larger than the header limit allows), with a message of the form
// "<path>: <problem>" that names the tensor involved, e.g.
//   /m/model.safetensors: tensor "w" spans bytes [812, 4908) of the data
//   section but it has 4096
// Besides the JSON being well formed (duplicate keys refused), the tensors
// must tile the data section exactly, as the format requires: sorted by
// offset, each begins where the previous one ends, the first at 0 and the
// last at the end of the file. Holes, overlaps and trailing bytes are errors.
// Unknown keys inside a tensor entry are ignored, as the Python library does.
//
// A sharded checkpoint is a directory holding several .safetensors files and
// model.safetensors.index.json:
//   {"metadata": {"total_size": 123}, "weight_map": {"<tensor>": "<shard file>", ...}}
//
// Alignment: files written by SafetensorsWriter or by the Python library
// order tensors by decreasing element size, so every tensor's bytes start at
// a multiple of its element size (the data section starts at a multiple of 8,
// and mappings are page-aligned). Files from other writers need not be
// aligned: check before reinterpreting TensorView::bytes as typed elements.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "premoe/common/mapped_file.h"

namespace premoe::checkpoint {

// Element types premoe reads and writes. Other safetensors dtypes (F64, BOOL,
// I16, U16, U32, U64, F8_E5M2, ...) are refused with INVALID_ARGUMENT.
enum class DType { kF32, kF16, kBF16, kF8E4M3, kI8, kU8, kI32, kI64 };

// The safetensors spelling: "F32", "F16", "BF16", "F8_E4M3", "I8", "U8", "I32", "I64".
absl::string_view DTypeName(DType dtype);

// Bytes per element: 4, 2, 2, 1, 1, 1, 4, 8.
int64_t DTypeSize(DType dtype);

// Inverse of DTypeName (case-sensitive, as in the format). Any other string
// gives INVALID_ARGUMENT naming it and listing the supported spellings.
absl::StatusOr<DType> ParseDType(absl::string_view name);

// One tensor inside a SafetensorsFile: metadata plus a zero-copy view of its
// bytes. `name` and `bytes` point into the SafetensorsFile (and its mapping)
// that produced the view; they are valid while that file object lives.
struct TensorView {
  absl::string_view name;
  DType dtype = DType::kF32;
  // Non-negative; empty for a 0-d (scalar) tensor.
  std::vector<int64_t> shape;
  // Exactly numel() * DTypeSize(dtype) bytes, row-major.
  std::span<const uint8_t> bytes;

  // Product of `shape` (1 for a 0-d tensor, 0 when any dimension is 0). Views
  // made by this library have shapes whose product is known not to overflow.
  int64_t numel() const;
};

struct SafetensorsOptions {
  // Largest header (N) accepted, in bytes; also the largest
  // model.safetensors.index.json read. Parsing needs memory proportional to
  // the header, so this bounds what a hostile file can make the reader
  // allocate. Default: 100'000'000, the Python library's limit.
  uint64_t max_header_bytes = 100'000'000;

  // INVALID_ARGUMENT if max_header_bytes is 0.
  absl::Status Validate() const;
};

// One validated .safetensors file.
//
// Ownership: holds the file's read-only mapping (when opened from a path);
// every TensorView it hands out points into it, so keep the shared_ptr alive
// while views are in use. Thread safety: immutable after Open/Parse; any
// number of threads may read concurrently.
class SafetensorsFile {
 public:
  // Maps `path` and validates the whole header (see the file comment). Tensor
  // bytes are not read: pages come in when a view's bytes are touched.
  // Errors: those of MappedFile::Open (NOT_FOUND, ...), INVALID_ARGUMENT for
  // a malformed file or invalid options; each message starts with `path`.
  static absl::StatusOr<std::shared_ptr<const SafetensorsFile>> Open(
      const std::string& path, const SafetensorsOptions& options = {});

  // Validates `bytes` as a whole .safetensors file; `path` is only used in
  // messages. The result does not own `bytes`: the caller keeps them alive,
  // unchanged, as long as the result or any view of it is in use. Open() is
  // this plus a mapping, so both accept exactly the same files.
  static absl::StatusOr<std::shared_ptr<const SafetensorsFile>> Parse(
      absl::string_view path, std::span<const uint8_t> bytes,
      const SafetensorsOptions& options = {});

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }

  // Every tensor, in the order of their bytes in the data section (ties, i.e.
  // empty tensors at the same offset, by name).
  const std::vector<TensorView>& tensors() const { return tensors_; }

  // The tensor called `name`, or nullptr. The pointer lives as long as this.
  const TensorView* Find(absl::string_view name) const;
  bool Contains(absl::string_view name) const { return Find(name) != nullptr; }
  // As Find, but NOT_FOUND "<path>: no tensor named "<name>"" when absent.
  absl::StatusOr<TensorView> Get(absl::string_view name) const;

  // The header's "__metadata__" (empty when it has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Offset of the data section in the file: 8 + N.
  uint64_t data_offset() const { return data_offset_; }
  // Size of the whole file in bytes.
  uint64_t file_size() const { return file_size_; }
  // Sum of every tensor's byte size (the data section's size).
  uint64_t data_bytes() const { return file_size_ - data_offset_; }

  // Hints the kernel to read `tensor`'s pages (madvise WILLNEED) ahead of use;
  // `tensor` must come from this file. Best effort; does nothing for Parse().
  void Prefetch(const TensorView& tensor) const;
  // MappedFile::Release on `tensor`'s bytes (a view of this file).
  void Release(const TensorView& tensor) const;
  // Copies `tensor`'s bytes (a view of this file, or part of one) into `dst`,
  // of exactly that size: pread(2) from the page cache for a mapped file
  // (MappedFile::ReadAt), a plain copy after Parse(). INVALID_ARGUMENT for a
  // size mismatch or a view of another file; INTERNAL on a read error.
  absl::Status ReadInto(const TensorView& tensor, std::span<uint8_t> dst) const;

 private:
  SafetensorsFile() = default;
  static absl::Status ParseInto(SafetensorsFile& file, std::span<const uint8_t> bytes,
                                const SafetensorsOptions& options);

  std::string path_;
  std::shared_ptr<const common::MappedFile> mapping_;  // null after Parse()
  std::span<const uint8_t> bytes_;                     // the whole file
  uint64_t data_offset_ = 0;
  uint64_t file_size_ = 0;
  // Names live in their own nodes so the views' string_views stay valid.
  std::vector<std::unique_ptr<const std::string>> names_;
  std::vector<TensorView> tensors_;
  absl::flat_hash_map<absl::string_view, size_t> index_;  // name -> tensors_ position
  std::map<std::string, std::string> metadata_;
};

// A model's weights: one .safetensors file or a sharded set with an index.
//
// Open() accepts
//   - a directory holding model.safetensors (preferred when both exist, as in
//     transformers) or model.safetensors.index.json;
//   - a path to a .safetensors file;
//   - a path to an index file (any name ending in ".json").
// Every shard is opened and validated up front (cheap: mappings, headers).
// An index is checked against its shards: each shard file named in the
// weight_map must exist in the index's directory (a name with "/" or equal to
// "." or ".." is refused) and be valid; each tensor in the weight_map must be
// in the shard it is mapped to; and a shard may not hold a tensor that the
// weight_map maps elsewhere or does not list. Files in the directory that the
// index does not name are ignored.
//
// Ownership: holds every shard; views stay valid while the Checkpoint lives.
// Thread safety: immutable after Open; any number of concurrent readers.
class Checkpoint {
 public:
  // Errors: NOT_FOUND when `path` (or a shard) does not exist or a directory
  // holds neither file; INVALID_ARGUMENT for a malformed index or shard; each
  // message names the file at fault.
  static absl::StatusOr<std::unique_ptr<const Checkpoint>> Open(
      const std::string& path, const SafetensorsOptions& options = {});

  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  // The path given to Open.
  const std::string& path() const { return path_; }
  // True when opened through an index.
  bool sharded() const { return !index_path_.empty(); }
  // The index file's path; empty when not sharded.
  const std::string& index_path() const { return index_path_; }

  // The tensor called `name`, or nullptr. The pointer lives as long as this.
  const TensorView* Find(absl::string_view name) const;
  bool Contains(absl::string_view name) const { return Find(name) != nullptr; }
  // As Find, but NOT_FOUND "<path>: no tensor named "<name>" in this checkpoint".
  absl::StatusOr<TensorView> Get(absl::string_view name) const;
  // The shard holding `name`, or nullptr.
  const SafetensorsFile* ShardOf(absl::string_view name) const;

  // Every tensor name, sorted bytewise.
  const std::vector<absl::string_view>& names() const { return names_; }
  // Sum of every tensor's byte size.
  uint64_t total_bytes() const { return total_bytes_; }
  // The shard files' paths, sorted; a single path when not sharded.
  const std::vector<std::string>& shard_files() const { return shard_files_; }
  // The shards, in the order of shard_files().
  const std::vector<std::shared_ptr<const SafetensorsFile>>& shards() const { return shards_; }
  // The index's "metadata" object: strings as they are, other values as
  // compact JSON (so "total_size" reads "123"). Empty when not sharded.
  const std::map<std::string, std::string>& index_metadata() const { return index_metadata_; }

  // SafetensorsFile::Prefetch on the tensor called `name`; unknown names are ignored.
  void Prefetch(absl::string_view name) const;
  // SafetensorsFile::Release on the tensor called `name`; unknown names are ignored.
  void Release(absl::string_view name) const;

 private:
  struct Entry {
    const TensorView* view;
    const SafetensorsFile* shard;
  };
  Checkpoint() = default;
  absl::Status AddShard(std::shared_ptr<const SafetensorsFile> shard);

  std::string path_;
  std::string index_path_;
  std::vector<std::string> shard_files_;
  std::vector<std::shared_ptr<const SafetensorsFile>> shards_;
  absl::flat_hash_map<absl::string_view, Entry> entries_;
  std::vector<absl::string_view> names_;
  uint64_t total_bytes_ = 0;
  std::map<std::string, std::string> index_metadata_;
};

// How SafetensorsWriter::WriteSharded splits a checkpoint.
struct ShardOptions {
  // Most tensor bytes per shard (headers not counted, as in huggingface_hub).
  // A tensor larger than this gets a shard of its own. Required: > 0.
  int64_t max_shard_bytes = 0;
  // File name stem: "model" gives model-00001-of-00003.safetensors and
  // model.safetensors.index.json. Default: "model". Must not contain "/".
  std::string base_name = "model";

  absl::Status Validate() const;
};

// Builds a .safetensors file (or a sharded checkpoint) from tensors in memory.
//
// Output is deterministic and laid out as the Python library lays it out:
// tensors sorted by decreasing dtype alignment (I64, F32, I32, BF16, F16,
// F8_E4M3, I8, U8), then by name; compact JSON header with "__metadata__"
// first, then tensors in data order; header padded with spaces to a multiple
// of 8. With at most one metadata entry the bytes equal safetensors'
// save_file output for the same tensors.
//
// Ownership: Add() copies the bytes; AddUnowned() keeps only a view, which
// must stay valid until the last Write*/Serialize call. Thread safety: not
// thread-safe; one writer per thread.
class SafetensorsWriter {
 public:
  SafetensorsWriter() = default;
  SafetensorsWriter(SafetensorsWriter&&) = default;
  SafetensorsWriter& operator=(SafetensorsWriter&&) = default;

  // Adds a tensor, copying `bytes`. INVALID_ARGUMENT when `name` is not
  // UTF-8 or is "__metadata__", a dimension is negative, or `bytes` is not
  // numel * DTypeSize(dtype) long; ALREADY_EXISTS for a repeated name.
  absl::Status Add(absl::string_view name, DType dtype, std::vector<int64_t> shape,
                   std::span<const uint8_t> bytes);
  // As Add, but references `bytes` instead of copying them.
  absl::Status AddUnowned(absl::string_view name, DType dtype, std::vector<int64_t> shape,
                          std::span<const uint8_t> bytes);
  // AddUnowned of a view from a SafetensorsFile or Checkpoint (keep it alive).
  absl::Status AddUnowned(const TensorView& tensor);

  // Sets "__metadata__"[key] = value (replacing an earlier value).
  // INVALID_ARGUMENT when either is not UTF-8.
  absl::Status SetMetadata(absl::string_view key, absl::string_view value);

  size_t num_tensors() const { return tensors_.size(); }
  // Sum of the added tensors' byte sizes.
  uint64_t data_bytes() const { return data_bytes_; }

  // The whole file, in memory.
  absl::StatusOr<std::string> Serialize() const;

  // Writes the file to `path` atomically: streamed to a temporary file beside
  // it, fsynced, renamed over `path`, directory fsynced. Tensor bytes are not
  // copied in memory. Errors name the path.
  absl::Status Write(const std::string& path) const;

  // Writes a checkpoint that Checkpoint::Open(dir) reads back, as
  // transformers' save_pretrained does: tensors are assigned to shards in
  // name order, starting a new shard when the next tensor would push the
  // current one past max_shard_bytes; each shard carries this writer's
  // metadata; the index's metadata is {"total_size": data_bytes()}. When
  // everything fits in one shard it writes <base>.safetensors and no index.
  // `dir` must exist. The index is written last, and a stale
  // <base>.safetensors (or, for one shard, a stale index) is removed, so the
  // directory never reads as a mix of old and new. Returns the paths written.
  absl::StatusOr<std::vector<std::string>> WriteSharded(const std::string& dir,
                                                        const ShardOptions& options) const;

 private:
  struct Tensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    bool is_owned = false;
    std::vector<uint8_t> owned;        // when is_owned
    std::span<const uint8_t> unowned;  // otherwise
    std::span<const uint8_t> data() const {
      return is_owned ? std::span<const uint8_t>(owned) : unowned;
    }
  };
  absl::Status AddImpl(absl::string_view name, DType dtype, std::vector<int64_t> shape,
                       std::span<const uint8_t> bytes, bool copy);
  // `indices` (into tensors_) in file order: Python's dtype order, then name.
  std::vector<size_t> SortedForFile(std::vector<size_t> indices) const;
  // The length prefix and padded header of a file holding `indices`.
  absl::StatusOr<std::string> PlanFile(const std::vector<size_t>& indices) const;
  absl::Status WriteFile(const std::string& path, const std::vector<size_t>& indices) const;

  std::vector<Tensor> tensors_;
  absl::flat_hash_map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
  uint64_t data_bytes_ = 0;
};

}  // namespace premoe::checkpoint
