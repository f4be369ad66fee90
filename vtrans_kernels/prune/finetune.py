"""Plain fine-tuning (a teacher before pruning, or the compacted model after it), optionally distilled."""
from __future__ import annotations

import torch
from torch import nn

from .data import Batches
from .objective import logit_distillation


def finetune(model: nn.Module, batches: Batches, steps: int, *, lr: float = 5e-5, teacher: nn.Module | None = None,
             temperature: float = 2.0, distill_weight: float = 1.0, max_grad_norm: float = 1.0,
             start_step: int = 0, progress: bool = False, desc: str = "fine-tune") -> list[float]:
    """AdamW on every parameter for ``steps`` steps over ``batches`` (batch ``start_step + i`` at step i), with
    a linear learning-rate decay; the loss is the model's task loss plus, with ``teacher``, ``distill_weight``
    times the logit distillation loss. Returns the loss of every step."""
    if steps <= 0:
        return []
    device = next(model.parameters()).device
    params = list(model.parameters())
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 - i / steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc=desc, dynamic_ncols=True)
    losses = []
    model.train()
    for i in range(steps):
        batch = {k: v.to(device) for k, v in batches.batch(start_step + i).items()}
        out = model(**batch)
        loss = out.loss
        if teacher is not None:
            with torch.no_grad():
                target = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
            mask = batch.get("attention_mask") if out.logits.dim() == 3 else None
            loss = loss + distill_weight * logit_distillation(out.logits, target, temperature, mask)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {float(loss)} at step {i}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    if bar is not None:
        bar.close()
    model.eval()
    return losses
