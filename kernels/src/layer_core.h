// Internals shared by the per-layer and the stacked primitives: one layer's
// recurrence on raw buffers, plus argument checks.

#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "recurrent_seq.h"

namespace edgelstm::detail {

// Row-major pointer to `a`'s elements, copying through `buf` when `a` is
// strided (transposed, sliced, broadcast).
template <typename T>
const T* row_major(const mx::array& a, std::vector<T>& buf) {
  if (a.flags().row_contiguous) {
    return a.data<T>();
  }
  buf.resize(a.size());
  const T* src = a.data<T>();
  const auto& shape = a.shape();
  const auto& strides = a.strides();
  int nd = a.ndim();
  std::vector<int> idx(nd, 0);
  for (size_t n = 0; n < a.size(); ++n) {
    int64_t off = 0;
    for (int d = 0; d < nd; ++d) {
      off += int64_t(idx[d]) * strides[d];
    }
    buf[n] = src[off];
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) {
        break;
      }
      idx[d] = 0;
    }
  }
  return buf.data();
}

// One direction of one layer, on raw buffers. `x` is the projected input
// xp (T*B rows of G) or, with `wx`, the raw input (T*B rows of I) projected
// here; rows follow cfg.batch_first. h / c hold the state throughout (h0 / c0
// are copied in first; they may alias h / c).
struct LayerIO {
  const float* x = nullptr;
  int I = 0;
  const mx::array* wh = nullptr;
  const mx::array* wh_scales = nullptr;
  const mx::array* wx = nullptr;
  const mx::array* wx_scales = nullptr;
  const mx::array* bias = nullptr;
  const mx::array* bhn = nullptr;
  const float* h0 = nullptr;
  const float* c0 = nullptr;
  const int32_t* len = nullptr;
  float* y = nullptr;
  float* h = nullptr;
  float* c = nullptr;
};

void run_layer(const SeqConfig& cfg, int T, int B, const LayerIO& io);

// Throws std::invalid_argument (Python ValueError) with the message.
[[noreturn]] void fail(const std::string& msg);

// Fails with `msg` unless `ok`; `msg` is only evaluated on failure.
#define EDGELSTM_CHECK(ok, msg)          \
  do {                                   \
    if (!(ok)) {                         \
      ::edgelstm::detail::fail(msg);     \
    }                                    \
  } while (0)

std::string shape_str(const mx::array& a);

// Checks one layer's weights: Wh (gates*H, H), Wx (gates*H, in_width) when
// given, bias (gates*H,), per-row scales with int8 weights. `what` prefixes
// messages (e.g. "layer 1: ").
void check_weights(
    int gates,
    int H,
    int in_width,
    const mx::array& Wh,
    const std::optional<mx::array>& Wx,
    const std::optional<mx::array>& bias,
    const std::optional<mx::array>& Wh_scales,
    const std::optional<mx::array>& Wx_scales,
    const std::string& what = "");

} // namespace edgelstm::detail
