"""Compile every Triton kernel of the package for real GPUs (sm_90 and sm_80 by default) on a machine without one.

    python -m bench.compile_check [--full] [--arch 90 80] [--out bench/results/compile/triton-<version>]

Each target compiles in its own process (vtrans_kernels.triton.compile_only: one stand-in GPU per process),
both in parallel, with a fresh Triton cache so that ptxas reports every kernel's spills. Writes
``OUT/kernels.csv`` (one row per kernel variant: case, target, constexprs, warps, stages, shared memory,
registers, spill bytes, error), ``OUT/failures.csv`` (launcher calls that raised) and ``OUT/summary.md`` (kernel
families x targets), prints the summary, and exits 1 when a call failed, a variant exceeded a limit, or a 16-bit
variant spilled. ``tests/test_gpu_compile.py`` runs the quick set in CI.
"""
import argparse
import csv
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "compile"
FIELDS = ("case", "arch", "kernel", "num_warps", "num_stages", "shared", "registers", "spill_bytes", "error",
          "constexprs")


#: the varying rows (batch 8 x sequence 32..512) of the tuning-count run: as a training run sees them
TUNING_ROWS = [8 * s for s in range(32, 513, 10)]
BUCKETS_PER_TUNING_RUN = 5  # 256 .. 4096 rows: buckets 256, 512, 1024, 2048, 4096


def _count_tunings(compile_only, call_linear) -> dict:
    """How many times the masked linear autotuner tunes over a run of varying row counts."""
    import importlib
    tuned = importlib.import_module("vtrans_kernels.triton.masked_linear")._forward_tuned
    before = len(tuned.cache)
    with compile_only.case("tuning-count masked_linear bf16"):
        for rows in TUNING_ROWS:
            call_linear(rows)
    return {"shapes": len(set(TUNING_ROWS)), "tunings": len(tuned.cache) - before}


def _worker(arch: int, full: bool, out: Path) -> None:
    """Compile the cases for one target in this process; write the records, failures and the tuning count
    as JSON."""
    from vtrans_kernels.triton import compile_only
    from . import compile_cases

    records = compile_only.activate(arch)
    failures = []
    start = time.time()
    for label, call in compile_cases.cases(full):
        with compile_only.case(label):
            try:
                call()
            except Exception as err:  # every failure is reported, none stops the sweep
                failures.append({"case": label, "arch": arch, "error": f"{type(err).__name__}: {err}"[:2000]})
    tunings = _count_tunings(compile_only, compile_cases.linear_rows_call)
    cpu = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    out.write_text(json.dumps({"records": [dataclasses.asdict(r) for r in records], "failures": failures,
                               "seconds": time.time() - start, "cpu_seconds": cpu, "tunings": tunings}))


def run(archs=(90, 80), full: bool = False, out: Path = RESULTS / "latest") -> dict:
    """Compile for each target in parallel subprocesses; returns {"records", "failures", "seconds"} merged and
    writes the CSVs and summary under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DUMP_PTXAS_LOG"] = "1"
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        procs = {}
        for arch in archs:
            env_arch = dict(env, TRITON_CACHE_DIR=str(Path(tmp) / f"cache{arch}"))
            cmd = [sys.executable, "-m", "bench.compile_check", "--worker", str(arch),
                   "--json", str(Path(tmp) / f"{arch}.json")] + (["--full"] if full else [])
            procs[arch] = subprocess.Popen(cmd, env=env_arch, cwd=root, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True)
        merged = {"records": [], "failures": [], "seconds": {}, "cpu_seconds": {}, "tunings": {}}
        for arch, proc in procs.items():
            log, _ = proc.communicate()
            path = Path(tmp) / f"{arch}.json"
            if proc.returncode != 0 or not path.exists():
                merged["failures"].append({"case": "(worker)", "arch": arch,
                                           "error": f"worker exited {proc.returncode}: {log[-3000:]}"})
                continue
            part = json.loads(path.read_text())
            merged["records"] += part["records"]
            merged["failures"] += part["failures"]
            merged["seconds"][arch] = round(part["seconds"], 1)
            merged["cpu_seconds"][arch] = round(part["cpu_seconds"], 1)
            merged["tunings"][arch] = part["tunings"]
    _write(merged, out)
    return merged


def _linear_estimate_low(r: dict) -> bool:
    """True when the masked linear tile estimate (linear_configs.shared_bytes) is below the compiler's number:
    then the pre-launch pruning could keep a tile that does not fit."""
    if not (r["case"].startswith(("masked_linear ", "masked_swiglu ")) and r["kernel"] == "_forward_kernel"):
        return False
    import triton
    from vtrans_kernels.triton import linear_configs
    c = r["constexprs"]
    cfg = triton.Config({k: c[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")}, num_warps=r["num_warps"],
                        num_stages=r["num_stages"])
    operand_bytes = 4 if " fp32 " in f" {r['case']} " else 2
    return linear_configs.shared_bytes(cfg, operand_bytes, 2 if c["SWIGLU"] else 1, r["arch"],
                                       c.get("IN_GATE", 0)) < r["shared"]


#: masked-norm programs hold whole rows; wider rows than this spill (reported, not failed) until the norms get a
#: column-tiled kernel
NORM_SPILL_FREE_WIDTH = 2048


def _known_spill(r: dict) -> bool:
    return "_norm" in r["case"].split(" ")[0] and r["constexprs"].get("BLOCK_H", 0) > NORM_SPILL_FREE_WIDTH


def problems(result: dict) -> list[str]:
    """Every reason the check fails: failed calls, variants over a limit, 16-bit variants that spill (but norm
    rows wider than NORM_SPILL_FREE_WIDTH), a tile estimate below the compiler's shared memory, a linear
    autotuner that tunes more than once per row bucket."""
    found = [f"sm_{f['arch']} {f['case']}: {f['error']}" for f in result["failures"]]
    for r in result["records"]:
        where = f"sm_{r['arch']} {r['case']} {r['kernel']} {r['constexprs']} warps={r['num_warps']} " \
                f"stages={r['num_stages']}"
        if r["error"]:
            found.append(f"{where}: {r['error']}")
        elif r["spill_bytes"] and " fp32 " not in f" {r['case']} " and not _known_spill(r):
            found.append(f"{where}: spills {r['spill_bytes']} bytes")
        if _linear_estimate_low(r):
            found.append(f"{where}: shared memory {r['shared']} above the tile estimate")
    for arch, count in result["tunings"].items():
        if count["tunings"] > BUCKETS_PER_TUNING_RUN:
            found.append(f"sm_{arch}: masked_linear tuned {count['tunings']} times over {count['shapes']} row counts "
                         f"(at most {BUCKETS_PER_TUNING_RUN} row buckets expected)")
    return found


def _family(case: str) -> str:
    return case.split(" ")[0]


def summary(result: dict) -> str:
    """A markdown table, one row per launcher (op family) x target: variants compiled, shared memory, registers
    and spills at their maxima."""
    groups = defaultdict(list)
    for r in result["records"]:
        groups[(_family(r["case"]), r["arch"])].append(r)
    failed = defaultdict(int)
    for f in result["failures"]:
        failed[(_family(f["case"]), f["arch"])] += 1
    lines = ["| launcher | target | variants | max shared (B) | max registers | spilling variants (16-bit / fp32) "
             "| failed calls |", "|---|---|---|---|---|---|---|"]
    for (family, arch) in sorted(set(groups) | set(failed), key=lambda k: (k[0], -k[1])):
        rows = groups.get((family, arch), [])
        spill16 = sum(1 for r in rows if r["spill_bytes"] and " fp32 " not in f" {r['case']} ")
        spill32 = sum(1 for r in rows if r["spill_bytes"] and " fp32 " in f" {r['case']} ")
        lines.append(f"| {family} | sm_{arch} | {len(rows)} | {max((r['shared'] for r in rows), default=0)} | "
                     f"{max((r['registers'] or 0 for r in rows), default=0)} | {spill16} / {spill32} | "
                     f"{failed.get((family, arch), 0)} |")
    import triton
    versions = f"triton {triton.__version__}, ptxas of that wheel, CPU-only machine (stand-in driver)"
    secs = ", ".join(f"sm_{a}: {s} s wall, {result['cpu_seconds'][a]} s CPU" for a, s in result["seconds"].items())
    tunings = ", ".join(f"sm_{a}: {t['tunings']} tunings over {t['shapes']} row counts"
                        for a, t in result["tunings"].items())
    return (f"Compiled with {versions}.\n\n" + "\n".join(lines)
            + f"\n\nCompile time per target (one process each, in parallel): {secs}\n"
            + f"masked_linear autotuning: {tunings}\n")


def _write(result: dict, out: Path) -> None:
    with open(out / "kernels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in result["records"]:
            writer.writerow({k: (json.dumps(r[k], sort_keys=True) if k == "constexprs" else r[k]) for k in FIELDS})
    with open(out / "failures.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("case", "arch", "error"))
        writer.writeheader()
        writer.writerows(result["failures"])
    (out / "summary.md").write_text(summary(result))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every dtype with every flag (slower)")
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="compute capabilities (90 80)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for kernels.csv, failures.csv, summary.md "
                             "(default: results/compile/triton-<version>)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        _worker(args.worker, args.full, args.json)
        return 0
    import triton
    result = run(tuple(args.arch), args.full, args.out or RESULTS / f"triton-{triton.__version__}")
    print(summary(result))
    found = problems(result)
    for line in found:
        print("FAIL", line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
