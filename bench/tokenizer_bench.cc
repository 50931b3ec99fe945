// Tokenizer encode throughput on one core, premoe against the Hugging Face
// `tokenizers` library (the reference, run by bench/tokenizer_reference.py in
// the same run on the same text), for the four real tokenizer files.
//
// usage: tokenizer_bench [--seconds S] [--repeat N]
// Text: tests/data/tokenizer_corpus.txt repeated N times (default 20),
// encoded line by line without special tokens; best of the passes that fit in
// S seconds (default 3) per tokenizer and side.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "premoe/tokenizer/tokenizer.h"

namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string RunCommand(const std::string& command) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return "";
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  ::pclose(pipe);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 3;
  int repeat = 20;
  CLI::App app("tokenizer_bench: encode throughput, premoe against Hugging Face tokenizers");
  app.add_option("--seconds", seconds, "Time per tokenizer and side; the best pass counts")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 86400.0));
  app.add_option("--repeat", repeat, "Copies of the corpus in the text")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 30));
  CLI11_PARSE(app, argc, argv);
  const char* src_env = std::getenv("PREMOE_SOURCE_DIR");
  const std::string src = src_env != nullptr ? src_env : ".";
  const char* py_env = std::getenv("PREMOE_PYTHON");
  const std::string python = py_env != nullptr ? py_env : src + "/.venv/bin/python";

  std::string corpus = Slurp(src + "/tests/data/tokenizer_corpus.txt");
  if (corpus.empty()) {
    std::fprintf(stderr, "run from the source root (or set PREMOE_SOURCE_DIR)\n");
    return 1;
  }
  std::string text;
  for (int r = 0; r < repeat; ++r) text += corpus;
  const std::string text_path = "/tmp/premoe_tokenizer_bench.txt";
  std::ofstream(text_path, std::ios::binary) << text;
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  lines.pop_back();

  std::printf("Encode throughput, one thread, %.2f MB of varied text (%zu lines)\n",
              text.size() / 1e6, lines.size());
  std::printf("| tokenizer | premoe MB/s | HF tokenizers MB/s | premoe / HF | ids equal |\n");
  std::printf("|---|---:|---:|---:|---|\n");
  for (const std::string name : {"deepseek_v3", "qwen3", "gptoss", "llama2"}) {
    const std::string path = src + "/../shared/tokenizers/" + name + ".tokenizer.json";
    auto tok = premoe::tokenizer::Tokenizer::FromFile(path);
    if (!tok.ok()) {
      std::fprintf(stderr, "%s\n", tok.status().ToString().c_str());
      return 1;
    }
    double best = 0;
    size_t tokens = 0;
    const auto start_all = std::chrono::steady_clock::now();
    do {
      const auto t0 = std::chrono::steady_clock::now();
      tokens = 0;
      for (const std::string& line : lines) tokens += (*tok)->Encode(line)->size();
      const double dt =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::max(best, (text.size() - lines.size()) / dt / 1e6);
    } while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start_all).count() <
             seconds);
    const std::string ref_out = RunCommand(absl::StrCat(
        python, " ", src, "/bench/tokenizer_reference.py ", path, " ", text_path, " ", seconds));
    auto ref = nlohmann::json::parse(ref_out, nullptr, /*allow_exceptions=*/false);
    if (ref.is_discarded() || !ref.contains("mb_per_s")) {
      std::fprintf(stderr, "reference failed: %s\n", ref_out.c_str());
      return 1;
    }
    const double ref_mb = ref["mb_per_s"].get<double>();
    std::printf("| %s | %.2f | %.2f | %.2f | %s |\n", name.c_str(), best, ref_mb, best / ref_mb,
                ref["tokens"].get<size_t>() == tokens ? "yes" : "NO");
  }
  return 0;
}
