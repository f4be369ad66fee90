"""The GPU check: what to run first on a machine with a GPU (``make gpu-check``, at most about 8 minutes).

    python -m bench.gpu_check [--out bench/results/gpu-check/<device>] [--budget 480]

Steps, each with its own time limit and log, in one folder named by the device:
1. ``info``: ``python -m vtrans_kernels.info`` (versions, backends, build info);
2. ``op-tests``: every op test on CUDA (the device_backend fixtures add the cuda cases), the GPU-only tests and
   the fused mask-training step of every architecture family against the hook path (tests/test_attach.py),
   as junit XML;
3. ``bench``: the benchmark suite (``python -m bench``) with what time is left, CSV + plots + summary.
The extension must already be built (``make gpu-check`` builds it with every core first). Writes
``OUT/gpu_check.md``: each step's status, time and log file. Exits 1 when a step failed or timed out.
"""
import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "gpu-check"
ROOT = Path(__file__).resolve().parent.parent
OP_TESTS = ["tests/test_vib_gate.py", "tests/test_vib_params.py", "tests/test_hard_concrete.py", "tests/test_noise.py",
            "tests/test_masked_linear.py", "tests/test_masked_attention.py", "tests/test_masked_norm.py",
            "tests/test_registration.py", "tests/test_errors.py", "tests/test_op_hardening.py",
            "tests/test_dispatch.py", "tests/test_gpu.py", "tests/test_attach.py::test_fused_wiring_equals_the_hooks",
            "tests/test_hf_attention.py"]


def device_name() -> str:
    """The GPU's name as a folder name (``NVIDIA H200`` -> ``nvidia-h200``)."""
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device is visible; this check is for a GPU machine "
                         "(without one, `make test` runs the compile-only check of every kernel)")
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")


def _step(name: str, cmd: list[str], out: Path, limit: float) -> dict:
    log = out / f"{name}.log"
    start = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with open(log, "w") as f:
        try:
            code = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=max(limit, 1),
                                  env=env).returncode
            status = "passed" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit:.0f} s"
    seconds = time.monotonic() - start
    print(f"gpu_check: {name}: {status} in {seconds:.0f} s (log: {log})", flush=True)
    return {"step": name, "status": status, "seconds": round(seconds), "log": log.name}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="result folder (default: results/gpu-check/<device>)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together (default 480)")
    args = parser.parse_args(argv)
    device = device_name()
    out = args.out or RESULTS / device
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    steps = [_step("info", [sys.executable, "-m", "vtrans_kernels.info"], out, 60)]
    if importlib.util.find_spec("pytest") is None:
        steps.append({"step": "op-tests", "status": "not run: pytest is not installed here", "seconds": 0,
                      "log": "-"})
        print("gpu_check: op-tests not run: pytest is not installed (pip install pytest)", flush=True)
    else:
        steps.append(_step("op-tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                        f"--junitxml={out / 'op-tests.xml'}", *OP_TESTS], out,
                           min(300, deadline - time.monotonic() - 60)))
    steps.append(_step("bench", [sys.executable, "-m", "bench", "--out", str(out / "bench")], out,
                       deadline - time.monotonic()))
    lines = [f"# GPU check on {device}", "", "| step | status | seconds | log |", "|---|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['log']} |" for s in steps]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print(f"gpu_check: wrote {out / 'gpu_check.md'}")
    return 0 if all(s["status"] == "passed" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
