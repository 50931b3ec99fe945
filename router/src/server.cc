// The premoe.v1.Inference gRPC service over a Router.
//
// Callback API throughout; no handler blocks a gRPC thread. Generate is a
// ServerWriteReactor over Router::GenerateAsync: the router's texts are
// queued and written one message at a time (what piles up while a write is
// in flight goes out as one message). OnCancel, or a write that fails,
// cancels the request's CallCanceller, which cancels the worker call and so
// the worker's request. Match (a probe forward pass) runs on the server's
// executor.
#include "premoe/router/server.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "premoe/common/executor.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"
#include "premoe/common/utf8.h"
#include "premoe/proto/auth.h"
#include "premoe/proto/grpc_edge.h"
#include "premoe/v1/inference.grpc.pb.h"
#include "router/src/wire.h"

namespace premoe::router {
namespace {

constexpr char kServiceName[] = "premoe.v1.Inference";

using rpc::ToGrpcStatus;

absl::Status CheckSize(const google::protobuf::Message& m, int64_t limit) {
  const int64_t size = static_cast<int64_t>(m.ByteSizeLong());
  if (size <= limit) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("the request is ", size, " bytes; the limit is ", limit));
}

// One Generate stream. Lifetime: gRPC holds it until OnDone (after
// Finish), and the router, once GenerateAsync has been called, until its
// on_done; whichever lets go last deletes it. The canceller lives here, so
// it outlives the router's request as Router::GenerateAsync requires.
class GenerateReactor final : public grpc::ServerWriteReactor<v1::InferenceResponse> {
 public:
  GenerateReactor(Router* router, int64_t max_request_bytes, grpc::CallbackServerContext* ctx,
                  const v1::InferenceRequest& wire, const absl::Status& allowed) {
    absl::StatusOr<InferenceRequest> request =
        allowed.ok() ? Parse(max_request_bytes, *ctx, wire) : allowed;
    if (!request.ok()) {
      absl::MutexLock lock(&mu_);
      FinishLocked(ToGrpcStatus(request.status()));
      return;
    }
    request->canceller = &canceller_;
    request_id_ = RequestId(*ctx);
    request->request_id = request_id_;
    ctx->AddInitialMetadata("x-request-id", request_id_);
    start_ = std::chrono::steady_clock::now();
    {
      absl::MutexLock lock(&mu_);
      ++holders_;  // the router's, until on_done
    }
    router->GenerateAsync(
        *std::move(request),
        [this](const std::string& text) {
          absl::MutexLock lock(&mu_);
          pending_ += text;
          PumpLocked();
        },
        [this](absl::StatusOr<InferenceResult> result) {
          Log(result);
          {
            absl::MutexLock lock(&mu_);
            result_ = std::move(result);
            PumpLocked();
          }
          Release();
        });
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (ok) {
        PumpLocked();
        return;
      }
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
    }
    canceller_.Cancel();  // the caller is gone
  }

  void OnCancel() override {
    {
      absl::MutexLock lock(&mu_);
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
    }
    // Outside the lock: the router's callbacks take it.
    canceller_.Cancel();
  }

  void OnDone() override { Release(); }

 private:
  static absl::StatusOr<InferenceRequest> Parse(int64_t max_request_bytes,
                                                const grpc::CallbackServerContext& ctx,
                                                const v1::InferenceRequest& wire) {
    RETURN_IF_ERROR(CheckSize(wire, max_request_bytes));
    ASSIGN_OR_RETURN(InferenceRequest request, FromProto(wire));
    if (ctx.deadline() != std::chrono::system_clock::time_point::max()) {
      request.deadline = ctx.deadline();
    }
    return request;
  }

  // The caller's x-request-id (printable ASCII, at most 128), else a new one.
  static std::string RequestId(const grpc::CallbackServerContext& ctx) {
    auto it = ctx.client_metadata().find("x-request-id");
    if (it != ctx.client_metadata().end() && !it->second.empty() && it->second.size() <= 128 &&
        std::all_of(it->second.begin(), it->second.end(),
                    [](char c) { return c > 0x20 && c < 0x7f; })) {
      return std::string(it->second.data(), it->second.size());
    }
    return common::NewRequestId();
  }

  void Log(const absl::StatusOr<InferenceResult>& result) const {
    common::ScopedRequestId id(request_id_);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    if (result.ok()) {
      PREMOE_LOG_INFO("grpc Generate OK %.3f s %s %s, %d tokens", seconds, result->route.decision,
                      result->route.task, result->text.completion_tokens);
    } else if (absl::IsInternal(result.status()) || absl::IsUnknown(result.status())) {
      PREMOE_LOG_WARN("grpc Generate %.3f s %s", seconds, result.status().ToString());
    } else {
      PREMOE_LOG_INFO("grpc Generate %.3f s %s", seconds, result.status().ToString());
    }
  }

  void Release() {
    bool last = false;
    {
      absl::MutexLock lock(&mu_);
      last = --holders_ == 0;
    }
    if (last) delete this;
  }

  // Starts the next write: the text not yet sent, else, once the request
  // has ended, the last message or the error.
  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_) return;
    if (!pending_.empty()) {
      message_.Clear();
      message_.set_text(std::move(pending_));
      pending_.clear();
      writing_ = true;
      StartWrite(&message_);
      return;
    }
    if (!result_.has_value()) return;
    if (!result_->ok()) {
      FinishLocked(ToGrpcStatus(result_->status()));
      return;
    }
    message_.Clear();
    ToProto(**result_, &message_);
    finished_ = true;
    StartWriteAndFinish(&message_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  worker::CallCanceller canceller_;
  std::string request_id_;
  std::chrono::steady_clock::time_point start_;
  absl::Mutex mu_;
  int holders_ ABSL_GUARDED_BY(mu_) = 1;      // gRPC's
  std::string pending_ ABSL_GUARDED_BY(mu_);  // text not yet written
  std::optional<absl::StatusOr<InferenceResult>> result_ ABSL_GUARDED_BY(mu_);
  v1::InferenceResponse message_ ABSL_GUARDED_BY(mu_);  // being written while writing_
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

class Service final : public v1::Inference::CallbackService {
 public:
  Service(Router* router, int64_t max_request_bytes, common::Executor* executor,
          const rpc::Authenticator* auth)
      : router_(router), max_request_bytes_(max_request_bytes), executor_(executor), auth_(auth) {}

  grpc::ServerWriteReactor<v1::InferenceResponse>* Generate(
      grpc::CallbackServerContext* ctx, const v1::InferenceRequest* wire) override {
    return new GenerateReactor(router_, max_request_bytes_, ctx, *wire,
                               rpc::Allow(auth_, *ctx, rpc::Scope::kApi, kWho, "Generate"));
  }

  grpc::ServerUnaryReactor* Match(grpc::CallbackServerContext* ctx, const v1::MatchRequest* wire,
                                  v1::MatchResponse* response) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    if (absl::Status allowed = rpc::Allow(auth_, *ctx, rpc::Scope::kApi, kWho, "Match");
        !allowed.ok()) {
      reactor->Finish(ToGrpcStatus(allowed));
      return reactor;
    }
    absl::Status queued = executor_->Submit([this, reactor, wire, response] {
      reactor->Finish(ToGrpcStatus(MatchImpl(*wire, response)));
    });
    if (!queued.ok()) reactor->Finish(ToGrpcStatus(queued));
    return reactor;
  }

 private:
  absl::Status MatchImpl(const v1::MatchRequest& wire, v1::MatchResponse* response) {
    RETURN_IF_ERROR(CheckSize(wire, max_request_bytes_));
    if (wire.k() < 0 || wire.k() > 100) {
      return absl::InvalidArgumentError(absl::StrCat("k is ", wire.k(), "; want 0 (3) to 100"));
    }
    RETURN_IF_ERROR(common::CheckUtf8(wire.prompt(), "prompt"));
    ASSIGN_OR_RETURN(std::vector<ChatMessage> messages, FromProto(wire.messages()));
    ASSIGN_OR_RETURN(MatchResult r,
                     router_->Match(wire.prompt(), messages, wire.k() == 0 ? 3 : wire.k()));
    ToProto(r, response);
    return absl::OkStatus();
  }

  static constexpr char kWho[] = "inference server";

  Router* router_;
  const int64_t max_request_bytes_;
  common::Executor* executor_;
  const rpc::Authenticator* auth_;
};

}  // namespace

absl::Status InferenceServer::Options::Validate() const {
  if (address.empty() || max_request_bytes <= 0 || executor_threads < 1) {
    return absl::InvalidArgumentError(
        "InferenceServer::Options: want an address, a positive request limit and "
        "executor_threads >= 1");
  }
  return absl::OkStatus();
}

struct InferenceServer::Impl {
  Router* router = nullptr;
  // Shutdown stops the server (no call runs any more), then the executor
  // (runs what is queued).
  std::unique_ptr<common::Executor> executor;
  std::shared_ptr<const rpc::Authenticator> auth;  // the service's, kept alive
  std::unique_ptr<Service> service;
  std::unique_ptr<rpc::Server> server;

  absl::Mutex mu;
  bool shut_down ABSL_GUARDED_BY(mu) = false;
  std::thread health;  // mirrors Router::Ready into the health service

  void TrackHealth() {
    bool last = false;
    for (bool first = true;; first = false) {
      // Readiness() asks the store and the pool: not under the lock.
      const absl::Status readiness = router->Readiness();
      const bool ready = readiness.ok();
      if (first || ready != last) {
        server->SetServing(kServiceName, ready);
        if (ready) {
          PREMOE_LOG_INFO("router ready");
        } else {
          PREMOE_LOG_WARN("router not ready: %s", readiness.message());
        }
      }
      last = ready;
      absl::MutexLock lock(&mu);
      if (mu.AwaitWithTimeout(absl::Condition(&shut_down), absl::Seconds(1))) return;
    }
  }
};

InferenceServer::InferenceServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
InferenceServer::~InferenceServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<InferenceServer>> InferenceServer::Start(const Options& options,
                                                                        Router* router) {
  RETURN_IF_ERROR(options.Validate());
  if (router == nullptr) return absl::InvalidArgumentError("inference server: no router");
  auto impl = std::make_unique<Impl>();
  impl->router = router;
  ASSIGN_OR_RETURN(impl->executor, common::Executor::Create({.name = "inference server executor",
                                                             .threads = options.executor_threads}));
  impl->service = std::make_unique<Service>(router, options.max_request_bytes, impl->executor.get(),
                                            options.auth.get());
  impl->auth = options.auth;
  rpc::ServerOptions so;
  so.who = "inference server";
  so.address = options.address;
  // gRPC's own limit sits above ours, so an oversized request gets our
  // INVALID_ARGUMENT naming the limit rather than a transport error.
  so.max_receive_bytes = options.max_request_bytes * 2;
  so.reflection = true;
  so.tls = options.tls;
  ASSIGN_OR_RETURN(impl->server, rpc::Server::Start(so, {impl->service.get()}));
  Impl* raw = impl.get();
  impl->health = std::thread([raw] { raw->TrackHealth(); });
  PREMOE_LOG_INFO("router serving premoe.v1.Inference on %s", impl->server->address());
  return std::unique_ptr<InferenceServer>(new InferenceServer(std::move(impl)));
}

int InferenceServer::port() const { return impl_->server->port(); }
std::string InferenceServer::address() const { return impl_->server->address(); }

void InferenceServer::Shutdown() {
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->shut_down) return;
    impl_->shut_down = true;
  }
  impl_->health.join();
  // Streams in flight get a moment, then are cancelled (OnCancel passes that
  // on to their workers).
  impl_->server->Shutdown(std::chrono::milliseconds(500));
  impl_->executor.reset();
}

}  // namespace premoe::router
