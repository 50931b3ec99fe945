#include "cli/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace premoe::cli {

ProgressBar::ProgressBar(std::string label)
    : label_(std::move(label)),
      enabled_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() { Done(); }

void ProgressBar::Done() {
  if (drawn_) std::fputc('\n', stderr);
  drawn_ = false;
}

void ProgressBar::Update(double fraction, const std::string& detail) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  fraction = std::clamp(fraction, 0.0, 1.0);
  if (drawn_ && fraction < 1.0 && now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  constexpr int kWidth = 20;
  const int filled = static_cast<int>(fraction * kWidth);
  const std::string bar = std::string(filled, '#') + std::string(kWidth - filled, '-');
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  std::fprintf(stderr, "\r%s [%s] %3d%%  %s  %.1f s", label_.c_str(), bar.c_str(),
               static_cast<int>(fraction * 100), detail.c_str(), elapsed);
  // An estimate needs some progress to extrapolate from.
  if (fraction >= 0.02 && fraction < 1.0) {
    std::fprintf(stderr, ", ~%.1f s left", elapsed * (1.0 - fraction) / fraction);
  }
  std::fputs("\x1b[K", stderr);  // clear what a longer previous line left
  std::fflush(stderr);
  drawn_ = true;
}

}  // namespace premoe::cli
