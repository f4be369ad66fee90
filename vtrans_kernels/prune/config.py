"""`PruneConfig`: every setting of a VTrans pruning run, with the defaults public VIB-pruning code uses."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

from ..masks.allocation import check_allocation
from ..masks.mask_set import STRUCTURES, structure_names

VARIANTS = ("vtrans", "fast", "faster")
# Data fraction each variant trains the masks on by default (DESIGN 2.4: Fast and Faster use about 3%).
DEFAULT_SUBSET = {"vtrans": 1.0, "fast": 0.03, "faster": 0.03}
# Initial mask values a pruning run starts from unless ``mask_init`` says otherwise. VIB starts near its decision
# boundary (log SNR 1) rather than at attach()'s -9: the soft keep count sigmoid(10 * log SNR) is flat far from
# 0, so the size target has no gradient there and the masks never reach it. Measured on MiniLM-L6 sentiment,
# Faster-VTrans, 150 mask + 100 fine-tune steps (bench/results/quality): at a 0.9 target, from -4 the masks' own
# sparsity crept to 0.12 and the plan (ranked by log SNR) fine-tuned to 0.66 test accuracy, from -1 they reached
# 0.79 and 0.75. At 0.5 it goes the other way: from -1 the masks reach the target but cut the shared hidden
# dimension harder (253 of 384 kept) and fine-tune to 0.77, while -4's ranking keeps 335 and fine-tunes to 0.82.
# From 0 the noise swamps the task loss. -1 is the setting under which the method does what it says (reach the
# target).
# The size count is VIB's straight-through one (the decision's exact count, the soft count's gradient at
# temperature 1): with DESIGN's soft count the Lagrangian loses its grip on every clearly kept unit. MiniLM-L6
# sentiment, Faster, target 0.9, from -1, with the fine-tuned teacher: the straight-through count reached 0.90 at
# step 70 (then, without anti-windup, overshot to 0.96 by step 150; with it, stayed within 0.015).
MASK_STARTS = ("init", "oneshot")
COMPACT_SOURCES = ("trained", "original")
# The gradient of a quenched gate (PruneConfig.quench_gradient): "straight_through" (a removed unit learns as if
# kept) or "exact" (the deterministic gate's own gradient, zero for removed units; what quenching did at first).
QUENCH_GRADIENTS = ("straight_through", "exact")
PRUNING_MASK_INIT = {"vib": {"log_sigma2": -1.0, "straight_through": 1.0}, "hard_concrete": {}}


def vib_mask_init(method: str, log_sigma2: float | None, soft_count: bool = False) -> dict:
    """``mask_init`` for a command-line ``--log-sigma2-init`` (and ``--soft-count``): set for VIB masks when given,
    else empty (the defaults of ``PRUNING_MASK_INIT`` apply). ``soft_count`` makes the Lagrangian see DESIGN's
    soft count ``sigmoid(10 log SNR)`` instead of the straight-through count."""
    if method != "vib":
        return {}
    init = {} if log_sigma2 is None else {"log_sigma2": float(log_sigma2)}
    return {**init, "straight_through": None} if soft_count else init


# The schedule's defaults (PruneConfig.settle_fraction / quench_fraction left None). The variants that train weights
# spend the last half of the run in the model the plan compacts to: the decision held on the target, no gate noise,
# the straight-through gate gradient. MiniLM-L6 (heads + FFN, dev after the fine-tune, against settle 0.2 without a
# quench; 3 seeds, 2 at 90%): sentiment +0.4 / +2.0 / +1.6 points at 50 / 70 / 90%, TREC +1.6 / +1.4 / +1.6.
# "faster" trains no weights, so a quench changes only its masks' last steps (SmolLM2 at 20%, one seed: no better);
# it keeps a 20% hold.
def schedule_fractions(variant: str, settle_fraction: float | None,
                       quench_fraction: float | None) -> tuple[float, float]:
    """``(settle_fraction, quench_fraction)`` of a run of ``variant``, a ``None`` taking its default: settling 0.5
    for the variants that train weights ("vtrans", "fast"), 0.2 for "faster"; the quench the whole settling for the
    variants that train weights, none for "faster"."""
    trains = trains_weights(variant)
    settle = (0.5 if trains else 0.2) if settle_fraction is None else settle_fraction
    quench = (settle if trains else 0.0) if quench_fraction is None else quench_fraction
    return settle, quench


def trains_weights(variant: str) -> bool:
    """Whether mask training of ``variant`` trains the model's weights too ("vtrans", "fast"; not "faster")."""
    return variant != "faster"


def compaction_settings(no_fold_scales: bool, compact_from: str, rank_by_calibration: Sequence[str] = ()) -> dict:
    """``fold_scales``, ``compact_from`` and ``rank_by_calibration`` for command-line ``--no-fold-scales``,
    ``--compact-from`` and ``--rank-by-calibration``: compacting the original weights, or units the calibration
    scores pick, implies no scales (they were learned with the trained weights, for the masks' own units)."""
    return {"fold_scales": not (no_fold_scales or compact_from == "original" or rank_by_calibration),
            "compact_from": compact_from, "rank_by_calibration": tuple(rank_by_calibration)}


@dataclass
class PruneConfig:
    """Settings of a pruning run.

    Method and target: ``method`` "vib" or "hard_concrete"; ``variant`` "vtrans" (masks and weights, full data,
    then fine-tuning), "fast" (the same on a subset) or "faster" (weights frozen, masks only, on a subset);
    ``target_sparsity`` in (0, 1) of ``target`` "params" (layers and norms, plus embeddings and head when
    ``count_embeddings``) or "flops" (per sequence of ``seq_len`` tokens). ``target`` "latency" prunes to
    ``target_speedup`` (> 1) by the latency table at ``latency_table`` (a JSON file of ``vtrans profile``, measured
    on the run's device and dtype for this model): ``target_sparsity`` is then set to ``1 - 1/target_speedup`` of
    the latency the table predicts, and the plan takes widths the table shows are fast (docs/latency.md), so
    ``round_to`` stays 1 and ``uniform`` False.
    Schedule: ``steps`` mask-training steps, the target ramping over ``warmup_fraction`` of them; in the last
    ``settle_fraction`` of them (default 0.5 for the variants that train weights, 0.2 for "faster":
    :func:`schedule_fractions`) each step ends by holding the masks' decision on the target
    (:meth:`~vtrans_kernels.masks.MaskSet.hold`: every mask's scores shift, ranking unchanged), so the run ends
    with the masks' own decision on the target and its last steps train the units of the final plan; in the last
    ``quench_fraction`` of them (at most ``settle_fraction``; default the whole settling for the variants that
    train weights, none for "faster") the gates are the deterministic ones without noise,
    so the weights train in the very model the plan compacts to (VIB gates otherwise keep noise on kept units:
    sigma/|mu| of 0.3-0.8 on MiniLM, which the weights learn to carry and the compacted model lacks). A removed
    unit's quenched gate is 0; with ``quench_gradient="straight_through"`` it still gets the gradient it would get
    if kept (:meth:`~vtrans_kernels.masks.gates.UnitMask.quench_gate`), so the ranking keeps learning; with
    ``"exact"`` it gets none and a long quench freezes the ranking (MiniLM sentiment at 50%, settle and quench 0.5:
    exact 1.4 dev points under no quench, straight-through 0.4 over it; docs/pruning.md);
    ``finetune_steps`` of the compacted model afterwards (default: 0 for faster, ``steps`` otherwise).
    ``grad_accumulation`` splits each batch into micro-batches; ``autocast`` ("bf16"/"fp16") runs the forward
    passes under ``torch.autocast`` (masks, lambdas and the mask terms stay in fp32).
    ``mask_init`` overrides the masks' initial values (see :func:`vtrans_kernels.attach`); keys it leaves out
    take ``PRUNING_MASK_INIT`` (VIB: ``log_sigma2`` -1, near the decision boundary, so the target is reached in
    a few hundred steps).
    Objective (DESIGN 2.4): ``task_weight`` x task loss + ``distill_weight`` x (logit KL at ``temperature`` +
    ``hidden_distill_weight`` x layer-wise hidden MSE over kept dims) + ``kl_weight`` x sum over structures of
    ``kl_multipliers[s]`` x KL_s + the Lagrangian. ``hidden_distill`` "mse" is DESIGN's plain MSE; "relative"
    divides each layer's MSE by the teacher's mean square there, for models whose residual stream is large
    (SmolLM2's plain MSE is ~5000 against a logit KL of ~10, and drowns the size target).
    ``fold_scales`` folds the masks' deterministic gate values (VIB ``mu``, the hard-concrete gate) of the kept
    units into the compacted weights, so the compacted model is the masked model; ``False`` keeps the chosen
    units at their original weights. ``uniform`` makes the final plan keep the same number of heads (KV groups)
    and FFN neurons in every layer, chosen from the masks' scores across layers, in widths the model's config
    can express (multiples of ``round_to``), so the compacted model loads with plain ``from_pretrained``.
    Masks trained on frozen weights learn ``mu`` as a free per-unit gain under
    heavy gate noise, and folded in it can cost more than the pruning itself (bench/results/quality).
    ``compact_from`` "original" compacts the weights the model had before mask training (the pruner keeps a
    copy) with the masks' units and no scales (``fold_scales`` must then be False: the scales were learned with
    the trained weights); "trained" (default) compacts the weights mask training left. For the variants that
    train weights only: the masks choose the units, the original weights carry them into the fine-tune. On
    MiniLM (heads and FFN, bench/results/quality/findings.md) the original weights fine-tuned better than VTrans'
    own at 50% and 70% (sentiment, 3 seeds: +0.5 and +0.8 dev points; TREC, 3 seeds: +1.3 and +1.5), not at 90%
    (sentiment -1.9 and 0.0 on two seeds, TREC -1.9 on two seeds): the sparser the plan, the more the kept units
    need the weights that learned to work without the rest.
    ``bias_compensation`` folds the mean contribution of each sublayer's removed units, measured on
    ``calibration_batches`` training batches, into its output bias before compaction
    (:func:`vtrans_kernels.hf.compensate_plan`; skipped, with a warning, where the config has no bias option).
    ``mask_start`` "oneshot" sets the masks before the first step to the one-shot plan at the target (unit
    scores of activation x weight norms on ``calibration_batches`` training batches), so training starts from
    that plan and swaps the doubtful units (:func:`vtrans_kernels.prune.calibration.start_from_calibration`);
    "init" starts every unit at ``mask_init``'s values. The one-shot start begins on the target, so
    ``settle_fraction`` may then be anything up to 1 (1: every step ends on the target), whatever the warmup.
    ``rank_by_calibration`` names structures ("hidden", "heads", "ffn") whose kept units the plan takes from the
    one-shot calibration scores (activation x weight norms of the weights before mask training, on
    ``calibration_batches`` training batches) instead of the masks, at the masks' count in every layer
    (:meth:`vtrans_kernels.hf.CompactionPlan.ranked_at_counts`; needs ``fold_scales`` False). The masks then say
    how much each layer keeps, the scores which units. On SmolLM2-135M (Faster, heads and FFN, findings.md) the
    calibration scores' FFN neurons at the masks' counts, the masks' own heads, had lower perplexity than the
    masks' plan at 20%, 30% and 50% and than the one-shot plan on dev and in the test means (50%: two seeds of
    three at 60 mask steps, all three at 120); re-ranking the heads as well won at 30% and lost badly at 50%.
    Empty (default): the masks pick every unit.
    ``allocation`` says how the target is shared among the pruned units, in the settling steps' hold and in the
    plan: "scores" (default) puts one threshold on every mask's scores, so the masks decide how much each
    structure and layer keeps; "structure" keeps the same fraction of each structure's units (heads, neurons,
    hidden dims), ranked by the masks across layers; "layer" the same fraction of every layer's heads and of its
    neurons, as the one-shot baseline does (:data:`vtrans_kernels.masks.allocation.ALLOCATIONS`).
    """

    method: str = "vib"
    variant: str = "faster"
    structures: tuple[str, ...] = STRUCTURES
    target_sparsity: float = 0.5
    target: str = "params"
    target_speedup: float | None = None
    latency_table: str | None = None
    seq_len: int = 128
    count_embeddings: bool = False
    steps: int = 200
    warmup_fraction: float = 0.15
    settle_fraction: float | None = None
    quench_fraction: float | None = None
    quench_gradient: str = "straight_through"
    finetune_steps: int | None = None
    subset_fraction: float | None = None
    batch_size: int = 16
    grad_accumulation: int = 1
    autocast: str | None = None
    mask_init: dict = field(default_factory=dict)
    mask_start: str = "init"
    mask_lr: float = 0.05
    lambda_lr: float = 0.1
    weight_lr: float = 3e-5
    max_grad_norm: float = 1.0
    kl_weight: float = 1e-6
    kl_multipliers: dict = field(default_factory=lambda: {"hidden": 30.0, "heads": 128.0, "ffn": 1.0})
    task_weight: float = 1.0
    distill_weight: float = 1.0
    temperature: float = 2.0
    hidden_distill_weight: float = 1.0
    hidden_distill: str = "mse"
    fold_scales: bool = True
    compact_from: str = "trained"
    round_to: int = 1
    uniform: bool = False
    bias_compensation: bool = False
    calibration_batches: int = 8
    rank_by_calibration: tuple[str, ...] = ()
    allocation: str = "scores"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50

    def __post_init__(self):
        self.structures = structure_names(self.structures, "structures")
        self.rank_by_calibration = structure_names(self.rank_by_calibration, "rank_by_calibration", empty_ok=True)
        if self.method not in ("vib", "hard_concrete"):
            raise ValueError(f"method: expected 'vib' or 'hard_concrete', got {self.method!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {self.variant!r}")
        settle_given = self.settle_fraction is not None
        self.settle_fraction, self.quench_fraction = schedule_fractions(self.variant, self.settle_fraction,
                                                                        self.quench_fraction)
        if self.target not in ("params", "flops", "latency"):
            raise ValueError(f"target: expected 'params', 'flops' or 'latency', got {self.target!r}")
        self._latency_settings()
        if not 0.0 < float(self.target_sparsity) < 1.0:
            raise ValueError(f"target_sparsity: expected a value in (0, 1), got {self.target_sparsity}")
        for name in ("steps", "batch_size", "grad_accumulation", "log_every", "checkpoint_every", "round_to",
                     "seq_len", "calibration_batches"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)}")
        for name in ("warmup_fraction", "settle_fraction", "quench_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1], got {getattr(self, name)}")
        # From the one-shot start the masks begin on the target (the ramp is flat), so holding from the first step
        # is meaningful; from "init" a hold during the ramp would drag the decision along it.
        if self.mask_start != "oneshot" and self.warmup_fraction + self.settle_fraction > 1.0:
            default = "" if settle_given else f", the default for variant {self.variant!r}"
            raise ValueError(f"settle_fraction: the target ramp (warmup_fraction {self.warmup_fraction}) and the "
                             f"settling steps ({self.settle_fraction}{default}) must fit in the run together (sum "
                             "<= 1; set a smaller settle_fraction, or any up to 1 with mask_start='oneshot')")
        if self.quench_gradient not in QUENCH_GRADIENTS:
            raise ValueError(f"quench_gradient: expected one of {QUENCH_GRADIENTS}, got {self.quench_gradient!r}")
        if self.quench_fraction > self.settle_fraction:
            raise ValueError(f"quench_fraction: expected at most settle_fraction ({self.settle_fraction}), got "
                             f"{self.quench_fraction}: the gate noise stops only once the decision is held on the "
                             "target")
        if self.subset_fraction is not None and not 0.0 < self.subset_fraction <= 1.0:
            raise ValueError(f"subset_fraction: expected a value in (0, 1], got {self.subset_fraction}")
        if self.autocast not in (None, "bf16", "fp16"):
            raise ValueError(f"autocast: expected None, 'bf16' or 'fp16', got {self.autocast!r}")
        if self.hidden_distill not in ("mse", "relative"):
            raise ValueError(f"hidden_distill: expected 'mse' or 'relative', got {self.hidden_distill!r}")
        for name in ("fold_scales", "uniform", "bias_compensation"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        self._compact_source()
        if self.mask_start not in MASK_STARTS:
            raise ValueError(f"mask_start: expected one of {MASK_STARTS}, got {self.mask_start!r}")
        self._allocation()
        if self.temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {self.temperature}")

    def _compact_source(self) -> None:
        """``compact_from``: a known source; "original" only where the weights train, and without scales."""
        if self.compact_from not in COMPACT_SOURCES:
            raise ValueError(f"compact_from: expected one of {COMPACT_SOURCES}, got {self.compact_from!r}")
        if self.compact_from == "original":
            if not self.trains_weights:
                raise ValueError("compact_from: 'original' needs a variant that trains weights ('vtrans' or "
                                 f"'fast'); {self.variant!r} leaves them as they were, so there is nothing to choose")
            if self.fold_scales:
                raise ValueError("fold_scales: expected False with compact_from='original' (the masks' scales were "
                                 "learned with the trained weights; the original weights take the units alone)")
        if self.rank_by_calibration and self.fold_scales:
            raise ValueError("fold_scales: expected False with rank_by_calibration (the masks' scales belong to the "
                             "masks' units, not to the ones the calibration scores pick)")

    def _allocation(self) -> None:
        """``allocation``: a known rule, and not alongside a rule that sets the counts itself."""
        if check_allocation(self.allocation) == "scores":
            return
        if self.uniform:
            raise ValueError(f"allocation: {self.allocation!r} cannot combine with uniform=True (a uniform plan "
                             "sets every layer's counts itself); use allocation='scores'")
        if self.target == "latency":
            raise ValueError(f"allocation: {self.allocation!r} cannot combine with target='latency' (the latency "
                             "table chooses the widths); use allocation='scores'")

    def _latency_settings(self) -> None:
        """With target "latency": the sparsity of the speedup, an existing table, widths left to the table."""
        if self.target != "latency":
            for name in ("target_speedup", "latency_table"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: only used with target='latency' (target is {self.target!r})")
            return
        from ..latency.target import check_speedup, speedup_to_sparsity

        self.target_sparsity = speedup_to_sparsity(check_speedup(self.target_speedup))
        if not isinstance(self.latency_table, (str, os.PathLike)) or not Path(self.latency_table).is_file():
            raise ValueError("latency_table (--profile): expected the path of a latency table JSON file (made by "
                             f"`vtrans profile`), got {self.latency_table!r}")
        self.latency_table = str(self.latency_table)
        if self.round_to != 1:
            raise ValueError(f"round_to: with target='latency' the plan already takes the widths the table shows "
                             f"are fast; leave round_to at 1 (got {self.round_to})")
        if self.uniform:
            raise ValueError("uniform: not supported with target='latency' (the plan picks each layer's widths from "
                             "the latency table)")

    @property
    def trains_weights(self) -> bool:
        return trains_weights(self.variant)

    @property
    def initial_mask_values(self) -> dict:
        """The masks' initial values: ``PRUNING_MASK_INIT`` of the method, updated by ``mask_init``."""
        return {**PRUNING_MASK_INIT[self.method], **self.mask_init}

    @property
    def data_fraction(self) -> float:
        return DEFAULT_SUBSET[self.variant] if self.subset_fraction is None else self.subset_fraction

    @property
    def finetune(self) -> int:
        if self.finetune_steps is not None:
            return int(self.finetune_steps)
        return 0 if self.variant == "faster" else self.steps

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_fraction * self.steps))

    @property
    def settle_steps(self) -> int:
        return int(round(self.settle_fraction * self.steps))

    @property
    def quench_steps(self) -> int:
        return int(round(self.quench_fraction * self.steps))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["structures"] = list(self.structures)
        out["rank_by_calibration"] = list(self.rank_by_calibration)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "PruneConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"PruneConfig: unknown settings {sorted(unknown)}")
        return cls(**values)
