"""Tables and figures of the quality study from its CSVs: bench/results/quality/summary.md (the encoder
classification table from encoder_<task>*.csv, the decoder language-modelling table from decoder_lm.csv: every
ablation, one line each) and the headline figures of figures.py (each method at the study's headline settings:
encoder_<task>.png, accuracy vs sparsity; decoder_lm.png, perplexity vs sparsity).

    python bench/quality/summarize.py [--results bench/results/quality]
"""
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from common import RESULTS_DIR  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
import figures  # noqa: E402

QUALITY = RESULTS_DIR / "quality"
DECODER_CSV = "decoder_lm.csv"
# decoder.py --unit-ranking -> what a row's label adds (the masks' own units add nothing)
RANKING_LABELS = {"calibration": ", the one-shot scores' units at the masks' counts",
                  "calibration_ffn": ", the one-shot scores' FFN neurons at the masks' counts (the masks' heads)"}


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


def objective_label(method: str, start: str, settle: str, size_count: str, warmup: str = "",
                    structures: str = "", quench: str = "", quench_gradient: str = "", allocation: str = "") -> str:
    """A table's method label: rows of the objective that settles on the target (``start`` set; they may start
    from the one-shot plan, VIB rows may use DESIGN's soft size count, and the target may ramp over another
    fraction of the steps, or quench the gate noise in the last ones, with the straight-through gradient, or share
    the target by another allocation) say so in brackets; rows that prune a subset of the structures (any method)
    say which in parentheses."""
    label = method
    if start:
        label += (f" [{'one-shot start, ' if start == 'oneshot' else ''}settle {settle}"
                  f"{', soft count' if size_count else ''}{f', warm-up {warmup}' if warmup else ''}"
                  f"{f', quench {quench}' if quench else ''}"
                  f"{' straight-through' if quench_gradient else ''}"
                  f"{f', same fraction per {allocation}' if allocation else ''}]")
    return label + (f" (prunes {structures} only)" if structures else "")


def summarize(paths: list[Path]) -> str:
    """The encoder table (one line per task, target, method and step budget) and the teachers' test accuracies."""
    rows = _rows(paths)
    teachers = {(r["task"], r["seed"]): float(r["teacher_test"]) for r in rows}
    lines = []
    # budgets, VIB initialisations, scale folding and learning-rate grids never mix in a line
    keys = ("task", "target_sparsity", "method", "log_sigma2_init", "fold_scales", "finetune_lrs", "mask_steps",
            "finetune_steps", "mask_start", "settle_fraction", "size_count", "warmup_fraction", "structures",
            "quench_fraction", "compact_from", "quench_gradient", "allocation")
    for (task, target, method, init, fold, lrs, _, _, start, settle, count, warmup, structures, quench, source,
         gradient, allocation), group in _groups(rows, keys).items():
        method = objective_label(method, start, settle, count, warmup, structures, quench, gradient, allocation)
        if source == "original":
            method += ", its units compacted from the weights before mask training"
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
    """The decoder table (one line per depth, held-out set, target, method, mask settings and step budget:
    held-out perplexity before and after the distilled fine-tune) and the unpruned model's perplexity per depth
    and held-out set (perplexities over different held-out tokens are never averaged or compared in a line)."""
    rows = _rows([path])
    teachers = {(r["layers"], r["eval_tokens"]): float(r["teacher_ppl"]) for r in rows}
    lines = []
    keys = ("layers", "eval_tokens", "target_sparsity", "method", "log_sigma2_init", "hidden_distill", "mask_lr",
            "fold_scales", "mask_start", "settle_fraction", "size_count", "warmup_fraction", "structures",
            "quench_fraction", "quench_gradient", "unit_ranking", "allocation", "mask_steps", "finetune_steps",
            "batch_size")
    for (layers, tokens, target, method, init, hidden, lr, fold, start, settle, count, warmup, structures, quench,
         gradient, ranking, allocation, *_), group in _groups(rows, keys).items():
        method = objective_label(method, start, settle, count, warmup, structures, quench, gradient, allocation)
        method += RANKING_LABELS.get(ranking, "")
        pick = lambda key, group=group: _column(group, key)  # noqa: E731
        lines.append(f"| {layers} | {tokens} | {target} | {method} | {init if init != '' else '-'} | {hidden or '-'} "
                     f"| {lr if lr != '' else '-'} | {_yes_no(fold)} "
                     f"| {len(group)} "
                     f"| {statistics.mean(pick('achieved_sparsity')):.3f} "
                     f"| {_optional_mean(group, 'mask_decision_sparsity', 3)} "
                     f"| {_mean_spread(pick('ppl_before'), 2)} | {_mean_spread(pick('ppl_after'), 2)} "
                     f"| {statistics.mean(pick('mask_time_s')):.0f} | {statistics.mean(pick('finetune_time_s')):.0f} "
                     f"| {statistics.mean(pick('cpu_latency_ms')):.1f} | {_optional_mean(group, 'gpu_latency_ms', 2)} "
                     f"| {group[0]['mask_steps']} / {group[0]['finetune_steps']}, {group[0]['batch_size']} "
                     f"| {group[0]['device']}, {group[0]['machine']} |")
    header = ["layers", "held-out tokens", "target", "method", "VIB log σ² init", "hidden distill", "mask lr", "scales folded", "seeds",
              "achieved", "masks' own", "held-out ppl before FT", "held-out ppl after FT", "mask time (s)",
              "FT time (s)", "CPU latency (ms)", "GPU bf16 latency (ms)", "mask / FT steps, batch", "machine"]
    first = rows[0]
    notes = [f"- unpruned SmolLM2-135M ({layers} layers) held-out perplexity over {tokens} tokens: {ppl:.2f}"
             for (layers, tokens), ppl in sorted(teachers.items(), key=lambda item: tuple(map(int, item[0])))]
    notes.append(f"- corpus: {first['corpus']}; blocks of {first['block_size']} tokens, {first['train_blocks']} train "
                 f"blocks")
    return "\n".join(_table(header, lines) + [""] + notes) + "\n"


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
        pngs += figures.encoder_figures(_rows(encoder_paths), folder)
    if decoder_path.exists():
        sections.append("## Decoder language modelling (SmolLM2-135M)\n\n" + summarize_decoder(decoder_path))
        pngs += figures.decoder_figures(_rows([decoder_path]), folder)
    text = "# Quality study\n\n" + "\n".join(sections)
    (folder / "summary.md").write_text(text)
    print(text)
    for png in pngs:
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
