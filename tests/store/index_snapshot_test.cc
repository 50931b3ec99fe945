// The embedded store's index snapshot, for the flat and the HNSW index: a
// store reopened from its snapshot searches exactly like one rebuilt from
// RocksDB and passes Verify (HNSW deletions included), and a snapshot that is
// stale, of other options, or damaged in any way is ignored for a rebuild.
#include <cstring>
#include <filesystem>
#include <random>
#include <tuple>

#include "premoe/common/hash.h"
#include "premoe/store/embedded_store.h"
#include "tests/store/test_patterns.h"
#include "tests/testutil/testutil.h"

namespace premoe::store {
namespace {

using ::premoe::testing::ReadFileOrDie;
using ::premoe::testing::TempDir;
using ::premoe::testing::WriteStringToFile;
using testing::MakePattern;

using Results = std::vector<std::tuple<std::uint64_t, std::string, float, std::int32_t>>;

class IndexSnapshotTest : public ::testing::TestWithParam<std::string> {
 protected:
  EmbeddedPatternStore::Options Options(const std::string& path) const {
    EmbeddedPatternStore::Options o;
    o.path = path;
    o.index = GetParam();
    o.hnsw_ef_search = 256;  // exact on these small stores, so results compare
    return o;
  }
  std::unique_ptr<EmbeddedPatternStore> Open(const EmbeddedPatternStore::Options& o) {
    auto store = EmbeddedPatternStore::Open(o);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(store).value() : nullptr;
  }
  std::unique_ptr<EmbeddedPatternStore> Open() { return Open(Options(path_)); }
  static std::string Source(EmbeddedPatternStore& s) { return s.Info()->index_source; }

  // 60 patterns, every fourth deleted and every tenth replaced: HNSW keeps
  // the deleted and replaced embeddings as tombstones.
  static void Fill(EmbeddedPatternStore& s) {
    for (int i = 0; i < 60; ++i) {
      ASSERT_OK(s.Put(MakePattern("t" + std::to_string(i), i, 8, 1 + i % 3)).status());
    }
    for (int i = 0; i < 60; i += 4) ASSERT_OK(s.Delete(i + 1).status());
    for (int i = 1; i < 60; i += 10) {
      ASSERT_OK(s.Put(MakePattern("t" + std::to_string(i), 1000 + i, 8, 2)).status());
    }
  }

  // Top-5 of 20 fixed random queries under each voting rule.
  static Results SearchAll(EmbeddedPatternStore& s) {
    std::mt19937 rng(5);
    std::normal_distribution<float> normal;
    Results out;
    for (int q = 0; q < 20; ++q) {
      std::vector<float> query(8);
      for (float& x : query) x = normal(rng);
      for (Voting v : {Voting::kMax, Voting::kMean, Voting::kCount}) {
        auto matches = s.Search(query, {.k = 5, .voting = v, .candidates = 12});
        EXPECT_TRUE(matches.ok()) << matches.status();
        if (!matches.ok()) continue;
        for (const SearchMatch& m : *matches) {
          out.emplace_back(m.id, m.task_name, m.similarity, m.votes);
        }
      }
    }
    return out;
  }

  // What a store rebuilt from RocksDB finds (the snapshot left untouched).
  Results Rebuilt() {
    EmbeddedPatternStore::Options o = Options(path_);
    o.index_snapshot = false;
    auto store = Open(o);
    EXPECT_EQ(Source(*store), "rebuilt");
    EXPECT_OK(store->Verify());
    return SearchAll(*store);
  }

  TempDir dir_;
  std::string path_ = dir_.Join("store");
  std::string snapshot_ = path_ + "/index.snapshot";
};

TEST_P(IndexSnapshotTest, ReopenLoadsTheSnapshotAndSearchesLikeARebuild) {
  StoreInfo before;
  {
    auto store = Open();
    EXPECT_EQ(Source(*store), "rebuilt");
    Fill(*store);
    before = *store->Info();
  }
  ASSERT_TRUE(std::filesystem::exists(snapshot_));
  Results loaded;
  {
    auto store = Open();
    ASSERT_OK_AND_ASSIGN(StoreInfo info, store->Info());
    EXPECT_EQ(info.index_source, "snapshot");
    EXPECT_EQ(info.version, before.version);
    EXPECT_EQ(info.num_patterns, before.num_patterns);
    EXPECT_EQ(info.num_embeddings, before.num_embeddings);
    EXPECT_OK(store->Verify());
    loaded = SearchAll(*store);
  }
  EXPECT_EQ(loaded, Rebuilt());
  EXPECT_EQ(loaded.size(), 20u * (5 + 5 + 5));
  // The loaded index keeps working: more changes, then a check.
  auto store = Open();
  ASSERT_OK(store->Put(MakePattern("t1", 77, 8, 3)).status());
  ASSERT_OK(store->Delete(3).status());
  EXPECT_OK(store->Verify());
}

TEST_P(IndexSnapshotTest, StaleSnapshotIsIgnored) {
  {
    auto store = Open();
    ASSERT_OK(store->Put(MakePattern("a", 1)).status());
    ASSERT_OK(store->Put(MakePattern("b", 2)).status());
  }
  const std::string old = ReadFileOrDie(snapshot_);
  Pattern c = MakePattern("c", 3);
  {
    auto store = Open();
    EXPECT_EQ(Source(*store), "snapshot");
    ASSERT_OK(store->Put(c).status());
  }
  WriteStringToFile(snapshot_, old);  // the snapshot of version 2; RocksDB is at 3
  {
    auto store = Open();
    EXPECT_EQ(Source(*store), "rebuilt");
    EXPECT_OK(store->Verify());
    ASSERT_OK_AND_ASSIGN(auto m, store->Search(c.embeddings[0].values, {.k = 1}));
    ASSERT_EQ(m.size(), 1u);
    EXPECT_EQ(m[0].task_name, "c");
  }
  // Closing wrote a current one.
  EXPECT_EQ(Source(*Open()), "snapshot");
}

TEST_P(IndexSnapshotTest, SnapshotOfOtherOptionsIsIgnored) {
  { Fill(*Open()); }
  EmbeddedPatternStore::Options other = Options(path_);
  other.index = GetParam() == "flat" ? "hnsw" : "flat";
  other.index_snapshot = true;
  {
    auto store = Open(other);
    EXPECT_EQ(Source(*store), "rebuilt");
    EXPECT_OK(store->Verify());
  }
  other.hnsw_m = 8;  // the graph's degree is part of an HNSW snapshot
  {
    auto store = Open(other);
    EXPECT_EQ(Source(*store), other.index == "hnsw" ? "rebuilt" : "snapshot");
    EXPECT_OK(store->Verify());
  }
}

TEST_P(IndexSnapshotTest, DamagedSnapshotIsIgnoredNotFatal) {
  { Fill(*Open()); }
  const Results want = Rebuilt();
  const std::string good = ReadFileOrDie(snapshot_);
  ASSERT_GT(good.size(), 200u);
  // The same bytes with a valid checksum: damage only FAISS itself can see.
  auto resealed = [](std::string body) { return body + common::Hasher().Update(body).HexDigest(); };
  const std::string body = good.substr(0, good.size() - 32);
  // header: magic, 4 x u32, u64 version, u64 ntotal, u64 identity, 32-byte
  // catalog digest
  constexpr std::size_t kHeader = 80;
  std::uint64_t ntotal = 0;
  std::memcpy(&ntotal, good.data() + 32, 8);
  const std::size_t faiss_at = kHeader + (GetParam() == "hnsw" ? 8 * ntotal : 0);  // + labels
  std::string bad_fourcc = body;
  bad_fourcc[faiss_at] ^= 0x55;
  std::string flipped = good;
  flipped[good.size() / 2] ^= 0x01;
  const std::vector<std::pair<std::string, std::string>> damages = {
      {"one bit flipped", flipped},
      {"truncated", good.substr(0, good.size() / 2)},
      {"header only", good.substr(0, kHeader)},
      {"empty", ""},
      {"not a snapshot", std::string(1000, 'x')},
      {"unknown FAISS index type", resealed(bad_fourcc)},
      {"FAISS index cut short", resealed(body.substr(0, body.size() - 100))},
  };
  for (const auto& [what, bytes] : damages) {
    SCOPED_TRACE(what);
    WriteStringToFile(snapshot_, bytes);
    auto store = Open();
    ASSERT_NE(store, nullptr);
    EXPECT_EQ(Source(*store), "rebuilt");
    EXPECT_OK(store->Verify());
    EXPECT_EQ(SearchAll(*store), want);
  }
}

// A snapshot copied from another store at the same version, or from a copy
// of this store that went its own way (same RocksDB identity, same version,
// other patterns), is not this store's index.
TEST_P(IndexSnapshotTest, AnotherStoresSnapshotIsIgnored) {
  const std::string other = dir_.Join("other");
  const std::string clone = dir_.Join("clone");
  Pattern mine = MakePattern("mine", 1);
  {
    auto store = Open();
    ASSERT_OK(store->Put(MakePattern("shared", 7)).status());
  }
  std::filesystem::copy(path_, clone);
  {
    auto store = Open();
    ASSERT_OK(store->Put(mine).status());
  }
  for (const auto& [dir, task] : {std::pair{other, "theirs"}, std::pair{clone, "cloned"}}) {
    SCOPED_TRACE(task);
    {
      auto store = Open(Options(dir));
      if (dir == other) ASSERT_OK(store->Put(MakePattern("shared", 7)).status());
      ASSERT_OK(store->Put(MakePattern(task, 2)).status());
      ASSERT_EQ(store->Info()->version, 2u);
    }
    WriteStringToFile(snapshot_, ReadFileOrDie(dir + "/index.snapshot"));
    auto store = Open();
    ASSERT_NE(store, nullptr);
    EXPECT_EQ(Source(*store), "rebuilt");
    EXPECT_OK(store->Verify());
    ASSERT_OK_AND_ASSIGN(auto m, store->Search(mine.embeddings[0].values, {.k = 1}));
    ASSERT_EQ(m.size(), 1u);
    EXPECT_EQ(m[0].task_name, "mine");
  }
}

TEST_P(IndexSnapshotTest, PeriodicSnapshotServesAnUncleanExit) {
  EmbeddedPatternStore::Options o = Options(path_);
  o.snapshot_every_changes = 5;
  auto store = Open(o);
  for (int i = 0; i < 10; ++i)
    ASSERT_OK(store->Put(MakePattern("t" + std::to_string(i), i)).status());
  // Copying the directory of the running store stands in for a crash (its
  // writes are synced); the snapshot of change 10 is current there.
  const std::string crashed = dir_.Join("crashed");
  std::filesystem::copy(path_, crashed);
  {
    auto copy = Open(Options(crashed));
    EXPECT_EQ(Source(*copy), "snapshot");
    EXPECT_OK(copy->Verify());
  }
  ASSERT_OK(store->Put(MakePattern("t10", 10)).status());
  std::filesystem::remove_all(crashed);
  std::filesystem::copy(path_, crashed);
  auto copy = Open(Options(crashed));
  EXPECT_EQ(Source(*copy), "rebuilt");
  EXPECT_EQ(copy->Info()->num_patterns, 11);
  EXPECT_OK(copy->Verify());
}

INSTANTIATE_TEST_SUITE_P(Indexes, IndexSnapshotTest, ::testing::Values("flat", "hnsw"));

}  // namespace
}  // namespace premoe::store
