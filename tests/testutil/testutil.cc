#include "tests/testutil/testutil.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace premoe::testing {
namespace {

std::string Getenv(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : fallback;
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

}  // namespace

TempDir::TempDir() {
  std::string tmpl = Getenv("TEST_TMPDIR", "/tmp") + "/premoe_test_XXXXXX";
  char* made = ::mkdtemp(tmpl.data());
  if (made == nullptr) {
    ADD_FAILURE() << "mkdtemp failed for " << tmpl;
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string SourceDir() {
  return Getenv("PREMOE_SOURCE_DIR", std::filesystem::current_path().string());
}

std::string SharedDir() { return SourceDir() + "/../shared"; }

absl::StatusOr<std::string> RunPython(const std::string& script,
                                      const std::vector<std::string>& args) {
  const std::string python = Getenv("PREMOE_PYTHON", SourceDir() + "/.venv/bin/python");
  TempDir tmp;
  const std::string err_path = tmp.Join("stderr");
  std::string command =
      absl::StrCat(ShellQuote(python), " ", ShellQuote(SourceDir() + "/" + script));
  for (const std::string& a : args) absl::StrAppend(&command, " ", ShellQuote(a));
  absl::StrAppend(&command, " 2>", ShellQuote(err_path));
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return absl::InternalError("popen failed: " + command);
  std::string out;
  char buffer[65536];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  const int rc = ::pclose(pipe);
  if (rc != 0) {
    std::ifstream err(err_path);
    std::stringstream ss;
    ss << err.rdbuf();
    return absl::InternalError(
        absl::StrCat(command, " exited with ", WEXITSTATUS(rc), ":\n", ss.str()));
  }
  return out;
}

void WriteStringToFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out << contents;
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int ProcessThreads() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
  }
  ADD_FAILURE() << "no Threads line in /proc/self/status";
  return 0;
}

}  // namespace premoe::testing
