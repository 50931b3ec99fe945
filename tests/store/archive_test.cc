// Pattern archives: the writer produces exactly the documented format (built
// here byte by byte, independently of the library), the reader returns what
// was written, and every kind of damage is refused with an error that names
// the file, the record and the byte offset.
#include "premoe/store/archive.h"

#include <cstring>
#include <filesystem>

#include "premoe/common/hash.h"
#include "tests/store/test_patterns.h"
#include "tests/testutil/testutil.h"

namespace premoe::store {
namespace {

using ::premoe::testing::ReadFileOrDie;
using ::premoe::testing::StatusIs;
using ::premoe::testing::TempDir;
using ::premoe::testing::WriteStringToFile;
using testing::MakePattern;

template <typename T>
std::string Le(T v) {  // the host is little-endian (static_assert in the library)
  return std::string(reinterpret_cast<const char*>(&v), sizeof v);
}

const std::string kMagic("\x89premoe\n", 8);

// An archive built from the format's description: `payloads` as records
// (each with its XXH3-64), then a trailer counting `count` records whose
// checksum covers `count` and the records' checksums.
std::string Build(const std::vector<std::string>& payloads, std::uint64_t count,
                  std::uint32_t version = 1) {
  std::string out = kMagic + Le(version);
  std::string sums = Le(count);
  for (const std::string& p : payloads) {
    const std::uint64_t sum = common::Hash64(p);
    out += Le<std::uint64_t>(p.size()) + Le(sum) + p;
    sums += Le(sum);
  }
  return out + Le(~std::uint64_t{0}) + Le(count) + Le(common::Hash64(sums));
}
std::string Build(const std::vector<std::string>& payloads) {
  return Build(payloads, payloads.size());
}

std::vector<Pattern> ThreePatterns() {
  std::vector<Pattern> out;
  for (int i = 0; i < 3; ++i) {
    Pattern p = MakePattern("task" + std::to_string(i), 10 + i, /*dim=*/8, /*embeddings=*/i + 1);
    p.id = 7 + i;
    out.push_back(std::move(p));
  }
  return out;
}

class ArchiveTest : public ::testing::Test {
 protected:
  std::string Write(const std::vector<Pattern>& patterns) {
    auto writer = PatternArchiveWriter::Create(path_);
    EXPECT_TRUE(writer.ok()) << writer.status();
    if (!writer.ok()) return "";
    for (const Pattern& p : patterns) EXPECT_OK((*writer)->Add(p));
    EXPECT_OK((*writer)->Commit());
    return ReadFileOrDie(path_);
  }
  absl::Status OpenBytes(const std::string& bytes) {
    WriteStringToFile(path_, bytes);
    return PatternArchiveReader::Open(path_).status();
  }
  std::vector<std::string> Payloads() const {
    std::vector<std::string> out;
    for (const Pattern& p : ThreePatterns()) out.push_back(EncodePattern(p));
    return out;
  }

  TempDir dir_;
  std::string path_ = dir_.Join("patterns.pmar");
};

TEST_F(ArchiveTest, WriterProducesTheDocumentedFormat) {
  EXPECT_EQ(Write(ThreePatterns()), Build(Payloads()));
  EXPECT_EQ(Write({}), Build({}));
  EXPECT_EQ(Build({}).size(), 12u + 24u);
}

TEST_F(ArchiveTest, ReaderReturnsWhatWasWrittenWithOffsets) {
  const std::vector<Pattern> patterns = ThreePatterns();
  Write(patterns);
  ASSERT_OK_AND_ASSIGN(auto reader, PatternArchiveReader::Open(path_));
  ASSERT_EQ(reader->entries().size(), 3u);
  std::uint64_t offset = 12;
  for (std::size_t i = 0; i < 3; ++i) {
    const PatternArchiveReader::Entry& e = reader->entries()[i];
    EXPECT_EQ(e.task_name, patterns[i].task_name);
    EXPECT_EQ(e.model_fingerprint, testing::kFingerprint);
    EXPECT_EQ(e.offset, offset);
    EXPECT_EQ(e.bytes, EncodePattern(patterns[i]).size());
    offset += 16 + e.bytes;
    ASSERT_OK_AND_ASSIGN(Pattern back, reader->Read(i));
    EXPECT_EQ(back, patterns[i]);  // id and created time included
  }
  EXPECT_THAT(reader->Read(3), StatusIs(absl::StatusCode::kOutOfRange, "record 3 of 3"));
}

TEST_F(ArchiveTest, NothingAppearsWithoutCommit) {
  {
    ASSERT_OK_AND_ASSIGN(auto writer, PatternArchiveWriter::Create(path_));
    ASSERT_OK(writer->Add(ThreePatterns()[0]));
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir_.path()));
}

TEST_F(ArchiveTest, WriterRefusesADuplicateTask) {
  ASSERT_OK_AND_ASSIGN(auto writer, PatternArchiveWriter::Create(path_));
  ASSERT_OK(writer->Add(ThreePatterns()[0]));
  EXPECT_THAT(writer->Add(ThreePatterns()[0]),
              StatusIs(absl::StatusCode::kInvalidArgument, "task \"task0\" is already in"));
  EXPECT_EQ(writer->count(), 1);
}

TEST_F(ArchiveTest, DamageIsRefusedNamingRecordAndOffset) {
  const std::vector<std::string> p = Payloads();
  const std::string good = Build(p);
  const std::uint64_t r1 = 12 + 16 + p[0].size();  // record 1's offset
  const std::uint64_t r2 = r1 + 16 + p[1].size();
  const std::uint64_t trailer = r2 + 16 + p[2].size();
  const auto kLoss = absl::StatusCode::kDataLoss;
  ASSERT_OK(OpenBytes(good));

  std::string flipped = good;
  flipped[r1 + 16 + 5] ^= 0x20;
  EXPECT_THAT(OpenBytes(flipped), StatusIs(kLoss, absl::StrCat(path_, ": record 1 at byte ", r1,
                                                               ": checksum mismatch")));

  EXPECT_THAT(OpenBytes(good.substr(0, r2 + 20)),
              StatusIs(kLoss, absl::StrCat("record 2 at byte ", r2, ": it claims ", p[2].size(),
                                           " bytes but the file has 4 left")));
  EXPECT_THAT(OpenBytes(good.substr(0, r2 + 10)),
              StatusIs(kLoss, absl::StrCat("record 2 at byte ", r2, ": the file ends inside")));
  EXPECT_THAT(OpenBytes(good.substr(0, r2 + 3)),
              StatusIs(kLoss, absl::StrCat("record 2 at byte ", r2, ": the file ends here")));
  EXPECT_THAT(OpenBytes(good.substr(0, trailer)),
              StatusIs(kLoss, absl::StrCat("record 3 at byte ", trailer,
                                           ": the file ends here, without the archive's trailer")));
  EXPECT_THAT(OpenBytes(good.substr(0, good.size() - 1)),
              StatusIs(kLoss, absl::StrCat("trailer at byte ", trailer, ": truncated")));
  EXPECT_THAT(OpenBytes(good + "x"), StatusIs(kLoss, "1 unexpected bytes follow it"));
  // A record dropped, or two swapped, with the rest intact.
  EXPECT_THAT(OpenBytes(Build({p[0], p[2]}, 3)),
              StatusIs(kLoss, "it counts 3 records but the file holds 2"));
  std::string swapped = Build({p[1], p[0], p[2]});
  swapped.replace(swapped.size() - 8, 8, good.substr(good.size() - 8));
  EXPECT_THAT(OpenBytes(swapped), StatusIs(kLoss, "dropped, repeated or reordered"));
  // Checksummed bytes that are not a pattern, or one of a newer schema.
  EXPECT_THAT(OpenBytes(Build({p[0], "\xff\xff\xff"})),
              StatusIs(kLoss, absl::StrCat("record 1 at byte ", r1, ": not a premoe.v1.Pattern")));
  Pattern newer = ThreePatterns()[1];
  newer.schema_version = kPatternSchemaVersion + 1;
  EXPECT_THAT(OpenBytes(Build({p[0], EncodePattern(newer)})),
              StatusIs(absl::StatusCode::kFailedPrecondition, "record 1 at byte"));
  EXPECT_THAT(OpenBytes(Build({p[0], p[1], p[0]})),
              StatusIs(absl::StatusCode::kInvalidArgument, "task \"task0\" is also record 0"));
}

TEST_F(ArchiveTest, HeaderProblemsAreNamed) {
  EXPECT_THAT(OpenBytes("PK\x03\x04 a zip file"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       absl::StrCat(path_, ": not a premoe pattern archive")));
  EXPECT_THAT(OpenBytes(""), StatusIs(absl::StatusCode::kInvalidArgument, "not a premoe"));
  EXPECT_THAT(OpenBytes(Build({}, 0, /*version=*/2)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       "archive format version 2 was written by a newer premoe"));
  EXPECT_THAT(PatternArchiveReader::Open(dir_.Join("missing")),
              StatusIs(absl::StatusCode::kNotFound, "missing"));
}

}  // namespace
}  // namespace premoe::store
