// AVX-512 build of the gate loops (compiled with -mavx512f -mavx512vl
// -mavx512bw -mavx512dq -mavx2 -mfma; x86-64 only, chosen at run time).

#include "gates.h"

#define GATES_NS gates_avx512
#include "gates.inc"
