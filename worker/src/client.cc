#include "premoe/worker/client.h"

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "premoe/common/status.h"
#include "premoe/proto/grpc_edge.h"
#include "premoe/v1/worker.grpc.pb.h"
#include "wire.h"

namespace premoe::worker {

struct WorkerClient::Impl {
  Options options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Worker::Stub> stub;

  absl::Status Convert(const grpc::Status& status, absl::string_view call) const {
    if (status.ok()) return absl::OkStatus();
    absl::Status s = rpc::FromGrpcStatus(status);
    return absl::Status(s.code(),
                        absl::StrCat("worker ", options.address, ": ", call, ": ", s.message()));
  }
};

WorkerClient::WorkerClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
WorkerClient::~WorkerClient() = default;

absl::StatusOr<std::unique_ptr<WorkerClient>> WorkerClient::Open(const Options& options) {
  if (options.address.empty() || options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError("WorkerClient::Options: want an address and a message limit");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  ASSIGN_OR_RETURN(impl->channel,
                   rpc::MakeChannel("worker client", options.address, options.max_message_bytes));
  impl->stub = v1::Worker::NewStub(impl->channel);
  return std::unique_ptr<WorkerClient>(new WorkerClient(std::move(impl)));
}

void CallCanceller::Cancel() {
  std::lock_guard lock(mu_);
  cancelled_ = true;
  if (context_ != nullptr) static_cast<grpc::ClientContext*>(context_)->TryCancel();
}

bool CallCanceller::cancelled() const {
  std::lock_guard lock(mu_);
  return cancelled_;
}

absl::StatusOr<PreparedPattern> WorkerClient::Prepare(
    const store::Pattern& pattern, const std::string& budget,
    std::optional<std::chrono::system_clock::time_point> deadline) {
  grpc::ClientContext ctx;
  const auto longest = std::chrono::system_clock::now() + impl_->options.prepare_timeout;
  ctx.set_deadline(deadline.has_value() ? std::min(*deadline, longest) : longest);
  v1::PrepareRequest request;
  PatternToProto(pattern, request.mutable_pattern());
  request.set_budget(budget);
  v1::PrepareResponse response;
  RETURN_IF_ERROR(impl_->Convert(impl_->stub->Prepare(&ctx, request, &response), "Prepare"));
  return FromProto(response);
}

absl::StatusOr<TextResult> WorkerClient::Generate(
    const TextRequest& request,
    const std::function<void(const std::string&, const std::vector<int64_t>&)>& on_delta) {
  grpc::ClientContext ctx;
  if (request.deadline.has_value()) ctx.set_deadline(*request.deadline);
  CallCanceller* canceller = request.canceller;
  if (canceller != nullptr) {
    std::lock_guard lock(canceller->mu_);
    if (canceller->cancelled_) return absl::CancelledError("Generate: cancelled by the caller");
    canceller->context_ = &ctx;
  }
  // The context dies with this call: unregister it on every way out.
  struct Unregister {
    CallCanceller* c;
    ~Unregister() {
      if (c == nullptr) return;
      std::lock_guard lock(c->mu_);
      c->context_ = nullptr;
    }
  } unregister{canceller};
  v1::GenerateRequest wire;
  ToProto(request, &wire);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      impl_->stub->Generate(&ctx, wire);
  TextResult out;
  v1::GenerateResponse message;
  bool done = false;
  while (reader->Read(&message)) {
    std::vector<int64_t> tokens(message.token_ids().begin(), message.token_ids().end());
    out.text += message.text();
    out.tokens.insert(out.tokens.end(), tokens.begin(), tokens.end());
    if (on_delta && (!message.text().empty() || !tokens.empty())) on_delta(message.text(), tokens);
    if (message.done()) {
      done = true;
      out.finish_reason = message.finish_reason();
      out.prompt_tokens = message.prompt_tokens();
      out.completion_tokens = message.completion_tokens();
      out.time_to_first_token = message.time_to_first_token_seconds();
    }
  }
  RETURN_IF_ERROR(impl_->Convert(reader->Finish(), "Generate"));
  if (!done) {
    return absl::UnavailableError(
        absl::StrCat("worker ", impl_->options.address, ": Generate: the stream ended early"));
  }
  return out;
}

absl::StatusOr<RemoteStatus> WorkerClient::Status() {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + impl_->options.status_timeout);
  v1::WorkerStatusRequest request;
  v1::WorkerStatusResponse response;
  RETURN_IF_ERROR(impl_->Convert(impl_->stub->Status(&ctx, request, &response), "Status"));
  return FromProto(response);
}

}  // namespace premoe::worker
