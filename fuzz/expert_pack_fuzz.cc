// libFuzzer target: ExpertPack::Open (then Verify and a Read) on arbitrary
// files. A pack is a file a worker is pointed at; whatever its bytes, the
// answer is a status, never a crash, a hang or an out-of-bounds read.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <span>
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
      const auto& layout = (*pack)->layout();
      std::vector<uint8_t> slot(static_cast<size_t>(layout.bytes));
      (void)(*pack)->Read(h.layers.front(), 0,
                          std::span<uint8_t>(slot.data(), layout.gate_up_bytes),
                          std::span<uint8_t>(slot.data() + layout.down_offset, layout.down_bytes));
    }
  }
  ::unlink(path.c_str());
  return 0;
}
