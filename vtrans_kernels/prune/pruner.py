"""`Pruner`: VTrans mask training on a transformers model, usable from any training loop."""
from __future__ import annotations

import copy
import random

import numpy as np
import torch
from torch import nn

from ..hf.adapters import adapter_for
from ..hf.attach import ModelMasks, attach, detach
from ..hf.plan import CompactionPlan, model_record
from ..masks.lagrangian import Lagrangian
from ..masks.mask_set import mix_seed
from .config import PruneConfig
from .distributed import DistContext, fully_shard_model, is_sharded
from .identity import check_same_run, mask_settings, settings_as_run
from .objective import hidden_distillation, logit_distillation


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the run stops and the last good checkpoint stays."""


class Pruner:
    """Attach masks to ``model`` and train them under the size target of ``config``.

    Own loop::

        pruner = Pruner(model, PruneConfig(target_sparsity=0.5, steps=500))
        for step in range(500):
            metrics = pruner.train_step(next_batch())   # forward, backward, optimizer step
        plan = pruner.plan()                            # CompactionPlan hitting the target

    or, for a loop that does its own backward: ``loss, metrics = pruner.compute_loss(batch)``, then
    ``(loss + pruner.penalty()[0]).backward()`` and ``pruner.optimizer_step()``.

    A batch is a dict of tensors the model accepts (``input_ids``, ``attention_mask``, ``labels``, ...).
    Weights train with the masks in the "vtrans" and "fast" variants and are frozen in "faster". The teacher
    of the distillation terms is ``teacher`` if given, else the model itself with masks switched off (faster)
    or a frozen copy taken before training (vtrans, fast).

    With ``manage_weights=False`` the pruner's optimizer holds only the masks and lambdas and leaves the weights'
    ``requires_grad`` alone: another trainer owns the weights (see :class:`VTransCallback`).

    Under ``torchrun`` (an initialised process group) every rank passes the same global batch; each takes its
    share of the rows, gradients are averaged over ranks (DDP semantics) and the mask terms are computed once
    per step on the replicated masks. VIB noise is drawn from a seed offset by rank; hard-concrete samples (one
    per step for all rows) are the same on every rank. ``fsdp=True`` shards the model with FSDP2
    ``fully_shard`` (per layer, then the root) after the masks are attached; FSDP then reduces the weight
    gradients itself. A model already wrapped in ``DistributedDataParallel`` is accepted as well: DDP then
    reduces the weight gradients and the pruner the mask gradients. FSDP is supported for the "faster" variant (weights frozen), the one that 7B-class models
    need, so checkpoints hold only the replicated masks and lambdas.
    """

    def __init__(self, model: nn.Module, config: PruneConfig | None = None, *, teacher: nn.Module | None = None,
                 manage_weights: bool = True, fsdp: bool = False):
        self.config = config = config or PruneConfig()
        # A DistributedDataParallel model: masks go on the inner module, forwards go through DDP (it then
        # reduces the weight gradients itself).
        self.engine = model
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        self.model = model
        self.manage_weights = manage_weights
        self.dist = DistContext.current()
        device = next(model.parameters()).device
        units = adapter_for(model).units()
        self.model_record = model_record(model.config.model_type, units.hidden, units.heads, units.ffn)
        latency_record = _latency_record(model) if config.target == "latency" else None  # before masks go on
        copied = teacher is None and config.distill_weight > 0 and config.trains_weights and manage_weights
        if copied:
            teacher = copy.deepcopy(model)
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        # compact_from="original": the weights before mask training, for compaction (the teacher copy when there is one)
        self.original = None
        if config.compact_from == "original":
            self.original = self.teacher if copied else copy.deepcopy(model).eval().requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # mask init: repeatable per seed, the caller's RNG untouched
            torch.manual_seed(config.seed)
            self.masks: ModelMasks = attach(model, config.method, config.structures, seed=config.seed,
                                              mask_init=config.initial_mask_values)
        self.measure = self._size_measure(model, latency_record)
        if self.dist.active and config.method == "vib":
            self.masks.reseed(mix_seed(config.seed, 1 + self.dist.rank))
        self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        if manage_weights:
            for param in model.parameters():
                param.requires_grad_(config.trains_weights)
        if fsdp:
            if config.trains_weights and manage_weights:
                raise ValueError("fsdp: supported for the 'faster' variant (weights frozen, masks replicated); "
                                 "train weights with masks under DDP-style averaging (fsdp=False)")
            fully_shard_model(model, self.masks.adapter.layers())
        self.lagrangian = Lagrangian(config.target_sparsity, config.warmup_steps)
        self.restart_ramp()
        self.lagrangian.to(device)
        self._gap = 0.0  # expected sparsity - target at the last penalty (the anti-windup watches its sign)
        self.unheld_sparsity = None  # the decision's sparsity before the last hold (settling steps only)
        groups = [{"params": self.masks.mask_parameters(), "lr": config.mask_lr, "weight_decay": 0.0},
                  {"params": list(self.lagrangian.parameters()), "lr": config.lambda_lr, "weight_decay": 0.0}]
        if config.trains_weights and manage_weights:
            groups.append({"params": list(model.parameters()), "lr": config.weight_lr, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups)
        self.step = 0
        self.calibration_scores = None  # one-shot unit scores before mask training (score_units)
        self._quench()

    def restart_ramp(self) -> None:
        """Start the target ramp at the masks' present expected sparsity (capped at the target): called at
        construction, and again when the masks were set to a starting plan before the first step."""
        with torch.no_grad():
            initial = float(self.masks.expected_sparsity(self.measure))
        self.lagrangian.initial = min(initial, self.config.target_sparsity)

    def _size_measure(self, model: nn.Module, latency_record: dict | None):
        """What the target counts: parameters or FLOPs (the masks' size model), or the latency predicted by the
        table of ``config.latency_table``, checked against the model, its device and the run's dtype."""
        cfg = self.config
        if cfg.target != "latency":
            return self.masks.measure(cfg.target, cfg.seq_len, cfg.count_embeddings)
        from ..latency.target import latency_target

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.autocast)
        return latency_target(model, self.masks.spec, cfg.structures, cfg.latency_table, cfg.target_speedup,
                              dtype=dtype, what="latency_table (--profile)", record=latency_record)

    # ---- loss -------------------------------------------------------------------------------------------
    def _teacher_outputs(self, batch: dict, hidden: bool):
        with torch.no_grad():
            if self.teacher is not None:
                return self.teacher(**batch, output_hidden_states=hidden)
            was_training = self.model.training
            self.model.eval()
            try:
                with self.masks.disabled():
                    return self.model(**batch, output_hidden_states=hidden)
            finally:
                self.model.train(was_training)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Task and distillation loss of one (micro-)batch, in training mode (masks sampled)."""
        cfg = self.config
        batch = {k: v.to(self.masks.steps_drawn.device) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        distill = cfg.distill_weight > 0
        hidden = distill and cfg.hidden_distill_weight > 0
        self.model.train()
        with self._autocast():
            out = self.engine(**batch, output_hidden_states=hidden)
        logits = getattr(out, "logits", None)
        terms, metrics = [], {}
        task = getattr(out, "loss", None)
        if task is not None and cfg.task_weight > 0:
            terms.append(cfg.task_weight * task)
            metrics["task_loss"] = float(task.detach())
        if distill:
            with self._autocast():
                teacher = self._teacher_outputs({k: v for k, v in batch.items() if k != "labels"}, hidden)
            attention_mask = batch.get("attention_mask")
            if logits is not None:
                kd = logit_distillation(logits, teacher.logits, cfg.temperature,
                                        attention_mask if logits.dim() == 3 else None)
                terms.append(cfg.distill_weight * kd)
                metrics["distill_logits"] = float(kd.detach())
            if hidden:
                keep = None if self.masks.hidden is None else self.masks.hidden.keep()
                hd = hidden_distillation(out.hidden_states[1:], teacher.hidden_states[1:], keep, attention_mask,
                                         relative=cfg.hidden_distill == "relative")
                terms.append(cfg.distill_weight * cfg.hidden_distill_weight * hd)
                metrics["distill_hidden"] = float(hd.detach())
        if not terms:
            raise ValueError("Pruner: the batch gives no loss: pass `labels`, or keep distillation on "
                             "(distill_weight > 0) for a model with logits or hidden states")
        loss = sum(terms)
        metrics["data_loss"] = float(loss.detach())
        return loss, metrics

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.autocast)
        device = self.masks.steps_drawn.device.type
        return torch.autocast(device, dtype=dtype, enabled=dtype is not None)

    def penalty(self) -> tuple[torch.Tensor, dict]:
        """The mask terms, computed once per optimizer step: weighted KL + Lagrangian on the expected sparsity."""
        cfg = self.config
        kl = sum(cfg.kl_multipliers.get(s, 1.0) * v for s, v in self.masks.kl_terms().items())
        expected = self.masks.expected_sparsity(self.measure)
        lagrangian = self.lagrangian(expected, self.step)
        self._gap = float(expected.detach()) - self.lagrangian.target_at(self.step)
        metrics = {"expected_sparsity": float(expected.detach()), "target_now": self.lagrangian.target_at(self.step),
                   "lambda1": float(self.lagrangian.lambda1.detach()),
                   "lambda2": float(self.lagrangian.lambda2.detach())}
        return cfg.kl_weight * kl + lagrangian, metrics

    # ---- steps ------------------------------------------------------------------------------------------
    def optimizer_step(self) -> None:
        """Clip the weight gradients, step masks, lambdas (ascent) and weights, clear gradients, constrain."""
        if self.config.trains_weights and self.manage_weights and self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.masks.constrain()
        if self.lagrangian.crossed(self._gap):
            self._reset_lambda1()
        self.step += 1
        if self.step > self.config.steps - self.config.settle_steps:
            self.unheld_sparsity = self.masks.sparsity(self.measure)
            self.masks.hold(self.measure, self.lagrangian.target_at(self.step), self.config.allocation)
        self._quench()

    def _quench(self) -> None:
        """Gate noise off for the forwards of the last ``quench_steps`` steps (on from the step the count reaches)."""
        self.masks.noise = self.step < self.config.steps - self.config.quench_steps
        self.masks.quench_gradient = self.config.quench_gradient

    def _reset_lambda1(self) -> None:
        """Anti-windup: lambda1 integrates the gap while the masks are short of the target, and Adam moves every
        mask by about mask_lr a step whatever its size, so a wound-up lambda1 carries the masks far past the
        target before it unwinds (MiniLM-L6 at 0.9: 0.959 at the end, still rising). When the expected sparsity
        crosses the target, lambda1 and its Adam moments restart from zero."""
        lambda1 = self.lagrangian.lambda1
        with torch.no_grad():
            lambda1.zero_()
        state = self.optimizer.state.get(lambda1, {})
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in state:
                state[moment].zero_()

    def train_step(self, batch: dict) -> dict:
        """One optimizer step on ``batch`` (split into ``grad_accumulation`` micro-batches). Returns metrics;
        raises :class:`NonFiniteLossError` before stepping if the loss is NaN or Inf."""
        parts = _split(self.dist.shard(batch), self.config.grad_accumulation)
        totals: dict = {}
        for part in parts:
            loss, metrics = self.compute_loss(part)
            self.check_finite(loss, "loss")
            (loss / len(parts)).backward()
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value / len(parts)
        self.dist.average_gradients(self._replicated_parameters())
        totals = self.dist.average_metrics(totals)
        penalty, metrics = self.penalty()
        self.check_finite(penalty, "mask penalty")
        penalty.backward()
        totals.update(metrics)
        totals["loss"] = totals["data_loss"] + float(penalty.detach())
        self.optimizer_step()
        totals["step"] = self.step
        totals["sparsity"] = self.masks.sparsity(self.measure)
        if self.unheld_sparsity is not None:
            totals["sparsity_before_hold"] = self.unheld_sparsity
        return totals

    def _replicated_parameters(self) -> list:
        """Parameters every rank holds whole: the masks, and the weights unless FSDP shards them."""
        params = self.masks.mask_parameters()
        if self.config.trains_weights and self.manage_weights and self.engine is self.model \
                and not is_sharded(self.model):
            params += [p for p in self.model.parameters() if p.requires_grad]
        return params

    def check_finite(self, value: torch.Tensor, what: str) -> None:
        if not torch.isfinite(value.detach()).all():
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"{what} became {float(value.detach())} at step {self.step}; stopping (lower the learning "
                                     "rates or use fp32; the last good checkpoint is kept)")

    @torch.no_grad()
    def score_units(self, batches, calibration_steps: int | None = None) -> dict:
        """Keep the one-shot calibration scores of every unit (:func:`vtrans_kernels.prune.oneshot.unit_scores`,
        masks disabled, ``calibration_steps`` batches, default ``config.calibration_batches``) for a plan with
        ``config.rank_by_calibration``. Before the first step only: they score the weights before mask training."""
        from .oneshot import unit_scores

        if self.step != 0:
            raise ValueError(f"score_units: the pruner has taken {self.step} steps; the calibration scores are "
                             "taken before the first one, on the weights mask training starts from")
        with self.masks.disabled():
            self.calibration_scores = unit_scores(self.model, batches,
                                                  calibration_steps or self.config.calibration_batches)
        return self.calibration_scores

    # ---- results ----------------------------------------------------------------------------------------
    def plan(self, target_sparsity: float | None = None) -> CompactionPlan:
        """The final masks as a plan hitting ``target_sparsity`` (default: the configured target), with the
        masks' scales unless ``config.fold_scales`` is False, recording the model's type and unit counts. With
        ``config.rank_by_calibration`` the named structures keep the masks' count per layer, filled with the
        units the calibration scores (:meth:`score_units`) rank highest."""
        target = self.config.target_sparsity if target_sparsity is None else target_sparsity
        plan = self.masks.plan(target, self.measure, uniform=self.config.uniform, round_to=self.config.round_to,
                               allocation=self.config.allocation)
        if self.config.rank_by_calibration:
            if self.calibration_scores is None:
                raise ValueError("rank_by_calibration: the pruner has no calibration scores; call "
                                 "pruner.score_units(batches) (or start_from_calibration) before the first step")
            plan = CompactionPlan(scores=self.calibration_scores).ranked_at_counts(
                plan, self.config.rank_by_calibration)
        plan.model = dict(self.model_record)  # compact() then refuses to apply it to another architecture
        return plan if self.config.fold_scales else plan.without_scales()

    def compaction_model(self) -> nn.Module:
        """The model :meth:`plan` is compacted from: the copy of the weights taken before mask training with
        ``config.compact_from`` "original", else the trained model itself (masks detached by :meth:`finish`)."""
        return self.model if self.original is None else self.original

    def finish(self) -> ModelMasks:
        """Detach the masks from the model (it computes its unmasked function again), give the weights back
        their ``requires_grad`` flags, and return the masks."""
        for name, param in self.model.named_parameters():
            param.requires_grad_(self._requires_grad.get(name, param.requires_grad))
        return detach(self.model)

    # ---- checkpointing ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: step, masks, lambdas, optimizer, weights if trained, RNG. Only
        tensors and plain data (the RNG states as tensors), so that it loads with ``weights_only=True``."""
        state = {"step": self.step, "masks": self.masks.state_dict(), "lagrangian": self.lagrangian.state_dict(),
                 "lagrangian_initial": self.lagrangian.initial, "config": self.config.to_dict(),
                 "world_size": self.dist.world, "rng": self.dist.gather(_rng_state())}
        state["optimizer"] = self.optimizer.state_dict()
        if self.calibration_scores is not None:
            state["calibration_scores"] = self.calibration_scores
        if self.config.trains_weights and self.manage_weights:
            state["model"] = self.model.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        saved = PruneConfig.from_dict(settings_as_run(state["config"]))
        check_same_run(mask_settings(saved), mask_settings(self.config), "the checkpoint")
        if int(state.get("world_size", 1)) != self.dist.world:
            raise ValueError(f"resume: the checkpoint was written by {state.get('world_size', 1)} processes, this run "
                             f"has {self.dist.world}; resume with the same world size")
        self.step = int(state["step"])
        self.masks.load_state_dict(state["masks"])
        self._quench()
        # checkpoints from before the anti-windup have no "side": the run resumes as if the masks were below target
        self.lagrangian.load_state_dict({"side": torch.zeros_like(self.lagrangian.side), **state["lagrangian"]})
        self.lagrangian.initial = float(state["lagrangian_initial"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "model" in state:
            self.model.load_state_dict(state["model"])
        self.calibration_scores = state.get("calibration_scores")
        _set_rng_state(state["rng"][self.dist.rank])


def _latency_record(model: nn.Module) -> dict:
    from ..latency.environment import architecture_record
    return architecture_record(model)


def _rng_state() -> dict:
    """Python's, NumPy's and torch's generator states as tensors and plain numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = rng["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _split(batch: dict, parts: int) -> list[dict]:
    size = next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]
    parts = max(1, min(parts, size))
    bounds = [round(i * size / parts) for i in range(parts + 1)]
    return [{k: v[a:b] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            for a, b in zip(bounds, bounds[1:]) if b > a]
