"""The launcher calls that the compile-only check drives for a stand-in GPU: every Triton kernel of the package,
forward and backward, at the shapes users run (BERT-base, LLaMA-7B with GQA, head_dim 256, norm widths 768 to
16384, batch x heads up to 100k), in bf16, fp16 and fp32, and every flag the launchers use.

``cases(full)`` returns ``(label, call)`` pairs; ``call()`` runs the launcher on ``meta`` tensors. The quick set
(what CI compiles) covers every kernel, every flag value and every dtype at least once, and the widest shapes of
each family; ``full=True`` adds the cross product of dtypes with every flag.
"""
import importlib
import itertools

import torch

META = torch.device("meta")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _t(*shape, dtype=torch.float32):
    return torch.empty(*shape, device=META, dtype=dtype)


def _module(name):
    return importlib.import_module(f"vtrans_kernels.triton.{name}")


# ----------------------------------------------------------------------------------------------------------
# mask ops
def _mask_cases():
    vib, hc = _module("vib"), _module("hard_concrete")
    out = []
    for dname, dt in DTYPES.items():
        x = _t(8, 512, 4096, dtype=dt)
        for training, noise in ((True, "seed"), (True, "eps"), (False, "none")):
            eps = _t(8, 512, 4096) if noise == "eps" else None
            seed = 3 if noise == "seed" else None
            args = (x, _t(4096), _t(4096), eps, seed, training)
            out.append((f"vib_gate {dname} train={training} noise={noise}", lambda a=args: vib.vib_gate(*a)))
            out.append((f"vib_gate_backward {dname} train={training} noise={noise}",
                        lambda a=args, x=x: vib.vib_gate_backward(x, *a)))
    mu = _t(100_000)
    out += [("vib_kl", lambda: vib.vib_kl(mu, mu)), ("vib_kl_backward", lambda: vib.vib_kl_backward(_t(()), mu, mu)),
            ("vib_keep_prob", lambda: vib.vib_keep_prob(mu, mu, 10.0)),
            ("vib_keep_prob_backward", lambda: vib.vib_keep_prob_backward(mu, mu, mu, 10.0))]
    la = _t(32, 11008)
    hc_args = (2 / 3, -0.1, 1.1)
    out += [("hard_concrete_sample seed", lambda: hc.hard_concrete_sample(la, None, 5, *hc_args)),
            ("hard_concrete_sample u", lambda: hc.hard_concrete_sample(la, _t(32, 11008), None, *hc_args)),
            ("hard_concrete_sample_backward seed", lambda: hc.hard_concrete_sample_backward(la, la, None, 5, *hc_args)),
            ("hard_concrete_expected_l0", lambda: hc.hard_concrete_expected_l0(la, *hc_args)),
            ("hard_concrete_expected_l0_backward", lambda: hc.hard_concrete_expected_l0_backward(la, la, *hc_args)),
            ("hard_concrete_deterministic", lambda: hc.hard_concrete_deterministic(la, *hc_args)),
            ("hard_concrete_deterministic_backward",
             lambda: hc.hard_concrete_deterministic_backward(la, la, *hc_args))]
    return out


# ----------------------------------------------------------------------------------------------------------
# masked linear and SwiGLU
_LINEAR_SHAPES = {"bert-ffn-up": (4096, 3072, 768), "bert-attn-out": (4096, 768, 768),
                  "llama7b-ffn": (4096, 11008, 4096), "llama7b-down": (4096, 4096, 11008)}


def _linear_call(dt, shape, act, gate, training, noise, bias, in_gate, backward):
    ml = _module("masked_linear")
    m, n, k = _LINEAR_SHAPES[shape]
    x, w = _t(m, k, dtype=dt), _t(n, k, dtype=dt)
    b = _t(n, dtype=dt) if bias else None
    ig = {"none": None, "shared": _t(k // 64), "per_row": _t(m, k // 64)}[in_gate]
    out_gate = _t(n) if gate == "vector" else None
    mu = ls2 = _t(n) if gate == "vib" else None
    eps = _t(m, n) if gate == "vib" and training and noise == "eps" else None
    seed = 7 if gate == "vib" and training and noise == "seed" else None
    args = (x, w, b, act, ig, out_gate, mu, ls2, eps, seed, training)
    if not backward:
        return lambda: ml.masked_linear(*args)
    saved = _t(m, n, dtype=dt)
    return lambda: ml.masked_linear_backward(_t(m, n, dtype=dt), saved, *args, [True] * 7)


def _swiglu_call(dt, shape, gate, training, bias, backward):
    ml = _module("masked_linear")
    m, n, k = _LINEAR_SHAPES[shape]
    x, w = _t(m, k, dtype=dt), _t(n, k, dtype=dt)
    b = _t(n, dtype=dt) if bias else None
    out_gate = _t(n) if gate == "vector" else None
    mu = ls2 = _t(n) if gate == "vib" else None
    args = (x, w, w, b, b, "silu", out_gate, mu, ls2, None, 9 if gate == "vib" and training else None, training)
    if not backward:
        return lambda: ml.masked_swiglu(*args)
    h = _t(m, n, dtype=dt)
    return lambda: ml.masked_swiglu_backward(h, h, h, *args, [True] * 8)


def _linear_cases(full):
    out = []
    # flags: (shape, act, gate, training, noise, bias, in_gate)
    flag_sets = [("bert-ffn-up", "gelu", "vib", True, "seed", True, "none"),
                 ("bert-ffn-up", "gelu_tanh", "vib", False, "none", True, "none"),
                 ("bert-ffn-up", "relu", "vector", True, "none", True, "none"),
                 ("bert-attn-out", "none", "vib", True, "eps", True, "shared"),
                 ("bert-attn-out", "none", "vector", True, "none", False, "per_row"),
                 ("llama7b-down", "none", "vib", True, "seed", False, "none"),
                 ("llama7b-ffn", "silu", "none", True, "none", False, "none")]
    for i, flags in enumerate(flag_sets):
        quick = {"bf16": torch.bfloat16, "fp32": torch.float32} if i == 0 else \
            {"fp16": torch.float16, "fp32": torch.float32} if i == 3 else {"bf16": torch.bfloat16}
        dtypes = DTYPES if full else quick
        for (dname, dt), backward in itertools.product(dtypes.items(), (False, True)):
            label = f"masked_linear{'_backward' if backward else ''} {dname} " + " ".join(map(str, flags))
            out.append((label, _linear_call(dt, *flags, backward)))
    for i, (gate, training) in enumerate((("vib", True), ("vib", False), ("vector", True), ("none", True))):
        dtypes = DTYPES if full else {"bf16": torch.bfloat16, "fp32": torch.float32} if i == 0 else \
            {"bf16": torch.bfloat16}
        for (dname, dt), backward in itertools.product(dtypes.items(), (False, True)):
            label = f"masked_swiglu{'_backward' if backward else ''} {dname} llama7b gate={gate} train={training}"
            out.append((label, _swiglu_call(dt, "llama7b-ffn", gate, training, i == 2, backward)))
    return out


# ----------------------------------------------------------------------------------------------------------
# masked norms
def _norm_call(rms, dt, width, rows, gate, residual, backward):
    mn = _module("masked_norm")
    x = _t(rows, width, dtype=dt)
    keep, w = _t(width, dtype=torch.bool), _t(width, dtype=dt)
    res = _t(rows, width, dtype=dt) if residual else None
    out_gate = _t(width) if gate == "vector" else None
    mu = ls2 = _t(width) if gate.startswith("vib") else None
    noise = _t(rows, width) if gate == "vib-eps" else None
    seed = 11 if gate == "vib-seed" else None
    training = gate != "vib-eval"
    gate_args = (out_gate, mu, ls2, noise, seed, training)
    if rms:
        if not backward:
            return lambda: mn.masked_rms_norm(x, res, keep, w, 1e-6, *gate_args)
        return lambda: mn.masked_rms_norm_backward(x, x if residual else None, x, _t(rows), keep, w, 1e-6,
                                                   *gate_args)
    if not backward:
        return lambda: mn.masked_layer_norm(x, res, keep, w, w, 1e-5, *gate_args)
    return lambda: mn.masked_layer_norm_backward(x, x if residual else None, x, _t(rows), _t(rows), keep, w, w,
                                                 1e-5, *gate_args)


def _norm_cases(full):
    out = []
    gates = ("none", "vector", "vib-seed", "vib-eps", "vib-eval")
    for rms, (dname, dt), gate in itertools.product((False, True), DTYPES.items(), gates):
        # quick: every gate once (LayerNorm bf16), RMSNorm's VIB gate, and each dtype once
        quick = (dname == "bf16" and (not rms or gate == "vib-seed")) or (not rms and gate == "vib-seed")
        if not (full or quick):
            continue
        for backward in (False, True):
            name = f"masked_{'rms' if rms else 'layer'}_norm{'_backward' if backward else ''}"
            out.append((f"{name} {dname} w=2048 gate={gate} residual=True",
                        _norm_call(rms, dt, 2048, 8192, gate, True, backward)))
    widths = (768, 4096, 5120, 8192, 16384)
    for rms, (dname, dt), width in itertools.product((False, True), DTYPES.items(), widths):
        if not full and (dname != "bf16" or width in (5120, 8192)):
            continue
        for backward in (False, True):
            name = f"masked_{'rms' if rms else 'layer'}_norm{'_backward' if backward else ''}"
            out.append((f"{name} {dname} w={width} gate=vib-seed residual=False",
                        _norm_call(rms, dt, width, 4096, "vib-seed", False, backward)))
    return out


# ----------------------------------------------------------------------------------------------------------
# masked attention
def _attention_call(dt, b, hq, hkv, s, d, gate, mask, backward):
    ma = _module("masked_attention")
    q, k = _t(b, hq, s, d, dtype=dt), _t(b, hkv, s, d, dtype=dt)
    g = hkv
    head_gate = {"unit": _t(g), "row": _t(b * s, g)}.get(gate)
    mu = ls2 = _t(g) if gate.startswith("vib") else None
    eps = _t(b * s, g) if gate == "vib-eps" else None
    seed = 13 if gate == "vib-seed" else None
    training = gate != "vib-eval"
    kpm = _t(b, s, dtype=torch.bool) if mask == "padding" else None
    am = _t(b, 1, s, s, dtype=torch.bool) if mask == "dense" else None
    args = (q, k, k, kpm, am, head_gate, mu, ls2, eps, seed, mask == "causal", d ** -0.5, training)
    if not backward:
        return lambda: ma.masked_attention(*args)
    o = _t(b, s, hq, d, dtype=dt)
    lse = _t(b, hq, s)
    return lambda: ma.masked_attention_backward(o, q, k, k, o, lse, *args[3:])


_ATTN_SHAPES = {"bert-base": (8, 12, 12, 512, 64), "llama7b-gqa": (2, 32, 8, 2048, 128),
                "hd256": (2, 8, 8, 1024, 256), "many-heads": (8334, 12, 12, 64, 64)}  # 100k batch x heads


def _attention_cases(full):
    out = []
    combos = [("bert-base", "vib-seed", "padding"), ("llama7b-gqa", "vib-seed", "causal"),
              ("hd256", "vib-seed", "causal"), ("bert-base", "unit", "dense"), ("llama7b-gqa", "row", "causal"),
              ("bert-base", "vib-eps", "padding"), ("llama7b-gqa", "vib-eval", "causal"),
              ("llama7b-gqa", "none", "none"), ("many-heads", "vib-seed", "padding")]
    for i, (shape, gate, mask) in enumerate(combos):
        dtypes = DTYPES if full or i == 0 else {"bf16": torch.bfloat16} if i != 2 else \
            {"bf16": torch.bfloat16, "fp32": torch.float32}
        for (dname, dt), backward in itertools.product(dtypes.items(), (False, True)):
            label = f"masked_attention{'_backward' if backward else ''} {dname} {shape} gate={gate} mask={mask}"
            out.append((label, _attention_call(dt, *_ATTN_SHAPES[shape], gate, mask, backward)))
    return out


def linear_rows_call(rows: int):
    """The BERT FFN-up masked linear (bf16, VIB gate) at ``rows`` rows: the tuning-count run's call."""
    ml = _module("masked_linear")
    x, w, mu = _t(rows, 768, dtype=torch.bfloat16), _t(3072, 768, dtype=torch.bfloat16), _t(3072)
    return ml.masked_linear(x, w, None, "gelu", None, None, mu, mu, None, 1, True)


def cases(full: bool = False):
    """(label, call) for every launcher call the check compiles; the quick set unless ``full``."""
    return _mask_cases() + _norm_cases(full) + _linear_cases(full) + _attention_cases(full)
