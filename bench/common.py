"""Timing, environment and CSV helpers shared by the benchmark scripts."""
import csv
import statistics
import subprocess
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def default_device() -> str:
    """Where benchmarks and studies run by default: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def timed(fn, device: str, repeats: int = 7, rep_ms: int = 100) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of ``fn()``: on a GPU triton's do_bench over about ``rep_ms`` of
    runs after its warm-up; on CPU the wall clock of ``repeats`` runs after one warm-up run."""
    if device == "cuda":
        import triton.testing
        return tuple(triton.testing.do_bench(fn, rep=rep_ms, quantiles=[0.5, 0.2, 0.8]))
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(samples, n=5)
    return statistics.median(samples), q[0], q[3]


def timing(median: float, p20: float, p80: float) -> dict:
    """The timing columns of a CSV row."""
    return dict(median_ms=f"{median:.4f}", p20_ms=f"{p20:.4f}", p80_ms=f"{p80:.4f}")


def peak_mib(fn, device: str) -> str:
    """Peak GPU memory (MiB, allocated by torch) during one ``fn()`` call, everything already allocated
    included; "" on CPU, where torch keeps no such statistic."""
    if device != "cuda":
        fn()
        return ""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return f"{torch.cuda.max_memory_allocated() / 2**20:.1f}"


def copy_bandwidth(x: torch.Tensor, device: str) -> tuple[float, tuple[float, float, float]]:
    """Bandwidth of copying ``x`` (read + write, GB/s at the median time; the roofline of an elementwise op
    on ``x``) and the (median, p20, p80) milliseconds of the copy."""
    times = timed(lambda: x.clone(), device)
    return 2 * x.numel() * x.element_size() / times[0] / 1e6, times


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
    """Append ``rows`` to the CSV at ``path`` (header written when the file is new). Rows with columns the file
    lacks rewrite it with the union of the columns (older rows leave the new ones empty), so a column added
    between runs never shifts values under the wrong header."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    header = []
    if path.exists():
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
    columns = list(dict.fromkeys(key for row in rows for key in row))
    if header and not set(columns) <= set(header):
        with path.open(newline="") as f:
            old = list(csv.DictReader(f))
        write_rows(path, old + rows)
    else:
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header or columns, restval="")
            if not header:
                writer.writeheader()
            writer.writerows(rows)
    print(f"rows appended to {path}")


def write_rows(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` to a new CSV at ``path``; the header is the union of the rows' keys in order of first
    appearance, and a row lacking a column leaves it empty."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def op_bench_main(doc: str, run, default_csv: Path) -> list[dict]:
    """The command line every per-op microbenchmark shares (``--smoke``, ``--device``, ``--csv``): runs
    ``run(device, smoke)``, appends its rows to the CSV and returns them. Without a GPU only the smoke shape runs."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny shape only (seconds; what CPU runs do)")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--csv", type=Path, default=default_csv)
    args = parser.parse_args()
    if args.device != "cuda":
        print("no GPU: only the CPU smoke shape runs; the GPU figures and goals need a GPU")
    rows = run(args.device, args.smoke or args.device != "cuda")
    append_rows(args.csv, rows)
    return rows
