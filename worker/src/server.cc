// The premoe.v1.Worker gRPC service over a Worker.
//
// Callback API throughout; no handler blocks a gRPC thread. Prepare loads
// experts, so it runs on the server's executor.
// Generate is a ServerWriteReactor: it admits its request with
// Worker::Submit and is then fed by the worker's scheduler thread, whose
// callbacks only queue tokens and start a write when none is in flight; the
// rest of the queue is written from OnWriteDone, one write at a time. A
// client that goes away (OnCancel, or a write that fails) makes the next
// on_token return false, so the worker ends the request CANCELLED at its
// next step.
#include "premoe/worker/server.h"

#include <atomic>
#include <chrono>
#include <deque>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "premoe/common/executor.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"
#include "premoe/common/utf8.h"
#include "premoe/proto/auth.h"
#include "premoe/proto/grpc_edge.h"
#include "premoe/tokenizer/text_stream.h"
#include "premoe/v1/worker.grpc.pb.h"
#include "wire.h"

namespace premoe::worker {
namespace {

using rpc::ToGrpcStatus;

std::optional<std::chrono::steady_clock::time_point> Deadline(
    const grpc::CallbackServerContext& ctx) {
  const auto deadline = ctx.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return std::nullopt;
  return std::chrono::steady_clock::now() + (deadline - std::chrono::system_clock::now());
}

// One Generate stream. Lifetime: two parties hold it, gRPC (until OnDone,
// which follows Finish) and, once Submit has admitted the request, the
// worker (until its on_done); whichever lets go last deletes it, so the
// worker's callbacks never outlive the object they call into.
class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateReactor(Worker* worker, const tokenizer::Tokenizer* tokenizer, int64_t max_prompt_bytes,
                  grpc::CallbackServerContext* ctx, const v1::GenerateRequest& request,
                  const absl::Status& allowed)
      : tokenizer_(tokenizer), request_id_(RequestId(*ctx)) {
    absl::Status admitted = allowed.ok() ? Admit(worker, max_prompt_bytes, *ctx, request) : allowed;
    if (!admitted.ok()) {
      common::ScopedRequestId id(request_id_);
      PREMOE_LOG_DEBUG("Generate refused: %s", admitted.ToString());
      absl::MutexLock lock(&mu_);
      FinishLocked(ToGrpcStatus(admitted));
    }
  }

  // The caller's x-request-id (printable ASCII, at most 128), else "".
  static std::string RequestId(const grpc::CallbackServerContext& ctx) {
    auto it = ctx.client_metadata().find("x-request-id");
    if (it == ctx.client_metadata().end() || it->second.size() > 128) return "";
    std::string id(it->second.data(), it->second.size());
    for (char c : id) {
      if (c <= 0x20 || c >= 0x7f) return "";
    }
    return id;
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {  // the client went away
      cancelled_ = true;
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    PumpLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
  }

  void OnDone() override { Release(); }

 private:
  // Encodes the prompt and hands the request to the worker, which refuses
  // at once (the error is returned) or takes it and ends it with on_done.
  absl::Status Admit(Worker* worker, int64_t max_prompt_bytes,
                     const grpc::CallbackServerContext& ctx, const v1::GenerateRequest& request) {
    if (static_cast<int64_t>(request.prompt().size()) > max_prompt_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("the prompt has ", request.prompt().size(),
                                                     " bytes; the limit is ", max_prompt_bytes));
    }
    ASSIGN_OR_RETURN(
        std::vector<int32_t> ids,
        tokenizer_->Encode(request.prompt(), /*add_special_tokens=*/!request.templated()));
    ASSIGN_OR_RETURN(TextRequest text, FromProto(request));
    for (const std::string& s : text.stop) {
      if (s.empty()) return absl::InvalidArgumentError("a stop string is empty");
    }
    prompt_tokens_ = static_cast<int64_t>(ids.size());
    {
      absl::MutexLock lock(&mu_);
      stream_.emplace(*tokenizer_, text.stop);
      ++holders_;  // the worker's, from here until on_done
    }
    WorkRequest work;
    work.prompt.assign(ids.begin(), ids.end());
    work.task = text.task;
    work.options = text.options;
    work.fit_context = text.fit_context;
    work.deadline = Deadline(ctx);
    // On the scheduler thread: queue, start a write if none is in flight,
    // never wait.
    work.on_token = [this](int64_t token) {
      absl::MutexLock lock(&mu_);
      if (cancelled_) return false;
      pending_.push_back(token);
      PumpLocked();
      return true;
    };
    // Stop strings are matched as the text is decoded; the request stops at
    // the scheduler's next step (the text is cut at the stop string anyway).
    work.options.stop_requested = [this](int64_t) { return stopped_.load(); };
    absl::Status submitted = worker->Submit(std::move(work), [this](absl::StatusOr<WorkResult> r) {
      {
        common::ScopedRequestId id(request_id_);
        if (r.ok()) {
          PREMOE_LOG_DEBUG("Generate done: %d prompt tokens, %d generated", prompt_tokens_,
                           r->generation.tokens.size());
        } else if (!absl::IsCancelled(r.status())) {
          PREMOE_LOG_WARN("Generate failed: %s", r.status().ToString());
        }
      }
      {
        absl::MutexLock lock(&mu_);
        result_ = std::move(r);
        PumpLocked();
      }
      Release();
    });
    if (!submitted.ok()) {
      absl::MutexLock lock(&mu_);
      --holders_;  // refused: on_done will never come
    }
    return submitted;
  }

  // Lets go of one holder's share; the last one deletes the reactor.
  void Release() {
    bool last = false;
    {
      absl::MutexLock lock(&mu_);
      last = --holders_ == 0;
    }
    if (last) delete this;
  }

  // Starts the next write: the tokens not yet sent, as one message, else,
  // once the request has ended, the last message or the error.
  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_) return;
    if (!pending_.empty()) {
      v1::GenerateResponse& delta = message_;
      delta.Clear();
      for (int64_t t : pending_) {
        if (stream_->stopped()) break;
        delta.add_token_ids(t);
        delta.mutable_text()->append(stream_->Add(t));
        ++completion_tokens_;
      }
      pending_.clear();
      if (stream_->stopped()) stopped_ = true;
      if (!delta.text().empty() || delta.token_ids_size() > 0) {
        writing_ = true;
        StartWrite(&message_);
        return;
      }
    }
    if (!result_.has_value()) return;
    if (!result_->ok()) {
      FinishLocked(ToGrpcStatus(result_->status()));
      return;
    }
    if (!stream_->status().ok()) {
      FinishLocked(ToGrpcStatus(stream_->status()));
      return;
    }
    v1::GenerateResponse& last = message_;
    last.Clear();
    last.set_text(stream_->Finish());
    last.set_done(true);
    last.set_finish_reason(
        stream_->stopped() ? "stop" : FinishReasonName((*result_)->generation.finish_reason));
    last.set_prompt_tokens(prompt_tokens_);
    last.set_completion_tokens(completion_tokens_);
    last.set_time_to_first_token_seconds((*result_)->time_to_first_token);
    finished_ = true;
    StartWriteAndFinish(&message_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  const tokenizer::Tokenizer* tokenizer_;
  int64_t prompt_tokens_ = 0;
  const std::string request_id_;
  // Read by the scheduler after each step, without the lock.
  std::atomic<bool> stopped_{false};
  absl::Mutex mu_;
  int holders_ ABSL_GUARDED_BY(mu_) = 1;  // gRPC's
  std::optional<tokenizer::TextStream> stream_ ABSL_GUARDED_BY(mu_);
  std::deque<int64_t> pending_ ABSL_GUARDED_BY(mu_);  // generated, not yet written
  std::optional<absl::StatusOr<WorkResult>> result_ ABSL_GUARDED_BY(mu_);
  int64_t completion_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  v1::GenerateResponse message_ ABSL_GUARDED_BY(mu_);  // being written while writing_
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish (or StartWriteAndFinish) called
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

class Service final : public v1::Worker::CallbackService {
 public:
  Service(Worker* worker, const tokenizer::Tokenizer* tokenizer, int64_t max_prompt_bytes,
          common::Executor* executor, const rpc::Authenticator* auth)
      : worker_(worker),
        tokenizer_(tokenizer),
        max_prompt_bytes_(max_prompt_bytes),
        executor_(executor),
        auth_(auth) {}

  grpc::ServerUnaryReactor* Prepare(grpc::CallbackServerContext* ctx,
                                    const v1::PrepareRequest* request,
                                    v1::PrepareResponse* response) override {
    return Run(ctx, rpc::Scope::kAdmin, "Prepare", [=, this]() -> absl::Status {
      ASSIGN_OR_RETURN(store::Pattern pattern, store::FromProto(request->pattern()));
      RETURN_IF_ERROR(common::CheckUtf8(request->budget(), "budget"));
      ASSIGN_OR_RETURN(PreparedPattern prepared, worker_->Prepare(pattern, request->budget()));
      ToProto(prepared, response);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* ctx, const v1::WorkerStatusRequest*,
                                   v1::WorkerStatusResponse* response) override {
    // Here, not on the executor: Status only copies counters under short
    // locks (the cache reads experts outside its lock), and routers poll it
    // every 500 ms, so it must not queue behind a Prepare that loads for
    // minutes.
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    const absl::Status allowed = rpc::Allow(auth_, *ctx, rpc::Scope::kApi, kWho, "Status");
    if (allowed.ok()) ToProto(worker_->fingerprint(), worker_->Status(), response);
    reactor->Finish(ToGrpcStatus(allowed));
    return reactor;
  }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) override {
    return new GenerateReactor(worker_, tokenizer_, max_prompt_bytes_, ctx, *request,
                               rpc::Allow(auth_, *ctx, rpc::Scope::kApi, kWho, "Generate"));
  }

 private:
  // Runs `body` on the executor, if the caller's key allows `scope`, and
  // finishes the call with its status.
  template <typename Body>
  grpc::ServerUnaryReactor* Run(grpc::CallbackServerContext* ctx, rpc::Scope scope,
                                absl::string_view method, Body body) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    if (absl::Status allowed = rpc::Allow(auth_, *ctx, scope, kWho, method); !allowed.ok()) {
      reactor->Finish(ToGrpcStatus(allowed));
      return reactor;
    }
    absl::Status queued = executor_->Submit(
        [reactor, body = std::move(body)]() mutable { reactor->Finish(ToGrpcStatus(body())); });
    if (!queued.ok()) reactor->Finish(ToGrpcStatus(queued));
    return reactor;
  }

  static constexpr char kWho[] = "worker server";

  Worker* worker_;
  const tokenizer::Tokenizer* tokenizer_;
  const int64_t max_prompt_bytes_;
  common::Executor* executor_;
  const rpc::Authenticator* auth_;
};

}  // namespace

absl::Status WorkerServer::Options::Validate() const {
  if (address.empty() || max_message_bytes <= 0 || max_prompt_bytes <= 0 || executor_threads < 1) {
    return absl::InvalidArgumentError(
        "WorkerServer::Options: want an address, positive message and prompt limits and "
        "executor_threads >= 1");
  }
  return absl::OkStatus();
}

struct WorkerServer::Impl {
  // Shutdown stops the server (no call runs any more), then the executor
  // (runs what is queued), so the worker may go once it returns.
  absl::Mutex mu;
  std::unique_ptr<common::Executor> executor ABSL_GUARDED_BY(mu);
  std::shared_ptr<const rpc::Authenticator> auth;  // the service's, kept alive
  std::unique_ptr<Service> service;
  std::unique_ptr<rpc::Server> server;
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
  ASSIGN_OR_RETURN(std::unique_ptr<common::Executor> executor,
                   common::Executor::Create(
                       {.name = "worker server executor", .threads = options.executor_threads}));
  impl->auth = options.auth;
  impl->service = std::make_unique<Service>(worker, tokenizer, options.max_prompt_bytes,
                                            executor.get(), options.auth.get());
  {
    absl::MutexLock lock(&impl->mu);
    impl->executor = std::move(executor);
  }
  rpc::ServerOptions so;
  so.who = "worker server";
  so.address = options.address;
  so.max_receive_bytes = options.max_message_bytes;
  so.max_send_bytes = options.max_message_bytes;
  so.serving = {"premoe.v1.Worker"};
  so.tls = options.tls;
  ASSIGN_OR_RETURN(impl->server, rpc::Server::Start(so, {impl->service.get()}));
  PREMOE_LOG_INFO("worker serving on %s", impl->server->address());
  return std::unique_ptr<WorkerServer>(new WorkerServer(std::move(impl)));
}

int WorkerServer::port() const { return impl_->server->port(); }

std::string WorkerServer::address() const { return impl_->server->address(); }

void WorkerServer::Shutdown() {
  // Streams still running after the grace are cancelled; their requests
  // end CANCELLED at the worker's next step.
  absl::MutexLock lock(&impl_->mu);
  impl_->server->Shutdown(std::chrono::milliseconds(200));
  impl_->executor.reset();
}

}  // namespace premoe::worker
