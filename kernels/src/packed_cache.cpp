// The cache of packed recurrent / input weights (see packed_weight in
// layer_core.h).

#include <algorithm>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "gates.h"
#include "layer_core.h"
#include "lstm_q8.h"

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
constexpr size_t kPackCacheBytes = size_t(1) << 26; // 64 MiB in all

// Float panels (packed_weight), the two int8 layouts (packed_weight_q8) and
// int8 weights expanded to float (expanded_weight) share the cache; `kind`
// tells them apart.
enum PackKind { kFloat = 0, kQ8Widen = 1, kQ8Vnni = 2, kQ8Expanded = 3 };
struct PackEntry {
  const void* ptr;
  const void* sptr;
  mx::Shape shape;
  mx::Strides strides;
  int gates;
  int kind;
  std::shared_ptr<mx::allocator::Data> owner, sowner;
  std::shared_ptr<const void> packed;
  size_t bytes;
  uint64_t used;
};

std::mutex pack_mu;
// Never destroyed: entries hold MLX buffers, which must not be released
// after MLX's allocator is gone at exit.
auto* pack_cache = new std::vector<PackEntry>();
uint64_t pack_clock = 0;

// The packing of `w` (scales `scales`) made by `pack` (returning it and its
// size in bytes), cached when the owners allow it.
std::shared_ptr<const void> cached_packing(
    const mx::array& w,
    const mx::array* scales,
    int gates,
    int kind,
    const std::shared_ptr<mx::allocator::Data>& owner,
    const std::shared_ptr<mx::allocator::Data>& sowner,
    const std::function<std::pair<std::shared_ptr<const void>, size_t>()>& pack) {
  const bool cacheable = owner && (!scales || sowner);
  if (!cacheable) {
    return pack().first;
  }
  const void* ptr = w.data<void>();
  const void* sptr = scales ? scales->data<void>() : nullptr;
  {
    std::lock_guard<std::mutex> lock(pack_mu);
    for (auto& e : *pack_cache) {
      if (e.ptr == ptr && e.sptr == sptr && e.gates == gates && e.kind == kind &&
          e.shape == w.shape() && e.strides == w.strides()) {
        e.used = ++pack_clock;
        return e.packed;
      }
    }
  }
  auto [packed, bytes] = pack();
  std::lock_guard<std::mutex> lock(pack_mu);
  size_t total = bytes;
  for (const auto& e : *pack_cache) {
    total += e.bytes;
  }
  while (!pack_cache->empty() &&
         (pack_cache->size() >= kPackCacheEntries || total > kPackCacheBytes)) {
    auto lru = std::min_element(
        pack_cache->begin(), pack_cache->end(),
        [](const PackEntry& a, const PackEntry& b) { return a.used < b.used; });
    total -= lru->bytes;
    pack_cache->erase(lru);
  }
  if (bytes <= kPackCacheBytes) {
    pack_cache->push_back(PackEntry{
        ptr, sptr, w.shape(), w.strides(), gates, kind, owner, sowner, packed,
        bytes, ++pack_clock});
  }
  return packed;
}

} // namespace

// A weight (gates*N, K) packed by pack_gates: Wh (4H, H) with gates = 4 for
// lstm_fused_step, Wx (G, I) with gates = 1 for gemm_packed. `values()`
// gives its row-major float values (int8 expanded), called only on a miss.
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
  auto packed = cached_packing(wh, scales, gates, kFloat, owner, sowner, [&] {
    auto v = std::make_shared<PackedFloats>(
        size_t(fns.packed_floats(gates, N, K)));
    fns.pack_gates(values(), gates, N, K, v->data());
    return std::make_pair(
        std::shared_ptr<const void>(v), v->size() * sizeof(float));
  });
  return std::static_pointer_cast<const PackedFloats>(packed);
}

std::shared_ptr<const PackedQ8> packed_weight_q8(
    const mx::array& wh,
    const mx::array& scales,
    bool vnni,
    const std::shared_ptr<mx::allocator::Data>& owner,
    const std::shared_ptr<mx::allocator::Data>& sowner) {
  const Q8Fns& fns = q8_fns();
  const int H = wh.shape(1);
  vnni = vnni && fns.pack_gates_q8_vnni;
  const int kind = vnni ? kQ8Vnni : kQ8Widen;
  auto packed = cached_packing(wh, &scales, 4, kind, owner, sowner, [&] {
    std::vector<int8_t> qbuf;
    std::vector<float> sbuf;
    const auto* q = reinterpret_cast<const signed char*>(row_major(wh, qbuf));
    const float* s = row_major(scales, sbuf);
    auto p = std::make_shared<PackedQ8>();
    p->s.resize(size_t(fns.packed_q8_scales(H)));
    if (vnni) {
      p->qv.resize(size_t(fns.packed_q8_vnni_bytes(H)));
      p->rs.resize(p->s.size());
      fns.pack_gates_q8_vnni(q, s, H, p->qv.data(), p->rs.data(), p->s.data());
    } else {
      p->q.resize(size_t(fns.packed_q8_bytes(H)));
      fns.pack_gates_q8(q, s, H, p->q.data(), p->s.data());
    }
    return std::make_pair(
        std::shared_ptr<const void>(p),
        p->q.size() + p->qv.size() + p->s.size() * sizeof(float) +
            p->rs.size() * sizeof(long long));
  });
  return std::static_pointer_cast<const PackedQ8>(packed);
}

std::shared_ptr<const PackedFloats> expanded_weight(
    const mx::array& w,
    const mx::array& scales,
    const std::function<const float*()>& values,
    const std::shared_ptr<mx::allocator::Data>& owner,
    const std::shared_ptr<mx::allocator::Data>& sowner) {
  const size_t n = w.size();
  auto expanded = cached_packing(w, &scales, 1, kQ8Expanded, owner, sowner, [&] {
    const float* v = values();
    auto e = std::make_shared<PackedFloats>(v, v + n);
    return std::make_pair(std::shared_ptr<const void>(e), n * sizeof(float));
  });
  return std::static_pointer_cast<const PackedFloats>(expanded);
}

} // namespace edgelstm::detail
