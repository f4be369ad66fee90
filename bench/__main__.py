"""The benchmark suite of vtrans-kernels, one entry point: ``python -m bench`` (or ``vtrans bench``).

Sections, in order (``--only`` picks some):
1. ceilings: copy bandwidth and bf16 GEMM rate of the device in hand (bench/ceilings.py);
2. kernels: the per-op scripts (mask ops, masked linear / SwiGLU FFN, masked attention, masked norms) with
   their baselines, each row also as a fraction of the measured ceiling (bench/kernel_suite.py);
3. train: one mask-training step of Faster-VTrans and VTrans, vtrans-kernels against eager masking and plain
   fine-tuning (bench/train_step.py);
4. compaction: dense against compacted models at 50/75/90% sparsity (bench/bench_compacted.py).
Every row goes to ``OUT/suite.csv`` (rewritten after each section, so a crash keeps what was measured);
then ``OUT/<section>.png`` and ``OUT/summary.md`` come from the CSV, and the summary is printed last.
Without a GPU the suite runs small shapes as a smoke test (``--smoke``: the smallest, for CI).
"""
import argparse
import contextlib
import time
from pathlib import Path

import torch

from . import bench_compacted, ceilings, kernel_suite, summary, train_step
from .common import RESULTS_DIR, default_device, write_rows

SECTIONS = ("ceilings", "kernels", "train", "compaction")
FIRST_COLUMNS = ("device", "torch", "triton", "cuda", "sha", "section", "op", "shape", "dtype", "mode", "impl",
                 "median_ms", "p20_ms", "p80_ms")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="smallest shapes (the CPU smoke test of CI)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "suite", help="folder for the CSV, plots, summary")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown or not only:
        parser.error(f"--only: expected a comma-separated subset of {','.join(SECTIONS)}, got {args.only!r}")
    device = args.device or default_device()
    if device != "cuda":
        print(f"*** {summary.CPU_NOTE} ***")
    csv_path = args.out / "suite.csv"
    # The CPU smoke test uses one thread: on a busy shared CI machine competing threads make it 5x slower.
    with _threads(1 if args.smoke and device != "cuda" else torch.get_num_threads()):
        rows, measured = [], {}
        for section in (s for s in SECTIONS if s in only):
            print(f"== {section}")
            start = time.perf_counter()
            found = _run_section(section, device, args.smoke, measured)
            rows += [_ordered(dict(row, section=section)) for row in found]
            write_rows(csv_path, rows)
            print(f"== {section}: {len(found)} rows in {time.perf_counter() - start:.1f} s")
    print(f"wrote {csv_path}")
    print(summary.summarize(csv_path, args.out))
    print(f"wrote {args.out / 'summary.md'} and the plots beside it")
    if device != "cuda":
        print(f"*** {summary.CPU_NOTE} ***")
    return 0


def _run_section(section: str, device: str, smoke: bool, measured: dict) -> list[dict]:
    """The section's rows; the ceilings are remembered for the kernel rows' fractions."""
    if section == "ceilings":
        found = ceilings.run(device, smoke)
        measured.update(ceilings.values(found))
        return found
    if section == "kernels":
        if not measured:
            print("(no ceilings measured in this run: kernel rows get no fraction of the ceiling)")
        return kernel_suite.run(device, smoke, measured)
    if section == "train":
        return train_step.run(device, smoke)
    return bench_compacted.run(device, smoke)


@contextlib.contextmanager
def _threads(count: int):
    """torch's CPU threads set to ``count`` within the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _ordered(row: dict) -> dict:
    """The row with the columns every row has first, in a fixed order (missing ones empty)."""
    return {**{c: row.get(c, "") for c in FIRST_COLUMNS}, **row}


if __name__ == "__main__":
    raise SystemExit(main())
