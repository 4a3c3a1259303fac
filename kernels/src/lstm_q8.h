// The fused LSTM step on int8 recurrent weights (gates_packed_q8.inc): its
// per-ISA table, the cached int8 packing and the sequence loop that
// run_layer hands small int8 batches to.

#pragma once

#include <memory>
#include <vector>

#include "layer_core.h"

namespace edgelstm {

#define EDGELSTM_Q8_DECLS                                                     \
  long packed_q8_bytes(int H);                                                \
  long packed_q8_scales(int H);                                               \
  void pack_gates_q8(const signed char* q, const float* s, int H,             \
                     signed char* out, float* sout);                          \
  void lstm_fused_step_q8(const signed char* packed, const float* scales,     \
                          const float* h, int B, int H, const float* const* x, \
                          float* hn, float* c, float* const* y);

namespace gates_base {
EDGELSTM_Q8_DECLS
}
#ifdef EDGELSTM_HAVE_AVX2
namespace gates_avx2 {
EDGELSTM_Q8_DECLS
}
namespace gates_avx512 {
EDGELSTM_Q8_DECLS
// The VNNI step (AVX-512 build, run only where the CPU has avx512vnni).
int q8_vnni_kpad(int H);
long packed_q8_vnni_bytes(int H);
void pack_gates_q8_vnni(const signed char* q, const float* s, int H,
                        signed char* out, long long* rs, float* sout);
bool lstm_fused_step_q8_vnni(const signed char* pv, const long long* rs,
                             const float* scales, const float* h, int B, int H,
                             const float* const* x, float* hn, float* c,
                             float* const* y, unsigned char* limbs, double* hs);
}
#endif

struct Q8Fns {
  decltype(&gates_base::packed_q8_bytes) packed_q8_bytes;
  decltype(&gates_base::packed_q8_scales) packed_q8_scales;
  decltype(&gates_base::pack_gates_q8) pack_gates_q8;
  decltype(&gates_base::lstm_fused_step_q8) lstm_fused_step_q8;
  // The VNNI step, or null where the CPU has no avx512vnni.
  int (*q8_vnni_kpad)(int) = nullptr;
  long (*packed_q8_vnni_bytes)(int) = nullptr;
  void (*pack_gates_q8_vnni)(const signed char*, const float*, int,
                             signed char*, long long*, float*) = nullptr;
  bool (*lstm_fused_step_q8_vnni)(const signed char*, const long long*,
                                  const float*, const float*, int, int,
                                  const float* const*, float*, float*,
                                  float* const*, unsigned char*,
                                  double*) = nullptr;
};

// The build gate_fns() chose (its packing width matches), with the VNNI
// step where the CPU has it.
const Q8Fns& q8_fns();

namespace detail {

// Wh (4H, H) int8 with its scales (4H,) packed for one of the two steps:
// the widening step (pack_gates_q8: q, s) or the VNNI step
// (pack_gates_q8_vnni: qv, rs, s).
struct PackedQ8 {
  std::vector<signed char> q;
  std::vector<float> s;
  std::vector<signed char> qv;
  std::vector<long long> rs;
};

// The packing of int8 `wh` with `scales` for the VNNI step (`vnni`, only
// where q8_fns() has it) or the widening step, cached like packed_weight
// (same keys plus the layout, same owners' rules, one LRU with it): a model
// holds only the layouts its batch sizes use.
std::shared_ptr<const PackedQ8> packed_weight_q8(
    const mx::array& wh,
    const mx::array& scales,
    bool vnni,
    const std::shared_ptr<mx::allocator::Data>& owner,
    const std::shared_ptr<mx::allocator::Data>& scales_owner);

// Runs the LSTM recurrence of run_layer on int8 panels and returns true when
// the layer qualifies (int8 Wh, small batch: see q8_pays in lstm_q8.cpp); else returns
// false having done nothing. xp is the projected input (rows per
// xp_time_major); io.h / io.c hold the initial state already.
bool run_lstm_q8(
    const SeqConfig& cfg,
    int T,
    int B,
    const LayerIO& io,
    const float* xp,
    bool xp_time_major);

} // namespace detail

} // namespace edgelstm
