#include "premoe/worker/client.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "premoe/common/status.h"
#include "premoe/proto/auth.h"
#include "premoe/proto/grpc_edge.h"
#include "premoe/v1/worker.grpc.pb.h"
#include "wire.h"

namespace premoe::worker {

struct WorkerClient::Impl {
  Options options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Worker::Stub> stub;

  // StartGenerate calls in flight, which the watchdog cancels when they
  // make no progress for options.progress_timeout. A call leaves the set
  // (under the lock) before it is deleted.
  absl::Mutex calls_mu;
  absl::flat_hash_set<GenerateCall*> calls ABSL_GUARDED_BY(calls_mu);
  bool stopping ABSL_GUARDED_BY(calls_mu) = false;
  std::thread watchdog;

  ~Impl() {
    {
      absl::MutexLock lock(&calls_mu);
      stopping = true;
    }
    if (watchdog.joinable()) watchdog.join();
  }

  void Watch();

  absl::Status Convert(const grpc::Status& status, absl::string_view call) const {
    if (status.ok()) return absl::OkStatus();
    absl::Status s = rpc::FromGrpcStatus(status);
    return absl::Status(s.code(),
                        absl::StrCat("worker ", options.address, ": ", call, ": ", s.message()));
  }
};

WorkerClient::WorkerClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
  if (impl_->options.progress_timeout.count() > 0) {
    impl_->watchdog = std::thread([impl = impl_.get()] { impl->Watch(); });
  }
}
WorkerClient::~WorkerClient() = default;

absl::StatusOr<std::unique_ptr<WorkerClient>> WorkerClient::Open(const Options& options) {
  if (options.address.empty() || options.max_message_bytes <= 0 ||
      options.status_timeout.count() <= 0 || options.prepare_timeout.count() <= 0 ||
      options.generate_timeout.count() <= 0) {
    return absl::InvalidArgumentError(
        "WorkerClient::Options: want an address, a message limit and positive timeouts");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  ASSIGN_OR_RETURN(impl->channel, rpc::MakeChannel("worker client", options.address,
                                                   options.max_message_bytes, options.tls));
  impl->stub = v1::Worker::NewStub(impl->channel);
  return std::unique_ptr<WorkerClient>(new WorkerClient(std::move(impl)));
}

void CallCanceller::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  // Under the lock, so that the call cannot detach (and free its context)
  // meanwhile. TryCancel never runs the call's reactions on this thread.
  if (cancel_) cancel_();
}

bool CallCanceller::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

bool CallCanceller::Attach(std::function<void()> cancel) {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return false;
  cancel_ = std::move(cancel);
  return true;
}

void CallCanceller::Detach() {
  absl::MutexLock lock(&mu_);
  cancel_ = nullptr;
}

namespace {

// Adds one streamed message to `out`; true when it had text or tokens.
bool Accumulate(const v1::GenerateResponse& message, TextResult* out, bool* done) {
  out->text += message.text();
  out->tokens.insert(out->tokens.end(), message.token_ids().begin(), message.token_ids().end());
  if (message.done()) {
    *done = true;
    out->finish_reason = message.finish_reason();
    out->prompt_tokens = message.prompt_tokens();
    out->completion_tokens = message.completion_tokens();
    out->time_to_first_token = message.time_to_first_token_seconds();
  }
  return !message.text().empty() || message.token_ids_size() > 0;
}

}  // namespace

// One StartGenerate call. Lifetime: created by StartGenerate, deletes itself
// in OnDone, which gRPC calls exactly once after the call has ended.
class WorkerClient::GenerateCall final : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  GenerateCall(Impl* impl, CallCanceller* canceller, DeltaCallback on_delta, DoneCallback on_done)
      : impl_(impl),
        canceller_(canceller),
        on_delta_(std::move(on_delta)),
        on_done_(std::move(on_done)) {}

  // The watchdog's view (under Impl::calls_mu).
  std::chrono::steady_clock::time_point last_progress() const { return last_progress_.load(); }
  void Stall() {
    if (!stalled_.exchange(true)) ctx_.TryCancel();
  }

  void Start(const TextRequest& request) {
    rpc::SetDeadline(ctx_, request.deadline, impl_->options.generate_timeout);
    rpc::AddKey(ctx_, impl_->options.api_key);
    if (!request.request_id.empty()) ctx_.AddMetadata("x-request-id", request.request_id);
    ToProto(request, &wire_);
    if (canceller_ != nullptr && !canceller_->Attach([this] { ctx_.TryCancel(); })) {
      DoneCallback done = std::move(on_done_);
      delete this;
      done(absl::CancelledError("Generate: cancelled by the caller"));
      return;
    }
    last_progress_ = std::chrono::steady_clock::now();
    {
      absl::MutexLock lock(&impl_->calls_mu);
      impl_->calls.insert(this);
    }
    impl_->stub->async()->Generate(&ctx_, &wire_, this);
    StartRead(&message_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream has ended: OnDone follows
    last_progress_ = std::chrono::steady_clock::now();
    if (Accumulate(message_, &out_, &done_) && on_delta_) {
      on_delta_(message_.text(), {message_.token_ids().begin(), message_.token_ids().end()});
    }
    StartRead(&message_);
  }

  void OnDone(const grpc::Status& status) override {
    if (canceller_ != nullptr) canceller_->Detach();
    {
      absl::MutexLock lock(&impl_->calls_mu);
      impl_->calls.erase(this);
    }
    absl::StatusOr<TextResult> result = std::move(out_);
    if (stalled_.load()) {
      result = absl::UnavailableError(
          absl::StrCat("worker ", impl_->options.address, ": Generate: nothing came for ",
                       absl::FormatDuration(absl::FromChrono(impl_->options.progress_timeout)),
                       "; the worker is stuck"));
    } else if (absl::Status s = impl_->Convert(status, "Generate"); !s.ok()) {
      result = s;
    } else if (!done_) {
      result = absl::UnavailableError(
          absl::StrCat("worker ", impl_->options.address, ": Generate: the stream ended early"));
    }
    DoneCallback done = std::move(on_done_);
    delete this;
    done(std::move(result));
  }

 private:
  Impl* impl_;
  CallCanceller* canceller_;
  std::atomic<std::chrono::steady_clock::time_point> last_progress_{};
  std::atomic<bool> stalled_{false};
  DeltaCallback on_delta_;
  DoneCallback on_done_;
  grpc::ClientContext ctx_;
  v1::GenerateRequest wire_;
  v1::GenerateResponse message_;
  TextResult out_;
  bool done_ = false;
};

void WorkerClient::Impl::Watch() {
  absl::MutexLock lock(&calls_mu);
  while (!calls_mu.AwaitWithTimeout(absl::Condition(&stopping), absl::Milliseconds(250))) {
    const auto now = std::chrono::steady_clock::now();
    for (GenerateCall* call : calls) {
      if (now - call->last_progress() > options.progress_timeout) call->Stall();
    }
  }
}

absl::StatusOr<PreparedPattern> WorkerClient::Prepare(
    const store::Pattern& pattern, const std::string& budget,
    std::optional<std::chrono::system_clock::time_point> deadline) {
  grpc::ClientContext ctx;
  const auto longest = std::chrono::system_clock::now() + impl_->options.prepare_timeout;
  rpc::SetDeadline(ctx, deadline.has_value() ? std::min(*deadline, longest) : longest,
                   impl_->options.prepare_timeout);
  rpc::AddKey(ctx, impl_->options.api_key);
  v1::PrepareRequest request;
  store::ToProto(pattern, request.mutable_pattern());
  request.set_budget(budget);
  v1::PrepareResponse response;
  RETURN_IF_ERROR(impl_->Convert(impl_->stub->Prepare(&ctx, request, &response), "Prepare"));
  return FromProto(response);
}

absl::StatusOr<TextResult> WorkerClient::Generate(
    const TextRequest& request,
    const std::function<void(const std::string&, const std::vector<int64_t>&)>& on_delta) {
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, request.deadline, impl_->options.generate_timeout);
  rpc::AddKey(ctx, impl_->options.api_key);
  if (!request.request_id.empty()) ctx.AddMetadata("x-request-id", request.request_id);
  CallCanceller* canceller = request.canceller;
  if (canceller != nullptr && !canceller->Attach([&ctx] { ctx.TryCancel(); })) {
    return absl::CancelledError("Generate: cancelled by the caller");
  }
  // The context dies with this call: detach it on every way out.
  struct Detach {
    CallCanceller* c;
    ~Detach() {
      if (c != nullptr) c->Detach();
    }
  } detach{canceller};
  v1::GenerateRequest wire;
  ToProto(request, &wire);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      impl_->stub->Generate(&ctx, wire);
  TextResult out;
  v1::GenerateResponse message;
  bool done = false;
  while (reader->Read(&message)) {
    if (Accumulate(message, &out, &done) && on_delta) {
      on_delta(message.text(), {message.token_ids().begin(), message.token_ids().end()});
    }
  }
  RETURN_IF_ERROR(impl_->Convert(reader->Finish(), "Generate"));
  if (!done) {
    return absl::UnavailableError(
        absl::StrCat("worker ", impl_->options.address, ": Generate: the stream ended early"));
  }
  return out;
}

void WorkerClient::StartGenerate(const TextRequest& request, DeltaCallback on_delta,
                                 DoneCallback on_done) {
  (new GenerateCall(impl_.get(), request.canceller, std::move(on_delta), std::move(on_done)))
      ->Start(request);
}

absl::StatusOr<RemoteStatus> WorkerClient::Status() {
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, std::nullopt, impl_->options.status_timeout);
  rpc::AddKey(ctx, impl_->options.api_key);
  v1::WorkerStatusRequest request;
  v1::WorkerStatusResponse response;
  RETURN_IF_ERROR(impl_->Convert(impl_->stub->Status(&ctx, request, &response), "Status"));
  return FromProto(response);
}

}  // namespace premoe::worker
