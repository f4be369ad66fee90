// CPU kernels of the mask ops: at::parallel_for over rows (fixed chunking, so results do not depend on the
// thread count), inner loops written for the auto-vectoriser (-O3, `omp simd`).
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "vtrans_kernels_api.h"

namespace vtrans {
namespace cpu {
namespace {

constexpr int64_t kGrain = 16384;  // elements per task before parallelism pays off

template <typename T>
void for_dtype(Dtype dtype, T&& fn) {
  switch (dtype) {
    case Dtype::F32: fn(float{}); break;
    case Dtype::F16: fn(c10::Half{}); break;
    case Dtype::BF16: fn(c10::BFloat16{}); break;
  }
}

// Fills noise[0..cols) for one row: normals (VIB) or uniforms (hard concrete), 4 columns per Philox block.
template <bool kNormal>
void row_noise(uint64_t seed, int64_t row, int64_t cols, float* noise) {
  const int64_t groups = (cols + 3) / 4;
  for (int64_t g = 0; g < groups; ++g) {
    float four[4];
    if (kNormal) normal4(seed, row, g, four); else uniform4(seed, row, g, four);
    const int64_t n = std::min<int64_t>(4, cols - 4 * g);
    for (int64_t k = 0; k < n; ++k) noise[4 * g + k] = four[k];
  }
}

int64_t rows_grain(int64_t cols) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1)); }

}  // namespace

void hard_concrete_sample(const float* log_alpha, const float* u, const float* grad, float* out, int64_t rows,
                          int64_t cols, uint64_t seed, HardConcrete hc) {
  at::parallel_for(0, rows, rows_grain(cols), [&](int64_t begin, int64_t end) {
    std::vector<float> noise(u ? 0 : cols);
    for (int64_t r = begin; r < end; ++r) {
      const float* ur = u ? u + r * cols : noise.data();
      if (!u) row_noise<false>(seed, r, cols, noise.data());
      const float* la = log_alpha + r * cols;
      float* o = out + r * cols;
      if (grad) {
        const float* g = grad + r * cols;
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) o[c] = hc.backward(g[c], hc.s(la[c], ur[c]));
      } else {
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) o[c] = hc.forward(hc.s(la[c], ur[c]));
      }
    }
  });
}

void hard_concrete_expected_l0(const float* log_alpha, const float* grad, float* out, int64_t n, float shift) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const float p = sigmoid(log_alpha[i] - shift);
      out[i] = grad ? grad[i] * p * (1.0f - p) : p;
    }
  });
}

void hard_concrete_deterministic(const float* log_alpha, const float* grad, float* out, int64_t rows, int64_t cols,
                                 float shift, float value_scale) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(cols);
    for (int64_t r = begin; r < end; ++r) {
      const float* la = log_alpha + r * cols;
      float expected = 0.0f;
      for (int64_t c = 0; c < cols; ++c) expected += hc_expected_term(la[c], shift);
      const int64_t keep_count = static_cast<int64_t>(std::floor(expected + 0.5f));
      std::iota(order.begin(), order.end(), 0);
      // stable, so ties keep the lower index first; NaN ranks last (a strict weak order, unlike a plain >)
      std::stable_sort(order.begin(), order.end(), [la](int64_t a, int64_t b) { return hc_ranks_above(la[a], la[b]); });
      float* o = out + r * cols;
      std::fill(o, o + cols, 0.0f);
      for (int64_t k = 0; k < std::min(keep_count, cols); ++k) {
        const int64_t c = order[k];
        if (std::isnan(la[c])) break;  // NaN units are pruned (they rank last)
        const float v = sigmoid(la[c] * value_scale);
        o[c] = grad ? grad[r * cols + c] * v * (1.0f - v) * value_scale : v;
      }
    }
  });
}

void vib_gate_forward(const void* x, Dtype dtype, const float* mu, const float* log_sigma2, const float* eps,
                      void* out, int64_t rows, int64_t cols, uint64_t seed, bool training) {
  std::vector<float> base(cols), scale(cols);  // z = base + scale * eps
  for (int64_t c = 0; c < cols; ++c) {
    base[c] = training || vib_keep(mu[c], log_sigma2[c]) ? mu[c] : 0.0f;
    scale[c] = training ? expf(0.5f * log_sigma2[c]) : 0.0f;
  }
  for_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x);
    T* op = static_cast<T*>(out);
    at::parallel_for(0, rows, rows_grain(cols), [&](int64_t begin, int64_t end) {
      std::vector<float> noise(training && !eps ? cols : 0);
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = xp + r * cols;
        T* orow = op + r * cols;
        if (!training) {
#pragma omp simd
          for (int64_t c = 0; c < cols; ++c) orow[c] = static_cast<T>(static_cast<float>(xr[c]) * base[c]);
          continue;
        }
        const float* n = eps ? eps + r * cols : noise.data();
        if (!eps) row_noise<true>(seed, r, cols, noise.data());
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c)
          orow[c] = static_cast<T>(static_cast<float>(xr[c]) * (base[c] + scale[c] * n[c]));
      }
    });
  });
}

void vib_gate_backward(const void* grad, const void* x, Dtype dtype, const float* mu, const float* log_sigma2,
                       const float* eps, void* dx, float* dmu_part, float* dls2_part, int64_t rows, int64_t cols,
                       int64_t rows_per_chunk, uint64_t seed, bool training) {
  std::vector<float> base(cols), scale(cols);
  for (int64_t c = 0; c < cols; ++c) {
    base[c] = training || vib_keep(mu[c], log_sigma2[c]) ? mu[c] : 0.0f;
    scale[c] = training ? expf(0.5f * log_sigma2[c]) : 0.0f;
  }
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  for_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* gp = static_cast<const T*>(grad);
    const T* xp = static_cast<const T*>(x);
    T* dxp = static_cast<T*>(dx);
    at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      std::vector<float> noise(training && !eps ? cols : 0);
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        float* dmu = dmu_part + chunk * cols;
        float* dls2 = dls2_part + chunk * cols;
        std::fill(dmu, dmu + cols, 0.0f);
        std::fill(dls2, dls2 + cols, 0.0f);
        const int64_t row_end = std::min(rows, (chunk + 1) * rows_per_chunk);
        for (int64_t r = chunk * rows_per_chunk; r < row_end; ++r) {
          const T* g = gp + r * cols;
          const T* xr = xp + r * cols;
          T* d = dxp + r * cols;
          const float* n = eps ? eps + r * cols : noise.data();
          if (training && !eps) row_noise<true>(seed, r, cols, noise.data());
#pragma omp simd
          for (int64_t c = 0; c < cols; ++c) {
            const float gv = static_cast<float>(g[c]);
            const float gx = gv * static_cast<float>(xr[c]);
            const float nv = training ? n[c] : 0.0f;
            d[c] = static_cast<T>(gv * (base[c] + scale[c] * nv));
            dmu[c] += gx;
            dls2[c] += gx * nv;
          }
        }
        for (int64_t c = 0; c < cols; ++c) {
          // evaluation: the keep decision is a step function, so only kept units get a mu gradient
          dmu[c] = training || base[c] != 0.0f ? dmu[c] : 0.0f;
          dls2[c] *= 0.5f * scale[c];
        }
      }
    });
  });
}

void vib_kl(const float* mu, const float* log_sigma2, const float* grad, float* kl_or_dmu, float* dls2, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (grad) vib_kl_grad(*grad, mu[i], log_sigma2[i], kl_or_dmu + i, dls2 + i);
      else kl_or_dmu[i] = vib_kl_term(mu[i], log_sigma2[i]);
    }
  });
}

void vib_keep_prob(const float* mu, const float* log_sigma2, const float* grad, float* p_or_dmu, float* dls2,
                   int64_t n, float temperature) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (grad) vib_keep_prob_grad(grad[i], mu[i], log_sigma2[i], temperature, p_or_dmu + i, dls2 + i);
      else p_or_dmu[i] = vtrans::vib_keep_prob(mu[i], log_sigma2[i], temperature);
    }
  });
}

}  // namespace cpu
}  // namespace vtrans
