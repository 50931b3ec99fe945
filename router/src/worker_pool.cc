#include "premoe/router/worker_pool.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <tuple>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"
#include "premoe/profiler/pattern.h"
#include "premoe/profiler/selection.h"

namespace premoe::router {
namespace {

using Clock = std::chrono::steady_clock;

// Splits "host:port" ("[v6]:port" too).
absl::StatusOr<std::pair<std::string, std::string>> SplitHostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return absl::InvalidArgumentError(absl::StrCat("\"", address, "\" is not host:port"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int port = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &port) || port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("\"", address, "\" has no valid port"));
  }
  return std::pair{host, address.substr(colon + 1)};
}

// Every address `host` resolves to, as dialable "ip:port" strings.
absl::StatusOr<std::set<std::string>> Resolve(const std::string& host, const std::string& port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(absl::StrCat("resolving ", host, ": ", gai_strerror(rc)));
  }
  std::set<std::string> out;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, buf, sizeof buf);
      out.insert(absl::StrCat(buf, ":", port));
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, buf, sizeof buf);
      out.insert(absl::StrCat("[", buf, "]:", port));
    }
  }
  freeaddrinfo(res);
  return out;
}

struct Member {
  std::string address;
  bool from_dns = false;
  std::unique_ptr<worker::WorkerClient> client;

  mutable absl::Mutex mu;
  // One Prepare at a time per worker; a flag, not a lock held over the RPC.
  bool preparing ABSL_GUARDED_BY(mu) = false;
  bool reachable ABSL_GUARDED_BY(mu) = false;
  bool failed ABSL_GUARDED_BY(mu) = false;  // a request failed on it since its last good poll
  std::string last_error ABSL_GUARDED_BY(mu) = "not polled yet";
  std::optional<worker::WorkerStatus> status ABSL_GUARDED_BY(mu);
  int64_t in_flight ABSL_GUARDED_BY(mu) = 0;
  // prepared name -> last served
  std::map<std::string, Clock::time_point> last_use ABSL_GUARDED_BY(mu);
  // name -> pattern version we prepared
  std::map<std::string, int64_t> prepared_created ABSL_GUARDED_BY(mu);

  bool Usable() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return reachable && !failed && status.has_value();
  }
  bool NotPreparing() const ABSL_SHARED_LOCKS_REQUIRED(mu) { return !preparing; }
};

int64_t CountMissing(const model::KeptExperts& want, const model::KeptExperts& resident) {
  int64_t missing = 0;
  for (const auto& [layer, experts] : want.layers) {
    const std::vector<int64_t>* have = resident.Find(layer);
    for (int64_t e : experts) {
      if (have == nullptr || !std::binary_search(have->begin(), have->end(), e)) ++missing;
    }
  }
  return missing;
}

}  // namespace

absl::Status WorkerPoolOptions::Validate() const {
  if (addresses.empty() && dns.empty()) {
    return absl::InvalidArgumentError("WorkerPoolOptions: give worker addresses or a DNS name");
  }
  for (const std::string& a : addresses) RETURN_IF_ERROR(SplitHostPort(a).status());
  if (!dns.empty()) RETURN_IF_ERROR(SplitHostPort(dns).status());
  if (top_k <= 0) return absl::InvalidArgumentError("WorkerPoolOptions.top_k must be > 0");
  if (poll_interval.count() <= 0 || dns_interval.count() <= 0 || saturation <= 0) {
    return absl::InvalidArgumentError(
        "WorkerPoolOptions: poll_interval, dns_interval and saturation must be > 0");
  }
  return absl::OkStatus();
}

struct WorkerPool::Impl {
  WorkerPoolOptions options;
  mutable absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  std::map<std::string, std::shared_ptr<Member>> members ABSL_GUARDED_BY(mu);
  absl::Mutex dns_mu;  // one resolution at a time
  Clock::time_point next_dns ABSL_GUARDED_BY(dns_mu){};
  std::thread poller;

  std::vector<std::shared_ptr<Member>> Members() const {
    absl::MutexLock lock(&mu);
    std::vector<std::shared_ptr<Member>> all;
    for (const auto& [a, m] : members) all.push_back(m);
    return all;
  }

  absl::Status AddMember(const std::string& address, bool from_dns) {
    auto m = std::make_shared<Member>();
    m->address = address;
    m->from_dns = from_dns;
    worker::WorkerClient::Options co = options.client;
    co.address = address;
    ASSIGN_OR_RETURN(m->client, worker::WorkerClient::Open(co));
    absl::MutexLock lock(&mu);
    members.emplace(address, std::move(m));
    return absl::OkStatus();
  }

  void RefreshDns() {
    if (options.dns.empty()) return;
    {
      // Claims the next resolution; a caller that finds one under way or
      // not yet due goes on without waiting.
      absl::MutexLock dns_lock(&dns_mu);
      if (Clock::now() < next_dns) return;
      next_dns = Clock::now() + options.dns_interval;
    }
    auto hp = SplitHostPort(options.dns);
    absl::StatusOr<std::set<std::string>> found = Resolve(hp->first, hp->second);
    if (!found.ok()) {
      PREMOE_LOG_WARN("worker pool: %s", found.status().ToString());
      return;
    }
    std::vector<std::string> added;
    {
      absl::MutexLock lock(&mu);
      for (auto it = members.begin(); it != members.end();) {
        // Assignments hold their member, so one dropped here lives on until
        // its requests end.
        if (it->second->from_dns && !found->contains(it->first)) {
          PREMOE_LOG_INFO("worker pool: %s left %s", it->first, options.dns);
          it = members.erase(it);
        } else {
          ++it;
        }
      }
      for (const std::string& a : *found) {
        if (!members.contains(a)) added.push_back(a);
      }
    }
    for (const std::string& a : added) {
      if (absl::Status s = AddMember(a, /*from_dns=*/true); !s.ok()) {
        PREMOE_LOG_WARN("worker pool: %s", s.ToString());
      } else {
        PREMOE_LOG_INFO("worker pool: %s joined through %s", a, options.dns);
      }
    }
  }

  void PollAll() {
    RefreshDns();
    for (auto& m : Members()) {
      absl::StatusOr<worker::RemoteStatus> s = m->client->Status();
      absl::MutexLock lock(&m->mu);
      if (s.ok()) {
        if (!m->reachable) PREMOE_LOG_INFO("worker pool: %s is reachable", m->address);
        m->reachable = true;
        m->failed = false;
        m->status = s->status;
        m->last_error.clear();
      } else {
        if (m->reachable) {
          PREMOE_LOG_WARN("worker pool: %s is unreachable: %s", m->address, s.status().ToString());
        }
        m->reachable = false;
        m->last_error = s.status().ToString();
      }
    }
  }

  void Run() {
    while (true) {
      {
        absl::MutexLock lock(&mu);
        if (mu.AwaitWithTimeout(absl::Condition(&stopping),
                                absl::FromChrono(options.poll_interval))) {
          return;
        }
      }
      PollAll();
    }
  }
};

WorkerPool::WorkerPool(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

WorkerPool::~WorkerPool() {
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->stopping = true;
  }
  if (impl_->poller.joinable()) impl_->poller.join();
}

absl::StatusOr<std::unique_ptr<WorkerPool>> WorkerPool::Open(const WorkerPoolOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  for (const std::string& a : options.addresses) {
    RETURN_IF_ERROR(impl->AddMember(a, /*from_dns=*/false));
  }
  impl->PollAll();
  Impl* raw = impl.get();
  impl->poller = std::thread([raw] { raw->Run(); });
  return std::unique_ptr<WorkerPool>(new WorkerPool(std::move(impl)));
}

void WorkerPool::PollNow() { impl_->PollAll(); }

absl::StatusOr<Assignment> WorkerPool::Assign(
    const store::Pattern* pattern, const std::string& budget, const std::set<std::string>& exclude,
    std::optional<std::chrono::system_clock::time_point> deadline) {
  const std::string name = pattern == nullptr ? "" : absl::StrCat(pattern->task_name, "@", budget);
  const std::vector<std::shared_ptr<Member>> members = impl_->Members();

  // The selection depends on the workers only through their expert size (the
  // same on every worker of one model): made once per size, with no lock held.
  std::map<int64_t, profiler::Selection> selections;
  if (pattern != nullptr) {
    ASSIGN_OR_RETURN(const profiler::Budget parsed, profiler::Budget::Parse(budget));
    ASSIGN_OR_RETURN(const auto scores, profiler::PatternScores(*pattern));
    std::set<int64_t> sizes;
    for (const auto& m : members) {
      absl::MutexLock lock(&m->mu);
      if (m->status.has_value()) sizes.insert(m->status->expert_bytes);
    }
    for (int64_t bytes : sizes) {
      ASSIGN_OR_RETURN(selections[bytes],
                       profiler::Select(scores, parsed, bytes, impl_->options.top_k));
    }
  }

  struct Candidate {
    std::shared_ptr<Member> member;
    std::tuple<bool, bool, bool, int64_t, int64_t> key;  // lower is better
    bool resident = false;
    int64_t kept_experts = 0, kept_bytes = 0;
    const model::KeptExperts* keep = nullptr;
  };
  std::vector<Candidate> candidates;
  std::vector<std::string> unreachable;
  const Clock::time_point now = Clock::now();
  for (const auto& m : members) {
    if (exclude.contains(m->address)) continue;
    absl::MutexLock lock(&m->mu);
    if (!m->Usable()) {
      unreachable.push_back(absl::StrCat(m->address, " (", m->last_error, ")"));
      continue;
    }
    const worker::WorkerStatus& s = *m->status;
    Candidate c;
    c.member = m;
    int64_t missing_bytes = 0;
    if (pattern == nullptr) {
      c.kept_bytes = s.all_experts_bytes;
      c.kept_experts = s.expert_bytes > 0 ? s.all_experts_bytes / s.expert_bytes : 0;
      missing_bytes = s.all_experts_bytes - s.cache.resident_bytes;
      c.resident = missing_bytes == 0;
    } else {
      auto sel = selections.find(s.expert_bytes);
      if (sel == selections.end()) continue;  // its status changed since: next time
      c.keep = &sel->second.keep;
      c.kept_experts = sel->second.kept_experts;
      c.kept_bytes = sel->second.kept_experts * s.expert_bytes;
      missing_bytes = CountMissing(sel->second.keep, s.resident) * s.expert_bytes;
      const auto p = std::find_if(s.patterns.begin(), s.patterns.end(),
                                  [&](const worker::PatternStatus& p) { return p.task == name; });
      const auto ours = m->prepared_created.find(name);
      c.resident =
          p != s.patterns.end() && p->resident && missing_bytes == 0 &&
          (ours == m->prepared_created.end() || ours->second == pattern->created_unix_micros);
    }
    const int64_t free_bytes = s.cache.budget_bytes - s.cache.resident_bytes;
    bool evicts_hot = false;
    if (!c.resident && missing_bytes > free_bytes) {
      for (const auto& [other, t] : m->last_use) {
        if (other != name && now - t < impl_->options.hot_window) evicts_hot = true;
      }
    }
    const int64_t load = m->in_flight + s.queued;
    c.key = {load >= impl_->options.saturation, !c.resident, evicts_hot, missing_bytes, load};
    candidates.push_back(std::move(c));
  }
  if (candidates.empty()) {
    return absl::UnavailableError(
        absl::StrCat("no worker can take the request",
                     unreachable.empty() ? std::string(" (every worker was tried)")
                                         : absl::StrCat(": ", absl::StrJoin(unreachable, "; "))));
  }
  std::sort(candidates.begin(), candidates.end(),
            [](const Candidate& a, const Candidate& b) { return a.key < b.key; });

  std::vector<std::string> refused;
  for (Candidate& c : candidates) {
    Member& m = *c.member;
    Assignment a;
    a.address = m.address;
    a.client = m.client.get();
    a.prepared_name = name;
    a.kept_experts = c.kept_experts;
    a.kept_bytes = c.kept_bytes;
    a.hold = c.member;
    {
      absl::MutexLock lock(&m.mu);
      ++m.in_flight;
      m.last_use[name] = now;
      a.all_experts_bytes = m.status->all_experts_bytes;
      a.base_bytes = m.status->base_bytes;
    }
    if (pattern == nullptr || c.resident) return a;
    absl::StatusOr<worker::PreparedPattern> prepared;
    bool turn = false;
    {
      absl::MutexLock lock(&m.mu);
      const absl::Condition idle(&m, &Member::NotPreparing);
      turn = deadline.has_value() ? m.mu.AwaitWithDeadline(idle, absl::FromChrono(*deadline))
                                  : (m.mu.Await(idle), true);
      if (turn) m.preparing = true;
    }
    if (!turn) {
      prepared = absl::DeadlineExceededError(
          absl::StrCat("the deadline passed while waiting for another Prepare on ", m.address));
    } else {
      store::Pattern named = *pattern;
      named.task_name = name;
      prepared = m.client->Prepare(named, budget, deadline);
    }
    if (prepared.ok()) {
      absl::MutexLock lock(&m.mu);
      m.preparing = false;
      m.prepared_created[name] = pattern->created_unix_micros;
      // What the worker holds now, until the next poll says it exactly: the
      // next request of this pattern must not prepare it again.
      worker::WorkerStatus& s = *m.status;
      std::erase_if(s.patterns, [&](const worker::PatternStatus& p) { return p.task == name; });
      s.patterns.push_back({name, prepared->kept_experts, prepared->kept_bytes, true});
      for (const auto& [layer, experts] : c.keep->layers) {
        std::vector<int64_t>& have = s.resident.layers[layer];
        std::vector<int64_t> merged;
        std::set_union(have.begin(), have.end(), experts.begin(), experts.end(),
                       std::back_inserter(merged));
        have = std::move(merged);
      }
      s.cache.resident_bytes +=
          prepared->load.loaded_bytes - prepared->load.evicted_experts * s.expert_bytes;
      a.loaded = prepared->load.loaded_experts > 0;
      a.kept_experts = prepared->kept_experts;
      a.kept_bytes = prepared->kept_bytes;
      return a;
    }
    if (turn) {
      absl::MutexLock lock(&m.mu);
      m.preparing = false;
    }
    const bool caller_out_of_time =
        deadline.has_value() && std::chrono::system_clock::now() >= *deadline;
    if (caller_out_of_time) {
      Release(a);
      return absl::DeadlineExceededError(absl::StrCat("preparing \"", name, "\" on ", m.address,
                                                      ": the request's deadline passed"));
    }
    Release(a, /*failed=*/absl::IsUnavailable(prepared.status()) ||
                   absl::IsDeadlineExceeded(prepared.status()));
    if (absl::IsResourceExhausted(prepared.status()) || absl::IsUnavailable(prepared.status()) ||
        absl::IsDeadlineExceeded(prepared.status())) {
      refused.push_back(prepared.status().ToString());
      continue;
    }
    return prepared.status();
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("no worker could prepare \"", name, "\": ", absl::StrJoin(refused, "; ")));
}

void WorkerPool::Release(const Assignment& a, bool failed) {
  auto m = std::static_pointer_cast<Member>(a.hold);
  if (m == nullptr) return;
  absl::MutexLock lock(&m->mu);
  --m->in_flight;
  if (failed) {
    m->failed = true;
    m->last_error = "a request failed on it";
  }
}

bool WorkerPool::AnyReachable() const {
  for (const auto& m : impl_->Members()) {
    absl::MutexLock lock(&m->mu);
    if (m->reachable && !m->failed) return true;
  }
  return false;
}

}  // namespace premoe::router
