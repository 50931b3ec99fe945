#include "premoe/checkpoint/safetensors.h"

#include <bit>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "premoe/common/json.h"
#include "tests/testutil/testutil.h"

namespace premoe::checkpoint {
namespace {

using ::premoe::testing::ReadFileOrDie;
using ::premoe::testing::RunPython;
using ::premoe::testing::StatusIs;
using ::premoe::testing::TempDir;
using ::premoe::testing::WriteStringToFile;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

static_assert(std::endian::native == std::endian::little, "expected bytes assume little-endian");

constexpr char kScript[] = "tests/testutil/make_safetensors.py";

// Little-endian bytes of `values`, computed here rather than by the code under test.
template <typename T>
std::vector<uint8_t> LE(std::initializer_list<T> values) {
  std::vector<uint8_t> out(values.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), std::data(values), out.size());
  return out;
}
template <typename T>
std::vector<uint8_t> LE(const std::vector<T>& values) {
  std::vector<uint8_t> out(values.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

std::vector<uint8_t> Bytes(std::span<const uint8_t> s) { return {s.begin(), s.end()}; }
std::span<const uint8_t> Span(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// bf16 of a float that bf16 represents exactly: the float's top 16 bits.
uint16_t ExactBf16(float f) { return static_cast<uint16_t>(std::bit_cast<uint32_t>(f) >> 16); }

// A safetensors file put together by hand: the 8-byte length, `header`, `data`.
std::string Raw(const std::string& header, const std::string& data = "") {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i, n >>= 8) out[i] = static_cast<char>(n & 0xFF);
  return out + header + data;
}

// What one tensor of a reference file must hold.
struct Expected {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

std::map<std::string, Expected> AllDTypesExpected() {
  return {
      {"f32", {DType::kF32, {2, 3}, LE<float>({0.0f, 1.5f, -2.0f, 3.25f, 1024.0f, -0.125f})}},
      {"f16", {DType::kF16, {4}, LE<uint16_t>({0x3C00, 0xC000, 0x3800, 0x7BFF})}},
      {"bf16", {DType::kBF16, {2, 2}, LE<uint16_t>({0x3F80, 0xC000, 0x3F00, 0x4040})}},
      // E4M3 "fn": bias 7, no infinities; 448 = 1.75 * 2^8 is the largest finite.
      {"f8_e4m3", {DType::kF8E4M3, {4}, {0x38, 0xC0, 0x30, 0x7E}}},
      {"i8", {DType::kI8, {3}, LE<int8_t>({-128, 0, 127})}},
      {"u8", {DType::kU8, {2, 2}, {0, 1, 254, 255}}},
      {"i32",
       {DType::kI32,
        {3},
        LE<int32_t>(
            {std::numeric_limits<int32_t>::min(), 7, std::numeric_limits<int32_t>::max()})}},
      {"i64",
       {DType::kI64, {2}, LE<int64_t>({std::numeric_limits<int64_t>::min(), 1234567890123})}},
      {"scalar", {DType::kF32, {}, LE<float>({42.5f})}},
      {"empty", {DType::kF32, {0}, {}}},
      {"empty_2d", {DType::kI64, {2, 0}, {}}},
      {"empty_bf16", {DType::kBF16, {0, 3}, {}}},
  };
}

void ExpectTensor(const TensorView& view, const Expected& want) {
  SCOPED_TRACE(std::string(view.name));
  EXPECT_EQ(view.dtype, want.dtype) << DTypeName(view.dtype);
  EXPECT_EQ(view.shape, want.shape);
  EXPECT_EQ(Bytes(view.bytes), want.bytes);
  int64_t numel = 1;
  for (int64_t d : want.shape) numel *= d;
  EXPECT_EQ(view.numel(), numel);
}

// Builds a writer holding every AllDTypesExpected() tensor.
SafetensorsWriter AllDTypesWriter() {
  SafetensorsWriter writer;
  for (const auto& [name, want] : AllDTypesExpected()) {
    EXPECT_OK(writer.Add(name, want.dtype, want.shape, want.bytes));
  }
  return writer;
}

// The JSON printed by `make_safetensors.py dump`.
nlohmann::json PythonDump(const std::string& path) {
  absl::StatusOr<std::string> out = RunPython(kScript, {"dump", path});
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return {};
  absl::StatusOr<nlohmann::json> parsed = common::ParseJsonStrict(*out, "dump output");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *parsed : nlohmann::json();
}

void ExpectPythonSees(const nlohmann::json& dump, const std::map<std::string, Expected>& want) {
  ASSERT_TRUE(dump.contains("tensors"));
  ASSERT_EQ(dump["tensors"].size(), want.size());
  for (const auto& [name, w] : want) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(dump["tensors"].contains(name));
    const nlohmann::json& t = dump["tensors"][name];
    EXPECT_EQ(t["dtype"].get<std::string>(), DTypeName(w.dtype));
    EXPECT_EQ(t["shape"].get<std::vector<int64_t>>(), w.shape);
    const std::string raw(w.bytes.begin(), w.bytes.end());
    EXPECT_EQ(t["hex"].get<std::string>(), absl::BytesToHexString(raw));
  }
}

// ---------------------------------------------------------------------------
// DType

TEST(SafetensorsDTypeTest, NamesSizesAndParsingAgree) {
  const std::vector<std::pair<DType, int64_t>> all = {
      {DType::kF32, 4}, {DType::kF16, 2}, {DType::kBF16, 2}, {DType::kF8E4M3, 1},
      {DType::kI8, 1},  {DType::kU8, 1},  {DType::kI32, 4},  {DType::kI64, 8}};
  for (const auto& [dtype, size] : all) {
    EXPECT_EQ(DTypeSize(dtype), size) << DTypeName(dtype);
    ASSERT_OK_AND_ASSIGN(DType parsed, ParseDType(DTypeName(dtype)));
    EXPECT_EQ(parsed, dtype);
  }
  EXPECT_EQ(DTypeName(DType::kF8E4M3), "F8_E4M3");
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
}

TEST(SafetensorsDTypeTest, UnsupportedDTypesAreNamedWithTheSupportedList) {
  for (const char* name : {"F64", "BOOL", "f32", "F8_E5M2", ""}) {
    EXPECT_THAT(
        ParseDType(name),
        StatusIs(absl::StatusCode::kInvalidArgument,
                 absl::StrCat("unsupported dtype \"", name,
                              "\" (supported: F32, F16, BF16, F8_E4M3, I8, U8, I32, I64)")));
  }
}

// ---------------------------------------------------------------------------
// Files written by the Python library

class SafetensorsPythonReferenceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    absl::StatusOr<std::string> out = RunPython(kScript, {"reference", dir_->path()});
    ASSERT_TRUE(out.ok()) << out.status();
    absl::StatusOr<nlohmann::json> parsed = common::ParseJsonStrict(*out, "reference output");
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    weight_map_ = new nlohmann::json((*parsed)["weight_map"]);
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete weight_map_;
  }
  static TempDir* dir_;
  static nlohmann::json* weight_map_;
};
TempDir* SafetensorsPythonReferenceTest::dir_ = nullptr;
nlohmann::json* SafetensorsPythonReferenceTest::weight_map_ = nullptr;

TEST_F(SafetensorsPythonReferenceTest, ReadsEveryDTypeScalarAndEmptyTensorsWithExactBytes) {
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(dir_->Join("all_dtypes.safetensors")));
  const auto want = AllDTypesExpected();
  ASSERT_EQ(file->tensors().size(), want.size());
  for (const auto& [name, w] : want) {
    ASSERT_OK_AND_ASSIGN(TensorView view, file->Get(name));
    EXPECT_EQ(view.name, name);
    ExpectTensor(view, w);
  }
  EXPECT_EQ(file->metadata(), (std::map<std::string, std::string>{
                                  {"format", "pt"}, {"source", "make_safetensors.py"}}));
}

TEST_F(SafetensorsPythonReferenceTest, ListsTensorsInDataOrderAndTheyAreAligned) {
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(dir_->Join("all_dtypes.safetensors")));
  std::vector<std::string> names;
  for (const TensorView& t : file->tensors()) names.emplace_back(t.name);
  // The library sorts by decreasing dtype alignment, then name.
  EXPECT_THAT(names, ElementsAre("empty_2d", "i64", "empty", "f32", "scalar", "i32", "bf16",
                                 "empty_bf16", "f16", "f8_e4m3", "i8", "u8"));
  EXPECT_EQ(file->data_offset() % 8, 0u);
  for (const TensorView& t : file->tensors()) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.bytes.data()) % DTypeSize(t.dtype), 0u) << t.name;
  }
  uint64_t sum = 0;
  for (const TensorView& t : file->tensors()) sum += t.bytes.size();
  EXPECT_EQ(file->data_bytes(), sum);
  EXPECT_EQ(file->file_size(), std::filesystem::file_size(dir_->Join("all_dtypes.safetensors")));
}

TEST_F(SafetensorsPythonReferenceTest, ReadsTheNumpyBackendsFile) {
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(dir_->Join("numpy.safetensors")));
  std::vector<float> a(6);
  for (int i = 0; i < 6; ++i) a[i] = static_cast<float>(i) * 0.25f;
  const std::map<std::string, Expected> want = {
      {"a.f32", {DType::kF32, {2, 3}, LE(a)}},
      {"b.f16", {DType::kF16, {3}, LE<uint16_t>({0x3C00, 0xC000, 0x3800})}},
      {"c.i8", {DType::kI8, {2}, LE<int8_t>({-1, 2})}},
      {"d.u8", {DType::kU8, {1}, {7}}},
      {"e.i32", {DType::kI32, {2, 1}, LE<int32_t>({-5, 6})}},
      {"f.i64", {DType::kI64, {}, LE<int64_t>({-3})}},
  };
  ASSERT_EQ(file->tensors().size(), want.size());
  for (const auto& [name, w] : want) {
    ASSERT_OK_AND_ASSIGN(TensorView view, file->Get(name));
    ExpectTensor(view, w);
  }
  EXPECT_THAT(file->metadata(), IsEmpty());
}

std::map<std::string, Expected> ShardedExpected() {
  std::vector<float> embed(32), lm_head(32), gate(8);
  std::vector<uint16_t> w0(16), w1(16);
  for (int i = 0; i < 32; ++i) {
    embed[i] = static_cast<float>(i) * 0.5f;
    lm_head[i] = static_cast<float>(i) * -0.25f;
  }
  for (int i = 0; i < 8; ++i) gate[i] = static_cast<float>(i) - 4.0f;
  for (int i = 0; i < 16; ++i) {
    w0[i] = ExactBf16(static_cast<float>(i));
    w1[i] = ExactBf16(-static_cast<float>(i));
  }
  return {
      {"model.embed_tokens.weight", {DType::kF32, {8, 4}, LE(embed)}},
      {"model.layers.0.mlp.gate.weight", {DType::kF32, {2, 4}, LE(gate)}},
      {"model.layers.0.mlp.experts.0.w1", {DType::kBF16, {4, 4}, LE(w0)}},
      {"model.layers.1.mlp.experts.0.w1", {DType::kBF16, {4, 4}, LE(w1)}},
      {"model.norm.weight", {DType::kF32, {4}, LE<float>({1, 1, 1, 1})}},
      {"lm_head.weight", {DType::kF32, {8, 4}, LE(lm_head)}},
  };
}

TEST_F(SafetensorsPythonReferenceTest, ReadsAShardedCheckpointThroughItsIndex) {
  const std::string dir = dir_->Join("sharded");
  ASSERT_OK_AND_ASSIGN(auto checkpoint, Checkpoint::Open(dir));
  EXPECT_TRUE(checkpoint->sharded());
  EXPECT_EQ(checkpoint->index_path(), dir + "/model.safetensors.index.json");
  EXPECT_THAT(checkpoint->shard_files(), ElementsAre(dir + "/model-00001-of-00002.safetensors",
                                                     dir + "/model-00002-of-00002.safetensors"));
  EXPECT_THAT(checkpoint->names(),
              ElementsAre("lm_head.weight", "model.embed_tokens.weight",
                          "model.layers.0.mlp.experts.0.w1", "model.layers.0.mlp.gate.weight",
                          "model.layers.1.mlp.experts.0.w1", "model.norm.weight"));
  uint64_t total = 0;
  for (const auto& [name, want] : ShardedExpected()) {
    ASSERT_TRUE(checkpoint->Contains(name)) << name;
    ASSERT_OK_AND_ASSIGN(TensorView view, checkpoint->Get(name));
    ExpectTensor(view, want);
    total += want.bytes.size();
    const SafetensorsFile* shard = checkpoint->ShardOf(name);
    ASSERT_NE(shard, nullptr);
    EXPECT_EQ(shard->path(), dir + "/" + (*weight_map_)[name].get<std::string>());
  }
  EXPECT_EQ(checkpoint->total_bytes(), total);
  EXPECT_EQ(checkpoint->index_metadata().at("total_size"), absl::StrCat(total));
  checkpoint->Prefetch("lm_head.weight");  // best effort; must not fail
}

TEST_F(SafetensorsPythonReferenceTest, CheckpointAcceptsTheIndexPathAndASingleFilePath) {
  ASSERT_OK_AND_ASSIGN(auto by_index,
                       Checkpoint::Open(dir_->Join("sharded/model.safetensors.index.json")));
  EXPECT_EQ(by_index->names().size(), 6u);
  ASSERT_OK_AND_ASSIGN(auto single, Checkpoint::Open(dir_->Join("all_dtypes.safetensors")));
  EXPECT_FALSE(single->sharded());
  EXPECT_THAT(single->shard_files(), ElementsAre(dir_->Join("all_dtypes.safetensors")));
  EXPECT_EQ(single->names().size(), AllDTypesExpected().size());
  ASSERT_OK_AND_ASSIGN(TensorView i32, single->Get("i32"));
  ExpectTensor(i32, AllDTypesExpected().at("i32"));
}

// ---------------------------------------------------------------------------
// The writer, checked against the reader and against the Python library

TEST(SafetensorsWriterTest, RoundTripsThroughTheReader) {
  TempDir tmp;
  SafetensorsWriter writer = AllDTypesWriter();
  ASSERT_OK(writer.SetMetadata("format", "pt"));
  ASSERT_OK(writer.SetMetadata("note", "quote \" backslash \\ newline \n unicode \xc3\xa9"));
  const std::string path = tmp.Join("out.safetensors");
  ASSERT_OK(writer.Write(path));

  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(path));
  for (const auto& [name, want] : AllDTypesExpected()) {
    ASSERT_OK_AND_ASSIGN(TensorView view, file->Get(name));
    ExpectTensor(view, want);
  }
  EXPECT_EQ(file->metadata().at("note"), "quote \" backslash \\ newline \n unicode \xc3\xa9");
  EXPECT_EQ(file->data_bytes(), writer.data_bytes());
  // No temporary file is left behind.
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(tmp.path())) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1);
}

TEST(SafetensorsWriterTest, SerializeMatchesWrite) {
  TempDir tmp;
  SafetensorsWriter writer = AllDTypesWriter();
  ASSERT_OK_AND_ASSIGN(std::string bytes, writer.Serialize());
  ASSERT_OK(writer.Write(tmp.Join("a.safetensors")));
  EXPECT_EQ(bytes, ReadFileOrDie(tmp.Join("a.safetensors")));
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Parse("mem", Span(bytes)));
  EXPECT_EQ(file->data_offset() % 8, 0u);  // the header is padded with spaces
  EXPECT_EQ(bytes[file->data_offset() - 1], ' ');
  EXPECT_EQ(file->data_offset() + file->data_bytes(), bytes.size());
}

TEST(SafetensorsWriterTest, PythonLibraryReadsOurFiles) {
  TempDir tmp;
  SafetensorsWriter writer = AllDTypesWriter();
  ASSERT_OK(writer.SetMetadata("format", "pt"));
  ASSERT_OK(writer.SetMetadata("unicode", "\xc3\xa9\xe2\x82\xac \t tab"));
  const std::string path = tmp.Join("ours.safetensors");
  ASSERT_OK(writer.Write(path));
  const nlohmann::json dump = PythonDump(path);
  ExpectPythonSees(dump, AllDTypesExpected());
  EXPECT_EQ(dump["metadata"]["format"], "pt");
  EXPECT_EQ(dump["metadata"]["unicode"], "\xc3\xa9\xe2\x82\xac \t tab");
}

TEST(SafetensorsWriterTest, BytesEqualThePythonLibrarysForTheSameTensors) {
  TempDir tmp;
  SafetensorsWriter writer = AllDTypesWriter();
  ASSERT_OK(writer.SetMetadata("format", "pt"));  // one key: Python's map order is then fixed
  const std::string ours = tmp.Join("ours.safetensors");
  const std::string theirs = tmp.Join("theirs.safetensors");
  ASSERT_OK(writer.Write(ours));
  ASSERT_OK(RunPython(kScript, {"resave", ours, theirs}).status());
  EXPECT_EQ(ReadFileOrDie(ours), ReadFileOrDie(theirs));
}

TEST(SafetensorsWriterTest, WritesAnEmptyFile) {
  SafetensorsWriter writer;
  ASSERT_OK_AND_ASSIGN(std::string bytes, writer.Serialize());
  EXPECT_EQ(bytes, Raw("{}      "));
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Parse("empty", Span(bytes)));
  EXPECT_THAT(file->tensors(), IsEmpty());
}

TEST(SafetensorsWriterTest, AddUnownedReferencesTheCallersBytes) {
  std::vector<uint8_t> data = LE<float>({1.0f, 2.0f});
  SafetensorsWriter writer;
  ASSERT_OK(writer.AddUnowned("w", DType::kF32, {2}, data));
  data[0] = 0xAA;  // a view, not a copy: the change shows in the output
  ASSERT_OK_AND_ASSIGN(std::string bytes, writer.Serialize());
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Parse("mem", Span(bytes)));
  EXPECT_EQ(Bytes(file->Find("w")->bytes), data);

  // Copying a view out of one file into a new one.
  SafetensorsWriter copy;
  ASSERT_OK(copy.AddUnowned(*file->Find("w")));
  ASSERT_OK_AND_ASSIGN(std::string again, copy.Serialize());
  EXPECT_EQ(again, bytes);
}

TEST(SafetensorsWriterTest, RefusesInconsistentTensors) {
  SafetensorsWriter writer;
  const std::vector<uint8_t> eight(8);
  EXPECT_THAT(writer.Add("w", DType::kF32, {3}, eight),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "tensor \"w\": dtype F32 and shape [3] take 12 bytes but 8 were given"));
  EXPECT_THAT(writer.Add("w", DType::kF32, {-1, 2}, eight),
              StatusIs(absl::StatusCode::kInvalidArgument, "negative dimension"));
  EXPECT_THAT(writer.Add("w", DType::kU8, {int64_t{1} << 40, int64_t{1} << 40}, eight),
              StatusIs(absl::StatusCode::kInvalidArgument, "overflows"));
  EXPECT_THAT(writer.Add("__metadata__", DType::kU8, {8}, eight),
              StatusIs(absl::StatusCode::kInvalidArgument, "reserved"));
  EXPECT_THAT(writer.Add("bad\xff", DType::kU8, {8}, eight),
              StatusIs(absl::StatusCode::kInvalidArgument, "not valid UTF-8"));
  ASSERT_OK(writer.Add("w", DType::kF32, {2}, eight));
  EXPECT_THAT(writer.Add("w", DType::kF32, {2}, eight),
              StatusIs(absl::StatusCode::kAlreadyExists, "tensor \"w\" was already added"));
  EXPECT_THAT(writer.SetMetadata("k", "\xc3"),
              StatusIs(absl::StatusCode::kInvalidArgument, "not valid UTF-8"));
  EXPECT_EQ(writer.num_tensors(), 1u);
}

TEST(SafetensorsWriterTest, WriteShardedSplitsByBytesAndBothReadersAgree) {
  TempDir tmp;
  SafetensorsWriter writer;
  const auto want = ShardedExpected();
  for (const auto& [name, w] : want) ASSERT_OK(writer.Add(name, w.dtype, w.shape, w.bytes));
  ASSERT_OK(writer.SetMetadata("format", "pt"));
  // Name order: lm_head (128), embed (128) | experts.0 L0 (32), gate (32), experts.0 L1 (32),
  // norm (16): greedy with a 256-byte limit gives two shards.
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> written,
                       writer.WriteSharded(tmp.path(), {.max_shard_bytes = 256}));
  EXPECT_THAT(written, ElementsAre(tmp.Join("model-00001-of-00002.safetensors"),
                                   tmp.Join("model-00002-of-00002.safetensors"),
                                   tmp.Join("model.safetensors.index.json")));
  ASSERT_OK_AND_ASSIGN(auto checkpoint, Checkpoint::Open(tmp.path()));
  EXPECT_TRUE(checkpoint->sharded());
  for (const auto& [name, w] : want) {
    ASSERT_OK_AND_ASSIGN(TensorView view, checkpoint->Get(name));
    ExpectTensor(view, w);
  }
  EXPECT_EQ(checkpoint->ShardOf("model.embed_tokens.weight")->path(), written[0]);
  EXPECT_EQ(checkpoint->ShardOf("model.norm.weight")->path(), written[1]);
  EXPECT_EQ(checkpoint->index_metadata().at("total_size"), "368");
  EXPECT_EQ(checkpoint->shards()[1]->metadata().at("format"), "pt");

  const nlohmann::json dump = PythonDump(tmp.path());
  ExpectPythonSees(dump, want);
}

TEST(SafetensorsWriterTest, WriteShardedGivesEveryOversizedTensorItsOwnShard) {
  TempDir tmp;
  SafetensorsWriter writer;
  const std::vector<uint8_t> big(100), small(10);
  ASSERT_OK(writer.Add("a", DType::kU8, {100}, big));
  ASSERT_OK(writer.Add("b", DType::kU8, {10}, small));
  ASSERT_OK(writer.Add("c", DType::kU8, {100}, big));
  ASSERT_OK_AND_ASSIGN(auto written, writer.WriteSharded(tmp.path(), {.max_shard_bytes = 50}));
  ASSERT_EQ(written.size(), 4u);  // a | b | c | index
  ASSERT_OK_AND_ASSIGN(auto checkpoint, Checkpoint::Open(tmp.path()));
  EXPECT_EQ(checkpoint->shard_files().size(), 3u);
  EXPECT_EQ(checkpoint->ShardOf("b")->path(), tmp.Join("model-00002-of-00003.safetensors"));
}

TEST(SafetensorsWriterTest, WriteShardedWithOneShardWritesASingleFileAndDropsAStaleIndex) {
  TempDir tmp;
  SafetensorsWriter sharded;
  const std::vector<uint8_t> data(64);
  ASSERT_OK(sharded.Add("a", DType::kU8, {64}, data));
  ASSERT_OK(sharded.Add("b", DType::kU8, {64}, data));
  ASSERT_OK(sharded.WriteSharded(tmp.path(), {.max_shard_bytes = 64}).status());
  ASSERT_TRUE(std::filesystem::exists(tmp.Join("model.safetensors.index.json")));

  SafetensorsWriter single;
  ASSERT_OK(single.Add("c", DType::kU8, {64}, data));
  ASSERT_OK_AND_ASSIGN(auto written, single.WriteSharded(tmp.path(), {.max_shard_bytes = 1000}));
  EXPECT_THAT(written, ElementsAre(tmp.Join("model.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(tmp.Join("model.safetensors.index.json")));
  ASSERT_OK_AND_ASSIGN(auto checkpoint, Checkpoint::Open(tmp.path()));
  EXPECT_THAT(checkpoint->names(), ElementsAre("c"));

  // And back to sharded: the stale single file goes, or it would shadow the index.
  ASSERT_OK(sharded.WriteSharded(tmp.path(), {.max_shard_bytes = 64}).status());
  EXPECT_FALSE(std::filesystem::exists(tmp.Join("model.safetensors")));
  ASSERT_OK_AND_ASSIGN(checkpoint, Checkpoint::Open(tmp.path()));
  EXPECT_THAT(checkpoint->names(), ElementsAre("a", "b"));
}

TEST(SafetensorsWriterTest, WriteShardedValidatesOptions) {
  TempDir tmp;
  SafetensorsWriter writer;
  EXPECT_THAT(writer.WriteSharded(tmp.path(), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, "max_shard_bytes must be positive"));
  EXPECT_THAT(writer.WriteSharded(tmp.path(), {.max_shard_bytes = 1, .base_name = "../x"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "not a plain file name"));
  EXPECT_THAT(writer.WriteSharded(tmp.Join("missing"), {.max_shard_bytes = 1}),
              StatusIs(absl::StatusCode::kNotFound, "not a directory"));
}

// ---------------------------------------------------------------------------
// Malformed files

struct MalformedCase {
  const char* test_name;
  std::string file;  // whole file contents
  const char* problem;
};

void PrintTo(const MalformedCase& c, std::ostream* os) { *os << c.test_name; }

std::string Entry(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return absl::StrCat("{\"dtype\":\"", dtype, "\",\"shape\":", shape, ",\"data_offsets\":", offsets,
                      "}");
}

std::vector<MalformedCase> MalformedCases() {
  const std::string u8x4 = Entry("U8", "[4]", "[0,4]");
  const std::string four(4, '\x01');
  std::string huge_length = Raw("{}");
  huge_length[4] = 0x10;  // N = 2^36 + 2
  std::string past_end = Raw("{}");
  past_end[0] = 100;
  return {
      {"Empty", "", "file is 0 bytes, shorter than the 8-byte header length"},
      {"ShorterThanTheLength", std::string("\x02\0\0\0", 4),
       "file is 4 bytes, shorter than the 8-byte"},
      {"HeaderOverTheLimit", huge_length,
       "header length 68719476738 is over the limit of 100000000 bytes"},
      {"HeaderPastTheEnd", past_end, "header length 100 is more than the 2 bytes that follow it"},
      {"EmptyHeader", Raw(""), "header: invalid JSON"},
      {"NotUtf8", Raw("{\"a\xff\":1}"), "header is not valid UTF-8 (byte 3 of the header)"},
      {"OverlongUtf8", Raw("{\"\xc0\xaf\":1}"), "header is not valid UTF-8 (byte 2"},
      {"NotJson", Raw("{\"a\":"), "header: invalid JSON"},
      {"DuplicateKey", Raw(absl::StrCat("{\"a\":", u8x4, ",\"a\":", u8x4, "}"), four),
       "duplicate key \"a\""},
      {"NotAnObject", Raw("[1,2]"), "header is a JSON array, not a JSON object"},
      {"EntryNotAnObject", Raw("{\"w\":5}"), "tensor \"w\": header entry is 5, not an object"},
      {"MissingDType", Raw("{\"w\":{\"shape\":[4],\"data_offsets\":[0,4]}}", four),
       "tensor \"w\": missing \"dtype\""},
      {"MissingShape", Raw("{\"w\":{\"dtype\":\"U8\",\"data_offsets\":[0,4]}}", four),
       "tensor \"w\": missing \"shape\""},
      {"MissingOffsets", Raw("{\"w\":{\"dtype\":\"U8\",\"shape\":[4]}}", four),
       "tensor \"w\": missing \"data_offsets\""},
      {"DTypeNotAString", Raw("{\"w\":{\"dtype\":8,\"shape\":[4],\"data_offsets\":[0,4]}}", four),
       "tensor \"w\": \"dtype\" is 8, not a string"},
      {"UnknownDType", Raw(absl::StrCat("{\"w\":", Entry("F64", "[1]", "[0,8]"), "}"), "12345678"),
       "tensor \"w\": unsupported dtype \"F64\" (supported: F32, F16"},
      {"BoolDType", Raw(absl::StrCat("{\"w\":", Entry("BOOL", "[4]", "[0,4]"), "}"), four),
       "unsupported dtype \"BOOL\""},
      {"ShapeNotAnArray", Raw(absl::StrCat("{\"w\":", Entry("U8", "4", "[0,4]"), "}"), four),
       "tensor \"w\": \"shape\" is 4, not an array"},
      {"NegativeDim", Raw(absl::StrCat("{\"w\":", Entry("U8", "[2,-2]", "[0,4]"), "}"), four),
       "tensor \"w\": shape[1] is -2, not a non-negative 64-bit integer"},
      {"FractionalDim", Raw(absl::StrCat("{\"w\":", Entry("U8", "[1.5]", "[0,4]"), "}"), four),
       "tensor \"w\": shape[0] is 1.5"},
      {"DimPastInt64",
       Raw(absl::StrCat("{\"w\":", Entry("U8", "[9223372036854775808]", "[0,4]"), "}"), four),
       "shape[0] is 9223372036854775808, not a non-negative 64-bit integer"},
      {"ShapeProductOverflows",
       Raw(absl::StrCat("{\"w\":", Entry("F32", "[4294967296,4294967296]", "[0,4]"), "}"), four),
       "tensor \"w\": shape [4294967296, 4294967296] of F32 overflows"},
      {"ByteSizeOverflows",
       Raw(absl::StrCat("{\"w\":", Entry("I64", "[2305843009213693952]", "[0,4]"), "}"), four),
       "overflows 64-bit byte counts"},
      {"OneOffset", Raw(absl::StrCat("{\"w\":", Entry("U8", "[4]", "[4]"), "}"), four),
       "tensor \"w\": \"data_offsets\" is a JSON array of 1, not an array of two integers"},
      {"OffsetsNotAnArray", Raw(absl::StrCat("{\"w\":", Entry("U8", "[4]", "\"0-4\""), "}"), four),
       "\"data_offsets\" is a JSON string, not an array of two integers"},
      {"NegativeOffset", Raw(absl::StrCat("{\"w\":", Entry("U8", "[4]", "[-1,3]"), "}"), four),
       "tensor \"w\": data_offsets[0] is -1, not a non-negative 64-bit integer"},
      {"OffsetsBackwards", Raw(absl::StrCat("{\"w\":", Entry("U8", "[0]", "[4,0]"), "}"), four),
       "tensor \"w\": data_offsets [4, 0] end before they begin"},
      {"OffsetsPastTheData",
       Raw(absl::StrCat(
               "{\"model.layers.3.mlp.gate.weight\":", Entry("F32", "[1024]", "[812,4908]"), "}"),
           std::string(4096, '\0')),
       "tensor \"model.layers.3.mlp.gate.weight\" spans bytes [812, 4908) of the data section but "
       "it has 4096"},
      {"SizeMismatch", Raw(absl::StrCat("{\"w\":", Entry("F32", "[2]", "[0,4]"), "}"), four),
       "tensor \"w\" has dtype F32 and shape [2], which take 8 bytes, but data_offsets [0, 4) span "
       "4"},
      {"Overlap",
       Raw(absl::StrCat("{\"a\":", Entry("U8", "[4]", "[0,4]"),
                        ",\"b\":", Entry("U8", "[2]", "[2,4]"), "}"),
           four),
       "tensor \"b\" at bytes [2, 4) overlaps tensor \"a\" at bytes [0, 4)"},
      {"SameBytesTwice", Raw(absl::StrCat("{\"a\":", u8x4, ",\"b\":", u8x4, "}"), four),
       "tensor \"b\" at bytes [0, 4) overlaps tensor \"a\""},
      {"EmptyTensorInsideAnother",
       Raw(absl::StrCat("{\"a\":", u8x4, ",\"b\":", Entry("U8", "[0]", "[2,2]"), "}"), four),
       "tensor \"b\" at bytes [2, 2) overlaps tensor \"a\""},
      {"Hole",
       Raw(absl::StrCat("{\"a\":", Entry("U8", "[2]", "[0,2]"),
                        ",\"b\":", Entry("U8", "[1]", "[3,4]"), "}"),
           four),
       "bytes [2, 3) of the data section belong to no tensor (tensor \"b\" starts at 3)"},
      {"HoleAtTheStart", Raw(absl::StrCat("{\"a\":", Entry("U8", "[2]", "[2,4]"), "}"), four),
       "bytes [0, 2) of the data section belong to no tensor"},
      {"TrailingBytes", Raw(absl::StrCat("{\"a\":", u8x4, "}"), four + "extra"),
       "bytes [4, 9) at the end of the data section belong to no tensor"},
      {"DataWithoutTensors", Raw("{}", four), "bytes [0, 4) at the end of the data section"},
      {"MetadataNotAnObject", Raw("{\"__metadata__\":[\"a\"]}"),
       "\"__metadata__\" is a JSON array, not an object of strings"},
      {"MetadataNull", Raw("{\"__metadata__\":null}"), "\"__metadata__\" is null"},
      {"MetadataValueNotAString", Raw("{\"__metadata__\":{\"k\":3}}"),
       "\"__metadata__\" value for key \"k\" is 3, not a string"},
      {"NestedTooDeep", Raw(std::string(100, '[') + std::string(100, ']')), "nesting deeper"},
  };
}

class SafetensorsMalformedFileTest : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(SafetensorsMalformedFileTest, IsRefusedWithAMessageNamingTheFileAndTheProblem) {
  const MalformedCase& c = GetParam();
  TempDir tmp;
  const std::string path = tmp.Join("model.safetensors");
  WriteStringToFile(path, c.file);
  const absl::StatusOr<std::shared_ptr<const SafetensorsFile>> opened = SafetensorsFile::Open(path);
  EXPECT_THAT(opened, StatusIs(absl::StatusCode::kInvalidArgument, c.problem));
  EXPECT_THAT(std::string(opened.status().message()), StartsWith(path + ": "));
  // Parse and Open share the validation, so they agree word for word.
  EXPECT_EQ(SafetensorsFile::Parse(path, Span(c.file)).status(), opened.status());
  // A checkpoint made of the file reports the same problem.
  EXPECT_THAT(Checkpoint::Open(tmp.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, c.problem));
}

INSTANTIATE_TEST_SUITE_P(Cases, SafetensorsMalformedFileTest, ::testing::ValuesIn(MalformedCases()),
                         [](const auto& info) { return std::string(info.param.test_name); });

TEST(SafetensorsFileTest, HonoursAConfiguredHeaderLimit) {
  SafetensorsWriter writer;
  ASSERT_OK(writer.Add("w", DType::kU8, {1}, std::vector<uint8_t>{1}));
  ASSERT_OK_AND_ASSIGN(std::string bytes, writer.Serialize());
  EXPECT_OK(SafetensorsFile::Parse("f", Span(bytes)).status());
  EXPECT_THAT(SafetensorsFile::Parse("f", Span(bytes), {.max_header_bytes = 16}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "f: header length 56 is over the limit of 16 bytes"));
  EXPECT_THAT(SafetensorsFile::Parse("f", Span(bytes), {.max_header_bytes = 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, "max_header_bytes must be positive"));
}

TEST(SafetensorsFileTest, AcceptsAnyTensorOrderUnknownEntryKeysAndPadding) {
  // Tensors listed out of data order, an extra key (ignored, as by the Python
  // library), an empty tensor sharing an offset, and space padding.
  const std::string file =
      Raw(absl::StrCat(
              "{\"b\":", Entry("U8", "[2]", "[2,4]"), ",\"z\":", Entry("F32", "[0,5]", "[2,2]"),
              ",\"a\":{\"data_offsets\":[0,2],\"shape\":[2],\"dtype\":\"I8\",\"extra\":[1]}}   "),
          "\x01\x02\x03\x04");
  ASSERT_OK_AND_ASSIGN(auto parsed, SafetensorsFile::Parse("mem", Span(file)));
  std::vector<std::string> names;
  for (const TensorView& t : parsed->tensors()) names.emplace_back(t.name);
  EXPECT_THAT(names, ElementsAre("a", "z", "b"));
  EXPECT_THAT(Bytes(parsed->Find("b")->bytes), ElementsAre(3, 4));
  EXPECT_EQ(parsed->Find("z")->numel(), 0);
  EXPECT_EQ(parsed->Find("missing"), nullptr);
  EXPECT_THAT(parsed->Get("missing"),
              StatusIs(absl::StatusCode::kNotFound, "mem: no tensor named \"missing\""));
}

TEST(SafetensorsFileTest, MissingFileIsNotFound) {
  TempDir tmp;
  EXPECT_THAT(SafetensorsFile::Open(tmp.Join("nope.safetensors")),
              StatusIs(absl::StatusCode::kNotFound, tmp.Join("nope.safetensors")));
}

// ---------------------------------------------------------------------------
// Sharded checkpoints that disagree with their index

class SafetensorsShardedIndexTest : public ::testing::Test {
 protected:
  // Writes shard `file` holding u8 tensors `names` (4 bytes each).
  void WriteShard(const std::string& file, const std::vector<std::string>& names) {
    SafetensorsWriter writer;
    for (const std::string& name : names) {
      ASSERT_OK(writer.Add(name, DType::kU8, {4}, std::vector<uint8_t>{1, 2, 3, 4}));
    }
    ASSERT_OK(writer.Write(tmp_.Join(file)));
  }
  void WriteIndex(const std::string& weight_map_json) {
    WriteStringToFile(
        index_path(),
        absl::StrCat("{\"metadata\":{\"total_size\":8},\"weight_map\":", weight_map_json, "}"));
  }
  std::string index_path() const { return tmp_.Join("model.safetensors.index.json"); }
  absl::StatusOr<std::unique_ptr<const Checkpoint>> Open() { return Checkpoint::Open(tmp_.path()); }

  TempDir tmp_;
};

TEST_F(SafetensorsShardedIndexTest, ValidIndexOpens) {
  WriteShard("s1.safetensors", {"a"});
  WriteShard("s2.safetensors", {"b"});
  WriteIndex(R"({"a":"s1.safetensors","b":"s2.safetensors"})");
  ASSERT_OK_AND_ASSIGN(auto checkpoint, Open());
  EXPECT_THAT(checkpoint->names(), ElementsAre("a", "b"));
  EXPECT_EQ(checkpoint->total_bytes(), 8u);
  EXPECT_THAT(checkpoint->Get("c"),
              StatusIs(absl::StatusCode::kNotFound,
                       absl::StrCat(tmp_.path(), ": no tensor named \"c\" in this checkpoint")));
}

TEST_F(SafetensorsShardedIndexTest, MissingShard) {
  WriteShard("s1.safetensors", {"a"});
  WriteIndex(R"({"a":"s1.safetensors","b":"s2.safetensors"})");
  const auto opened = Open();
  EXPECT_THAT(opened, StatusIs(absl::StatusCode::kNotFound,
                               absl::StrCat(index_path(),
                                            ": shard \"s2.safetensors\" (for 1 tensor: \"b\"): ",
                                            tmp_.Join("s2.safetensors"))));
}

TEST_F(SafetensorsShardedIndexTest, TensorMissingFromItsShard) {
  WriteShard("s1.safetensors", {"a"});
  WriteShard("s2.safetensors", {"b"});
  WriteIndex(R"({"a":"s1.safetensors","b":"s2.safetensors","c":"s1.safetensors"})");
  EXPECT_THAT(Open(), StatusIs(absl::StatusCode::kInvalidArgument,
                               absl::StrCat(index_path(),
                                            ": weight_map maps tensor \"c\" to shard "
                                            "\"s1.safetensors\", which does not contain it")));
}

TEST_F(SafetensorsShardedIndexTest, TensorInTheWrongShardIsNamedWithWhereItIs) {
  WriteShard("s1.safetensors", {"a"});
  WriteShard("s2.safetensors", {"b", "c"});
  WriteIndex(R"({"a":"s1.safetensors","b":"s2.safetensors","c":"s1.safetensors"})");
  EXPECT_THAT(Open(), StatusIs(absl::StatusCode::kInvalidArgument,
                               "to shard \"s1.safetensors\", which does not contain it (it is in "
                               "shard \"s2.safetensors\")"));
}

TEST_F(SafetensorsShardedIndexTest, ShardHoldsATensorMappedElsewhere) {
  WriteShard("s1.safetensors", {"a", "b"});
  WriteShard("s2.safetensors", {"b"});
  WriteIndex(R"({"a":"s1.safetensors","b":"s2.safetensors"})");
  EXPECT_THAT(Open(), StatusIs(absl::StatusCode::kInvalidArgument,
                               absl::StrCat(index_path(),
                                            ": shard \"s1.safetensors\" contains tensor \"b\", "
                                            "which the weight_map maps to shard "
                                            "\"s2.safetensors\"")));
}

TEST_F(SafetensorsShardedIndexTest, ShardHoldsATensorTheIndexDoesNotList) {
  WriteShard("s1.safetensors", {"a", "extra"});
  WriteIndex(R"({"a":"s1.safetensors"})");
  EXPECT_THAT(Open(), StatusIs(absl::StatusCode::kInvalidArgument,
                               "shard \"s1.safetensors\" contains tensor \"extra\", which the "
                               "weight_map does not list"));
}

TEST_F(SafetensorsShardedIndexTest, ShardNamesMayNotLeaveTheDirectory) {
  WriteShard("s1.safetensors", {"a"});
  for (const char* shard : {"../s1.safetensors", "/etc/passwd", "sub/s1.safetensors", "..", "."}) {
    SCOPED_TRACE(shard);
    WriteIndex(absl::StrCat(R"({"a":")", shard, "\"}"));
    EXPECT_THAT(Open(), StatusIs(absl::StatusCode::kInvalidArgument,
                                 absl::StrCat(index_path(),
                                              ": weight_map maps tensor \"a\" to "
                                              "shard file \"",
                                              shard, "\", which is not a plain file name")));
  }
}

TEST_F(SafetensorsShardedIndexTest, MalformedIndexes) {
  WriteShard("s1.safetensors", {"a"});
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json", "invalid JSON"},
      {R"({"weight_map":{"a":"s1.safetensors","a":"s1.safetensors"}})", "duplicate key \"a\""},
      {"[]", "index is a JSON array, not a JSON object"},
      {R"({"metadata":{}})", "missing \"weight_map\""},
      {R"({"weight_map":[]})", "\"weight_map\" is a JSON array, not an object"},
      {R"({"weight_map":{}})", "\"weight_map\" lists no tensors"},
      {R"({"weight_map":{"a":1}})", "weight_map entry for tensor \"a\" is 1, not a shard file"},
      {R"({"metadata":"x","weight_map":{"a":"s1.safetensors"}})",
       "\"metadata\" is a JSON string, not an object"},
  };
  for (const auto& [text, problem] : cases) {
    SCOPED_TRACE(text);
    WriteStringToFile(index_path(), text);
    const auto opened = Open();
    EXPECT_THAT(opened, StatusIs(absl::StatusCode::kInvalidArgument, problem));
    EXPECT_THAT(std::string(opened.status().message()), StartsWith(index_path() + ": "));
  }
}

TEST_F(SafetensorsShardedIndexTest, MalformedShardNamesTheShardAndTheIndex) {
  WriteStringToFile(tmp_.Join("s1.safetensors"), Raw("{}", "junk"));
  WriteIndex(R"({"a":"s1.safetensors"})");
  EXPECT_THAT(
      Open(),
      StatusIs(absl::StatusCode::kInvalidArgument,
               absl::StrCat(index_path(), ": shard \"s1.safetensors\" (for 1 tensor: \"a\"): ",
                            tmp_.Join("s1.safetensors"), ": bytes [0, 4) at the end")));
}

TEST_F(SafetensorsShardedIndexTest, DirectoryWithoutACheckpoint) {
  EXPECT_THAT(Open(), StatusIs(absl::StatusCode::kNotFound,
                               "neither model.safetensors nor model.safetensors.index.json"));
  EXPECT_THAT(Checkpoint::Open(tmp_.Join("absent")),
              StatusIs(absl::StatusCode::kNotFound, tmp_.Join("absent") + ": no such file"));
}

TEST_F(SafetensorsShardedIndexTest, SingleFileIsPreferredOverAnIndexAsInTransformers) {
  WriteShard("model.safetensors", {"single"});
  WriteIndex(R"({"a":"missing.safetensors"})");
  ASSERT_OK_AND_ASSIGN(auto checkpoint, Open());
  EXPECT_FALSE(checkpoint->sharded());
  EXPECT_THAT(checkpoint->names(), ElementsAre("single"));
}

}  // namespace
}  // namespace premoe::checkpoint
