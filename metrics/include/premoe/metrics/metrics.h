// premoe's Prometheus metrics, through prometheus-cpp: one registry per
// process, so one scrape of any of the process's endpoints (the router's
// HTTP /metrics, or --metrics-listen) shows every part the process runs.
//
// Names follow vLLM's with the "premoe:" prefix, so that dashboards built
// for vLLM carry over; what only premoe has (patterns, matching, the expert
// cache, the store) has names of its own. docs/serve.md lists them all.
//
// Counters and histograms are updated where things happen (Serving(),
// Cache()); gauges that mirror a component's state (cache bytes, patterns)
// are read when scraped, from collectors the components register
// (AddCollector). Thread-safe throughout.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"

namespace premoe::metrics {

// The request path, as the router (or a worker) sees it.
struct ServingMetrics {
  prometheus::Gauge& requests_running;     // premoe:num_requests_running
  prometheus::Gauge& requests_waiting;     // premoe:num_requests_waiting
  prometheus::Counter& prompt_tokens;      // premoe:prompt_tokens_total
  prometheus::Counter& generation_tokens;  // premoe:generation_tokens_total
  // premoe:request_success_total{finished_reason="stop|length"}
  prometheus::Family<prometheus::Counter>& request_success;
  prometheus::Histogram& time_to_first_token;    // premoe:time_to_first_token_seconds
  prometheus::Histogram& time_per_output_token;  // premoe:time_per_output_token_seconds
  prometheus::Histogram& e2e_latency;            // premoe:e2e_request_latency_seconds
  prometheus::Histogram& queue_time;             // premoe:request_queue_time_seconds
  // premoe:pattern_requests_total{task, decision}
  prometheus::Family<prometheus::Counter>& pattern_requests;
  prometheus::Histogram& match_similarity;  // premoe:match_similarity
  prometheus::Histogram& match_seconds;     // premoe:match_seconds
  // premoe:request_failure_total{code} (absl status code name)
  prometheus::Family<prometheus::Counter>& request_failure;
};
ServingMetrics& Serving();

// Expert loads, observed as they happen (the counts and bytes are read
// from the cache's statistics when scraped).
struct CacheMetrics {
  prometheus::Histogram& load_seconds;  // premoe:expert_load_seconds
};
CacheMetrics& Cache();

// A collector: returns its metric families when scraped. Registered as a
// weak_ptr: it stops being scraped when its owner lets go of it.
using Collector = std::function<std::vector<prometheus::MetricFamily>()>;
void AddCollector(const std::shared_ptr<Collector>& collector);

// Builders for collectors' families.
prometheus::MetricFamily GaugeFamily(const std::string& name, const std::string& help);
prometheus::MetricFamily CounterFamily(const std::string& name, const std::string& help);
// Adds one sample with `labels` ({name, value} pairs) to `family`.
void AddSample(prometheus::MetricFamily& family, double value,
               const std::vector<std::pair<std::string, std::string>>& labels = {});

// Everything, in the Prometheus text exposition format (version 0.0.4).
std::string TextExposition();

// Serves GET /metrics on its own port, for the store and worker roles
// (--metrics-listen). The server lives as long as the
// returned object.
class Endpoint {
 public:
  virtual ~Endpoint() = default;
  virtual int port() const = 0;
};
// `address` "host:port" (port 0 picks one). UNAVAILABLE when it cannot bind.
absl::StatusOr<std::unique_ptr<Endpoint>> Serve(const std::string& address);

}  // namespace premoe::metrics
