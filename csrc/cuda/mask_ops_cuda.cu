// CUDA kernels of the mask ops. Raw pointers in, launchers out: no torch headers, so this file compiles in
// seconds. Noise is drawn per (row, group of 4 columns) with Philox and redrawn in backward, never stored.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "vtrans_kernels_api.h"

namespace vtrans {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("vtrans ") + what + ": " + cudaGetErrorString(err));
}

unsigned blocks_for(int64_t work) {
  return static_cast<unsigned>(std::min<int64_t>((work + kThreads - 1) / kThreads, 65535LL * 32));
}

template <typename Fn>
void dispatch_dtype(Dtype dtype, Fn&& fn) {
  switch (dtype) {
    case Dtype::F32: fn(float{}); break;
    case Dtype::F16: fn(__half{}); break;
    case Dtype::BF16: fn(__nv_bfloat16{}); break;
  }
}

// One thread per (row, group of 4 columns), grid-stride.
__global__ void hc_sample_kernel(const float* log_alpha, const float* u, const float* grad, float* out, int64_t rows,
                                 int64_t cols, uint64_t seed, HardConcrete hc) {
  const int64_t groups = (cols + 3) / 4;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < rows * groups;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = t / groups, g = t % groups;
    float noise[4];
    if (!u) uniform4(seed, r, g, noise);
    for (int k = 0; k < 4 && 4 * g + k < cols; ++k) {
      const int64_t i = r * cols + 4 * g + k;
      const float s = hc.s(log_alpha[i], u ? u[i] : noise[k]);
      out[i] = grad ? hc.backward(grad[i], s) : hc.forward(s);
    }
  }
}

__global__ void expected_l0_kernel(const float* log_alpha, const float* grad, float* out, int64_t n, float shift) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float p = sigmoid(log_alpha[i] - shift);
    out[i] = grad ? grad[i] * p * (1.0f - p) : p;
  }
}

// Block (chunk, row): the block sums P(z != 0) over the row, then each thread ranks its units by counting
// units ahead of them (larger log_alpha, ties to the lower index): O(cols) per unit, no sort.
__global__ void deterministic_kernel(const float* log_alpha, const float* grad, float* out, int64_t cols,
                                     float shift, float value_scale) {
  __shared__ float partial[kThreads];
  const float* la = log_alpha + blockIdx.y * cols;
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += hc_expected_term(la[c], shift);
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  const int64_t keep_count = static_cast<int64_t>(floorf(partial[0] + 0.5f));
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= cols) return;
  const float mine = la[i];
  int64_t ahead = 0;
  for (int64_t j = 0; j < cols; ++j) ahead += hc_ranks_above(la[j], mine) || (la[j] == mine && j < i);
  float v = 0.0f;
  if (ahead < keep_count && mine == mine) {  // a NaN unit is pruned
    v = sigmoid(mine * value_scale);
    if (grad) v = grad[blockIdx.y * cols + i] * v * (1.0f - v) * value_scale;
  }
  out[blockIdx.y * cols + i] = v;
}

template <typename T>
__global__ void vib_gate_forward_kernel(const T* x, const float* mu, const float* log_sigma2, const float* eps, T* out,
                                        int64_t rows, int64_t cols, uint64_t seed, bool training) {
  const int64_t groups = (cols + 3) / 4;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < rows * groups;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = t / groups, g = t % groups;
    float noise[4];
    if (training && !eps) normal4(seed, r, g, noise);
    for (int k = 0; k < 4 && 4 * g + k < cols; ++k) {
      const int64_t c = 4 * g + k, i = r * cols + c;
      float z;
      if (training) z = mu[c] + expf(0.5f * log_sigma2[c]) * (eps ? eps[i] : noise[k]);
      else z = vib_keep(mu[c], log_sigma2[c]) ? mu[c] : 0.0f;
      out[i] = from_float<T>(to_float(x[i]) * z);
    }
  }
}

// Grid (column-group blocks, row chunks): a thread owns 4 columns of one chunk of rows, writes dx and the
// chunk's partial column sums; the caller reduces the partials over chunks (deterministic, no atomics).
template <typename T>
__global__ void vib_gate_backward_kernel(const T* grad, const T* x, const float* mu, const float* log_sigma2,
                                         const float* eps, T* dx, float* dmu_part, float* dls2_part, int64_t rows,
                                         int64_t cols, int64_t rows_per_chunk, uint64_t seed, bool training) {
  const int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (4 * g >= cols) return;
  const int width = static_cast<int>(min(int64_t(4), cols - 4 * g));
  float base[4], scale[4], dmu[4] = {0, 0, 0, 0}, dls2[4] = {0, 0, 0, 0};
  for (int k = 0; k < width; ++k) {
    const int64_t c = 4 * g + k;
    base[k] = training || vib_keep(mu[c], log_sigma2[c]) ? mu[c] : 0.0f;
    scale[k] = training ? expf(0.5f * log_sigma2[c]) : 0.0f;
  }
  const int64_t row_begin = blockIdx.y * rows_per_chunk;
  const int64_t row_end = min(rows, row_begin + rows_per_chunk);
  for (int64_t r = row_begin; r < row_end; ++r) {
    float noise[4] = {0, 0, 0, 0};
    if (training && !eps) normal4(seed, r, g, noise);
    for (int k = 0; k < width; ++k) {
      const int64_t i = r * cols + 4 * g + k;
      const float n = training ? (eps ? eps[i] : noise[k]) : 0.0f;
      const float gv = to_float(grad[i]);
      const float gx = gv * to_float(x[i]);
      dx[i] = from_float<T>(gv * (base[k] + scale[k] * n));
      dmu[k] += gx;
      dls2[k] += gx * n;
    }
  }
  for (int k = 0; k < width; ++k) {
    const int64_t p = blockIdx.y * cols + 4 * g + k;
    dmu_part[p] = training || base[k] != 0.0f ? dmu[k] : 0.0f;
    dls2_part[p] = 0.5f * scale[k] * dls2[k];
  }
}

__global__ void vib_kl_kernel(const float* mu, const float* log_sigma2, const float* grad, float* kl_or_dmu,
                              float* dls2, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if (grad) vib_kl_grad(*grad, mu[i], log_sigma2[i], kl_or_dmu + i, dls2 + i);
    else kl_or_dmu[i] = vib_kl_term(mu[i], log_sigma2[i]);
  }
}

__global__ void vib_keep_prob_kernel(const float* mu, const float* log_sigma2, const float* grad, float* p_or_dmu,
                                     float* dls2, int64_t n, float temperature) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if (grad) vib_keep_prob_grad(grad[i], mu[i], log_sigma2[i], temperature, p_or_dmu + i, dls2 + i);
    else p_or_dmu[i] = vtrans::vib_keep_prob(mu[i], log_sigma2[i], temperature);
  }
}

}  // namespace

void hard_concrete_sample(const float* log_alpha, const float* u, const float* grad, float* out, int64_t rows,
                          int64_t cols, uint64_t seed, HardConcrete hc, void* stream) {
  hc_sample_kernel<<<blocks_for(rows * ((cols + 3) / 4)), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      log_alpha, u, grad, out, rows, cols, seed, hc);
  check_launch("hard_concrete_sample");
}

void hard_concrete_expected_l0(const float* log_alpha, const float* grad, float* out, int64_t n, float shift,
                               void* stream) {
  expected_l0_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(log_alpha, grad, out, n, shift);
  check_launch("hard_concrete_expected_l0");
}

void hard_concrete_deterministic(const float* log_alpha, const float* grad, float* out, int64_t rows, int64_t cols,
                                 float shift, float value_scale, void* stream) {
  const dim3 grid(static_cast<unsigned>((cols + kThreads - 1) / kThreads), static_cast<unsigned>(rows));
  deterministic_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(log_alpha, grad, out, cols, shift,
                                                                                 value_scale);
  check_launch("hard_concrete_deterministic");
}

void vib_gate_forward(const void* x, Dtype dtype, const float* mu, const float* log_sigma2, const float* eps,
                      void* out, int64_t rows, int64_t cols, uint64_t seed, bool training, void* stream) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    vib_gate_forward_kernel<T><<<blocks_for(rows * ((cols + 3) / 4)), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), mu, log_sigma2, eps, static_cast<T*>(out), rows, cols, seed, training);
  });
  check_launch("vib_gate_forward");
}

void vib_gate_backward(const void* grad, const void* x, Dtype dtype, const float* mu, const float* log_sigma2,
                       const float* eps, void* dx, float* dmu_part, float* dls2_part, int64_t rows, int64_t cols,
                       int64_t rows_per_chunk, uint64_t seed, bool training, void* stream) {
  const int64_t groups = (cols + 3) / 4;
  const dim3 grid(static_cast<unsigned>((groups + kThreads - 1) / kThreads),
                  static_cast<unsigned>((rows + rows_per_chunk - 1) / rows_per_chunk));
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    vib_gate_backward_kernel<T><<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(grad), static_cast<const T*>(x), mu, log_sigma2, eps, static_cast<T*>(dx), dmu_part,
        dls2_part, rows, cols, rows_per_chunk, seed, training);
  });
  check_launch("vib_gate_backward");
}

void vib_kl(const float* mu, const float* log_sigma2, const float* grad, float* kl_or_dmu, float* dls2, int64_t n,
            void* stream) {
  vib_kl_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(mu, log_sigma2, grad, kl_or_dmu,
                                                                                   dls2, n);
  check_launch("vib_kl");
}

void vib_keep_prob(const float* mu, const float* log_sigma2, const float* grad, float* p_or_dmu, float* dls2,
                   int64_t n, float temperature, void* stream) {
  vib_keep_prob_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(mu, log_sigma2, grad,
                                                                                          p_or_dmu, dls2, n,
                                                                                          temperature);
  check_launch("vib_keep_prob");
}

}  // namespace cuda
}  // namespace vtrans
