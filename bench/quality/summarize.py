"""Tables and plots of the quality study from its CSVs: bench/results/quality/summary.md and one
accuracy-vs-sparsity PNG per task (mean over seeds, with the spread when there are several)."""
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from common import RESULTS_DIR  # noqa: E402

QUALITY = RESULTS_DIR / "quality"


def _mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def summarize(paths: list[Path]) -> str:
    groups = defaultdict(list)
    teachers = {}
    for path in paths:
        for row in csv.DictReader(path.open()):
            groups[(row["task"], float(row["target_sparsity"]), row["method"])].append(row)
            teachers[(row["task"], row["seed"])] = float(row["teacher_test"])
    lines = ["| task | target | method | seeds | achieved | test acc. before FT | test acc. after FT | "
             "mask time (s) | CPU latency (ms) | machine |", "|" + "---|" * 10]
    for (task, target, method), rows in sorted(groups.items()):
        pick = lambda key: [float(r[key]) for r in rows]  # noqa: E731
        lines.append(f"| {task} | {target} | {method} | {len(rows)} | {statistics.mean(pick('achieved_sparsity')):.3f} "
                     f"| {_mean_spread(pick('test_before'))} | {_mean_spread(pick('test_after'))} "
                     f"| {statistics.mean(pick('mask_time_s')):.0f} | {statistics.mean(pick('cpu_latency_ms')):.1f} "
                     f"| {rows[0]['device']}, {rows[0]['machine']} |")
    teacher_lines = [f"- teacher test accuracy, {task} seed {seed}: {acc:.4f}" for (task, seed), acc in
                     sorted(teachers.items())]
    return "\n".join(lines + [""] + teacher_lines) + "\n"


def plot(paths: list[Path]) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for path in paths:
        series = defaultdict(lambda: defaultdict(list))
        for row in csv.DictReader(path.open()):
            series[row["method"]][float(row["target_sparsity"])].append(float(row["test_after"]))
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, points in sorted(series.items()):
            xs = sorted(points)
            ax.errorbar(xs, [statistics.mean(points[x]) for x in xs],
                        yerr=[statistics.stdev(points[x]) if len(points[x]) > 1 else 0 for x in xs],
                        marker="o", capsize=3, label=method)
        ax.set(xlabel="parameter sparsity (encoder layers)", ylabel="test accuracy after fine-tune",
               title=path.stem)
        ax.legend()
        fig.tight_layout()
        written.append(path.with_suffix(".png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def main(argv=None) -> None:
    import argparse
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", default=str(QUALITY), help="folder holding encoder_<task>.csv files")
    folder = Path(p.parse_args(argv).results)
    paths = sorted(folder.glob("encoder_*.csv"))
    if not paths:
        sys.exit(f"no results under {folder}; run bench/quality/encoder.py first")
    table = summarize(paths)
    (folder / "summary.md").write_text("# Quality study: encoder classification\n\n" + table)
    print(table)
    for png in plot(paths):
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
