// AVX2+FMA build of the gate loops (compiled with -mavx2 -mfma; x86-64 only).

#include "gates.h"

#define GATES_NS gates_avx2
#include "gates.inc"
