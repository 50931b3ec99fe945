// The TLS files of one premoe process (PEM). A plain struct, so that the
// public headers of the store, worker and router can carry it without gRPC;
// premoe/proto/grpc_edge.h turns it into gRPC credentials.
#pragma once

#include <string>

namespace premoe::common {

struct TlsFiles {
  // This process's certificate chain and private key: a server's identity
  // (TLS is on for a server when both are set), and a client's for mutual
  // TLS. Default "": none.
  std::string cert;
  std::string key;
  // Roots that verify the servers this process dials; TLS is on for its
  // clients when set. Default "": plaintext.
  std::string ca;
  // Server: require client certificates signed by these roots (mutual TLS).
  // Default "": no client certificate asked.
  std::string client_ca;

  bool server_tls() const { return !cert.empty(); }
  bool client_tls() const { return !ca.empty(); }
};

}  // namespace premoe::common
