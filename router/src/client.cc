#include "premoe/router/client.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "premoe/common/status.h"
#include "premoe/proto/auth.h"
#include "premoe/proto/grpc_edge.h"
#include "premoe/v1/inference.grpc.pb.h"
#include "router/src/wire.h"

namespace premoe::router {

struct InferenceClient::Impl {
  Options options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Inference::Stub> stub;

  absl::Status Convert(const grpc::Status& status, absl::string_view call) const {
    if (status.ok()) return absl::OkStatus();
    absl::Status s = rpc::FromGrpcStatus(status);
    return absl::Status(s.code(),
                        absl::StrCat("router ", options.address, ": ", call, ": ", s.message()));
  }
};

InferenceClient::InferenceClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
InferenceClient::~InferenceClient() = default;

absl::StatusOr<std::unique_ptr<InferenceClient>> InferenceClient::Open(const Options& options) {
  if (options.address.empty() || options.timeout.count() <= 0) {
    return absl::InvalidArgumentError("InferenceClient::Options: want an address and a timeout");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  ASSIGN_OR_RETURN(impl->channel,
                   rpc::MakeChannel("inference client", options.address, 64 << 20, options.tls));
  impl->stub = v1::Inference::NewStub(impl->channel);
  return std::unique_ptr<InferenceClient>(new InferenceClient(std::move(impl)));
}

absl::StatusOr<InferenceResult> InferenceClient::Generate(
    const InferenceRequest& request, const std::function<void(const std::string&)>& on_text) {
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, request.deadline, impl_->options.timeout);
  rpc::AddKey(ctx, impl_->options.api_key);
  v1::InferenceRequest wire;
  ToProto(request, &wire);
  auto reader = impl_->stub->Generate(&ctx, wire);
  v1::InferenceResponse message;
  std::string text;
  std::optional<InferenceResult> last;
  while (reader->Read(&message)) {
    text += message.text();
    if (on_text && !message.text().empty()) on_text(message.text());
    if (message.done()) last = FromProto(message);
  }
  RETURN_IF_ERROR(impl_->Convert(reader->Finish(), "Generate"));
  if (!last.has_value()) {
    return absl::UnavailableError(
        absl::StrCat("router ", impl_->options.address, ": Generate: the stream ended early"));
  }
  last->text.text = std::move(text);
  return *last;
}

absl::StatusOr<MatchResult> InferenceClient::Match(const std::string& prompt, int32_t k) {
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, std::nullopt, impl_->options.timeout);
  rpc::AddKey(ctx, impl_->options.api_key);
  v1::MatchRequest request;
  request.set_prompt(prompt);
  request.set_k(k);
  v1::MatchResponse response;
  RETURN_IF_ERROR(impl_->Convert(impl_->stub->Match(&ctx, request, &response), "Match"));
  return FromProto(response);
}

}  // namespace premoe::router
