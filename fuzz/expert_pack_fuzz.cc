// libFuzzer target: ExpertPack::Open (then Verify and a Read) on arbitrary
// files. A pack is a file a worker is pointed at; whatever its bytes, the
// answer is a status, never a crash, a hang or an out-of-bounds read.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "premoe/checkpoint/expert_pack.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/premoe_expert_pack_fuzz." + std::to_string(::getpid());
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  const bool written = std::fwrite(data, 1, size, f) == size;
  std::fclose(f);
  if (!written) return 0;
  {
    auto pack = premoe::checkpoint::ExpertPack::Open(path);
    if (pack.ok()) {
      (void)(*pack)->Verify();
      const auto& h = (*pack)->header();
      std::vector<uint8_t> gate_up(static_cast<size_t>(h.slot_bytes / 3 * 2));
      std::vector<uint8_t> down(static_cast<size_t>(h.slot_bytes / 3));
      (void)(*pack)->Read(h.layers.front(), 0, gate_up, down);
    }
  }
  ::unlink(path.c_str());
  return 0;
}
