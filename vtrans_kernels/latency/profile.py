"""`profile_latency`: measure a model's per-layer latency table on the device at hand.

For each hidden size (the model's and a few pruned ones) it builds compacted models whose layers carry the
widths to measure, one width per layer: every attention head (KV-group) count and the FFN widths on a grid
(``ffn_step`` neurons apart, plus each layer's full width). The blocks are timed inside whole-model forwards
(`timer.BlockTimer`), so they run as they do in deployment. The fixed cost is the time of a forward of the
model at that hidden size with every other width unpruned, less its blocks' time in the same forward.

Noise (shared machines): every model is warmed up first; then ``repeats`` rounds each run every model once in a
new random order, so a busy spell hits a scattering of widths rather than a run of neighbours; the models of as
many hidden sizes as ``memory_mb`` holds share the rounds, so one cannot be measured in a busier spell than
another. The table keeps each point's samples and the estimate the predictions use (`stats.settled_ms`: the
median of the samples near the fastest, an estimate of the latency on a core of its own). The reference model
(fixed cost and total) runs ``REFERENCE_RUNS`` times per round: its fixed cost is a small difference of large
numbers.
"""
from __future__ import annotations

import copy
import inspect
import math
import random
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..hf.adapters import adapter_for
from ..hf.compact import compact
from ..hf.plan import CompactionPlan
from ..masks.size_model import count_parameters, layer_parameters
from .environment import DTYPES, architecture_record, device_record, dtype_name, versions
from .stats import STATISTIC, estimate_ms
from .table import LatencyTable
from .timer import BlockTimer, Stopwatch, default_clock, time_forward

# Pruned hidden sizes measured by default, as fractions of the model's (rounded to multiples of 8).
HIDDEN_FRACTIONS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
# Token ids of the profile inputs are drawn below this (and below the vocabulary size); the models that time the
# blocks get a vocabulary this small, so they hold little besides their layers.
SMALL_VOCAB = 512
# Forwards of the reference model (hooked, and without hooks) per round.
REFERENCE_RUNS = 3


def default_hidden_sizes(hidden: int) -> list[int]:
    """The model's hidden size and the fractions :data:`HIDDEN_FRACTIONS` of it, rounded to multiples of 8."""
    sizes = {hidden} | {max(8, int(round(hidden * f / 8)) * 8) for f in HIDDEN_FRACTIONS}
    return sorted(s for s in sizes if s <= hidden)


def profile_latency(model: nn.Module, *, batch_size: int = 1, seq_len: int = 128, dtype: str | None = None,
                    device: str | None = None, threads: int | None = None, repeats: int = 7, warmup: int = 2,
                    ffn_step: int = 8, hidden_sizes: Sequence[int] | None = None, seed: int = 0,
                    clock: str | None = None, memory_mb: float = 2048, path: str | Path | None = None,
                    progress: bool = True) -> LatencyTable:
    """Measure the latency table of ``model`` (an unpruned transformers model of a supported class).

    Args:
        model: left untouched (copies are moved to ``device`` and ``dtype``).
        batch_size, seq_len: the deployment shape: one forward of ``batch_size`` sequences of ``seq_len`` tokens.
        dtype: "float32", "bfloat16" or "float16" (default: the model's).
        device: "cpu" or "cuda[:i]" (default: the model's device).
        threads: CPU threads torch uses while measuring (default: torch's current setting); recorded.
        repeats: samples per point (rounds over all models); warmup: untimed forwards per model first.
        ffn_step: FFN widths measured every ``ffn_step`` neurons (and each layer's full width).
        hidden_sizes: hidden sizes to measure (default :func:`default_hidden_sizes`); the model's is added.
        seed: order of the rounds.
        clock: "cuda" (events) on a GPU; on CPU "thread" (the CPU time of the measuring thread: the latency on a
            core of its own, blind to other jobs holding the core; needs ``threads=1``) or "wall". Default:
            :func:`~.timer.default_clock`.
        memory_mb: weights the measuring models may hold at once; hidden sizes whose models fit together are
            measured in the same interleaved rounds.
        path: a JSON file: when it holds a table measured with the same settings, device, versions and model,
            that table is returned without measuring; otherwise the new table is written there.
        progress: a progress bar over the forwards.
    Returns:
        The :class:`LatencyTable`.
    """
    arch = architecture_record(model)
    device = torch.device(device or next(model.parameters()).device)
    dtype = dtype_name(dtype or next(model.parameters()).dtype)
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("repeats", repeats),
                        ("ffn_step", ffn_step)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: expected an int >= 0, got {warmup!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: expected a positive int, got {threads!r}")
    _check_positions(model, seq_len)
    hidden = arch["hidden"]
    sizes = _hidden_sizes(hidden, hidden_sizes)
    with _threads(device, threads):
        clock = clock or default_clock(device, torch.get_num_threads())
        if (clock == "cuda") != (device.type == "cuda") or (clock == "thread" and torch.get_num_threads() != 1):
            raise ValueError(f"clock: {clock!r} does not time {device.type} with {torch.get_num_threads()} threads "
                             "(\"cuda\" on a GPU; \"thread\" needs threads=1; \"wall\" on any CPU)")
        settings = {"repeats": repeats, "warmup": warmup, "ffn_step": ffn_step, "hidden_sizes": sizes,
                    "seed": seed, "clock": clock, "statistic": STATISTIC,
                    "reference_runs": REFERENCE_RUNS}
        key = {"device": device_record(device), "dtype": dtype, "batch_size": batch_size, "seq_len": seq_len,
               "versions": versions(), "model": arch, "settings": settings}
        if path is not None and Path(path).is_file():
            try:
                saved = LatencyTable.load(path)
            except ValueError:
                saved = None
            if saved is not None and saved.reuse_key() == key:
                print(f"vtrans profile: reusing {path} (measured with the same settings, device, versions and model)")
                return saved
        start = time.perf_counter()
        table = _measure(model, key, device, DTYPES[dtype], sizes, progress, memory_mb)
        table.profile_seconds = time.perf_counter() - start
    if path is not None:
        table.save(path)
    return table


def _hidden_sizes(hidden: int, requested: Sequence[int] | None) -> list[int]:
    if requested is None:
        return default_hidden_sizes(hidden)
    sizes = list(requested)
    bad = [h for h in sizes if isinstance(h, bool) or not isinstance(h, int) or not 1 <= h <= hidden]
    if bad:
        raise ValueError(f"hidden_sizes: expected ints in [1, {hidden}] (the model's hidden size), got {bad}")
    return sorted(set(sizes) | {hidden})


def _check_positions(model: nn.Module, seq_len: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and seq_len > int(limit):
        raise ValueError(f"seq_len: {seq_len} exceeds the model's {limit} positions")


@contextmanager
def _threads(device: torch.device, threads: int | None):
    previous = torch.get_num_threads()
    if device.type == "cpu" and threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _grids(arch: dict, ffn_step: int) -> tuple[list[int], list[int]]:
    """Head counts 1..max and FFN widths every ``ffn_step`` up to the widest layer, plus each layer's width."""
    heads = list(range(1, max(arch["heads"]) + 1))
    widest = max(arch["ffn"])
    ffn = sorted(set(range(ffn_step, widest + 1, ffn_step)) | set(arch["ffn"]))
    return heads, ffn


def _layouts(heads: list[int], ffn: list[int], layers: int) -> list[tuple[list[int], list[int]]]:
    """Per-model (heads per layer, FFN per layer) placing each grid width in one layer of one model; the other
    layers' blocks are removed (width 0). Neighbouring widths go to different models, so each model's forward
    spans the whole range."""
    count = max(math.ceil(len(ffn) / layers), math.ceil(len(heads) / layers), 1)
    layouts = [([0] * layers, [0] * layers) for _ in range(count)]
    for grid, slot in ((heads, 0), (ffn, 1)):
        for j, width in enumerate(grid):
            layouts[j % count][slot][j // count] = width
    return layouts


def _plan(hidden: int | None, heads: list[int] | None = None, ffn: list[int] | None = None) -> CompactionPlan:
    keep = lambda n: list(range(n))  # noqa: E731  (which units survive does not change the latency)
    return CompactionPlan(hidden=None if hidden is None else keep(hidden),
                          heads={} if heads is None else {i: keep(h) for i, h in enumerate(heads)},
                          ffn={} if ffn is None else {i: keep(f) for i, f in enumerate(ffn)})


def _small_vocab_copy(model: nn.Module) -> nn.Module:
    """A randomly initialised model of the same class and layers with a :data:`SMALL_VOCAB` vocabulary."""
    config = copy.deepcopy(model.config)
    vocab = int(getattr(config, "vocab_size"))
    special = [getattr(config, k, None) for k in ("pad_token_id", "bos_token_id", "eos_token_id")]
    special = [s for s in special if isinstance(s, int)]
    config.vocab_size = min(vocab, max(SMALL_VOCAB, max(special, default=0) + 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return type(model)(config).eval()


def _forward(model: nn.Module, ids: torch.Tensor):
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "use_cache" in inspect.signature(model.forward).parameters:
        kwargs["use_cache"] = False  # a prefill forward, as the compacted model's benchmark runs it
    return lambda: model(**kwargs)


def _memory_mb(spec, hidden: int, layouts, element_size: int) -> float:
    """Weights of the models measuring ``hidden`` (the block models and the reference), in MiB."""
    blocks = sum(layer_parameters(spec, hidden, u, f) for heads, ffn in layouts for u, f in zip(heads, ffn))
    return element_size * (blocks + count_parameters(spec, hidden, embeddings=True)) / 2**20


def _passes(sizes: list[int], memory, budget_mb: float) -> list[list[int]]:
    """Hidden sizes grouped (largest first) so that each group's models fit ``budget_mb`` together: a group is
    measured in interleaved rounds, so a busy spell on the machine cannot bias one hidden size alone."""
    groups, used = [], budget_mb + 1
    for hidden in sorted(sizes, reverse=True):
        need = memory(hidden)
        if used + need > budget_mb:
            groups.append([])
            used = 0.0
        groups[-1].append(hidden)
        used += need
    return groups


class _Job:
    """One model forward of a round: a block model ("blocks"), the reference hooked ("reference": its blocks
    and the fixed cost) or the reference without hooks ("total")."""

    def __init__(self, hidden: int, kind: str, model: nn.Module, ids: torch.Tensor, stopwatch: Stopwatch,
                 reference_timer: BlockTimer | None = None):
        self.hidden, self.kind, self.stopwatch = hidden, kind, stopwatch
        self.run = _forward(model, ids)
        self.timer = None if kind == "total" else BlockTimer(model, stopwatch)
        self.reference_timer = reference_timer  # "total": the hooks on the same model, paused while it runs


def _measure(model: nn.Module, key: dict, device: torch.device, dtype: torch.dtype, sizes: list[int],
             progress: bool, memory_mb: float) -> LatencyTable:
    arch, settings = key["model"], key["settings"]
    heads_grid, ffn_grid = _grids(arch, settings["ffn_step"])
    layouts = _layouts(heads_grid, ffn_grid, len(arch["heads"]))
    repeats, warmup = settings["repeats"], settings["warmup"]
    stopwatch = Stopwatch(settings["clock"])
    rng = random.Random(settings["seed"])
    gen = torch.Generator().manual_seed(settings["seed"])
    vocab = min(SMALL_VOCAB, int(model.config.vocab_size))
    ids = torch.randint(0, vocab, (key["batch_size"], key["seq_len"]), generator=gen).to(device)
    spec = adapter_for(model).spec()
    element_size = torch.empty((), dtype=dtype).element_size()
    passes = _passes(sizes, lambda h: _memory_mb(spec, h, layouts, element_size), memory_mb)
    bar = _bar(len(sizes) * (len(layouts) + 2 * settings["reference_runs"]) * (warmup + repeats), progress)
    full = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    small = _small_vocab_copy(model).to(device=device, dtype=dtype)
    found = {h: {"attention": {}, "ffn": {}, "fixed": [], "total": []} for h in sizes}
    try:
        with torch.inference_mode():
            for group in passes:
                jobs = []
                for hidden in group:
                    hidden_plan = None if hidden == arch["hidden"] else hidden
                    reference = compact(full, _plan(hidden_plan))
                    source = compact(small, _plan(hidden_plan))
                    jobs += [_Job(hidden, "blocks", compact(source, _plan(None, h, f)), ids, stopwatch)
                             for h, f in layouts]
                    hooked = _Job(hidden, "reference", reference, ids, stopwatch)
                    unhooked = _Job(hidden, "total", reference, ids, stopwatch, hooked.timer)
                    jobs += [hooked, unhooked] * settings["reference_runs"]
                for job in set(jobs):
                    for _ in range(warmup):
                        job.run()
                    bar.update(warmup * jobs.count(job))
                for _ in range(repeats):
                    rng.shuffle(jobs)
                    for job in jobs:
                        _run(job, found[job.hidden])
                        bar.update(1)
                for job in jobs:
                    if job.timer is not None:
                        job.timer.remove()
                del jobs
    finally:
        bar.close()
    samples = {"attention": {}, "ffn": {}, "fixed": {}, "total": {}}
    for hidden in sizes:
        for kind, grid in (("attention", heads_grid), ("ffn", ffn_grid)):
            samples[kind][hidden] = _points(grid, found[hidden][kind], settings["statistic"])
        samples["fixed"][hidden] = _point(found[hidden]["fixed"], settings["statistic"])
        samples["total"][hidden] = _point(found[hidden]["total"], settings["statistic"])
    return LatencyTable(device=key["device"], dtype=key["dtype"], batch_size=key["batch_size"],
                        seq_len=key["seq_len"], versions=key["versions"], model=arch, settings=settings,
                        hidden_sizes=sizes, **samples)


def _run(job: _Job, found: dict) -> None:
    """Time one forward of ``job`` and file its samples under ``found`` (one hidden size's)."""
    if job.kind == "total":  # the reference's hooks stand still for a clean total
        job.reference_timer.pause()
        try:
            found["total"].append(time_forward(job.run, job.stopwatch))
        finally:
            job.reference_timer.resume()
        return
    forward_ms, measured = job.timer.run(job.run)
    for (kind, _layer), (width, ms) in measured.items():
        found[kind].setdefault(width, []).append(ms)
    if job.kind == "reference":  # the same forward's time outside the blocks
        found["fixed"].append(forward_ms - sum(ms for _, ms in measured.values()))


def _point(samples: list[float], statistic: str) -> dict:
    return {"estimate_ms": estimate_ms(samples, statistic), "median_ms": statistics.median(samples),
            "samples_ms": [round(v, 5) for v in samples]}


def _points(grid: list[int], measured: dict[int, list[float]], statistic: str) -> dict:
    missing = [w for w in grid if w not in measured]
    if missing:
        raise RuntimeError(f"latency profile: widths {missing[:8]} were not measured")
    points = [_point(measured[w], statistic) for w in grid]
    return {"widths": [0, *grid], **{k: [0.0 if k != "samples_ms" else [], *(p[k] for p in points)]
                                     for k in ("estimate_ms", "median_ms", "samples_ms")}}


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="vtrans profile", unit="fwd", dynamic_ncols=True)
