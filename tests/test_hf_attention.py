"""The "vtrans" transformers attention implementation: tiny random models give the same outputs and gradients
as "eager"/"sdpa" (causal decoder with left padding, GQA LLaMA, sliding-window Mistral, BERT with right
padding), a gate callable equals gating the o_proj input by head blocks, and KV-cache generation works."""
import copy

import pytest
import torch

import vtrans_kernels
from vtrans_kernels import backends
from vtrans_kernels.hf.attention import register

import tiny_models

BACKENDS = (["triton"] if backends.BACKENDS["triton"].why_not("cpu", torch.float32) is None else []) + [None]


def _pair(name, baseline="eager"):
    """(model with `baseline` attention, an identical copy with "vtrans")."""
    register()
    base = tiny_models.build(name)
    base.set_attn_implementation(baseline)
    ours = copy.deepcopy(base)
    ours.set_attn_implementation("vtrans")
    assert ours.config._attn_implementation == "vtrans"
    return base, ours


def _batch(model, left_pad: bool, seq=11):
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(2, tiny_models.VOCAB, (2, seq), generator=gen)
    mask = torch.ones(2, seq, dtype=torch.long)
    if left_pad:
        mask[-1, :4] = 0
    else:
        mask[-1, -4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _output_and_grads(model, batch, backend):
    model.zero_grad()
    ctx = vtrans_kernels.use_backend(backend) if backend else torch.enable_grad()
    with ctx:
        out = model(**batch)
        hidden = out.logits if hasattr(out, "logits") else out.last_hidden_state
        if hidden.dim() == 3:  # padded positions differ between implementations (and carry no loss)
            hidden = hidden * batch["attention_mask"][..., None]
        weights = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(0))
        (hidden * weights).sum().backward()
    return hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(base, ours, batch, backend):
    want, want_grads = _output_and_grads(base, batch, None)
    got, got_grads = _output_and_grads(ours, batch, backend)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert want_grads.keys() == got_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,baseline,left_pad", [
    ("llama-gqa", "eager", True),      # causal decoder, GQA 6/2, left padding: a bool mask
    ("qwen2", "sdpa", False),          # GQA 6/3, no padding: causal=True without a mask
    ("mistral", "eager", True),        # sliding window 5 over 11 tokens
    ("bert-base", "sdpa", False),      # encoder with right padding
])
def test_equals_builtin_attention(name, baseline, left_pad, backend):
    base, ours = _pair(name, baseline)
    batch = _batch(base, left_pad)
    if name == "qwen2":
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    _assert_same(base, ours, batch, backend)


class _BlockGate(torch.nn.Module):
    """A per-KV-group gate on the o_proj input, applied either by the fused op (vtrans_head_gate) or by a hook."""

    def __init__(self, units: int, kind: str):
        super().__init__()
        gen = torch.Generator().manual_seed(units)
        self.kind = kind
        self.mu = torch.nn.Parameter(torch.randn(units, generator=gen))
        self.log_sigma2 = torch.nn.Parameter(torch.randn(units, generator=gen) - 3)
        self.eps = {}

    def noise(self, rows):
        return self.eps.setdefault(rows, torch.randn(rows, self.mu.shape[0], generator=torch.Generator().manual_seed(rows)))

    def __call__(self, rows: int) -> dict:  # the vtrans_head_gate protocol
        if self.kind == "head_gate":
            return dict(head_gate=self.mu)
        return dict(mu=self.mu, log_sigma2=self.log_sigma2, eps=self.noise(rows))

    def z(self, rows):
        if self.kind == "head_gate":
            return self.mu.expand(rows, -1)
        return self.mu + torch.exp(0.5 * self.log_sigma2) * self.noise(rows)

    def hook(self, module, args):
        (x,) = args  # [B, S, Hq * D]
        b, s, width = x.shape
        g = self.mu.shape[0]
        z = self.z(b * s).reshape(b, s, g, 1)
        return (x.reshape(b, s, g, width // g) * z).reshape(b, s, width),


@pytest.mark.parametrize("kind", ["head_gate", "vib"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gate_equals_gating_o_proj_input(kind, backend):
    base, ours = _pair("llama-gqa")
    for layer_base, layer_ours in zip(base.model.layers, ours.model.layers):
        gate = _BlockGate(base.config.num_key_value_heads, kind)
        layer_ours.self_attn.vtrans_head_gate = gate  # a submodule: its parameters are the model's
        shared = copy.deepcopy(gate)
        layer_base.self_attn.vtrans_head_gate = shared  # (eager attention ignores it: the hook gates instead)
        layer_base.self_attn.o_proj.register_forward_pre_hook(shared.hook)
    _assert_same(base, ours, _batch(base, left_pad=True), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_generation_with_kv_cache(backend):
    base, ours = _pair("llama-gqa")
    prompt = _batch(base, left_pad=True, seq=6)
    want = base.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    ctx = vtrans_kernels.use_backend(backend) if backend else torch.enable_grad()
    with ctx, torch.no_grad():
        got = ours.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(got, want)


def test_from_pretrained_and_config(tmp_path):
    base = tiny_models.build("llama-gqa")
    base.save_pretrained(tmp_path)
    register()
    register()  # idempotent
    loaded = type(base).from_pretrained(tmp_path, attn_implementation="vtrans")
    assert loaded.config._attn_implementation == "vtrans"
    batch = _batch(base, left_pad=True)
    base.set_attn_implementation("sdpa")
    torch.testing.assert_close(tiny_models.output(loaded, batch) * batch["attention_mask"][..., None],
                               tiny_models.output(base, batch) * batch["attention_mask"][..., None],
                               rtol=1e-4, atol=1e-5)


def test_dropout_is_refused():
    _, ours = _pair("bert-base", "sdpa")
    ours.train()
    with pytest.raises(ValueError, match="no attention dropout"):
        ours(**_batch(ours, left_pad=False))
