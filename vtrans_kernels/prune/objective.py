"""Loss terms of the VTrans objective (DESIGN 2.4): distillation from the unpruned teacher."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _token_weights(logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if logits.dim() == 3 and attention_mask is not None:
        return attention_mask.reshape(-1).to(logits.dtype)
    rows = logits.numel() // logits.shape[-1]
    return logits.new_ones(rows)


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over rows (sequences for classifiers,
    non-padding tokens for per-token logits [batch, seq, vocab])."""
    weights = _token_weights(student, attention_mask)
    s = F.log_softmax(student.float().reshape(-1, student.shape[-1]) / temperature, dim=-1)
    t = F.log_softmax(teacher.float().reshape(-1, teacher.shape[-1]) / temperature, dim=-1)
    per_row = (t.exp() * (t - s)).sum(-1)
    return temperature ** 2 * (per_row * weights).sum() / weights.sum().clamp_min(1)


def hidden_distillation(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...],
                        keep: torch.Tensor | None = None,
                        attention_mask: torch.Tensor | None = None, relative: bool = False) -> torch.Tensor:
    """Layer-wise hidden-state MSE: the mean over layers of the squared error over the kept hidden dims
    (``keep``, bool [hidden]; all when ``None``) and non-padding tokens. With ``relative`` each layer's error is
    divided by the teacher's mean square over the same dims and tokens, so the term is about 1 whatever the
    residual stream's scale (LLaMA-style models carry activations in the thousands)."""
    if len(student) != len(teacher):
        raise ValueError(f"hidden_distillation: {len(student)} student vs {len(teacher)} teacher hidden states")
    total = 0.0
    for s, t in zip(student, teacher):
        t = t.float()
        diff, power = (s.float() - t).square(), t.detach().square()
        if keep is not None:
            diff, power = diff[..., keep.to(diff.device)], power[..., keep.to(diff.device)]
        error = _mean_over_tokens(diff, attention_mask)
        if relative:
            error = error / _mean_over_tokens(power, attention_mask).clamp_min(1e-12)
        total = total + error
    return total / len(student)


def _mean_over_tokens(values: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` [..., tokens, dims] over its dims and the non-padding tokens; 0, not nan, when no dim is
    left (every hidden dim pruned)."""
    per_token = values.sum(-1) / max(values.shape[-1], 1)
    if attention_mask is None:
        return per_token.mean()
    mask = attention_mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)
