"""From the suite's CSV: one PNG plot per section and a markdown summary with the ratios and the goals.

Goals checked (GPU figures only; a CPU run is marked as a smoke test):
- train: vtrans >= 1.5x the eager (CoFi-style) tokens/s, <= 0.75x its peak memory, plain fine-tuning
  <= 1.2x the vtrans tokens/s;
- compaction: speedup >= 0.8x the FLOPs reduction for the BERT-base shape at batch 32 x seq 128.
"""
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CPU_NOTE = "GPU figures need a GPU: this CPU run is a smoke test, its numbers say nothing about the GPU goals."
TABLE_COLUMNS = {
    "ceilings": ["op", "shape", "dtype", "impl", "median_ms", "gb_per_s", "tflops", "note"],
    "kernels": ["op", "shape", "dtype", "mode", "impl", "median_ms", "p20_ms", "p80_ms", "tflops", "gb_per_s",
                "frac_ceiling", "ceiling", "peak_mib", "*ratios", "note"],
    "train": ["op", "shape", "dtype", "variant", "impl", "median_ms", "tokens_per_s", "peak_mib",
              "speedup_vs_eager", "speedup_vs_torch_backend", "memory_vs_eager", "plain_vs_vtrans"],
    "compaction": ["op", "shape", "dtype", "mode", "impl", "sparsity", "median_ms", "tokens_per_s", "speedup",
                   "flops_reduction", "speedup_over_flops"],
}
RATIO_PREFIXES = ("speedup", "ratio", "vs_", "x_")


def read_rows(path: Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def summarize(csv_path: Path, out_dir: Path) -> str:
    """Write ``<section>.png`` per section and ``summary.md`` into ``out_dir``; returns the markdown."""
    rows = read_rows(csv_path)
    out_dir = Path(out_dir)
    by_section: dict[str, list[dict]] = {}
    for row in rows:
        by_section.setdefault(row["section"], []).append(row)
    env = rows[0] if rows else {}
    lines = ["# vtrans-kernels benchmark suite", "",
             f"device {env.get('device', '?')}, torch {env.get('torch', '?')}, triton {env.get('triton', '?')}, "
             f"CUDA {env.get('cuda', '?')}, git {env.get('sha', '?')}; CSV: `{csv_path}`", ""]
    if env.get("device") == "cpu":
        lines += [f"**{CPU_NOTE}**", ""]
    for section, section_rows in by_section.items():
        PLOTS[section](section_rows, out_dir / f"{section}.png")
        lines += [f"## {section}", "", f"![{section}]({section}.png)", "", *_table(section_rows, section), ""]
        lines += GOALS.get(section, lambda r, cpu: [])(section_rows, env.get("device") == "cpu")
    text = "\n".join(lines).rstrip() + "\n"
    (out_dir / "summary.md").write_text(text)
    return text


# ---- markdown -------------------------------------------------------------------------------------------
def _table(rows: list[dict], section: str) -> list[str]:
    """A markdown table of the section's columns that any row fills (``*ratios``: every ratio column)."""
    wanted = []
    for column in TABLE_COLUMNS[section]:
        wanted += [c for c in rows[0] if c.startswith(RATIO_PREFIXES)] if column == "*ratios" else [column]
    columns = [c for c in dict.fromkeys(wanted) if any(row.get(c) for row in rows)]
    return [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}",
            *(f"| {' | '.join(row.get(c) or '' for c in columns)} |" for row in rows)]


def _verdict(value: str | None, goal: float, at_least: bool) -> str:
    if not value:
        return "n/a"
    met = float(value) >= goal if at_least else float(value) <= goal
    return f"{value} ({'met' if met else 'MISSED'})"


def _train_goals(rows: list[dict], cpu: bool) -> list[str]:
    lines = ["Goals (vtrans against eager: tokens/s >= 1.5x, peak memory <= 0.75x; plain / vtrans tokens/s <= 1.2x)"
             + (" -- CPU smoke run, not a GPU verdict:" if cpu else ":"), ""]
    for row in rows:
        if row["impl"] == "vtrans":
            lines.append(f"- {row['op']} {row['shape']} {row['variant']}: speedup "
                         f"{_verdict(row.get('speedup_vs_eager'), 1.5, True)}, memory "
                         f"{_verdict(row.get('memory_vs_eager'), 0.75, False)}"
                         f"{' (peak memory needs a GPU)' if cpu else ''}, plain "
                         f"{_verdict(row.get('plain_vs_vtrans'), 1.2, False)}")
    return lines + [""]


def _compaction_goals(rows: list[dict], cpu: bool) -> list[str]:
    goal_rows = [r for r in rows if r["op"] == "bert" and r["impl"] != "dense" and r["shape"] == "32x128"]
    if not goal_rows:
        return ["Goal (speedup >= 0.8x the FLOPs reduction, BERT-base at batch 32 x seq 128): not measured in this "
                "run" + (" (CPU shapes)" if cpu else ""), ""]
    return ["Goal (speedup >= 0.8x the FLOPs reduction, BERT-base at batch 32 x seq 128):", "",
            *(f"- {r['impl']} at sparsity {r['sparsity']}: speedup / FLOPs reduction "
              f"{_verdict(r['speedup_over_flops'], 0.8, True)}" for r in goal_rows), ""]


GOALS = {"train": _train_goals, "compaction": _compaction_goals}


# ---- plots ----------------------------------------------------------------------------------------------
def _bars(ax, labels: list[str], values: list[float], xlabel: str, log: bool = False) -> None:
    ax.barh(range(len(values)), values)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if log:
        ax.set_xscale("log")


def _save(fig, path: Path, title: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_ceilings(rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.5))
    for ax, (op, column, unit) in zip(axes, (("copy", "gb_per_s", "GB/s"), ("gemm", "tflops", "TFLOP/s"))):
        found = [r for r in rows if r["op"] == op]
        _bars(ax, [f"{op} {r['dtype']}" for r in found], [float(r[column]) for r in found], unit)
    _save(fig, path, f"ceilings on {rows[0]['device']}")


def _plot_kernels(rows: list[dict], path: Path) -> None:
    rows = [r for r in rows if r.get("median_ms")]  # not the missing or failed scripts
    fig, ax = plt.subplots(figsize=(8, 1 + 0.18 * max(len(rows), 1)))
    _bars(ax, [f"{r['op']} {r['shape']} {r['mode']} {r['impl']}" for r in rows],
          [float(r["median_ms"]) for r in rows], "median ms (log)", log=True)
    _save(fig, path, "kernel microbenchmarks")


def _plot_train(rows: list[dict], path: Path) -> None:
    labels = [f"{r['op']} {r['variant']} {r['impl']}" for r in rows]
    peaks = [float(r["peak_mib"]) for r in rows if r.get("peak_mib")]
    fig, axes = plt.subplots(1, 2 if peaks else 1, figsize=(10 if peaks else 6, 1 + 0.25 * len(rows)), squeeze=False)
    _bars(axes[0][0], labels, [float(r["tokens_per_s"]) for r in rows], "tokens/s")
    if peaks:
        _bars(axes[0][1], labels, peaks, "peak MiB")
    _save(fig, path, "mask-training step")


def _plot_compaction(rows: list[dict], path: Path) -> None:
    archs = list(dict.fromkeys(r["op"] for r in rows))
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 3.5), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        curves: dict[tuple, list[dict]] = {}
        for r in rows:
            if r["op"] == arch and r["impl"] != "dense":
                curves.setdefault((r["mode"], r["impl"], r["shape"]), []).append(r)
        for (mode, impl, shape), points in curves.items():
            ax.plot([float(p["sparsity"]) for p in points], [float(p["speedup"]) for p in points], marker="o",
                    label=f"{mode} {impl} {shape}")
        flops = {float(p["sparsity"]): float(p["flops_reduction"])
                 for (_, impl, _), pts in curves.items() if impl == "compact" for p in pts}
        ax.plot(sorted(flops), [flops[s] for s in sorted(flops)], "k--", label="FLOPs reduction")
        ax.set(title=arch, xlabel="sparsity", ylabel="speedup over dense")
        ax.legend(fontsize=6)
    _save(fig, path, "compacted models")


PLOTS = {"ceilings": _plot_ceilings, "kernels": _plot_kernels, "train": _plot_train,
         "compaction": _plot_compaction}
