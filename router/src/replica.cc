#include "premoe/router/replica.h"

#include <algorithm>
#include <map>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"
#include "premoe/store/embedded_store.h"

namespace premoe::router {

struct Replica::Impl {
  store::PatternStore* source = nullptr;
  Options options;
  std::unique_ptr<store::EmbeddedPatternStore> local;

  mutable absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  bool synced ABSL_GUARDED_BY(mu) = false;
  bool watch_ended ABSL_GUARDED_BY(mu) = false;
  uint64_t version ABSL_GUARDED_BY(mu) = 0;
  absl::Status last_error ABSL_GUARDED_BY(mu) =
      absl::UnavailableError("the first sync has not finished");
  std::thread thread;

  bool StoppingOrEnded() const ABSL_SHARED_LOCKS_REQUIRED(mu) { return stopping || watch_ended; }

  // Copies `id` from the source (gone meanwhile: nothing to copy).
  absl::Status Copy(uint64_t id) {
    absl::StatusOr<store::Pattern> p = source->Get(id);
    if (absl::IsNotFound(p.status())) return absl::OkStatus();
    RETURN_IF_ERROR(p.status());
    absl::StatusOr<store::PutResult> put = local->Put(*p);
    if (absl::IsFailedPrecondition(put.status())) {
      PREMOE_LOG_WARN("replica: skipping pattern \"%s\": %s", p->task_name,
                      put.status().ToString());
      return absl::OkStatus();
    }
    return put.status();
  }

  absl::Status RemoveTask(const std::string& task) {
    absl::StatusOr<store::Pattern> p = local->GetByTask(task);
    if (absl::IsNotFound(p.status())) return absl::OkStatus();
    RETURN_IF_ERROR(p.status());
    return local->Delete(p->id).status();
  }

  // Makes the copy equal to the source as of the returned version.
  absl::StatusOr<uint64_t> Sync() {
    ASSIGN_OR_RETURN(store::StoreInfo info, source->Info());
    std::set<std::string> tasks;
    store::ListRequest req{.page_size = 1000};
    do {
      ASSIGN_OR_RETURN(store::ListPage page, source->List(req));
      for (const store::PatternSummary& s : page.patterns) {
        tasks.insert(s.task_name);
        absl::StatusOr<store::Pattern> have = local->GetByTask(s.task_name);
        // A Put keeps a non-zero creation time: equal times, same record.
        if (have.ok() && have->created_unix_micros == s.created_unix_micros) continue;
        RETURN_IF_ERROR(Copy(s.id));
      }
      req.page_token = page.next_page_token;
    } while (!req.page_token.empty());
    std::vector<std::string> gone;
    store::ListRequest lreq{.page_size = 1000};
    do {
      ASSIGN_OR_RETURN(store::ListPage page, local->List(lreq));
      for (const store::PatternSummary& s : page.patterns) {
        if (!tasks.contains(s.task_name)) gone.push_back(s.task_name);
      }
      lreq.page_token = page.next_page_token;
    } while (!lreq.page_token.empty());
    for (const std::string& task : gone) RETURN_IF_ERROR(RemoveTask(task));
    return info.version;
  }

  absl::Status Apply(const store::ChangeEvent& e) {
    if (e.kind == store::ChangeEvent::Kind::kPut) return Copy(e.id);
    return RemoveTask(e.task_name);
  }

  // One sync and the watch after it; returns when the watch ends.
  absl::Status SyncAndWatch() {
    ASSIGN_OR_RETURN(uint64_t v, Sync());
    {
      absl::MutexLock lock(&mu);
      version = v;
      synced = true;
      watch_ended = false;
      last_error = absl::OkStatus();
    }
    PREMOE_LOG_INFO("replica: in sync with the pattern store at version %d", v);
    ASSIGN_OR_RETURN(std::unique_ptr<store::WatchHandle> watch,
                     source->Watch(v, [this](const absl::StatusOr<store::ChangeEvent>& e) {
                       absl::Status s = e.ok() ? Apply(*e) : e.status();
                       absl::MutexLock lock(&mu);
                       if (s.ok()) {
                         version = e->version;
                         return true;
                       }
                       last_error = s;
                       watch_ended = true;
                       return false;
                     }));
    absl::Status ended;
    {
      absl::MutexLock lock(&mu);
      mu.Await(absl::Condition(this, &Impl::StoppingOrEnded));
      ended = stopping ? absl::OkStatus() : last_error;
    }
    watch.reset();
    return ended;
  }

  void Run() {
    std::chrono::milliseconds pause = options.retry;
    while (true) {
      absl::Status s = SyncAndWatch();
      absl::MutexLock lock(&mu);
      if (stopping) return;
      if (s.ok()) s = absl::UnavailableError("the watch ended");
      last_error = s;
      PREMOE_LOG_WARN("replica: %s; resyncing in %d ms", s.ToString(), pause.count());
      if (mu.AwaitWithTimeout(absl::Condition(&stopping), absl::FromChrono(pause))) return;
      pause = std::min(pause * 2, options.max_retry);
    }
  }
};

Replica::Replica(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Replica::~Replica() {
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->stopping = true;
  }
  if (impl_->thread.joinable()) impl_->thread.join();
}

absl::StatusOr<std::unique_ptr<Replica>> Replica::Start(store::PatternStore* source,
                                                        const Options& options) {
  if (source == nullptr) return absl::InvalidArgumentError("Replica::Start: no source store");
  if (options.retry.count() <= 0 || options.max_retry < options.retry) {
    return absl::InvalidArgumentError("Replica::Options: want 0 < retry <= max_retry");
  }
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  impl->options = options;
  store::EmbeddedPatternStore::Options lo;
  lo.path = "/premoe-replica";  // a name inside the memory env (relative ones are refused)
  lo.in_memory = true;
  lo.model_fingerprint = options.model_fingerprint;
  ASSIGN_OR_RETURN(impl->local, store::EmbeddedPatternStore::Open(lo));
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->Run(); });
  return std::unique_ptr<Replica>(new Replica(std::move(impl)));
}

store::PatternStore* Replica::store() { return impl_->local.get(); }

absl::Status Replica::WaitSynced(std::chrono::milliseconds timeout) const {
  absl::MutexLock lock(&impl_->mu);
  if (impl_->mu.AwaitWithTimeout(absl::Condition(&impl_->synced), absl::FromChrono(timeout))) {
    return absl::OkStatus();
  }
  return absl::DeadlineExceededError(
      absl::StrCat("the pattern replica has not synced: ", impl_->last_error.ToString()));
}

absl::Status Replica::Synced() const {
  absl::MutexLock lock(&impl_->mu);
  if (impl_->synced) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(
      "the pattern store replica has not synced yet",
      impl_->last_error.ok() ? std::string() : absl::StrCat(": ", impl_->last_error.message())));
}

uint64_t Replica::version() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->version;
}

}  // namespace premoe::router
