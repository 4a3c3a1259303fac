// The backward's recompute of a forward pass (recurrent_grad.cpp), for
// the cells and calls whose forward saved nothing.

#pragma once

#include <cstddef>
#include <cstdint>

#include "recurrent_seq.h"

namespace edgelstm::detail {

// Row (t, b) of x's (and y's) order; rows past a length; step s's time.
struct Rows {
  bool batch_first, reverse;
  int T, B;
  const int32_t* len;
  size_t operator()(int t, int b) const {
    return batch_first ? size_t(b) * T + t : size_t(t) * B + b;
  }
  bool valid(int t, int b) const {
    return !len || t < len[b];
  }
  int time_of(int s) const {
    return reverse ? T - 1 - s : s;
  }
};

// The forward pass again, saving per row (zero where a step is past its
// length, so the final weight-gradient matmuls see finite zeros there):
//   hprev: the state the step read; act: activated gates (LSTM i,f,g,o;
//   GRU r,z,n; RNN the new state); aux: LSTM tanh(c_new), GRU-lbr
//   Rn h + bhn, GRU (ONNX default) r * h; aux2: LSTM c_prev.
// xp: the projected input (rows of gates * H), rows in x's order; h0 / c0
// (B, H) or null; bhn (H,) for GRU (zeros when it has none).
void recompute(
    const SeqConfig& cfg,
    const Rows& row,
    int H,
    const float* xp,
    const float* wh,
    const float* h0,
    const float* c0,
    const float* bhn,
    float* hprev,
    float* act,
    float* aux,
    float* aux2);

} // namespace edgelstm::detail
