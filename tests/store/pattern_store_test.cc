// The PatternStore contract, run against every implementation: the embedded
// store with a flat and with an HNSW index, and the gRPC client talking to
// the service (wrapping an embedded store) on a loopback port.
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <limits>
#include <mutex>
#include <set>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "premoe/common/status.h"
#include "premoe/store/embedded_store.h"
#include "premoe/store/grpc_client.h"
#include "premoe/store/server.h"
#include "tests/store/test_patterns.h"
#include "tests/testutil/testutil.h"

namespace premoe::store {
namespace {

using ::premoe::testing::StatusIs;
using ::premoe::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::FloatNear;
using testing::MakePattern;
using testing::PatternWithEmbeddings;

// Backends: Open(dir, options) creates the store under test; Reopen() stops
// everything and starts it again on the same directory (a restart).
class EmbeddedFlat {
 public:
  static constexpr const char* kIndex = "flat";
  absl::Status Open(EmbeddedPatternStore::Options options) {
    options_ = options;
    embedded_.reset();
    ASSIGN_OR_RETURN(embedded_, EmbeddedPatternStore::Open(options_));
    return absl::OkStatus();
  }
  absl::Status Reopen() { return Open(options_); }
  PatternStore& store() { return *embedded_; }
  EmbeddedPatternStore& embedded() { return *embedded_; }
  // Embedded watches have no streams to re-open.
  bool AwaitWatchReopen() { return true; }

 protected:
  EmbeddedPatternStore::Options options_;
  std::unique_ptr<EmbeddedPatternStore> embedded_;
};

class EmbeddedHnsw : public EmbeddedFlat {
 public:
  static constexpr const char* kIndex = "hnsw";
};

class Grpc {
 public:
  static constexpr const char* kIndex = "flat";
  absl::Status Open(EmbeddedPatternStore::Options options) {
    options_ = options;
    client_.reset();
    server_.reset();
    embedded_.reset();
    ASSIGN_OR_RETURN(embedded_, EmbeddedPatternStore::Open(options_));
    ASSIGN_OR_RETURN(server_, PatternStoreServer::Start({}, embedded_.get()));
    GrpcPatternStoreClient::Options client_options;
    client_options.address = server_->address();
    client_options.rpc_timeout = std::chrono::seconds(10);
    // Short, so the tests also cover the transparent re-open of streams.
    client_options.watch_timeout = std::chrono::milliseconds(300);
    client_options.on_watch_stream = [this](std::uint64_t) {
      absl::MutexLock lock(&mu_);
      ++streams_opened_;
    };
    ASSIGN_OR_RETURN(client_, GrpcPatternStoreClient::Open(client_options));
    return absl::OkStatus();
  }
  absl::Status Reopen() { return Open(options_); }
  PatternStore& store() { return *client_; }
  EmbeddedPatternStore& embedded() { return *embedded_; }
  // Waits (up to 10 s) for the next stream to open: with one watch
  // running, until its stream was re-opened.
  bool AwaitWatchReopen() {
    absl::MutexLock lock(&mu_);
    want_opened_ = streams_opened_ + 1;
    return mu_.AwaitWithTimeout(absl::Condition(this, &Grpc::Reopened), absl::Seconds(10));
  }

 private:
  bool Reopened() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return streams_opened_ >= want_opened_;
  }

  absl::Mutex mu_;
  int streams_opened_ ABSL_GUARDED_BY(mu_) = 0;
  int want_opened_ ABSL_GUARDED_BY(mu_) = 0;
  EmbeddedPatternStore::Options options_;
  std::unique_ptr<EmbeddedPatternStore> embedded_;
  std::unique_ptr<PatternStoreServer> server_;
  std::unique_ptr<GrpcPatternStoreClient> client_;
};

// Collects watch events; Wait() blocks until `n` arrived (or 10 s).
class Collector {
 public:
  WatchCallback callback() {
    return [this](const absl::StatusOr<ChangeEvent>& e) {
      std::lock_guard lock(mu_);
      if (e.ok()) {
        events_.push_back(*e);
      } else {
        errors_.push_back(e.status());
      }
      cv_.notify_all();
      return true;
    };
  }
  std::vector<ChangeEvent> Wait(std::size_t n) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(10), [&] { return events_.size() >= n; });
    return events_;
  }
  std::vector<ChangeEvent> events() {
    std::lock_guard lock(mu_);
    return events_;
  }
  // The first error delivered (waiting up to 10 s for one).
  absl::Status WaitError() {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(10), [&] { return !errors_.empty(); });
    return errors_.empty() ? absl::DeadlineExceededError("no error delivered") : errors_.front();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<ChangeEvent> events_;
  std::vector<absl::Status> errors_;
};

template <typename Backend>
class PatternStoreTest : public ::testing::Test {
 public:
  void SetUp() override { ASSERT_OK(backend_.Open(Options())); }

  EmbeddedPatternStore::Options Options() const {
    EmbeddedPatternStore::Options options;
    options.path = dir_.Join("store");
    options.index = Backend::kIndex;
    options.hnsw_ef_search = 256;  // exact on these tiny stores
    return options;
  }
  PatternStore& store() { return backend_.store(); }

  // Puts `p`; returns its id.
  std::uint64_t MustPut(const Pattern& p) {
    absl::StatusOr<PutResult> r = store().Put(p);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->id : 0;
  }

  // Asserts a refused Put changed nothing.
  void ExpectUnchanged(const StoreInfo& before, const std::string& task) {
    ASSERT_OK_AND_ASSIGN(StoreInfo after, store().Info());
    EXPECT_EQ(after.version, before.version);
    EXPECT_EQ(after.num_patterns, before.num_patterns);
    EXPECT_EQ(after.num_embeddings, before.num_embeddings);
    EXPECT_THAT(store().GetByTask(task), StatusIs(absl::StatusCode::kNotFound, ""));
    EXPECT_OK(backend_.embedded().Verify());
  }

  TempDir dir_;
  Backend backend_;
};

using Backends = ::testing::Types<EmbeddedFlat, EmbeddedHnsw, Grpc>;
TYPED_TEST_SUITE(PatternStoreTest, Backends);

TYPED_TEST(PatternStoreTest, PutThenGetReturnsTheRecord) {
  Pattern p = MakePattern("code", 7);
  ASSERT_OK_AND_ASSIGN(PutResult put, this->store().Put(p));
  EXPECT_EQ(put.id, 1u);
  EXPECT_EQ(put.version, 1u);
  p.id = put.id;
  ASSERT_OK_AND_ASSIGN(Pattern got, this->store().Get(put.id));
  EXPECT_EQ(got, p);
  ASSERT_OK_AND_ASSIGN(Pattern by_task, this->store().GetByTask("code"));
  EXPECT_EQ(by_task, p);
  ASSERT_OK_AND_ASSIGN(StoreInfo info, this->store().Info());
  EXPECT_EQ(info.model_fingerprint, testing::kFingerprint);
  EXPECT_EQ(info.embedding_dim, 8);
  EXPECT_EQ(info.version, 1u);
  EXPECT_EQ(info.num_patterns, 1);
  EXPECT_EQ(info.num_embeddings, 2);
  EXPECT_EQ(info.index_kind, TypeParam::kIndex);
  EXPECT_EQ(info.index_source, "rebuilt");  // a new store has no snapshot
}

TYPED_TEST(PatternStoreTest, PutFillsInCreationTime) {
  Pattern p = MakePattern("code", 7);
  p.created_unix_micros = 0;
  const std::uint64_t id = this->MustPut(p);
  ASSERT_OK_AND_ASSIGN(Pattern got, this->store().Get(id));
  EXPECT_GT(got.created_unix_micros, 1'700'000'000'000'000);
}

TYPED_TEST(PatternStoreTest, PutForAnExistingTaskReplacesItAndKeepsTheId) {
  const std::uint64_t id = this->MustPut(MakePattern("code", 1, 8, 3));
  this->MustPut(MakePattern("math", 2));
  Pattern replacement = MakePattern("code", 3, 8, 1);
  ASSERT_OK_AND_ASSIGN(PutResult put, this->store().Put(replacement));
  EXPECT_EQ(put.id, id);
  EXPECT_EQ(put.version, 3u);
  replacement.id = id;
  ASSERT_OK_AND_ASSIGN(Pattern got, this->store().Get(id));
  EXPECT_EQ(got, replacement);
  ASSERT_OK_AND_ASSIGN(StoreInfo info, this->store().Info());
  EXPECT_EQ(info.num_patterns, 2);
  EXPECT_EQ(info.num_embeddings, 1 + 2);
  EXPECT_OK(this->backend_.embedded().Verify());
}

TYPED_TEST(PatternStoreTest, UnknownIdsAndTasksAreNotFound) {
  EXPECT_THAT(this->store().Get(42),
              StatusIs(absl::StatusCode::kNotFound, "no pattern with id 42"));
  EXPECT_THAT(this->store().GetByTask("nope"),
              StatusIs(absl::StatusCode::kNotFound, "no pattern for task \"nope\""));
  EXPECT_THAT(this->store().Delete(42), StatusIs(absl::StatusCode::kNotFound, "id 42"));
}

TYPED_TEST(PatternStoreTest, ListPagesInIdOrder) {
  for (int i = 0; i < 7; ++i) this->MustPut(MakePattern("task" + std::to_string(i), i));
  std::vector<std::uint64_t> ids;
  std::vector<std::size_t> sizes;
  ListRequest request{.page_size = 3};
  for (;;) {
    ASSERT_OK_AND_ASSIGN(ListPage page, this->store().List(request));
    sizes.push_back(page.patterns.size());
    for (const PatternSummary& s : page.patterns) {
      ids.push_back(s.id);
      EXPECT_EQ(s.task_name, "task" + std::to_string(s.id - 1));
      EXPECT_EQ(s.metric, "peu");
      EXPECT_EQ(s.num_layers, 3);
      EXPECT_EQ(s.num_embeddings, 2);
    }
    if (page.next_page_token.empty()) break;
    request.page_token = page.next_page_token;
  }
  EXPECT_THAT(sizes, ElementsAre(3, 3, 1));
  EXPECT_THAT(ids, ElementsAre(1, 2, 3, 4, 5, 6, 7));
  ASSERT_OK_AND_ASSIGN(ListPage all, this->store().List({}));
  EXPECT_EQ(all.patterns.size(), 7u);
  EXPECT_TRUE(all.next_page_token.empty());
  EXPECT_THAT(this->store().List({.page_token = "garbage"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "page token \"garbage\""));
  EXPECT_THAT(this->store().List({.page_size = 5000}),
              StatusIs(absl::StatusCode::kInvalidArgument, "page size 5000"));
}

TYPED_TEST(PatternStoreTest, DeleteRemovesThePatternEverywhere) {
  const std::uint64_t a = this->MustPut(PatternWithEmbeddings("a", {{1, 0, 0, 0}}));
  this->MustPut(PatternWithEmbeddings("b", {{0, 1, 0, 0}}));
  ASSERT_OK_AND_ASSIGN(std::uint64_t version, this->store().Delete(a));
  EXPECT_EQ(version, 3u);
  EXPECT_THAT(this->store().Get(a), StatusIs(absl::StatusCode::kNotFound, ""));
  EXPECT_THAT(this->store().GetByTask("a"), StatusIs(absl::StatusCode::kNotFound, ""));
  ASSERT_OK_AND_ASSIGN(ListPage page, this->store().List({}));
  ASSERT_EQ(page.patterns.size(), 1u);
  EXPECT_EQ(page.patterns[0].task_name, "b");
  const std::vector<float> query = {1, 0, 0, 0};
  ASSERT_OK_AND_ASSIGN(auto matches, this->store().Search(query, {.k = 5}));
  ASSERT_EQ(matches.size(), 1u);
  EXPECT_EQ(matches[0].task_name, "b");
  EXPECT_THAT(matches[0].similarity, FloatNear(0.0f, 1e-6));
  EXPECT_OK(this->backend_.embedded().Verify());
  // Ids are never reused.
  EXPECT_EQ(this->MustPut(PatternWithEmbeddings("a", {{1, 0, 0, 0}})), 3u);
}

// Embeddings: A = {(1,0,0,0), (0,1,0,0)}, B = {(0.6,0.8,0,0)},
// C = {(0,0,1,0), (0,0,0,2)}. Query (3,1,0,0)/sqrt(10) = (0.948683, 0.316228):
//   A: 0.948683, 0.316228   B: 0.6*0.948683 + 0.8*0.316228 = 0.822192   C: 0, 0.
template <typename T>
void PutSearchFixture(PatternStoreTest<T>* t) {
  t->MustPut(PatternWithEmbeddings("A", {{1, 0, 0, 0}, {0, 1, 0, 0}}));
  t->MustPut(PatternWithEmbeddings("B", {{0.6f, 0.8f, 0, 0}}));
  t->MustPut(PatternWithEmbeddings("C", {{0, 0, 1, 0}, {0, 0, 0, 2}}));
}
const std::vector<float> kQuery = {3, 1, 0, 0};

TYPED_TEST(PatternStoreTest, SearchMaxVotingRanksByBestEmbedding) {
  PutSearchFixture(this);
  ASSERT_OK_AND_ASSIGN(auto m, this->store().Search(kQuery, {.k = 3}));
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0].task_name, "A");
  EXPECT_THAT(m[0].similarity, FloatNear(0.948683f, 1e-5));
  EXPECT_EQ(m[1].task_name, "B");
  EXPECT_THAT(m[1].similarity, FloatNear(0.822192f, 1e-5));
  EXPECT_EQ(m[2].task_name, "C");
  EXPECT_THAT(m[2].similarity, FloatNear(0.0f, 1e-5));
  ASSERT_OK_AND_ASSIGN(auto top1, this->store().Search(kQuery, {.k = 1}));
  ASSERT_EQ(top1.size(), 1u);
  EXPECT_EQ(top1[0].id, m[0].id);
}

TYPED_TEST(PatternStoreTest, SearchMeanVotingAveragesCandidates) {
  PutSearchFixture(this);
  ASSERT_OK_AND_ASSIGN(auto m, this->store().Search(kQuery, {.k = 3, .voting = Voting::kMean}));
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0].task_name, "B");
  EXPECT_THAT(m[0].similarity, FloatNear(0.822192f, 1e-5));
  EXPECT_EQ(m[1].task_name, "A");
  EXPECT_THAT(m[1].similarity, FloatNear((0.948683f + 0.316228f) / 2, 1e-5));
  EXPECT_EQ(m[1].votes, 2);
  EXPECT_EQ(m[2].task_name, "C");
  // Over the 2 nearest embeddings only (A's first, B's): A's mean is its best.
  ASSERT_OK_AND_ASSIGN(
      auto two, this->store().Search(kQuery, {.k = 3, .voting = Voting::kMean, .candidates = 2}));
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0].task_name, "A");
  EXPECT_THAT(two[0].similarity, FloatNear(0.948683f, 1e-5));
  EXPECT_EQ(two[1].task_name, "B");
}

TYPED_TEST(PatternStoreTest, SearchCountVotingCountsNearestEmbeddings) {
  PutSearchFixture(this);
  // The 3 nearest: A(0.95), B(0.82), A(0.32).
  ASSERT_OK_AND_ASSIGN(
      auto m, this->store().Search(kQuery, {.k = 3, .voting = Voting::kCount, .candidates = 3}));
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].task_name, "A");
  EXPECT_EQ(m[0].votes, 2);
  EXPECT_THAT(m[0].similarity, FloatNear(0.948683f, 1e-5));
  EXPECT_EQ(m[1].task_name, "B");
  EXPECT_EQ(m[1].votes, 1);
}

TYPED_TEST(PatternStoreTest, SearchOfAnEmptyStoreFindsNothing) {
  ASSERT_OK_AND_ASSIGN(auto m, this->store().Search(kQuery, {.k = 3}));
  EXPECT_TRUE(m.empty());
}

// Searches while other patterns are replaced and deleted: each sees a whole
// index (the unchanging pattern first, exactly), never a change half applied.
TYPED_TEST(PatternStoreTest, SearchesDuringWritesSeeAWholeIndex) {
  const std::vector<float> fixed = {1, 0, 0, 0, 0, 0, 0, 0};
  this->MustPut(PatternWithEmbeddings("fixed", {fixed}));
  std::atomic<bool> stop{false};
  std::atomic<int> writes{0};
  std::thread writer([&] {
    for (int i = 0; !stop.load(); ++i) {
      const std::uint64_t id = this->MustPut(MakePattern("other" + std::to_string(i % 5), i, 8, 4));
      if (i % 3 == 2) EXPECT_OK(this->store().Delete(id).status());
      writes.fetch_add(1);
    }
  });
  int searches = 0, wrong = 0;
  // Until 30 writes have landed: each is fsynced, so on a busy machine that
  // takes far more searches than on a quiet one. The deadline only bounds a
  // hung writer.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  for (; searches < 200 || writes.load() < 30; ++searches) {
    absl::StatusOr<std::vector<SearchMatch>> m = this->store().Search(fixed, {.k = 3});
    if (!m.ok() || m->empty() || (*m)[0].task_name != "fixed" ||
        std::abs((*m)[0].similarity - 1.0f) > 1e-6f) {
      ++wrong;
      ADD_FAILURE() << "search " << searches << ": "
                    << (m.ok() ? (m->empty() ? "nothing" : (*m)[0].task_name)
                               : m.status().ToString());
      if (wrong > 5) break;
    }
    if (std::chrono::steady_clock::now() > deadline) break;
  }
  stop.store(true);
  writer.join();
  EXPECT_EQ(wrong, 0);
  EXPECT_GE(writes.load(), 30);
  EXPECT_OK(this->backend_.embedded().Verify());
}

TYPED_TEST(PatternStoreTest, SearchRejectsBadQueries) {
  PutSearchFixture(this);
  const std::vector<float> three = {1, 0, 0};
  EXPECT_THAT(this->store().Search(three, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, "dimension 3, the store's is 4"));
  const std::vector<float> nan = {1, std::nanf(""), 0, 0};
  EXPECT_THAT(this->store().Search(nan, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, "non-finite value"));
  const std::vector<float> zero = {0, 0, 0, 0};
  EXPECT_THAT(this->store().Search(zero, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, "all zeros"));
  EXPECT_THAT(this->store().Search(kQuery, {.k = 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, "k must be positive"));
}

TYPED_TEST(PatternStoreTest, InvalidPatternsAreRefusedAndLeaveNothing) {
  this->MustPut(MakePattern("first", 1));  // fixes fingerprint and dimension 8
  ASSERT_OK_AND_ASSIGN(StoreInfo before, this->store().Info());
  const auto kInvalid = absl::StatusCode::kInvalidArgument;

  Pattern empty_task = MakePattern("", 2);
  EXPECT_THAT(this->store().Put(empty_task), StatusIs(kInvalid, "empty task name"));

  // Over gRPC too: the task name is bytes on the wire, so the store's own
  // check answers, not a parse failure.
  Pattern not_utf8 = MakePattern("caf\xc3", 2);
  EXPECT_THAT(this->store().Put(not_utf8), StatusIs(kInvalid, "is not valid UTF-8 at byte 3"));
  this->ExpectUnchanged(before, "caf\xc3");

  Pattern other_model = MakePattern("other", 2);
  other_model.model_fingerprint = "another-model";
  EXPECT_THAT(this->store().Put(other_model),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       "is for model another-model but this store serves model model-fp-"));
  this->ExpectUnchanged(before, "other");

  Pattern wrong_dim = MakePattern("wrong_dim", 2, /*dim=*/8, /*embeddings=*/3);
  wrong_dim.embeddings[2].values.push_back(1);
  EXPECT_THAT(this->store().Put(wrong_dim),
              StatusIs(kInvalid, "embedding 2 has dimension 9, the store's is 8"));
  this->ExpectUnchanged(before, "wrong_dim");

  Pattern nan = MakePattern("nan", 2);
  nan.embeddings[1].values[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(this->store().Put(nan), StatusIs(kInvalid, "embedding 1 has a non-finite value"));
  this->ExpectUnchanged(before, "nan");

  Pattern inf = MakePattern("inf", 2);
  inf.layers[1].scores[5] = std::numeric_limits<float>::infinity();
  EXPECT_THAT(this->store().Put(inf), StatusIs(kInvalid, "layer 2 score of expert 5 is inf"));
  this->ExpectUnchanged(before, "inf");

  Pattern zero = MakePattern("zero", 2);
  zero.embeddings[0].values.assign(8, 0.0f);
  EXPECT_THAT(this->store().Put(zero), StatusIs(kInvalid, "embedding 0 is all zeros"));
  this->ExpectUnchanged(before, "zero");

  Pattern newer = MakePattern("newer", 2);
  newer.schema_version = kPatternSchemaVersion + 1;
  EXPECT_THAT(this->store().Put(newer),
              StatusIs(absl::StatusCode::kFailedPrecondition, "schema version"));
  this->ExpectUnchanged(before, "newer");
}

TYPED_TEST(PatternStoreTest, RecordsOverTheSizeLimitAreRefused) {
  EmbeddedPatternStore::Options options = this->Options();
  options.max_record_bytes = 4096;
  ASSERT_OK(this->backend_.Open(options));
  ASSERT_OK_AND_ASSIGN(StoreInfo before, this->store().Info());
  Pattern big = MakePattern("big", 1, 8, 2, /*layers=*/4, /*experts=*/512);  // ~8 KiB of scores
  EXPECT_THAT(this->store().Put(big),
              StatusIs(absl::StatusCode::kInvalidArgument, "over the store's limit of 4096"));
  this->ExpectUnchanged(before, "big");
  this->MustPut(MakePattern("small", 1));
}

// The embeddings of the whole store are bounded, not only one record's
// (five large Puts once grew a store's memory by half a gigabyte).
TYPED_TEST(PatternStoreTest, EmbeddingsOverTheStoreLimitAreRefused) {
  EmbeddedPatternStore::Options options = this->Options();
  options.max_embedding_bytes = 10 * 8 * 4;  // ten embeddings of dimension 8
  ASSERT_OK(this->backend_.Open(options));
  this->MustPut(MakePattern("a", 1, 8, 4));
  const std::uint64_t b = this->MustPut(MakePattern("b", 2, 8, 4));
  ASSERT_OK_AND_ASSIGN(StoreInfo before, this->store().Info());
  EXPECT_THAT(this->store().Put(MakePattern("c", 3, 8, 3)),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       "the store would hold 11 embeddings of dimension 8 (352 bytes), over its "
                       "limit of 320"));
  this->ExpectUnchanged(before, "c");
  this->MustPut(MakePattern("c", 3, 8, 2));  // exactly at the limit
  this->MustPut(MakePattern("a", 1, 8, 4));  // a replacement counts what it replaces
  ASSERT_OK(this->store().Delete(b).status());
  this->MustPut(MakePattern("d", 4, 8, 4));  // a delete frees its share
}

TYPED_TEST(PatternStoreTest, FingerprintAndDimensionGivenAtOpenAreEnforced) {
  EmbeddedPatternStore::Options options = this->Options();
  options.path = this->dir_.Join("fixed");
  options.model_fingerprint = "fixed-model";
  options.embedding_dim = 4;
  ASSERT_OK(this->backend_.Open(options));
  EXPECT_THAT(this->store().Put(MakePattern("t", 1)),
              StatusIs(absl::StatusCode::kFailedPrecondition, "serves model fixed-model"));
  Pattern p = MakePattern("t", 1, /*dim=*/8);
  p.model_fingerprint = "fixed-model";
  EXPECT_THAT(this->store().Put(p),
              StatusIs(absl::StatusCode::kInvalidArgument, "dimension 8, the store's is 4"));
  // Reopening the store as another model's is refused.
  options.model_fingerprint = "yet-another";
  EXPECT_THAT(this->backend_.Open(options),
              StatusIs(absl::StatusCode::kFailedPrecondition, "not of model yet-another"));
}

TYPED_TEST(PatternStoreTest, WatchReplaysCommittedChangesInOrder) {
  const std::uint64_t a = this->MustPut(MakePattern("a", 1));
  this->MustPut(MakePattern("b", 2));
  this->MustPut(MakePattern("a", 3));
  ASSERT_OK(this->store().Delete(a).status());
  Collector all;
  ASSERT_OK_AND_ASSIGN(auto watch, this->store().Watch(0, all.callback()));
  using K = ChangeEvent::Kind;
  EXPECT_THAT(all.Wait(4),
              ElementsAre(ChangeEvent{1, K::kPut, 1, "a"}, ChangeEvent{2, K::kPut, 2, "b"},
                          ChangeEvent{3, K::kPut, 1, "a"}, ChangeEvent{4, K::kDelete, 1, "a"}));
  Collector tail;
  ASSERT_OK_AND_ASSIGN(auto tail_watch, this->store().Watch(2, tail.callback()));
  EXPECT_THAT(tail.Wait(2),
              ElementsAre(ChangeEvent{3, K::kPut, 1, "a"}, ChangeEvent{4, K::kDelete, 1, "a"}));
}

TYPED_TEST(PatternStoreTest, WatchDeliversLiveChangesExactlyOnceInOrder) {
  Collector collector;
  ASSERT_OK_AND_ASSIGN(auto watch, this->store().Watch(0, collector.callback()));
  constexpr int kThreads = 3, kPerThread = 20;
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([this, t] {
      for (int i = 0; i < kPerThread; ++i) {
        this->MustPut(MakePattern("t" + std::to_string(t) + "_" + std::to_string(i % 7), i));
      }
    });
  }
  for (auto& w : writers) w.join();
  // Past the gRPC client's stream deadline: re-opening loses nothing.
  ASSERT_TRUE(this->backend_.AwaitWatchReopen());
  this->MustPut(MakePattern("last", 0));
  // Events arrive in order, so a repeated or extra one would come before
  // the sentinel.
  this->MustPut(MakePattern("sentinel", 0));
  const std::size_t total = kThreads * kPerThread + 1;
  std::vector<ChangeEvent> events = collector.Wait(total + 1);
  ASSERT_EQ(events.size(), total + 1);
  EXPECT_EQ(events.back().task_name, "sentinel");
  events.pop_back();
  for (std::size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].version, i + 1);
  EXPECT_EQ(events.back().task_name, "last");
}

TYPED_TEST(PatternStoreTest, WatchResumesFromAVersionAfterARestart) {
  this->MustPut(MakePattern("a", 1));
  this->MustPut(MakePattern("b", 2));
  ASSERT_OK(this->backend_.Reopen());
  this->MustPut(MakePattern("c", 3));
  Collector collector;
  ASSERT_OK_AND_ASSIGN(auto watch, this->store().Watch(2, collector.callback()));
  this->MustPut(MakePattern("d", 4));
  std::vector<ChangeEvent> events = collector.Wait(2);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0], (ChangeEvent{3, ChangeEvent::Kind::kPut, 3, "c"}));
  EXPECT_EQ(events[1], (ChangeEvent{4, ChangeEvent::Kind::kPut, 4, "d"}));
}

TYPED_TEST(PatternStoreTest, WatchFromBeforeTheRetainedChangesIsOutOfRange) {
  EmbeddedPatternStore::Options options = this->Options();
  options.max_changes_retained = 3;
  ASSERT_OK(this->backend_.Open(options));
  for (int i = 0; i < 4; ++i) this->MustPut(MakePattern("t" + std::to_string(i), i));
  ASSERT_OK(this->store().Delete(1).status());
  // Versions 3, 4 and 5 are retained: a watch from 2 misses nothing.
  Collector from2;
  ASSERT_OK_AND_ASSIGN(auto w2, this->store().Watch(2, from2.callback()));
  using K = ChangeEvent::Kind;
  EXPECT_THAT(from2.Wait(3),
              ElementsAre(ChangeEvent{3, K::kPut, 3, "t2"}, ChangeEvent{4, K::kPut, 4, "t3"},
                          ChangeEvent{5, K::kDelete, 1, "t0"}));
  Collector from1;
  ASSERT_OK_AND_ASSIGN(auto w1, this->store().Watch(1, from1.callback()));
  EXPECT_THAT(from1.WaitError(), StatusIs(absl::StatusCode::kOutOfRange,
                                          "changes before version 3 are no longer retained"));
  EXPECT_THAT(from1.WaitError(), StatusIs(absl::StatusCode::kOutOfRange,
                                          "re-list and watch from the current version"));
  EXPECT_TRUE(from1.events().empty());
  w1.reset();
  w2.reset();

  // A lower limit after a restart drops the backlog with the next change.
  options.max_changes_retained = 2;
  ASSERT_OK(this->backend_.Open(options));
  this->MustPut(MakePattern("t4", 4));  // version 6: 5 and 6 are retained
  Collector from3;
  ASSERT_OK_AND_ASSIGN(auto w3, this->store().Watch(3, from3.callback()));
  EXPECT_THAT(from3.WaitError(), StatusIs(absl::StatusCode::kOutOfRange, "before version 5"));
  Collector from4;
  ASSERT_OK_AND_ASSIGN(auto w4, this->store().Watch(4, from4.callback()));
  EXPECT_THAT(from4.Wait(2),
              ElementsAre(ChangeEvent{5, K::kDelete, 1, "t0"}, ChangeEvent{6, K::kPut, 5, "t4"}));
  this->MustPut(MakePattern("t5", 5));  // version 7: live changes slide the window too
  EXPECT_EQ(from4.Wait(3).size(), 3u);
  Collector again;
  ASSERT_OK_AND_ASSIGN(auto w5, this->store().Watch(4, again.callback()));
  EXPECT_THAT(again.WaitError(), StatusIs(absl::StatusCode::kOutOfRange, "before version 6"));
}

TYPED_TEST(PatternStoreTest, ReopenRestoresTheIndex) {
  PutSearchFixture(this);
  ASSERT_OK(this->backend_.Reopen());
  ASSERT_OK_AND_ASSIGN(StoreInfo info, this->store().Info());
  EXPECT_EQ(info.index_source, "snapshot");  // the store was closed cleanly
  ASSERT_OK_AND_ASSIGN(auto m, this->store().Search(kQuery, {.k = 2}));
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].task_name, "A");
  EXPECT_EQ(m[1].task_name, "B");
  EXPECT_OK(this->backend_.embedded().Verify());
}

TYPED_TEST(PatternStoreTest, ConcurrentReadersAndWriters) {
  constexpr int kWriters = 3, kPuts = 30;
  std::atomic<bool> stop{false};
  std::atomic<int> reads{0}, read_errors{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&, r] {
      const std::vector<float> q = {1, 2, 3, 4, 5, 6, 7, static_cast<float>(r)};
      while (!stop) {
        absl::Status s = this->store().Search(q, {.k = 3}).status();
        if (s.ok()) s = this->store().List({.page_size = 10}).status();
        absl::StatusOr<Pattern> p = this->store().Get(1);
        if (!p.ok() && !absl::IsNotFound(p.status())) s = p.status();
        if (p.ok() && p->embeddings.size() != 2) s = absl::InternalError("torn read");
        if (!s.ok()) {
          ADD_FAILURE() << s;
          ++read_errors;
        }
        ++reads;
      }
    });
  }
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      for (int i = 0; i < kPuts; ++i) {
        const std::string task = "w" + std::to_string(w) + "_" + std::to_string(i);
        const std::uint64_t id = this->MustPut(MakePattern(task, i));
        if (i % 5 == 4) EXPECT_OK(this->store().Delete(id).status());
      }
    });
  }
  for (auto& t : writers) t.join();
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(read_errors, 0);
  EXPECT_GT(reads, 0);
  ASSERT_OK_AND_ASSIGN(StoreInfo info, this->store().Info());
  EXPECT_EQ(info.num_patterns, kWriters * (kPuts - kPuts / 5));
  EXPECT_EQ(info.version, static_cast<std::uint64_t>(kWriters * (kPuts + kPuts / 5)));
  EXPECT_OK(this->backend_.embedded().Verify());
}

TEST(PatternCodecTest, EncodeDecodeRoundTrips) {
  Pattern p = MakePattern("code", 5);
  p.id = 9;
  ASSERT_OK_AND_ASSIGN(Pattern back, DecodePattern(EncodePattern(p)));
  EXPECT_EQ(back, p);
  EXPECT_EQ(EncodePattern(p), EncodePattern(back));
  EXPECT_THAT(DecodePattern("\xff\xff not a proto"),
              StatusIs(absl::StatusCode::kInvalidArgument, "not a premoe.v1.Pattern"));
}

TEST(EmbeddedOptionsTest, ValidateNamesTheBadField) {
  EmbeddedPatternStore::Options options;
  EXPECT_THAT(options.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "path is empty"));
  options.path = "/tmp/x";
  options.index = "ivf";
  EXPECT_THAT(options.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "\"ivf\""));
  options.index = "flat";
  options.max_changes_retained = -1;
  EXPECT_THAT(options.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, "max_changes_retained must be >= 0"));
}

TEST(EmbeddedOptionsTest, OpeningWithoutCreatingNeedsAStore) {
  TempDir dir;
  EmbeddedPatternStore::Options options;
  options.path = dir.Join("store");
  options.create_if_missing = false;
  EXPECT_THAT(EmbeddedPatternStore::Open(options),
              StatusIs(absl::StatusCode::kNotFound, "store: no pattern store there"));
  EXPECT_FALSE(std::filesystem::exists(options.path));
  options.create_if_missing = true;
  ASSERT_OK(EmbeddedPatternStore::Open(options).status());
  options.create_if_missing = false;
  EXPECT_OK(EmbeddedPatternStore::Open(options).status());
}

// The router's replica: a whole store that leaves nothing on disk.
// A client may hold only so many Watch streams (each holds a store thread).
TEST(StoreServerTest, WatchStreamsPerClientAreBounded) {
  EmbeddedPatternStore::Options o;
  o.in_memory = true;
  o.path = "/watch-bound";
  ASSERT_OK_AND_ASSIGN(auto store, EmbeddedPatternStore::Open(o));
  PatternStoreServer::Options so;
  so.max_watches_per_client = 2;
  ASSERT_OK_AND_ASSIGN(auto server, PatternStoreServer::Start(so, store.get()));
  ASSERT_OK_AND_ASSIGN(auto client, GrpcPatternStoreClient::Open({.address = server->address()}));
  struct Seen {
    absl::Mutex mu;
    int events ABSL_GUARDED_BY(mu) = 0;
    std::vector<absl::Status> errors ABSL_GUARDED_BY(mu);
  };
  auto watch = [&](Seen& seen) {
    return client->Watch(0, [&seen](const absl::StatusOr<ChangeEvent>& e) {
      absl::MutexLock lock(&seen.mu);
      if (e.ok()) {
        ++seen.events;
        return true;
      }
      seen.errors.push_back(e.status());
      return false;
    });
  };
  Seen a, b, c;
  ASSERT_OK(store->Put(MakePattern("t", 1)).status());
  ASSERT_OK_AND_ASSIGN(auto wa, watch(a));
  ASSERT_OK_AND_ASSIGN(auto wb, watch(b));
  // Each stream is open on the server once the change before it reaches it.
  for (Seen* seen : {&a, &b}) {
    absl::MutexLock lock(&seen->mu);
    ASSERT_TRUE(seen->mu.AwaitWithTimeout(absl::Condition(
                                              +[](int* n) { return *n > 0; }, &seen->events),
                                          absl::Seconds(30)));
  }
  ASSERT_OK_AND_ASSIGN(auto wc, watch(c));
  {
    absl::MutexLock lock(&c.mu);
    ASSERT_TRUE(c.mu.AwaitWithTimeout(
        absl::Condition(
            +[](std::vector<absl::Status>* v) { return !v->empty(); }, &c.errors),
        absl::Seconds(30)));
    EXPECT_THAT(c.errors[0],
                StatusIs(absl::StatusCode::kResourceExhausted, "2 Watch streams from ipv"));
  }
  // Closing one makes room (once the server has seen it end).
  wa->Cancel();
  wa.reset();
  bool opened = false;
  for (int attempt = 0; attempt < 50 && !opened; ++attempt) {
    Seen d;
    ASSERT_OK_AND_ASSIGN(auto wd, watch(d));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // a refusal comes at once
    absl::MutexLock lock(&d.mu);
    opened = d.errors.empty();
  }
  EXPECT_TRUE(opened);
}

TEST(InMemoryStoreTest, ServesLikeTheDiskStoreAndWritesNothing) {
  TempDir dir;
  EmbeddedPatternStore::Options options;
  options.path = dir.Join("replica");
  options.in_memory = true;
  ASSERT_OK_AND_ASSIGN(auto store, EmbeddedPatternStore::Open(options));
  ASSERT_OK(store->Put(PatternWithEmbeddings("A", {{1, 0, 0, 0}, {0.9f, 0.1f, 0, 0}})).status());
  ASSERT_OK(store->Put(PatternWithEmbeddings("B", {{0, 1, 0, 0}})).status());
  ASSERT_OK_AND_ASSIGN(auto m, store->Search(kQuery, {.k = 2}));
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].task_name, "A");
  EXPECT_EQ(m[1].task_name, "B");
  ASSERT_OK_AND_ASSIGN(Pattern b, store->GetByTask("B"));
  ASSERT_OK(store->Delete(b.id).status());
  EXPECT_OK(store->Verify());
  store.reset();
  EXPECT_FALSE(std::filesystem::exists(options.path));
}

}  // namespace
}  // namespace premoe::store
