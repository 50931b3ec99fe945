// The expert pattern record and the values the pattern store exchanges.
//
// These are plain C++ structs: the library boundary of premoe::store (and of
// the profiler and router that use it) never exposes protobuf types
// (DESIGN.md §2). The wire/disk form is premoe.v1.Pattern
// (proto/premoe/v1/pattern.proto); EncodePattern/DecodePattern are the one
// place the two meet outside the gRPC edge. All types are values: copyable,
// no shared state, safe to use from any thread one at a time.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace premoe::store {

// Layout version of Pattern this build writes. Records with a newer version
// are refused with FAILED_PRECONDITION ("written by a newer premoe").
inline constexpr std::uint32_t kPatternSchemaVersion = 1;

// One MoE layer's scores: one float per routed expert, indexed by expert id.
struct LayerScores {
  std::int32_t layer = 0;
  std::vector<float> scores;
  bool operator==(const LayerScores&) const = default;
};

// The match embedding of one calibration prompt (DESIGN.md §3). `values` are
// stored as given; the store's index uses an L2-normalised copy.
struct MatchEmbedding {
  std::vector<float> values;
  // Hex hash of the prompt text; informational, may be empty.
  std::string prompt_hash;
  bool operator==(const MatchEmbedding&) const = default;
};

// A task's expert pattern. Fields mirror premoe.v1.Pattern.
struct Pattern {
  std::uint32_t schema_version = kPatternSchemaVersion;
  // Assigned by the store on Put; ignored on input (0 = not stored yet).
  std::uint64_t id = 0;
  // Required, non-empty, at most 256 bytes. Unique within a store: a Put for an
  // existing task replaces its pattern and keeps its id.
  std::string task_name;
  // Required: hash of the model's config and gate weights.
  std::string model_fingerprint;
  // Metric name ("peu", ...) and its parameters, as strings.
  std::string metric;
  std::map<std::string, std::string> metric_params;
  std::vector<LayerScores> layers;
  std::int64_t calibration_samples = 0;
  std::int64_t calibration_tokens = 0;
  // One per calibration prompt; all of the store's embedding dimension.
  std::vector<MatchEmbedding> embeddings;
  // Microseconds since the Unix epoch. 0 on Put = the store fills in "now".
  std::int64_t created_unix_micros = 0;
  bool operator==(const Pattern&) const = default;
};

// What List returns per pattern (the full record is one Get away).
struct PatternSummary {
  std::uint64_t id = 0;
  std::string task_name;
  std::string metric;
  std::int32_t num_layers = 0;
  std::int32_t num_embeddings = 0;
  std::int64_t created_unix_micros = 0;
  bool operator==(const PatternSummary&) const = default;
};

struct ListRequest {
  // Patterns per page. Default 0 = 100; at most 1000 (INVALID_ARGUMENT above).
  std::int32_t page_size = 0;
  // Empty for the first page, else the previous page's next_page_token.
  std::string page_token;
};

struct ListPage {
  // In ascending id order.
  std::vector<PatternSummary> patterns;
  // Empty on the last page.
  std::string next_page_token;
};

struct PutResult {
  std::uint64_t id = 0;
  // The store version of this change (see ChangeEvent).
  std::uint64_t version = 0;
};

// How a pattern's embeddings combine into one score for Search.
enum class Voting {
  // Default. The pattern's similarity is its best embedding's cosine
  // similarity to the query (exact: the search widens until k patterns are
  // found). Ranks like 1-NN over embeddings.
  kMax = 0,
  // The mean cosine similarity of the pattern's embeddings among the
  // `candidates` nearest embeddings. Favours patterns near the query on many
  // prompts, not one.
  kMean = 1,
  // The number of the pattern's embeddings among the `candidates` nearest
  // (a k-NN vote); `similarity` is then the best one, used to break ties.
  kCount = 2,
};

struct SearchOptions {
  // Patterns to return. Default 1; must be > 0.
  std::int32_t k = 1;
  // Default kMax.
  Voting voting = Voting::kMax;
  // Nearest embeddings that kMean and kCount vote over. Default 0 = 64.
  std::int32_t candidates = 0;
};

struct SearchMatch {
  std::uint64_t id = 0;
  std::string task_name;
  // Cosine similarity in [-1, 1] for kMax/kMean; the best one for kCount.
  float similarity = 0;
  // The pattern's embeddings among the nearest candidates searched.
  std::int32_t votes = 0;
};

// One committed change. Versions start at 1 and increase by one per change,
// with no gaps, across restarts.
struct ChangeEvent {
  enum class Kind { kPut = 1, kDelete = 2 };
  std::uint64_t version = 0;
  Kind kind = Kind::kPut;
  std::uint64_t id = 0;
  std::string task_name;
  bool operator==(const ChangeEvent&) const = default;
};

struct StoreInfo {
  std::uint32_t schema_version = kPatternSchemaVersion;
  // Empty until the first Put (unless set when the store was opened).
  std::string model_fingerprint;
  // 0 until the first embedding (unless set when the store was opened).
  std::int32_t embedding_dim = 0;
  // The version of the last change; 0 for an empty store.
  std::uint64_t version = 0;
  std::int64_t num_patterns = 0;
  std::int64_t num_embeddings = 0;
  // "flat" or "hnsw".
  std::string index_kind;
  // How the store's Open made the index: "snapshot" (loaded from its index
  // snapshot) or "rebuilt" (from RocksDB), and the microseconds that took.
  std::string index_source;
  std::int64_t index_open_micros = 0;
};

// The pattern as premoe.v1.Pattern bytes: the portable form (export files,
// the profiler's --out FILE). Deterministic for a given pattern.
std::string EncodePattern(const Pattern& pattern);
// Parses premoe.v1.Pattern bytes. INVALID_ARGUMENT if they do not parse;
// FAILED_PRECONDITION if schema_version is newer than kPatternSchemaVersion.
absl::StatusOr<Pattern> DecodePattern(absl::string_view bytes);

}  // namespace premoe::store
