#include "premoe/model/gate_dump.h"

#include <ATen/ATen.h>

#include <charconv>
#include <cmath>
#include <exception>
#include <type_traits>

#include "absl/strings/str_cat.h"

namespace premoe::model {
namespace {

void AppendFloat(std::string* out, float v) {
  if (!std::isfinite(v)) {
    out->append("null");
    return;
  }
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, end);
}

// A [T] tensor as a flat array, a [T, C] one as an array of rows.
template <typename T>
void AppendMatrix(std::string* out, const at::Tensor& m) {
  const at::Tensor c = m.cpu().contiguous();
  const T* p = c.data_ptr<T>();
  const int64_t rows = c.size(0), cols = c.dim() > 1 ? c.size(1) : 1;
  out->push_back('[');
  for (int64_t r = 0; r < rows; ++r) {
    if (r > 0) out->push_back(',');
    if (c.dim() > 1) out->push_back('[');
    for (int64_t j = 0; j < cols; ++j) {
      if (j > 0) out->push_back(',');
      if constexpr (std::is_same_v<T, float>) {
        AppendFloat(out, p[r * cols + j]);
      } else {
        absl::StrAppend(out, p[r * cols + j]);
      }
    }
    if (c.dim() > 1) out->push_back(']');
  }
  out->push_back(']');
}

}  // namespace

std::string GateEventJson(const GateEvent& ev, int64_t forward) {
  std::string line;
  absl::StrAppend(&line, "{\"forward\":", forward, ",\"layer\":", ev.layer, ",\"sequence\":");
  AppendMatrix<int64_t>(&line, ev.sequence);
  line.append(",\"position\":");
  AppendMatrix<int64_t>(&line, ev.position);
  line.append(",\"gate_logits\":");
  AppendMatrix<float>(&line, ev.gate_logits);
  line.append(",\"selected_experts\":");
  AppendMatrix<int64_t>(&line, ev.selected_experts);
  line.append(",\"routing_weights\":");
  AppendMatrix<float>(&line, ev.routing_weights.to(at::kFloat));
  line.append("}\n");
  return line;
}

void JsonlGateDump::OnGate(const GateEvent& ev) {
  if (ev.layer <= last_layer_) ++forward_;
  last_layer_ = ev.layer;
  if (!status_.ok()) return;
  std::string line;
  // A tap cannot return a Status, and no libtorch exception may leave the
  // library: keep the first failure for status().
  try {
    line = GateEventJson(ev, forward_);
  } catch (const std::exception& e) {
    status_ = absl::InternalError(absl::StrCat("router dump, layer ", ev.layer, ": ", e.what()));
    return;
  }
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size()) {
    status_ = absl::DataLossError(
        absl::StrCat("router dump: a write failed at forward ", forward_, ", layer ", ev.layer));
  }
}

}  // namespace premoe::model
