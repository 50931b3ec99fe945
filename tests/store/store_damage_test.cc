// Damaged store directories: what Open refuses (DATA_LOSS, naming the
// problem, with nothing on disk changed), what it accepts (a crash's torn,
// never-acknowledged tail), and what Repair recovers into a new directory.
#include <filesystem>
#include <map>
#include <string>

#include "premoe/common/hash.h"
#include "premoe/store/embedded_store.h"
#include "store/src/ack_log.h"
#include "tests/store/test_patterns.h"
#include "tests/testutil/testutil.h"

namespace premoe::store {
namespace {

namespace fs = std::filesystem;
using ::premoe::testing::ReadFileOrDie;
using ::premoe::testing::StatusIs;
using ::premoe::testing::TempDir;
using ::premoe::testing::WriteStringToFile;
using testing::MakePattern;

absl::StatusOr<std::unique_ptr<EmbeddedPatternStore>> OpenStore(const std::string& path) {
  EmbeddedPatternStore::Options o;
  o.path = path;
  return EmbeddedPatternStore::Open(o);
}

// Every file in `dir` and a hash of its bytes: "nothing changed" is equality.
std::map<std::string, std::uint64_t> DirState(const std::string& dir) {
  std::map<std::string, std::uint64_t> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    out[entry.path().filename().string()] = common::Hash64(ReadFileOrDie(entry.path().string()));
  }
  return out;
}

std::string NewestWal(const std::string& dir) {
  std::string newest;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".log" && entry.path().string() > newest) {
      newest = entry.path().string();
    }
  }
  return newest;
}

class StoreDamageTest : public ::testing::Test {
 protected:
  // Puts tasks t0..t{n-1}, each acknowledged; the store is closed after.
  void Fill(const std::string& path, int n) {
    ASSERT_OK_AND_ASSIGN(auto store, OpenStore(path));
    for (int i = 0; i < n; ++i) {
      ASSERT_OK(store->Put(MakePattern("t" + std::to_string(i), i)).status());
    }
  }
  // The tasks a store at `path` holds, after checking it.
  std::vector<std::string> Tasks(const std::string& path) {
    auto store = OpenStore(path);
    EXPECT_OK(store.status());
    if (!store.ok()) return {};
    EXPECT_OK((*store)->Verify());
    absl::StatusOr<ListPage> page = (*store)->List({});
    EXPECT_OK(page.status());
    std::vector<std::string> out;
    if (page.ok()) {
      for (const PatternSummary& p : page->patterns) out.push_back(p.task_name);
    }
    return out;
  }

  TempDir dir_;
  std::string path_ = dir_.Join("store");
  std::string ack_ = path_ + "/" + internal::kAckFile;
};

TEST_F(StoreDamageTest, AcknowledgedTailCutFromTheLogIsDataLossAndChangesNothing) {
  Fill(path_, 3);
  const std::string wal = NewestWal(path_);
  ASSERT_FALSE(wal.empty());
  fs::resize_file(wal, fs::file_size(wal) - 5);
  const auto before = DirState(path_);
  EXPECT_THAT(OpenStore(path_), StatusIs(absl::StatusCode::kDataLoss,
                                         "1 acknowledged change(s) lost: the store acknowledged "
                                         "version 3 but RocksDB recovers only version 2"));
  EXPECT_THAT(OpenStore(path_), StatusIs(absl::StatusCode::kDataLoss, fs::path(wal).filename()));
  EXPECT_EQ(DirState(path_), before);

  const std::string repaired = dir_.Join("repaired");
  ASSERT_OK_AND_ASSIGN(auto report, EmbeddedPatternStore::Repair(path_, repaired));
  EXPECT_EQ(report.version, 2u);
  EXPECT_EQ(report.acknowledged, 3u);
  EXPECT_EQ(report.num_patterns, 2);
  EXPECT_EQ(report.num_embeddings, 4);
  EXPECT_EQ(DirState(path_), before);  // the source is only read
  EXPECT_EQ(Tasks(repaired), (std::vector<std::string>{"t0", "t1"}));
  {
    ASSERT_OK_AND_ASSIGN(auto store, OpenStore(repaired));
    ASSERT_OK_AND_ASSIGN(PutResult put, store->Put(MakePattern("t2", 2)));
    EXPECT_EQ(put.version, 3u);
  }
  EXPECT_EQ(Tasks(repaired), (std::vector<std::string>{"t0", "t1", "t2"}));
}

// What a crash in the middle of writing change 3 leaves: its record cut
// short, and the acknowledgement file still at 2. Dropping it is right.
TEST_F(StoreDamageTest, TornTailOfAnUnacknowledgedChangeIsDropped) {
  Fill(path_, 3);
  const std::string wal = NewestWal(path_);
  fs::resize_file(wal, fs::file_size(wal) - 5);
  ASSERT_OK_AND_ASSIGN(internal::AckLog::Entry acked, internal::AckLog::Read(ack_));
  ASSERT_EQ(acked.version, 3u);
  ASSERT_OK(internal::AckLog::Create(ack_, {2, acked.identity}, true).status());
  EXPECT_EQ(Tasks(path_), (std::vector<std::string>{"t0", "t1"}));
}

TEST_F(StoreDamageTest, DamageInsideTheLogIsRefused) {
  Fill(path_, 4);
  const std::string wal = NewestWal(path_);
  std::string bytes = ReadFileOrDie(wal);
  bytes[bytes.size() / 2] ^= 0x20;
  WriteStringToFile(wal, bytes);
  const auto before = DirState(path_);
  EXPECT_THAT(OpenStore(path_), StatusIs(absl::StatusCode::kDataLoss, "patterns repair"));
  EXPECT_EQ(DirState(path_), before);
  // Repair keeps the changes before the damage, whole.
  const std::string repaired = dir_.Join("repaired");
  ASSERT_OK_AND_ASSIGN(auto report, EmbeddedPatternStore::Repair(path_, repaired));
  EXPECT_EQ(report.acknowledged, 4u);
  EXPECT_LT(report.version, 4u);
  std::vector<std::string> want = {"t0", "t1", "t2", "t3"};
  want.resize(report.version);
  EXPECT_EQ(Tasks(repaired), want);
}

TEST_F(StoreDamageTest, MissingCurrentIsRefusedAndNothingIsDeleted) {
  Fill(path_, 3);
  { ASSERT_OK(OpenStore(path_).status()); }  // recovery moved the log into a table
  bool has_table = false;
  for (const auto& entry : fs::directory_iterator(path_)) {
    has_table |= entry.path().extension() == ".sst";
  }
  ASSERT_TRUE(has_table);
  fs::remove(path_ + "/CURRENT");
  const auto before = DirState(path_);
  for (bool create : {true, false}) {
    EmbeddedPatternStore::Options o;
    o.path = path_;
    o.create_if_missing = create;
    EXPECT_THAT(EmbeddedPatternStore::Open(o),
                StatusIs(absl::StatusCode::kDataLoss, "RocksDB data but no CURRENT file"));
    EXPECT_EQ(DirState(path_), before);
  }
  const std::string repaired = dir_.Join("repaired");
  ASSERT_OK_AND_ASSIGN(auto report, EmbeddedPatternStore::Repair(path_, repaired));
  EXPECT_EQ(report.version, 3u);
  EXPECT_EQ(report.acknowledged, 3u);
  EXPECT_EQ(Tasks(repaired), (std::vector<std::string>{"t0", "t1", "t2"}));
  EXPECT_THAT(report.method, ::testing::HasSubstr("write-ahead logs"));

  // Without any MANIFEST, RepairDB rebuilds the store from its tables.
  for (const auto& entry : fs::directory_iterator(path_)) {
    if (entry.path().filename().string().starts_with("MANIFEST-")) fs::remove(entry.path());
  }
  const std::string rebuilt = dir_.Join("rebuilt");
  ASSERT_OK_AND_ASSIGN(report, EmbeddedPatternStore::Repair(path_, rebuilt));
  EXPECT_THAT(report.method, ::testing::HasSubstr("RepairDB"));
  EXPECT_EQ(report.version, 3u);
  EXPECT_EQ(Tasks(rebuilt), (std::vector<std::string>{"t0", "t1", "t2"}));
}

TEST_F(StoreDamageTest, AcknowledgementFileMissingDamagedOrForeignIsDataLoss) {
  Fill(path_, 2);
  const std::string other = dir_.Join("other");
  Fill(other, 2);
  const std::string good = ReadFileOrDie(ack_);
  ASSERT_EQ(good.size(), 64u);
  fs::remove(ack_);
  EXPECT_THAT(OpenStore(path_), StatusIs(absl::StatusCode::kDataLoss, "unreadable"));
  WriteStringToFile(ack_, std::string(64, 'x'));
  EXPECT_THAT(OpenStore(path_), StatusIs(absl::StatusCode::kDataLoss, "neither record is intact"));
  WriteStringToFile(ack_, ReadFileOrDie(other + "/" + internal::kAckFile));
  EXPECT_THAT(OpenStore(path_), StatusIs(absl::StatusCode::kDataLoss, "belongs to another store"));
  // A torn write damages one slot; the other still holds a version.
  for (std::size_t slot : {0, 1}) {
    std::string torn = good;
    torn[slot * 32 + 12] ^= 0x01;
    WriteStringToFile(ack_, torn);
    EXPECT_EQ(Tasks(path_), (std::vector<std::string>{"t0", "t1"}));
  }
}

TEST_F(StoreDamageTest, RepairNeedsAStoreAndANewDirectory) {
  Fill(path_, 1);
  EXPECT_THAT(EmbeddedPatternStore::Repair(dir_.Join("nowhere"), dir_.Join("r")),
              StatusIs(absl::StatusCode::kNotFound, "no such directory"));
  fs::create_directories(dir_.Join("busy"));
  WriteStringToFile(dir_.Join("busy/file"), "x");
  EXPECT_THAT(EmbeddedPatternStore::Repair(path_, dir_.Join("busy")),
              StatusIs(absl::StatusCode::kFailedPrecondition, "not empty"));
  EXPECT_EQ(ReadFileOrDie(dir_.Join("busy/file")), "x");
}

}  // namespace
}  // namespace premoe::store
