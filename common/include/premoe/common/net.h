// Addresses and sockets for premoe's servers.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace premoe::common {

// A listen or dial address "host:port" taken apart. The host is a name, an
// IPv4 address or a bracketed IPv6 one ("[::1]:80"; kept with its brackets);
// the port is 0 to 65535 (0: any free port, for a server).
struct HostPort {
  std::string host;
  int port = 0;
  // The host without an IPv6 address's brackets (what bind() takes).
  std::string BareHost() const;
};
// INVALID_ARGUMENT, quoting the address, for anything else.
absl::StatusOr<HostPort> ParseHostPort(absl::string_view address);

// Raises the accept backlog of this process's listening TCP socket on `port`
// to `backlog` (Linux updates a listening socket's backlog on a second
// listen()). Debian's cpp-httplib is compiled with a backlog of 5: eight
// clients connecting at once overflowed it, and the dropped SYNs were
// retransmitted a second later (1 s time-to-first-token outliers). NOT_FOUND
// when no listening socket has that port.
absl::Status RaiseListenBacklog(int port, int backlog = 4096);

}  // namespace premoe::common
