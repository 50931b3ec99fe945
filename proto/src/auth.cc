#include "premoe/proto/auth.h"

#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <optional>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "premoe/common/file.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"

namespace premoe::rpc {

struct Authenticator::Keys {
  absl::flat_hash_set<std::string> api;
  absl::flat_hash_set<std::string> admin;
};

namespace {

constexpr std::size_t kMinKeyBytes = 16;
constexpr std::size_t kMaxKeyBytes = 256;
constexpr std::uint64_t kMaxKeyFileBytes = 1 << 20;

absl::Status CheckKey(absl::string_view key, absl::string_view where) {
  if (key.size() < kMinKeyBytes || key.size() > kMaxKeyBytes) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": a key of ", key.size(),
                                                   " characters; keys have ", kMinKeyBytes, " to ",
                                                   kMaxKeyBytes));
  }
  for (char c : key) {
    if (c <= ' ' || c > '~') {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": a key holds a character that is not printable ASCII (or a space)"));
    }
  }
  return absl::OkStatus();
}

// The keys of `path` (see the header for the format).
absl::StatusOr<std::vector<std::string>> ReadKeyFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, common::ReadFile(path, kMaxKeyFileBytes));
  std::vector<std::string> keys;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    RETURN_IF_ERROR(CheckKey(line, absl::StrCat(path, ":", line_number)));
    keys.emplace_back(line);
  }
  return keys;
}

// The comma-separated keys of environment variable `name`.
absl::StatusOr<std::vector<std::string>> ReadKeyVariable(const char* name) {
  std::vector<std::string> keys;
  const char* value = std::getenv(name);
  if (value == nullptr) return keys;
  for (absl::string_view key : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
    key = absl::StripAsciiWhitespace(key);
    RETURN_IF_ERROR(CheckKey(key, absl::StrCat("environment variable ", name)));
    keys.emplace_back(key);
  }
  return keys;
}

std::int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

absl::StatusOr<std::shared_ptr<Authenticator>> Authenticator::Open(const AuthOptions& options) {
  std::shared_ptr<Authenticator> auth(new Authenticator(options));
  RETURN_IF_ERROR(auth->Reload());
  return auth;
}

absl::StatusOr<std::shared_ptr<const Authenticator::Keys>> Authenticator::Read() const {
  auto keys = std::make_shared<Keys>();
  for (const std::string& key : options_.admin_keys) {
    RETURN_IF_ERROR(CheckKey(key, "AuthOptions::admin_keys"));
    keys->admin.insert(key);
  }
  for (auto [file, variable, set] :
       {std::tuple{&options_.api_key_file, "PREMOE_API_KEYS", &keys->api},
        std::tuple{&options_.admin_key_file, "PREMOE_ADMIN_KEYS", &keys->admin}}) {
    if (!file->empty()) {
      ASSIGN_OR_RETURN(std::vector<std::string> from_file, ReadKeyFile(*file));
      // An empty file (a secret not mounted yet, a rotation caught between
      // truncate and write) must not turn the keys off.
      if (from_file.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(*file, ": holds no key"));
      }
      set->insert(from_file.begin(), from_file.end());
    }
    if (options_.read_environment) {
      ASSIGN_OR_RETURN(std::vector<std::string> from_env, ReadKeyVariable(variable));
      set->insert(from_env.begin(), from_env.end());
    }
  }
  return keys;
}

std::vector<Authenticator::FileStamp> Authenticator::Stamps() const {
  std::vector<FileStamp> out;
  for (const std::string* file : {&options_.api_key_file, &options_.admin_key_file}) {
    FileStamp stamp;
    struct stat st {};
    if (!file->empty() && ::stat(file->c_str(), &st) == 0) {
      stamp.mtime_ns = std::int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
      stamp.size = st.st_size;
      stamp.inode = st.st_ino;
    }
    out.push_back(stamp);
  }
  return out;
}

absl::Status Authenticator::Reload() {
  std::vector<FileStamp> stamps = Stamps();
  ASSIGN_OR_RETURN(std::shared_ptr<const Keys> keys, Read());
  absl::MutexLock lock(&mu_);
  keys_ = std::move(keys);
  stamps_ = std::move(stamps);
  last_check_micros_ = NowMicros();
  return absl::OkStatus();
}

void Authenticator::ReloadIfChanged() const {
  {
    absl::MutexLock lock(&mu_);
    const std::int64_t now = NowMicros();
    if (now - last_check_micros_ < 1'000'000) return;
    last_check_micros_ = now;
  }
  std::vector<FileStamp> stamps = Stamps();
  {
    absl::MutexLock lock(&mu_);
    if (stamps == stamps_) return;
    stamps_ = stamps;  // a file that fails to read is not retried until it changes again
  }
  absl::StatusOr<std::shared_ptr<const Keys>> keys = Read();
  if (!keys.ok()) {
    PREMOE_LOG_ERROR("API keys not reloaded, the old ones stay: %s", keys.status().ToString());
    return;
  }
  PREMOE_LOG_INFO("API keys reloaded: %d API, %d admin", (*keys)->api.size(),
                  (*keys)->admin.size());
  absl::MutexLock lock(&mu_);
  keys_ = *std::move(keys);
}

bool Authenticator::enabled() const {
  absl::MutexLock lock(&mu_);
  return !keys_->api.empty() || !keys_->admin.empty();
}

absl::Status Authenticator::Check(const grpc::CallbackServerContext& ctx, Scope scope,
                                  absl::string_view who, absl::string_view method) const {
  const auto& metadata = ctx.client_metadata();
  auto it = metadata.find("authorization");
  std::optional<absl::string_view> authorization;
  if (it != metadata.end()) authorization = absl::string_view(it->second.data(), it->second.size());
  return CheckBearer(authorization, ctx.peer(), scope, who, method);
}

absl::Status Authenticator::CheckBearer(std::optional<absl::string_view> authorization,
                                        absl::string_view peer, Scope scope, absl::string_view who,
                                        absl::string_view method) const {
  ReloadIfChanged();
  std::shared_ptr<const Keys> keys;
  {
    absl::MutexLock lock(&mu_);
    keys = keys_;
  }
  if (keys->api.empty() && keys->admin.empty()) return absl::OkStatus();
  auto refuse = [&](absl::Status status) {
    PREMOE_LOG_WARN("%s: %s from %s refused: %s", who, method, peer, status.message());
    return status;
  };
  if (!authorization.has_value()) {
    return refuse(absl::UnauthenticatedError(
        absl::StrCat(method, " needs an API key (\"authorization: Bearer KEY\")")));
  }
  absl::string_view value = *authorization;
  if (!absl::ConsumePrefix(&value, "Bearer ")) {
    return refuse(absl::UnauthenticatedError(
        absl::StrCat(method, ": the authorization is not \"Bearer KEY\"")));
  }
  const std::string key(absl::StripAsciiWhitespace(value));
  const bool admin = keys->admin.contains(key);
  if (!admin && !keys->api.contains(key)) {
    return refuse(absl::UnauthenticatedError(absl::StrCat(method, ": the API key is not valid")));
  }
  if (scope == Scope::kAdmin && !admin) {
    return refuse(absl::PermissionDeniedError(
        keys->admin.empty()
            ? absl::StrCat(method,
                           " needs an admin key, and this server has none configured "
                           "(--admin-key-file)")
            : absl::StrCat(method, " needs an admin key; this is an API key")));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> LoadClientKey(const std::string& key_file) {
  if (!key_file.empty()) {
    ASSIGN_OR_RETURN(std::vector<std::string> keys, ReadKeyFile(key_file));
    if (keys.empty()) return absl::InvalidArgumentError(absl::StrCat(key_file, ": holds no key"));
    return keys.front();
  }
  const char* value = std::getenv("PREMOE_API_KEY");
  if (value == nullptr || *value == '\0') return std::string();
  const std::string key(absl::StripAsciiWhitespace(value));
  RETURN_IF_ERROR(CheckKey(key, "environment variable PREMOE_API_KEY"));
  return key;
}

void AddKey(grpc::ClientContext& ctx, const std::string& key) {
  if (!key.empty()) ctx.AddMetadata("authorization", absl::StrCat("Bearer ", key));
}

}  // namespace premoe::rpc
