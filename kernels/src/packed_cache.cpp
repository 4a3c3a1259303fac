// The cache of packed recurrent / input weights (see packed_weight in
// layer_core.h).

#include <algorithm>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "gates.h"
#include "layer_core.h"

namespace edgelstm::detail {

namespace {

// -- packed recurrent weights, cached per weight buffer ---------------------

// A packing is cached under the weight's data pointer, shape and strides
// (and its scales' pointer for int8) together with owning handles of both
// buffers: while the entry lives the buffers can be neither freed nor reused
// by MLX (a held buffer is never donated), so the same key means the same
// weights. Small: streaming calls reuse a few weights; training replaces
// its weights every step and simply evicts (LRU).
constexpr size_t kPackCacheEntries = 16;
constexpr size_t kPackCacheFloats = size_t(1) << 24; // 64 MiB in all

struct PackEntry {
  const void* ptr;
  const void* sptr;
  mx::Shape shape;
  mx::Strides strides;
  int gates;
  std::shared_ptr<mx::allocator::Data> owner, sowner;
  std::shared_ptr<const PackedFloats> packed;
  uint64_t used;
};

std::mutex pack_mu;
// Never destroyed: entries hold MLX buffers, which must not be released
// after MLX's allocator is gone at exit.
auto* pack_cache = new std::vector<PackEntry>();
uint64_t pack_clock = 0;

// A weight (gates*N, K) packed by pack_gates: Wh (4H, H) with gates = 4 for
// lstm_fused_step, Wx (G, I) with gates = 1 for gemm_packed. `values()`
// gives its row-major float values (int8 expanded), called only on a miss.
} // namespace

std::shared_ptr<const PackedFloats> packed_weight(
    const mx::array& wh,
    const mx::array* scales,
    const std::function<const float*()>& values,
    int gates,
    const std::shared_ptr<mx::allocator::Data>& owner,
    const std::shared_ptr<mx::allocator::Data>& sowner) {
  const GateFns& fns = gate_fns();
  const int N = wh.shape(0) / gates;
  const int K = wh.shape(1);
  auto pack = [&] {
    auto v = std::make_shared<PackedFloats>(
        size_t(fns.packed_floats(gates, N, K)));
    fns.pack_gates(values(), gates, N, K, v->data());
    return v;
  };
  const bool cacheable = owner && (!scales || sowner);
  if (!cacheable) {
    return pack();
  }
  const void* ptr = wh.data<void>();
  const void* sptr = scales ? scales->data<void>() : nullptr;
  {
    std::lock_guard<std::mutex> lock(pack_mu);
    for (auto& e : *pack_cache) {
      if (e.ptr == ptr && e.sptr == sptr && e.gates == gates &&
          e.shape == wh.shape() && e.strides == wh.strides()) {
        e.used = ++pack_clock;
        return e.packed;
      }
    }
  }
  auto packed = pack();
  std::lock_guard<std::mutex> lock(pack_mu);
  size_t total = packed->size();
  for (const auto& e : *pack_cache) {
    total += e.packed->size();
  }
  while (!pack_cache->empty() &&
         (pack_cache->size() >= kPackCacheEntries || total > kPackCacheFloats)) {
    auto lru = std::min_element(
        pack_cache->begin(), pack_cache->end(),
        [](const PackEntry& a, const PackEntry& b) { return a.used < b.used; });
    total -= lru->packed->size();
    pack_cache->erase(lru);
  }
  if (packed->size() <= kPackCacheFloats) {
    pack_cache->push_back(PackEntry{
        ptr, sptr, wh.shape(), wh.strides(), gates, owner, sowner, packed,
        ++pack_clock});
  }
  return packed;
}

} // namespace edgelstm::detail
