"""Kernel microbenchmarks: calls each per-op script's ``run(device, smoke)`` and puts its rows in the suite.

Each script times forward, backward and full against its baselines in the same run (unmasked cuBLAS/SDPA,
the eager PyTorch composition, torch.compile of it). Here every row that carries GB/s or TFLOP/s gets the
fraction of the measured ceiling (copy bandwidth or GEMM rate). A script that is absent, lacks ``run`` or
fails gives one row with impl "missing" or "failed" and the reason, and the suite goes on.
"""
import importlib
import traceback

from .common import environment

# script module in bench/ -> what it measures
SCRIPTS = {
    "bench_masks": "mask ops (VIB gate)",
    "bench_masked_linear": "masked linear and SwiGLU FFN",
    "bench_masked_attention": "masked attention",
    "bench_masked_norm": "masked LayerNorm / RMSNorm",
}


def run(device: str, smoke: bool, ceilings: dict | None = None) -> list[dict]:
    """Rows of every script in :data:`SCRIPTS`, with ``section`` "kernels" and, given ``ceilings`` (see
    :func:`bench.ceilings.values`), ``frac_ceiling`` and the ``ceiling`` it refers to."""
    rows = []
    for script, what in SCRIPTS.items():
        print(f"-- kernels: {script} ({what})")
        try:
            found = _load(script).run(device, smoke)
        except Exception as err:  # a broken or unfinished script must not stop the suite
            rows.append(_problem_row(device, script, err))
            continue
        rows += [dict(row, section="kernels", **_ceiling_fraction(row, ceilings)) for row in found]
    return rows


def _load(script: str):
    return importlib.import_module(f"bench.{script}")


def _problem_row(device: str, script: str, err: Exception) -> dict:
    absent = isinstance(err, ModuleNotFoundError) and err.name == f"bench.{script}"
    lacks_run = isinstance(err, AttributeError) and err.name == "run"
    status = "missing" if absent or lacks_run else "failed"
    reason = f"{type(err).__name__}: {err}"
    print(f"   {status.upper()}: bench/{script}.py: {reason}")
    if status == "failed":
        traceback.print_exception(err)
    return dict(**environment(device), section="kernels", op=script, shape="", dtype="", mode="", impl=status,
                note=reason)


def _ceiling_fraction(row: dict, ceilings: dict | None) -> dict:
    """TFLOP/s against the GEMM rate, else GB/s against the copy bandwidth; nothing without a ceiling."""
    if not ceilings:
        return {}
    for column, ceiling in (("tflops", "gemm"), ("gb_per_s", "copy")):
        if row.get(column) not in (None, ""):
            return {"frac_ceiling": f"{float(row[column]) / ceilings[column]:.3f}", "ceiling": ceiling}
    return {}
