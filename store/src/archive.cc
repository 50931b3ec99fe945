// Pattern archives (format in archive.h).
//
// Why validate everything in Open: import must be all or nothing, and a
// reader that handed out patterns before finding a bad record would leave a
// half-imported store. Validation decodes every record once and keeps only
// names and offsets, so memory stays one pattern whatever the archive's size.
#include "premoe/store/archive.h"

#include <cstring>
#include <limits>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "premoe/common/hash.h"
#include "premoe/common/status.h"
#include "store/src/little_endian.h"

namespace premoe::store {
namespace {

using internal::AppendLittleEndian;
using internal::LoadLittleEndian;

constexpr char kMagic[8] = {'\x89', 'p', 'r', 'e', 'm', 'o', 'e', '\n'};
constexpr std::size_t kHeaderBytes = sizeof kMagic + sizeof(std::uint32_t);
constexpr std::size_t kRecordHeaderBytes = 2 * sizeof(std::uint64_t);
constexpr std::size_t kTrailerBytes = 3 * sizeof(std::uint64_t);
constexpr std::uint64_t kEndMarker = std::numeric_limits<std::uint64_t>::max();

// The trailer's checksum: over the record count, then each record's checksum.
std::uint64_t TrailerChecksum(std::uint64_t count, const std::string& checksums) {
  std::string input;
  AppendLittleEndian(&input, count);
  input += checksums;
  return common::Hash64(input);
}

}  // namespace

absl::StatusOr<std::unique_ptr<PatternArchiveWriter>> PatternArchiveWriter::Create(
    const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<common::AtomicFileWriter> file,
                   common::AtomicFileWriter::Open(path));
  std::string header(kMagic, sizeof kMagic);
  AppendLittleEndian(&header, kArchiveFormatVersion);
  RETURN_IF_ERROR(file->Append(header));
  return std::unique_ptr<PatternArchiveWriter>(new PatternArchiveWriter(path, std::move(file)));
}

absl::Status PatternArchiveWriter::Add(const Pattern& pattern) {
  if (tasks_.contains(pattern.task_name)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": task \"", pattern.task_name, "\" is already in the archive"));
  }
  const std::string payload = EncodePattern(pattern);
  const std::uint64_t checksum = common::Hash64(payload);
  std::string header;
  AppendLittleEndian(&header, static_cast<std::uint64_t>(payload.size()));
  AppendLittleEndian(&header, checksum);
  RETURN_IF_ERROR(file_->Append(header));
  RETURN_IF_ERROR(file_->Append(payload));
  AppendLittleEndian(&checksums_, checksum);
  tasks_.insert(pattern.task_name);
  return absl::OkStatus();
}

absl::Status PatternArchiveWriter::Commit() {
  const auto count = static_cast<std::uint64_t>(tasks_.size());
  std::string trailer;
  AppendLittleEndian(&trailer, kEndMarker);
  AppendLittleEndian(&trailer, count);
  AppendLittleEndian(&trailer, TrailerChecksum(count, checksums_));
  RETURN_IF_ERROR(file_->Append(trailer));
  return file_->Commit();
}

absl::StatusOr<std::unique_ptr<PatternArchiveReader>> PatternArchiveReader::Open(
    const std::string& path) {
  ASSIGN_OR_RETURN(std::shared_ptr<const common::MappedFile> file, common::MappedFile::Open(path));
  const std::uint8_t* data = file->data().data();
  const std::uint64_t size = file->size();
  if (size < kHeaderBytes || std::memcmp(data, kMagic, sizeof kMagic) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a premoe pattern archive (no archive header)"));
  }
  const auto version = LoadLittleEndian<std::uint32_t>(data + sizeof kMagic);
  if (version > kArchiveFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": archive format version ", version,
        " was written by a newer premoe (this build reads up to ", kArchiveFormatVersion, ")"));
  }
  if (version == 0) {
    return absl::DataLossError(absl::StrCat(path, ": archive format version 0 is not valid"));
  }

  std::vector<Entry> entries;
  std::string checksums;
  absl::flat_hash_map<std::string, std::size_t> first_of_task;
  std::uint64_t pos = kHeaderBytes;
  for (;;) {
    const std::size_t index = entries.size();
    auto at = [&](absl::string_view what) {
      return absl::StrCat(path, ": ", what, " at byte ", pos, ": ");
    };
    const std::string record = absl::StrCat("record ", index);
    if (size - pos < sizeof(std::uint64_t)) {
      return absl::DataLossError(absl::StrCat(
          at(record), "the file ends here, without the archive's trailer (truncated)"));
    }
    const auto length = LoadLittleEndian<std::uint64_t>(data + pos);
    if (length == kEndMarker) break;
    if (size - pos < kRecordHeaderBytes) {
      return absl::DataLossError(
          absl::StrCat(at(record), "the file ends inside its header (truncated)"));
    }
    const std::uint64_t left = size - pos - kRecordHeaderBytes;
    if (length > left) {
      return absl::DataLossError(absl::StrCat(at(record), "it claims ", length,
                                              " bytes but the file has ", left,
                                              " left (truncated or corrupted)"));
    }
    const auto stored = LoadLittleEndian<std::uint64_t>(data + pos + sizeof(std::uint64_t));
    const absl::string_view payload(reinterpret_cast<const char*>(data + pos + kRecordHeaderBytes),
                                    length);
    const std::uint64_t computed = common::Hash64(payload);
    if (stored != computed) {
      return absl::DataLossError(absl::StrFormat(
          "%schecksum mismatch (stored %016x, computed %016x): the record is corrupted", at(record),
          stored, computed));
    }
    absl::StatusOr<Pattern> pattern = DecodePattern(payload);
    if (!pattern.ok()) {
      const absl::StatusCode code = absl::IsFailedPrecondition(pattern.status())
                                        ? absl::StatusCode::kFailedPrecondition
                                        : absl::StatusCode::kDataLoss;
      return absl::Status(code, absl::StrCat(at(record), pattern.status().message()));
    }
    if (auto [it, added] = first_of_task.try_emplace(pattern->task_name, index); !added) {
      return absl::InvalidArgumentError(absl::StrCat(at(record), "task \"", pattern->task_name,
                                                     "\" is also record ", it->second));
    }
    entries.push_back({pattern->task_name, pattern->model_fingerprint, pos, length});
    AppendLittleEndian(&checksums, stored);
    pos += kRecordHeaderBytes + length;
  }

  const std::string trailer = absl::StrCat(path, ": trailer at byte ", pos, ": ");
  if (size - pos < kTrailerBytes) {
    return absl::DataLossError(absl::StrCat(trailer, "truncated"));
  }
  const auto count = LoadLittleEndian<std::uint64_t>(data + pos + sizeof(std::uint64_t));
  if (count != entries.size()) {
    return absl::DataLossError(
        absl::StrCat(trailer, "it counts ", count, " records but the file holds ", entries.size()));
  }
  if (LoadLittleEndian<std::uint64_t>(data + pos + 2 * sizeof(std::uint64_t)) !=
      TrailerChecksum(count, checksums)) {
    return absl::DataLossError(
        absl::StrCat(trailer, "checksum mismatch: records were dropped, repeated or reordered"));
  }
  if (pos + kTrailerBytes != size) {
    return absl::DataLossError(
        absl::StrCat(trailer, size - pos - kTrailerBytes, " unexpected bytes follow it"));
  }
  return std::unique_ptr<PatternArchiveReader>(
      new PatternArchiveReader(std::move(file), std::move(entries)));
}

absl::StatusOr<Pattern> PatternArchiveReader::Read(std::size_t index) const {
  if (index >= entries_.size()) {
    return absl::OutOfRangeError(
        absl::StrCat(file_->path(), ": record ", index, " of ", entries_.size()));
  }
  const Entry& e = entries_[index];
  return common::WithContext(
      DecodePattern(absl::string_view(
          reinterpret_cast<const char*>(file_->data().data() + e.offset + kRecordHeaderBytes),
          e.bytes)),
      absl::StrCat(file_->path(), ": record ", index));
}

}  // namespace premoe::store
