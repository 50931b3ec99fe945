// PatternStore over gRPC. Blocking stub calls are fine here: they run on the
// caller's thread (or a watch's own thread), never on a reactor.
#include "premoe/store/grpc_client.h"

#include <grpcpp/grpcpp.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "premoe/common/status.h"
#include "premoe/proto/auth.h"
#include "premoe/proto/grpc_edge.h"
#include "premoe/store/proto_convert.h"
#include "premoe/v1/store.grpc.pb.h"

namespace premoe::store {

absl::Status GrpcPatternStoreClient::Options::Validate() const {
  if (address.empty()) return absl::InvalidArgumentError("pattern store client: empty address");
  if (rpc_timeout.count() <= 0 || watch_timeout.count() <= 0) {
    return absl::InvalidArgumentError("pattern store client: timeouts must be positive");
  }
  if (max_message_bytes < 1024) {
    return absl::InvalidArgumentError("pattern store client: max_message_bytes below 1 KiB");
  }
  return absl::OkStatus();
}

struct GrpcPatternStoreClient::Impl {
  Options options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::PatternStore::Stub> stub;

  void SetDeadline(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() + options.rpc_timeout);
    rpc::AddKey(*ctx, options.api_key);
  }

  // Server errors pass through as they are; transport errors name the address.
  absl::Status Convert(const grpc::Status& status, absl::string_view method) const {
    absl::Status out = rpc::FromGrpcStatus(status);
    if (absl::IsUnavailable(out) || absl::IsDeadlineExceeded(out)) {
      return common::WithContext(out, absl::StrCat("pattern store ", options.address, " ", method));
    }
    return out;
  }
};

namespace {

// Re-opens its stream from the last delivered version whenever the stream's
// deadline passes, and drops any event at or below that version, so the
// callback still sees each change once and in order.
class GrpcWatch final : public WatchHandle {
 public:
  GrpcWatch(const GrpcPatternStoreClient::Impl* client, std::uint64_t since, WatchCallback callback)
      : client_(client), last_(since), callback_(std::move(callback)) {
    thread_ = std::thread([this] { Run(); });
  }
  ~GrpcWatch() override { Cancel(); }

  void Cancel() override {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      if (ctx_) ctx_->TryCancel();
    }
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  }

 private:
  void Run() {
    for (;;) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + client_->options.watch_timeout);
      rpc::AddKey(ctx, client_->options.api_key);
      {
        absl::MutexLock lock(&mu_);
        if (cancelled_) return;
        ctx_ = &ctx;
      }
      if (client_->options.on_watch_stream) client_->options.on_watch_stream(last_);
      v1::WatchRequest request;
      request.set_since_version(last_);
      std::unique_ptr<grpc::ClientReader<v1::ChangeEvent>> reader =
          client_->stub->Watch(&ctx, request);
      v1::ChangeEvent proto;
      bool stop = false;
      absl::Status error;
      while (!stop && reader->Read(&proto)) {
        absl::StatusOr<ChangeEvent> event = FromProto(proto);
        if (!event.ok()) {
          error = event.status();
          break;
        }
        if (event->version <= last_) continue;
        if (!callback_(event)) {
          stop = true;
          ctx.TryCancel();
          break;
        }
        last_ = event->version;
      }
      const grpc::Status status = reader->Finish();
      bool cancelled;
      {
        absl::MutexLock lock(&mu_);
        ctx_ = nullptr;
        cancelled = cancelled_;
      }
      if (stop || cancelled) return;
      if (error.ok()) {
        // A stream that ran its course is re-opened; anything else ends it.
        if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) continue;
        error = client_->Convert(status, "Watch");
        if (error.ok()) error = absl::UnavailableError("pattern store closed the watch stream");
      }
      callback_(error);
      return;
    }
  }

  const GrpcPatternStoreClient::Impl* client_;
  std::uint64_t last_;
  WatchCallback callback_;
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* ctx_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::thread thread_;
};

}  // namespace

GrpcPatternStoreClient::GrpcPatternStoreClient(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
GrpcPatternStoreClient::~GrpcPatternStoreClient() = default;

absl::StatusOr<std::unique_ptr<GrpcPatternStoreClient>> GrpcPatternStoreClient::Open(
    const Options& options) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  ASSIGN_OR_RETURN(impl->channel, rpc::MakeChannel("pattern store client", options.address,
                                                   options.max_message_bytes, options.tls));
  impl->stub = v1::PatternStore::NewStub(impl->channel);
  return std::unique_ptr<GrpcPatternStoreClient>(new GrpcPatternStoreClient(std::move(impl)));
}

absl::StatusOr<PutResult> GrpcPatternStoreClient::Put(const Pattern& pattern) {
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  v1::PutRequest request;
  ToProto(pattern, request.mutable_pattern());
  v1::PutResponse response;
  RETURN_IF_ERROR(impl_->Convert(impl_->stub->Put(&ctx, request, &response), "Put"));
  return PutResult{response.id(), response.version()};
}

absl::StatusOr<Pattern> GrpcPatternStoreClient::Get(std::uint64_t id) {
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  v1::GetRequest request;
  request.set_id(id);
  v1::GetResponse response;
  RETURN_IF_ERROR(impl_->Convert(impl_->stub->Get(&ctx, request, &response), "Get"));
  return FromProto(response.pattern());
}

absl::StatusOr<Pattern> GrpcPatternStoreClient::GetByTask(absl::string_view task_name) {
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  v1::GetRequest request;
  request.set_task_name(std::string(task_name));
  v1::GetResponse response;
  RETURN_IF_ERROR(impl_->Convert(impl_->stub->Get(&ctx, request, &response), "Get"));
  return FromProto(response.pattern());
}

absl::StatusOr<ListPage> GrpcPatternStoreClient::List(const ListRequest& list) {
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  v1::ListRequest request;
  request.set_page_size(list.page_size);
  request.set_page_token(list.page_token);
  v1::ListResponse response;
  RETURN_IF_ERROR(impl_->Convert(impl_->stub->List(&ctx, request, &response), "List"));
  ListPage page;
  for (const v1::PatternSummary& s : response.patterns()) page.patterns.push_back(FromProto(s));
  page.next_page_token = response.next_page_token();
  return page;
}

absl::StatusOr<std::uint64_t> GrpcPatternStoreClient::Delete(std::uint64_t id) {
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  v1::DeleteRequest request;
  request.set_id(id);
  v1::DeleteResponse response;
  RETURN_IF_ERROR(impl_->Convert(impl_->stub->Delete(&ctx, request, &response), "Delete"));
  return response.version();
}

absl::StatusOr<std::vector<SearchMatch>> GrpcPatternStoreClient::Search(
    std::span<const float> embedding, const SearchOptions& options) {
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  v1::SearchRequest request;
  request.mutable_embedding()->Add(embedding.begin(), embedding.end());
  request.set_k(options.k);
  request.set_voting(ToProto(options.voting));
  request.set_candidates(options.candidates);
  v1::SearchResponse response;
  RETURN_IF_ERROR(impl_->Convert(impl_->stub->Search(&ctx, request, &response), "Search"));
  std::vector<SearchMatch> matches;
  for (const v1::SearchMatch& m : response.matches()) matches.push_back(FromProto(m));
  return matches;
}

absl::StatusOr<std::unique_ptr<WatchHandle>> GrpcPatternStoreClient::Watch(
    std::uint64_t since_version, WatchCallback callback) {
  if (!callback) return absl::InvalidArgumentError("watch needs a callback");
  return std::unique_ptr<WatchHandle>(
      std::make_unique<GrpcWatch>(impl_.get(), since_version, std::move(callback)));
}

absl::StatusOr<StoreInfo> GrpcPatternStoreClient::Info() {
  grpc::ClientContext ctx;
  impl_->SetDeadline(&ctx);
  v1::GetInfoRequest request;
  v1::StoreInfo response;
  RETURN_IF_ERROR(impl_->Convert(impl_->stub->GetInfo(&ctx, request, &response), "GetInfo"));
  return FromProto(response);
}

}  // namespace premoe::store
