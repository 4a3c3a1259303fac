// Python bindings for edgelstm.fast._kernels (nanobind, MLX's ABI domain).

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "blas.h"
#include "dense.h"
#include "gates.h"
#include "recurrent_seq.h"
#include "step_pool.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_kernels, m) {
  m.doc() = "Whole-sequence LSTM/GRU/RNN primitives for MLX's CPU backend";

  m.def(
      "isa",
      [] { return edgelstm::gate_fns().isa; },
      "Instruction set of the gate loops in use: 'avx512', 'avx2' or 'baseline'.");
  m.def(
      "blas_info",
      &edgelstm::blas_info,
      "The BLAS the kernels call (library, version, config) and its thread\n"
      "count, e.g. 'scipy-openblas32 0.3.34...: OpenBLAS ...; threads=2'.");
  m.def(
      "set_blas_threads",
      &edgelstm::set_blas_threads,
      "n"_a,
      "Set the kernels' BLAS thread count (scipy-openblas32; OPENBLAS_NUM_THREADS\n"
      "sets it at load) and the fused recurrent step's (set_recurrent_threads).\n"
      "Returns False where the BLAS has no such control (Accelerate). Call it\n"
      "between evaluations, not while one runs.");
  m.def(
      "recurrent_threads",
      &edgelstm::recurrent_threads,
      "Threads a fused LSTM step may use (each owns a block of hidden units;\n"
      "results are bit-identical for any count). Steps with little work use\n"
      "fewer (step_min_macs).");
  m.def(
      "recurrent_threads_source",
      &edgelstm::recurrent_threads_source,
      "Where recurrent_threads() comes from: 'set', 'EDGELSTM_NUM_THREADS',\n"
      "'blas' (the kernels' BLAS thread count) or 'cores'.");
  m.def(
      "set_recurrent_threads",
      &edgelstm::set_recurrent_threads,
      "n"_a,
      "Fix the fused step's thread count (n >= 1), or 0 for the default\n"
      "(EDGELSTM_NUM_THREADS, else the BLAS's count, else the cores).\n"
      "set_blas_threads(n) sets it too. Call it between evaluations.");
  m.def(
      "step_min_macs",
      &edgelstm::step_min_macs,
      "Multiply-adds per thread per step below which a fused LSTM step\n"
      "takes no further thread.");
  m.def(
      "set_step_min_macs",
      &edgelstm::set_step_min_macs,
      "n"_a,
      "Set step_min_macs (tests and benchmarks: 1 threads every step with a\n"
      "block of units per thread). Call it between evaluations.");
  m.def(
      "set_step_backoff",
      &edgelstm::set_step_backoff,
      "on"_a,
      "Whether fused LSTM calls drop to one thread for a while after calls\n"
      "whose threads kept waiting on descheduled peers (default on).");
  m.def("step_backoff", &edgelstm::step_backoff, "See set_step_backoff.");
  m.def(
      "grad_counts",
      &edgelstm::grad_counts,
      "(saved, recomputed): backward runs per layer and direction so far that\n"
      "read a training forward's saved activations / recomputed the forward.");
  m.def(
      "last_step_threads",
      &edgelstm::last_step_threads,
      "Threads the latest fused LSTM or packed GRU/RNN call ran its steps on (for tests).");
  // Feature flag for edgelstm.kernels: Wh/Wx may be int8 with *_scales.
  m.attr("int8_weights") = true;
  // Every *_seq takes xp, Wh first and ends with the in-primitive
  // projection and int8 scales; `args` are the cell's own in between.
  // eager=True: computed before returning when the inputs are computed and
  // not traced (no hand-off to MLX's CPU stream); lazy otherwise.
  // train=True (the model is training): an LSTM forward traced by autodiff
  // saves the activations its gradient reads (no recompute; see
  // recurrent_seq.h). GRU / RNN ignore it.
  auto def_seq = [&](const char* name, auto fn, const char* doc, auto... args) {
    m.def(
        name,
        fn,
        "xp"_a,
        "Wh"_a,
        args...,
        "Wx"_a = nb::none(),
        "bias"_a = nb::none(),
        "Wh_scales"_a = nb::none(),
        "Wx_scales"_a = nb::none(),
        "eager"_a = false,
        "train"_a = false,
        doc);
  };
  def_seq(
      "lstm_seq",
      &edgelstm::lstm_seq,
      "LSTM over a sequence: returns [y, h_n, c_n]. Gate order i, f, g, o.\n"
      "With Wx (and bias), the first argument is the raw input x and the\n"
      "projection x @ Wx.T + bias runs inside the primitive. Wh / Wx may\n"
      "be int8 with float32 per-row Wh_scales / Wx_scales (W = q * s).",
      "h0"_a = nb::none(),
      "c0"_a = nb::none(),
      "lengths"_a = nb::none(),
      nb::kw_only(),
      "reverse"_a = false,
      "batch_first"_a = false);
  def_seq(
      "gru_seq",
      &edgelstm::gru_seq,
      "GRU over a sequence: returns [y, h_n]. Gate order r, z, n.",
      "bhn"_a = nb::none(),
      "h0"_a = nb::none(),
      "lengths"_a = nb::none(),
      nb::kw_only(),
      "reverse"_a = false,
      "linear_before_reset"_a = true,
      "batch_first"_a = false);
  def_seq(
      "rnn_seq",
      &edgelstm::rnn_seq,
      "Elman RNN (tanh or relu) over a sequence: returns [y, h_n].",
      "h0"_a = nb::none(),
      "lengths"_a = nb::none(),
      nb::kw_only(),
      "reverse"_a = false,
      "relu"_a = false,
      "batch_first"_a = false);

  // Unidirectional stacks: every layer in one primitive. Per-layer lists;
  // None entries (or an empty list) for absent biases / float weights.
  const auto none_list = edgelstm::OptArrayList{};
  auto def_stack = [&](const char* name, auto fn, const char* doc, auto... args) {
    m.def(
        name,
        fn,
        "x"_a,
        "Wx"_a,
        "Wh"_a,
        "bias"_a = none_list,
        args...,
        "Wx_scales"_a = none_list,
        "Wh_scales"_a = none_list,
        "eager"_a = false,
        "train"_a = false,
        doc);
  };
  def_stack(
      "lstm_stack",
      &edgelstm::lstm_stack,
      "LSTM stack over a sequence: returns [y (last layer), h_n (L,B,H),\n"
      "c_n (L,B,H)]. x is (T,B,I), or (B,T,I) when batch_first; h0 / c0\n"
      "(L,B,H). Each layer runs exactly as lstm_seq with Wx and bias.",
      "h0"_a = nb::none(),
      "c0"_a = nb::none(),
      "lengths"_a = nb::none(),
      nb::kw_only(),
      "batch_first"_a = false);
  def_stack(
      "gru_stack",
      &edgelstm::gru_stack,
      "GRU stack over a sequence: returns [y, h_n (L,B,H)].",
      "bhn"_a = none_list,
      "h0"_a = nb::none(),
      "lengths"_a = nb::none(),
      nb::kw_only(),
      "linear_before_reset"_a = true,
      "batch_first"_a = false);
  def_stack(
      "rnn_stack",
      &edgelstm::rnn_stack,
      "Elman RNN stack over a sequence: returns [y, h_n (L,B,H)].",
      "h0"_a = nb::none(),
      "lengths"_a = nb::none(),
      nb::kw_only(),
      "relu"_a = false,
      "batch_first"_a = false);

  // A model's input normalisation and linear head, eager-capable like the
  // recurrent primitives, so a streamed chunk's whole model can skip MLX's
  // stream thread.
  m.def(
      "linear",
      &edgelstm::dense_linear,
      "x"_a,
      "W"_a,
      "bias"_a = nb::none(),
      nb::kw_only(),
      "row"_a = nb::none(),
      "eager"_a = false,
      "x (.., K) @ W.T + bias -> (.., N) on a cached packing of W (N, K);\n"
      "every row rounds the same whatever the number of rows. With row,\n"
      "x is (R, .., K) and x[row] is the input (a final state's layer).");
  m.def(
      "normalize",
      &edgelstm::dense_normalize,
      "x"_a,
      "mean"_a,
      "std"_a,
      nb::kw_only(),
      "eager"_a = false,
      "(x - mean) / std for x (.., I) and per-feature mean, std (I,).");
}
