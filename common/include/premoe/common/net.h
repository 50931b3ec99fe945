// Socket helpers for the HTTP edges.
#pragma once

#include "absl/status/status.h"

namespace premoe::common {

// Raises the accept backlog of this process's listening TCP socket on `port`
// to `backlog` (Linux updates a listening socket's backlog on a second
// listen()). Debian's cpp-httplib is compiled with a backlog of 5: eight
// clients connecting at once overflowed it, and the dropped SYNs were
// retransmitted a second later (1 s time-to-first-token outliers). NOT_FOUND
// when no listening socket has that port.
absl::Status RaiseListenBacklog(int port, int backlog = 4096);

}  // namespace premoe::common
