// The fused LSTM recurrence over a whole sequence, on one thread or a team
// (step_pool.h). Plain pointers only, no MLX: recurrent_seq.cpp's run_layer
// calls it, and a standalone ThreadSanitizer build can too
// (kernels/tests/tsan_fused_lstm.cpp).

#pragma once

#include <cstdint>

namespace edgelstm {

struct FusedLstmSeq {
  const float* packed = nullptr; // Wh (4H, H) packed by pack_gates(.., 4, H, H, ..)
  // Projected input rows of 4H floats (Wx x + bias, gate stride H): row
  // (t, b) at (t * B + b) * 4H when time-major, else (b * T + t) * 4H.
  const float* xp = nullptr;
  bool xp_time_major = true;
  // Output y (T, B, H), or (B, T, H) when batch_first; zero past a length.
  float* y = nullptr;
  bool batch_first = false;
  float* h = nullptr; // (B, H): the initial state in, the final one out
  float* c = nullptr; // (B, H), likewise
  const int32_t* len = nullptr; // (B,) valid steps per row, or null
  bool reverse = false;
  int T = 0, B = 0, H = 0;
  // Training forward (all null for inference): what the backward reads
  // instead of recomputing, rows in y's order (zero past a length): act
  // (rows, 4H) the activated gates i, f, g, o; cp / tc (rows, H) the c each
  // step read and tanh of the c it wrote; hprev (rows, H) the h it read.
  float* act = nullptr;
  float* cp = nullptr;
  float* tc = nullptr;
  float* hprev = nullptr;
};

// Runs the recurrence; returns the threads its steps ran on. Each thread
// owns a contiguous range of unit blocks (all four gate columns of its
// units), so results are bit-identical for any count.
int run_fused_lstm(const FusedLstmSeq& s);

} // namespace edgelstm
