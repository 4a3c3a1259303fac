// A unidirectional multi-layer stack as one MLX primitive (CPU only).
//
// Streaming small chunks, the per-layer path pays ~25 us per MLX primitive
// for the kernels themselves plus the state slicing / stacking around them;
// here all layers run back to back in one CPU task, each through the same
// per-layer routine (run_layer) as RecurrentSeq, so results are identical.

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "layer_core.h"
#include "recurrent_seq.h"

namespace edgelstm {

using namespace detail;

namespace {

// Index of the first per-layer input (after x and the optional state / lengths).
size_t first_layer_input(const StackConfig& cfg) {
  return 1 + cfg.has_h0 + cfg.has_c0 + cfg.has_lengths;
}

size_t layer_inputs(uint8_t flags) {
  return 2 + bool(flags & kBias) + bool(flags & kBhn) +
      bool(flags & kWxInt8) + bool(flags & kWhInt8);
}

void run_stack(
    const StackConfig& cfg,
    const std::vector<mx::array>& in,
    std::vector<mx::array>& out) {
  const auto& x_a = in[0];
  const int T = cfg.batch_first ? x_a.shape(1) : x_a.shape(0);
  const int B = cfg.batch_first ? x_a.shape(0) : x_a.shape(1);
  const size_t L = cfg.layers.size();
  std::vector<float> x_buf, h0_buf, c0_buf;
  std::vector<int32_t> len_buf;
  size_t k = 1;
  const float* h0 = cfg.has_h0 ? row_major(in[k++], h0_buf) : nullptr;
  const float* c0 = cfg.has_c0 ? row_major(in[k++], c0_buf) : nullptr;
  const int32_t* len = cfg.has_lengths ? row_major(in[k++], len_buf) : nullptr;
  const int H = in[k + 1].shape(1);
  const size_t state = size_t(B) * H;

  SeqConfig layer_cfg{cfg.cell};
  layer_cfg.batch_first = cfg.batch_first;
  layer_cfg.linear_before_reset = cfg.linear_before_reset;
  layer_cfg.relu = cfg.relu;

  // Layer outputs below the top one go to the extra outputs (after y, h_n
  // [, c_n]): the vjp reads them instead of recomputing those layers.
  const size_t n_main = cfg.cell == Cell::LSTM ? 3 : 2;
  const float* x = row_major(x_a, x_buf);
  int I = x_a.shape(2);
  float* h = out[1].data<float>();
  float* c = cfg.cell == Cell::LSTM ? out[2].data<float>() : nullptr;
  for (size_t l = 0; l < L; ++l) {
    const uint8_t f = cfg.layers[l];
    LayerIO io;
    io.x = x;
    io.I = I;
    io.wx = &in[k];
    io.wx_owner = task_owner(k);
    io.wh = &in[k + 1];
    size_t j = k + 2;
    io.bias = (f & kBias) ? &in[j++] : nullptr;
    io.bhn = (f & kBhn) ? &in[j++] : nullptr;
    if (f & kWxInt8) {
      io.wx_scales_owner = task_owner(j);
    }
    io.wx_scales = (f & kWxInt8) ? &in[j++] : nullptr;
    io.wh_owner = task_owner(k + 1);
    if (f & kWhInt8) {
      io.wh_scales_owner = task_owner(j);
    }
    io.wh_scales = (f & kWhInt8) ? &in[j++] : nullptr;
    k = j;
    io.h0 = h0 ? h0 + l * state : nullptr;
    io.c0 = c0 ? c0 + l * state : nullptr;
    io.len = len;
    io.h = h + l * state;
    io.c = c ? c + l * state : nullptr;
    if (l + 1 == L) {
      io.y = out[0].data<float>();
    } else {
      io.y = out[n_main + l].data<float>();
    }
    if (cfg.save) {
      const size_t o = n_main + (L - 1) + 4 * l;
      io.save_act = out[o].data<float>();
      io.save_cp = out[o + 1].data<float>();
      io.save_tc = out[o + 2].data<float>();
      io.save_hprev = out[o + 3].data<float>();
    }
    run_layer(layer_cfg, T, B, io);
    x = io.y;
    I = H;
  }
}

std::vector<mx::array> build_stack(
    StackConfig cfg,
    const mx::array& x,
    const ArrayList& Wx,
    const ArrayList& Wh,
    const OptArrayList& bias,
    const OptArrayList& bhn,
    const std::optional<mx::array>& h0,
    const std::optional<mx::array>& c0,
    const std::optional<mx::array>& lengths,
    const OptArrayList& Wx_scales,
    const OptArrayList& Wh_scales,
    bool eager,
    bool train) {
  const int gates = gate_count(cfg.cell);
  const size_t L = Wh.size();
  EDGELSTM_CHECK(L > 0, "a stack needs at least one layer");
  EDGELSTM_CHECK(x.ndim() == 3, "x must be 3-D, got " + shape_str(x));
  EDGELSTM_CHECK(x.dtype() == mx::float32, "x must be float32");
  auto per_layer = [&](size_t n, const char* name) {
    EDGELSTM_CHECK(
        n == L || (n == 0 && std::strcmp(name, "Wx") != 0),
        std::string(name) + " must have one entry per layer (" +
            std::to_string(L) + "), got " + std::to_string(n));
  };
  per_layer(Wx.size(), "Wx");
  per_layer(bias.size(), "bias");
  per_layer(bhn.size(), "bhn");
  per_layer(Wx_scales.size(), "Wx_scales");
  per_layer(Wh_scales.size(), "Wh_scales");
  auto entry = [](const OptArrayList& v, size_t l) {
    return v.empty() ? std::nullopt : v[l];
  };
  EDGELSTM_CHECK(Wh[0].ndim() == 2, "Wh[0] must be 2-D, got " + shape_str(Wh[0]));
  const int H = Wh[0].shape(1);
  const int B = cfg.batch_first ? x.shape(0) : x.shape(1);
  const int Li = int(L);

  std::vector<mx::array> inputs = {x};
  cfg.has_h0 = add_input(inputs, h0, "h0", {Li, B, H}, mx::float32);
  cfg.has_c0 = add_input(inputs, c0, "c0", {Li, B, H}, mx::float32);
  cfg.has_lengths = add_input(inputs, lengths, "lengths", {B}, mx::int32);
  cfg.layers.clear();
  for (size_t l = 0; l < L; ++l) {
    const std::string what = "layer " + std::to_string(l) + ": ";
    const auto b = entry(bias, l), n = entry(bhn, l);
    const auto sx = entry(Wx_scales, l), sh = entry(Wh_scales, l);
    check_weights(
        gates, H, l == 0 ? x.shape(2) : H, Wh[l], Wx[l], b, sh, sx, what);
    uint8_t f = 0;
    inputs.push_back(Wx[l]);
    inputs.push_back(Wh[l]);
    if (b) {
      inputs.push_back(*b);
      f |= kBias;
    }
    if (n) {
      EDGELSTM_CHECK(cfg.cell == Cell::GRU, what + "bhn is a GRU input");
      EDGELSTM_CHECK(
          n->ndim() == 1 && n->shape(0) == H && n->dtype() == mx::float32,
          what + "bhn must be float32 (" + std::to_string(H) + ",), got " +
              shape_str(*n));
      inputs.push_back(*n);
      f |= kBhn;
    }
    if (sx) {
      inputs.push_back(*sx);
      f |= kWxInt8;
    }
    if (sh) {
      inputs.push_back(*sh);
      f |= kWhInt8;
    }
    cfg.layers.push_back(f);
  }

  bool int8 = false;
  for (uint8_t f : cfg.layers) {
    int8 = int8 || (f & (kWxInt8 | kWhInt8));
  }
  cfg.save = wants_save(cfg.cell, train, int8, inputs);
  auto outs = make_outputs<RecurrentStack>(std::move(cfg), inputs, eager);
  // Lower ys and saved activations: internal (the vjp's).
  outs.erase(outs.begin() + (gates == 4 ? 3 : 2), outs.end());
  return outs;
}

} // namespace

RecurrentStack::RecurrentStack(mx::Stream stream, StackConfig cfg)
    : FusedPrimitive(stream, std::move(cfg), &run_stack, "stack", "the model") {}

std::vector<mx::Shape> RecurrentStack::output_shapes(
    const std::vector<mx::array>& inputs) {
  auto shapes = fused_output_shapes(
      cfg_.cell, cfg_.batch_first, inputs[0],
      inputs[first_layer_input(cfg_) + 1].shape(1), int(cfg_.layers.size()));
  // Then each lower layer's y (same shape as y), for the vjp.
  const mx::Shape y = shapes[0];
  for (size_t l = 0; l + 1 < cfg_.layers.size(); ++l) {
    shapes.push_back(y);
  }
  // Then, in a training forward, each layer's saved activations.
  for (size_t l = 0; cfg_.save && l < cfg_.layers.size(); ++l) {
    for (auto& s : save_output_shapes(y)) {
      shapes.push_back(std::move(s));
    }
  }
  return shapes;
}

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
    bool eager,
    bool train) {
  return build_stack(
      {.cell = Cell::LSTM, .batch_first = batch_first}, x, Wx, Wh, bias, {},
      h0, c0, lengths, Wx_scales, Wh_scales, eager,
      train);
}

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
    bool eager,
    bool train) {
  return build_stack(
      {.cell = Cell::GRU,
       .batch_first = batch_first,
       .linear_before_reset = linear_before_reset},
      x, Wx, Wh, bias, bhn, h0, std::nullopt, lengths, Wx_scales, Wh_scales, eager,
      train);
}

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
    bool eager,
    bool train) {
  return build_stack(
      {.cell = Cell::RNN, .batch_first = batch_first, .relu = relu}, x, Wx,
      Wh, bias, {}, h0, std::nullopt, lengths, Wx_scales, Wh_scales, eager,
      train);
}

} // namespace edgelstm
