// Internals shared by the per-layer and the stacked primitives: one layer's
// recurrence on raw buffers, plus argument checks.

#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <new>
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

// Gates per step: 4 (LSTM), 3 (GRU), 1 (RNN).
inline int gate_count(Cell cell) {
  return cell == Cell::LSTM ? 4 : (cell == Cell::GRU ? 3 : 1);
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
  // Owners of Wh's / Wh_scales' buffers (task_owner), or null: with them the
  // packed Wh is cached across calls (packed_weight).
  std::shared_ptr<mx::allocator::Data> wh_owner;
  std::shared_ptr<mx::allocator::Data> wh_scales_owner;
  std::shared_ptr<mx::allocator::Data> wx_owner; // likewise for Wx
  std::shared_ptr<mx::allocator::Data> wx_scales_owner;
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
  // LSTM training forward only (float weights), else null: what the
  // backward reads instead of recomputing (FusedLstmSeq's act, cp, tc,
  // hprev; rows in y's order).
  float* save_act = nullptr;
  float* save_cp = nullptr;
  float* save_tc = nullptr;
  float* save_hprev = nullptr;
};

void run_layer(const SeqConfig& cfg, int T, int B, const LayerIO& io);

// out (M, N) with row stride ldc = a (M, K) @ w[:N]^T (+ beta * out), w
// row-major (N, K): the kernel's own small-M loops, else BLAS.
void matmul_nt(
    const float* a,
    const float* w,
    float* out,
    int M,
    int N,
    int K,
    int ldc,
    float beta = 0.0f);

// Per-thread scratch buffers keep their memory between calls (a fresh
// allocation per call costs page faults on the order of the matmul), but a
// call that needs far less than one holds releases it: one large model must
// not pin its weights' worth of floats per thread for the process lifetime.
constexpr size_t kKeepFloats = size_t(1) << 18; // 1 MiB: always kept

// Grows `buf` to at least n floats (contents unspecified), first releasing
// it when it is large and n far smaller.
void fit_buffer(std::vector<float>& buf, size_t n);

// Cache-line-aligned storage for packed weights: the packed loops load one
// 64-byte vector per gate and k, and a buffer at 16 mod 64 (what malloc and
// glibc's mmap chunks give) splits every such load across two lines. B=1
// H=128 T=100 ran 0.29 or 0.39 ms per call depending on where the heap
// happened to put the packing.
template <typename T>
struct CacheAligned {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheAligned() = default;
  template <typename U>
  CacheAligned(const CacheAligned<U>&) {}
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), kAlign));
  }
  void deallocate(T* p, size_t) {
    ::operator delete(p, kAlign);
  }
  template <typename U>
  bool operator==(const CacheAligned<U>&) const {
    return true;
  }
};
using PackedFloats = std::vector<float, CacheAligned<float>>;

// fit_buffer for packed scratch (the backward's per-call packings).
void fit_buffer(PackedFloats& buf, size_t n);

// A weight (gates*N, K) packed by pack_gates for the running ISA: Wh (4H, H)
// with gates = 4 for lstm_fused_step, Wx (G, I) with gates = 1 for
// gemm_packed. `values()` gives its row-major float values (int8 expanded)
// and is called only on a cache miss. With owners (task_owner) of the
// weight's (and int8 scales') buffers the packing is cached under the
// buffer's pointer, shape and strides, holding the owners: a held buffer is
// neither freed nor donated, so the same key means the same weights.
std::shared_ptr<const PackedFloats> packed_weight(
    const mx::array& w,
    const mx::array* scales,
    const std::function<const float*()>& values,
    int gates,
    const std::shared_ptr<mx::allocator::Data>& owner,
    const std::shared_ptr<mx::allocator::Data>& scales_owner);

// An int8 weight (N, K) expanded to row-major float (q * s, as `values()`
// computes it on a miss), cached like packed_weight: the sgemm path of a
// batch then costs what the float weight costs, not an expansion per call.
std::shared_ptr<const PackedFloats> expanded_weight(
    const mx::array& w,
    const mx::array& scales,
    const std::function<const float*()>& values,
    const std::shared_ptr<mx::allocator::Data>& owner,
    const std::shared_ptr<mx::allocator::Data>& scales_owner);

// Index of `lengths` among a RecurrentSeq's inputs, or -1 without it.
int seq_lengths_index(const SeqConfig& cfg);

// Number of RecurrentSeq inputs before the int8 scales.
int seq_float_inputs(const SeqConfig& cfg);

// The gradients of RecurrentSeq(cfg) over `primals` (its inputs) given the
// cotangents of y, h_n[, c_n] (any further ones are ignored): one array per
// primal but lengths, in order. `saved`: a training forward's four saved
// outputs (SeqConfig::save), or empty to recompute the forward. Without
// `need_dx` the first (the input's gradient) is empty, shape (0,).
std::vector<mx::array> seq_grads(
    SeqConfig cfg,
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<mx::array>& saved = {},
    bool need_dx = true);

// Shapes of an LSTM training forward's saved outputs for y of `y_shape`
// (.., .., H): act (.., .., 4H), then cp, tc, hprev (.., .., H). Row (t, b)
// of each is y's row (t, b).
std::vector<mx::Shape> save_output_shapes(const mx::Shape& y_shape);

// EDGELSTM_GRAD_LEGACY=1: the backward as it was before training forwards
// saved their activations: it recomputes the forward (projecting with
// sgemm) and computes the weight gradients with sgemm, so a model trained
// that way retrains bit for bit. Read when a graph is built.
bool legacy_backward();

// Whether a forward saves for its backward (SeqConfig::save): an LSTM with
// float weights, called with train, on inputs of which one is traced, unless
// legacy_backward().
bool wants_save(
    Cell cell,
    bool train,
    bool int8,
    const std::vector<mx::array>& inputs);

// Throws std::invalid_argument (Python ValueError) with the message.
[[noreturn]] void fail(const std::string& msg);

// Fails with `msg` unless `ok`; `msg` is only evaluated on failure.
#define EDGELSTM_CHECK(ok, msg)          \
  do {                                   \
    if (!(ok)) {                         \
      ::edgelstm::detail::fail(msg);     \
    }                                    \
  } while (0)

std::string shape_str(const mx::Shape& shape);
std::string shape_str(const mx::array& a);

// Fails unless `a` has exactly `shape` ("<name> must be (..), got (..)")
// and `dtype`, float32 or int32 ("<name> must be float32").
void check_input(
    const mx::array& a,
    const std::string& name,
    const mx::Shape& shape,
    mx::Dtype dtype);

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

// When `a` is given: checks it (check_input), appends it to `inputs` and
// returns true.
bool add_input(
    std::vector<mx::array>& inputs,
    const std::optional<mx::array>& a,
    const std::string& name,
    const mx::Shape& shape,
    mx::Dtype dtype);

// Outputs {y, h_n[, c_n]} for input x (T,B,..), or (B,T,..) when
// batch_first: y (.., .., H); states (B,H), or (layers,B,H) for a stack.
std::vector<mx::Shape> fused_output_shapes(
    Cell cell,
    bool batch_first,
    const mx::array& x,
    int H,
    std::optional<int> layers = std::nullopt);

// True when every input is computed and none is a tracer: no autodiff, vmap
// or compile is watching, so the outputs may be computed right away.
bool can_run_now(const std::vector<mx::array>& inputs);

// The float32 outputs of primitive P (built with `cfg`, on the CPU stream)
// over `inputs`, shaped by P::output_shapes. With `eager` and can_run_now,
// P runs on the calling thread and the outputs come back computed: a small
// streamed chunk then skips the hand-off to MLX's CPU stream thread and back
// (~100 us per evaluation on a 2-core VM, more than the chunk's compute).
// Otherwise they are lazy, as any MLX op's.
template <typename P, typename Config>
std::vector<mx::array> make_outputs(
    Config cfg,
    const std::vector<mx::array>& inputs,
    bool eager = false) {
  auto stream = mx::to_stream(mx::StreamOrDevice{}, mx::Device::cpu);
  auto p = std::make_shared<P>(stream, std::move(cfg));
  auto shapes = p->output_shapes(inputs);
  if (eager && can_run_now(inputs)) {
    return p->run_now(inputs, shapes);
  }
  std::vector<mx::Dtype> dtypes(shapes.size(), mx::float32);
  return mx::array::make_arrays(std::move(shapes), dtypes, p, inputs);
}

} // namespace edgelstm::detail
