// WorkerClient: a client of a remote premoe.v1.Worker (WorkerServer), for
// the router and the CLI. Speaks premoe's plain structs; gRPC errors come
// back as absl::Status with the same code and message.
//
// Thread-safe: calls may run concurrently on one client.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "premoe/common/tls_files.h"
#include "premoe/model/engine.h"
#include "premoe/store/pattern.h"
#include "premoe/worker/worker.h"

namespace premoe::worker {

// Cancels a running WorkerClient::Generate or StartGenerate from another
// thread (the router cancels a worker call when its own caller goes away).
// Thread-safe; one per request, which may make several calls one after
// another (retries): once cancelled, every later call ends CANCELLED at once.
class CallCanceller {
 public:
  // Ends the running call with CANCELLED (now, or as soon as it starts).
  void Cancel();
  bool cancelled() const;

 private:
  friend class WorkerClient;
  // The running call's way to cancel itself; false (and not kept) when
  // already cancelled. Detach before the call's context goes away.
  bool Attach(std::function<void()> cancel);
  void Detach();

  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void()> cancel_ ABSL_GUARDED_BY(mu_);
};

// A text completion request, as a WorkerServer takes it.
struct TextRequest {
  std::string prompt;
  // A prepared pattern's task; empty = the full model.
  std::string task;
  model::GenerationOptions options;  // stop_requested is not sent
  // Stop strings, matched in the decoded text.
  std::vector<std::string> stop;
  // The prompt was rendered by the model's chat template (it holds the
  // special tokens): encoded without the tokenizer's. Default false.
  bool templated = false;
  // Cut options.max_new_tokens to the context's room rather than refuse.
  // Default false.
  bool fit_context = false;
  // Sent as gRPC metadata x-request-id: the worker's log lines about the
  // request name it. Default "": none.
  std::string request_id;
  // Deadline of the call. Default: none (then
  // WorkerClient::Options::generate_timeout).
  std::optional<std::chrono::system_clock::time_point> deadline;
  // Not owned; may be null. Default: none.
  CallCanceller* canceller = nullptr;
};

struct TextResult {
  std::string text;
  std::vector<int64_t> tokens;
  std::string finish_reason;  // "length", "eos" or "stop"
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  double time_to_first_token = 0;
};

// What WorkerServer's Status reports, plus the model fingerprint it serves.
struct RemoteStatus {
  std::string model_fingerprint;
  WorkerStatus status;
};

class WorkerClient {
 public:
  struct Options {
    // "host:port". Required.
    std::string address;
    // Largest message sent or received. Default 64 MiB.
    int32_t max_message_bytes = 64 << 20;
    // Deadline of Status calls. Default 5 s.
    std::chrono::milliseconds status_timeout{5000};
    // Deadline of Prepare calls (they load experts). Default 10 min.
    std::chrono::milliseconds prepare_timeout{600000};
    // Deadline of Generate calls whose request brings none. Default 10 min.
    std::chrono::milliseconds generate_timeout{600000};
    // A StartGenerate stream that brings nothing for this long (no token,
    // from the start or since the last one) is cancelled and ends
    // UNAVAILABLE: a worker that is alive but stuck. (A worker that stops
    // answering altogether is caught sooner by the channel's keepalive.) It
    // must exceed the longest prefill. 0: off. Default 2 min.
    std::chrono::milliseconds progress_timeout{120000};
    // Sent as "authorization: Bearer <api_key>" on every call (see
    // premoe/proto/auth.h). Default "": none.
    std::string api_key;
    // TLS: ca verifies the server; cert and key are presented for mutual
    // TLS (premoe/common/tls_files.h). Default: plaintext.
    common::TlsFiles tls;
  };
  static absl::StatusOr<std::unique_ptr<WorkerClient>> Open(const Options& options);
  ~WorkerClient();

  // The call ends by `deadline` when given, else by Options::prepare_timeout.
  absl::StatusOr<PreparedPattern> Prepare(
      const store::Pattern& pattern, const std::string& budget,
      std::optional<std::chrono::system_clock::time_point> deadline = std::nullopt);
  // Streams the completion: `on_delta(text, tokens)` (may be empty) for each
  // message as it arrives; returns the whole result at the end.
  absl::StatusOr<TextResult> Generate(
      const TextRequest& request,
      const std::function<void(const std::string&, const std::vector<int64_t>&)>& on_delta =
          nullptr);
  // The same call without blocking (gRPC's callback API): returns at once;
  // `on_delta` (may be null) runs for each message with text or tokens, in
  // order, and then `on_done` exactly once with what Generate would return.
  // Both run on gRPC's threads, one at a time, and must not block. The
  // client, and request.canceller if set, must outlive `on_done`.
  using DeltaCallback = std::function<void(const std::string&, const std::vector<int64_t>&)>;
  using DoneCallback = absl::AnyInvocable<void(absl::StatusOr<TextResult>)>;
  void StartGenerate(const TextRequest& request, DeltaCallback on_delta, DoneCallback on_done);
  absl::StatusOr<RemoteStatus> Status();

  struct Impl;

 private:
  class GenerateCall;
  explicit WorkerClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace premoe::worker
