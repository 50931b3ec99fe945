// The premoe.v1.PatternStore gRPC service over a PatternStore.
//
// Callback API throughout. Unary handlers return a reactor at once and run
// the store call on the server's executor: a Put fsyncs and a Search scans
// the index, and gRPC's callback threads must stay free to drive I/O. Watch
// is a ServerWriteReactor fed by a store watch: the store's watch thread
// pushes events into a small queue and waits (backpressure) when the client
// reads slowly; the reactor drains it with one write in flight at a time.
#include "premoe/store/server.h"

#include <grpcpp/grpcpp.h>

#include <deque>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "premoe/common/executor.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"
#include "premoe/metrics/metrics.h"
#include "premoe/proto/auth.h"
#include "premoe/proto/grpc_edge.h"
#include "premoe/store/proto_convert.h"
#include "premoe/v1/store.grpc.pb.h"

namespace premoe::store {
namespace {

using rpc::ToGrpcStatus;

using common::Executor;

// Runs `task` on `executor`, or here when its queue is full: for work that
// must happen (a reactor's clean-up), not for requests, which are refused.
void RunSoon(Executor* executor, absl::AnyInvocable<void()> task) {
  auto shared = std::make_shared<absl::AnyInvocable<void()>>(std::move(task));
  if (!executor->Submit([shared] { (*shared)(); }).ok()) (*shared)();
}

// One Watch stream. Lifetime: gRPC calls OnDone exactly once, after Finish;
// the object deletes itself there (on the executor, since stopping the store
// watch joins its thread).
class WatchReactor final : public grpc::ServerWriteReactor<v1::ChangeEvent> {
 public:
  // `on_done` runs once the stream has ended (the caller's count of open
  // streams).
  WatchReactor(PatternStore* store, Executor* executor, std::uint64_t since,
               const absl::Status& allowed, absl::AnyInvocable<void()> on_done)
      : executor_(executor), on_done_(std::move(on_done)) {
    absl::StatusOr<std::unique_ptr<WatchHandle>> handle =
        allowed.ok()
            ? store->Watch(since,
                           [this](const absl::StatusOr<ChangeEvent>& e) { return OnChange(e); })
            : absl::StatusOr<std::unique_ptr<WatchHandle>>(allowed);
    absl::MutexLock lock(&mu_);
    if (!handle.ok()) {
      FinishLocked(ToGrpcStatus(handle.status()));
      return;
    }
    handle_ = std::move(handle).value();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    queue_.pop_front();
    writing_ = false;
    if (!ok) {  // the client went away
      done_ = true;
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "watch stream broken"));
      return;
    }
    PumpLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    done_ = true;
    FinishLocked(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    RunSoon(executor_, [this] {
      std::unique_ptr<WatchHandle> handle;
      {
        absl::MutexLock lock(&mu_);
        done_ = true;
        handle = std::move(handle_);
      }
      handle.reset();  // joins the store's watch thread
      if (on_done_) on_done_();
      delete this;
    });
  }

 private:
  static constexpr std::size_t kMaxQueued = 256;

  bool DoneOrRoom() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return done_ || queue_.size() < kMaxQueued;
  }

  // On the store's watch thread.
  bool OnChange(const absl::StatusOr<ChangeEvent>& event) {
    absl::MutexLock lock(&mu_);
    if (!event.ok()) {
      final_status_ = ToGrpcStatus(event.status());
      finish_pending_ = true;
      PumpLocked();
      return false;
    }
    // Backpressure: the store's watch thread (not a gRPC thread) waits for
    // a slow reader.
    mu_.Await(absl::Condition(this, &WatchReactor::DoneOrRoom));
    if (done_) return false;
    ToProto(*event, &queue_.emplace_back());
    PumpLocked();
    return true;
  }

  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_) return;
    if (!queue_.empty()) {
      writing_ = true;
      StartWrite(&queue_.front());
    } else if (finish_pending_) {
      FinishLocked(final_status_);
    }
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  Executor* executor_;
  absl::AnyInvocable<void()> on_done_;
  mutable absl::Mutex mu_;
  // front() is being written while writing_
  std::deque<v1::ChangeEvent> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_pending_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<WatchHandle> handle_ ABSL_GUARDED_BY(mu_);
};

class Service final : public v1::PatternStore::CallbackService {
 public:
  Service(PatternStore* store, Executor* executor, const rpc::Authenticator* auth,
          std::int32_t max_watches_per_client)
      : store_(store),
        executor_(executor),
        auth_(auth),
        max_watches_per_client_(max_watches_per_client) {}

  grpc::ServerUnaryReactor* Put(grpc::CallbackServerContext* ctx, const v1::PutRequest* request,
                                v1::PutResponse* response) override {
    return Run(ctx, rpc::Scope::kAdmin, "Put", [=, this]() -> absl::Status {
      ASSIGN_OR_RETURN(Pattern pattern, FromProto(request->pattern()));
      ASSIGN_OR_RETURN(PutResult result, store_->Put(pattern));
      response->set_id(result.id);
      response->set_version(result.version);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx, const v1::GetRequest* request,
                                v1::GetResponse* response) override {
    return Run(ctx, rpc::Scope::kApi, "Get", [=, this]() -> absl::Status {
      absl::StatusOr<Pattern> pattern;
      switch (request->key_case()) {
        case v1::GetRequest::kId:
          pattern = store_->Get(request->id());
          break;
        case v1::GetRequest::kTaskName:
          pattern = store_->GetByTask(request->task_name());
          break;
        default:
          return absl::InvalidArgumentError("Get needs an id or a task name");
      }
      RETURN_IF_ERROR(pattern.status());
      ToProto(*pattern, response->mutable_pattern());
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* ctx, const v1::ListRequest* request,
                                 v1::ListResponse* response) override {
    return Run(ctx, rpc::Scope::kApi, "List", [=, this]() -> absl::Status {
      ASSIGN_OR_RETURN(ListPage page, store_->List({request->page_size(), request->page_token()}));
      for (const PatternSummary& s : page.patterns) ToProto(s, response->add_patterns());
      response->set_next_page_token(page.next_page_token);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx,
                                   const v1::DeleteRequest* request,
                                   v1::DeleteResponse* response) override {
    return Run(ctx, rpc::Scope::kAdmin, "Delete", [=, this]() -> absl::Status {
      ASSIGN_OR_RETURN(std::uint64_t version, store_->Delete(request->id()));
      response->set_version(version);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* Search(grpc::CallbackServerContext* ctx,
                                   const v1::SearchRequest* request,
                                   v1::SearchResponse* response) override {
    return Run(ctx, rpc::Scope::kApi, "Search", [=, this]() -> absl::Status {
      ASSIGN_OR_RETURN(Voting voting, FromProto(request->voting()));
      SearchOptions options{request->k(), voting, request->candidates()};
      ASSIGN_OR_RETURN(std::vector<SearchMatch> matches,
                       store_->Search({request->embedding().data(),
                                       static_cast<std::size_t>(request->embedding_size())},
                                      options));
      for (const SearchMatch& m : matches) ToProto(m, response->add_matches());
      return absl::OkStatus();
    });
  }

  grpc::ServerWriteReactor<v1::ChangeEvent>* Watch(grpc::CallbackServerContext* ctx,
                                                   const v1::WatchRequest* request) override {
    absl::Status allowed = rpc::Allow(auth_, *ctx, rpc::Scope::kApi, kWho, "Watch");
    // Each stream holds a store thread until it ends: one client may hold
    // only so many. The host, not the port: every connection has its own.
    const std::string peer = ctx->peer();
    std::string host = peer.substr(0, peer.rfind(':'));
    if (allowed.ok()) {
      absl::MutexLock lock(&watches_mu_);
      int& open = watches_[host];
      if (open >= max_watches_per_client_) {
        allowed = absl::ResourceExhaustedError(absl::StrCat(
            open, " Watch streams from ", host, " are open; the limit is ", max_watches_per_client_,
            " (PatternStoreServer::Options::max_watches_per_client)"));
      } else {
        ++open;
      }
    }
    absl::AnyInvocable<void()> on_done;
    if (allowed.ok()) {
      on_done = [this, host] {
        absl::MutexLock lock(&watches_mu_);
        if (--watches_[host] == 0) watches_.erase(host);
      };
    }
    return new WatchReactor(store_, executor_, request->since_version(), allowed,
                            std::move(on_done));
  }

  grpc::ServerUnaryReactor* GetInfo(grpc::CallbackServerContext* ctx,
                                    const v1::GetInfoRequest* request,
                                    v1::StoreInfo* response) override {
    return Run(ctx, rpc::Scope::kApi, "GetInfo", [=, this]() -> absl::Status {
      ASSIGN_OR_RETURN(StoreInfo info, store_->Info());
      ToProto(info, response);
      return absl::OkStatus();
    });
  }

 private:
  // Runs `body` on the executor, if the caller's key allows `scope`, and
  // finishes the call with its status: the one place absl::Status becomes
  // grpc::Status for unary calls.
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

  static constexpr char kWho[] = "pattern store server";

 public:
  int64_t OpenWatches() {
    absl::MutexLock lock(&watches_mu_);
    int64_t n = 0;
    for (const auto& [host, open] : watches_) n += open;
    return n;
  }

 private:
  PatternStore* store_;
  Executor* executor_;
  const rpc::Authenticator* auth_;
  const std::int32_t max_watches_per_client_;
  absl::Mutex watches_mu_;
  absl::flat_hash_map<std::string, int> watches_ ABSL_GUARDED_BY(watches_mu_);
};

}  // namespace

absl::Status PatternStoreServer::Options::Validate() const {
  if (address.empty()) return absl::InvalidArgumentError("pattern store server: empty address");
  if (executor_threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pattern store server: executor_threads must be >= 1 (got ", executor_threads, ")"));
  }
  if (max_watches_per_client < 1) {
    return absl::InvalidArgumentError("pattern store server: max_watches_per_client must be >= 1");
  }
  if (max_message_bytes < 1024) {
    return absl::InvalidArgumentError("pattern store server: max_message_bytes below 1 KiB");
  }
  return absl::OkStatus();
}

// What a scrape reads: the service and its store until Shutdown.
struct StoreMetricsSource {
  absl::Mutex mu;
  Service* service ABSL_GUARDED_BY(mu) = nullptr;
  PatternStore* store ABSL_GUARDED_BY(mu) = nullptr;
};

struct PatternStoreServer::Impl {
  std::shared_ptr<StoreMetricsSource> metrics_source = std::make_shared<StoreMetricsSource>();
  std::shared_ptr<metrics::Collector> collector;
  // Shutdown stops the server (no call runs any more), then the executor
  // (runs what is queued, including reactors' self-deletion, which lets go
  // of the store's watches), so the store may go once it returns.
  absl::Mutex mu;
  std::unique_ptr<Executor> executor ABSL_GUARDED_BY(mu);
  std::shared_ptr<const rpc::Authenticator> auth;  // the service's, kept alive
  std::unique_ptr<Service> service;
  std::unique_ptr<rpc::Server> server;
};

PatternStoreServer::PatternStoreServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PatternStoreServer::~PatternStoreServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<PatternStoreServer>> PatternStoreServer::Start(
    const Options& options, PatternStore* store) {
  RETURN_IF_ERROR(options.Validate());
  if (store == nullptr) return absl::InvalidArgumentError("pattern store server: no store");
  auto impl = std::make_unique<Impl>();
  ASSIGN_OR_RETURN(
      std::unique_ptr<Executor> owned,
      Executor::Create({.name = "pattern store executor", .threads = options.executor_threads}));
  Executor* executor = owned.get();
  {
    absl::MutexLock lock(&impl->mu);
    impl->executor = std::move(owned);
  }
  impl->service = std::make_unique<Service>(store, executor, options.auth.get(),
                                            options.max_watches_per_client);
  impl->auth = options.auth;
  rpc::ServerOptions so;
  so.who = "pattern store server";
  so.address = options.address;
  so.max_receive_bytes = options.max_message_bytes;
  so.max_send_bytes = options.max_message_bytes;
  so.serving = {"premoe.v1.PatternStore"};
  so.tls = options.tls;
  ASSIGN_OR_RETURN(impl->server, rpc::Server::Start(so, {impl->service.get()}));
  {
    absl::MutexLock lock(&impl->metrics_source->mu);
    impl->metrics_source->service = impl->service.get();
    impl->metrics_source->store = store;
  }
  impl->collector = std::make_shared<metrics::Collector>(
      [source = impl->metrics_source]() -> std::vector<prometheus::MetricFamily> {
        absl::MutexLock lock(&source->mu);
        if (source->service == nullptr) return {};
        auto watches = metrics::GaugeFamily("premoe:store_watch_streams",
                                            "Open Watch streams (replicas following the store).");
        metrics::AddSample(watches, static_cast<double>(source->service->OpenWatches()));
        absl::StatusOr<StoreInfo> info = source->store->Info();
        if (!info.ok()) return {watches};
        auto patterns = metrics::GaugeFamily("premoe:store_patterns", "Patterns in the store.");
        metrics::AddSample(patterns, static_cast<double>(info->num_patterns));
        return {watches, patterns};
      });
  metrics::AddCollector(impl->collector);
  PREMOE_LOG_INFO("pattern store serving on %s", impl->server->address());
  return std::unique_ptr<PatternStoreServer>(new PatternStoreServer(std::move(impl)));
}

int PatternStoreServer::port() const { return impl_->server->port(); }

std::string PatternStoreServer::address() const { return impl_->server->address(); }

void PatternStoreServer::Shutdown() {
  {
    absl::MutexLock lock(&impl_->metrics_source->mu);
    impl_->metrics_source->service = nullptr;
    impl_->metrics_source->store = nullptr;
  }
  // Watch streams never end by themselves: cancel them (after a moment for
  // unary calls in flight) so that Shutdown returns.
  absl::MutexLock lock(&impl_->mu);
  impl_->server->Shutdown(std::chrono::milliseconds(200));
  impl_->executor.reset();
}

}  // namespace premoe::store
