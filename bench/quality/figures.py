"""Headline figures of the quality study: one figure per question, each method once, at the study's headline
settings (bench/results/quality/findings.md), at most ``MAX_SERIES`` series, the legend outside the axes.

- ``encoder_<task>.png``: test accuracy after the fine-tune against parameter sparsity (MiniLM-L6), per method.
- ``encoder_<task>_heads_ffn.png``: the same question with every hidden dim kept (``--structures heads ffn``),
  where every method scores best: VTrans at its default schedule and at the earlier one, hard-concrete, one-shot.
- ``decoder_lm_heads_ffn.png``: the decoder's question with every hidden dim kept: Faster-VTrans at its default
  setting (its heads and per-layer counts, the one-shot scores' FFN neurons) at 120 and 60 mask steps, its own
  units at 60, against one-shot.
- ``decoder_lm.png``: held-out perplexity after the fine-tune against parameter sparsity (SmolLM2-135M).

The ablations (other VIB inits, learning-rate grids, budgets, objectives) are not drawn: they stay in the tables
of summary.md. The rows drawn are picked by the rules below, written down before looking at any test number."""
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

MAX_SERIES = 6

# --- Encoder (findings.md, "Setup") ---
# Every method gets the fine-tune learning-rate search (5e-5, 1e-4, 2e-4), the rate picked on dev accuracy ...
SEARCHED_LRS = "5e-05 0.0001 0.0002"
# ... rows from before that search ran at the single rate 5e-5 with VIB masks from log σ² -1 (TREC so far): a
# task without searched rows is drawn from those, and its title says so.
SINGLE_LR = "5e-05"
PRE_SEARCH_INIT = -1.0
# Scale folding: the default (gate values folded into the weights at compaction); unfolded rows are an ablation.
# VIB masks start at log σ² -2 at 50% and 70% and at -1 at 90%, chosen on the dev accuracy of the fixed-rate runs
# (Faster, 3 seeds); a sparsity not listed gets the drivers' default, -1.
VIB_INIT = {0.5: -2.0, 0.7: -2.0, 0.9: -1.0}
DEFAULT_INIT = -1.0
ONESHOT = "one-shot (activation norms)"
# Mask rows without a mask_start ran the older objective: masks free of the target at the end, the plan ranking
# units by score to reach it.
OLDER_OBJECTIVE = " (older objective: no settling, score-ranked plan)"
ENCODER_METHODS = {"vtrans": "VTrans", "faster": "Faster-VTrans", "hard_concrete": "hard-concrete", "oneshot": ONESHOT}
TASKS = {"sentiment": "Rotten-Tomatoes sentiment", "trec": "TREC (6 classes)"}

# --- Decoder (findings.md, "Experiment 2") ---
# The mask methods at their best documented setting: relative hidden-state distillation (the plain MSE
# overpowers the size target), mask lr 0.1, VIB from log σ² -1. Gate values not folded into the weights is the
# best setting but was run at 20% only; folded (DESIGN's default) is the only one run at 30% and 50%: both drawn.
DECODER_MASK_SETTINGS = {"hidden_distill": "relative", "mask_lr": "0.1"}
DECODER_INIT = -1.0
DECODER_METHODS = {"faster": "Faster-VTrans", "hard_concrete": "hard-concrete", "oneshot": ONESHOT}

# one colour per method in every figure; the settling-objective series (if any) take the spare ones
COLORS = {"vtrans": "C0", "faster": "C1", "hard_concrete": "C2", "oneshot": "C3"}
SPARE_COLORS = ("C4", "C5", "C6", "C8")


@dataclass
class Series:
    """One line of a figure: ``points`` = {sparsity: {seed: value}}."""
    label: str
    color: str
    linestyle: str = "-"
    points: dict = field(default_factory=lambda: defaultdict(dict))

    def add(self, row: dict, key: str) -> None:
        x, seed = float(row["target_sparsity"]), row["seed"]
        if seed in self.points[x]:  # two rows the rules cannot tell apart: keep the first, never average them
            print(f"figures: {self.label} at {x} seed {seed} has two rows at the headline settings; the first is "
                  "drawn (tell them apart in figures.py's rules)", file=sys.stderr)
            return
        self.points[x][seed] = float(row[key])


def _float(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def _study_budget(rows: list[dict]) -> tuple:
    """The step budget most of ``rows`` share (the study's: every method gets the same), so that a one-off run at
    another budget is not drawn beside them."""
    counts = Counter((r["mask_steps"], r["finetune_steps"], r.get("batch_size")) for r in rows)
    return counts.most_common(1)[0][0] if counts else None


def _at_budget(rows: list[dict]) -> list[dict]:
    budget = _study_budget(rows)
    return [r for r in rows if (r["mask_steps"], r["finetune_steps"], r.get("batch_size")) == budget]


def _encoder_init_ok(row: dict, searched: bool) -> bool:
    """A VIB row's initial log σ² is the headline one (findings.md); rows of other methods have none."""
    init = _float(row.get("log_sigma2_init", ""))
    if init is None:
        return True
    want = VIB_INIT.get(float(row["target_sparsity"]), DEFAULT_INIT) if searched else PRE_SEARCH_INIT
    return init == want


def encoder_series(rows: list[dict]) -> tuple[list[Series], dict]:
    """The series of one task's encoder figure and what it shows (``lrs``, ``budget``): one per method at the
    headline settings (masks from their initialisation: rows without a ``mask_start``), then one per setting of
    the settling objective (rows with a ``mask_start``), while there is room under ``MAX_SERIES``."""
    rows = [r for r in rows if r["method"] in ENCODER_METHODS and not r.get("uniform") and r["fold_scales"] != "False"
            and not r.get("structures")]  # cells that prune fewer structures are in summary.md only
    searched = any(r.get("finetune_lrs") == SEARCHED_LRS for r in rows)
    lrs = SEARCHED_LRS if searched else SINGLE_LR
    rows = _at_budget([r for r in rows if r.get("finetune_lrs") == lrs])
    series = {}
    for row in rows:
        if row.get("mask_start"):
            continue
        if _encoder_init_ok(row, searched):
            method = row["method"]
            series.setdefault(method, Series(ENCODER_METHODS[method], COLORS[method])).add(row, "test_after")
    drawn = [series[m] for m in ENCODER_METHODS if m in series]
    settled = _settled_series(rows, MAX_SERIES - len(drawn))
    if settled:  # both objectives on one figure: the legend says which mask lines are the older one
        for method, line in series.items():
            if method != "oneshot":
                line.label += OLDER_OBJECTIVE
    drawn += settled
    budget = _study_budget(rows)
    return drawn, {"lrs": lrs, "budget": budget}


def _settled_series(rows: list[dict], room: int, value: str = "test_after",
                    methods: dict = ENCODER_METHODS) -> list[Series]:
    """Rows of the newer objective (``mask_start`` set: masks that may start from the one-shot plan and settle on
    the target), one series per method, start, settling fraction, VIB init, size count, ramp, quench (and its
    gradient) and allocation, drawing column ``value`` and labelled by ``methods``; when there are more than
    ``room``, the ones measured at the most sparsities are drawn (the rest are in summary.md)."""
    groups = defaultdict(list)
    for row in rows:
        if row.get("mask_start"):
            groups[(row["method"], row["mask_start"], row.get("settle_fraction", ""),
                    row.get("log_sigma2_init", ""), row.get("size_count", ""), row.get("warmup_fraction", ""),
                    row.get("quench_fraction", ""), row.get("quench_gradient", ""),
                    row.get("allocation", ""))].append(row)
    inits = {key[3] for key in groups}
    keys = sorted(groups, key=lambda k: (-len({r["target_sparsity"] for r in groups[k]}), k))
    if len(keys) > room:
        print(f"figures: {len(keys) - room} settling-objective series left out for room: {keys[room:]}",
              file=sys.stderr)
    drawn = []
    for i, key in enumerate(keys[:max(room, 0)]):
        method, start, settle, init, count, warmup, quench, gradient, allocation = key
        label = f"{methods[method]}, {start} start, settles last {float(settle or 0):.0%}"
        if count:
            label += f", {count} count"
        if warmup:
            label += f", target ramps over {float(warmup):.0%}"
        if quench:
            label += f", no gate noise in the last {float(quench):.0%}"
            label += " (straight-through)" if gradient else ""
        if allocation:
            label += f", same fraction per {allocation}"
        if len(inits) > 1 and init:
            label += f", init {init}"
        line = Series(label, SPARE_COLORS[i % len(SPARE_COLORS)], linestyle=":")
        for row in groups[key]:
            line.add(row, value)
        drawn.append(line)
    return drawn


def decoder_series(rows: list[dict]) -> tuple[list[Series], dict]:
    """The series of the decoder figure: one-shot, and each mask method at its best documented setting with the
    gate values not folded (solid) and folded (dashed), on the deepest model run at the study's budget; then the
    rows of the settling objective (``mask_start`` set) at the same mask settings with the gate values not folded,
    one dotted series per start and settling fraction."""
    depth = max(int(r["layers"]) for r in rows)
    rows = [r for r in rows if int(r["layers"]) == depth and r["method"] in DECODER_METHODS
            and not r.get("structures")]  # cells that prune fewer structures are in summary.md only
    if not rows:
        return [], {}
    # perplexities over other held-out tokens are not comparable: the set most rows were measured on
    tokens = Counter(r["eval_tokens"] for r in rows).most_common(1)[0][0]
    rows = _at_budget([r for r in rows if r["eval_tokens"] == tokens])
    series, settled = {}, []
    for row in rows:
        method = row["method"]
        if row.get("mask_start"):
            if row.get("fold_scales") == "False" and all(row.get(k) == v for k, v in DECODER_MASK_SETTINGS.items()):
                settled.append(row)
            continue
        if method == "oneshot":
            key, label, style = method, DECODER_METHODS[method], "-"
        else:
            if any(row.get(k) != v for k, v in DECODER_MASK_SETTINGS.items()):
                continue
            init = _float(row.get("log_sigma2_init", ""))
            if init is not None and init != DECODER_INIT:
                continue
            folded = row.get("fold_scales") == "True"
            key = (method, folded)
            label = f"{DECODER_METHODS[method]}, " + ("scales folded (default)" if folded else "scales not folded")
            style = "--" if folded else "-"
        series.setdefault(key, Series(label, COLORS[method], style)).add(row, "ppl_after")
    order = ["oneshot"] + [(m, folded) for m in DECODER_METHODS if m != "oneshot" for folded in (False, True)]
    drawn = [series[k] for k in order if k in series]
    drawn += _settled_series(settled, MAX_SERIES - len(drawn), "ppl_after", DECODER_METHODS)
    return drawn, {"layers": depth, "budget": _study_budget(rows), "teacher": float(rows[0]["teacher_ppl"])}


def _seed_counts(series: list[Series]) -> set[int]:
    return {len(seeds) for line in series for seeds in line.points.values()}


def seeds_note(series: list[Series]) -> str:
    """What a point is, from the data: its number of seeds (single-seed points are drawn hollow beside means)."""
    counts = _seed_counts(series)
    many = sorted(counts - {1})
    if not many:
        return "one seed per point (no error bars)"
    over = f"mean ± sd over {many[0]}" + (f"-{many[-1]}" if len(many) > 1 else "") + " seeds"
    return f"filled: {over}; hollow: 1 seed" if 1 in counts else over


def draw(series: list[Series], *, title: str, xlabel: str, ylabel: str, reference: tuple[str, float],
         log_y: bool = False, dodge: float = 0.0):
    """A matplotlib figure of ``series`` (mean over seeds, ± sd where there are several), a dashed reference
    line, the legend right of the axes; ``dodge`` (percentage points) spreads the series' x so error bars at one
    sparsity do not hide each other."""
    if len(series) > MAX_SERIES:
        raise ValueError(f"{len(series)} series in one figure; at most {MAX_SERIES} stay readable")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.4), layout="constrained")
    counts = _seed_counts(series)
    hollow = 1 in counts and len(counts) > 1  # single-seed points among means: tell them apart
    for i, line in enumerate(series):
        xs = sorted(line.points)
        values = [list(line.points[x].values()) for x in xs]
        shift = dodge * (i - (len(series) - 1) / 2)
        ax.errorbar([100 * x + shift for x in xs], [statistics.mean(v) for v in values],
                    yerr=[statistics.stdev(v) if len(v) > 1 else 0.0 for v in values],
                    color=line.color, linestyle=line.linestyle, marker="o", capsize=3, label=line.label)
        single = [(100 * x + shift, v[0]) for x, v in zip(xs, values) if len(v) == 1]
        if hollow and single:
            ax.plot(*zip(*single), linestyle="none", marker="o", markerfacecolor="white",
                    markeredgecolor=line.color, zorder=3)
    name, value = reference
    ax.axhline(value, color="black", linestyle="--", linewidth=1, label=name)
    if log_y:  # 1-2-5 ticks with plain numbers: perplexities span 20 to thousands
        from matplotlib.ticker import LogLocator, ScalarFormatter
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter("")
    ax.set_xticks(sorted({100 * x for line in series for x in line.points}))
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8,
              title=seeds_note(series), title_fontsize=8, alignment="left")
    return fig


def _save(fig, path: Path) -> list[Path]:
    """``[path]`` with ``fig`` written there, or ``[]`` (and a note) when there was nothing to draw."""
    if fig is None:
        print(f"figures: no rows at the headline settings for {path.name}; not drawn", file=sys.stderr)
        return []
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return [path]


def accuracy_figure(series: list[Series], rows: list[dict], title: str):
    """An encoder figure: test accuracy after the fine-tune against sparsity, the mean teacher of ``rows`` dashed."""
    teachers = {r["seed"]: float(r["teacher_test"]) for r in rows}
    teacher = statistics.mean(teachers.values())
    seeds = f", mean of {len(teachers)} seeds" if len(teachers) > 1 else ""
    return draw(series, title=title, xlabel="parameter sparsity of the encoder layers (%)",
                ylabel="test accuracy after fine-tune (fraction)",
                reference=(f"unpruned teacher ({teacher:.3f}{seeds})", teacher), dodge=0.35)


def perplexity_figure(series: list[Series], teacher: float, title: str, dodge: float = 0.0):
    """A decoder figure: held-out perplexity after the fine-tune (log scale) against sparsity, the unpruned model's
    perplexity ``teacher`` dashed."""
    return draw(series, title=title, xlabel="parameter sparsity of the decoder layers (%)",
                ylabel="held-out perplexity after fine-tune (log scale)",
                reference=(f"unpruned model ({teacher:.1f})", teacher), log_y=True, dodge=dodge)


def encoder_figure(rows: list[dict], task: str):
    """Test accuracy after the fine-tune against parameter sparsity for one task's rows: which method keeps the
    most accuracy? ``None`` when no row is at the headline settings."""
    series, shown = encoder_series(rows)
    if not series:
        return None
    mask_steps, finetune_steps, _ = shown["budget"]
    how = ("fine-tune lr searched on dev, VIB init per findings.md" if shown["lrs"] == SEARCHED_LRS else
           f"single fine-tune lr {shown['lrs']}, VIB init {PRE_SEARCH_INIT:g} (rows from before the lr search)")
    title = (f"MiniLM-L6, {TASKS.get(task, task)}: which pruning method keeps the most accuracy?\n"
             f"{mask_steps} mask steps + {finetune_steps} distilled fine-tune steps; {how}")
    return accuracy_figure(series, rows, title)


def decoder_figure(rows: list[dict]):
    """Held-out perplexity after the fine-tune against parameter sparsity (log scale): does mask training beat
    one-shot pruning on a decoder? ``None`` when no row is at the headline settings."""
    series, shown = decoder_series(rows)
    if not series:
        return None
    mask_steps, finetune_steps, batch = shown["budget"]
    title = (f"SmolLM2-135M ({shown['layers']} layers), Python docs: does mask training beat one-shot pruning?\n"
             f"{mask_steps} mask steps + {finetune_steps} distilled fine-tune steps at batch {batch}; "
             "masks: relative hidden-state distillation")
    return perplexity_figure(series, shown["teacher"], title)


def _catalogued_series(rows: list[dict], catalogue: dict, columns: tuple[str, ...], value: str) -> list[Series]:
    """One series per ``catalogue`` entry (key: the row's ``columns`` values, "" where absent; value: the series'
    label and colour) drawing column ``value``, in the catalogue's order; rows of other keys are left out."""
    series = {}
    for row in rows:
        key = tuple(row.get(column, "") for column in columns)
        if key in catalogue:
            series.setdefault(key, Series(*catalogue[key])).add(row, value)
    return [series[key] for key in catalogue if key in series]


# --- Encoder, every hidden dim kept (findings.md, "A straight-through quench" and the sections after it) ---
# One series per (method, settling fraction, quench fraction, quench gradient, allocation, weights compacted) as the
# CSV holds them: VTrans at the default schedule of the variants that train weights (with the default allocation;
# with the same fraction of heads and of neurons; and that plan's units on the weights from before mask training,
# the best 50% sentiment setting on dev), hard-concrete at the schedule its 3-seed cells ran, one-shot (no masks).
# Masks from their initialisation (VIB log σ² -1), the searched fine-tune grid, the study budget.
HEADS_FFN_SERIES = {
    ("vtrans", "0.5", "0.5", "straight_through", "", ""): (
        "VTrans, default schedule (last half held, no gate noise)", "C0"),
    ("vtrans", "0.5", "0.5", "straight_through", "structure", ""): (
        "VTrans, default schedule, the same fraction\nof heads and of neurons (allocation='structure')", "C4"),
    ("vtrans", "0.5", "0.5", "straight_through", "structure", "original"): (
        "the same units on the weights from before\nmask training (compact_from='original')", "C9"),
    ("hard_concrete", "0.2", "", "", "", ""): ("hard-concrete (last 20% held)", COLORS["hard_concrete"]),
    ("oneshot", "", "", "", "", ""): (ONESHOT, COLORS["oneshot"]),
}


def heads_ffn_series(rows: list[dict]) -> list[Series]:
    """The series of a task's every-hidden-dim-kept figure, in ``HEADS_FFN_SERIES`` order (those with rows)."""
    rows = _at_budget([r for r in rows if r.get("structures") == "heads ffn"
                       and r.get("finetune_lrs") == SEARCHED_LRS and not r.get("uniform")
                       and r.get("mask_start", "") in ("", "init")
                       and not r.get("warmup_fraction") and not r.get("size_count")
                       and r.get("log_sigma2_init", "") in ("", str(DEFAULT_INIT))
                       # the original weights are compacted without the masks' scales
                       and (r.get("fold_scales", "") in ("", "True") or r.get("compact_from") == "original")])
    return _catalogued_series(rows, HEADS_FFN_SERIES, ("method", "settle_fraction", "quench_fraction",
                                                       "quench_gradient", "allocation", "compact_from"), "test_after")


def heads_ffn_figure(rows: list[dict], task: str):
    """Test accuracy after the fine-tune against parameter sparsity with every hidden dim kept: which method keeps
    the most accuracy when only heads and FFN neurons are pruned? ``None`` without such rows."""
    series = heads_ffn_series(rows)
    if not series:
        return None
    kept = [r for r in rows if r.get("structures") == "heads ffn"]
    mask_steps, finetune_steps, _ = _study_budget(kept)
    title = (f"MiniLM-L6, {TASKS.get(task, task)}, heads and FFN neurons pruned (every hidden dim kept):\n"
             f"which method keeps the most accuracy? {mask_steps} mask steps + {finetune_steps} distilled fine-tune "
             "steps, fine-tune lr searched on dev")
    return accuracy_figure(series, kept, title)


# --- Decoder, every hidden dim kept (findings.md, "Keeping every hidden dim" and the sections after it) ---
# Faster at its best measured setting (one-shot start, the last 85% of the steps held, relative hidden-state
# distillation, mask lr 0.1, gate values not folded, no quench) with the masks' heads and per-layer counts and the
# one-shot scores' FFN neurons, at the 120 mask steps chosen on dev (the SmolLM2 recipe's default) and at the
# study's 60; the masks' own units at 60; one-shot, which trains no masks (its rows count for every mask budget).
# Keyed by (method, unit ranking, mask steps); the other unit rankings and the quench are ablations (summary.md).
DECODER_HEADS_FFN_SERIES = {
    ("oneshot", "", ""): (ONESHOT, COLORS["oneshot"]),
    ("faster", "calibration_ffn", "120"): ("Faster-VTrans, 120 mask steps (default):\nits heads and counts, "
                                           "one-shot's FFN neurons", "C6"),
    ("faster", "calibration_ffn", "60"): ("the same, 60 mask steps", "C9"),
    ("faster", "", "60"): ("Faster-VTrans' own units, 60 mask steps", COLORS["faster"]),
}
DECODER_HEADS_FFN_SCHEDULE = {"mask_start": "oneshot", "settle_fraction": "0.85", "quench_fraction": "",
                              "allocation": ""}


def decoder_heads_ffn_series(rows: list[dict]) -> tuple[list[Series], dict]:
    """The series of the decoder's every-hidden-dim-kept figure, in ``DECODER_HEADS_FFN_SERIES`` order, from the
    deepest model's rows on the held-out set most of them were measured on, at the fine-tune budget most of them
    share, and what they show (``finetune``: (steps, batch size); ``teacher``: the unpruned perplexity on that
    set)."""
    rows = [r for r in rows if r.get("structures") == "heads ffn" and (
        r["method"] == "oneshot" or (r.get("fold_scales") == "False" and r.get("log_sigma2_init") == str(DECODER_INIT)
                                     and all(r.get(k) == v for k, v in DECODER_MASK_SETTINGS.items())
                                     and all(r.get(k, "") == v for k, v in DECODER_HEADS_FFN_SCHEDULE.items())))]
    if not rows:
        return [], {}
    depth = max(int(r["layers"]) for r in rows)
    rows = [r for r in rows if int(r["layers"]) == depth]
    tokens = Counter(r["eval_tokens"] for r in rows).most_common(1)[0][0]
    rows = [r for r in rows if r["eval_tokens"] == tokens]
    finetune = Counter((r["finetune_steps"], r.get("batch_size")) for r in rows).most_common(1)[0][0]
    rows = [{**r, "mask_steps": ""} if r["method"] == "oneshot" else r for r in rows
            if (r["finetune_steps"], r.get("batch_size")) == finetune]
    drawn = _catalogued_series(rows, DECODER_HEADS_FFN_SERIES, ("method", "unit_ranking", "mask_steps"),
                               "ppl_after")
    return drawn, {"finetune": finetune, "teacher": float(rows[0]["teacher_ppl"])}


def decoder_heads_ffn_figure(rows: list[dict]):
    """Held-out perplexity after the fine-tune against sparsity with every hidden dim kept: does mask training
    beat one-shot pruning on a decoder when only heads and FFN neurons go? ``None`` without such rows."""
    series, shown = decoder_heads_ffn_series(rows)
    if not series:
        return None
    finetune_steps, batch = shown["finetune"]
    title = ("SmolLM2-135M, Python docs, every hidden dim kept: does mask training beat one-shot pruning?\n"
             f"heads and FFN neurons pruned; masks trained at batch {batch}, then {finetune_steps} distilled "
             "fine-tune steps")
    return perplexity_figure(series, shown["teacher"], title, dodge=0.35)


def encoder_figures(rows: list[dict], folder: Path) -> list[Path]:
    """``encoder_<task>.png`` in ``folder`` for every task in ``rows`` (rows of one task may come from several
    CSVs, e.g. a separate one for the settling objective)."""
    by_task = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
    return [path for task, task_rows in sorted(by_task.items())
            for figure, name in ((encoder_figure, f"encoder_{task}.png"),
                                 (heads_ffn_figure, f"encoder_{task}_heads_ffn.png"))
            for path in _save(figure(task_rows, task), folder / name)]


def decoder_figures(rows: list[dict], folder: Path) -> list[Path]:
    """``decoder_lm.png`` and ``decoder_lm_heads_ffn.png`` in ``folder``."""
    if not rows:
        return []
    return (_save(decoder_figure(rows), folder / "decoder_lm.png")
            + _save(decoder_heads_ffn_figure(rows), folder / "decoder_lm_heads_ffn.png"))
