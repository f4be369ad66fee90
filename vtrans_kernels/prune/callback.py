"""`VTransCallback`: VTrans mask training inside a transformers ``Trainer``."""
from __future__ import annotations

from transformers import TrainerCallback

from .config import PruneConfig
from .pruner import Pruner


class VTransCallback(TrainerCallback):
    """Attach masks to ``model`` and train them alongside the Trainer's own weight updates.

    The Trainer computes the task loss (the masks act inside the forward, so its backward reaches the mask
    parameters); before each optimizer step the callback adds the gradients of the mask terms (weighted KL and
    the Lagrangian on the expected sparsity, computed once per step, so gradient accumulation is respected),
    and after it steps the masks and lambdas with its own optimizer (``config.mask_lr``, ``config.lambda_lr``).
    The Lagrangian's target ramps over ``config.warmup_fraction`` of ``config.steps``; set ``config.steps`` to
    the Trainer's ``max_steps``. Logged metrics gain the expected and actual sparsity and the lambdas.
    After training, ``callback.pruner.plan()`` gives the :class:`CompactionPlan`, to apply to
    ``callback.pruner.compaction_model()`` (with ``config.compact_from="original"``, the copy of the weights taken
    when the callback was made, before the Trainer changed them).

    Weights are left to the Trainer: use variant "vtrans" or "fast" (a Trainer needs trainable weights); for
    masks only ("faster") use :class:`Pruner` directly.
    """

    def __init__(self, model, config: PruneConfig | None = None):
        self.pruner = Pruner(model, config or PruneConfig(variant="vtrans"), manage_weights=False)
        self._metrics: dict = {}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        penalty, self._metrics = self.pruner.penalty()
        self.pruner.check_finite(penalty, "mask penalty")
        penalty.backward()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.pruner.optimizer_step()
        self._metrics["sparsity"] = self.pruner.masks.sparsity(self.pruner.measure)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs.update({f"vtrans/{k}": v for k, v in self._metrics.items()})
