// The OpenAI-compatible HTTP edge: request JSON -> InferenceRequest, the
// router's stream -> OpenAI's objects and Server-Sent Events, absl::Status ->
// HTTP status (here only). cpp-httplib runs each request on one of its pool's
// threads; the router's callbacks hand texts to that thread through a Stream.
#include "premoe/router/http_server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <deque>
#include <optional>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include "premoe/checkpoint/config.h"
#include "premoe/common/json.h"
#include "premoe/common/logging.h"
#include "premoe/common/net.h"
#include "premoe/common/status.h"
#include "premoe/proto/auth.h"

namespace premoe::router {
namespace {

using Json = nlohmann::ordered_json;

// The request field an INVALID_ARGUMENT is about, for the error's "param".
constexpr char kParamPayload[] = "premoe.http.param";

absl::Status BadParam(const std::string& param, absl::string_view message) {
  absl::Status s = absl::InvalidArgumentError(message);
  s.SetPayload(kParamPayload, absl::Cord(param));
  return s;
}

// ---- absl::Status -> HTTP ------------------------------------------------

int HttpStatus(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;  // the client closed the request (nginx's convention)
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    case absl::StatusCode::kUnimplemented:
      return 501;
    default:
      return 500;
  }
}

// OpenAI's error object.
Json ErrorJson(const absl::Status& s) {
  const int status = HttpStatus(s);
  const char* type = status == 401   ? "authentication_error"
                     : status == 403 ? "permission_error"
                     : status == 404 ? "not_found_error"
                     : status == 429 ? "rate_limit_error"
                     : status < 500  ? "invalid_request_error"
                                     : "server_error";
  const auto param = s.GetPayload(kParamPayload);
  Json error = {{"message", std::string(s.message())},
                {"type", type},
                {"param", param.has_value() ? Json(std::string(*param)) : Json(nullptr)},
                {"code", absl::StatusCodeToString(s.code())}};
  return {{"error", std::move(error)}};
}

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

void SetError(httplib::Response& res, const absl::Status& s) {
  res.status = HttpStatus(s);
  if (res.status == 429) res.set_header("Retry-After", "1");
  res.set_content(Dump(ErrorJson(s)), "application/json");
}

// ---- request parsing ----------------------------------------------------

enum class Endpoint { kCompletions, kChat };

struct Parsed {
  InferenceRequest request;
  bool stream = false;
  bool include_usage = false;
};

// Fields premoe takes, by endpoint; anything else is refused by name.
const std::set<std::string>& KnownFields(Endpoint e) {
  static const auto* common = new std::set<std::string>{"model",
                                                        "max_tokens",
                                                        "temperature",
                                                        "top_p",
                                                        "top_k",
                                                        "seed",
                                                        "stop",
                                                        "stream",
                                                        "stream_options",
                                                        "n",
                                                        "user",
                                                        "frequency_penalty",
                                                        "presence_penalty",
                                                        "logprobs",
                                                        "logit_bias",
                                                        "task",
                                                        "budget",
                                                        "full_model",
                                                        "ignore_eos"};
  static const auto* completions = [] {
    auto* s = new std::set<std::string>(*common);
    s->insert({"prompt", "echo", "best_of", "suffix"});
    return s;
  }();
  static const auto* chat = [] {
    auto* s = new std::set<std::string>(*common);
    s->insert({"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
               "functions", "function_call", "response_format", "parallel_tool_calls", "store",
               "metadata", "modalities", "audio", "prediction", "reasoning_effort", "service_tier",
               "web_search_options"});
    return s;
  }();
  return e == Endpoint::kChat ? *chat : *completions;
}

absl::StatusOr<int64_t> IntField(const Json& body, const std::string& key, int64_t lo, int64_t hi) {
  const Json& v = body[key];
  if (!v.is_number_integer()) return BadParam(key, absl::StrCat(key, " must be an integer"));
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) {
    return BadParam(key, absl::StrCat(key, " is ", x, "; want ", lo, " to ", hi));
  }
  return x;
}

absl::StatusOr<double> NumberField(const Json& body, const std::string& key, double lo, double hi) {
  const Json& v = body[key];
  if (!v.is_number()) return BadParam(key, absl::StrCat(key, " must be a number"));
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi)) {
    return BadParam(key, absl::StrCat(key, " is ", x, "; want ", lo, " to ", hi));
  }
  return x;
}

absl::StatusOr<std::string> StringField(const Json& body, const std::string& key) {
  const Json& v = body[key];
  if (!v.is_string()) return BadParam(key, absl::StrCat(key, " must be a string"));
  return v.get<std::string>();
}

absl::StatusOr<bool> BoolField(const Json& body, const std::string& key) {
  const Json& v = body[key];
  if (!v.is_boolean()) return BadParam(key, absl::StrCat(key, " must be true or false"));
  return v.get<bool>();
}

// A message's content: a string, or OpenAI's list of parts, whose text
// parts are joined by newlines (as vLLM does for text-only models).
absl::StatusOr<std::string> MessageContent(const Json& content, const std::string& where) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) {
    return BadParam("messages",
                    absl::StrCat(where, ".content must be a string or a list of parts"));
  }
  std::string text;
  for (size_t k = 0; k < content.size(); ++k) {
    const Json& part = content[k];
    const std::string at = absl::StrCat(where, ".content[", k, "]");
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
      return BadParam("messages", absl::StrCat(at, " has no string \"type\""));
    }
    if (part["type"] != "text") {
      return BadParam("messages",
                      absl::StrCat(at, " is of type \"", part["type"].get<std::string>(),
                                   "\"; this model takes text only"));
    }
    if (!part.contains("text") || !part["text"].is_string()) {
      return BadParam("messages", absl::StrCat(at, " has no string \"text\""));
    }
    absl::StrAppend(&text, k > 0 ? "\n" : "", part["text"].get<std::string>());
  }
  return text;
}

absl::StatusOr<std::vector<ChatMessage>> Messages(const Json& body) {
  const Json& messages = body["messages"];
  if (!messages.is_array() || messages.empty()) {
    return BadParam("messages", "messages must be a non-empty list");
  }
  std::vector<ChatMessage> out;
  for (size_t k = 0; k < messages.size(); ++k) {
    const Json& m = messages[k];
    const std::string where = absl::StrCat("messages[", k, "]");
    if (!m.is_object()) return BadParam("messages", absl::StrCat(where, " must be an object"));
    for (const auto& [key, value] : m.items()) {
      if (key != "role" && key != "content") {
        return BadParam("messages",
                        absl::StrCat(where, ".", key,
                                     " is not supported (premoe takes role and content; no "
                                     "tools or names)"));
      }
    }
    if (!m.contains("role") || !m["role"].is_string()) {
      return BadParam("messages", absl::StrCat(where, " has no string \"role\""));
    }
    if (!m.contains("content") || m["content"].is_null()) {
      return BadParam("messages", absl::StrCat(where, " has no content"));
    }
    ASSIGN_OR_RETURN(std::string content, MessageContent(m["content"], where));
    // OpenAI's "developer" is what chat templates call "system".
    std::string role = m["role"].get<std::string>();
    if (role == "developer") role = "system";
    out.push_back({std::move(role), std::move(content)});
  }
  return out;
}

absl::StatusOr<Parsed> ParseRequest(Endpoint endpoint, const Json& body,
                                    const std::string& model_name,
                                    const checkpoint::GenerationDefaults& defaults,
                                    int64_t max_new_tokens) {
  if (!body.is_object()) return BadParam("", "the request body must be a JSON object");
  const std::set<std::string>& known = KnownFields(endpoint);
  for (const auto& [key, value] : body.items()) {
    if (known.count(key) == 0) {
      return BadParam(key, absl::StrCat("unknown field \"", key, "\""));
    }
  }
  auto has = [&](const char* key) { return body.contains(key) && !body[key].is_null(); };
  // Known to OpenAI, not offered by premoe: refused unless at their default.
  for (const char* key :
       {"tools", "tool_choice", "functions", "function_call", "response_format",
        "parallel_tool_calls", "metadata", "modalities", "audio", "prediction", "reasoning_effort",
        "service_tier", "web_search_options", "suffix", "logit_bias", "top_logprobs"}) {
    if (has(key) && !(body[key].is_object() && body[key].empty())) {
      return BadParam(key, absl::StrCat(key, " is not supported by premoe"));
    }
  }
  for (const char* key : {"logprobs", "echo", "store"}) {
    if (has(key) && !(body[key].is_boolean() && !body[key].get<bool>())) {
      return BadParam(key, absl::StrCat(key, " is not supported by premoe"));
    }
  }
  for (const char* key : {"frequency_penalty", "presence_penalty"}) {
    if (has(key) && !(body[key].is_number() && body[key].get<double>() == 0)) {
      return BadParam(key, absl::StrCat(key, " is not supported by premoe (only 0)"));
    }
  }
  for (const char* key : {"n", "best_of"}) {
    if (has(key) && !(body[key].is_number_integer() && body[key].get<int64_t>() == 1)) {
      return BadParam(key, absl::StrCat(key, " must be 1: premoe returns one choice"));
    }
  }

  Parsed out;
  InferenceRequest& r = out.request;
  if (!has("model")) return BadParam("model", "model is required");
  ASSIGN_OR_RETURN(std::string model, StringField(body, "model"));
  if (model != model_name) {
    absl::Status s = absl::NotFoundError(absl::StrCat(
        "The model `", model, "` does not exist; this server serves `", model_name, "`"));
    s.SetPayload(kParamPayload, absl::Cord("model"));
    return s;
  }
  if (endpoint == Endpoint::kChat) {
    if (has("prompt")) return BadParam("prompt", "chat completions take messages, not a prompt");
    ASSIGN_OR_RETURN(r.messages, Messages(body));
  } else {
    if (!has("prompt")) return BadParam("prompt", "prompt is required");
    const Json& prompt = body["prompt"];
    if (prompt.is_string()) {
      r.prompt = prompt.get<std::string>();
    } else if (prompt.is_array() && prompt.size() == 1 && prompt[0].is_string()) {
      r.prompt = prompt[0].get<std::string>();
    } else {
      return BadParam("prompt",
                      "prompt must be a string (or a list of one string); token-id prompts and "
                      "batches are not supported");
    }
    if (r.prompt.empty()) return BadParam("prompt", "prompt is empty");
  }

  // What the request leaves out: the model's generation_config.json, else
  // OpenAI's defaults.
  r.options.temperature = defaults.temperature.value_or(1.0);
  r.options.top_p = defaults.top_p.value_or(1.0) > 0 ? defaults.top_p.value_or(1.0) : 1.0;
  r.options.top_k = defaults.top_k.value_or(0);
  if (has("temperature")) {
    ASSIGN_OR_RETURN(r.options.temperature, NumberField(body, "temperature", 0, 2));
  }
  if (has("top_p")) {
    ASSIGN_OR_RETURN(r.options.top_p, NumberField(body, "top_p", 0, 1));
    if (r.options.top_p == 0) return BadParam("top_p", "top_p must be > 0");
  }
  if (has("top_k")) {
    // vLLM's -1 means off, as premoe's 0.
    ASSIGN_OR_RETURN(int64_t top_k, IntField(body, "top_k", -1, INT32_MAX));
    r.options.top_k = top_k < 0 ? 0 : top_k;
  }
  if (has("seed")) {
    ASSIGN_OR_RETURN(int64_t seed, IntField(body, "seed", INT64_MIN, INT64_MAX));
    r.options.seed = static_cast<uint64_t>(seed);
  }
  const char* length_key = has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (has(length_key)) {
    ASSIGN_OR_RETURN(r.options.max_new_tokens, IntField(body, length_key, 1, INT64_MAX));
  } else if (endpoint == Endpoint::kChat) {
    r.options.max_new_tokens = max_new_tokens;
    r.fit_context = true;
  } else {
    r.options.max_new_tokens = 16;  // OpenAI's default for completions
  }
  if (has("stop")) {
    const Json& stop = body["stop"];
    if (stop.is_string()) {
      r.stop.push_back(stop.get<std::string>());
    } else if (stop.is_array() && stop.size() <= 16) {
      for (const Json& s : stop) {
        if (!s.is_string()) return BadParam("stop", "stop must be a string or a list of strings");
        r.stop.push_back(s.get<std::string>());
      }
    } else {
      return BadParam("stop", "stop must be a string or a list of at most 16 strings");
    }
    for (const std::string& s : r.stop) {
      if (s.empty()) return BadParam("stop", "a stop string is empty");
    }
  }
  if (has("stream")) {
    ASSIGN_OR_RETURN(out.stream, BoolField(body, "stream"));
  }
  if (has("stream_options")) {
    const Json& so = body["stream_options"];
    if (!out.stream) return BadParam("stream_options", "stream_options needs stream: true");
    if (!so.is_object()) return BadParam("stream_options", "stream_options must be an object");
    for (const auto& [key, value] : so.items()) {
      if (key != "include_usage") {
        return BadParam("stream_options",
                        absl::StrCat("stream_options.", key, " is not supported"));
      }
      if (!value.is_boolean()) {
        return BadParam("stream_options", "stream_options.include_usage must be true or false");
      }
      out.include_usage = value.get<bool>();
    }
  }
  if (has("user")) RETURN_IF_ERROR(StringField(body, "user").status());
  if (has("task")) {
    ASSIGN_OR_RETURN(r.task, StringField(body, "task"));
  }
  if (has("budget")) {
    ASSIGN_OR_RETURN(r.budget, StringField(body, "budget"));
  }
  if (has("ignore_eos")) {
    ASSIGN_OR_RETURN(bool ignore_eos, BoolField(body, "ignore_eos"));
    r.options.stop_at_eos = !ignore_eos;
  }
  if (has("full_model")) {
    ASSIGN_OR_RETURN(r.full_model, BoolField(body, "full_model"));
  }
  return out;
}

// ---- responses ------------------------------------------------------------

// A header value: printable ASCII, the rest percent-encoded.
std::string HeaderValue(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      absl::StrAppend(&out, "%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  return out;
}

void SetRouteHeaders(httplib::Response& res, const RouteInfo& route) {
  res.set_header("X-Premoe-Task", HeaderValue(route.task));
  res.set_header("X-Premoe-Decision", route.decision);
  res.set_header("X-Premoe-Similarity", absl::StrCat(route.similarity));
  res.set_header("X-Premoe-Budget", HeaderValue(route.budget));
  res.set_header("X-Premoe-Kept-Experts", absl::StrCat(route.kept_experts));
  res.set_header("X-Premoe-Kept-Bytes", absl::StrCat(route.kept_bytes));
  res.set_header("X-Premoe-Worker", HeaderValue(route.worker));
}

std::string FinishReason(const std::string& worker_reason) {
  return worker_reason == "length" ? "length" : "stop";  // "eos" and "stop" strings
}

Json Usage(const worker::TextResult& t) {
  return {{"prompt_tokens", t.prompt_tokens},
          {"completion_tokens", t.completion_tokens},
          {"total_tokens", t.prompt_tokens + t.completion_tokens}};
}

struct Call {
  Endpoint endpoint;
  std::string id;  // "chatcmpl-..." / "cmpl-..."
  int64_t created = 0;
  std::string model;
};

Json Envelope(const Call& c, bool chunk) {
  const char* object = c.endpoint == Endpoint::kChat
                           ? (chunk ? "chat.completion.chunk" : "chat.completion")
                           : "text_completion";
  return {{"id", c.id}, {"object", object}, {"created", c.created}, {"model", c.model}};
}

Json Response(const Call& c, const InferenceResult& r) {
  Json out = Envelope(c, false);
  Json choice = {{"index", 0}};
  if (c.endpoint == Endpoint::kChat) {
    choice["message"] = {{"role", "assistant"}, {"content", r.text.text}};
  } else {
    choice["text"] = r.text.text;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = FinishReason(r.text.finish_reason);
  out["choices"] = Json::array({std::move(choice)});
  out["usage"] = Usage(r.text);
  out["premoe"] = RouteJson(r.route);
  return out;
}

// One SSE chunk carrying `delta` (role: the chat's first chunk), or the
// last one with finish_reason.
Json Chunk(const Call& c, const std::string& delta, bool role,
           const std::optional<std::string>& finish_reason) {
  Json out = Envelope(c, true);
  Json choice = {{"index", 0}};
  if (c.endpoint == Endpoint::kChat) {
    Json d = Json::object();
    if (role) d["role"] = "assistant";
    if (!finish_reason.has_value()) d["content"] = delta;
    choice["delta"] = std::move(d);
  } else {
    choice["text"] = delta;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish_reason.has_value() ? Json(*finish_reason) : Json(nullptr);
  out["choices"] = Json::array({std::move(choice)});
  return out;
}

std::string Event(const Json& j) { return absl::StrCat("data: ", Dump(j), "\n\n"); }

// ---- the request in flight --------------------------------------------------

// What the router's callbacks hand to the request's HTTP thread. Shared by
// both; the canceller lives here, so it outlives the router's request.
struct Stream {
  absl::Mutex mu;
  std::deque<std::string> texts ABSL_GUARDED_BY(mu);
  std::optional<RouteInfo> route ABSL_GUARDED_BY(mu);
  std::optional<absl::StatusOr<InferenceResult>> result ABSL_GUARDED_BY(mu);
  worker::CallCanceller canceller;

  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return !texts.empty() || route.has_value() || result.has_value();
  }
};

}  // namespace

absl::Status HttpServer::Options::Validate() const {
  if (model_name.empty()) return absl::InvalidArgumentError("HttpServer: model_name is required");
  if (max_request_bytes <= 0 || threads < 1) {
    return absl::InvalidArgumentError("HttpServer: max_request_bytes and threads must be > 0");
  }
  if (tls.server_tls() && tls.key.empty()) {
    return absl::InvalidArgumentError("HttpServer: a TLS certificate needs its key");
  }
  return common::ParseHostPort(address).status();
}

struct HttpServer::Impl {
  Options options;
  Router* router = nullptr;
  checkpoint::GenerationDefaults defaults;
  std::unique_ptr<httplib::Server> server;
  std::thread thread;
  std::string host;
  int port = 0;
  std::atomic<bool> stopping{false};

  absl::Status Authorize(const httplib::Request& req, absl::string_view method) const {
    if (options.auth == nullptr) return absl::OkStatus();
    std::optional<absl::string_view> authorization;
    if (auto it = req.headers.find("Authorization"); it != req.headers.end()) {
      authorization = absl::string_view(it->second);  // httplib's header names ignore case
    }
    return options.auth->CheckBearer(authorization,
                                     absl::StrCat(req.remote_addr, ":", req.remote_port),
                                     rpc::Scope::kApi, "HTTP API", method);
  }

  void Generate(Endpoint endpoint, const httplib::Request& req, httplib::Response& res);
  void Install();
};

void HttpServer::Impl::Install() {
  httplib::Server& s = *server;
  s.new_task_queue = [n = options.threads] { return new httplib::ThreadPool(n); };
  // Each SSE event is a small write: without TCP_NODELAY, Nagle's algorithm
  // holds it for the client's delayed ACK (40 ms a token on loopback).
  s.set_tcp_nodelay(true);
  // Ours refuses first, with OpenAI's error shape; httplib's 413 is the backstop.
  s.set_payload_max_length(static_cast<size_t>(options.max_request_bytes) * 2);
  s.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Generate(Endpoint::kCompletions, req, res);
  });
  s.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Generate(Endpoint::kChat, req, res);
  });
  s.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
    if (absl::Status a = Authorize(req, "GET /v1/models"); !a.ok()) return SetError(res, a);
    static const int64_t created = std::time(nullptr);
    Json model = {{"id", options.model_name},
                  {"object", "model"},
                  {"created", created},
                  {"owned_by", "premoe"}};
    res.set_content(Dump(Json{{"object", "list"}, {"data", Json::array({model})}}),
                    "application/json");
  });
  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const absl::Status ready = router->Readiness();
    if (!ready.ok()) return SetError(res, absl::UnavailableError(ready.message()));
    res.set_content("{\"status\":\"ok\"}", "application/json");
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    if (!options.metrics) return SetError(res, absl::NotFoundError("this server has no metrics"));
    res.set_content(options.metrics(), "text/plain; version=0.0.4; charset=utf-8");
  });
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const absl::Status s =
        res.status == 404
            ? absl::NotFoundError(absl::StrCat("no route for ", req.method, " ", req.path))
        : res.status == 413 ? absl::InvalidArgumentError("the request body is too large")
        : res.status == 405
            ? absl::InvalidArgumentError(absl::StrCat(req.method, " is not allowed on ", req.path))
            : absl::InvalidArgumentError(absl::StrCat("HTTP ", res.status));
    const int status = res.status;
    SetError(res, s);
    res.status = status;
  });
  s.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        SetError(res, absl::InternalError(absl::StrCat("internal error: ", what)));
      });
}

void HttpServer::Impl::Generate(Endpoint endpoint, const httplib::Request& req,
                                httplib::Response& res) {
  const auto start = std::chrono::steady_clock::now();
  std::string request_id = req.get_header_value("X-Request-Id");
  if (request_id.empty()) {
    request_id = common::NewRequestId();
  } else if (request_id.size() > 128 ||
             std::any_of(request_id.begin(), request_id.end(),
                         [](char c) { return c <= 0x20 || c >= 0x7f; })) {
    return SetError(
        res, BadParam("X-Request-Id", "X-Request-Id must be 1 to 128 printable ASCII characters"));
  }
  res.set_header("X-Request-Id", request_id);
  const char* path = endpoint == Endpoint::kChat ? "/v1/chat/completions" : "/v1/completions";
  auto log = [&](int status, const std::string& what) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    common::ScopedRequestId id(request_id);
    if (status >= 500) {
      PREMOE_LOG_WARN("http POST %s %d %.3f s %s", path, status, seconds, what);
    } else {
      PREMOE_LOG_INFO("http POST %s %d %.3f s %s", path, status, seconds, what);
    }
  };
  auto fail = [&](const absl::Status& s) {
    SetError(res, s);
    log(res.status, std::string(s.message()));
  };
  if (absl::Status a = Authorize(req, absl::StrCat("POST ", path)); !a.ok()) return fail(a);
  if (static_cast<int64_t>(req.body.size()) > options.max_request_bytes) {
    return fail(absl::InvalidArgumentError(absl::StrCat("the request body is ", req.body.size(),
                                                        " bytes; the limit is ",
                                                        options.max_request_bytes)));
  }
  absl::StatusOr<Json> body = common::ParseOrderedJsonStrict(req.body, "the request body");
  if (!body.ok()) return fail(body.status());
  absl::StatusOr<Parsed> parsed =
      ParseRequest(endpoint, *body, options.model_name, defaults, router->max_new_tokens());
  if (!parsed.ok()) return fail(parsed.status());

  Call call;
  call.endpoint = endpoint;
  call.id = absl::StrCat(endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-", request_id);
  call.created = std::time(nullptr);
  call.model = options.model_name;

  auto stream = std::make_shared<Stream>();
  InferenceRequest request = std::move(parsed->request);
  request.request_id = request_id;
  request.canceller = &stream->canceller;
  request.on_route = [stream](const RouteInfo& route) {
    absl::MutexLock lock(&stream->mu);
    stream->route = route;
  };
  router->GenerateAsync(
      std::move(request),
      [stream](const std::string& text) {
        absl::MutexLock lock(&stream->mu);
        stream->texts.push_back(text);
      },
      [stream](absl::StatusOr<InferenceResult> result) {
        absl::MutexLock lock(&stream->mu);
        stream->result = std::move(result);
      });

  // Until the route (first text) or the end: an error before anything
  // streamed still gets its own HTTP status.
  std::optional<absl::Status> early_error;
  {
    absl::MutexLock lock(&stream->mu);
    while (!stream->mu.AwaitWithTimeout(absl::Condition(stream.get(), &Stream::Ready),
                                        absl::Seconds(1))) {
      if (stopping) stream->canceller.Cancel();
    }
    if (!parsed->stream) {
      stream->mu.Await(absl::Condition(
          +[](Stream* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu) { return s->result.has_value(); },
          stream.get()));
    }
    if (stream->result.has_value() && !stream->result->ok()) {
      early_error = stream->result->status();
    } else if (stream->route.has_value()) {
      SetRouteHeaders(res, *stream->route);
    } else if (stream->result.has_value()) {
      SetRouteHeaders(res, (*stream->result)->route);
    }
  }
  if (early_error.has_value()) return fail(*early_error);

  if (!parsed->stream) {
    absl::StatusOr<InferenceResult> result;
    {
      absl::MutexLock lock(&stream->mu);
      result = *std::move(stream->result);
    }
    res.set_content(Dump(Response(call, *result)), "application/json");
    log(200, absl::StrCat(result->route.decision, " ", result->route.task, ", ",
                          result->text.completion_tokens, " tokens"));
    return;
  }

  // Streaming: httplib calls the provider until it ends the stream or
  // returns false (the client is gone: the request is cancelled).
  res.set_header("Cache-Control", "no-cache");
  const bool include_usage = parsed->include_usage;
  auto first = std::make_shared<bool>(true);
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, stream, call, include_usage, first, request_id, path, start](size_t,
                                                                          httplib::DataSink& sink) {
        std::string out;
        std::optional<absl::StatusOr<InferenceResult>> result;
        {
          absl::MutexLock lock(&stream->mu);
          stream->mu.AwaitWithTimeout(absl::Condition(
                                          +[](Stream* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu) {
                                            return !s->texts.empty() || s->result.has_value();
                                          },
                                          stream.get()),
                                      absl::Seconds(1));
          if (*first && call.endpoint == Endpoint::kChat) {
            out += Event(Chunk(call, "", /*role=*/true, std::nullopt));
          }
          *first = false;
          for (const std::string& t : stream->texts)
            out += Event(Chunk(call, t, false, std::nullopt));
          stream->texts.clear();
          if (stream->result.has_value()) result = std::move(stream->result);
        }
        if (result.has_value()) {
          if (result->ok()) {
            Json last = Chunk(call, "", false, FinishReason((*result)->text.finish_reason));
            last["premoe"] = RouteJson((*result)->route);
            out += Event(last);
            if (include_usage) {
              Json usage = Envelope(call, true);
              usage["choices"] = Json::array();
              usage["usage"] = Usage((*result)->text);
              out += Event(usage);
            }
          } else {
            out += Event(ErrorJson(result->status()));
          }
          out += "data: [DONE]\n\n";
        } else if (out.empty()) {
          // Nothing for a second: a comment line, so that a client gone
          // away is noticed (the write fails) while the model is slow.
          out = ": keep-alive\n\n";
        }
        if (stopping || !sink.write(out.data(), out.size())) {
          stream->canceller.Cancel();
          return false;
        }
        if (result.has_value()) {
          const double seconds =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          common::ScopedRequestId id(request_id);
          PREMOE_LOG_INFO("http POST %s 200 %.3f s stream %s", path, seconds,
                          result->ok()
                              ? absl::StrCat((*result)->route.decision, " ", (*result)->route.task,
                                             ", ", (*result)->text.completion_tokens, " tokens")
                              : result->status().ToString());
          sink.done();
        }
        return true;
      },
      [stream](bool success) {
        if (!success) stream->canceller.Cancel();
      });
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const Options& options,
                                                              Router* router) {
  RETURN_IF_ERROR(options.Validate());
  if (router == nullptr) return absl::InvalidArgumentError("HttpServer: no router");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->router = router;
  if (!options.model_dir.empty()) {
    ASSIGN_OR_RETURN(impl->defaults, checkpoint::LoadGenerationDefaults(options.model_dir));
  }
  if (options.tls.server_tls()) {
    auto ssl = std::make_unique<httplib::SSLServer>(
        options.tls.cert.c_str(), options.tls.key.c_str(),
        options.tls.client_ca.empty() ? nullptr : options.tls.client_ca.c_str());
    if (!ssl->is_valid()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "HTTPS: cannot load the certificate ", options.tls.cert, " or key ", options.tls.key));
    }
    impl->server = std::move(ssl);
  } else {
    impl->server = std::make_unique<httplib::Server>();
  }
  impl->Install();
  ASSIGN_OR_RETURN(common::HostPort where, common::ParseHostPort(options.address));
  impl->host = where.BareHost();
  impl->port = where.port == 0
                   ? impl->server->bind_to_any_port(impl->host)
                   : (impl->server->bind_to_port(impl->host, where.port) ? where.port : -1);
  if (impl->port <= 0) {
    return absl::UnavailableError(absl::StrCat("HTTP: cannot listen on ", options.address));
  }
  if (absl::Status s = common::RaiseListenBacklog(impl->port); !s.ok()) {
    PREMOE_LOG_WARN("HTTP: the accept backlog stays at cpp-httplib's 5: %s", s.message());
  }
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->server->listen_after_bind(); });
  PREMOE_LOG_INFO("router serving the OpenAI HTTP API on %s:%d (model \"%s\")", impl->host,
                  impl->port, options.model_name);
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

int HttpServer::port() const { return impl_->port; }
std::string HttpServer::address() const {
  const bool v6 = impl_->host.find(':') != std::string::npos;
  return v6 ? absl::StrCat("[", impl_->host, "]:", impl_->port)
            : absl::StrCat(impl_->host, ":", impl_->port);
}

void HttpServer::Shutdown() {
  if (impl_->stopping.exchange(true)) return;
  impl_->server->stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace premoe::router
