// Whole-sequence LSTM / GRU / RNN as single MLX primitives (CPU only).
//
// MLX's CPU backend spends ~25-30 us dispatching each primitive, so a
// per-timestep graph is overhead-bound at small batch. These primitives run
// the full recurrence inside one eval_cpu task: per step h @ Wh^T (own
// matvec / small matmul up to 7 rows, BLAS sgemm beyond), then fused gate math.

#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace edgelstm {

namespace mx = mlx::core;

enum class Cell { LSTM, GRU, RNN };

struct SeqConfig {
  Cell cell;
  bool reverse = false;
  bool batch_first = false; // xp (B,T,G) and y (B,T,H) instead of time-major
  bool linear_before_reset = true; // GRU only
  bool relu = false; // RNN only: relu instead of tanh
  bool has_h0 = false;
  bool has_c0 = false;
  bool has_bhn = false;
  bool has_lengths = false;
  bool project = false; // input 0 is x (.., .., I); xp = x @ Wx^T (+ bias) inside
  bool has_bias = false;
  bool wh_int8 = false; // Wh int8 + Wh_scales input (after all others)
  bool wx_int8 = false; // Wx int8 + Wx_scales input (last)
  // LSTM, float weights. RecurrentSeq: the training forward, with four more
  // outputs (save_output_shapes) that its vjp hands to RecurrentSeqGrad;
  // RecurrentSeqGrad: those four come as inputs after the cotangents and the
  // forward is not recomputed.
  bool save = false;
  bool skip_dx = false; // RecurrentSeqGrad: no input gradient (output 0 is (0,))
  bool legacy = false; // RecurrentSeqGrad: sgemm weight gradients (legacy_backward)

  bool operator==(const SeqConfig&) const = default;
};

namespace detail {

// Throws std::runtime_error("[edgelstm_kernels] " + msg).
[[noreturn]] void refuse(const std::string& msg);

using CpuTask = std::function<void(
    const std::vector<mx::array>& in,
    std::vector<mx::array>& out)>;

// Allocates `outputs` and runs task(in, out) on `stream`'s CPU encoder, on
// weak copies of the arrays. While the task runs, task_owner(i) holds input
// i's buffer (see packed_weight: a cached repacking stays valid only while
// the buffer it was made from cannot be freed or reused).
void dispatch_cpu(
    mx::Stream stream,
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs,
    CpuTask task);

// Runs task(inputs, out) on the calling thread into newly allocated float32
// arrays of `shapes` and returns them, computed (task_owner works as in
// dispatch_cpu). The inputs must be computed (detail::can_run_now).
std::vector<mx::array> run_on_caller(
    const std::vector<mx::array>& inputs,
    const std::vector<mx::Shape>& shapes,
    const CpuTask& task);

// Owning handle of the running task's input i (null outside a task).
std::shared_ptr<mx::allocator::Data> task_owner(size_t i);

} // namespace detail

// Base of the fused primitives: the whole computation is run(cfg, in, out)
// in one CPU task; no GPU. The forward primitives override vjp (BPTT in
// recurrent_grad.cpp); the base refuses gradients (the backward primitive
// itself, int8 weights). Error messages name the primitive (`what`) and the
// fast=False call to use instead.
template <typename Config>
class FusedPrimitive : public mx::Primitive {
 public:
  using Run = void (*)(
      const Config& cfg,
      const std::vector<mx::array>& in,
      std::vector<mx::array>& out);

  void eval_cpu(
      const std::vector<mx::array>& inputs,
      std::vector<mx::array>& outputs) override {
    // The task keeps its own copy of the config: it may outlive the primitive.
    detail::dispatch_cpu(
        stream(), inputs, outputs,
        [cfg = cfg_, run = run_](const auto& in, auto& out) {
          run(cfg, in, out);
        });
  }
  // The outputs (of `shapes`) computed now, on the calling thread.
  std::vector<mx::array> run_now(
      const std::vector<mx::array>& inputs,
      const std::vector<mx::Shape>& shapes) {
    return detail::run_on_caller(
        inputs, shapes, [this](const auto& in, auto& out) {
          run_(cfg_, in, out);
        });
  }
  void eval_gpu(
      const std::vector<mx::array>&,
      std::vector<mx::array>&) override {
    detail::refuse("no GPU implementation; run on the CPU stream");
  }

  std::vector<mx::array> vjp(
      const std::vector<mx::array>&,
      const std::vector<mx::array>&,
      const std::vector<int>&,
      const std::vector<mx::array>&) override {
    detail::refuse(
        std::string("the fused recurrent ") + what_ + " has no gradient; call " +
        fallback_ + " with fast=False when training");
  }
  std::vector<mx::array> jvp(
      const std::vector<mx::array>&,
      const std::vector<mx::array>&,
      const std::vector<int>&) override {
    detail::refuse(
        std::string("the fused recurrent ") + what_ + " has no jvp; call " +
        fallback_ + " with fast=False");
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    return cfg_ == static_cast<const FusedPrimitive&>(other).cfg_;
  }

 protected:
  FusedPrimitive(
      mx::Stream stream,
      Config cfg,
      Run run,
      const char* what,
      const char* fallback)
      : mx::Primitive(stream),
        cfg_(std::move(cfg)),
        run_(run),
        what_(what),
        fallback_(fallback) {}

  Config cfg_;

 private:
  Run run_;
  const char* what_;
  const char* fallback_;
};

class RecurrentSeq : public FusedPrimitive<SeqConfig> {
 public:
  RecurrentSeq(mx::Stream stream, SeqConfig cfg);

  const char* name() const override {
    return "EdgeLSTMRecurrentSeq";
  }
  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override;
  // Gradients through RecurrentSeqGrad (float weights only).
  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override;
};

// Backward of RecurrentSeq (BPTT): recomputes the forward, saving the gate
// activations (or reads them from a training forward's saved outputs,
// SeqConfig::save), then runs the recurrence backwards. Inputs: RecurrentSeq's
// (float weights) then the cotangents of y, h_n[, c_n]. Outputs: the
// gradient of every forward input but lengths, in input order.
class RecurrentSeqGrad : public FusedPrimitive<SeqConfig> {
 public:
  RecurrentSeqGrad(mx::Stream stream, SeqConfig cfg);

  const char* name() const override {
    return "EdgeLSTMRecurrentSeqGrad";
  }
  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override;
};

// Per-layer input flags of a RecurrentStack.
enum LayerFlag : uint8_t {
  kBias = 1,
  kBhn = 2, // GRU only
  kWxInt8 = 4, // Wx int8 + Wx_scales
  kWhInt8 = 8, // Wh int8 + Wh_scales
};

struct StackConfig {
  Cell cell;
  bool batch_first = false;
  bool linear_before_reset = true; // GRU only
  bool relu = false; // RNN only
  bool has_h0 = false;
  bool has_c0 = false;
  bool has_lengths = false;
  bool save = false; // LSTM training forward: four saved outputs per layer
  std::vector<uint8_t> layers = {}; // LayerFlag bits per layer, bottom first

  bool operator==(const StackConfig&) const = default;
};

// A unidirectional stack of layers in one primitive: layer k's output feeds
// layer k + 1 through scratch buffers inside the same CPU task. Inputs:
// x, [h0 (L,B,H)], [c0 (L,B,H)], [lengths], then per layer Wx, Wh, [bias],
// [bhn], [Wx_scales], [Wh_scales]. Outputs: y of the last layer, h_n, c_n,
// then each lower layer's y (internal: the vjp's layer inputs; the public
// *_stack functions return only the first ones).
class RecurrentStack : public FusedPrimitive<StackConfig> {
 public:
  RecurrentStack(mx::Stream stream, StackConfig cfg);

  const char* name() const override {
    return "EdgeLSTMRecurrentStack";
  }
  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override;
  // One RecurrentSeqGrad per layer, on the lower layers' saved y.
  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override;
};

// xp: projected input incl. bias, (T,B,4H) or (B,T,4H) when batch_first,
// gate order i,f,g,o. Wh: (4H,H). Returns {y, h_n, c_n}.
// With Wx (4H,I) given, xp is instead the raw input x (.., .., I) and the
// projection x @ Wx^T + bias runs inside the same primitive (one dispatch).
// Wh / Wx may be int8 (rows, cols) with float32 per-row scales Wh_scales /
// Wx_scales (W = q * s[:, None]); every function below takes them alike.
std::vector<mx::array> lstm_seq(
    const mx::array& xp,
    const mx::array& Wh,
    const std::optional<mx::array>& h0,
    const std::optional<mx::array>& c0,
    const std::optional<mx::array>& lengths,
    bool reverse,
    bool batch_first,
    const std::optional<mx::array>& Wx,
    const std::optional<mx::array>& bias,
    const std::optional<mx::array>& Wh_scales,
    const std::optional<mx::array>& Wx_scales,
    bool eager = false,
    bool train = false);

// xp: (T,B,3H) gate order r,z,n; Wh (3H,H); bhn (H,). Returns {y, h_n}.
std::vector<mx::array> gru_seq(
    const mx::array& xp,
    const mx::array& Wh,
    const std::optional<mx::array>& bhn,
    const std::optional<mx::array>& h0,
    const std::optional<mx::array>& lengths,
    bool reverse,
    bool linear_before_reset,
    bool batch_first,
    const std::optional<mx::array>& Wx,
    const std::optional<mx::array>& bias,
    const std::optional<mx::array>& Wh_scales,
    const std::optional<mx::array>& Wx_scales,
    bool eager = false,
    bool train = false);

// xp: (T,B,H); Wh (H,H). Returns {y, h_n}.
std::vector<mx::array> rnn_seq(
    const mx::array& xp,
    const mx::array& Wh,
    const std::optional<mx::array>& h0,
    const std::optional<mx::array>& lengths,
    bool reverse,
    bool relu,
    bool batch_first,
    const std::optional<mx::array>& Wx,
    const std::optional<mx::array>& bias,
    const std::optional<mx::array>& Wh_scales,
    const std::optional<mx::array>& Wx_scales,
    bool eager = false,
    bool train = false);

// Backward (RecurrentSeqGrad) runs so far, per layer and direction: those
// that read a training forward's saved activations, those that recomputed
// the forward (tests check which path training takes).
std::pair<long long, long long> grad_counts();

using ArrayList = std::vector<mx::array>;
using OptArrayList = std::vector<std::optional<mx::array>>;

// Unidirectional stacks (one primitive for all layers): x (B,T,I) when
// batch_first else (T,B,I); per-layer Wx / Wh (float32, or int8 with the
// matching *_scales entry set), bias (and GRU bhn) lists with None for
// absent entries (an empty list: none at all); h0 / c0 (L,B,H). Each layer
// computes exactly what the per-layer primitive does. Returns
// {y, h_n (L,B,H), c_n (L,B,H)} (LSTM) or {y, h_n}.
// Every function here with `eager` computes its outputs before returning
// when its inputs are computed and not traced (detail::make_outputs).
// `train` (the model is training): where an LSTM's float inputs are traced
// (autodiff, or compile), the forward also saves what BPTT reads (the gate
// activations, the c and h each step read, tanh of the new c: 7H floats per
// row, T*B*7H per layer) and its vjp uses them instead of recomputing the
// forward. GRU and RNN always recompute.
std::vector<mx::array> lstm_stack(
    const mx::array& x,
    const ArrayList& Wx,
    const ArrayList& Wh,
    const OptArrayList& bias,
    const std::optional<mx::array>& h0,
    const std::optional<mx::array>& c0,
    const std::optional<mx::array>& lengths,
    bool batch_first,
    const OptArrayList& Wx_scales,
    const OptArrayList& Wh_scales,
    bool eager = false,
    bool train = false);

std::vector<mx::array> gru_stack(
    const mx::array& x,
    const ArrayList& Wx,
    const ArrayList& Wh,
    const OptArrayList& bias,
    const OptArrayList& bhn,
    const std::optional<mx::array>& h0,
    const std::optional<mx::array>& lengths,
    bool linear_before_reset,
    bool batch_first,
    const OptArrayList& Wx_scales,
    const OptArrayList& Wh_scales,
    bool eager = false,
    bool train = false);

std::vector<mx::array> rnn_stack(
    const mx::array& x,
    const ArrayList& Wx,
    const ArrayList& Wh,
    const OptArrayList& bias,
    const std::optional<mx::array>& h0,
    const std::optional<mx::array>& lengths,
    bool relu,
    bool batch_first,
    const OptArrayList& Wx_scales,
    const OptArrayList& Wh_scales,
    bool eager = false,
    bool train = false);

} // namespace edgelstm
