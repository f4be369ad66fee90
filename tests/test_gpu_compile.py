"""Every Triton kernel compiles for real GPUs (sm_90 and sm_80), through the package's own launchers, on this
CPU machine: within shared memory, no spills in 16-bit variants, grids within CUDA's limits, the linear tile
estimate never below the compiler's number, and a handful of autotunings over a run of varying row counts.
The interpreter (which the other tests use) accepts code that the GPU compiler rejects; this test does not.
Runs bench/compile_check.py's quick set (its own processes, a fresh Triton cache, both targets in parallel);
``VTRANS_COMPILE_ARCHS`` (default ``90,80``) picks the targets."""
import collections
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where bench/ lives

from bench import compile_cases, compile_check  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


ARCHS = tuple(int(a) for a in os.environ.get("VTRANS_COMPILE_ARCHS", "90,80").split(","))


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return compile_check.run(archs=ARCHS, full=False, out=tmp_path_factory.mktemp("compile"))


def test_every_launcher_compiles_for_each_target(result):
    assert compile_check.problems(result) == []


def test_every_kernel_family_was_compiled_for_both_targets(result):
    # guards against a vacuous pass: each launcher of the case list produced kernels on both targets
    families = {label.split(" ")[0] for label, _ in compile_cases.cases(full=False)}
    compiled = collections.defaultdict(set)
    for r in result["records"]:
        compiled[r["arch"]].add(r["case"].split(" ")[0])
    for arch in ARCHS:
        assert not families - compiled[arch], f"sm_{arch}: no kernel compiled for {sorted(families - compiled[arch])}"
    assert all(r["registers"] for r in result["records"] if not r["error"])


def test_autotuning_is_bucketed(result):
    for arch in ARCHS:
        count = result["tunings"][arch]
        assert count["shapes"] >= 40 and 1 <= count["tunings"] <= compile_check.BUCKETS_PER_TUNING_RUN
