// premoe serve: the server process in each of its roles. Shared by
// `premoe serve` and `premoe worker serve` (= serve --role worker).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"

namespace premoe::cli {

struct ServeArgs {
  // "all" (store + router + worker in this process), "store", "router" or
  // "worker".
  std::string role = "all";
  // The role's gRPC address: the router's (all, router), the store's, the
  // worker's.
  std::string listen = "127.0.0.1:50051";
  std::string model;
  // all, store: the RocksDB directory of the embedded store.
  std::string store_dir = "premoe-store";
  // all: also serve the store here (so `premoe profile --store` can add
  // patterns while the server runs). Empty: not served.
  std::string store_listen;
  // router: the store service, and the workers (static or DNS).
  std::string store;
  std::vector<std::string> workers;
  std::string workers_dns;
  // all, router: matching and budgets.
  std::string budget = "50%";
  double min_similarity = 0.5;
  double min_margin = 0;
  std::string fallback = "full";
  std::string voting = "max";
  int64_t max_prompt_bytes = 256 << 10;
  int64_t max_new_tokens = 4096;
  // all, worker.
  std::string cache;
  std::string dtype = "bf16";
  std::string device = "cpu";
  std::string expert_pack;
  std::string quant = "none";
  bool reserve_cache = false;
  int64_t max_batch = 8;
  int64_t max_queue = 64;
  int64_t world_size = 1;
  // Written with the bound port once serving.
  std::string port_file;
  std::string chat_template;  // router: a Jinja chat template in place of the model's
  std::string http_listen = "127.0.0.1:8000";  // router: the OpenAI HTTP API; "" = off
  std::string http_port_file;
  std::string served_model_name;
  std::string metrics_listen;  // any role: Prometheus /metrics on its own port; "" = off  //
                               // router: the HTTP API's model id; default --model
  // API keys every server of this process asks for (premoe/proto/auth.h),
  // with PREMOE_API_KEYS and PREMOE_ADMIN_KEYS. None: open (loopback use).
  // The process's own clients (router -> store and workers) send ClientKey().
  std::string api_key_file;
  std::string admin_key_file;
};

// --api-key-file and --admin-key-file into `args`.
void AddKeyFlags(CLI::App& cmd, ServeArgs& args);
// --metrics-listen.
void AddMetricsFlag(CLI::App& cmd, ServeArgs& args);

// Serves until SIGINT or SIGTERM.
absl::Status RunServe(const ServeArgs& args);

}  // namespace premoe::cli
