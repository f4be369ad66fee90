"""One mask-training optimizer step, end to end: tokens/s and peak memory of vtrans-kernels against eager.

Models (random weights): a BERT-base-shaped classifier at batch 32 x seq 128 and a LLaMA-style GQA decoder
(TinyLlama-1.1B shape) at batch 4 x seq 1024, in bf16 on a GPU; tiny versions in fp32 at batch 2 x seq 16
on CPU. For Faster-VTrans (weights frozen, masks trained) and VTrans (masks and weights trained), each row
is one full step (forward with the task loss, backward, mask penalty, AdamW step) of:
- ``vtrans``: ``vtrans_kernels.attach`` masks trained by ``Pruner.train_step`` on the default backends;
- ``eager-torch-backend``: the same, every vtrans op forced onto the PyTorch reference;
- ``eager``: the CoFi / TVA-Prune way, plain multiplies after each module (:mod:`bench.eager_masks`);
- ``plain``: fine-tuning the model without masks (AdamW on the weights; one row per model).
Distillation is off everywhere (``distill_weight=0``) so that all rows compute the same task loss; learning
rates, KL weight and weight-gradient clipping are PruneConfig's defaults everywhere. Goal on a GPU: vtrans at
least 1.5x the eager tokens/s with at most 0.75x its peak memory, and plain at most 1.2x the vtrans tokens/s.
"""
import contextlib
import gc
import os

import torch
import transformers as tf

from vtrans_kernels.prune import PruneConfig, Pruner

from .common import environment, peak_mib, timed, timing
from .eager_masks import EagerMasks

MODELS = {  # name -> (config class, model class, GPU shape, CPU shape, GPU batch x seq)
    "bert-base": (tf.BertConfig, tf.BertForSequenceClassification,
                  dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
                  dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
                  (32, 128)),
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM,
              dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                   intermediate_size=5632),
              dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=64),
              (4, 1024)),
}
CPU_BATCH = (2, 16)
VARIANTS = {"faster": "Faster-VTrans", "vtrans": "VTrans"}
DEFAULTS = PruneConfig()  # learning rates, KL weight and clipping of every impl


def run(device: str, smoke: bool) -> list[dict]:
    """Rows of section "train" (op = model, ``variant``, impl as in the module docstring) on ``device``;
    ``smoke`` times 3 steps instead of 7 on CPU."""
    gpu = device == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    env = dict(**environment(device), section="train")
    rows = []
    for name, (_, _, _, _, gpu_batch) in MODELS.items():
        batch_size, seq = gpu_batch if gpu else CPU_BATCH
        batch = _batch(name, batch_size, seq, device)
        base = dict(**env, op=name, shape=f"{batch_size}x{seq}", dtype=str(dtype).split(".")[-1], mode="step")
        plain = _measure(name, device, dtype, batch, "plain", None, smoke)
        rows.append(dict(base, impl="plain", variant="none", **plain))
        for variant in VARIANTS:
            results = {impl: _measure(name, device, dtype, batch, impl, variant, smoke)
                       for impl in ("vtrans", "eager-torch-backend", "eager")}
            for impl, result in results.items():
                rows.append(dict(base, impl=impl, variant=variant, **result,
                                 **(_ratios(result, results, plain) if impl == "vtrans" else {})))
    return rows


def _measure(name: str, device: str, dtype: torch.dtype, batch: dict, impl: str, variant: str | None,
             smoke: bool) -> dict:
    """Timing, tokens/s and peak memory of one training step of ``impl`` on a freshly built model."""
    model = _build(name, device, dtype)
    step, context = _stepper(model, batch, impl, variant)
    with context():
        times = timed(step, device, repeats=3 if smoke else 7, rep_ms=1000)
        peak = peak_mib(step, device)
    tokens = batch["input_ids"].numel()
    label = f"{VARIANTS.get(variant, 'fine-tuning')} {impl}"
    print(f"  {name:<9} {label:<34} {times[0]:9.2f} ms  {tokens / times[0] * 1e3:10.0f} tokens/s"
          f"{f'  peak {peak} MiB' if peak else ''}")
    del model, step
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return dict(**timing(*times), tokens_per_s=f"{tokens / times[0] * 1e3:.1f}", peak_mib=peak)


def _stepper(model, batch: dict, impl: str, variant: str | None):
    """(one-step callable, context to run it in) for ``impl``."""
    if impl in ("vtrans", "eager-torch-backend"):
        pruner = Pruner(model, PruneConfig(variant=variant, distill_weight=0.0))
        context = _reference_everywhere if impl == "eager-torch-backend" else contextlib.nullcontext
        return (lambda: pruner.train_step(batch)), context
    groups = []
    penalty = None
    if impl == "eager":
        masks = EagerMasks(model)
        groups.append({"params": list(masks.parameters()), "lr": DEFAULTS.mask_lr})
        penalty = masks.kl
    weights = variant != "faster"
    model.requires_grad_(weights)
    if weights:
        groups.append({"params": list(model.parameters()), "lr": DEFAULTS.weight_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)

    def step():
        loss = model(**batch).loss
        if penalty is not None:
            loss = loss + DEFAULTS.kl_weight * penalty()
        loss.backward()
        if weights:
            torch.nn.utils.clip_grad_norm_(model.parameters(), DEFAULTS.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, contextlib.nullcontext


@contextlib.contextmanager
def _reference_everywhere():
    """Every vtrans op on the PyTorch reference, backward included: ``use_backend`` sets a context variable,
    which the autograd engine's GPU worker thread (where backward runs) does not see; VTRANS_BACKEND is read
    by every thread."""
    previous = os.environ.get("VTRANS_BACKEND")
    os.environ["VTRANS_BACKEND"] = "torch"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["VTRANS_BACKEND"]
        else:
            os.environ["VTRANS_BACKEND"] = previous


def _build(name: str, device: str, dtype: torch.dtype):
    config_class, model_class, gpu_shape, cpu_shape, _ = MODELS[name]
    torch.manual_seed(0)
    config = config_class(vocab_size=32000 if device == "cuda" else 128, num_labels=2, pad_token_id=0,
                          **(gpu_shape if device == "cuda" else cpu_shape))
    return model_class(config).to(device=device, dtype=dtype).train()


def _batch(name: str, batch_size: int, seq: int, device: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 128, (batch_size, seq), generator=gen).to(device)
    labels = torch.randint(0, 2, (batch_size,), generator=gen).to(device) if name == "bert-base" else ids
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _ratios(vtrans: dict, results: dict, plain: dict) -> dict:
    """The goal ratios on the vtrans row: tokens/s over each eager baseline's, peak memory over eager's, and
    plain fine-tuning's tokens/s over vtrans's."""
    tokens = {impl: float(r["tokens_per_s"]) for impl, r in results.items()}
    out = dict(speedup_vs_eager=f"{tokens['vtrans'] / tokens['eager']:.2f}",
               speedup_vs_torch_backend=f"{tokens['vtrans'] / tokens['eager-torch-backend']:.2f}",
               plain_vs_vtrans=f"{float(plain['tokens_per_s']) / tokens['vtrans']:.2f}")
    if vtrans["peak_mib"] and results["eager"]["peak_mib"]:
        out["memory_vs_eager"] = f"{float(vtrans['peak_mib']) / float(results['eager']['peak_mib']):.2f}"
    return out
