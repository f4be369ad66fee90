"""End to end: data -> teacher -> mask training -> plan -> compact -> fine-tune -> save, with a summary table.
The `vtrans prune` command and the recipes in python/ are thin layers over :func:`prune_pipeline`."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..fileio import real_folder, remove_stale_temporaries, staged_folder, write_text
from ..hf.compact import compact
from ..hf.compensation import bias_compensation_support, compensate_plan
from ..hf.masked_eval import masked_by_plan
from ..hf.serialization import save_compacted
from .checkpoint import load_checkpoint, save_atomic
from .config import PruneConfig
from .data import Batches, TextData, tokenize_classification, tokenize_lm
from .distributed import DistContext
from .evaluate import evaluate
from .finetune import finetune
from .identity import model_fingerprint, text_fingerprint
from .run import run_pruning
from .seeding import seed_everything

TEACHER = "teacher.pt"
COMPENSATED_PLAN = "plan_compensated.json"


@dataclass
class PipelineOptions:
    """Settings around mask training: the task, the dev split, tokenization, a teacher fine-tune before
    pruning and its learning rate, progress bars, whether to resume, and (``calibrate_latency``, latency targets
    only) whether the plan is timed against the unpruned model and re-planned until the measured speedup meets the
    target (:func:`vtrans_kernels.latency.calibrate.calibrate_run`)."""

    task: str = "classification"
    dev_fraction: float = 0.1
    max_length: int = 128
    teacher_steps: int = 0
    teacher_lr: float = 1e-4
    finetune_lr: float = 5e-5
    resume: bool = False
    progress: bool = True
    fsdp: bool = False
    calibrate_latency: bool = True


def _features(data: TextData, tokenizer, task: str, length: int):
    if task == "classification":
        return tokenize_classification(data, tokenizer, length)
    return tokenize_lm(data, tokenizer, length)


def prune_pipeline(model: nn.Module, tokenizer, data: TextData, config: PruneConfig, out_dir: str | Path,
                   options: PipelineOptions | None = None, reload=None) -> dict | None:
    """Prune ``model`` on ``data`` and write everything to ``out_dir``: the mask-run files of
    :func:`run_pruning`, ``compacted/`` (the compacted model and tokenizer, loadable with ``load_compacted``) and
    ``summary.json`` (dev metrics of the teacher, the masked model and the compacted model, kept units, sparsity,
    parameter counts, wall times). Returns the summary. Python's, NumPy's and torch's generators are seeded with
    ``config.seed`` first, so two runs with the same inputs give the same plan (on CPU, byte for byte). A
    resumed run is refused, naming what differs, when the checkpoint was made with other texts or labels,
    pipeline settings or (with a teacher fine-tune) another input model.

    Under ``torchrun`` every rank calls this; mask training runs on all ranks, and rank 0 alone fine-tunes the
    teacher (the others load it), compacts, fine-tunes, evaluates and writes (other ranks return ``None``).
    With ``options.fsdp`` the model is sharded during mask training, so rank 0 compacts a fresh copy from
    ``reload()`` (the Faster variant leaves the weights unchanged, so the copy is the model that was masked).
    """
    options = options or PipelineOptions()
    if options.fsdp and reload is None:
        raise ValueError("prune_pipeline: fsdp needs `reload`, a function returning the unsharded model")
    seed_everything(config.seed)
    dist_context = DistContext.current()
    main = dist_context.is_main
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    identity = _identity(data, options, model if options.teacher_steps else None)
    train, dev = data.split(options.dev_fraction, config.seed)
    train_features = _features(train, tokenizer, options.task, options.max_length)
    dev_batches = Batches(_features(dev, tokenizer, options.task, options.max_length), config.batch_size)
    times = {}

    start = time.perf_counter()
    if options.teacher_steps and main and not options.resume:
        finetune(model, Batches(train_features, config.batch_size, seed=config.seed + 1), options.teacher_steps,
                 lr=options.teacher_lr, progress=options.progress, desc="teacher")
        _save_teacher(model, out)
    dist_context.barrier()
    if options.teacher_steps and (options.resume or not main):
        _load_teacher(model, out)
    times["teacher_s"] = time.perf_counter() - start
    teacher_metrics = evaluate(model, dev_batches, options.task)

    start = time.perf_counter()
    batches = Batches(train_features, config.batch_size, seed=config.seed, fraction=config.data_fraction)
    result = run_pruning(model, batches, config, out, resume=options.resume, progress=options.progress,
                         fsdp=options.fsdp, identity=identity)
    times["mask_training_s"] = time.perf_counter() - start
    pruner = result.pruner
    pruner.finish()
    if not main:
        return None
    if options.fsdp:
        model = reload()
        if options.teacher_steps:
            _load_teacher(model, out)
    else:
        model = pruner.compaction_model()  # the original weights with compact_from="original"
    calibration = None
    if config.target == "latency" and options.calibrate_latency:  # the table's speedup checked by timing, re-planned
        from ..latency.calibrate import calibrate_run
        result, calibration = calibrate_run(result, model, out)
    with masked_by_plan(model, result.plan):  # the model the plan compacts to (threshold-adjusted)
        masked_metrics = evaluate(model, dev_batches, options.task)

    start = time.perf_counter()
    plan, compensation = result.plan, None
    if config.bias_compensation:
        plan, compensation = _compensate(model, plan, batches, config, out)
    compacted = compact(model, plan, round_to=config.round_to)
    teacher = pruner.teacher if pruner.teacher is not None else model
    finetune(compacted, Batches(train_features, config.batch_size, seed=config.seed + 2), config.finetune,
             lr=options.finetune_lr, teacher=teacher if config.distill_weight > 0 else None,
             temperature=config.temperature, progress=options.progress, desc="fine-tune compacted")
    times["compact_finetune_s"] = time.perf_counter() - start
    compacted_metrics = evaluate(compacted, dev_batches, options.task)
    folder = real_folder(out / "compacted")
    remove_stale_temporaries(folder)  # what a save killed midway left
    saved = save_compacted(compacted, folder)
    with staged_folder(saved) as stage:  # tokenizer files land through renames, never through planted links
        tokenizer.save_pretrained(stage)

    summary = {
        "task": options.task, "method": config.method, "variant": config.variant, "target": config.target,
        "target_sparsity": config.target_sparsity, "achieved_sparsity": result.summary["sparsity"],
        "mask_decision_sparsity": result.summary["mask_decision_sparsity"],
        "teacher": teacher_metrics, "masked": masked_metrics, "compacted": compacted_metrics,
        "parameters": {"original": _count(teacher), "compacted": _count(compacted)},
        "kept": {k: result.summary[k] for k in ("hidden", "heads", "ffn")},
        "train_rows": len(batches), "dev_rows": len(dev_batches), "times": times, "compacted_path": str(saved),
    }
    if compensation is not None:
        summary["bias_compensation"] = compensation
    if config.target == "latency":  # the speedup the table predicts for the plan (its sparsity is in latency)
        summary["latency"] = {"target_speedup": config.target_speedup, "table": config.latency_table,
                              "table_speedup": 1 / (1 - result.summary["sparsity"]),
                              "table_dense_ms": pruner.measure.dense_ms, "calibration": calibration}
    write_text(out / "summary.json", json.dumps(summary, indent=1))
    return summary


def _compensate(model: nn.Module, plan, batches: Batches, config: PruneConfig, out: Path):
    """``plan`` with bias compensation measured on the first ``config.calibration_batches`` training batches,
    written to ``plan_compensated.json`` (``vtrans compact`` with it reproduces the compacted model), and the
    record of what was shifted or skipped for the summary."""
    start = time.perf_counter()
    calibration = [batches.batch(step) for step in range(config.calibration_batches)]
    plan = compensate_plan(model, plan, calibration, round_to=config.round_to)
    plan.save(out / COMPENSATED_PLAN)
    record = {"calibration_batches": config.calibration_batches, "plan": COMPENSATED_PLAN,
              "shifted": {"heads": sorted(plan.head_bias_shift), "ffn": sorted(plan.ffn_bias_shift)},
              "skipped": {k: why for k, why in bias_compensation_support(model).items() if why},
              "seconds": time.perf_counter() - start}
    return plan, record


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _save_teacher(model: nn.Module, out: Path) -> None:
    save_atomic(model.state_dict(), out / TEACHER)


def _load_teacher(model: nn.Module, out: Path) -> None:
    state = load_checkpoint(out / TEACHER)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"resume: {out / TEACHER} does not fit the model (made for another one?): "
                         f"{str(err).strip().splitlines()[0]}") from None


def _identity(data: TextData, options: PipelineOptions, input_model: nn.Module | None) -> dict:
    """The pipeline's entries of the run record: the texts and labels, the settings that shape the teacher and
    the tokenized rows, and (when a teacher is fine-tuned first, so that the masked model is not the input) the
    input model's fingerprint."""
    record = {"pipeline.task": options.task, "pipeline.dev_fraction": options.dev_fraction,
              "pipeline.max_length": options.max_length, "pipeline.teacher_steps": options.teacher_steps,
              "pipeline.teacher_lr": options.teacher_lr, "text_data": text_fingerprint(data)}
    if input_model is not None:
        record["input_model"] = model_fingerprint(input_model)
    return record


def format_summary(summary: dict) -> str:
    """The summary as a small plain-text table."""
    metric = "accuracy" if summary["task"] == "classification" else "perplexity"
    kept = summary["kept"]
    rows = [
        ("method / variant", f"{summary['method']} / {summary['variant']}"),
        (f"teacher {metric}", f"{summary['teacher'][metric]:.4f}"),
        (f"masked model {metric}", f"{summary['masked'][metric]:.4f}"),
        (f"compacted {metric}", f"{summary['compacted'][metric]:.4f}"),
        (f"sparsity ({summary['target']}) target / achieved / masks' own decision",
         f"{summary['target_sparsity']:.3f} / {summary['achieved_sparsity']:.3f} / "
         f"{summary['mask_decision_sparsity']:.3f}"),
        *([("speedup by the latency table: target / plan",
            f"{summary['latency']['target_speedup']:.2f}x / {summary['latency']['table_speedup']:.2f}x")]
          if "latency" in summary else []),
        *([("measured speedup here (plans timed)",
            "{:.2f}x ({})".format(summary["latency"]["calibration"]["measured_speedup"],
                                  len(summary["latency"]["calibration"]["attempts"])))]
          if (summary.get("latency") or {}).get("calibration") else []),
        *([("bias compensation: sublayers shifted (attention / FFN)",
            "{} / {}".format(*(len(summary["bias_compensation"]["shifted"][k]) for k in ("heads", "ffn")))
            + "".join(f"; {k} skipped: {why}" for k, why in summary["bias_compensation"]["skipped"].items()))]
          if "bias_compensation" in summary else []),
        ("parameters original -> compacted",
         f"{summary['parameters']['original']:,} -> {summary['parameters']['compacted']:,}"),
        ("hidden dims kept", "{} / {}".format(*kept["hidden"])),
        ("heads kept per layer", " ".join(f"{k}/{n}" for k, n in kept["heads"])),
        ("FFN neurons kept per layer", " ".join(f"{k}/{n}" for k, n in kept["ffn"])),
        ("time: teacher / masks / compact+fine-tune (s)",
         " / ".join(f"{summary['times'][k]:.1f}" for k in ("teacher_s", "mask_training_s", "compact_finetune_s"))),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
