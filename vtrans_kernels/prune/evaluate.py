"""Evaluation of (masked, pruned or compacted) models: accuracy for classification, perplexity for LM."""
from __future__ import annotations

import math

import torch

from .data import Batches


@torch.no_grad()
def evaluate(model, batches: Batches, task: str, batch_size: int = 64) -> dict:
    """``{"accuracy": ...}`` (classification) or ``{"perplexity": ..., "loss": ...}`` (lm) over every row of
    ``batches``, with the model in eval mode (deterministic masks when attached)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    nll = tokens = 0.0
    try:
        for batch in batches.sequential(batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            if task == "classification":
                correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
                total += batch["labels"].numel()
            else:
                count = float(batch["attention_mask"][:, 1:].sum())
                nll += float(out.loss) * count
                tokens += count
    finally:
        model.train(was_training)
    if task == "classification":
        return {"accuracy": correct / max(total, 1)}
    loss = nll / max(tokens, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
