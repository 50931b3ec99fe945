// FlatIndex: exact inner-product search over unit vectors, one query at a
// time (the router's Search). Internal to premoe::store.
//
// Why not faiss::IndexFlatIP: one query over n rows is bound by the bytes it
// reads, and FAISS reads n x d fp32 (with no FMA code in Debian's build).
// So the scan reads int8 rows with one scale each (a quarter of the bytes),
// and each row keeps the exact L2 norm of its rounding error. With a unit
// query, Cauchy-Schwarz bounds how far a row's int8 score can be from its
// fp32 score; the rows whose upper bounds reach the k-th best lower bound
// are rescored from the fp32 rows. The result is therefore the exact top-k,
// not an approximation. docs/store.md has the figures (bench/store_bench).
//
// A plain value: not thread-safe for writes; concurrent const calls
// (Search) are safe.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace premoe::store {

class FlatIndex {
 public:
  explicit FlatIndex(std::int32_t dim) : dim_(dim) {}

  std::int32_t dim() const { return dim_; }
  std::int64_t size() const { return static_cast<std::int64_t>(keys_.size()); }

  // Appends n rows (n x dim, row-major; unit vectors) under `keys`.
  void Add(std::span<const float> rows, std::span<const std::uint64_t> keys);
  // Removes the rows whose keys fall in [lo, hi), keeping the others' order.
  // Returns how many it removed.
  std::int64_t RemoveRange(std::uint64_t lo, std::uint64_t hi);

  // The `k` rows of largest fp32 inner product with `query` (dim floats, a
  // unit vector), best first, as (similarity, key); fewer when the index
  // holds fewer rows.
  std::vector<std::pair<float, std::uint64_t>> Search(std::span<const float> query,
                                                      std::int64_t k) const;

  std::uint64_t key(std::int64_t row) const { return keys_[row]; }
  std::span<const float> row(std::int64_t i) const {
    return {rows_.data() + static_cast<std::size_t>(i) * dim_, static_cast<std::size_t>(dim_)};
  }
  std::span<const std::uint64_t> keys() const { return keys_; }
  std::span<const float> rows() const { return rows_; }

 private:
  std::int32_t dim_;
  std::vector<float> rows_;         // size() x dim, the exact rows
  std::vector<std::int8_t> codes_;  // the same as int8: row i ~ scale_[i] * codes
  std::vector<float> scale_;        // per row: max |x| / 127
  std::vector<float> error_;        // per row: || row - scale * codes ||_2
  std::vector<std::uint64_t> keys_;
};

}  // namespace premoe::store
