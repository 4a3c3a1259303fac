// Dense ops around the recurrent core, as CPU primitives: a model's input
// normalisation and its linear head.
//
// Streaming a chunk through a whole model (normalise, recurrent stack, head),
// one MLX op anywhere in the chain sends the evaluation through MLX's CPU
// stream thread, ~100 us on a small VM: several times a chunk's compute.
// With these, every step of the chain can run eagerly (make_outputs), and
// the head rounds each row the same whatever the number of rows, so a
// streamed frame head equals the full pass bit for bit.

#pragma once

#include <optional>

#include "recurrent_seq.h"

namespace edgelstm {

struct DenseConfig {
  enum class Op { Linear, Normalize };
  Op op;
  bool has_bias = false; // Linear only
  int row = -1; // Linear: >= 0 reads x[row] of x (R, .., K) (a final state's layer)

  bool operator==(const DenseConfig&) const = default;
};

// Linear: inputs x (.., K), W (N, K), [bias (N,)] -> x @ W^T + bias (.., N),
// on a cached packing of W (gemm_packed). Normalize: inputs x (.., I),
// mean (I,), std (I,) -> (x - mean) / std, as MLX computes it. Both have a
// vjp (MLX ops), so gradients flow through an evaluation-mode model.
class DenseOp : public FusedPrimitive<DenseConfig> {
 public:
  DenseOp(mx::Stream stream, DenseConfig cfg);

  const char* name() const override {
    return "EdgeLSTMDense";
  }
  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override;
  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override;
};

// x (.., K) float32, W (N, K), bias (N,) -> (.., N). With `row`, x is
// (R, .., K) and x[row] (negative counts from the end) is the input: a
// sequence head reads the last layer of a final state (L, B, H) without a
// slice op. `eager` as for the recurrent primitives (computed now when the
// inputs are computed).
mx::array dense_linear(
    const mx::array& x,
    const mx::array& W,
    const std::optional<mx::array>& bias,
    std::optional<int> row = std::nullopt,
    bool eager = false);

// x (.., I) float32, mean (I,), std (I,) -> (x - mean) / std.
mx::array dense_normalize(
    const mx::array& x,
    const mx::array& mean,
    const mx::array& std,
    bool eager = false);

} // namespace edgelstm
