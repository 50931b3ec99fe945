// libFuzzer target for the safetensors reader (model/src/safetensors.cc).
//
// Feeds arbitrary bytes to SafetensorsFile::Parse, the same validation that
// SafetensorsFile::Open runs on a mapped file, so no file I/O is needed.
// Beyond "no crash, no UB, no huge allocation" (the sanitizers' job), it
// checks two properties:
//   - a refusal always explains itself (non-empty message naming the input);
//   - whatever is accepted survives a round trip: writing the parsed tensors
//     and metadata with SafetensorsWriter and parsing the result gives the
//     same names, dtypes, shapes, bytes and metadata.
// Seeds: fuzz/corpus/safetensors/.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>

#include "absl/strings/match.h"
#include "premoe/checkpoint/safetensors.h"

namespace {

using premoe::checkpoint::SafetensorsFile;
using premoe::checkpoint::SafetensorsWriter;
using premoe::checkpoint::TensorView;

// Small enough that a mutated length prefix cannot make one input take
// seconds; large enough for every seed.
constexpr premoe::checkpoint::SafetensorsOptions kOptions{.max_header_bytes = 1 << 20};

void Check(bool condition) {
  if (!condition) std::abort();
}

bool SameTensor(const TensorView& a, const TensorView& b) {
  return a.name == b.name && a.dtype == b.dtype && a.shape == b.shape &&
         a.bytes.size() == b.bytes.size() &&
         std::equal(a.bytes.begin(), a.bytes.end(), b.bytes.begin());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parsed =
      SafetensorsFile::Parse("fuzz-input", std::span<const uint8_t>(data, size), kOptions);
  if (!parsed.ok()) {
    Check(absl::StartsWith(parsed.status().message(), "fuzz-input: "));
    return 0;
  }
  const SafetensorsFile& file = **parsed;

  SafetensorsWriter writer;
  for (const TensorView& tensor : file.tensors()) Check(writer.AddUnowned(tensor).ok());
  for (const auto& [key, value] : file.metadata()) Check(writer.SetMetadata(key, value).ok());
  const auto bytes = writer.Serialize();
  Check(bytes.ok());
  // Default options: the canonical header can be a few bytes longer than the
  // input's (offsets renumbered), so it is not held to kOptions' limit.
  const auto again = SafetensorsFile::Parse(
      "round-trip",
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes->data()), bytes->size()));
  Check(again.ok());
  Check((*again)->metadata() == file.metadata());
  Check((*again)->tensors().size() == file.tensors().size());
  for (const TensorView& tensor : file.tensors()) {
    const TensorView* copy = (*again)->Find(tensor.name);
    Check(copy != nullptr && SameTensor(tensor, *copy));
  }
  return 0;
}
