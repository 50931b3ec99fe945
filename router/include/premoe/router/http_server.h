// HttpServer: the OpenAI-compatible HTTP API over a Router, for the clients
// people already have (the openai SDKs, LangChain, curl).
//
//   POST /v1/completions        prompt -> text       (stream: Server-Sent Events)
//   POST /v1/chat/completions   messages -> message  (the model's chat template)
//   GET  /v1/models             the served model
//   GET  /health                200 when the router is ready, else 503
//   GET  /metrics               Options::metrics (Prometheus text), if set
//
// Requests follow OpenAI's API: model, prompt / messages, max_tokens /
// max_completion_tokens, temperature, top_p, seed, stop, stream,
// stream_options.include_usage, n (1), user; top_k and ignore_eos as vLLM
// takes them. A
// field premoe does not support (tools, logprobs, response_format, n > 1,
// ...) or does not know is refused with 400 naming it, never ignored.
// premoe's own controls are extra body fields (the SDKs' extra_body): task,
// budget, full_model. Left out: temperature, top_p and top_k come from the
// model's generation_config.json (as vLLM does), else OpenAI's defaults
// (1, 1, off); max_tokens is 16 for completions (OpenAI's) and for chat the
// context's end (capped by the router's max_new_tokens).
//
// Responses are OpenAI's objects (id, object, created, model, choices,
// usage) plus a "premoe" object with the route (task, decision, similarity,
// budget, kept experts and bytes, worker); the route also comes as
// X-Premoe-* headers, before the stream starts. Every request has an id
// (X-Request-Id if the client sent one, else generated) that the response
// echoes and the log line names.
//
// Errors are OpenAI's shape, {"error": {"message", "type", "param",
// "code"}}, with the HTTP status absl::Status maps to here and only here
// (400, 401, 403, 404, 429 with Retry-After, 499, 503, 504, 500). An error
// before the first streamed text gets its status; one after comes as a last
// SSE event with the same shape. A streaming client that goes away cancels
// its request at the worker (a write fails, or the keep-alive comment the
// stream sends each second does); a non-streaming one is noticed when its
// reply is written, and the router's request deadline bounds it.
//
// Authentication: Authorization: Bearer KEY with the API keys of
// premoe/proto/auth.h (the same files as the gRPC API); /health and
// /metrics stay open for probes and scrapers.
//
// cpp-httplib serves it: each request in flight holds one of Options::threads
// threads (a streaming one until it ends). Thread-safe; the router must
// outlive the server.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "premoe/common/tls_files.h"
#include "premoe/router/router.h"

namespace premoe::rpc {
class Authenticator;  // premoe/proto/auth.h
}  // namespace premoe::rpc

namespace premoe::router {

class HttpServer {
 public:
  struct Options {
    // "host:port"; port 0 picks a free one (see port()). Default
    // "127.0.0.1:8000".
    std::string address = "127.0.0.1:8000";
    // The model's id in /v1/models, which requests' "model" must name.
    // Required.
    std::string model_name;
    // Where generation_config.json's sampling defaults are read. Default
    // "": OpenAI's defaults.
    std::string model_dir;
    // Largest request body. Default 1 MiB.
    int64_t max_request_bytes = 1 << 20;
    // Requests served at once; more wait for a thread. Default 64.
    int32_t threads = 64;
    // API keys (premoe/proto/auth.h); requests need the API scope. Default
    // null: open.
    std::shared_ptr<const rpc::Authenticator> auth;
    // HTTPS with this certificate and key (client_ca: client certificates
    // required). Default: plain HTTP.
    common::TlsFiles tls;
    // The body of GET /metrics (Prometheus text exposition format). Default
    // null: 404.
    std::function<std::string()> metrics;

    absl::Status Validate() const;
  };

  // Binds and starts serving. INVALID_ARGUMENT for bad options or a
  // malformed generation_config.json; UNAVAILABLE when the address cannot
  // be bound.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const Options& options, Router* router);
  ~HttpServer();

  int port() const;
  std::string address() const;
  // Stops accepting requests and ends the streams in flight (their worker
  // calls are cancelled). Idempotent.
  void Shutdown();

  struct Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace premoe::router
