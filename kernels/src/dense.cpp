// CPU primitives for a model's input normalisation and linear head (dense.h).

#include "dense.h"

#include <cstring>
#include <string>
#include <vector>

#include "gates.h"
#include "layer_core.h"

namespace edgelstm {

using namespace detail;

namespace {

using Op = DenseConfig::Op;

void run_dense(
    const DenseConfig& cfg,
    const std::vector<mx::array>& in,
    std::vector<mx::array>& out) {
  const mx::array& x_a = in[0];
  const int K = x_a.shape(-1);
  const size_t all_rows = K > 0 ? x_a.size() / K : 0;
  const size_t rows = cfg.row >= 0 ? all_rows / x_a.shape(0) : all_rows;
  float* o = out[0].data<float>();
  std::vector<float> x_buf, a_buf, b_buf;
  const float* x = rows ? row_major(x_a, x_buf) : nullptr;
  if (x && cfg.row >= 0) {
    x += size_t(cfg.row) * rows * K;
  }

  if (cfg.op == Op::Normalize) {
    const float* mean = row_major(in[1], a_buf);
    const float* std = row_major(in[2], b_buf);
    for (size_t r = 0; r < rows; ++r) {
      for (int k = 0; k < K; ++k) {
        o[r * K + k] = (x[r * K + k] - mean[k]) / std[k];
      }
    }
    return;
  }

  const int N = in[1].shape(0);
  const float* bias = cfg.has_bias ? row_major(in[2], b_buf) : nullptr;
  const size_t out_rows = out[0].size() / (N > 0 ? N : 1);
  if (N == 0 || out_rows == 0) {
    return;
  }
  if (K == 0) { // an empty product: the bias alone
    for (size_t r = 0; r < out_rows; ++r) {
      for (int n = 0; n < N; ++n) {
        o[r * N + n] = bias ? bias[n] : 0.0f;
      }
    }
    return;
  }
  // Always the packed product: each row rounds the same whatever the number
  // of rows, so a streamed frame head equals the full pass bit for bit.
  const auto packed = packed_weight(
      in[1], nullptr, [&] { return row_major(in[1], a_buf); }, 1,
      task_owner(1), nullptr);
  gate_fns().gemm_packed(x, int(rows), K, K, packed->data(), N, o, N);
  for (size_t r = 0; bias && r < rows; ++r) {
    float* row = o + r * N;
    for (int n = 0; n < N; ++n) {
      row[n] += bias[n];
    }
  }
}

// Rows of x (.., K) as a matrix (rows, K).
mx::array as_rows(const mx::array& a) {
  const int K = a.shape(-1);
  return mx::reshape(a, {K > 0 ? int(a.size() / K) : 0, K});
}

void check_float(const mx::array& a, const std::string& name) {
  EDGELSTM_CHECK(a.dtype() == mx::float32, name + " must be float32");
}

} // namespace

DenseOp::DenseOp(mx::Stream stream, DenseConfig cfg)
    : FusedPrimitive(stream, cfg, &run_dense, "dense op", "the MLX op") {}

std::vector<mx::Shape> DenseOp::output_shapes(
    const std::vector<mx::array>& inputs) {
  mx::Shape shape = inputs[0].shape();
  if (cfg_.op == Op::Linear) {
    shape.back() = inputs[1].shape(0);
    if (cfg_.row >= 0) {
      shape.erase(shape.begin());
    }
  }
  return {shape};
}

std::vector<mx::array> DenseOp::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>& outputs) {
  const mx::array& g = cotangents[0];
  std::vector<mx::array> res;
  if (cfg_.op == Op::Linear) {
    const mx::array& w = primals[1];
    mx::array x = primals[0];
    if (cfg_.row >= 0) {
      x = mx::take(x, cfg_.row, 0);
    }
    for (int a : argnums) {
      if (a == 0 && cfg_.row >= 0) { // zero but at x[row]
        const auto& full = primals[0].shape();
        mx::Shape start(full.size(), 0), stop = full;
        start[0] = cfg_.row;
        stop[0] = cfg_.row + 1;
        res.push_back(mx::slice_update(
            mx::zeros_like(primals[0]), mx::expand_dims(mx::matmul(g, w), 0),
            start, stop));
      } else if (a == 0) {
        res.push_back(mx::matmul(g, w));
      } else if (a == 1) {
        res.push_back(mx::matmul(mx::transpose(as_rows(g)), as_rows(x)));
      } else {
        res.push_back(mx::sum(as_rows(g), 0));
      }
    }
    return res;
  }
  const mx::array& std = primals[2];
  for (int a : argnums) {
    if (a == 0) {
      res.push_back(mx::divide(g, std));
    } else if (a == 1) {
      res.push_back(mx::negative(mx::sum(as_rows(mx::divide(g, std)), 0)));
    } else {
      auto d = mx::divide(mx::multiply(g, outputs[0]), std);
      res.push_back(mx::negative(mx::sum(as_rows(d), 0)));
    }
  }
  return res;
}

mx::array dense_linear(
    const mx::array& x,
    const mx::array& W,
    const std::optional<mx::array>& bias,
    std::optional<int> row,
    bool eager) {
  EDGELSTM_CHECK(
      x.ndim() >= (row ? 2 : 1),
      std::string("x must have at least ") + (row ? "2 dimensions" : "1 dimension"));
  check_float(x, "x");
  DenseConfig cfg{DenseConfig::Op::Linear};
  if (row) {
    const int R = x.shape(0);
    EDGELSTM_CHECK(
        *row >= -R && *row < R,
        "row " + std::to_string(*row) + " is out of range for " + shape_str(x));
    cfg.row = *row < 0 ? *row + R : *row;
  }
  EDGELSTM_CHECK(
      W.ndim() == 2 && W.shape(1) == x.shape(-1),
      "W must be (N, " + std::to_string(x.shape(-1)) + "), got " +
          shape_str(W));
  check_float(W, "W");
  std::vector<mx::array> inputs = {x, W};
  cfg.has_bias = add_input(inputs, bias, "bias", {W.shape(0)}, mx::float32);
  return make_outputs<DenseOp>(cfg, inputs, eager)[0];
}

mx::array dense_normalize(
    const mx::array& x,
    const mx::array& mean,
    const mx::array& std,
    bool eager) {
  EDGELSTM_CHECK(x.ndim() >= 1, "x must have at least 1 dimension");
  check_float(x, "x");
  const int I = x.shape(-1);
  check_input(mean, "mean", {I}, mx::float32);
  check_input(std, "std", {I}, mx::float32);
  return make_outputs<DenseOp>(
      DenseConfig{DenseConfig::Op::Normalize}, {x, mean, std}, eager)[0];
}

} // namespace edgelstm
