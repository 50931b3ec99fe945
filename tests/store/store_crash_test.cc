// Crash consistency: a child process changes the store in a loop
// and is SIGKILLed at a random moment, 20 times over. After every kill the
// store reopens and: every acknowledged Put is there, whole and equal to what
// was put; every acknowledged Delete is gone; nothing else is there except
// possibly the one change in flight, and then whole; the FAISS index equals
// RocksDB (Verify), whether the reopen loaded the index snapshot (the
// helper writes one every few changes, the test's clean closes another) or
// rebuilt it; the change log is gap-free.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "premoe/store/embedded_store.h"
#include "tests/store/test_patterns.h"
#include "tests/testutil/testutil.h"

namespace premoe::store {
namespace {

using ::premoe::testing::TempDir;

struct Child {
  pid_t pid = -1;
  int out = -1;  // read end of the child's stdout
};

Child Spawn(const std::string& dir, std::uint64_t first_seq, const std::string& index) {
  int fds[2];
  if (::pipe(fds) != 0) return {};
  const std::string seq = std::to_string(first_seq);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[0]);
    ::close(fds[1]);
    ::execl(PREMOE_STORE_CRASH_HELPER, PREMOE_STORE_CRASH_HELPER, dir.c_str(), seq.c_str(),
            index.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);
  return {pid, fds[0]};
}

// Reads whatever the child wrote until `deadline` or EOF.
std::string ReadAll(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, n);
  }
  return out;
}

void RunCrashRounds(const std::string& index) {
  TempDir dir;
  const std::string path = dir.Join("store");
  std::mt19937 rng(20240517);
  std::uniform_int_distribution<int> delay_ms(5, 250);
  std::map<std::uint64_t, std::uint64_t> live;  // acknowledged: id -> seq
  std::set<std::uint64_t> deleted;              // acknowledged deletes
  const auto start = std::chrono::steady_clock::now();
  int rounds = 0, acked_puts = 0, helper_snapshot_opens = 0, snapshot_reopens = 0;
  for (; rounds < 20; ++rounds) {
    if (std::chrono::steady_clock::now() - start > std::chrono::seconds(25)) break;
    const std::uint64_t first_seq = static_cast<std::uint64_t>(rounds) * 1'000'000;
    Child child = Spawn(path, first_seq, index);
    ASSERT_GT(child.pid, 0);
    // Wait until it has opened the store (reads "ready <index source>"),
    // then let it run.
    char c;
    std::string ready;
    while (!ready.ends_with("\n") && ::read(child.out, &c, 1) == 1) ready += c;
    ASSERT_TRUE(ready.starts_with("ready ")) << "helper failed to start";
    if (ready == "ready snapshot\n") ++helper_snapshot_opens;
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    ::kill(child.pid, SIGKILL);
    int wstatus = 0;
    ::waitpid(child.pid, &wstatus, 0);
    ASSERT_TRUE(WIFSIGNALED(wstatus)) << "helper exited by itself: " << wstatus;
    const std::string lines = ReadAll(child.out);
    ::close(child.out);

    // What was acknowledged, and what was in flight when the kill came.
    constexpr std::uint64_t kNone = ~std::uint64_t{0};
    std::uint64_t put_in_flight = kNone, delete_in_flight = kNone;
    std::istringstream in(lines);
    std::string line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // a torn last line (no newline) is not an ack
      std::istringstream fields(line);
      std::string op;
      std::uint64_t a = 0, b = 0;
      fields >> op >> a >> b;
      if (op == "p") {
        put_in_flight = a;
      } else if (op == "P") {
        put_in_flight = kNone;
        live[b] = a;
        ++acked_puts;
      } else if (op == "d") {
        delete_in_flight = a;
      } else if (op == "D") {
        delete_in_flight = kNone;
        live.erase(a);
        deleted.insert(a);
      }
    }

    EmbeddedPatternStore::Options options;
    options.path = path;
    options.index = index;
    ASSERT_OK_AND_ASSIGN(auto store, EmbeddedPatternStore::Open(options));
    snapshot_reopens += store->Info()->index_source == "snapshot";
    const absl::Status verified = store->Verify();
    ASSERT_TRUE(verified.ok()) << "round " << rounds << ": " << verified;
    for (const auto& [id, seq] : live) {
      absl::StatusOr<Pattern> got = store->Get(id);
      if (delete_in_flight == id && absl::IsNotFound(got.status())) continue;
      ASSERT_TRUE(got.ok()) << "round " << rounds << ": acknowledged pattern " << id
                            << " lost: " << got.status();
      Pattern want = testing::MakePattern("t" + std::to_string(seq), seq, 16, 1 + seq % 4);
      want.id = id;
      ASSERT_EQ(*got, want) << "round " << rounds << ": pattern " << id << " differs";
    }
    for (std::uint64_t id : deleted) {
      ASSERT_TRUE(absl::IsNotFound(store->Get(id).status()))
          << "round " << rounds << ": deleted pattern " << id << " is back";
    }
    // Anything else present is the put that was in flight, and whole.
    std::int64_t extra = 0;
    for (ListRequest req{.page_size = 1000};;) {
      ASSERT_OK_AND_ASSIGN(ListPage page, store->List(req));
      for (const PatternSummary& s : page.patterns) {
        if (live.contains(s.id)) continue;
        ASSERT_TRUE(put_in_flight != kNone && s.task_name == "t" + std::to_string(put_in_flight))
            << "round " << rounds << ": unacknowledged pattern " << s.task_name << " present";
        ASSERT_EQ(s.num_embeddings, static_cast<std::int32_t>(1 + put_in_flight % 4));
        live[s.id] = put_in_flight;  // it is committed: it must stay from now on
        ++extra;
      }
      if (page.next_page_token.empty()) break;
      req.page_token = page.next_page_token;
    }
    if (delete_in_flight != kNone && absl::IsNotFound(store->Get(delete_in_flight).status())) {
      live.erase(delete_in_flight);
      deleted.insert(delete_in_flight);
    }
    ASSERT_LE(extra, 1);
    ASSERT_OK_AND_ASSIGN(StoreInfo info, store->Info());
    ASSERT_EQ(info.num_patterns, static_cast<std::int64_t>(live.size()));
  }
  // The change log is gap-free over all rounds.
  EmbeddedPatternStore::Options options;
  options.path = path;
  options.index = index;
  ASSERT_OK_AND_ASSIGN(auto store, EmbeddedPatternStore::Open(options));
  ASSERT_OK_AND_ASSIGN(StoreInfo info, store->Info());
  std::mutex mu;
  std::condition_variable cv;
  std::uint64_t expected = 1;
  bool gap = false;
  ASSERT_OK_AND_ASSIGN(auto watch, store->Watch(0, [&](const absl::StatusOr<ChangeEvent>& e) {
    std::lock_guard lock(mu);
    if (!e.ok() || e->version != expected) gap = true;
    ++expected;
    cv.notify_all();
    return true;
  }));
  {
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::seconds(10), [&] { return expected > info.version; });
    EXPECT_FALSE(gap);
    EXPECT_EQ(expected, info.version + 1);
  }
  watch.reset();
  std::printf(
      "[ crash ] %s: %d kills, %d acknowledged puts, %zu live, version %llu; index "
      "from a snapshot in %d of the helper's opens and %d reopens after a kill\n",
      index.c_str(), rounds, acked_puts, live.size(), static_cast<unsigned long long>(info.version),
      helper_snapshot_opens, snapshot_reopens);
  EXPECT_GE(rounds, 10);
  EXPECT_GT(helper_snapshot_opens, 0);  // the snapshot path ran
  EXPECT_GT(acked_puts, 0);
}

TEST(StoreCrashTest, AcknowledgedChangesSurviveSigkillFlat) { RunCrashRounds("flat"); }
TEST(StoreCrashTest, AcknowledgedChangesSurviveSigkillHnsw) { RunCrashRounds("hnsw"); }

}  // namespace
}  // namespace premoe::store
