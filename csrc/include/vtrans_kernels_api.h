// Raw-pointer entry points of the mask-op kernels. The CPU (csrc/cpu) and CUDA (csrc/cuda) versions have
// the same signatures (CUDA adds the stream); csrc/ops.cpp binds them to torch tensors. No torch or CUDA
// headers here, so .cu files stay fast to compile. Parameters and noise are fp32; x/grad/dx use `dtype`.
#pragma once
#include <cstdint>

#include "vtrans_mask_math.h"

namespace vtrans {

enum class Dtype : int { F32 = 0, F16 = 1, BF16 = 2 };

// Declares one backend's entry points; EXTRA is "" for the CPU and ", void* stream" for CUDA.
#define VTRANS_DECLARE_KERNELS(EXTRA)                                                                         \
  /* z (grad == nullptr) or d log_alpha (grad given); u == nullptr means noise from seed */                 \
  void hard_concrete_sample(const float* log_alpha, const float* u, const float* grad, float* out,          \
                            int64_t rows, int64_t cols, uint64_t seed, HardConcrete hc EXTRA);              \
  void hard_concrete_expected_l0(const float* log_alpha, const float* grad, float* out, int64_t n,          \
                                 float shift EXTRA);                                                         \
  void hard_concrete_deterministic(const float* log_alpha, const float* grad, float* out, int64_t rows,    \
                                   int64_t cols, float shift, float value_scale EXTRA);                     \
  /* eps == nullptr means noise from seed; training == false uses the deterministic gate */                 \
  void vib_gate_forward(const void* x, Dtype dtype, const float* mu, const float* log_sigma2,               \
                        const float* eps, void* out, int64_t rows, int64_t cols, uint64_t seed,            \
                        bool training EXTRA);                                                                \
  /* writes dx and per-chunk column partial sums dmu_part/dls2_part [chunks, cols] (chunks from           \
     vib_gate_row_chunks) for a deterministic reduction by the caller */                                    \
  void vib_gate_backward(const void* grad, const void* x, Dtype dtype, const float* mu,                    \
                         const float* log_sigma2, const float* eps, void* dx, float* dmu_part,             \
                         float* dls2_part, int64_t rows, int64_t cols, int64_t rows_per_chunk,             \
                         uint64_t seed, bool training EXTRA);                                                \
  /* per-unit KL terms into kl (summed by the caller), or gradients when grad != nullptr */                 \
  void vib_kl(const float* mu, const float* log_sigma2, const float* grad, float* kl_or_dmu, float* dls2,   \
              int64_t n EXTRA);                                                                              \
  void vib_keep_prob(const float* mu, const float* log_sigma2, const float* grad, float* p_or_dmu,          \
                     float* dls2, int64_t n, float temperature EXTRA);

namespace cpu {
VTRANS_DECLARE_KERNELS()
}

namespace cuda {
#define VTRANS_STREAM_ARG , void* stream
VTRANS_DECLARE_KERNELS(VTRANS_STREAM_ARG)
#undef VTRANS_STREAM_ARG
}

}  // namespace vtrans
