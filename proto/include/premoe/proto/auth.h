// API keys for every premoe gRPC server and client.
//
// A call carries `authorization: Bearer KEY` metadata. Two scopes:
//   kApi    inference and reads: Inference.Generate/Match, Worker.Generate/
//           Status, PatternStore.Get/List/Search/Watch/GetInfo;
//   kAdmin  what changes state: PatternStore.Put/Delete, Worker.Prepare.
// An admin key also opens the API scope. With no key configured at all a
// server is open (the loopback default; a server on another address logs a
// warning). Once any key is configured, a call without a valid key gets
// UNAUTHENTICATED, an API key on an admin call PERMISSION_DENIED, each logged
// with the peer's address (never the key). Health checks and reflection are
// other services and stay open, for Kubernetes probes.
//
// Key files hold one key a line; blank lines and lines starting with '#' are
// skipped and surrounding whitespace trimmed. A key is 16 to 256 printable
// ASCII characters without spaces, so a truncated or mangled file is refused
// rather than half-read. Files are re-read when they change (checked at most
// once a second, on a call) and on Reload() (the CLI calls it on SIGHUP); a
// reload that fails keeps the keys in use and logs why.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/client_context.h"
#include "grpcpp/server_context.h"

namespace premoe::rpc {

enum class Scope { kApi, kAdmin };

struct AuthOptions {
  // Keys of the API scope (--api-key-file). Default "": none from a file.
  std::string api_key_file;
  // Keys of the admin scope (--admin-key-file). Default "": none from a file.
  std::string admin_key_file;
  // Admin keys given in code (a process's key for its calls to itself).
  // Default none.
  std::vector<std::string> admin_keys;
  // Default true: also take the comma-separated keys in the environment
  // variables PREMOE_API_KEYS and PREMOE_ADMIN_KEYS (read when the
  // authenticator is opened or reloaded).
  bool read_environment = true;
};

// The server side. Thread-safe; Check takes a lock only to copy a pointer
// (and, once a second, to look at the files' modification times).
class Authenticator {
 public:
  // INVALID_ARGUMENT naming the file and line for a malformed key; the
  // errors of reading a file (NOT_FOUND, ...).
  static absl::StatusOr<std::shared_ptr<Authenticator>> Open(const AuthOptions& options);

  // OK when the call may go on. `who` names the server and `method` the
  // call in the log line of a refusal.
  absl::Status Check(const grpc::CallbackServerContext& ctx, Scope scope, absl::string_view who,
                     absl::string_view method) const;
  // The same for another protocol (HTTP's Authorization header):
  // `authorization` is the header's value, absent when the request has
  // none; `peer` names the caller in the log line.
  absl::Status CheckBearer(std::optional<absl::string_view> authorization, absl::string_view peer,
                           Scope scope, absl::string_view who, absl::string_view method) const;

  // Re-reads the key files and the environment now; on error the keys in
  // use stay.
  absl::Status Reload();

  // True when any key is configured (calls must carry one).
  bool enabled() const;

 private:
  struct Keys;
  // What a key file looked like when read: a change means a reload.
  struct FileStamp {
    std::int64_t mtime_ns = -1;
    std::int64_t size = -1;
    std::uint64_t inode = 0;
    bool operator==(const FileStamp&) const = default;
  };
  explicit Authenticator(AuthOptions options) : options_(std::move(options)) {}
  absl::StatusOr<std::shared_ptr<const Keys>> Read() const;
  std::vector<FileStamp> Stamps() const;
  void ReloadIfChanged() const;

  const AuthOptions options_;
  mutable absl::Mutex mu_;
  mutable std::shared_ptr<const Keys> keys_ ABSL_GUARDED_BY(mu_);
  mutable std::vector<FileStamp> stamps_ ABSL_GUARDED_BY(mu_);
  mutable std::int64_t last_check_micros_ ABSL_GUARDED_BY(mu_) = 0;
};

// Authenticator::Check when `auth` is set; OK when it is null (no
// authentication).
inline absl::Status Allow(const Authenticator* auth, const grpc::CallbackServerContext& ctx,
                          Scope scope, absl::string_view who, absl::string_view method) {
  return auth == nullptr ? absl::OkStatus() : auth->Check(ctx, scope, who, method);
}

// The client side: the key to send, from `key_file` (its first key) when
// given, else the environment variable PREMOE_API_KEY, else none ("").
absl::StatusOr<std::string> LoadClientKey(const std::string& key_file);

// Adds `authorization: Bearer <key>` to a call (nothing when key is empty).
void AddKey(grpc::ClientContext& ctx, const std::string& key);

}  // namespace premoe::rpc
