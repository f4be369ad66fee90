"""A whole mask-training run: progress bar, JSON-lines log, atomic code-free checkpoints, exact and checked resume,
final plan."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..fileio import remove_stale_temporaries, write_text
from ..hf.plan import CompactionPlan
from .checkpoint import JsonLog, load_checkpoint, save_atomic
from .config import PruneConfig
from .data import Batches
from .identity import check_same_run, data_record, mask_settings, model_entries
from .pruner import Pruner

CHECKPOINT, LOG, PLAN = "checkpoint.pt", "log.jsonl", "plan.json"
# How far the masks' own decision may end from the target before the run warns that the plan had to rank units
# by score instead (MaskSet.decide).
CONVERGENCE_TOLERANCE = 0.02


@dataclass
class PruneResult:
    plan: CompactionPlan
    pruner: Pruner
    records: list[dict]
    summary: dict


def _missed_target_message(decision: float, config: PruneConfig) -> str:
    """What to try when the masks' own decision ends at ``decision`` instead of the target: short of it, the masks
    moved too slowly; past it, they overshot (pruned faster than the target ramp) and had no time to recover."""
    head = (f"the masks ended at sparsity {decision:.3f} against the target {config.target_sparsity}; the plan "
            "reaches the target by ranking units by their scores instead. ")
    if config.settle_fraction == 0:
        head += "settle_fraction > 0 ends the run by holding the decision on the target. "
    if decision < config.target_sparsity:
        return head + ("Train longer, raise mask_lr, or start VIB masks nearer their decision boundary (mask_init "
                       "log_sigma2 closer to 0)")
    return head + ("The masks overshot: train longer, lower mask_lr, lengthen warmup_fraction, or start VIB masks "
                   "further from their decision boundary (mask_init log_sigma2 further below 0)")


def kept_summary(plan: CompactionPlan, pruner: Pruner) -> dict:
    """Kept/total units per structure: ``{"hidden": (k, n), "heads": [(k, n) per layer], "ffn": [...]}``."""
    spec = pruner.masks.spec
    hidden = spec.hidden_size if plan.hidden is None else len(plan.hidden)
    return {"hidden": (hidden, spec.hidden_size),
            "heads": [(len(plan.heads.get(i, range(n))), n) for i, n in enumerate(spec.units_per_layer)],
            "ffn": [(len(plan.ffn.get(i, range(n))), n) for i, n in enumerate(spec.ffn_per_layer)]}


def run_pruning(model: nn.Module, batches: Batches, config: PruneConfig, out_dir: str | Path, *,
                resume: bool = False, teacher: nn.Module | None = None, progress: bool = True,
                plots: bool = True, fsdp: bool = False, identity: dict | None = None) -> PruneResult:
    """Train masks on ``model`` for ``config.steps`` steps and write the results to ``out_dir``.

    Writes ``log.jsonl`` (every ``log_every`` steps: losses, expected and actual sparsity, lambdas),
    ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end, atomically and flushed to the device),
    ``plan.json`` (the final :class:`CompactionPlan`, hitting the target, recording the model it was made for),
    ``masks.pt`` and the plots. Every file goes through a temporary file and a rename, so symbolic links planted
    in ``out_dir`` are replaced, never followed. With ``resume`` the run continues from ``checkpoint.pt`` and
    ends with the same masks as an uninterrupted run; the checkpoint is loaded without running code from it
    (tensors and plain data only) and refused, naming what differs, when it was made for another model (weight
    fingerprint), other data (the tokenized rows, batch size, data seed) or other mask settings. ``identity``
    adds caller entries to that record (the pipeline's data file hash, task, ...). Stale ``*.tmp`` files of a
    killed run are removed. A NaN/Inf loss raises :class:`NonFiniteLossError` and leaves the last good
    checkpoint in place. The masks stay attached (in eval mode the model computes the pruned model);
    ``result.pruner.finish()`` detaches them.

    Under ``torchrun`` every rank calls this with the same arguments (``out_dir`` on a shared file system for
    resume); rank 0 alone writes files and shows progress. ``fsdp`` shards the model (see :class:`Pruner`).
    """
    out = Path(out_dir)
    record = {**model_entries(model), **data_record(batches), **mask_settings(config),
              **(identity or {})}
    pruner = Pruner(model, config, teacher=teacher, fsdp=fsdp)
    main = pruner.dist.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
    if resume:
        state = load_checkpoint(out / CHECKPOINT)
        check_same_run(state.get("run"), record, str(out / CHECKPOINT))
        pruner.load_state_dict(state)
    elif config.mask_start == "oneshot":
        from .calibration import start_from_calibration
        start_from_calibration(pruner, batches, config.calibration_batches)
    elif config.rank_by_calibration:
        pruner.score_units(batches)
    if main:
        log = JsonLog(out / LOG, resume_step=pruner.step if resume else None)
        write_text(out / "config.json", json.dumps(config.to_dict(), indent=1))
    bar = _progress(config.steps, pruner.step, progress and main)
    try:
        while pruner.step < config.steps:
            metrics = pruner.train_step(batches.batch(pruner.step))
            step = pruner.step
            if main and (step % config.log_every == 0 or step == config.steps):
                log.write(metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", expected=f"{metrics['expected_sparsity']:.3f}",
                                actual=f"{metrics['sparsity']:.3f}", target=f"{metrics['target_now']:.3f}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                state = pruner.state_dict()  # a collective under torchrun: every rank builds it
                if main:
                    save_atomic({**state, "run": record}, out / CHECKPOINT)
    finally:
        if bar is not None:
            bar.close()
    plan = pruner.plan()
    plan.model["fingerprint"] = record["model.weights"]  # vtrans compact checks it against the model it is given
    summary = kept_summary(plan, pruner)
    summary["sparsity"] = float(pruner.measure.sparsity(summary["hidden"][0], [k for k, _ in summary["heads"]],
                                                        [k for k, _ in summary["ffn"]]))
    summary["mask_decision_sparsity"] = pruner.masks.sparsity(pruner.measure)
    if main and abs(summary["mask_decision_sparsity"] - config.target_sparsity) > CONVERGENCE_TOLERANCE:
        warnings.warn(_missed_target_message(summary["mask_decision_sparsity"], config), RuntimeWarning,
                      stacklevel=2)
    records = []
    if main:
        plan.save(out / PLAN)
        save_atomic(pruner.masks.state_dict(), out / "masks.pt")
        records = log.records()
        if plots:
            from .plots import plot_run
            plot_run(records, summary, out)
    pruner.dist.barrier()
    return PruneResult(plan, pruner, records, summary)


def _progress(total: int, start: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, desc="vtrans prune", dynamic_ncols=True)
