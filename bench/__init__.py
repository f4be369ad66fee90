"""Benchmarks of vtrans-kernels: the suite (``python -m bench``) and the per-op scripts it calls.

The per-op scripts also run on their own (``python bench/bench_masks.py``), where they import their helpers
as the top-level module ``common``. That name is bound to ``bench.common`` here so that the same imports
work when the suite imports them as ``bench.<script>`` (putting bench/ itself on ``sys.path`` instead would
let its modules shadow packages of the same name, e.g. ``kernels``, which transformers probes for).
"""
import sys

from . import common

sys.modules.setdefault("common", common)
