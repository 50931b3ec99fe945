#include "premoe/router/replica.h"

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"
#include "premoe/store/embedded_store.h"

namespace premoe::router {

struct Replica::Impl {
  store::PatternStore* source = nullptr;
  Options options;
  std::unique_ptr<store::EmbeddedPatternStore> local;

  mutable std::mutex mu;
  mutable std::condition_variable cv;
  bool stopping = false;
  bool synced = false;
  bool watch_ended = false;
  uint64_t version = 0;
  absl::Status last_error = absl::UnavailableError("the first sync has not finished");
  std::thread thread;

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
      std::lock_guard lock(mu);
      version = v;
      synced = true;
      watch_ended = false;
      last_error = absl::OkStatus();
    }
    cv.notify_all();
    PREMOE_LOG_INFO("replica: in sync with the pattern store at version %d", v);
    ASSIGN_OR_RETURN(std::unique_ptr<store::WatchHandle> watch,
                     source->Watch(v, [this](const absl::StatusOr<store::ChangeEvent>& e) {
                       absl::Status s = e.ok() ? Apply(*e) : e.status();
                       std::lock_guard lock(mu);
                       if (s.ok()) {
                         version = e->version;
                         return true;
                       }
                       last_error = s;
                       watch_ended = true;
                       cv.notify_all();
                       return false;
                     }));
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return stopping || watch_ended; });
    absl::Status ended = stopping ? absl::OkStatus() : last_error;
    lock.unlock();
    watch.reset();
    return ended;
  }

  void Run() {
    std::chrono::milliseconds pause = options.retry;
    while (true) {
      absl::Status s = SyncAndWatch();
      std::unique_lock lock(mu);
      if (stopping) return;
      if (s.ok()) s = absl::UnavailableError("the watch ended");
      last_error = s;
      PREMOE_LOG_WARN("replica: %s; resyncing in %d ms", s.ToString(), pause.count());
      cv.wait_for(lock, pause, [&] { return stopping; });
      if (stopping) return;
      pause = std::min(pause * 2, options.max_retry);
    }
  }
};

Replica::Replica(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Replica::~Replica() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
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

bool Replica::synced() const {
  std::lock_guard lock(impl_->mu);
  return impl_->synced;
}

absl::Status Replica::WaitSynced(std::chrono::milliseconds timeout) const {
  std::unique_lock lock(impl_->mu);
  if (impl_->cv.wait_for(lock, timeout, [&] { return impl_->synced; })) return absl::OkStatus();
  return absl::DeadlineExceededError(
      absl::StrCat("the pattern replica has not synced: ", impl_->last_error.ToString()));
}

uint64_t Replica::version() const {
  std::lock_guard lock(impl_->mu);
  return impl_->version;
}

}  // namespace premoe::router
