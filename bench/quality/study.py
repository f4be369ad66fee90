"""What the quality-study drivers (encoder.py, decoder.py) share: the finished cells of a results CSV, the plan of
one pruning method (mask training through ``run_pruning``, resumable, or the one-shot baseline), the fine-tune
learning-rate search every method gets, the kept units and achieved sparsity of a compacted model, CPU and GPU
latency and the machine column."""
import argparse
import copy
import csv
import json
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))
from common import timed  # noqa: E402


# The step budget a cell ran under: part of every cell's key, so a run at another budget (a short CPU run, then a
# full one on a GPU) trains its own cells instead of skipping them as done.
BUDGET_COLUMNS = ("mask_steps", "finetune_steps", "batch_size")


def done_rows(csv_path: Path, keys: tuple[str, ...], derived: dict | None = None) -> dict[tuple[str, ...], dict]:
    """Every row already in ``csv_path`` by its ``keys`` columns (as strings, "" where a row lacks one; the last
    row of a key wins). ``derived`` maps a key column that older rows lack to a function computing it from their
    other columns."""
    if not csv_path.exists():
        return {}
    derived = derived or {}
    value = lambda row, k: row.get(k) or (derived[k](row) if k in derived else "")  # noqa: E731
    with csv_path.open() as f:
        return {tuple(value(row, k) for k in keys): row for row in csv.DictReader(f)}


def done_cells(csv_path: Path, keys: tuple[str, ...], derived: dict | None = None) -> set[tuple[str, ...]]:
    """The ``keys`` values of every row already in ``csv_path``: the cells to skip (see :func:`done_rows`)."""
    return set(done_rows(csv_path, keys, derived))


def init_label(mask_method: str | None, log_sigma2_init: float) -> str:
    """The VIB initialisation a cell is keyed and labelled by: ``str(float)`` for VIB masks, "" otherwise (it
    changes nothing for hard-concrete masks or the one-shot baseline)."""
    return str(float(log_sigma2_init)) if mask_method == "vib" else ""


def fold_label(mask_method: str | None, fold_scales: bool) -> str:
    """Whether a cell's compacted model has its masks' gate values folded in ("True" or "False"); "" for the one-shot
    baseline, whose plans carry no scales."""
    return "" if mask_method is None else str(bool(fold_scales))


def add_fold_scales_argument(parser) -> None:
    """The drivers' --no-fold-scales flag (``PruneConfig.fold_scales=False``)."""
    parser.add_argument("--no-fold-scales", action="store_true",
                        help="compact without folding the masks' gate values into the weights "
                             "(PruneConfig.fold_scales); replays the masks of the folded cell when they exist")


def compact_label(mask_method: str | None, original: bool) -> str:
    """"original" for a mask cell compacted from the weights before mask training (``PruneConfig.compact_from``),
    "" otherwise (so the rows written before the column existed keep their keys)."""
    return "original" if original and mask_method is not None else ""


def add_compact_original_argument(parser) -> None:
    """The drivers' --compact-original flag (``PruneConfig.compact_from="original"``, no scales)."""
    parser.add_argument("--compact-original", action="store_true",
                        help="compact the weights from before mask training with the masks' units and no scales "
                             "(PruneConfig.compact_from='original'; methods that train weights); replays the masks "
                             "of the cell compacted from its trained weights when they exist")


def positive_threads(text: str) -> int:
    """argparse type of --threads: a whole number of at least 1."""
    error = argparse.ArgumentTypeError(f"--threads expects a whole number >= 1, got {text!r}")
    try:
        value = int(text)
    except ValueError:
        raise error from None
    if value < 1:
        raise error
    return value


def add_threads_argument(parser) -> None:
    """The drivers' --threads option: torch's CPU threads (each row's machine label records it). Default 1: on the
    2-core VM shared with another job, 2 threads made a step 5-20x slower than 1."""
    parser.add_argument("--threads", type=positive_threads, default=1,
                        help="torch CPU threads; keep it at most the idle cores (default 1)")


def add_mask_start_arguments(parser) -> None:
    """The drivers' --mask-start, --settle-fraction, --warmup-fraction, --quench-fraction, --quench-gradient,
    --allocation and --soft-count options (``PruneConfig.mask_start``, ``settle_fraction``, ``warmup_fraction``,
    ``quench_fraction``, ``quench_gradient``, ``allocation`` and the VIB size count, the same defaults)."""
    from vtrans_kernels.prune import PruneConfig
    from vtrans_kernels.prune.options import add_allocation_option, add_schedule_options

    add_schedule_options(parser)
    add_allocation_option(parser)
    parser.add_argument("--warmup-fraction", type=float, default=PruneConfig.warmup_fraction,
                        help="fraction of mask steps over which the target ramps up from the masks' start "
                             "(PruneConfig.warmup_fraction; with the settling steps at most the whole run)")
    parser.add_argument("--soft-count", action="store_true",
                        help="VIB masks: the Lagrangian sees DESIGN's soft count sigmoid(10 log SNR), not the "
                             "straight-through count (PRUNING_MASK_INIT straight_through None)")


def start_config(args) -> dict:
    """The ``PruneConfig`` settings of the options :func:`add_mask_start_arguments` added, but the size count
    (which goes into the masks' init)."""
    return dict(mask_start=args.mask_start, settle_fraction=args.settle_fraction,
                warmup_fraction=args.warmup_fraction, quench_fraction=args.quench_fraction,
                quench_gradient=args.quench_gradient, allocation=args.allocation)


def start_settings(mask_method: str | None, variant: str | None, args) -> dict:
    """A cell's ``mask_start``, ``settle_fraction``, ``size_count`` and ``warmup_fraction`` columns as the CSV
    holds them: "" for the one-shot baseline, which trains no masks (and in rows from before masks could start
    from the one-shot plan or settle); ``settle_fraction`` is the run's (``variant``'s default when --settle-fraction
    is not given); ``size_count`` is "soft" for VIB cells run with --soft-count, "" for the default count;
    ``warmup_fraction`` is "" at the default ramp (as in the rows from before it was an option),
    ``quench_fraction`` "" without quenched steps (likewise), ``quench_gradient`` "straight_through" for quenched
    steps with that gradient, else "" (no quench, or the exact gradient every quenched row from before the option
    ran), ``allocation`` "" for the default "scores" (and rows from before the option)."""
    from vtrans_kernels.prune import PruneConfig
    from vtrans_kernels.prune.config import schedule_fractions

    if mask_method is None:
        return {"mask_start": "", "settle_fraction": "", "size_count": "", "warmup_fraction": "", "quench_fraction": "",
                "quench_gradient": "", "allocation": ""}
    settle, quench = schedule_fractions(variant, args.settle_fraction, args.quench_fraction)
    warmup = float(args.warmup_fraction)
    straight = quench > 0 and args.quench_gradient == "straight_through"
    return {"mask_start": args.mask_start, "settle_fraction": str(float(settle)),
            "size_count": "soft" if args.soft_count and mask_method == "vib" else "",
            "warmup_fraction": "" if warmup == PruneConfig.warmup_fraction else str(warmup),
            "quench_fraction": str(float(quench)) if quench > 0 else "",
            "quench_gradient": "straight_through" if straight else "",
            "allocation": "" if args.allocation == PruneConfig.allocation else args.allocation}


def add_structures_argument(parser) -> None:
    """The --structures option: what every method prunes (``PruneConfig.structures``; the one-shot baseline too)."""
    from vtrans_kernels.masks.mask_set import STRUCTURES

    parser.add_argument("--structures", nargs="+", choices=STRUCTURES, default=list(STRUCTURES),
                        help="the structures pruned, by masks and by the one-shot baseline alike (default all); "
                             "e.g. 'heads ffn' keeps every hidden dim")


def structures_label(structures) -> str:
    """A cell's ``structures`` column: "" when every structure is pruned (the default, and rows from before the
    option), else the pruned ones in their canonical order, space-separated."""
    from vtrans_kernels.masks.mask_set import STRUCTURES

    chosen = [s for s in STRUCTURES if s in structures]
    return "" if chosen == list(STRUCTURES) else " ".join(chosen)


def settings_label(init: str, mask_start: str, settle_fraction: str, size_count: str = "",
                   warmup_fraction: str = "", structures: str = "", quench_fraction: str = "",
                   quench_gradient: str = "", allocation: str = "") -> str:
    """The part of a mask cell's folder name that ``cell_folder`` takes as ``init``: the VIB init, the start, the
    settling, a non-default size count, a non-default ramp, quenched steps and a subset of the structures
    (``-1.0_oneshot_settle0.2``, ``-1.0_init_settle0.2_soft``, ``-1.0_init_settle0.2_warm0.8``,
    ``-1.0_init_settle0.2_quench0.2``, ``-1.0_init_settle0.2_quench0.2st`` (straight-through quench gradient),
    ``-1.0_init_settle0.2_alloc-layer``, ``-1.0_init_settle0.2_only-heads-ffn``), so cells of another objective
    never resume each other's checkpoints;
    just ``init`` and the structures when ``mask_start`` is "" (rows of the older objective, and the one-shot
    baseline, whose cached plan depends on the structures too)."""
    only = f"_only-{structures.replace(' ', '-')}" if structures else ""
    if not mask_start:
        return init + only
    return (f"{init}_{mask_start}_settle{settle_fraction}" + (f"_{size_count}" if size_count else "")
            + (f"_warm{warmup_fraction}" if warmup_fraction else "")
            + (f"_quench{quench_fraction}" if quench_fraction else "")
            + ("st" if quench_gradient == "straight_through" else "")
            + (f"_alloc-{allocation}" if allocation else "")
            + only)


def cell_settings_label(cell: dict) -> str:
    """:func:`settings_label` of a cell's columns (those of :func:`start_settings`, ``log_sigma2_init`` and
    ``structures``)."""
    return settings_label(cell["log_sigma2_init"], cell["mask_start"], cell["settle_fraction"], cell["size_count"],
                          cell["warmup_fraction"], cell["structures"], cell["quench_fraction"],
                          cell["quench_gradient"], cell["allocation"])


def cell_folder(work: Path, mask_steps: int, batch_size: int, method: str, init: str, sparsity: float,
                seed: int) -> Path:
    """A cell's checkpoint folder under ``work``, named by what its masks depend on: cells of another mask budget
    or VIB init never resume each other's checkpoints."""
    return work / f"m{mask_steps}_bs{batch_size}" / f"{method}{'_ls' + init if init else ''}_{sparsity}_s{seed}"


def machine() -> str:
    """The machine column: host name and torch's thread count."""
    return f"{platform.node()} {torch.get_num_threads()} threads"


def latencies(model, batch: dict) -> dict:
    """Median wall time (ms) of one no-grad forward pass of ``model`` on the CPU ``batch``: ``cpu_latency_ms``
    in fp32 on the CPU and, when a GPU is present, ``gpu_latency_ms`` in bf16 on it (empty otherwise). The
    timing runs on a copy; ``model`` stays where it is."""
    with torch.no_grad():
        on_cpu = copy.deepcopy(model).eval().float().cpu()
        out = {"cpu_latency_ms": round(timed(lambda: on_cpu(**batch), "cpu", repeats=5)[0], 2), "gpu_latency_ms": ""}
        if torch.cuda.is_available():
            on_gpu = on_cpu.to("cuda", torch.bfloat16)
            gpu_batch = {k: v.cuda() for k, v in batch.items()}
            out["gpu_latency_ms"] = round(timed(lambda: on_gpu(**gpu_batch), "cuda")[0], 3)
    return out


@dataclass
class MaskPlan:
    """The plan of one method, the wall time its mask training took, whether that time is only the part after a
    resumed checkpoint, and the sparsity of the trained masks' own decision (``None`` for the one-shot baseline):
    when it is far from the target, the plan ranked units by score to reach it. ``pruner``: the finished
    ``Pruner`` of a mask method (``None`` for the baseline), whose ``plan(sparsity)`` re-plans from the same masks."""

    plan: object
    seconds: float
    resumed: bool = False
    decision_sparsity: float | None = None
    pruner: object = None


def mask_plan(model, features: dict, method: tuple, sparsity: float, out: Path, *, batch_size: int, seq_len: int,
              seed: int, steps: int, mask_lr: float, log_sigma2_init: float, soft_count: bool = False,
              **config) -> MaskPlan:
    """The plan of ``method`` = (mask method, variant) at ``sparsity``, trained on ``features``.

    ``(None, None)`` is the one-shot activation-norm baseline, calibrated on the seeded train batches. Otherwise
    masks train for ``steps`` steps with ``run_pruning`` (on the variant's data fraction), writing to ``out`` and
    resuming from ``out/checkpoint.pt`` when it exists; ``soft_count`` gives VIB masks DESIGN's soft size count;
    ``config`` adds further ``PruneConfig`` settings. A run
    trained from scratch records its wall time in ``out/mask_time.json``, so replaying the finished checkpoint
    for another plan (e.g. ``fold_scales=False``) reports the training time, not the replay's. The masks are
    detached from ``model`` before returning."""
    from vtrans_kernels.prune import PruneConfig, run_pruning
    from vtrans_kernels.prune.config import vib_mask_init
    from vtrans_kernels.prune.data import Batches
    from vtrans_kernels.prune.oneshot import oneshot_plan

    mask_method, variant = method
    start = time.perf_counter()
    if mask_method is None:
        structures = config.get("structures", PruneConfig.structures)
        plan = oneshot_plan(model, Batches(features, batch_size, seed=seed), sparsity, structures=structures,
                            seq_len=seq_len)
        return MaskPlan(plan, time.perf_counter() - start)
    settings = dict(checkpoint_every=25, log_every=10)
    settings.update(config)
    cfg = PruneConfig(method=mask_method, variant=variant, target_sparsity=sparsity, steps=steps,
                      batch_size=batch_size, seq_len=seq_len, seed=seed, mask_lr=mask_lr,
                      mask_init=vib_mask_init(mask_method, log_sigma2_init, soft_count), **settings)
    resumed = (out / "checkpoint.pt").exists()
    result = run_pruning(model, Batches(features, batch_size, seed=seed, fraction=cfg.data_fraction), cfg, out,
                         resume=resumed, plots=False)
    result.pruner.finish()
    seconds, timing = time.perf_counter() - start, out / "mask_time.json"
    if not resumed:
        timing.write_text(json.dumps({"seconds": seconds}))
    elif timing.exists():  # the checkpoint of a finished run: its own training time
        seconds, resumed = json.loads(timing.read_text())["seconds"], False
    return MaskPlan(result.plan, seconds, resumed, round(result.summary["mask_decision_sparsity"], 4), result.pruner)


def lr_label(lrs) -> str:
    """A learning-rate grid as the CSV keys and shows it: the values in ``%g`` form, space-separated."""
    return " ".join(f"{float(lr):g}" for lr in lrs)


@dataclass
class FinetuneChoice:
    """The fine-tuned model with the best dev score, its learning rate, every candidate's dev score (by ``lr_label``
    of its rate) and the wall time of the chosen candidate's fine-tune."""

    model: object
    lr: float
    dev_scores: dict
    seconds: float

    def scores_label(self) -> str:
        """The dev score of every candidate learning rate, e.g. ``2e-05:0.7812 5e-05:0.8011``."""
        return " ".join(f"{lr}:{score:.4f}" for lr, score in self.dev_scores.items())


def search_finetune_lr(model, lrs, fit, dev_score, *, seed: int, higher_is_better: bool = True) -> FinetuneChoice:
    """Fine-tune a copy of ``model`` at each learning rate in ``lrs`` with ``fit(copy, lr)`` (every copy from the
    same RNG state ``seed``, so only the rate differs) and keep the copy whose ``dev_score(copy)`` is best (the
    first of equal ones). The test split must never reach ``dev_score``: this is the study's only tuning step."""
    if not lrs:
        raise ValueError("lrs: expected at least one learning rate")
    best = None
    scores = {}
    for lr in map(float, lrs):
        label = lr_label([lr])
        candidate = copy.deepcopy(model)
        torch.manual_seed(seed)
        start = time.perf_counter()
        try:
            fit(candidate, lr)
        except FloatingPointError as err:  # a rate too high for this model is a lost candidate, not a lost cell
            warnings.warn(f"the fine-tune at lr {label} diverged ({err}); it is left out of the search")
            scores[label] = float("nan")
            continue
        seconds = time.perf_counter() - start
        scores[label] = score = float(dev_score(candidate))
        if best is None or (score > best[0] if higher_is_better else score < best[0]):
            best = (score, candidate, lr, seconds)
    if best is None:
        raise FloatingPointError(f"the fine-tune diverged at every learning rate of {lr_label(lrs)}")
    return FinetuneChoice(best[1], best[2], scores, best[3])


def kept_units(small, dense) -> dict:
    """Achieved parameter sparsity (layers and norms, as the masks count it) and the kept hidden dims, attention
    units (KV groups under GQA) and FFN neurons of the compacted ``small`` against the ``dense`` model."""
    from vtrans_kernels.hf import adapter_for
    from vtrans_kernels.masks import SizeMeasure

    units = adapter_for(small).units()
    measure = SizeMeasure(adapter_for(dense).spec())
    return dict(achieved_sparsity=round(float(measure.sparsity(units.hidden, units.heads, units.ffn)), 4),
                hidden=units.hidden, heads=sum(units.heads), ffn=sum(units.ffn))
