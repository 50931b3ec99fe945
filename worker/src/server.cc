#include "premoe/worker/server.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"
#include "premoe/proto/grpc_edge.h"
#include "premoe/tokenizer/text_stream.h"
#include "premoe/v1/worker.grpc.pb.h"
#include "wire.h"

namespace premoe::worker {
namespace {

using rpc::ToGrpcStatus;

// Hands a request's tokens from the scheduler thread to the call's thread.
struct Channel {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<int64_t> tokens;
  std::optional<absl::StatusOr<WorkResult>> done;
  // Set by the call's thread; read by the scheduler's callbacks.
  std::atomic<bool> cancelled{false};
  std::atomic<bool> stopped{false};
};

std::optional<std::chrono::steady_clock::time_point> Deadline(const grpc::ServerContext& ctx) {
  const auto deadline = ctx.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return std::nullopt;
  return std::chrono::steady_clock::now() + (deadline - std::chrono::system_clock::now());
}

class Service final : public v1::Worker::Service {
 public:
  Service(Worker* worker, const tokenizer::Tokenizer* tokenizer, int64_t max_prompt_bytes)
      : worker_(worker), tokenizer_(tokenizer), max_prompt_bytes_(max_prompt_bytes) {}

  grpc::Status Prepare(grpc::ServerContext*, const v1::PrepareRequest* request,
                       v1::PrepareResponse* response) override {
    absl::StatusOr<store::Pattern> pattern = PatternFromProto(request->pattern());
    if (!pattern.ok()) return ToGrpcStatus(pattern.status());
    absl::StatusOr<PreparedPattern> prepared = worker_->Prepare(*pattern, request->budget());
    if (!prepared.ok()) return ToGrpcStatus(prepared.status());
    ToProto(*prepared, response);
    return grpc::Status::OK;
  }

  grpc::Status Status(grpc::ServerContext*, const v1::WorkerStatusRequest*,
                      v1::WorkerStatusResponse* response) override {
    ToProto(worker_->fingerprint(), worker_->Status(), response);
    return grpc::Status::OK;
  }

  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    return ToGrpcStatus(GenerateImpl(*ctx, *request, *writer));
  }

 private:
  absl::Status GenerateImpl(grpc::ServerContext& ctx, const v1::GenerateRequest& request,
                            grpc::ServerWriter<v1::GenerateResponse>& writer) {
    if (static_cast<int64_t>(request.prompt().size()) > max_prompt_bytes_) {
      return absl::InvalidArgumentError(absl::StrCat("the prompt has ", request.prompt().size(),
                                                     " bytes; the limit is ", max_prompt_bytes_));
    }
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer_->Encode(request.prompt(), true));
    ASSIGN_OR_RETURN(TextRequest text, FromProto(request));
    for (const std::string& s : text.stop) {
      if (s.empty()) return absl::InvalidArgumentError("a stop string is empty");
    }
    WorkRequest work;
    work.prompt.assign(ids.begin(), ids.end());
    work.task = text.task;
    work.options = text.options;
    work.deadline = Deadline(ctx);
    auto channel = std::make_shared<Channel>();
    // The scheduler thread only queues: a slow client never stalls a batch.
    work.on_token = [channel](int64_t token) {
      if (channel->cancelled) return false;
      std::lock_guard lock(channel->mu);
      channel->tokens.push_back(token);
      channel->cv.notify_all();
      return true;
    };
    // Stop strings are matched here, on the call's thread; the request stops
    // at the scheduler's next step (the text is cut at the stop string anyway).
    work.options.stop_requested = [channel](int64_t) { return channel->stopped.load(); };
    RETURN_IF_ERROR(worker_->Submit(std::move(work), [channel](absl::StatusOr<WorkResult> r) {
      std::lock_guard lock(channel->mu);
      channel->done = std::move(r);
      channel->cv.notify_all();
    }));

    tokenizer::TextStream stream(*tokenizer_, text.stop);
    int64_t completion_tokens = 0;
    while (true) {
      std::deque<int64_t> tokens;
      bool finished = false;
      {
        std::unique_lock lock(channel->mu);
        // Wake now and then to notice a client that went away.
        channel->cv.wait_for(lock, std::chrono::milliseconds(50),
                             [&] { return !channel->tokens.empty() || channel->done.has_value(); });
        tokens.swap(channel->tokens);
        finished = channel->done.has_value();
      }
      if (ctx.IsCancelled()) channel->cancelled = true;
      v1::GenerateResponse delta;
      for (int64_t t : tokens) {
        if (stream.stopped()) break;
        delta.add_token_ids(t);
        delta.mutable_text()->append(stream.Add(t));
        ++completion_tokens;
      }
      if (stream.stopped()) channel->stopped = true;
      if (!delta.text().empty() || delta.token_ids_size() > 0) {
        if (!writer.Write(delta)) channel->cancelled = true;
      }
      if (finished) break;
    }
    // The request has ended: its callbacks will not run again.
    absl::StatusOr<WorkResult> result = std::move(*channel->done);
    if (channel->cancelled) return absl::CancelledError("the client went away");
    RETURN_IF_ERROR(result.status());
    RETURN_IF_ERROR(stream.status());
    v1::GenerateResponse last;
    last.set_text(stream.Finish());
    last.set_done(true);
    last.set_finish_reason(stream.stopped() ? "stop"
                                            : FinishReasonName(result->generation.finish_reason));
    last.set_prompt_tokens(static_cast<int64_t>(ids.size()));
    last.set_completion_tokens(completion_tokens);
    last.set_time_to_first_token_seconds(result->time_to_first_token);
    writer.Write(last);
    return absl::OkStatus();
  }

  Worker* worker_;
  const tokenizer::Tokenizer* tokenizer_;
  int64_t max_prompt_bytes_;
};

}  // namespace

absl::Status WorkerServer::Options::Validate() const {
  if (address.empty() || max_message_bytes <= 0 || max_prompt_bytes <= 0) {
    return absl::InvalidArgumentError(
        "WorkerServer::Options: want an address and positive message and prompt limits");
  }
  return absl::OkStatus();
}

struct WorkerServer::Impl {
  std::unique_ptr<Service> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::string host;
  std::mutex mu;
  bool shut_down = false;
};

WorkerServer::WorkerServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
WorkerServer::~WorkerServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<WorkerServer>> WorkerServer::Start(
    const Options& options, Worker* worker, const tokenizer::Tokenizer* tokenizer) {
  RETURN_IF_ERROR(options.Validate());
  if (worker == nullptr || tokenizer == nullptr) {
    return absl::InvalidArgumentError("worker server: no worker or tokenizer");
  }
  auto impl = std::make_unique<Impl>();
  impl->service = std::make_unique<Service>(worker, tokenizer, options.max_prompt_bytes);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.address, grpc::InsecureServerCredentials(), &impl->port);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(impl->service.get());
  impl->server = builder.BuildAndStart();
  if (!impl->server || impl->port == 0) {
    return absl::UnavailableError(
        absl::StrCat("worker server: cannot listen on ", options.address));
  }
  impl->server->GetHealthCheckService()->SetServingStatus(true);
  // Kubernetes' gRPC probes ask for the service by name.
  impl->server->GetHealthCheckService()->SetServingStatus("premoe.v1.Worker", true);
  impl->host = rpc::DialableHost(options.address);
  PREMOE_LOG_INFO("worker serving on %s:%d", impl->host, impl->port);
  return std::unique_ptr<WorkerServer>(new WorkerServer(std::move(impl)));
}

int WorkerServer::port() const { return impl_->port; }

std::string WorkerServer::address() const { return absl::StrCat(impl_->host, ":", impl_->port); }

void WorkerServer::Shutdown() {
  std::lock_guard lock(impl_->mu);
  if (impl_->shut_down) return;
  impl_->shut_down = true;
  impl_->server->GetHealthCheckService()->SetServingStatus(false);
  // Running Generate calls notice the cancellation within 50 ms.
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  impl_->server->Wait();
  impl_->server.reset();
}

}  // namespace premoe::worker
