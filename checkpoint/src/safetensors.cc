#include "premoe/checkpoint/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "premoe/common/file.h"
#include "premoe/common/json.h"
#include "premoe/common/status.h"

namespace premoe::checkpoint {
namespace {

using nlohmann::json;

constexpr absl::string_view kIndexSuffix = ".safetensors.index.json";
constexpr DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3,
                                DType::kI8,  DType::kU8,  DType::kI32,  DType::kI64};

// Position of the dtype in the Python library's Dtype enum, which is ordered by
// alignment; its writer sorts by this, descending. Matching it keeps every
// tensor aligned to its element size and our files byte-identical to its files.
int PythonDtypeRank(DType dtype) {
  switch (dtype) {
    case DType::kU8:
      return 0;
    case DType::kI8:
      return 1;
    case DType::kF8E4M3:
      return 2;
    case DType::kF16:
      return 3;
    case DType::kBF16:
      return 4;
    case DType::kI32:
      return 5;
    case DType::kF32:
      return 6;
    case DType::kI64:
      return 7;
  }
  return 0;
}

// Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
// Returns the offset of the first bad byte, or nullopt when `s` is valid.
std::optional<size_t> FindInvalidUtf8(absl::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (n - i < len) return i;
    if (p[i + 1] < lo || p[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return i;
    }
    i += len;
  }
  return std::nullopt;
}

// JSON string body as serde_json (the Python library) writes it: only '"',
// '\\' and control characters are escaped; other UTF-8 passes through.
void AppendJsonEscaped(std::string& out, absl::string_view s) {
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", c);
        } else {
          out += ch;
        }
    }
  }
}

void AppendJsonString(std::string& out, absl::string_view s) {
  out += '"';
  AppendJsonEscaped(out, s);
  out += '"';
}

// A name as it should appear in an error message: quoted, with control
// characters escaped, and hex escapes when it is not even UTF-8.
std::string Quoted(absl::string_view name) {
  if (FindInvalidUtf8(name).has_value()) return absl::StrCat("\"", absl::CHexEscape(name), "\"");
  std::string out;
  AppendJsonString(out, name);
  return out;
}

std::string ShapeString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string SupportedDTypes() {
  std::vector<absl::string_view> names;
  for (DType d : kAllDTypes) names.push_back(DTypeName(d));
  return absl::StrJoin(names, ", ");
}

// Elements in `shape`, or nullopt on overflow. A 0 anywhere makes it 0 even
// if the other dimensions' product would overflow.
std::optional<int64_t> CheckedNumel(std::span<const int64_t> shape) {
  int64_t numel = 1;
  bool overflow = false;
  for (const int64_t d : shape) {
    if (d == 0) return 0;
    if (!overflow && __builtin_mul_overflow(numel, d, &numel)) overflow = true;
  }
  if (overflow) return std::nullopt;
  return numel;
}

std::optional<uint64_t> CheckedByteSize(std::span<const int64_t> shape, DType dtype) {
  const std::optional<int64_t> numel = CheckedNumel(shape);
  if (!numel.has_value()) return std::nullopt;
  int64_t bytes;
  if (__builtin_mul_overflow(*numel, DTypeSize(dtype), &bytes)) return std::nullopt;
  return static_cast<uint64_t>(bytes);
}

// A short description of a JSON value for messages: its value when it is a
// scalar, its type otherwise (an array could be megabytes long).
std::string DescribeJson(const json& v) {
  if (v.is_number() || v.is_boolean() || v.is_null()) return v.dump();
  return absl::StrCat("a JSON ", common::JsonTypeName(v));
}

// `v` as a non-negative integer that fits in int64_t; nullopt otherwise.
// nlohmann stores non-negative literals as unsigned, negative ones as signed,
// and anything with a fraction, an exponent or past 2^64 as a double.
std::optional<int64_t> NonNegativeInt64(const json& v) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<json::number_unsigned_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) {
    const auto i = v.get<json::number_integer_t>();
    if (i < 0) return std::nullopt;
    return i;
  }
  return std::nullopt;
}

template <typename... Args>
absl::Status Invalid(absl::string_view path, const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", args...));
}

absl::Status PosixError(const std::string& path, absl::string_view what) {
  const int err = errno;
  return absl::ErrnoToStatus(err, absl::StrCat(path, ": ", what));
}

// One tensor's header entry, validated on its own.
struct HeaderEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin;
  uint64_t end;
};

absl::StatusOr<HeaderEntry> ParseTensorEntry(absl::string_view path, const std::string& name,
                                             const json& entry, uint64_t data_size) {
  const std::string tensor = absl::StrCat("tensor ", Quoted(name));
  if (!entry.is_object()) {
    return Invalid(path, tensor, ": header entry is ", DescribeJson(entry), ", not an object");
  }
  HeaderEntry out{.name = name};

  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) return Invalid(path, tensor, ": missing \"dtype\"");
  if (!dtype_it->is_string()) {
    return Invalid(path, tensor, ": \"dtype\" is ", DescribeJson(*dtype_it), ", not a string");
  }
  const auto& dtype_name = dtype_it->get_ref<const std::string&>();
  absl::StatusOr<DType> dtype = ParseDType(dtype_name);
  if (!dtype.ok()) return Invalid(path, tensor, ": ", dtype.status().message());
  out.dtype = *dtype;

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) return Invalid(path, tensor, ": missing \"shape\"");
  if (!shape_it->is_array()) {
    return Invalid(path, tensor, ": \"shape\" is ", DescribeJson(*shape_it), ", not an array");
  }
  out.shape.reserve(shape_it->size());
  for (size_t i = 0; i < shape_it->size(); ++i) {
    const json& dim = (*shape_it)[i];
    const std::optional<int64_t> value = NonNegativeInt64(dim);
    if (!value.has_value()) {
      return Invalid(path, tensor, ": shape[", i, "] is ", DescribeJson(dim),
                     ", not a non-negative 64-bit integer");
    }
    out.shape.push_back(*value);
  }

  const auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) return Invalid(path, tensor, ": missing \"data_offsets\"");
  if (!offsets_it->is_array() || offsets_it->size() != 2) {
    return Invalid(path, tensor, ": \"data_offsets\" is ", DescribeJson(*offsets_it),
                   offsets_it->is_array() ? absl::StrCat(" of ", offsets_it->size()) : "",
                   ", not an array of two integers [begin, end]");
  }
  std::optional<int64_t> bounds[2];
  for (int i = 0; i < 2; ++i) {
    bounds[i] = NonNegativeInt64((*offsets_it)[i]);
    if (!bounds[i].has_value()) {
      return Invalid(path, tensor, ": data_offsets[", i, "] is ", DescribeJson((*offsets_it)[i]),
                     ", not a non-negative 64-bit integer");
    }
  }
  out.begin = static_cast<uint64_t>(*bounds[0]);
  out.end = static_cast<uint64_t>(*bounds[1]);
  if (out.begin > out.end) {
    return Invalid(path, tensor, ": data_offsets [", out.begin, ", ", out.end,
                   "] end before they begin");
  }
  if (out.end > data_size) {
    return Invalid(path, tensor, " spans bytes [", out.begin, ", ", out.end,
                   ") of the data section but it has ", data_size);
  }
  const std::optional<uint64_t> expected = CheckedByteSize(out.shape, out.dtype);
  if (!expected.has_value()) {
    return Invalid(path, tensor, ": shape ", ShapeString(out.shape), " of ", dtype_name,
                   " overflows 64-bit byte counts");
  }
  if (out.end - out.begin != *expected) {
    return Invalid(path, tensor, " has dtype ", dtype_name, " and shape ", ShapeString(out.shape),
                   ", which take ", *expected, " bytes, but data_offsets [", out.begin, ", ",
                   out.end, ") span ", out.end - out.begin);
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// DType

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kF8E4M3:
      return "F8_E4M3";
    case DType::kI8:
      return "I8";
    case DType::kU8:
      return "U8";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
  }
  return "?";
}

int64_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF16:
      return 2;
    case DType::kBF16:
      return 2;
    case DType::kF8E4M3:
      return 1;
    case DType::kI8:
      return 1;
    case DType::kU8:
      return 1;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
  }
  return 1;
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  for (DType d : kAllDTypes) {
    if (DTypeName(d) == name) return d;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported dtype ", Quoted(name), " (supported: ", SupportedDTypes(), ")"));
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  return n;
}

absl::Status SafetensorsOptions::Validate() const {
  if (max_header_bytes == 0) {
    return absl::InvalidArgumentError("SafetensorsOptions.max_header_bytes must be positive");
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// SafetensorsFile

absl::StatusOr<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path, const SafetensorsOptions& options) {
  RETURN_IF_ERROR(common::WithContext(options.Validate(), path));
  ASSIGN_OR_RETURN(std::shared_ptr<const common::MappedFile> mapping,
                   common::MappedFile::Open(path));
  // Built in place: views point at names_ and must never see the object move.
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = std::move(mapping);
  RETURN_IF_ERROR(ParseInto(*file, file->mapping_->data(), options));
  return file;
}

absl::StatusOr<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::Parse(
    absl::string_view path, std::span<const uint8_t> bytes, const SafetensorsOptions& options) {
  RETURN_IF_ERROR(common::WithContext(options.Validate(), path));
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = std::string(path);
  RETURN_IF_ERROR(ParseInto(*file, bytes, options));
  return file;
}

absl::Status SafetensorsFile::ParseInto(SafetensorsFile& file, std::span<const uint8_t> bytes,
                                        const SafetensorsOptions& options) {
  const std::string& path = file.path_;
  if (bytes.size() < 8) {
    return Invalid(path, "file is ", bytes.size(),
                   " bytes, shorter than the 8-byte header length that starts a safetensors file");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > options.max_header_bytes) {
    return Invalid(path, "header length ", n, " is over the limit of ", options.max_header_bytes,
                   " bytes (SafetensorsOptions::max_header_bytes); is this a safetensors file?");
  }
  if (n > bytes.size() - 8) {
    return Invalid(path, "header length ", n, " is more than the ", bytes.size() - 8,
                   " bytes that follow it; the file is truncated or not a safetensors file");
  }
  const absl::string_view header(reinterpret_cast<const char*>(bytes.data()) + 8, n);
  if (const std::optional<size_t> bad = FindInvalidUtf8(header); bad.has_value()) {
    return Invalid(path, "header is not valid UTF-8 (byte ", *bad, " of the header)");
  }
  ASSIGN_OR_RETURN(const json root,
                   common::ParseJsonStrict(header, absl::StrCat(path, ": header")));
  if (!root.is_object()) {
    return Invalid(path, "header is ", DescribeJson(root), ", not a JSON object");
  }
  const uint64_t data_size = bytes.size() - 8 - n;

  std::vector<HeaderEntry> entries;
  entries.reserve(root.size());
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) {
        return Invalid(path, "\"__metadata__\" is ", DescribeJson(value),
                       ", not an object of strings");
      }
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) {
          return Invalid(path, "\"__metadata__\" value for key ", Quoted(mkey), " is ",
                         DescribeJson(mvalue), ", not a string");
        }
        file.metadata_.emplace(mkey, mvalue.get_ref<const std::string&>());
      }
      continue;
    }
    ASSIGN_OR_RETURN(HeaderEntry entry, ParseTensorEntry(path, key, value, data_size));
    entries.push_back(std::move(entry));
  }

  // The format requires the tensors to tile the data section: no holes (which
  // could smuggle a second payload, as in polyglot files) and no overlaps
  // (which would let a write through one tensor change another).
  std::sort(entries.begin(), entries.end(), [](const HeaderEntry& a, const HeaderEntry& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  uint64_t cursor = 0;
  const HeaderEntry* previous = nullptr;  // the last non-empty tensor
  for (const HeaderEntry& e : entries) {
    if (e.begin > cursor) {
      return Invalid(path, "bytes [", cursor, ", ", e.begin,
                     ") of the data section belong to no tensor (tensor ", Quoted(e.name),
                     " starts at ", e.begin, "); the format allows no holes");
    }
    if (e.begin < cursor) {
      return Invalid(path, "tensor ", Quoted(e.name), " at bytes [", e.begin, ", ", e.end,
                     ") overlaps tensor ", Quoted(previous->name), " at bytes [", previous->begin,
                     ", ", previous->end, ")");
    }
    if (e.end > e.begin) previous = &e;
    cursor = e.end;
  }
  if (cursor != data_size) {
    return Invalid(path, "bytes [", cursor, ", ", data_size,
                   ") at the end of the data section belong to no tensor; "
                   "the format allows no trailing bytes");
  }

  const uint8_t* data = bytes.data() + 8 + n;
  file.bytes_ = bytes;
  file.data_offset_ = 8 + n;
  file.file_size_ = bytes.size();
  file.names_.reserve(entries.size());
  file.tensors_.reserve(entries.size());
  file.index_.reserve(entries.size());
  for (HeaderEntry& e : entries) {
    file.names_.push_back(std::make_unique<const std::string>(std::move(e.name)));
    const absl::string_view name = *file.names_.back();
    file.index_.emplace(name, file.tensors_.size());
    file.tensors_.push_back(TensorView{.name = name,
                                       .dtype = e.dtype,
                                       .shape = std::move(e.shape),
                                       .bytes = {data + e.begin, e.end - e.begin}});
  }
  return absl::OkStatus();
}

const TensorView* SafetensorsFile::Find(absl::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<TensorView> SafetensorsFile::Get(absl::string_view name) const {
  const TensorView* view = Find(name);
  if (view == nullptr) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor named ", Quoted(name)));
  }
  return *view;
}

void SafetensorsFile::Prefetch(const TensorView& tensor) const {
  if (mapping_ == nullptr || tensor.bytes.empty()) return;
  const uint8_t* begin = mapping_->data().data();
  const uint8_t* p = tensor.bytes.data();
  if (p < begin || p > begin + mapping_->size()) return;  // not ours
  mapping_->Prefetch(static_cast<size_t>(p - begin), tensor.bytes.size());
}

void SafetensorsFile::Release(const TensorView& tensor) const {
  if (mapping_ == nullptr || tensor.bytes.empty()) return;
  const uint8_t* begin = mapping_->data().data();
  const uint8_t* p = tensor.bytes.data();
  if (p < begin || p > begin + mapping_->size()) return;  // not ours
  mapping_->Release(static_cast<size_t>(p - begin), tensor.bytes.size());
}

absl::Status SafetensorsFile::ReadInto(const TensorView& tensor, std::span<uint8_t> dst) const {
  if (dst.size() != tensor.bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": reading \"", tensor.name,
                                                   "\": ", tensor.bytes.size(),
                                                   " bytes into a buffer of ", dst.size()));
  }
  const uint8_t* p = tensor.bytes.data();
  if (p < bytes_.data() || p + tensor.bytes.size() > bytes_.data() + bytes_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": \"", tensor.name, "\" is not a view of this file"));
  }
  if (mapping_ == nullptr) {
    if (!dst.empty()) std::memcpy(dst.data(), p, dst.size());
    return absl::OkStatus();
  }
  return mapping_->ReadAt(static_cast<size_t>(p - bytes_.data()), dst);
}

// ---------------------------------------------------------------------------
// Checkpoint

namespace {

// A shard named in an index must be a plain file name inside the index's
// directory; anything else could make a downloaded checkpoint read
// /etc/passwd or another model's files.
absl::Status CheckShardName(absl::string_view index_path, absl::string_view tensor,
                            absl::string_view shard) {
  if (shard.empty() || shard == "." || shard == ".." ||
      shard.find('/') != absl::string_view::npos || shard.find('\0') != absl::string_view::npos) {
    return Invalid(index_path, "weight_map maps tensor ", Quoted(tensor), " to shard file ",
                   Quoted(shard), ", which is not a plain file name in the index's directory");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<const Checkpoint>> Checkpoint::Open(
    const std::string& path, const SafetensorsOptions& options) {
  namespace fs = std::filesystem;
  RETURN_IF_ERROR(common::WithContext(options.Validate(), path));
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (status.type() == fs::file_type::not_found) {
    return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));
  }
  if (ec) return absl::ErrnoToStatus(ec.value(), absl::StrCat(path, ": stat"));

  std::unique_ptr<Checkpoint> checkpoint(new Checkpoint());
  checkpoint->path_ = path;
  std::string single;  // path of the single file, when not sharded
  if (fs::is_directory(status)) {
    const std::string file = (fs::path(path) / "model.safetensors").string();
    const std::string index = (fs::path(path) / "model.safetensors.index.json").string();
    if (fs::is_regular_file(file, ec)) {
      single = file;
    } else if (fs::is_regular_file(index, ec)) {
      checkpoint->index_path_ = index;
    } else {
      return absl::NotFoundError(absl::StrCat(
          path, ": neither model.safetensors nor model.safetensors.index.json is there"));
    }
  } else if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) {
    checkpoint->index_path_ = path;
  } else {
    single = path;
  }

  if (!single.empty()) {
    ASSIGN_OR_RETURN(std::shared_ptr<const SafetensorsFile> file,
                     SafetensorsFile::Open(single, options));
    RETURN_IF_ERROR(checkpoint->AddShard(std::move(file)));
  } else {
    const std::string& index_path = checkpoint->index_path_;
    ASSIGN_OR_RETURN(const std::string text,
                     common::ReadFile(index_path, options.max_header_bytes));
    ASSIGN_OR_RETURN(const json root, common::ParseJsonStrict(text, index_path));
    if (!root.is_object()) {
      return Invalid(index_path, "index is ", DescribeJson(root), ", not a JSON object");
    }
    if (const auto it = root.find("metadata"); it != root.end() && !it->is_null()) {
      if (!it->is_object()) {
        return Invalid(index_path, "\"metadata\" is ", DescribeJson(*it), ", not an object");
      }
      for (const auto& [key, value] : it->items()) {
        checkpoint->index_metadata_.emplace(
            key, value.is_string() ? value.get<std::string>()
                                   : value.dump(-1, ' ', false, json::error_handler_t::replace));
      }
    }
    const auto map_it = root.find("weight_map");
    if (map_it == root.end()) return Invalid(index_path, "missing \"weight_map\"");
    if (!map_it->is_object()) {
      return Invalid(index_path, "\"weight_map\" is ", DescribeJson(*map_it), ", not an object");
    }
    if (map_it->empty()) return Invalid(index_path, "\"weight_map\" lists no tensors");
    std::map<std::string, std::vector<absl::string_view>> by_shard;  // shard -> its tensors
    for (const auto& [tensor, shard] : map_it->items()) {
      if (!shard.is_string()) {
        return Invalid(index_path, "weight_map entry for tensor ", Quoted(tensor), " is ",
                       DescribeJson(shard), ", not a shard file name");
      }
      const auto& shard_name = shard.get_ref<const std::string&>();
      RETURN_IF_ERROR(CheckShardName(index_path, tensor, shard_name));
      by_shard[shard_name].push_back(tensor);
    }

    const fs::path dir = fs::path(index_path).parent_path();
    std::vector<std::shared_ptr<const SafetensorsFile>> files;   // in shard name order
    std::map<absl::string_view, const SafetensorsFile*> opened;  // shard name -> file
    for (const auto& [shard_name, tensors] : by_shard) {
      const std::string shard_path = (dir / shard_name).string();
      absl::StatusOr<std::shared_ptr<const SafetensorsFile>> shard =
          SafetensorsFile::Open(shard_path, options);
      if (!shard.ok()) {
        return common::WithContext(
            shard.status(),
            absl::StrCat(index_path, ": shard ", Quoted(shard_name), " (for ", tensors.size(),
                         tensors.size() == 1 ? " tensor: " : " tensors, e.g. ", Quoted(tensors[0]),
                         ")"));
      }
      opened.emplace(shard_name, shard->get());
      files.push_back(*std::move(shard));
    }

    // Every mapped tensor must be in its shard, and every tensor in a shard
    // must be mapped to it: otherwise two readers (ours and one trusting the
    // index less) could assemble different models from the same directory.
    for (const auto& [tensor, shard] : map_it->items()) {
      const auto& shard_name = shard.get_ref<const std::string&>();
      if (opened.at(shard_name)->Contains(tensor)) continue;
      std::string hint;
      for (const auto& [other_name, other] : opened) {
        if (other->Contains(tensor)) {
          hint = absl::StrCat(" (it is in shard ", Quoted(other_name), ")");
          break;
        }
      }
      return Invalid(index_path, "weight_map maps tensor ", Quoted(tensor), " to shard ",
                     Quoted(shard_name), ", which does not contain it", hint);
    }
    for (const auto& [shard_name, file] : opened) {
      for (const TensorView& view : file->tensors()) {
        const auto it = map_it->find(view.name);
        if (it == map_it->end()) {
          return Invalid(index_path, "shard ", Quoted(shard_name), " contains tensor ",
                         Quoted(view.name), ", which the weight_map does not list");
        }
        const auto& mapped = it->get_ref<const std::string&>();
        if (mapped != shard_name) {
          return Invalid(index_path, "shard ", Quoted(shard_name), " contains tensor ",
                         Quoted(view.name), ", which the weight_map maps to shard ",
                         Quoted(mapped));
        }
      }
    }
    for (auto& file : files) RETURN_IF_ERROR(checkpoint->AddShard(std::move(file)));
  }

  std::sort(checkpoint->names_.begin(), checkpoint->names_.end());
  return std::unique_ptr<const Checkpoint>(std::move(checkpoint));
}

absl::Status Checkpoint::AddShard(std::shared_ptr<const SafetensorsFile> shard) {
  for (const TensorView& view : shard->tensors()) {
    // Unreachable after the index checks; kept so a future caller cannot
    // silently shadow one tensor with another.
    if (!entries_.emplace(view.name, Entry{&view, shard.get()}).second) {
      return Invalid(shard->path(), "tensor ", Quoted(view.name), " is also in another shard of ",
                     path_);
    }
    names_.push_back(view.name);
    total_bytes_ += view.bytes.size();
  }
  shard_files_.push_back(shard->path());
  shards_.push_back(std::move(shard));
  return absl::OkStatus();
}

const TensorView* Checkpoint::Find(absl::string_view name) const {
  const auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : it->second.view;
}

absl::StatusOr<TensorView> Checkpoint::Get(absl::string_view name) const {
  const TensorView* view = Find(name);
  if (view == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path_, ": no tensor named ", Quoted(name), " in this checkpoint"));
  }
  return *view;
}

const SafetensorsFile* Checkpoint::ShardOf(absl::string_view name) const {
  const auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : it->second.shard;
}

void Checkpoint::Prefetch(absl::string_view name) const {
  const auto it = entries_.find(name);
  if (it != entries_.end()) it->second.shard->Prefetch(*it->second.view);
}

void Checkpoint::Release(absl::string_view name) const {
  const auto it = entries_.find(name);
  if (it != entries_.end()) it->second.shard->Release(*it->second.view);
}

// ---------------------------------------------------------------------------
// SafetensorsWriter

absl::Status ShardOptions::Validate() const {
  if (max_shard_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ShardOptions.max_shard_bytes must be positive, not ", max_shard_bytes));
  }
  if (base_name.empty() || base_name == "." || base_name == ".." ||
      base_name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("ShardOptions.base_name ", Quoted(base_name), " is not a plain file name"));
  }
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Add(absl::string_view name, DType dtype, std::vector<int64_t> shape,
                                    std::span<const uint8_t> bytes) {
  return AddImpl(name, dtype, std::move(shape), bytes, /*copy=*/true);
}

absl::Status SafetensorsWriter::AddUnowned(absl::string_view name, DType dtype,
                                           std::vector<int64_t> shape,
                                           std::span<const uint8_t> bytes) {
  return AddImpl(name, dtype, std::move(shape), bytes, /*copy=*/false);
}

absl::Status SafetensorsWriter::AddUnowned(const TensorView& tensor) {
  return AddImpl(tensor.name, tensor.dtype, tensor.shape, tensor.bytes, /*copy=*/false);
}

absl::Status SafetensorsWriter::AddImpl(absl::string_view name, DType dtype,
                                        std::vector<int64_t> shape, std::span<const uint8_t> bytes,
                                        bool copy) {
  if (FindInvalidUtf8(name).has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor name ", Quoted(name), " is not valid UTF-8"));
  }
  if (name == "__metadata__") {
    return absl::InvalidArgumentError("\"__metadata__\" is reserved and cannot name a tensor");
  }
  const std::string tensor = absl::StrCat("tensor ", Quoted(name));
  for (const int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(tensor, ": shape ", ShapeString(shape), " has a negative dimension"));
    }
  }
  const std::optional<uint64_t> expected = CheckedByteSize(shape, dtype);
  if (!expected.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat(tensor, ": shape ", ShapeString(shape), " overflows 64-bit byte counts"));
  }
  if (bytes.size() != *expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(tensor, ": dtype ", DTypeName(dtype), " and shape ", ShapeString(shape),
                     " take ", *expected, " bytes but ", bytes.size(), " were given"));
  }
  uint64_t total;
  if (__builtin_add_overflow(data_bytes_, *expected, &total)) {
    return absl::InvalidArgumentError(absl::StrCat(tensor, ": total size overflows"));
  }
  if (by_name_.contains(name)) {
    return absl::AlreadyExistsError(absl::StrCat(tensor, " was already added"));
  }
  Tensor t{.name = std::string(name), .dtype = dtype, .shape = std::move(shape)};
  if (copy) {
    t.owned.assign(bytes.begin(), bytes.end());
    t.is_owned = true;
  } else {
    t.unowned = bytes;
  }
  by_name_.emplace(t.name, tensors_.size());
  tensors_.push_back(std::move(t));
  data_bytes_ = total;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::SetMetadata(absl::string_view key, absl::string_view value) {
  if (FindInvalidUtf8(key).has_value() || FindInvalidUtf8(value).has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata entry ", Quoted(key), ": ", Quoted(value), " is not valid UTF-8"));
  }
  metadata_[std::string(key)] = std::string(value);
  return absl::OkStatus();
}

absl::StatusOr<std::string> SafetensorsWriter::Serialize() const {
  std::vector<size_t> all(tensors_.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  ASSIGN_OR_RETURN(std::string prefix, PlanFile(all));
  std::string out = std::move(prefix);
  out.reserve(out.size() + data_bytes_);
  for (const size_t i : SortedForFile(all)) {
    const std::span<const uint8_t> b = tensors_[i].data();
    out.append(reinterpret_cast<const char*>(b.data()), b.size());
  }
  return out;
}

std::vector<size_t> SafetensorsWriter::SortedForFile(std::vector<size_t> indices) const {
  std::sort(indices.begin(), indices.end(), [this](size_t a, size_t b) {
    const Tensor& x = tensors_[a];
    const Tensor& y = tensors_[b];
    const int rx = PythonDtypeRank(x.dtype), ry = PythonDtypeRank(y.dtype);
    if (rx != ry) return rx > ry;
    return x.name < y.name;
  });
  return indices;
}

absl::StatusOr<std::string> SafetensorsWriter::PlanFile(const std::vector<size_t>& indices) const {
  std::string header = "{";
  bool first = true;
  if (!metadata_.empty()) {
    header += "\"__metadata__\":{";
    for (const auto& [key, value] : metadata_) {
      if (!first) header += ',';
      first = false;
      AppendJsonString(header, key);
      header += ':';
      AppendJsonString(header, value);
    }
    header += '}';
  }
  uint64_t offset = 0;
  for (const size_t i : SortedForFile(indices)) {
    const Tensor& t = tensors_[i];
    if (header.size() > 1) header += ',';
    AppendJsonString(header, t.name);
    const uint64_t end = offset + t.data().size();
    absl::StrAppend(&header, ":{\"dtype\":\"", DTypeName(t.dtype), "\",\"shape\":[",
                    absl::StrJoin(t.shape, ","), "],\"data_offsets\":[", offset, ",", end, "]}");
    offset = end;
  }
  header += '}';
  header.resize((header.size() + 7) / 8 * 8, ' ');
  if (header.size() > SafetensorsOptions{}.max_header_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("the header would be ", header.size(),
                                                   " bytes, over the readers' limit of ",
                                                   SafetensorsOptions{}.max_header_bytes));
  }
  std::string prefix(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i, n >>= 8) prefix[i] = static_cast<char>(n & 0xFF);
  return prefix + header;
}

absl::Status SafetensorsWriter::WriteFile(const std::string& path,
                                          const std::vector<size_t>& indices) const {
  ASSIGN_OR_RETURN(const std::string prefix, common::WithContext(PlanFile(indices), path));
  // Streamed rather than through common::WriteFileAtomically, which needs the
  // whole file in one buffer: a reassembled checkpoint can be hundreds of GB.
  ASSIGN_OR_RETURN(auto out, common::AtomicFileWriter::Open(path));
  RETURN_IF_ERROR(out->Append(prefix));
  for (const size_t i : SortedForFile(indices)) RETURN_IF_ERROR(out->Append(tensors_[i].data()));
  return out->Commit();
}

absl::Status SafetensorsWriter::Write(const std::string& path) const {
  std::vector<size_t> all(tensors_.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  return WriteFile(path, all);
}

namespace {

absl::Status RemoveIfPresent(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return PosixError(path, "unlink");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<std::string>> SafetensorsWriter::WriteSharded(
    const std::string& dir, const ShardOptions& options) const {
  RETURN_IF_ERROR(options.Validate());
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a directory"));
  }
  std::vector<size_t> by_name(tensors_.size());
  for (size_t i = 0; i < by_name.size(); ++i) by_name[i] = i;
  std::sort(by_name.begin(), by_name.end(),
            [this](size_t a, size_t b) { return tensors_[a].name < tensors_[b].name; });
  std::vector<std::vector<size_t>> shards(1);
  uint64_t current = 0;
  const auto limit = static_cast<uint64_t>(options.max_shard_bytes);
  for (const size_t i : by_name) {
    const uint64_t size = tensors_[i].data().size();
    // No overflow: both terms are at most data_bytes_, which Add checked.
    if (!shards.back().empty() && current + size > limit) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(i);
    current += size;
  }

  const std::string single = absl::StrCat(dir, "/", options.base_name, ".safetensors");
  const std::string index_path = absl::StrCat(dir, "/", options.base_name, kIndexSuffix);
  if (shards.size() == 1) {
    RETURN_IF_ERROR(WriteFile(single, shards[0]));
    RETURN_IF_ERROR(RemoveIfPresent(index_path));
    return std::vector<std::string>{single};
  }

  std::vector<std::string> written;
  json weight_map = json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string name =
        absl::StrFormat("%s-%05d-of-%05d.safetensors", options.base_name, s + 1, shards.size());
    written.push_back(absl::StrCat(dir, "/", name));
    RETURN_IF_ERROR(WriteFile(written.back(), shards[s]));
    for (const size_t i : shards[s]) weight_map[tensors_[i].name] = name;
  }
  const json index = {{"metadata", {{"total_size", data_bytes_}}}, {"weight_map", weight_map}};
  std::string text;
  try {
    // The layout transformers uses: json.dumps(index, indent=2, sort_keys=True) + "\n".
    text = index.dump(2) + "\n";
  } catch (const json::exception& e) {
    return absl::InternalError(absl::StrCat(index_path, ": cannot encode the index: ", e.what()));
  }
  RETURN_IF_ERROR(common::WriteFileAtomically(index_path, text));
  written.push_back(index_path);
  RETURN_IF_ERROR(RemoveIfPresent(single));
  return written;
}

}  // namespace premoe::checkpoint
