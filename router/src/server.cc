#include "premoe/router/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"
#include "premoe/proto/grpc_edge.h"
#include "premoe/v1/inference.grpc.pb.h"
#include "router/src/wire.h"

namespace premoe::router {
namespace {

constexpr char kServiceName[] = "premoe.v1.Inference";

class Service final : public v1::Inference::Service {
 public:
  Service(Router* router, int64_t max_request_bytes)
      : router_(router), max_request_bytes_(max_request_bytes) {
    watcher_ = std::thread([this] { Watch(); });
  }
  ~Service() override {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    watcher_.join();
  }

  grpc::Status Generate(grpc::ServerContext* ctx, const v1::InferenceRequest* wire,
                        grpc::ServerWriter<v1::InferenceResponse>* writer) override {
    if (absl::Status s = CheckSize(*wire); !s.ok()) return rpc::ToGrpcStatus(s);
    absl::StatusOr<InferenceRequest> request = FromProto(*wire);
    if (!request.ok()) return rpc::ToGrpcStatus(request.status());
    if (ctx->deadline() != std::chrono::system_clock::time_point::max()) {
      request->deadline = ctx->deadline();
    }
    worker::CallCanceller canceller;
    request->canceller = &canceller;
    Register(ctx, &canceller);
    bool write_failed = false;
    absl::StatusOr<InferenceResult> result =
        router_->Generate(*request, [&](const std::string& delta) {
          v1::InferenceResponse m;
          m.set_text(delta);
          if (!write_failed && !writer->Write(m)) {
            write_failed = true;
            canceller.Cancel();  // the caller is gone
          }
        });
    Unregister(ctx);
    if (!result.ok()) return rpc::ToGrpcStatus(result.status());
    v1::InferenceResponse last;
    ToProto(*result, &last);
    writer->Write(last);
    return grpc::Status::OK;
  }

  grpc::Status Match(grpc::ServerContext*, const v1::MatchRequest* wire,
                     v1::MatchResponse* response) override {
    if (absl::Status s = CheckSize(*wire); !s.ok()) return rpc::ToGrpcStatus(s);
    if (wire->k() < 0 || wire->k() > 100) {
      return rpc::ToGrpcStatus(
          absl::InvalidArgumentError(absl::StrCat("k is ", wire->k(), "; want 0 (3) to 100")));
    }
    std::vector<ChatMessage> messages;
    for (const v1::ChatMessage& m : wire->messages()) messages.push_back({m.role(), m.content()});
    absl::StatusOr<MatchResult> r =
        router_->Match(wire->prompt(), messages, wire->k() == 0 ? 3 : wire->k());
    if (!r.ok()) return rpc::ToGrpcStatus(r.status());
    ToProto(*r, response);
    return grpc::Status::OK;
  }

 private:
  absl::Status CheckSize(const google::protobuf::Message& m) const {
    const int64_t size = static_cast<int64_t>(m.ByteSizeLong());
    if (size <= max_request_bytes_) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("the request is ", size, " bytes; the limit is ", max_request_bytes_));
  }

  void Register(grpc::ServerContext* ctx, worker::CallCanceller* c) {
    std::lock_guard lock(mu_);
    calls_[ctx] = c;
  }
  void Unregister(grpc::ServerContext* ctx) {
    std::lock_guard lock(mu_);
    calls_.erase(ctx);
  }

  // The sync API has no cancellation callback: poll the running calls so a
  // caller that hangs up stops its worker's decoding too.
  void Watch() {
    std::unique_lock lock(mu_);
    while (!stopping_) {
      cv_.wait_for(lock, std::chrono::milliseconds(50), [&] { return stopping_; });
      for (auto& [ctx, canceller] : calls_) {
        if (ctx->IsCancelled()) canceller->Cancel();
      }
    }
  }

  Router* router_;
  const int64_t max_request_bytes_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::map<grpc::ServerContext*, worker::CallCanceller*> calls_;
  std::thread watcher_;
};

}  // namespace

absl::Status InferenceServer::Options::Validate() const {
  if (address.empty() || max_request_bytes <= 0) {
    return absl::InvalidArgumentError(
        "InferenceServer::Options: want an address and a positive request limit");
  }
  return absl::OkStatus();
}

struct InferenceServer::Impl {
  Router* router = nullptr;
  std::unique_ptr<Service> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::string host;
  std::mutex mu;
  std::condition_variable cv;
  bool shut_down = false;
  std::thread health;  // mirrors Router::Ready into the health service

  void TrackHealth() {
    std::unique_lock lock(mu);
    bool last = false;
    bool first = true;
    while (!shut_down) {
      const bool ready = router->Ready();
      if (first || ready != last) {
        server->GetHealthCheckService()->SetServingStatus(kServiceName, ready);
        PREMOE_LOG_INFO("router %s", ready ? "ready" : "not ready (no patterns or no worker)");
      }
      first = false;
      last = ready;
      cv.wait_for(lock, std::chrono::seconds(1), [&] { return shut_down; });
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
  impl->service = std::make_unique<Service>(router, options.max_request_bytes);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.address, grpc::InsecureServerCredentials(), &impl->port);
  // gRPC's own limit sits above ours, so an oversized request gets our
  // INVALID_ARGUMENT naming the limit rather than a transport error.
  builder.SetMaxReceiveMessageSize(options.max_request_bytes * 2);
  builder.RegisterService(impl->service.get());
  impl->server = builder.BuildAndStart();
  if (!impl->server || impl->port == 0) {
    return absl::UnavailableError(
        absl::StrCat("inference server: cannot listen on ", options.address));
  }
  impl->server->GetHealthCheckService()->SetServingStatus(true);
  impl->host = rpc::DialableHost(options.address);
  Impl* raw = impl.get();
  impl->health = std::thread([raw] { raw->TrackHealth(); });
  PREMOE_LOG_INFO("router serving premoe.v1.Inference on %s:%d", impl->host, impl->port);
  return std::unique_ptr<InferenceServer>(new InferenceServer(std::move(impl)));
}

int InferenceServer::port() const { return impl_->port; }
std::string InferenceServer::address() const { return absl::StrCat(impl_->host, ":", impl_->port); }

void InferenceServer::Shutdown() {
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->shut_down) return;
    impl_->shut_down = true;
  }
  impl_->cv.notify_all();
  impl_->health.join();
  impl_->server->GetHealthCheckService()->SetServingStatus(false);
  // Streams in flight get a moment, then are cancelled (the watcher passes
  // that on to their workers).
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  impl_->server->Wait();
  impl_->server.reset();
  impl_->service.reset();
}

}  // namespace premoe::router
