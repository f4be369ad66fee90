"""Timing, environment and CSV helpers shared by the benchmark scripts."""
import csv
import statistics
import subprocess
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def timed(fn, device: str, repeats: int = 7) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of ``fn()``; do_bench on a GPU, wall clock after a warm-up on CPU."""
    if device == "cuda":
        import triton.testing
        return tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(samples, n=5)
    return statistics.median(samples), q[0], q[3]


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return "none"


def environment(device: str) -> dict:
    """The columns every CSV row starts with: device, versions, git sha."""
    return dict(device=device_name(device), torch=torch.__version__, triton=triton_version(),
                cuda=torch.version.cuda or "none", sha=git_sha())


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` to the CSV at ``path`` (header written when the file is new)."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new_file:
            writer.writeheader()
        writer.writerows(rows)
    print(f"rows appended to {path}")
