"""Tables and plots of the quality study from its CSVs: bench/results/quality/summary.md (the encoder
classification table from encoder_<task>.csv, the decoder language-modelling table from decoder_lm.csv), one
accuracy-vs-sparsity PNG per encoder task and one perplexity-vs-sparsity PNG per decoder depth (mean over seeds,
with the spread when there are several)."""
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from common import RESULTS_DIR  # noqa: E402

QUALITY = RESULTS_DIR / "quality"
DECODER_CSV = "decoder_lm.csv"


def _rows(paths: list[Path]) -> list[dict]:
    return [row for path in paths for row in csv.DictReader(path.open())]


def _mean_spread(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _value(text: str):
    """A CSV cell as an int or float when it is one (so groups sort numerically), else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _sort_key(value) -> tuple:
    """Numbers before text, each in its own order: a column may hold both (a learning rate, or a grid of them)."""
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, value)


def _groups(rows: list[dict], keys: tuple[str, ...]) -> dict:
    """Rows grouped by their ``keys`` values, in sorted order."""
    groups = defaultdict(list)
    for row in rows:
        groups[tuple(_value(row.get(k, "")) for k in keys)].append(row)
    return dict(sorted(groups.items(), key=lambda item: tuple(_sort_key(v) for v in item[0])))


def _column(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows]


def _yes_no(flag: str) -> str:
    """A True/False CSV cell as yes/no, "-" when empty (a setting that does not apply)."""
    return {"True": "yes", "False": "no"}.get(flag, "-")


def _table(header: list[str], lines: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + lines


def _optional_mean(group: list[dict], key: str, digits: int) -> str:
    """Mean of a column some rows leave empty or lack ("-" when none has it): the masks' own decision sparsity
    (none for the one-shot baseline), GPU latency (none without a GPU)."""
    values = [float(r[key]) for r in group if r.get(key)]
    return f"{statistics.mean(values):.{digits}f}" if values else "-"


def summarize(paths: list[Path]) -> str:
    """The encoder table (one line per task, target, method and step budget) and the teachers' test accuracies."""
    rows = _rows(paths)
    teachers = {(r["task"], r["seed"]): float(r["teacher_test"]) for r in rows}
    lines = []
    # budgets, VIB initialisations, scale folding and learning-rate grids never mix in a line
    keys = ("task", "target_sparsity", "method", "log_sigma2_init", "fold_scales", "finetune_lrs", "mask_steps",
            "finetune_steps")
    for (task, target, method, init, fold, lrs, *_), group in _groups(rows, keys).items():
        pick = lambda key, group=group: _column(group, key)  # noqa: E731
        chosen = ", ".join(sorted({r["finetune_lr"] for r in group}, key=float))
        lines.append(f"| {task} | {target} | {method} | {init if init != '' else '-'} | {_yes_no(fold)} "
                     f"| {lrs} → {chosen} | {len(group)} "
                     f"| {statistics.mean(pick('achieved_sparsity')):.3f} "
                     f"| {_optional_mean(group, 'mask_decision_sparsity', 3)} "
                     f"| {_mean_spread(pick('test_before'))} | {_mean_spread(pick('test_after'))} "
                     f"| {statistics.mean(pick('mask_time_s')):.0f} | {statistics.mean(pick('cpu_latency_ms')):.1f} "
                     f"| {_optional_mean(group, 'gpu_latency_ms', 2)} | {group[0]['mask_steps']} / "
                     f"{group[0]['finetune_steps']} "
                     f"| {group[0]['device']}, {group[0]['machine']} |")
    header = ["task", "target", "method", "VIB log σ² init", "scales folded", "FT lr searched → chosen", "seeds",
              "achieved", "masks' own",
              "test acc. before FT", "test acc. after FT", "mask time (s)", "CPU latency (ms)", "GPU bf16 latency (ms)",
              "mask / FT steps", "machine"]
    teacher_lines = [f"- teacher test accuracy, {task} seed {seed}: {acc:.4f}" for (task, seed), acc in
                     sorted(teachers.items())]
    return "\n".join(_table(header, lines) + [""] + teacher_lines) + "\n"


def summarize_decoder(path: Path) -> str:
    """The decoder table (one line per depth, target, method, mask settings and step budget: held-out perplexity
    before and after the distilled fine-tune) and the unpruned model's perplexity per depth."""
    rows = _rows([path])
    teachers = {r["layers"]: float(r["teacher_ppl"]) for r in rows}
    lines = []
    keys = ("layers", "target_sparsity", "method", "log_sigma2_init", "hidden_distill", "mask_lr", "fold_scales",
            "mask_steps", "finetune_steps", "batch_size")
    for (layers, target, method, init, hidden, lr, fold, *_), group in _groups(rows, keys).items():
        pick = lambda key, group=group: _column(group, key)  # noqa: E731
        lines.append(f"| {layers} | {target} | {method} | {init if init != '' else '-'} | {hidden or '-'} "
                     f"| {lr if lr != '' else '-'} | {_yes_no(fold)} "
                     f"| {len(group)} "
                     f"| {statistics.mean(pick('achieved_sparsity')):.3f} "
                     f"| {_optional_mean(group, 'mask_decision_sparsity', 3)} "
                     f"| {_mean_spread(pick('ppl_before'), 2)} | {_mean_spread(pick('ppl_after'), 2)} "
                     f"| {statistics.mean(pick('mask_time_s')):.0f} | {statistics.mean(pick('finetune_time_s')):.0f} "
                     f"| {statistics.mean(pick('cpu_latency_ms')):.1f} | {_optional_mean(group, 'gpu_latency_ms', 2)} "
                     f"| {group[0]['mask_steps']} / {group[0]['finetune_steps']}, {group[0]['batch_size']} "
                     f"| {group[0]['device']}, {group[0]['machine']} |")
    header = ["layers", "target", "method", "VIB log σ² init", "hidden distill", "mask lr", "scales folded", "seeds",
              "achieved", "masks' own", "held-out ppl before FT", "held-out ppl after FT", "mask time (s)",
              "FT time (s)", "CPU latency (ms)", "GPU bf16 latency (ms)", "mask / FT steps, batch", "machine"]
    first = rows[0]
    notes = [f"- unpruned SmolLM2-135M ({layers} layers) held-out perplexity: {ppl:.2f}"
             for layers, ppl in sorted(teachers.items(), key=lambda item: int(item[0]))]
    notes.append(f"- corpus: {first['corpus']}; blocks of {first['block_size']} tokens, {first['train_blocks']} train "
                 f"blocks, perplexity over {first['eval_tokens']} held-out tokens")
    return "\n".join(_table(header, lines) + [""] + notes) + "\n"


def _plot(series: dict, path: Path, xlabel: str, ylabel: str, title: str, *, styles: dict | None = None,
          log_y: bool = False, reference: float | None = None) -> Path:
    """One line per label of ``series`` = {label: {x: [y per seed]}} (mean with the seeds' spread; ``styles``
    may give a label extra matplotlib keywords), plus an optional horizontal reference line; saved to ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in sorted(series.items()):
        xs = sorted(points)
        ax.errorbar(xs, [statistics.mean(points[x]) for x in xs],
                    yerr=[statistics.stdev(points[x]) if len(points[x]) > 1 else 0 for x in xs],
                    marker="o", capsize=3, label=label, **(styles or {}).get(label, {}))
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", label="unpruned (teacher)")
    if log_y:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _series_labeller(rows: list[dict]):
    """``label(row)``: the row's method, plus its step budget, VIB init, hidden distillation, mask learning rate,
    scale folding or fine-tune learning-rate grid where ``rows`` vary them, so a plot line never mixes them."""
    budgets = {(r["mask_steps"], r["finetune_steps"], r.get("batch_size")) for r in rows}
    inits = {r.get("log_sigma2_init", "") for r in rows} - {""}
    objectives = {r.get("hidden_distill", "") for r in rows} - {""}
    folds = {r.get("fold_scales", "") for r in rows} - {""}
    rates = {r.get("mask_lr", "") for r in rows} - {""}
    grids = {r.get("finetune_lrs", "") for r in rows} - {""}

    def label(row: dict) -> str:
        text = row["method"]
        if len(budgets) > 1:
            text += f" ({row['mask_steps']}/{row['finetune_steps']} steps, batch {row.get('batch_size')})"
        if len(inits) > 1 and row.get("log_sigma2_init"):
            text += f" (init {row['log_sigma2_init']})"
        if len(objectives) > 1 and row.get("hidden_distill"):
            text += f" ({row['hidden_distill']} hidden)"
        if len(rates) > 1 and row.get("mask_lr"):
            text += f" (mask lr {row['mask_lr']})"
        if len(folds) > 1 and row.get("fold_scales") == "False":
            text += " (scales not folded)"
        if len(grids) > 1 and row.get("finetune_lrs"):
            text += f" (FT lr {row['finetune_lrs']})"
        return text
    return label


def plot(paths: list[Path]) -> list[Path]:
    """Test accuracy after the fine-tune against the target sparsity, one PNG per encoder CSV."""
    written = []
    for path in paths:
        rows = _rows([path])
        label = _series_labeller(rows)
        series = defaultdict(lambda: defaultdict(list))
        for row in rows:
            series[label(row)][float(row["target_sparsity"])].append(float(row["test_after"]))
        teachers = {row["seed"]: float(row["teacher_test"]) for row in rows}
        written.append(_plot(series, path.with_suffix(".png"), "parameter sparsity (encoder layers)",
                             "test accuracy after fine-tune", path.stem,
                             reference=statistics.mean(teachers.values())))
    return written


def plot_decoder(path: Path) -> list[Path]:
    """Held-out perplexity (log scale) against the target sparsity, before (dotted) and after (solid) the
    fine-tune, one PNG per depth: ``decoder_lm_L<layers>.png``."""
    by_layers = defaultdict(list)
    for row in _rows([path]):
        by_layers[row["layers"]].append(row)
    written = []
    for layers, rows in sorted(by_layers.items()):
        series, styles = defaultdict(lambda: defaultdict(list)), {}
        label = _series_labeller(rows)
        colors = {name: f"C{i % 10}" for i, name in enumerate(sorted({label(row) for row in rows}))}
        for row in rows:
            for stage, line in (("before", ":"), ("after", "-")):
                name = f"{label(row)} ({stage} FT)"
                series[name][float(row["target_sparsity"])].append(float(row[f"ppl_{stage}"]))
                styles[name] = dict(color=colors[label(row)], linestyle=line,
                                    markerfacecolor="none" if stage == "before" else None)
        written.append(_plot(series, path.with_name(f"{path.stem}_L{layers}.png"),
                             "parameter sparsity (decoder layers)", "held-out perplexity",
                             f"SmolLM2-135M, {layers} layers", styles=styles, log_y=True,
                             reference=float(rows[0]["teacher_ppl"])))
    return written


def main(argv=None) -> None:
    import argparse
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", default=str(QUALITY), help=f"folder holding encoder_<task>.csv and {DECODER_CSV}")
    folder = Path(p.parse_args(argv).results)
    encoder_paths = sorted(folder.glob("encoder_*.csv"))
    decoder_path = folder / DECODER_CSV
    if not encoder_paths and not decoder_path.exists():
        sys.exit(f"no results under {folder}; run bench/quality/encoder.py or bench/quality/decoder.py first")
    sections, pngs = [], []
    if encoder_paths:
        sections.append("## Encoder classification (MiniLM-L6)\n\n" + summarize(encoder_paths))
        pngs += plot(encoder_paths)
    if decoder_path.exists():
        sections.append("## Decoder language modelling (SmolLM2-135M)\n\n" + summarize_decoder(decoder_path))
        pngs += plot_decoder(decoder_path)
    text = "# Quality study\n\n" + "\n".join(sections)
    (folder / "summary.md").write_text(text)
    print(text)
    for png in pngs:
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
