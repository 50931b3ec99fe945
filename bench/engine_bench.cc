// engine_bench: prefill and decode throughput of the MoE engine on a generated
// qwen3_moe checkpoint of realistic proportions, for bf16 and fp32, full and
// 50% reduced, with routed experts dense or quantized (--quants), with the
// achieved weight bandwidth as a fraction of memcpy bandwidth measured in the
// same run, the bytes each decoded token reads, and RSS next to weight bytes.
//
// usage: engine_bench [--hidden 2048] [--layers 16] [--experts 64] [--top-k 4]
//          [--moe-intermediate 512] [--vocab 32000] [--heads 16] [--kv-heads 4]
//          [--prompt 128] [--decode-steps 16] [--batch 8] [--threads N]
//          [--dtypes bf16,fp32] [--quants none int8 int4] [--reference]
//          [--cache-dir /tmp/premoe_bench_model]
//
// --reference (default on) also runs each dtype's full model with
// EngineOptions::cpu_kernels off: every op through libtorch, the engine's
// numerics reference, measured in the same run as the speed it is compared to.
//
// The checkpoint (random bf16 weights, one safetensors shard per layer) is
// written once per size under --cache-dir and reused. Each engine
// configuration runs in a child process (this binary re-executed with
// --child): RSS is then that engine's alone, not inflated by memory an
// earlier engine freed into the allocator, and a 14 GB fp32 model never sits
// beside another. Progress goes to stderr, the table to stdout.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "bench/machine.h"
#include "premoe/checkpoint/safetensors.h"
#include "premoe/common/process.h"
#include "premoe/model/engine.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Flags {
  int64_t hidden = 2048, layers = 16, experts = 64, top_k = 4, moe_inter = 512, vocab = 32000;
  int64_t heads = 16, kv_heads = 4;
  int64_t prompt = 128, decode_steps = 16, batch = 8;
  int64_t threads = std::max(1u, std::thread::hardware_concurrency());
  std::string dtypes = "bf16,fp32";
  std::vector<std::string> quants = {"none", "int8", "int4"};
  bool reference = true;
  // Also run each full model as this variant, to compare in one run: a
  // kernel ISA (EngineOptions::cpu_isa: avx512, avx2, portable), "exact"
  // (EngineOptions::int8_activations off) or "copy" (map_experts off: every
  // expert copied out of the checkpoint). Empty: no such runs.
  std::string baseline;
  std::string cache_dir = "/tmp/premoe_bench_model";
  // Child mode: run one configuration ("bf16:full", "fp32:half",
  // "bf16:full:libtorch", "bf16:full:avx2+int4", "bf16:half+int4:g128") and
  // print one RESULT line.
  std::string child;
};

// Every size must be a positive integer; a flag that does not parse stops
// the run (exit 2) rather than measuring the default.
void AddFlags(CLI::App& app, Flags* f) {
  const std::pair<const char*, int64_t*> ints[] = {{"--hidden", &f->hidden},
                                                   {"--layers", &f->layers},
                                                   {"--experts", &f->experts},
                                                   {"--top-k", &f->top_k},
                                                   {"--moe-intermediate", &f->moe_inter},
                                                   {"--vocab", &f->vocab},
                                                   {"--heads", &f->heads},
                                                   {"--kv-heads", &f->kv_heads},
                                                   {"--prompt", &f->prompt},
                                                   {"--decode-steps", &f->decode_steps},
                                                   {"--batch", &f->batch},
                                                   {"--threads", &f->threads}};
  for (const auto& [name, value] : ints) {
    app.add_option(name, *value)->capture_default_str()->check(CLI::Range(1, 1 << 30));
  }
  app.add_option("--dtypes", f->dtypes, "Compute dtypes, comma-separated")->capture_default_str();
  app.add_option("--quants", f->quants,
                 "Formats, space-separated, each an EngineOptions::SetQuant spec (int4, or "
                 "int4,attention=int8); the quantized ones run with the first dtype only")
      ->capture_default_str();
  app.add_option("--reference", f->reference,
                 "Also run each full model with every op through libtorch")
      ->capture_default_str();
  app.add_option("--baseline", f->baseline,
                 "Also run each full model as this variant: a kernel ISA (avx512, avx2, "
                 "portable), exact (fp32 activations for int4, no int8 dot products) or copy "
                 "(experts copied out of the checkpoint, not mapped)");
  app.add_option("--cache-dir", f->cache_dir, "Where generated checkpoints are kept")
      ->capture_default_str();
  app.add_option("--child", f->child,
                 "Internal: run one configuration (bf16:full, fp32:half, bf16:full:libtorch)");
}

// Where configuration `config`'s child leaves its logits of the fixed text.
std::string LogitsPath(const Flags& f, std::string config) {
  for (char& c : config) {
    if (c == ':' || c == '+') c = '_';
  }
  return absl::StrCat(f.cache_dir, "/logits.", config, ".f32");
}

std::vector<float> ReadLogits(const Flags& f, const std::string& config) {
  std::ifstream in(LogitsPath(f, config), std::ios::binary);
  const std::vector<char> v((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<float> out(v.size() / sizeof(float));
  std::memcpy(out.data(), v.data(), out.size() * sizeof(float));
  return out;
}

int64_t ReadRssBytes() { return premoe::common::CurrentRssBytes().value_or(0); }

using premoe::bench::LoadAverage;

// ---- The checkpoint ---------------------------------------------------------

// Random bf16 weights of magnitude ~0.01 (sign and mantissa random, exponent
// 2^-7 or 2^-8): activations stay in range through the layers, and every
// value is distinct enough that nothing compresses or short-circuits.
void FillRandomBf16(std::vector<uint16_t>& v, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < v.size(); i += 4) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    for (size_t j = 0; j < 4 && i + j < v.size(); ++j) {
      const uint16_t r = static_cast<uint16_t>(s >> (16 * j));
      v[i + j] = static_cast<uint16_t>((r & 0x8000) | ((119 + ((r >> 7) & 1)) << 7) | (r & 0x7F));
    }
  }
}

std::string ModelDir(const Flags& f) {
  return absl::StrCat(f.cache_dir, "/qwen3_moe_h", f.hidden, "_l", f.layers, "_e", f.experts, "_k",
                      f.top_k, "_i", f.moe_inter, "_v", f.vocab, "_a", f.heads, "x", f.kv_heads);
}

bool WriteCheckpoint(const Flags& f, const std::string& dir) {
  namespace fs = std::filesystem;
  if (fs::exists(dir + "/DONE")) return true;
  fs::create_directories(dir);
  const int64_t head_dim = f.hidden / f.heads;
  const std::string config = absl::StrFormat(
      R"({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
 "vocab_size": %d, "hidden_size": %d, "intermediate_size": %d, "num_hidden_layers": %d,
 "num_attention_heads": %d, "num_key_value_heads": %d, "head_dim": %d,
 "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
 "hidden_act": "silu", "attention_bias": false, "tie_word_embeddings": false,
 "num_experts": %d, "num_experts_per_tok": %d, "moe_intermediate_size": %d,
 "norm_topk_prob": true, "decoder_sparse_step": 1, "mlp_only_layers": [],
 "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16"}
)",
      f.vocab, f.hidden, 4 * f.moe_inter, f.layers, f.heads, f.kv_heads, head_dim, f.experts,
      f.top_k, f.moe_inter);
  std::ofstream(dir + "/config.json") << config;

  std::string index = "{\"metadata\": {\"total_size\": ";
  std::string weight_map;
  uint64_t total = 0;
  const int64_t shards = f.layers + 1;
  uint64_t seed = 1;
  for (int64_t shard = 0; shard < shards; ++shard) {
    const auto start = Clock::now();
    premoe::checkpoint::SafetensorsWriter writer;
    std::vector<std::vector<uint16_t>> keep;  // the writer references these
    auto add = [&](const std::string& name, std::vector<int64_t> shape, bool ones) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      keep.emplace_back(n);
      if (ones) {
        std::fill(keep.back().begin(), keep.back().end(), 0x3F80);  // bf16 1.0
      } else {
        FillRandomBf16(keep.back(), seed++);
      }
      const auto* p = reinterpret_cast<const uint8_t*>(keep.back().data());
      (void)writer.AddUnowned(name, premoe::checkpoint::DType::kBF16, std::move(shape),
                              std::span<const uint8_t>(p, n * 2));
      absl::StrAppend(&weight_map, weight_map.empty() ? "" : ",\n", "\"", name, "\": \"",
                      absl::StrFormat("model-%05d-of-%05d.safetensors", shard + 1, shards), "\"");
    };
    if (shard == 0) {
      add("model.embed_tokens.weight", {f.vocab, f.hidden}, false);
      add("model.norm.weight", {f.hidden}, true);
      add("lm_head.weight", {f.vocab, f.hidden}, false);
    } else {
      const std::string p = absl::StrCat("model.layers.", shard - 1, ".");
      add(p + "input_layernorm.weight", {f.hidden}, true);
      add(p + "post_attention_layernorm.weight", {f.hidden}, true);
      add(p + "self_attn.q_proj.weight", {f.heads * head_dim, f.hidden}, false);
      add(p + "self_attn.k_proj.weight", {f.kv_heads * head_dim, f.hidden}, false);
      add(p + "self_attn.v_proj.weight", {f.kv_heads * head_dim, f.hidden}, false);
      add(p + "self_attn.o_proj.weight", {f.hidden, f.heads * head_dim}, false);
      add(p + "self_attn.q_norm.weight", {head_dim}, true);
      add(p + "self_attn.k_norm.weight", {head_dim}, true);
      add(p + "mlp.gate.weight", {f.experts, f.hidden}, false);
      for (int64_t e = 0; e < f.experts; ++e) {
        const std::string ep = absl::StrCat(p, "mlp.experts.", e, ".");
        add(ep + "gate_proj.weight", {f.moe_inter, f.hidden}, false);
        add(ep + "up_proj.weight", {f.moe_inter, f.hidden}, false);
        add(ep + "down_proj.weight", {f.hidden, f.moe_inter}, false);
      }
    }
    total += writer.data_bytes();
    const std::string path =
        absl::StrFormat("%s/model-%05d-of-%05d.safetensors", dir, shard + 1, shards);
    if (auto st = writer.Write(path); !st.ok()) {
      std::fprintf(stderr, "engine_bench: %s\n", st.ToString().c_str());
      return false;
    }
    std::fprintf(stderr, "  wrote shard %ld/%ld (%.2f GB) in %.1f s\n", shard + 1, shards,
                 writer.data_bytes() / 1e9, Seconds(start, Clock::now()));
  }
  absl::StrAppend(&index, total, "}, \"weight_map\": {\n", weight_map, "\n}}\n");
  std::ofstream(dir + "/model.safetensors.index.json") << index;
  std::ofstream(dir + "/DONE") << "ok\n";
  return true;
}

// ---- memcpy reference -----------------------------------------------------------

// Bytes copied per second (each byte read once and written once), best of
// five 1 GiB copies, split over `threads` threads.
double MemcpyBandwidth(int threads) {
  const size_t bytes = size_t{1} << 30;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto start = Clock::now();
    std::vector<std::thread> pool;
    const size_t part = bytes / threads;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back(
          [&, t] { std::memcpy(dst.data() + t * part, src.data() + t * part, part); });
    }
    for (auto& th : pool) th.join();
    best = std::max(best, bytes / Seconds(start, Clock::now()));
  }
  return best;
}

// ---- One engine configuration (child process) -------------------------------------

// Counts, per forward pass, the distinct experts each MoE layer ran: the
// expert weights that forward had to read.
class ExpertUnionTap final : public premoe::model::GateTap {
 public:
  void OnGate(const premoe::model::GateEvent& ev) override {
    at::Tensor sel = ev.selected_experts.cpu().contiguous();
    const int64_t* p = sel.data_ptr<int64_t>();
    std::set<int64_t> distinct(p, p + sel.numel());
    experts_run += static_cast<int64_t>(distinct.size());
  }
  int64_t experts_run = 0;
};

int RunChild(const Flags& f) {
  using namespace premoe::model;
  const std::pair<std::string, std::string> config_quant = absl::StrSplit(f.child, '+');
  const std::vector<std::string> parts = absl::StrSplit(config_quant.first, ':');
  const std::string dtype = parts[0];
  const bool half = parts.size() > 1 && parts[1] == "half";
  const bool libtorch = parts.size() > 2 && parts[2] == "libtorch";
  const std::string variant = parts.size() > 2 && !libtorch ? parts[2] : "";
  at::set_num_threads(static_cast<int>(f.threads));
  (void)at::ones({8}).sum();  // libtorch initialised before the baseline RSS
  const int64_t rss_base = ReadRssBytes();

  EngineOptions options;
  options.dtype = dtype;
  options.cpu_kernels = !libtorch;
  if (variant == "exact") {
    options.int8_activations = false;
  } else if (variant == "copy") {
    options.map_experts = false;
  } else {
    options.cpu_isa = variant;
  }
  if (!config_quant.second.empty()) {
    if (auto s = options.SetQuant(config_quant.second); !s.ok()) {
      std::fprintf(stderr, "engine_bench: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  if (half) {
    // The first half of every layer's experts: no pattern exists yet, and
    // for random weights any half is as good as another.
    std::vector<int64_t> kept(f.experts / 2);
    for (int64_t e = 0; e < f.experts / 2; ++e) kept[e] = e;
    for (int64_t l = 0; l < f.layers; ++l) options.keep.Set(l, kept);
  }
  const auto t_load = Clock::now();
  auto engine_or = Engine::Open(ModelDir(f), options);
  if (!engine_or.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", engine_or.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<Engine> engine = std::move(*engine_or);
  const double load_s = Seconds(t_load, Clock::now());
  const int64_t rss_loaded = ReadRssBytes();
  const int64_t weights = engine->weight_bytes();
  const int64_t elem = dtype == "fp32" ? 4 : 2;
  const int64_t experts_loaded = f.layers * (half ? f.experts / 2 : f.experts);
  // As held: quantized experts count their scales.
  const int64_t expert_bytes = engine->expert_bytes();
  // A token reads every weight but the embedding table (one row) and the
  // routed experts it is not sent to.
  const int64_t dense_bytes = weights - experts_loaded * expert_bytes - f.vocab * f.hidden * elem;
  std::fprintf(stderr, "  [%s] loaded %.2f GB of weights in %.1f s; RSS %.2f GB\n", f.child.c_str(),
               weights / 1e9, load_s, rss_loaded / 1e9);

  std::mt19937_64 rng(7);
  auto random_tokens = [&](int64_t n) {
    std::vector<int64_t> t(n);
    for (auto& x : t) x = static_cast<int64_t>(rng() % static_cast<uint64_t>(f.vocab - 2)) + 2;
    return t;
  };
  auto check = [](const absl::StatusOr<at::Tensor>& r) {
    if (!r.ok()) {
      std::fprintf(stderr, "engine_bench: %s\n", r.status().ToString().c_str());
      std::exit(1);
    }
  };

  // The logits of a fixed 16-token text, every position, for the parent to
  // compare formats by (random weights: quality cannot be scored, but how
  // far a format moves the logits can).
  {
    std::mt19937_64 fixed(11);
    std::vector<int64_t> text(16);
    for (auto& x : text) x = static_cast<int64_t>(fixed() % static_cast<uint64_t>(f.vocab - 2)) + 2;
    ForwardOptions fo;
    fo.all_logits = true;
    auto logits = engine->Forward({text}, nullptr, fo);
    check(logits);
    const at::Tensor l = logits->to(at::kFloat).contiguous();
    std::ofstream(LogitsPath(f, f.child), std::ios::binary)
        .write(static_cast<const char*>(l.const_data_ptr()),
               static_cast<std::streamsize>(l.nbytes()));
  }

  // Prefill: a fresh cache per run; median of 3 after a warm-up.
  const std::vector<int64_t> prompt = random_tokens(f.prompt);
  std::vector<double> times;
  for (int rep = 0; rep < 4; ++rep) {
    const auto start = Clock::now();
    check(engine->Forward({prompt}, nullptr));
    if (rep > 0) times.push_back(Seconds(start, Clock::now()));
  }
  std::sort(times.begin(), times.end());
  const double prefill_tps = f.prompt / times[times.size() / 2];
  std::fprintf(stderr, "  [%s] prefill %ld tokens: %.1f tokens/s\n", f.child.c_str(), f.prompt,
               prefill_tps);

  // Decode at batch B: prefill each sequence with its own prompt, two
  // warm-up steps, then timed steps of one new token per sequence.
  struct Decode {
    double tps = 0, bandwidth = 0;
    int64_t kv_bytes = 0, rss = 0;
  };
  auto decode = [&](int64_t batch) {
    Decode d;
    const int64_t warm = 2;
    auto cache = engine->NewCache(batch, f.prompt + warm + f.decode_steps).value();
    std::vector<std::vector<int64_t>> tokens(batch);
    for (auto& t : tokens) t = random_tokens(f.prompt);
    check(engine->Forward(tokens, cache.get()));
    for (int64_t s = 0; s < warm; ++s) {
      for (auto& t : tokens) t = random_tokens(1);
      check(engine->Forward(tokens, cache.get()));
    }
    ExpertUnionTap tap;
    ForwardOptions fo;
    fo.tap = &tap;
    const auto start = Clock::now();
    for (int64_t s = 0; s < f.decode_steps; ++s) {
      for (auto& t : tokens) t = random_tokens(1);
      check(engine->Forward(tokens, cache.get(), fo));
    }
    const double secs = Seconds(start, Clock::now());
    d.tps = batch * f.decode_steps / secs;
    d.bandwidth =
        static_cast<double>(f.decode_steps * dense_bytes + tap.experts_run * expert_bytes) / secs;
    const int64_t head_dim = f.hidden / f.heads;
    d.kv_bytes = 2 * f.layers * batch * f.kv_heads * cache->capacity() * head_dim * elem;
    d.rss = ReadRssBytes();
    std::fprintf(stderr, "  [%s] decode batch %ld: %.2f tokens/s, weights read %.2f GB/s\n",
                 f.child.c_str(), batch, d.tps, d.bandwidth / 1e9);
    return d;
  };
  const Decode d1 = decode(1);
  const Decode db = decode(f.batch);
  std::printf("RESULT %s %ld %ld %ld %ld %.6g %.6g %.6g %.6g %.6g %ld %ld %.3f\n", f.child.c_str(),
              weights, rss_base, rss_loaded, db.rss, prefill_tps, d1.tps, d1.bandwidth, db.tps,
              db.bandwidth, db.kv_bytes, dense_bytes + f.top_k * f.layers * expert_bytes, load_s);
  return 0;
}

// ---- Parent: build, measure, tabulate --------------------------------------------

struct Result {
  std::string config;
  int64_t weights = 0, rss_base = 0, rss_loaded = 0, rss_decode = 0, kv_bytes = 0, token_bytes = 0;
  double prefill = 0, d1 = 0, bw1 = 0, db = 0, bwb = 0, load_s = 0;
};

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app("engine_bench: prefill and decode throughput of the MoE engine");
  AddFlags(app, &f);
  CLI11_PARSE(app, argc, argv);
  if (!f.child.empty()) return RunChild(f);

  const auto t0 = Clock::now();
  const std::string load_start = LoadAverage();
  const std::string dir = ModelDir(f);
  const int64_t head_dim = f.hidden / f.heads;
  const double params =
      static_cast<double>(f.layers) *
          (3.0 * f.experts * f.hidden * f.moe_inter + 2.0 * f.heads * head_dim * f.hidden +
           2.0 * f.kv_heads * head_dim * f.hidden + f.experts * f.hidden) +
      2.0 * f.vocab * f.hidden;
  std::fprintf(stderr, "engine_bench: qwen3_moe, %.2fB parameters, checkpoint %s\n", params / 1e9,
               dir.c_str());
  if (!WriteCheckpoint(f, dir)) return 1;

  std::fprintf(stderr, "measuring memcpy bandwidth...\n");
  const double memcpy1 = MemcpyBandwidth(1);
  const double memcpy_t = MemcpyBandwidth(static_cast<int>(f.threads));
  std::fprintf(stderr, "  memcpy: %.2f GB/s (1 thread), %.2f GB/s (%ld threads)\n", memcpy1 / 1e9,
               memcpy_t / 1e9, f.threads);

  std::vector<Result> results;
  std::vector<std::string> configs;
  const std::vector<std::string> dtypes = absl::StrSplit(f.dtypes, ',');
  for (const std::string& dtype : dtypes) {
    for (const std::string& quant : f.quants) {
      if (quant == "none") {
        configs.push_back(dtype + ":full");
        configs.push_back(dtype + ":half");
        if (f.reference) configs.push_back(dtype + ":full:libtorch");
        if (!f.baseline.empty()) configs.push_back(dtype + ":full:" + f.baseline);
      } else if (dtype == dtypes.front()) {
        configs.push_back(absl::StrCat(dtype, ":full+", quant));
        configs.push_back(absl::StrCat(dtype, ":half+", quant));
        if (!f.baseline.empty()) {
          configs.push_back(absl::StrCat(dtype, ":full:", f.baseline, "+", quant));
        }
      }
    }
  }
  {
    for (const std::string& config : configs) {
      std::fprintf(stderr, "running %s...\n", config.c_str());
      std::string cmd = absl::StrCat("'/proc/", getpid(), "/exe'");
      for (int i = 1; i < argc; ++i) absl::StrAppend(&cmd, " '", argv[i], "'");
      absl::StrAppend(&cmd, " --child '", config, "'");
      std::FILE* pipe = popen(cmd.c_str(), "r");
      if (pipe == nullptr) return 1;
      char line[1024];
      Result r;
      bool got = false;
      while (std::fgets(line, sizeof(line), pipe) != nullptr) {
        char name[128];
        if (std::sscanf(line, "RESULT %127s %ld %ld %ld %ld %lf %lf %lf %lf %lf %ld %ld %lf", name,
                        &r.weights, &r.rss_base, &r.rss_loaded, &r.rss_decode, &r.prefill, &r.d1,
                        &r.bw1, &r.db, &r.bwb, &r.kv_bytes, &r.token_bytes, &r.load_s) == 13) {
          r.config = name;
          got = true;
        }
      }
      if (pclose(pipe) != 0 || !got) {
        std::fprintf(stderr, "engine_bench: configuration %s failed\n", config.c_str());
        return 1;
      }
      results.push_back(r);
    }
  }

  std::printf(
      "\nqwen3_moe: hidden %ld, %ld layers, %ld experts (top-%ld), moe_intermediate %ld, "
      "vocab %ld, %ld/%ld heads; %.2fB parameters. %ld torch threads. Prompt %ld tokens; "
      "decode %ld steps after a %ld-token context. memcpy %.1f GB/s (1 thread), %.1f GB/s "
      "(%ld threads; the reference below).\n\n",
      f.hidden, f.layers, f.experts, f.top_k, f.moe_inter, f.vocab, f.heads, f.kv_heads,
      params / 1e9, f.threads, f.prompt, f.decode_steps, f.prompt, memcpy1 / 1e9, memcpy_t / 1e9,
      f.threads);
  std::printf(
      "| model | weights GB | load s | RSS loaded GB (overhead) | prefill tok/s | "
      "decode b1 tok/s | b1 weight GB/s (/memcpy) | decode b%ld tok/s | "
      "b%ld weight GB/s (/memcpy) | RSS decoding b%ld GB (over weights+KV) | "
      "GB read per b1 token |\n",
      f.batch, f.batch, f.batch);
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Result& r : results) {
    const double over = static_cast<double>(r.rss_loaded - r.weights) / r.weights;
    const double over_d = static_cast<double>(r.rss_decode - r.weights - r.kv_bytes) / r.weights;
    std::printf(
        "| %s | %.2f | %.1f | %.2f (%+.1f%%) | %.1f | %.2f | %.2f (%.2f) | %.2f | %.2f (%.2f) | "
        "%.2f (%+.1f%%) | %.3f |\n",
        r.config.c_str(), r.weights / 1e9, r.load_s, r.rss_loaded / 1e9, 100 * over, r.prefill,
        r.d1, r.bw1 / 1e9, r.bw1 / memcpy_t, r.db, r.bwb / 1e9, r.bwb / memcpy_t,
        r.rss_decode / 1e9, 100 * over_d, r.token_bytes / 1e9);
  }
  // Each quantized configuration against the same model dense, same run.
  for (const Result& q : results) {
    const size_t plus = q.config.find('+');
    if (plus == std::string::npos) continue;
    for (const Result& r : results) {
      if (r.config != q.config.substr(0, plus)) continue;
      std::printf(
          "\n%s against %s: bytes read per token %.2f, weights held %.2f, RSS %.2f; prefill "
          "%.2fx, decode b1 %.2fx, decode b%ld %.2fx.",
          q.config.c_str(), r.config.c_str(), static_cast<double>(q.token_bytes) / r.token_bytes,
          static_cast<double>(q.weights) / r.weights,
          static_cast<double>(q.rss_decode) / r.rss_decode, q.prefill / r.prefill, q.d1 / r.d1,
          f.batch, q.db / r.db);
      // How far the format moves the logits of the fixed text (16 positions).
      const std::vector<float> a = ReadLogits(f, q.config), b = ReadLogits(f, r.config);
      if (a.size() == b.size() && !a.empty() && a.size() % f.vocab == 0) {
        double diff = 0, norm = 0;
        int64_t same = 0;
        const int64_t positions = static_cast<int64_t>(a.size()) / f.vocab;
        for (int64_t p = 0; p < positions; ++p) {
          const float* x = a.data() + p * f.vocab;
          const float* y = b.data() + p * f.vocab;
          for (int64_t v = 0; v < f.vocab; ++v) {
            diff += (x[v] - y[v]) * static_cast<double>(x[v] - y[v]);
            norm += y[v] * static_cast<double>(y[v]);
          }
          same += std::max_element(x, x + f.vocab) - x == std::max_element(y, y + f.vocab) - y;
        }
        std::printf(
            " Logits of a 16-token text: relative L2 error %.4f, the same argmax at %ld of %ld "
            "positions.",
            std::sqrt(diff / norm), same, positions);
      }
    }
  }
  for (const Result& r : results) {
    if (!absl::EndsWith(r.config, ":full:libtorch")) continue;
    const std::string fast = r.config.substr(0, r.config.size() - std::strlen(":libtorch"));
    for (const Result& q : results) {
      if (q.config != fast) continue;
      std::printf(
          "\n%s against the same model with every op through libtorch (%s): prefill %.2fx, "
          "decode b1 %.2fx, decode b%ld %.2fx.",
          fast.c_str(), r.config.c_str(), q.prefill / r.prefill, q.d1 / r.d1, f.batch, q.db / r.db);
    }
  }
  // Each full model against its baseline variant, same run.
  const std::string on_isa = ":" + f.baseline;
  for (const Result& r : results) {
    if (f.baseline.empty() || r.config.find(on_isa) == std::string::npos) continue;
    std::string best = r.config;
    best.erase(best.find(on_isa), on_isa.size());
    for (const Result& q : results) {
      if (q.config != best) continue;
      std::printf(
          "\n%s against %s (%s): prefill %.2fx, decode b1 %.2fx, decode b%ld %.2fx; load time "
          "%.2fx, RSS after load %.2fx.",
          best.c_str(), r.config.c_str(), f.baseline.c_str(), q.prefill / r.prefill, q.d1 / r.d1,
          f.batch, q.db / r.db, q.load_s / r.load_s,
          static_cast<double>(q.rss_loaded) / static_cast<double>(r.rss_loaded));
    }
  }
  std::printf(
      "\n\nRSS overhead counts everything beyond the weights, libtorch's own ~%.2f GB "
      "included. Weight GB/s: bytes of the weights each forward reads (all but the "
      "embedding table and the routed experts no token of the step selected) x forwards/s; "
      "a batch-1 token of %s reads %.2f GB.\n",
      results.empty() ? 0.0 : results[0].rss_base / 1e9,
      results.empty() ? "" : results[0].config.c_str(),
      results.empty() ? 0.0 : results[0].token_bytes / 1e9);
  std::printf(
      "Machine: %s. Load average (1 min) at start %s, at end %s: other processes on the machine "
      "slow libtorch's thread pool far more than their share (a parallel region waits "
      "for its slowest thread).\n",
      premoe::bench::MachineName().c_str(), load_start.c_str(), LoadAverage().c_str());
  std::fprintf(stderr, "engine_bench: done in %.0f s\n", Seconds(t0, Clock::now()));
  return 0;
}
