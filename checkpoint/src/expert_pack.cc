#include "premoe/checkpoint/expert_pack.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "premoe/checkpoint/safetensors.h"
#include "premoe/common/file.h"
#include "premoe/common/hash.h"
#include "premoe/common/mapped_file.h"
#include "premoe/common/status.h"

namespace premoe::checkpoint {
namespace {

constexpr char kMagic[] = "PREMOEXP";  // 8 bytes, at both ends of the file
constexpr int64_t kMagicBytes = 8;
constexpr int64_t kAlign = 4096;
// A footer larger than this is not a pack's (a 256-expert, 61-layer model
// needs about 300 KiB).
constexpr uint64_t kMaxFooterBytes = 64ull << 20;

int64_t RoundUp(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

std::vector<int64_t> MoeLayers(const ModelConfig& config) {
  std::vector<int64_t> layers;
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    if (config.IsMoeLayer(l)) layers.push_back(l);
  }
  return layers;
}

}  // namespace

absl::StatusOr<std::string> SourceFingerprint(const Checkpoint& checkpoint) {
  common::Hasher h;
  for (const auto& shard : checkpoint.shards()) {
    // The header: every tensor's name, dtype, shape and offsets.
    ASSIGN_OR_RETURN(auto file, common::MappedFile::Open(shard->path()));
    h.Update(file->data().subspan(0, shard->data_offset()));
  }
  // The routers' bytes: training changes them, so a retrained checkpoint of
  // the same shape is told apart. (gate.weight of a MoE block, not the
  // experts' gate_proj.)
  for (absl::string_view name : checkpoint.names()) {
    if (!absl::EndsWith(name, "gate.weight") || absl::StrContains(name, "experts.")) continue;
    ASSIGN_OR_RETURN(TensorView view, checkpoint.Get(name));
    h.UpdateField(name).Update(view.bytes);
  }
  return h.HexDigest();
}

absl::StatusOr<int64_t> ExpertPackElementBytes(const std::string& dtype) {
  if (dtype == "fp32") return 4;
  if (dtype == "bf16") return 2;
  return absl::InvalidArgumentError(
      absl::StrCat("expert pack dtype must be \"fp32\" or \"bf16\", got \"", dtype, "\""));
}

ExpertPackWriter::ExpertPackWriter(ExpertPackHeader header,
                                   std::unique_ptr<common::AtomicFileWriter> out)
    : header_(std::move(header)), out_(std::move(out)) {
  padding_.assign(static_cast<size_t>(header_.slot_stride - header_.slot_bytes), '\0');
}

ExpertPackWriter::~ExpertPackWriter() = default;

absl::StatusOr<std::unique_ptr<ExpertPackWriter>> ExpertPackWriter::Create(const std::string& path,
                                                                           ExpertPackHeader h) {
  ASSIGN_OR_RETURN(const int64_t element, ExpertPackElementBytes(h.dtype));
  if (h.layers.empty() || h.experts <= 0 || h.hidden <= 0 || h.intermediate <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": an expert pack needs MoE layers with routed experts"));
  }
  h.version = 2;
  ASSIGN_OR_RETURN(const ExpertSlotLayout layout,
                   ExpertSlotLayout::For(h.quant, h.hidden, h.intermediate, element, path));
  h.slot_bytes = layout.bytes;
  h.slot_stride = RoundUp(h.slot_bytes, kAlign);
  h.data_offset = kAlign;
  h.checksums.clear();
  ASSIGN_OR_RETURN(std::unique_ptr<common::AtomicFileWriter> out,
                   common::AtomicFileWriter::Open(path));
  std::string lead(static_cast<size_t>(h.data_offset), '\0');
  std::memcpy(lead.data(), kMagic, kMagicBytes);
  RETURN_IF_ERROR(out->Append(lead));
  return std::unique_ptr<ExpertPackWriter>(new ExpertPackWriter(std::move(h), std::move(out)));
}

absl::Status ExpertPackWriter::Append(std::span<const uint8_t> slot) {
  const int64_t slots = static_cast<int64_t>(header_.layers.size()) * header_.experts;
  if (static_cast<int64_t>(slot.size()) != header_.slot_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("an expert pack slot is ", header_.slot_bytes, " bytes, not ", slot.size()));
  }
  if (static_cast<int64_t>(header_.checksums.size()) == slots) {
    return absl::FailedPreconditionError(
        absl::StrCat("the pack already holds all ", slots, " slots"));
  }
  const absl::string_view bytes(reinterpret_cast<const char*>(slot.data()), slot.size());
  header_.checksums.push_back(common::Hash64(bytes));
  RETURN_IF_ERROR(out_->Append(bytes));
  return out_->Append(padding_);
}

absl::Status ExpertPackWriter::Commit() {
  const ExpertPackHeader& h = header_;
  const int64_t slots = static_cast<int64_t>(h.layers.size()) * h.experts;
  if (static_cast<int64_t>(h.checksums.size()) != slots) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the pack holds ", h.checksums.size(), " of its ", slots, " slots; append the rest first"));
  }
  nlohmann::ordered_json j;
  j["format"] = "premoe-expert-pack";
  j["version"] = h.version;
  j["dtype"] = h.dtype;
  j["quant"] = h.quant.ToString();
  j["quant_layout"] = QuantFormat::kLayoutVersion;
  j["hidden"] = h.hidden;
  j["intermediate"] = h.intermediate;
  j["layers"] = h.layers;
  j["experts"] = h.experts;
  j["slot_bytes"] = h.slot_bytes;
  j["slot_stride"] = h.slot_stride;
  j["data_offset"] = h.data_offset;
  j["source"] = h.source;
  std::vector<std::string> sums;
  for (uint64_t c : h.checksums) sums.push_back(absl::StrFormat("%016x", c));
  j["xxh3_64"] = sums;
  const std::string footer = j.dump();
  std::string tail(8 + kMagicBytes, '\0');
  const uint64_t n = footer.size();
  std::memcpy(tail.data(), &n, 8);  // little-endian hosts only (x86-64, aarch64)
  std::memcpy(tail.data() + 8, kMagic, kMagicBytes);
  RETURN_IF_ERROR(out_->Append(footer));
  RETURN_IF_ERROR(out_->Append(tail));
  return out_->Commit();
}

ExpertPack::ExpertPack(std::string path, std::shared_ptr<const common::MappedFile> file,
                       ExpertPackHeader header, ExpertSlotLayout layout)
    : path_(std::move(path)),
      file_(std::move(file)),
      header_(std::move(header)),
      layout_(std::move(layout)) {}

ExpertPack::~ExpertPack() = default;

absl::StatusOr<std::unique_ptr<const ExpertPack>> ExpertPack::Open(const std::string& path) {
  ASSIGN_OR_RETURN(auto file, common::MappedFile::Open(path));
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a valid expert pack: ", what));
  };
  const std::span<const uint8_t> bytes = file->data();
  const uint64_t size = bytes.size();
  if (size < static_cast<uint64_t>(kAlign) + 8 + kMagicBytes ||
      std::memcmp(bytes.data(), kMagic, kMagicBytes) != 0 ||
      std::memcmp(bytes.data() + size - kMagicBytes, kMagic, kMagicBytes) != 0) {
    return bad("no PREMOEXP magic at both ends (made by premoe repack? truncated?)");
  }
  uint64_t footer_bytes = 0;
  std::memcpy(&footer_bytes, bytes.data() + size - kMagicBytes - 8, 8);
  if (footer_bytes > kMaxFooterBytes || footer_bytes > size - kAlign - 8 - kMagicBytes) {
    return bad(absl::StrCat("footer length ", footer_bytes, " does not fit the file"));
  }
  const uint64_t footer_at = size - kMagicBytes - 8 - footer_bytes;
  const auto j = nlohmann::json::parse(bytes.begin() + static_cast<std::ptrdiff_t>(footer_at),
                                       bytes.begin() + static_cast<std::ptrdiff_t>(size - 16),
                                       nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("the footer is not a JSON object");
  ExpertPackHeader h;
  try {
    if (j.value("format", "") != "premoe-expert-pack") {
      return bad("footer format is not premoe-expert-pack");
    }
    h.version = j.at("version").get<int64_t>();
    if (h.version != 1 && h.version != 2) {
      return bad(absl::StrCat("version ", h.version, " (this premoe reads 1 and 2)"));
    }
    h.dtype = j.at("dtype").get<std::string>();
    if (h.version >= 2) {
      const int64_t quant_layout = j.at("quant_layout").get<int64_t>();
      if (quant_layout != QuantFormat::kLayoutVersion) {
        return bad(absl::StrCat("its quantized layout is version ", quant_layout,
                                "; this premoe reads version ", QuantFormat::kLayoutVersion,
                                " (re-run premoe repack)"));
      }
      absl::StatusOr<QuantFormat> quant = QuantFormat::Parse(j.at("quant").get<std::string>());
      if (!quant.ok()) return bad(quant.status().message());
      h.quant = *quant;
    }
    h.hidden = j.at("hidden").get<int64_t>();
    h.intermediate = j.at("intermediate").get<int64_t>();
    h.layers = j.at("layers").get<std::vector<int64_t>>();
    h.experts = j.at("experts").get<int64_t>();
    h.slot_bytes = j.at("slot_bytes").get<int64_t>();
    h.slot_stride = j.at("slot_stride").get<int64_t>();
    h.data_offset = j.at("data_offset").get<int64_t>();
    h.source = j.at("source").get<std::string>();
    for (const auto& s : j.at("xxh3_64")) {
      const std::string hex = s.get<std::string>();
      uint64_t v = 0;
      if (hex.size() != 16 || !absl::SimpleHexAtoi(hex, &v)) {
        return bad("a checksum is not 16 hex digits");
      }
      h.checksums.push_back(v);
    }
  } catch (const std::exception& e) {
    return bad(absl::StrCat("footer: ", e.what()));
  }
  const absl::StatusOr<int64_t> element = ExpertPackElementBytes(h.dtype);
  if (!element.ok()) return bad(element.status().message());
  if (h.hidden <= 0 || h.intermediate <= 0 || h.experts <= 0 || h.layers.empty() ||
      h.hidden > (1 << 20) || h.intermediate > (1 << 20) || h.experts > (1 << 20) ||
      !std::is_sorted(h.layers.begin(), h.layers.end()) || h.layers.front() < 0 ||
      std::adjacent_find(h.layers.begin(), h.layers.end()) != h.layers.end()) {
    return bad("implausible shape");
  }
  const absl::StatusOr<ExpertSlotLayout> layout =
      ExpertSlotLayout::For(h.quant, h.hidden, h.intermediate, *element, path);
  if (!layout.ok()) return bad(layout.status().message());
  const int64_t slots = static_cast<int64_t>(h.layers.size()) * h.experts;
  if (h.slot_bytes != layout->bytes || h.slot_stride < h.slot_bytes ||
      h.slot_stride % kAlign != 0 || h.data_offset != kAlign ||
      static_cast<int64_t>(h.checksums.size()) != slots) {
    return bad("slot sizes or checksum count disagree with the shape");
  }
  uint64_t slot_area = 0;
  if (static_cast<uint64_t>(h.slot_stride) > size ||
      __builtin_mul_overflow(static_cast<uint64_t>(slots), static_cast<uint64_t>(h.slot_stride),
                             &slot_area) ||
      static_cast<uint64_t>(h.data_offset) + slot_area != footer_at) {
    return bad(absl::StrCat("the file holds ", footer_at - h.data_offset, " bytes of slots, not ",
                            slots, " slots of ", h.slot_stride, " bytes"));
  }
  return std::unique_ptr<const ExpertPack>(
      new ExpertPack(path, std::move(file), std::move(h), *layout));
}

absl::Status ExpertPack::CheckFits(const Checkpoint& checkpoint, const ModelConfig& config,
                                   const std::string& dtype, const QuantFormat& quant) const {
  auto differs = [&](absl::string_view what) {
    return absl::FailedPreconditionError(absl::StrCat(
        path_, ": this expert pack does not fit the model: ", what, "; re-run premoe repack"));
  };
  if (header_.quant.ToString() != quant.ToString()) {
    return differs(absl::StrCat("it holds experts as ", header_.quant.ToString(),
                                " (layout version ", QuantFormat::kLayoutVersion,
                                "), the engine holds them as ", quant.ToString()));
  }
  // Quantized slots are made from fp32 whatever the compute dtype, so they
  // serve either; dense ones hold that dtype's elements.
  if (!quant.quantized() && header_.dtype != dtype) {
    return differs(
        absl::StrCat("it holds ", header_.dtype, " experts, the engine computes in ", dtype));
  }
  if (header_.hidden != config.hidden_size ||
      header_.intermediate != config.moe_intermediate_size ||
      header_.experts != config.num_routed_experts || header_.layers != MoeLayers(config)) {
    return differs("its shape (hidden, expert size, experts, MoE layers) is another model's");
  }
  ASSIGN_OR_RETURN(const std::string source, SourceFingerprint(checkpoint));
  if (source != header_.source) {
    return differs("the checkpoint has changed since the pack was made (source fingerprint " +
                   source + ", pack made from " + header_.source + ")");
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> ExpertPack::SlotIndex(int64_t layer, int64_t expert) const {
  const auto it = std::lower_bound(header_.layers.begin(), header_.layers.end(), layer);
  if (it == header_.layers.end() || *it != layer) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": layer ", layer, " is not a MoE layer of this pack"));
  }
  if (expert < 0 || expert >= header_.experts) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": expert ", expert, " is outside [0, ", header_.experts, ")"));
  }
  return (it - header_.layers.begin()) * header_.experts + expert;
}

absl::Status ExpertPack::Read(int64_t layer, int64_t expert, std::span<uint8_t> gate_up,
                              std::span<uint8_t> down) const {
  ASSIGN_OR_RETURN(const int64_t slot, SlotIndex(layer, expert));
  if (static_cast<int64_t>(gate_up.size()) != layout_.gate_up_bytes ||
      static_cast<int64_t>(down.size()) != layout_.down_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": an expert's gate_up and down are ", layout_.gate_up_bytes, " and ",
                     layout_.down_bytes, " bytes, not ", gate_up.size(), " and ", down.size()));
  }
  const uint64_t at = static_cast<uint64_t>(header_.data_offset) +
                      static_cast<uint64_t>(slot) * static_cast<uint64_t>(header_.slot_stride);
  RETURN_IF_ERROR(file_->ReadAt(at, gate_up));
  return file_->ReadAt(at + layout_.down_offset, down);
}

absl::Status ExpertPack::ReadSlot(int64_t layer, int64_t expert, std::span<uint8_t> slot) const {
  ASSIGN_OR_RETURN(const int64_t index, SlotIndex(layer, expert));
  if (static_cast<int64_t>(slot.size()) != layout_.bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": an expert's slot is ", layout_.bytes, " bytes, not ", slot.size()));
  }
  return file_->ReadAt(
      static_cast<uint64_t>(header_.data_offset) +
          static_cast<uint64_t>(index) * static_cast<uint64_t>(header_.slot_stride),
      slot);
}

absl::Status ExpertPack::Verify(const std::function<void(int64_t, int64_t)>& on_progress) const {
  const int64_t slots = static_cast<int64_t>(header_.checksums.size());
  std::string buffer(static_cast<size_t>(header_.slot_bytes), '\0');
  std::span<uint8_t> span(reinterpret_cast<uint8_t*>(buffer.data()), buffer.size());
  for (int64_t s = 0; s < slots; ++s) {
    RETURN_IF_ERROR(file_->ReadAt(
        static_cast<uint64_t>(header_.data_offset) + static_cast<uint64_t>(s * header_.slot_stride),
        span));
    if (common::Hash64(buffer) != header_.checksums[static_cast<size_t>(s)]) {
      return absl::DataLossError(
          absl::StrCat(path_, ": expert ", s % header_.experts, " of layer ",
                       header_.layers[static_cast<size_t>(s / header_.experts)],
                       " does not match its checksum: the pack is corrupt; re-run premoe repack"));
    }
    if (on_progress) on_progress(s + 1, slots);
  }
  return absl::OkStatus();
}

}  // namespace premoe::checkpoint
