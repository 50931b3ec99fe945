#include "premoe/common/net.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace premoe::common {

absl::StatusOr<HostPort> ParseHostPort(absl::string_view address) {
  const size_t colon = address.rfind(':');
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("\"", address, "\" is not host:port: ", why));
  };
  if (colon == absl::string_view::npos || colon == 0) return bad("no host");
  HostPort out;
  out.host = std::string(address.substr(0, colon));
  // An IPv6 host is bracketed, so its own colons cannot be taken for the
  // port's; an unbracketed host with a colon is ambiguous.
  const bool bracketed = out.host.size() > 2 && out.host.front() == '[' && out.host.back() == ']';
  if (!bracketed && out.host.find_first_of(":[]") != std::string::npos) {
    return bad("an IPv6 host needs brackets, as in [::1]:50051");
  }
  if (!absl::SimpleAtoi(address.substr(colon + 1), &out.port) || out.port < 0 || out.port > 65535) {
    return bad("the port is not a number from 0 to 65535");
  }
  return out;
}

std::string HostPort::BareHost() const {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    return host.substr(1, host.size() - 2);
  }
  return host;
}

absl::Status RaiseListenBacklog(int port, int backlog) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return absl::InternalError("RaiseListenBacklog: cannot list /proc/self/fd");
  bool found = false;
  while (dirent* entry = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0') continue;
    int listening = 0;
    socklen_t len = sizeof(listening);
    if (getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 ||
        !listening) {
      continue;
    }
    sockaddr_storage addr{};
    socklen_t addr_len = sizeof(addr);
    if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&addr), &addr_len) != 0)
      continue;
    int bound = -1;
    if (addr.ss_family == AF_INET) {
      bound = ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    } else if (addr.ss_family == AF_INET6) {
      bound = ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
    }
    if (bound == port && listen(static_cast<int>(fd), backlog) == 0) found = true;
  }
  closedir(dir);
  if (!found) return absl::NotFoundError(absl::StrCat("no listening socket on port ", port));
  return absl::OkStatus();
}

}  // namespace premoe::common
