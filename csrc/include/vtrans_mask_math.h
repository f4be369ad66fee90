// Per-element formulas of the mask ops (DESIGN 2.1, 2.2), shared by the CPU and CUDA kernels so the two
// backends cannot drift apart. Everything computes in fp32; see vtrans_kernels/reference for the spec.
#pragma once
#include "vtrans_philox.h"

namespace vtrans {

VT_HD float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Hard concrete: s = sigmoid((log u - log(1-u) + log_alpha) / beta), z = clamp(s * (r - l) + l, 0, 1).
struct HardConcrete {
  float inv_beta, limit_l, limit_r;

  VT_HD float s(float log_alpha, float u) const {
    u = fminf(fmaxf(u, 1e-6f), 1.0f - 1e-6f);
    return sigmoid((logf(u) - log1pf(-u) + log_alpha) * inv_beta);
  }
  VT_HD float forward(float s_value) const {
    return fminf(fmaxf(s_value * (limit_r - limit_l) + limit_l, 0.0f), 1.0f);
  }
  // d z / d log_alpha times grad; zero where the clamp is active (inclusive bounds, like torch.clamp)
  VT_HD float backward(float grad, float s_value) const {
    const float stretched = s_value * (limit_r - limit_l) + limit_l;
    if (!(stretched >= 0.0f && stretched <= 1.0f)) return 0.0f;
    return grad * (limit_r - limit_l) * s_value * (1.0f - s_value) * inv_beta;
  }
};

// Deterministic hard-concrete mask (reference/hard_concrete.py): a NaN log_alpha is a pruned unit, so it adds
// nothing to the expected kept count and ranks below every number; the other units are unaffected.
VT_HD float hc_expected_term(float log_alpha, float shift) {
  return log_alpha != log_alpha ? 0.0f : sigmoid(log_alpha - shift);
}
// Whether unit a ranks strictly above unit b by log_alpha (larger first, NaN last; ties are left to the index).
VT_HD bool hc_ranks_above(float a, float b) { return a > b || (a == a && b != b); }

// VIB: keep iff mu^2 > sigma^2.
VT_HD bool vib_keep(float mu, float log_sigma2) { return mu * mu > expf(log_sigma2); }

// 0.5 * log(1 + mu^2 / sigma^2) and its gradients (times grad).
VT_HD float vib_kl_term(float mu, float log_sigma2) { return 0.5f * log1pf(mu * mu * expf(-log_sigma2)); }
VT_HD void vib_kl_grad(float grad, float mu, float log_sigma2, float* dmu, float* dls2) {
  const float inv_sigma2 = expf(-log_sigma2);
  const float ratio = mu * mu * inv_sigma2;
  *dmu = grad * mu * inv_sigma2 / (1.0f + ratio);
  *dls2 = -0.5f * grad * ratio / (1.0f + ratio);
}

// sigmoid(T * (log mu^2 - log_sigma2)); 0 with zero gradient at mu = 0.
VT_HD float vib_keep_prob(float mu, float log_sigma2, float temperature) {
  if (mu == 0.0f) return 0.0f;
  return sigmoid(temperature * (2.0f * logf(fabsf(mu)) - log_sigma2));
}
VT_HD void vib_keep_prob_grad(float grad, float mu, float log_sigma2, float temperature, float* dmu, float* dls2) {
  const float p = vib_keep_prob(mu, log_sigma2, temperature);
  const float slope = mu == 0.0f ? 0.0f : grad * temperature * p * (1.0f - p);
  *dmu = mu == 0.0f ? 0.0f : 2.0f * slope / mu;
  *dls2 = -slope;
}

}  // namespace vtrans
