// The expert cache against a fake source: what it reads, what it evicts, and
// that no call waits behind another that it does not need.
#include "premoe/worker/expert_cache.h"

#include <chrono>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/testutil/fake_expert_source.h"
#include "tests/testutil/testutil.h"

namespace premoe::worker {
namespace {

using ::premoe::testing::FakeExpertSource;
using ::premoe::testing::StatusIs;

constexpr int64_t kBytes = 1024;

// `experts` kept in every one of `layers` layers.
model::KeptExperts Keep(std::vector<int64_t> experts, int64_t layers = 4) {
  model::KeptExperts k;
  for (int64_t l = 0; l < layers; ++l) k.Set(l, experts);
  return k;
}

std::chrono::steady_clock::time_point In(std::chrono::milliseconds d) {
  return std::chrono::steady_clock::now() + d;
}

std::unique_ptr<ExpertCache> Open(const FakeExpertSource& source, int64_t experts) {
  ExpertCacheOptions o;
  o.budget_bytes = experts * kBytes;
  o.load_threads = 2;
  auto cache = ExpertCache::Create(&source, o);
  EXPECT_TRUE(cache.ok()) << cache.status();
  return cache.ok() ? *std::move(cache) : nullptr;
}

TEST(ExpertCacheTest, SwitchingPatternsLoadsOnlyTheDifference) {
  FakeExpertSource source(/*layers=*/4, /*experts=*/16, kBytes);
  auto cache = Open(source, 16);
  ASSERT_NE(cache, nullptr);
  ASSERT_OK_AND_ASSIGN(LoadReport first, cache->Prepare(Keep({0, 1, 2, 3})));
  EXPECT_EQ(first.loaded_experts, 16);
  EXPECT_EQ(source.experts_read(), 16);
  source.ResetCounters();
  ASSERT_OK_AND_ASSIGN(LoadReport second, cache->Prepare(Keep({2, 3, 4, 5})));
  EXPECT_EQ(source.experts_read(), 4 * 2);  // experts 4 and 5, in 4 layers
  EXPECT_EQ(second.needed_experts, 16);
  EXPECT_EQ(second.loaded_experts, 8);
  EXPECT_EQ(second.loaded_bytes, 8 * kBytes);
  // The budget holds 16: the 8 the new pattern does not name (experts 0 and
  // 1) made room.
  EXPECT_EQ(second.evicted_experts, 8);
  const CacheStats s = cache->Stats();
  EXPECT_EQ(s.resident_experts, 16);
  EXPECT_TRUE(cache->Resident(Keep({2, 3, 4, 5})));
  EXPECT_FALSE(cache->Resident(Keep({0})));
  EXPECT_EQ(s.evictions, 8);
}

TEST(ExpertCacheTest, AWaitingAcquireDoesNotBlockAnUnrelatedPrepare) {
  FakeExpertSource source(/*layers=*/1, /*experts=*/8, kBytes);
  auto cache = Open(source, 4);
  ASSERT_NE(cache, nullptr);
  // Experts 0-2 pinned: one expert of room left.
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Lease> held, cache->Acquire(Keep({0, 1, 2}, 1)));
  // Needs two more: waits for the lease to end.
  std::future<absl::StatusOr<std::unique_ptr<Lease>>> waiting = std::async(std::launch::async, [&] {
    return cache->Acquire(Keep({4, 5}, 1), In(std::chrono::minutes(5)));
  });
  // Whether or not that Acquire is waiting yet, calls whose experts fit or
  // are resident go through (a Prepare that waited would run into its
  // deadline and fail).
  EXPECT_OK(cache->Prepare(Keep({3}, 1), In(std::chrono::minutes(1))).status());
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Lease> resident,
                       cache->Acquire(Keep({0, 1}, 1), In(std::chrono::minutes(1))));
  EXPECT_EQ(waiting.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  resident.reset();
  held.reset();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Lease> got, waiting.get());
  EXPECT_EQ(got->experts().experts.size(), 2u);
  EXPECT_TRUE(cache->Resident(Keep({4, 5}, 1)));
}

TEST(ExpertCacheTest, DeadlinesEndWaitsAndEvictNothing) {
  FakeExpertSource source(/*layers=*/1, /*experts=*/8, kBytes);
  auto cache = Open(source, 4);
  ASSERT_NE(cache, nullptr);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Lease> held, cache->Acquire(Keep({0, 1, 2}, 1)));
  EXPECT_THAT(cache->Acquire(Keep({4, 5}, 1), In(std::chrono::milliseconds(20))).status(),
              StatusIs(absl::StatusCode::kDeadlineExceeded, "waiting for room"));
  // A deadline already past fails the same way, without reading anything.
  source.ResetCounters();
  EXPECT_THAT(cache->Acquire(Keep({4, 5}, 1), In(std::chrono::milliseconds(-1))).status(),
              StatusIs(absl::StatusCode::kDeadlineExceeded, "waiting for room"));
  EXPECT_EQ(source.experts_read(), 0);
  EXPECT_EQ(cache->Stats().evictions, 0);
  EXPECT_TRUE(cache->Resident(Keep({0, 1, 2}, 1)));
  // Prepare does not wait for room: it is refused at once.
  EXPECT_THAT(cache->Prepare(Keep({4, 5}, 1)).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, "cannot hold this pattern now"));
  // More than the whole budget: refused at once, waiting or not.
  EXPECT_THAT(cache->Acquire(Keep({3, 4, 5, 6, 7}, 1)).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, "budget of 4096 bytes holds 4"));
}

TEST(ExpertCacheTest, LoadsOfDifferentExpertsRunInParallelAndOneExpertIsReadOnce) {
  FakeExpertSource source(/*layers=*/1, /*experts=*/8, kBytes);
  ExpertCacheOptions o;
  o.budget_bytes = 8 * kBytes;
  o.load_threads = 1;  // one reader per call: parallelism must come from the calls
  ASSERT_OK_AND_ASSIGN(auto cache, ExpertCache::Create(&source, o));
  ASSERT_OK(cache->Prepare(Keep({2}, 1)).status());
  source.Gate(false);
  auto a = std::async(std::launch::async, [&] { return cache->Prepare(Keep({0}, 1)); });
  auto b = std::async(std::launch::async, [&] { return cache->Prepare(Keep({1}, 1)); });
  // Both reads are under way at once: neither call waits for the other.
  const bool both = source.AwaitInFlight(2);
  // A third call for expert 0 waits for a's read instead of reading again.
  auto c = std::async(std::launch::async,
                      [&] { return cache->Acquire(Keep({0}, 1), In(std::chrono::minutes(5))); });
  // Resident experts are served while reads are under way.
  EXPECT_OK(cache->Prepare(Keep({2}, 1)).status());
  source.Gate(true);
  EXPECT_TRUE(both) << "the two reads did not run at once";
  ASSERT_OK(a.get().status());
  ASSERT_OK(b.get().status());
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Lease> lease, c.get());
  EXPECT_EQ(lease->report().loaded_experts, 0);
  EXPECT_EQ(source.experts_read(), 3);  // 0, 1 and 2, once each
  EXPECT_GE(source.max_in_flight(), 2);
}

TEST(ExpertCacheTest, AFailedReadKeepsWhatLoadedAndFreesItsRoom) {
  FakeExpertSource source(/*layers=*/1, /*experts=*/8, kBytes);
  auto cache = Open(source, 4);
  ASSERT_NE(cache, nullptr);
  source.Fail(0, 2);
  EXPECT_THAT(cache->Prepare(Keep({0, 1, 2}, 1)).status(),
              StatusIs(absl::StatusCode::kDataLoss, "expert 2 of layer 0 is damaged"));
  EXPECT_TRUE(cache->Resident(Keep({0, 1}, 1)));
  EXPECT_FALSE(cache->Resident(Keep({2}, 1)));
  // The failed expert's room was given back: two more still fit.
  ASSERT_OK(cache->Prepare(Keep({0, 1, 3, 4}, 1)).status());
  EXPECT_EQ(cache->Stats().resident_experts, 4);
  EXPECT_EQ(cache->Stats().evictions, 0);
}

TEST(ExpertCacheTest, ShutdownEndsWaits) {
  FakeExpertSource source(/*layers=*/1, /*experts=*/8, kBytes);
  auto cache = Open(source, 2);
  ASSERT_NE(cache, nullptr);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Lease> held, cache->Acquire(Keep({0, 1}, 1)));
  auto waiting = std::async(std::launch::async, [&] { return cache->Acquire(Keep({2}, 1)); });
  cache->Shutdown();
  EXPECT_THAT(waiting.get().status(), StatusIs(absl::StatusCode::kUnavailable, "shutting down"));
  EXPECT_THAT(cache->Acquire(Keep({3}, 1)).status(),
              StatusIs(absl::StatusCode::kUnavailable, "shutting down"));
}

TEST(ExpertCacheTest, RefusesWhatDoesNotFitTheModel) {
  FakeExpertSource source(/*layers=*/2, /*experts=*/8, kBytes);
  auto cache = Open(source, 4);
  ASSERT_NE(cache, nullptr);
  EXPECT_THAT(cache->Prepare(Keep({9}, 1)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "outside [0, 8)"));
  EXPECT_THAT(ExpertCache::Create(&source, {.budget_bytes = 0}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "budget_bytes must be > 0"));
  EXPECT_THAT(ExpertCache::Create(nullptr, {.budget_bytes = 1}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "expert source"));
}

}  // namespace
}  // namespace premoe::worker
