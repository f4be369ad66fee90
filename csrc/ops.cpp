// Torch binding of the mask-op kernels: the `cpu` and `cuda` backends of vtrans_kernels/library.py.
// Function names and arguments match the Python backends (reference/backend.py, triton/). The caller has
// already validated shapes and dtypes and made inputs contiguous; here tensors become raw pointers and
// calls are routed to the CPU or CUDA kernels by device.
#include <torch/extension.h>

#ifdef VTRANS_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <cmath>
#include <optional>
#include <tuple>

#include "vtrans_kernels_api.h"

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

#ifdef VTRANS_WITH_CUDA
#define VTRANS_RUN(on, fn, ...)                                                              \
  do {                                                                                       \
    if ((on).is_cuda()) {                                                                    \
      const c10::cuda::CUDAGuard guard((on).device());                                       \
      vtrans::cuda::fn(__VA_ARGS__, c10::cuda::getCurrentCUDAStream().stream());             \
    } else {                                                                                 \
      vtrans::cpu::fn(__VA_ARGS__);                                                          \
    }                                                                                        \
  } while (0)
#else
#define VTRANS_RUN(on, fn, ...)                                                              \
  do {                                                                                       \
    TORCH_CHECK(!(on).is_cuda(), "vtrans_kernels._C was built without CUDA kernels");        \
    vtrans::cpu::fn(__VA_ARGS__);                                                            \
  } while (0)
#endif

struct View2d {
  int64_t rows, cols;
};

View2d view_2d(const Tensor& t) {
  const int64_t cols = t.dim() ? t.size(-1) : 1;
  return {cols ? t.numel() / cols : 0, cols};
}

vtrans::Dtype kernel_dtype(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return vtrans::Dtype::F32;
    case at::kHalf: return vtrans::Dtype::F16;
    case at::kBFloat16: return vtrans::Dtype::BF16;
    default: TORCH_CHECK(false, "vtrans kernels: expected float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

Tensor fp32(const Tensor& t) {
  TORCH_CHECK(t.scalar_type() != at::kDouble, "vtrans kernels compute in fp32; fp64 goes to the torch backend");
  return t.to(at::kFloat).contiguous();
}
OptTensor fp32(const OptTensor& t) { return t ? OptTensor(fp32(*t)) : std::nullopt; }
const float* ptr(const OptTensor& t) { return t ? t->data_ptr<float>() : nullptr; }
uint64_t seed_of(std::optional<int64_t> seed) { return static_cast<uint64_t>(seed.value_or(0)); }
vtrans::HardConcrete hard_concrete(double beta, double limit_l, double limit_r) {
  return {static_cast<float>(1.0 / beta), static_cast<float>(limit_l), static_cast<float>(limit_r)};
}
float l0_shift(double beta, double limit_l, double limit_r) {
  return static_cast<float>(beta * std::log(-limit_l / limit_r));
}
// rows per partial-sum chunk of vib_gate_backward: a function of the shape only, so results are reproducible
int64_t rows_per_chunk(int64_t rows) { return std::max<int64_t>(32, (rows + 255) / 256); }

// Ops over log_alpha: fp32 inputs, an output shaped like log_alpha, and `launch(log_alpha, grad, out)`
// calling the kernel (grad is nullptr for the forward).
template <typename Launch>
Tensor log_alpha_op(const OptTensor& grad, const Tensor& log_alpha_in, Launch&& launch) {
  const Tensor log_alpha = fp32(log_alpha_in);
  const OptTensor g = fp32(grad);
  Tensor out = at::empty_like(log_alpha);
  launch(log_alpha, ptr(g), out.data_ptr<float>());
  return out;
}

Tensor sample_impl(const OptTensor& grad, const Tensor& log_alpha, const OptTensor& u_in, std::optional<int64_t> seed,
                   double beta, double limit_l, double limit_r) {
  const OptTensor u = fp32(u_in);
  return log_alpha_op(grad, log_alpha, [&](const Tensor& la, const float* g, float* out) {
    const View2d v = view_2d(la);
    VTRANS_RUN(la, hard_concrete_sample, la.data_ptr<float>(), ptr(u), g, out, v.rows, v.cols, seed_of(seed),
               hard_concrete(beta, limit_l, limit_r));
  });
}

Tensor hard_concrete_sample(const Tensor& log_alpha, const OptTensor& u, std::optional<int64_t> seed, double beta,
                            double limit_l, double limit_r) {
  return sample_impl(std::nullopt, log_alpha, u, seed, beta, limit_l, limit_r);
}

Tensor hard_concrete_sample_backward(const Tensor& grad, const Tensor& log_alpha, const OptTensor& u,
                                     std::optional<int64_t> seed, double beta, double limit_l, double limit_r) {
  return sample_impl(grad, log_alpha, u, seed, beta, limit_l, limit_r);
}

Tensor expected_l0_impl(const OptTensor& grad, const Tensor& log_alpha, double beta, double limit_l,
                        double limit_r) {
  return log_alpha_op(grad, log_alpha, [&](const Tensor& la, const float* g, float* out) {
    VTRANS_RUN(la, hard_concrete_expected_l0, la.data_ptr<float>(), g, out, la.numel(),
               l0_shift(beta, limit_l, limit_r));
  });
}

Tensor hard_concrete_expected_l0(const Tensor& log_alpha, double beta, double limit_l, double limit_r) {
  return expected_l0_impl(std::nullopt, log_alpha, beta, limit_l, limit_r);
}

Tensor hard_concrete_expected_l0_backward(const Tensor& grad, const Tensor& log_alpha, double beta, double limit_l,
                                          double limit_r) {
  return expected_l0_impl(grad, log_alpha, beta, limit_l, limit_r);
}

Tensor deterministic_impl(const OptTensor& grad, const Tensor& log_alpha, double beta, double limit_l,
                          double limit_r) {
  return log_alpha_op(grad, log_alpha, [&](const Tensor& la, const float* g, float* out) {
    const View2d v = view_2d(la);
    VTRANS_RUN(la, hard_concrete_deterministic, la.data_ptr<float>(), g, out, v.rows, v.cols,
               l0_shift(beta, limit_l, limit_r), static_cast<float>(0.8 / beta));
  });
}

Tensor hard_concrete_deterministic(const Tensor& log_alpha, double beta, double limit_l, double limit_r) {
  return deterministic_impl(std::nullopt, log_alpha, beta, limit_l, limit_r);
}

Tensor hard_concrete_deterministic_backward(const Tensor& grad, const Tensor& log_alpha, double beta, double limit_l,
                                            double limit_r) {
  return deterministic_impl(grad, log_alpha, beta, limit_l, limit_r);
}

Tensor vib_gate(const Tensor& x, const Tensor& mu_in, const Tensor& log_sigma2_in, const OptTensor& eps_in,
                std::optional<int64_t> seed, bool training) {
  const Tensor mu = fp32(mu_in), log_sigma2 = fp32(log_sigma2_in);
  const OptTensor eps = fp32(eps_in);
  Tensor out = at::empty_like(x);
  const View2d v = view_2d(x);
  VTRANS_RUN(x, vib_gate_forward, x.data_ptr(), kernel_dtype(x), mu.data_ptr<float>(), log_sigma2.data_ptr<float>(),
             ptr(eps), out.data_ptr(), v.rows, v.cols, seed_of(seed), training);
  return out;
}

std::tuple<Tensor, Tensor, Tensor> vib_gate_backward(const Tensor& grad, const Tensor& x, const Tensor& mu_in,
                                                     const Tensor& log_sigma2_in, const OptTensor& eps_in,
                                                     std::optional<int64_t> seed, bool training) {
  const Tensor mu = fp32(mu_in), log_sigma2 = fp32(log_sigma2_in);
  const OptTensor eps = fp32(eps_in);
  Tensor dx = at::empty_like(x);
  const View2d v = view_2d(x);
  const int64_t chunk = rows_per_chunk(v.rows);
  Tensor parts = at::empty({2, (v.rows + chunk - 1) / chunk, v.cols}, mu.options());
  VTRANS_RUN(x, vib_gate_backward, grad.data_ptr(), x.data_ptr(), kernel_dtype(x), mu.data_ptr<float>(),
             log_sigma2.data_ptr<float>(), ptr(eps), dx.data_ptr(), parts[0].data_ptr<float>(),
             parts[1].data_ptr<float>(), v.rows, v.cols, chunk, seed_of(seed), training);
  return {dx, parts[0].sum(0), parts[1].sum(0)};
}

Tensor vib_kl(const Tensor& mu_in, const Tensor& log_sigma2_in) {
  const Tensor mu = fp32(mu_in), log_sigma2 = fp32(log_sigma2_in);
  Tensor terms = at::empty_like(mu);
  VTRANS_RUN(mu, vib_kl, mu.data_ptr<float>(), log_sigma2.data_ptr<float>(), nullptr, terms.data_ptr<float>(),
             nullptr, mu.numel());
  return terms.sum();
}

std::tuple<Tensor, Tensor> vib_kl_backward(const Tensor& grad, const Tensor& mu_in, const Tensor& log_sigma2_in) {
  const Tensor mu = fp32(mu_in), log_sigma2 = fp32(log_sigma2_in), g = fp32(grad);
  Tensor dmu = at::empty_like(mu), dls2 = at::empty_like(mu);
  VTRANS_RUN(mu, vib_kl, mu.data_ptr<float>(), log_sigma2.data_ptr<float>(), g.data_ptr<float>(),
             dmu.data_ptr<float>(), dls2.data_ptr<float>(), mu.numel());
  return {dmu, dls2};
}

Tensor vib_keep_prob(const Tensor& mu_in, const Tensor& log_sigma2_in, double temperature) {
  const Tensor mu = fp32(mu_in), log_sigma2 = fp32(log_sigma2_in);
  Tensor out = at::empty_like(mu);
  VTRANS_RUN(mu, vib_keep_prob, mu.data_ptr<float>(), log_sigma2.data_ptr<float>(), nullptr, out.data_ptr<float>(),
             nullptr, mu.numel(), static_cast<float>(temperature));
  return out;
}

std::tuple<Tensor, Tensor> vib_keep_prob_backward(const Tensor& grad, const Tensor& mu_in,
                                                  const Tensor& log_sigma2_in, double temperature) {
  const Tensor mu = fp32(mu_in), log_sigma2 = fp32(log_sigma2_in), g = fp32(grad);
  Tensor dmu = at::empty_like(mu), dls2 = at::empty_like(mu);
  VTRANS_RUN(mu, vib_keep_prob, mu.data_ptr<float>(), log_sigma2.data_ptr<float>(), g.data_ptr<float>(),
             dmu.data_ptr<float>(), dls2.data_ptr<float>(), mu.numel(), static_cast<float>(temperature));
  return {dmu, dls2};
}

bool compiled_with_cuda() {
#ifdef VTRANS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vtrans-kernels C++/CUDA mask-op kernels (backends 'cpu' and 'cuda' of vtrans_kernels.library)";
  m.def("compiled_with_cuda", &compiled_with_cuda);
  m.def("hard_concrete_sample", &hard_concrete_sample);
  m.def("hard_concrete_sample_backward", &hard_concrete_sample_backward);
  m.def("hard_concrete_expected_l0", &hard_concrete_expected_l0);
  m.def("hard_concrete_expected_l0_backward", &hard_concrete_expected_l0_backward);
  m.def("hard_concrete_deterministic", &hard_concrete_deterministic);
  m.def("hard_concrete_deterministic_backward", &hard_concrete_deterministic_backward);
  m.def("vib_gate", &vib_gate);
  m.def("vib_gate_backward", &vib_gate_backward);
  m.def("vib_kl", &vib_kl);
  m.def("vib_kl_backward", &vib_kl_backward);
  m.def("vib_keep_prob", &vib_keep_prob);
  m.def("vib_keep_prob_backward", &vib_keep_prob_backward);
}
