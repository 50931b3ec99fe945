#include "premoe/store/proto_convert.h"

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "premoe/common/status.h"
#include "premoe/common/utf8.h"

namespace premoe::store {

void ToProto(const Pattern& in, v1::Pattern* out) {
  out->Clear();
  out->set_schema_version(in.schema_version);
  out->set_id(in.id);
  out->set_task_name(in.task_name);
  out->set_model_fingerprint(in.model_fingerprint);
  out->mutable_metric()->set_name(in.metric);
  for (const auto& [key, value] : in.metric_params) {
    (*out->mutable_metric()->mutable_params())[key] = value;
  }
  for (const LayerScores& layer : in.layers) {
    v1::LayerScores* l = out->add_layers();
    l->set_layer(layer.layer);
    l->mutable_scores()->Add(layer.scores.begin(), layer.scores.end());
  }
  out->mutable_calibration()->set_samples(in.calibration_samples);
  out->mutable_calibration()->set_tokens(in.calibration_tokens);
  for (const MatchEmbedding& e : in.embeddings) ToProto(e, out->add_embeddings());
  out->set_created_unix_micros(in.created_unix_micros);
}

absl::StatusOr<Pattern> FromProto(const v1::Pattern& in) {
  RETURN_IF_ERROR(common::CheckUtf8(in.task_name(), "the pattern's task name"));
  if (in.schema_version() > kPatternSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pattern \"", in.task_name(), "\" has schema version ", in.schema_version(),
        ", written by a newer premoe (this build reads up to ", kPatternSchemaVersion, ")"));
  }
  Pattern out;
  out.schema_version = in.schema_version();
  out.id = in.id();
  out.task_name = in.task_name();
  out.model_fingerprint = in.model_fingerprint();
  out.metric = in.metric().name();
  for (const auto& [key, value] : in.metric().params()) out.metric_params[key] = value;
  out.layers.reserve(in.layers_size());
  for (const v1::LayerScores& l : in.layers()) {
    out.layers.push_back({l.layer(), std::vector<float>(l.scores().begin(), l.scores().end())});
  }
  out.calibration_samples = in.calibration().samples();
  out.calibration_tokens = in.calibration().tokens();
  out.embeddings.reserve(in.embeddings_size());
  for (const v1::MatchEmbedding& e : in.embeddings()) out.embeddings.push_back(FromProto(e));
  out.created_unix_micros = in.created_unix_micros();
  return out;
}

void ToProto(const MatchEmbedding& in, v1::MatchEmbedding* out) {
  out->mutable_values()->Add(in.values.begin(), in.values.end());
  out->set_prompt_hash(in.prompt_hash);
}

MatchEmbedding FromProto(const v1::MatchEmbedding& in) {
  return {std::vector<float>(in.values().begin(), in.values().end()), in.prompt_hash()};
}

void ToProto(const PatternSummary& in, v1::PatternSummary* out) {
  out->set_id(in.id);
  out->set_task_name(in.task_name);
  out->set_metric(in.metric);
  out->set_num_layers(in.num_layers);
  out->set_num_embeddings(in.num_embeddings);
  out->set_created_unix_micros(in.created_unix_micros);
}

PatternSummary FromProto(const v1::PatternSummary& in) {
  return {in.id(),         in.task_name(),      in.metric(),
          in.num_layers(), in.num_embeddings(), in.created_unix_micros()};
}

void ToProto(const ChangeEvent& in, v1::ChangeEvent* out) {
  out->set_version(in.version);
  out->set_kind(in.kind == ChangeEvent::Kind::kPut ? v1::ChangeEvent::KIND_PUT
                                                   : v1::ChangeEvent::KIND_DELETE);
  out->set_id(in.id);
  out->set_task_name(in.task_name);
}

absl::StatusOr<ChangeEvent> FromProto(const v1::ChangeEvent& in) {
  ChangeEvent out;
  switch (in.kind()) {
    case v1::ChangeEvent::KIND_PUT:
      out.kind = ChangeEvent::Kind::kPut;
      break;
    case v1::ChangeEvent::KIND_DELETE:
      out.kind = ChangeEvent::Kind::kDelete;
      break;
    default:
      return absl::DataLossError(
          absl::StrCat("change ", in.version(), " has unknown kind ", in.kind()));
  }
  out.version = in.version();
  out.id = in.id();
  out.task_name = in.task_name();
  return out;
}

void ToProto(const SearchMatch& in, v1::SearchMatch* out) {
  out->set_id(in.id);
  out->set_task_name(in.task_name);
  out->set_similarity(in.similarity);
  out->set_votes(in.votes);
}

SearchMatch FromProto(const v1::SearchMatch& in) {
  return {in.id(), in.task_name(), in.similarity(), in.votes()};
}

void ToProto(const StoreInfo& in, v1::StoreInfo* out) {
  out->set_schema_version(in.schema_version);
  out->set_model_fingerprint(in.model_fingerprint);
  out->set_embedding_dim(in.embedding_dim);
  out->set_version(in.version);
  out->set_num_patterns(in.num_patterns);
  out->set_num_embeddings(in.num_embeddings);
  out->set_index_kind(in.index_kind);
  out->set_index_source(in.index_source);
  out->set_index_open_micros(in.index_open_micros);
}

StoreInfo FromProto(const v1::StoreInfo& in) {
  return {in.schema_version(), in.model_fingerprint(), in.embedding_dim(),
          in.version(),        in.num_patterns(),      in.num_embeddings(),
          in.index_kind(),     in.index_source(),      in.index_open_micros()};
}

v1::Voting ToProto(Voting in) {
  switch (in) {
    case Voting::kMean:
      return v1::VOTING_MEAN;
    case Voting::kCount:
      return v1::VOTING_COUNT;
    case Voting::kMax:
      break;
  }
  return v1::VOTING_MAX;
}

absl::StatusOr<Voting> FromProto(v1::Voting in) {
  switch (in) {
    case v1::VOTING_UNSPECIFIED:
    case v1::VOTING_MAX:
      return Voting::kMax;
    case v1::VOTING_MEAN:
      return Voting::kMean;
    case v1::VOTING_COUNT:
      return Voting::kCount;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown voting mode ", in));
  }
}

std::string EncodePattern(const Pattern& pattern) {
  v1::Pattern proto;
  ToProto(pattern, &proto);
  std::string bytes;
  // Deterministic so that equal patterns encode to equal bytes (map order).
  google::protobuf::io::StringOutputStream stream(&bytes);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  proto.SerializeToCodedStream(&coded);
  coded.Trim();
  return bytes;
}

absl::StatusOr<Pattern> DecodePattern(absl::string_view bytes) {
  v1::Pattern proto;
  if (!proto.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a premoe.v1.Pattern (", bytes.size(), " bytes do not parse)"));
  }
  return FromProto(proto);
}

}  // namespace premoe::store
