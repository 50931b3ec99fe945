// Crash-test child: opens the store at argv[1] and, forever, Puts pattern
// "t<seq>" (seq from argv[2] up) and deletes every fifth one it put. Before
// each change it writes "p <seq>" / "d <id>" (intent) and after it is
// acknowledged "P <seq> <id>" / "D <id>" to stdout, unbuffered, so the parent
// knows exactly what was acknowledged when it SIGKILLs this process. It
// snapshots the index every 3 changes, and says how it opened the index
// ("ready snapshot" / "ready rebuilt"), so kills also land around snapshot
// writes and reopens load snapshots. A second thread flushes and compacts the
// store over and over ("c" before, "C" after), so kills also land in
// RocksDB's flushes and compactions.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "premoe/store/embedded_store.h"
#include "tests/store/test_patterns.h"

namespace {

void Say(const std::string& line) {
  const std::string out = line + "\n";
  if (::write(STDOUT_FILENO, out.data(), out.size()) != static_cast<ssize_t>(out.size())) {
    std::_Exit(3);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s STORE_DIR FIRST_SEQ INDEX\n", argv[0]);
    return 2;
  }
  premoe::store::EmbeddedPatternStore::Options options;
  options.path = argv[1];
  options.index = argv[3];
  options.snapshot_every_changes = 3;
  auto store = premoe::store::EmbeddedPatternStore::Open(options);
  if (!store.ok()) {
    std::fprintf(stderr, "open: %s\n", store.status().ToString().c_str());
    return 1;
  }
  Say("ready " + (*store)->Info()->index_source);
  std::thread([&store] {
    for (;;) {
      Say("c");
      if (absl::Status s = (*store)->Compact(); !s.ok()) {
        std::fprintf(stderr, "compact: %s\n", s.ToString().c_str());
        std::_Exit(1);
      }
      Say("C");
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }).detach();
  std::uint64_t last_id = 0;
  for (std::uint64_t seq = std::strtoull(argv[2], nullptr, 10);; ++seq) {
    Say("p " + std::to_string(seq));
    auto put = (*store)->Put(premoe::store::testing::MakePattern(
        "t" + std::to_string(seq), seq, /*dim=*/16, /*embeddings=*/1 + seq % 4));
    if (!put.ok()) {
      std::fprintf(stderr, "put: %s\n", put.status().ToString().c_str());
      std::_Exit(1);
    }
    Say("P " + std::to_string(seq) + " " + std::to_string(put->id));
    if (seq % 5 == 4 && last_id != 0) {
      Say("d " + std::to_string(last_id));
      auto del = (*store)->Delete(last_id);
      if (!del.ok()) {
        std::fprintf(stderr, "delete: %s\n", del.status().ToString().c_str());
        std::_Exit(1);
      }
      Say("D " + std::to_string(last_id));
    }
    last_id = put->id;
  }
}
