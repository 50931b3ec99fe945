#include "store/src/ack_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "premoe/common/file.h"
#include "premoe/common/hash.h"
#include "premoe/common/status.h"
#include "store/src/little_endian.h"

namespace premoe::store::internal {
namespace {

constexpr char kMagic[8] = {'p', 'm', 'a', 'c', 'k', 'e', 'd', '1'};
constexpr std::size_t kSlotBytes = 32;
constexpr std::size_t kFileBytes = 2 * kSlotBytes;

std::string EncodeSlot(const AckLog::Entry& entry) {
  std::string slot(kMagic, sizeof kMagic);
  AppendLittleEndian(&slot, entry.version);
  AppendLittleEndian(&slot, entry.identity);
  AppendLittleEndian(&slot, common::Hash64(slot));
  return slot;
}

// The entry in `slot` (kSlotBytes), or nullopt when it is not intact.
std::optional<AckLog::Entry> DecodeSlot(const char* slot) {
  if (std::memcmp(slot, kMagic, sizeof kMagic) != 0) return std::nullopt;
  const std::size_t body = kSlotBytes - 8;
  if (LoadLittleEndian<std::uint64_t>(slot + body) !=
      common::Hash64(absl::string_view(slot, body))) {
    return std::nullopt;
  }
  return AckLog::Entry{LoadLittleEndian<std::uint64_t>(slot + 8),
                       LoadLittleEndian<std::uint64_t>(slot + 16)};
}

}  // namespace

absl::StatusOr<AckLog::Entry> AckLog::Read(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, common::ReadFile(path, kFileBytes));
  if (bytes.size() != kFileBytes) {
    return absl::DataLossError(absl::StrCat(path, ": ", bytes.size(), " bytes, not ", kFileBytes));
  }
  std::optional<Entry> best;
  for (std::size_t slot = 0; slot < 2; ++slot) {
    std::optional<Entry> e = DecodeSlot(bytes.data() + slot * kSlotBytes);
    if (e && (!best || e->version > best->version)) best = e;
  }
  if (!best) return absl::DataLossError(absl::StrCat(path, ": neither record is intact"));
  return *best;
}

absl::StatusOr<std::unique_ptr<AckLog>> AckLog::Create(const std::string& path, Entry entry,
                                                       bool sync) {
  const std::string slot = EncodeSlot(entry);
  RETURN_IF_ERROR(common::WriteFileAtomically(path, slot + slot));
  return Open(path, entry.identity, sync);
}

absl::StatusOr<std::unique_ptr<AckLog>> AckLog::Open(const std::string& path,
                                                     std::uint64_t identity, bool sync) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return common::ErrnoStatus(errno, path, "open");
  return std::unique_ptr<AckLog>(new AckLog(path, fd, identity, sync));
}

AckLog::~AckLog() { ::close(fd_); }

absl::Status AckLog::Record(std::uint64_t version) {
  const std::string slot = EncodeSlot({version, identity_});
  const off_t offset = static_cast<off_t>((version % 2) * kSlotBytes);
  for (;;) {
    const ssize_t n = ::pwrite(fd_, slot.data(), slot.size(), offset);
    if (n == static_cast<ssize_t>(slot.size())) break;
    if (n < 0 && errno == EINTR) continue;
    return n < 0 ? common::ErrnoStatus(errno, path_, "pwrite")
                 : absl::InternalError(absl::StrCat(path_, ": short pwrite (", n, " bytes)"));
  }
  if (sync_ && ::fdatasync(fd_) != 0) return common::ErrnoStatus(errno, path_, "fdatasync");
  return absl::OkStatus();
}

}  // namespace premoe::store::internal
