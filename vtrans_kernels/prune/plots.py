"""Plots of a pruning run (matplotlib, written as PNG): kept units per layer, and sparsity and loss over steps."""
from __future__ import annotations

import io
from pathlib import Path

from ..fileio import write_bytes


def plot_run(records: list[dict], kept: dict, out_dir: str | Path) -> list[Path]:
    """Write ``kept_units.png`` (fraction of units kept per layer and structure, from ``kept`` =
    ``{"heads": [(kept, total) per layer], "ffn": [...], "hidden": (kept, total)}``) and ``training.png``
    (expected and actual sparsity, target and loss over the logged steps). Returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for offset, structure in ((-0.2, "heads"), (0.2, "ffn")):
        layers = kept.get(structure) or []
        ax.bar([i + offset for i in range(len(layers))], [k / t for k, t in layers], width=0.4, label=structure)
    if kept.get("hidden"):
        k, t = kept["hidden"]
        ax.axhline(k / t, color="k", linestyle="--", label=f"hidden ({k}/{t})")
    ax.set(xlabel="layer", ylabel="fraction kept", ylim=(0, 1.05), title="Kept units per layer")
    ax.legend()
    fig.tight_layout()
    written.append(_save(fig, out_dir / "kept_units.png"))
    plt.close(fig)

    if records:
        steps = [r["step"] for r in records]
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
        for key in ("expected_sparsity", "sparsity", "target_now"):
            left.plot(steps, [r.get(key) for r in records], label=key)
        left.set(xlabel="step", ylabel="sparsity", title="Sparsity")
        left.legend()
        right.plot(steps, [r.get("loss") for r in records], label="total (with Lagrangian)")
        right.plot(steps, [r.get("data_loss") for r in records], label="task + distillation")
        right.set(xlabel="step", title="Loss")
        right.legend()
        fig.tight_layout()
        written.append(_save(fig, out_dir / "training.png"))
        plt.close(fig)
    return written


def _save(fig, path: Path) -> Path:
    """PNG bytes of ``fig`` written through a temporary file (never through a link planted at ``path``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return write_bytes(path, buffer.getvalue())
