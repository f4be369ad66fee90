"""Evaluation of (masked, pruned or compacted) models: accuracy for classification, perplexity for LM."""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from .data import Batches


@contextmanager
def _in_eval_mode(model):
    """The model in eval mode (deterministic masks when attached) within the block, its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


@torch.no_grad()
def correct_per_row(model, batches: Batches, batch_size: int = 64) -> torch.Tensor:
    """Bool [rows] on the CPU: whether the classifier's top logit is each row's label, rows in
    ``batches.sequential`` order (the same rows for every model, so two models' results pair up row by row)."""
    flags = []
    with _in_eval_mode(model) as device:
        for batch in batches.sequential(batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            flags.append((model(**batch).logits.argmax(-1) == batch["labels"]).cpu())
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


@torch.no_grad()
def evaluate(model, batches: Batches, task: str, batch_size: int = 64) -> dict:
    """``{"accuracy": ...}`` (classification) or ``{"perplexity": ..., "loss": ...}`` (lm) over every row of
    ``batches``, with the model in eval mode (deterministic masks when attached)."""
    if task == "classification":
        correct = correct_per_row(model, batches, batch_size)
        return {"accuracy": float(correct.sum()) / max(correct.numel(), 1)}
    nll = tokens = 0.0
    with _in_eval_mode(model) as device:
        for batch in batches.sequential(batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            count = float(batch["attention_mask"][:, 1:].sum())
            nll += float(model(**batch).loss) * count
            tokens += count
    loss = nll / max(tokens, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
