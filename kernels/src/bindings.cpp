// Python bindings for edgelstm_kernels._ext (nanobind, MLX's ABI domain).

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include "gates.h"
#include "recurrent_seq.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_ext, m) {
  m.doc() = "Whole-sequence LSTM/GRU/RNN primitives for MLX's CPU backend";

  m.def(
      "isa",
      [] { return edgelstm::gate_fns().isa; },
      "Instruction set of the gate loops in use: 'avx2' or 'baseline'.");
  // Feature flag for edgelstm.kernels: Wh/Wx may be int8 with *_scales.
  m.attr("int8_weights") = true;
  m.def(
      "lstm_seq",
      &edgelstm::lstm_seq,
      "xp"_a,
      "Wh"_a,
      "h0"_a = nb::none(),
      "c0"_a = nb::none(),
      "lengths"_a = nb::none(),
      nb::kw_only(),
      "reverse"_a = false,
      "batch_first"_a = false,
      "Wx"_a = nb::none(),
      "bias"_a = nb::none(),
      "Wh_scales"_a = nb::none(),
      "Wx_scales"_a = nb::none(),
      "LSTM over a sequence: returns [y, h_n, c_n]. Gate order i, f, g, o.\n"
      "With Wx (and bias), the first argument is the raw input x and the\n"
      "projection x @ Wx.T + bias runs inside the primitive. Wh / Wx may\n"
      "be int8 with float32 per-row Wh_scales / Wx_scales (W = q * s).");
  m.def(
      "gru_seq",
      &edgelstm::gru_seq,
      "xp"_a,
      "Wh"_a,
      "bhn"_a = nb::none(),
      "h0"_a = nb::none(),
      "lengths"_a = nb::none(),
      nb::kw_only(),
      "reverse"_a = false,
      "linear_before_reset"_a = true,
      "batch_first"_a = false,
      "Wx"_a = nb::none(),
      "bias"_a = nb::none(),
      "Wh_scales"_a = nb::none(),
      "Wx_scales"_a = nb::none(),
      "GRU over a sequence: returns [y, h_n]. Gate order r, z, n.");
  m.def(
      "rnn_seq",
      &edgelstm::rnn_seq,
      "xp"_a,
      "Wh"_a,
      "h0"_a = nb::none(),
      "lengths"_a = nb::none(),
      nb::kw_only(),
      "reverse"_a = false,
      "relu"_a = false,
      "batch_first"_a = false,
      "Wx"_a = nb::none(),
      "bias"_a = nb::none(),
      "Wh_scales"_a = nb::none(),
      "Wx_scales"_a = nb::none(),
      "Elman RNN (tanh or relu) over a sequence: returns [y, h_n].");
}
