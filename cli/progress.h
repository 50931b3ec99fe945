// A one-line progress bar on stderr for long commands:
//   profile add  [##########----------]  50%  8/16 samples  3.1 s, ~3.1 s left
// Drawn only when stderr is a terminal ("\r" redraws make a mess of logs),
// at most ~10 times a second. Not thread-safe: one thread updates it.
#pragma once

#include <chrono>
#include <string>

namespace premoe::cli {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  // Done().
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // `fraction` of the work is done (clamped to [0, 1]); `detail` follows the
  // percentage, e.g. "8/16 samples".
  void Update(double fraction, const std::string& detail);
  // Ends the bar's line if anything was drawn, so output can follow.
  void Done();

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace premoe::cli
