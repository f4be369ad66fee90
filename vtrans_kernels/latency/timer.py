"""Time each attention and FFN block inside a whole-model forward, through forward hooks.

A block runs from the first of its producing projections (q/k/v, or up/gate) to the end of the projection that
reads its units (o_proj, down); what lies outside every block (embeddings, norms, residual adds, the head) is
the model's fixed cost. On CUDA the marks are events, read after one synchronisation, so timing does not stall
the stream. On CPU they are wall-clock readings, or, for single-threaded runs, the thread's CPU time: that is the
latency on a core of its own, and it does not count the time another process holds the core (on a shared
machine, half of it in bursts).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..hf.adapters import adapter_for
from ..hf.adapters.base import get_module


CLOCKS = ("wall", "thread", "cuda")


def default_clock(device: torch.device | str, threads: int) -> str:
    """"cuda" on a GPU; on CPU "thread" (CPU time of the calling thread) when torch runs one thread, else "wall"."""
    if torch.device(device).type == "cuda":
        return "cuda"
    return "thread" if threads == 1 else "wall"


class Stopwatch:
    """Marks on a clock (:data:`CLOCKS`) and the milliseconds between them. The "thread" clock only sees work on
    the calling thread: use it when torch runs one thread (``torch.set_num_threads(1)``)."""

    def __init__(self, clock: str):
        if clock not in CLOCKS:
            raise ValueError(f"clock: expected one of {CLOCKS}, got {clock!r}")
        self.clock = clock
        self.cuda = clock == "cuda"

    def mark(self):
        if self.clock == "thread":
            return time.thread_time()
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, start, end) -> float:
        """Milliseconds from ``start`` to ``end`` (call :meth:`sync` first on CUDA)."""
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3


class BlockTimer:
    """Hooks on every present attention and FFN block of ``model``; :meth:`run` returns the forward's total
    milliseconds and ``{("attention" | "ffn", layer): (width, ms)}``. Remove with :meth:`remove`."""

    def __init__(self, model: nn.Module, stopwatch: Stopwatch):
        self.stopwatch = stopwatch
        adapter = adapter_for(model)
        units = adapter.units()
        self.widths, self._starts, self._ends, self._handles, self._paused = {}, {}, {}, [], False
        for i in range(adapter.num_layers()):
            roles = adapter.layer_roles(i)
            blocks = (("attention", roles.head_producers, roles.head_consumer, units.heads[i]),
                      ("ffn", roles.ffn_producers, roles.ffn_consumer, units.ffn[i]))
            for kind, producers, consumer, width in blocks:
                if width == 0:  # a removed sublayer: no block runs
                    continue
                key = (kind, i)
                self.widths[key] = width
                for path in producers:
                    self._handles.append(get_module(model, path).register_forward_pre_hook(self._start(key)))
                self._handles.append(get_module(model, consumer).register_forward_hook(self._end(key)))

    def pause(self) -> None:
        """The hooks record nothing until :meth:`resume` (for a forward timed as a whole)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def _start(self, key):
        def hook(module, args):
            if not self._paused and key not in self._starts:  # the first producer to run opens the block
                self._starts[key] = self.stopwatch.mark()
        return hook

    def _end(self, key):
        def hook(module, args, output):
            if not self._paused:
                self._ends[key] = self.stopwatch.mark()
        return hook

    def run(self, forward) -> tuple[float, dict]:
        """Call ``forward()`` once; (total ms, per-block (width, ms))."""
        self._starts, self._ends = {}, {}
        start = self.stopwatch.mark()
        forward()
        end = self.stopwatch.mark()
        self.stopwatch.sync()
        missing = [k for k in self.widths if k not in self._starts or k not in self._ends]
        if missing:
            raise RuntimeError(f"latency profile: blocks {missing} did not run their projections in the forward")
        blocks = {k: (w, self.stopwatch.ms(self._starts[k], self._ends[k])) for k, w in self.widths.items()}
        return self.stopwatch.ms(start, end), blocks

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def time_forward(forward, stopwatch: Stopwatch) -> float:
    """Milliseconds of one ``forward()`` call."""
    start = stopwatch.mark()
    forward()
    end = stopwatch.mark()
    stopwatch.sync()
    return stopwatch.ms(start, end)
