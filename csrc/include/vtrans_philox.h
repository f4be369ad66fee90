// Counter-based noise shared by the CPU and CUDA kernels: the function specified in
// vtrans_kernels/reference/rng.py. Element (row, col) takes word col % 4 of the Philox4x32-10 block with
// key (seed_lo, seed_hi) and counter (col / 4, row_lo, row_hi, 0).
#pragma once
#include <cstdint>
#include <cmath>

#if defined(__CUDACC__)
#define VT_HD __host__ __device__ __forceinline__
#else
#define VT_HD inline
#endif

namespace vtrans {

VT_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Four 32-bit words of Philox4x32 (10 rounds) for counter (c0, c1, c2, 0).
VT_HD void philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint64_t seed, uint32_t out[4]) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32), c3 = 0;
  for (int round = 0; round < 10; ++round) {
    const uint32_t a0 = c0, a2 = c2;
    c0 = mulhi32(a2, 0xCD9E8D57u) ^ c1 ^ k0;
    c2 = mulhi32(a0, 0xD2511F53u) ^ c3 ^ k1;
    c1 = a2 * 0xCD9E8D57u;
    c3 = a0 * 0xD2511F53u;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

// uint32 -> uniform strictly inside (0, 1), exact in fp32.
VT_HD float word_to_uniform(uint32_t w) {
  return static_cast<float>(w >> 9) * 1.1920928955078125e-07f + 5.960464477539063e-08f;
}

VT_HD void uniform4(uint64_t seed, int64_t row, int64_t group, float out[4]) {
  uint32_t w[4];
  philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(row), static_cast<uint32_t>(row >> 32), seed, w);
  for (int k = 0; k < 4; ++k) out[k] = word_to_uniform(w[k]);
}

// Box-Muller on word pairs (0, 1) and (2, 3): columns 4g, 4g+1 get rho*cos, rho*sin of the first pair.
VT_HD void normal4(uint64_t seed, int64_t row, int64_t group, float out[4]) {
  float u[4];
  uniform4(seed, row, group, u);
  const float two_pi = 6.283185307179586f;
  for (int k = 0; k < 4; k += 2) {
    const float rho = sqrtf(-2.0f * logf(u[k]));
    const float theta = two_pi * u[k + 1];
    out[k] = rho * cosf(theta);
    out[k + 1] = rho * sinf(theta);
  }
}

}  // namespace vtrans
