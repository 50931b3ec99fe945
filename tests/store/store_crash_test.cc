// Crash consistency, the store's fault-injection suite: a child process
// changes the store and is SIGKILLed at a random moment, over and over
// (PREMOE_CRASH_KILLS times per test). The children: a helper that Puts and
// Deletes while a second thread flushes and compacts RocksDB (so kills land
// in flushes and compactions too), with the flat and the HNSW index; and the
// real `premoe patterns import`. After every kill the store reopens and:
// every acknowledged Put is there, whole and equal to what was put; every
// acknowledged Delete is gone; nothing else is there except possibly the one
// change in flight, and then whole; the index equals RocksDB (Verify),
// whether the reopen loaded the index snapshot (the helper writes one every
// few changes, the test's clean closes another) or rebuilt it; the change
// log is gap-free. Each test prints "N kills, M acknowledged writes, 0 lost,
// 0 silently dropped" (docs/reliability.md).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "premoe/store/archive.h"
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

Child Spawn(const std::vector<std::string>& argv) {
  int fds[2];
  if (::pipe(fds) != 0) return {};
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[0]);
    ::close(fds[1]);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  return {pid, fds[0]};
}

// Reads one line (without its newline); "" at EOF.
std::string ReadLine(int fd) {
  std::string line;
  char c;
  while (::read(fd, &c, 1) == 1 && c != '\n') line += c;
  return line;
}

// Reads whatever the child wrote until EOF.
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

// The whole lines of `text` (a torn last line, without its newline, is not
// an acknowledgement).
std::vector<std::string> WholeLines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t begin = 0;
  for (std::size_t nl; (nl = text.find('\n', begin)) != std::string::npos; begin = nl + 1) {
    lines.push_back(text.substr(begin, nl - begin));
  }
  return lines;
}

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && std::atoi(v) > 0 ? std::atoi(v) : fallback;
}

// Kills per test and the time they may take: PREMOE_CRASH_KILLS (default
// 70: the three tests make 200 kills) and PREMOE_CRASH_SECONDS (default 40).
int Kills() { return EnvInt("PREMOE_CRASH_KILLS", 70); }
std::chrono::seconds TimeCap() { return std::chrono::seconds(EnvInt("PREMOE_CRASH_SECONDS", 40)); }

// Kills the child, waits for it and returns its whole lines.
std::vector<std::string> Kill(Child& child) {
  ::kill(child.pid, SIGKILL);
  int wstatus = 0;
  ::waitpid(child.pid, &wstatus, 0);
  std::vector<std::string> lines = WholeLines(ReadAll(child.out));
  ::close(child.out);
  EXPECT_TRUE(WIFSIGNALED(wstatus) || (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0))
      << "child failed by itself: " << wstatus;
  return lines;
}

// The figures a run reports: lost counts acknowledged changes missing after
// a reopen; dropped counts changes a reopen had shown (committed, though the
// kill came before their acknowledgement) that a later reopen no longer has.
struct Tally {
  int kills = 0;
  int kills_in_compaction = 0;
  int acked = 0;
  int lost = 0;
  int dropped = 0;
};

void RunCrashRounds(const std::string& index) {
  TempDir dir;
  const std::string path = dir.Join("store");
  std::mt19937 rng(20240517);
  std::uniform_int_distribution<int> delay_ms(5, 250);
  struct Live {
    std::uint64_t seq;
    bool acked;  // else committed by a change the kill cut off
  };
  std::map<std::uint64_t, Live> live;  // id -> what it holds
  std::set<std::uint64_t> deleted;     // acknowledged deletes
  const auto start = std::chrono::steady_clock::now();
  Tally tally;
  int helper_snapshot_opens = 0, snapshot_reopens = 0;
  for (int round = 0; round < Kills(); ++round) {
    if (std::chrono::steady_clock::now() - start > TimeCap()) break;
    const std::uint64_t first_seq = static_cast<std::uint64_t>(round) * 1'000'000;
    Child child = Spawn({PREMOE_STORE_CRASH_HELPER, path, std::to_string(first_seq), index});
    ASSERT_GT(child.pid, 0);
    // Wait until it has opened the store (reads "ready <index source>"),
    // then let it run.
    const std::string ready = ReadLine(child.out);
    ASSERT_TRUE(ready.starts_with("ready ")) << "helper failed to start";
    if (ready == "ready snapshot") ++helper_snapshot_opens;
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    const std::vector<std::string> lines = Kill(child);
    ++tally.kills;

    // What was acknowledged, and what was in flight when the kill came.
    constexpr std::uint64_t kNone = ~std::uint64_t{0};
    std::uint64_t put_in_flight = kNone, delete_in_flight = kNone;
    bool compacting = false;
    for (const std::string& line : lines) {
      std::istringstream fields(line);
      std::string op;
      std::uint64_t a = 0, b = 0;
      fields >> op >> a >> b;
      if (op == "p") {
        put_in_flight = a;
      } else if (op == "P") {
        put_in_flight = kNone;
        live[b] = {a, true};
        ++tally.acked;
      } else if (op == "d") {
        delete_in_flight = a;
      } else if (op == "D") {
        delete_in_flight = kNone;
        live.erase(a);
        deleted.insert(a);
        ++tally.acked;
      } else if (op == "c" || op == "C") {
        compacting = op == "c";
      }
    }
    tally.kills_in_compaction += compacting;

    EmbeddedPatternStore::Options options;
    options.path = path;
    options.index = index;
    ASSERT_OK_AND_ASSIGN(auto store, EmbeddedPatternStore::Open(options));
    snapshot_reopens += store->Info()->index_source == "snapshot";
    const absl::Status verified = store->Verify();
    ASSERT_TRUE(verified.ok()) << "round " << round << ": " << verified;
    for (auto it = live.begin(); it != live.end();) {
      const auto [id, held] = *it;
      absl::StatusOr<Pattern> got = store->Get(id);
      if (delete_in_flight == id && absl::IsNotFound(got.status())) {
        ++it;
        continue;
      }
      Pattern want =
          testing::MakePattern("t" + std::to_string(held.seq), held.seq, 16, 1 + held.seq % 4);
      want.id = id;
      if (!got.ok() || !(*got == want)) {
        ADD_FAILURE() << "round " << round << ": pattern " << id
                      << (held.acked ? " (acknowledged)" : " (committed, seen by a reopen)")
                      << " lost or changed: " << got.status();
        ++(held.acked ? tally.lost : tally.dropped);
        it = live.erase(it);
        continue;
      }
      ++it;
    }
    for (std::uint64_t id : deleted) {
      if (!absl::IsNotFound(store->Get(id).status())) {
        ADD_FAILURE() << "round " << round << ": deleted pattern " << id << " is back";
        ++tally.lost;
      }
    }
    // Anything else present is the put that was in flight, and whole.
    std::int64_t extra = 0;
    for (ListRequest req{.page_size = 1000};;) {
      ASSERT_OK_AND_ASSIGN(ListPage page, store->List(req));
      for (const PatternSummary& s : page.patterns) {
        if (live.contains(s.id)) continue;
        ASSERT_TRUE(put_in_flight != kNone && s.task_name == "t" + std::to_string(put_in_flight))
            << "round " << round << ": unacknowledged pattern " << s.task_name << " present";
        ASSERT_EQ(s.num_embeddings, static_cast<std::int32_t>(1 + put_in_flight % 4));
        live[s.id] = {put_in_flight, false};  // it is committed: it must stay from now on
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
      "[ crash ] put/delete, %s index: %d kills (%d during a flush or compaction), %d "
      "acknowledged writes, %d lost, %d silently dropped; %zu live, version %llu; index from a "
      "snapshot in %d of the helper's opens and %d reopens after a kill\n",
      index.c_str(), tally.kills, tally.kills_in_compaction, tally.acked, tally.lost, tally.dropped,
      live.size(), static_cast<unsigned long long>(info.version), helper_snapshot_opens,
      snapshot_reopens);
  EXPECT_EQ(tally.lost, 0);
  EXPECT_EQ(tally.dropped, 0);
  EXPECT_GE(tally.kills, 10);
  EXPECT_GT(tally.kills_in_compaction, 0);
  EXPECT_GT(helper_snapshot_opens, 0);  // the snapshot path ran
  EXPECT_GT(tally.acked, 0);
}

TEST(StoreCrashTest, AcknowledgedChangesSurviveSigkillFlat) { RunCrashRounds("flat"); }
TEST(StoreCrashTest, AcknowledgedChangesSurviveSigkillHnsw) { RunCrashRounds("hnsw"); }

// `premoe patterns import`, the real CLI, killed part-way through an archive
// over and over: every pattern it reported imported is in the store, equal to
// the archive's, and nothing but the archive's patterns is there.
TEST(StoreCrashTest, ImportedPatternsSurviveSigkill) {
  TempDir dir;
  const std::string archive = dir.Join("patterns.pmar");
  const std::string path = dir.Join("store");
  std::map<std::string, Pattern> want;
  {
    ASSERT_OK_AND_ASSIGN(auto writer, PatternArchiveWriter::Create(archive));
    for (int i = 0; i < 300; ++i) {
      Pattern p = testing::MakePattern("i" + std::to_string(i), 5000 + i, 16, 1 + i % 4);
      ASSERT_OK(writer->Add(p));
      want[p.task_name] = p;
    }
    ASSERT_OK(writer->Commit());
  }
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> delay_ms(0, 60);
  std::map<std::string, std::uint64_t> acked;  // task -> id
  const auto start = std::chrono::steady_clock::now();
  Tally tally;
  int finished = 0;
  for (int round = 0; round < Kills() - 10; ++round) {
    if (std::chrono::steady_clock::now() - start > TimeCap()) break;
    Child child = Spawn({PREMOE_CLI, "--log-level", "error", "patterns", "import", "--store", path,
                         "--in", archive});
    ASSERT_GT(child.pid, 0);
    // Its first line comes once the store is open and a pattern is in.
    std::string first = ReadLine(child.out);
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    std::vector<std::string> lines = Kill(child);
    lines.insert(lines.begin(), first);
    if (!lines.empty() && lines.back().starts_with("imported 300 patterns")) {
      ++finished;
    } else {
      ++tally.kills;
    }
    for (const std::string& line : lines) {
      std::istringstream fields(line);
      std::string word, task, as, id_word;
      std::uint64_t id = 0;
      fields >> word >> task >> as >> id_word >> id;
      if (word != "imported" || as != "as") continue;
      ASSERT_TRUE(want.contains(task)) << line;
      ASSERT_TRUE(!acked.contains(task) || acked[task] == id) << "task " << task << " moved";
      acked[task] = id;
      ++tally.acked;
    }
    EmbeddedPatternStore::Options options;
    options.path = path;
    ASSERT_OK_AND_ASSIGN(auto store, EmbeddedPatternStore::Open(options));
    ASSERT_OK(store->Verify());
    for (const auto& [task, id] : acked) {
      absl::StatusOr<Pattern> got = store->GetByTask(task);
      Pattern expect = want[task];
      expect.id = id;
      if (!got.ok() || !(*got == expect)) {
        ADD_FAILURE() << "round " << round << ": imported " << task
                      << " lost or changed: " << got.status();
        ++tally.lost;
      }
    }
    ASSERT_OK_AND_ASSIGN(ListPage page, store->List({.page_size = 1000}));
    for (const PatternSummary& s : page.patterns) {
      ASSERT_TRUE(want.contains(s.task_name)) << s.task_name;
      ASSERT_OK_AND_ASSIGN(Pattern got, store->Get(s.id));
      Pattern expect = want[s.task_name];
      expect.id = s.id;
      ASSERT_EQ(got, expect) << "an unacknowledged import is there but not whole";
    }
  }
  std::printf(
      "[ crash ] patterns import: %d kills, %d acknowledged writes, %d lost, %d silently "
      "dropped; %d imports finished before their kill\n",
      tally.kills, tally.acked, tally.lost, tally.dropped, finished);
  EXPECT_EQ(tally.lost, 0);
  EXPECT_GE(tally.kills, 5);
}

}  // namespace
}  // namespace premoe::store
