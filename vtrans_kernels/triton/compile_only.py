"""Compile the package's Triton kernels for a real NVIDIA GPU on a machine without one.

Triton's NVIDIA backend (TTGIR -> LLVM -> PTX -> ptxas -> cubin) runs on any machine; only loading and
launching the cubin needs a GPU. ``activate(arch)`` makes Triton's active driver a stand-in for an sm_<arch>
device: compiling works as on the real GPU, loading checks the shared-memory limit and reads the registers from
the cubin (``cuobjdump``, shipped in the triton wheel) and the spill stores from ptxas' log, and launching checks
the grid against CUDA's limits and does nothing else. The package's own launchers then run on ``device="meta"``
tensors, so what is checked is exactly what a GPU user's call compiles, autotuner included (configs over the
shared-memory limit raise ``OutOfResources`` and drop out, as on the GPU).

Every kernel loaded is recorded as a ``KernelRecord``. A process can hold one stand-in target only (Triton
caches compiled kernels per device index), for the rest of its life: check sm_90 and sm_80 in separate
processes, as ``python -m bench.compile_check`` does. Triton must not be in interpreter mode.
"""
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget

#: per-block shared memory a kernel may use (opt-in maximum), by compute capability
MAX_SHARED = {90: 232448, 80: 166912, 89: 101376, 86: 101376}
#: CUDA's grid limits: x up to 2^31 - 1, y and z up to 65535
GRID_LIMITS = (2**31 - 1, 65535, 65535)


@dataclasses.dataclass
class KernelRecord:
    """One kernel variant compiled for the stand-in GPU (``case`` is the label the caller set)."""

    case: str
    kernel: str
    arch: int
    constexprs: dict
    num_warps: int
    num_stages: int
    shared: int
    registers: int | None = None     # None: never loaded (over a limit)
    spill_bytes: int | None = None   # bytes of spill stores per thread (ptxas); None: compiled in an earlier run
    error: str | None = None         # why it could not load


class _Recorder:
    """The kernel records, and a stdout stand-in that keeps the last ptxas log Triton prints (with
    TRITON_DUMP_PTXAS_LOG=1) so each record can take its spill count."""

    def __init__(self):
        self.case = ""
        self.records: list[KernelRecord] = []
        self.pending: KernelRecord | None = None
        self.seen: dict = {}
        self.ptxas_log = ""
        self.stdout = None

    def write(self, text):
        if text.lstrip().startswith("ptxas"):
            self.ptxas_log += text
        else:
            self.stdout.write(text)
        return len(text)

    def flush(self):
        self.stdout.flush()

    def take_spills(self) -> int | None:
        found = re.findall(r"(\d+) bytes spill stores", self.ptxas_log)
        self.ptxas_log = ""
        return sum(int(n) for n in found) if found else None


_recorder = _Recorder()


def _registers(cubin: bytes) -> int:
    """Registers per thread of the one kernel in ``cubin``, from cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    regs = re.search(r"REG:(\d+)", out)
    if regs is None:
        raise RuntimeError(f"compile_only: cannot read the registers from cuobjdump's output: {out!r}")
    return int(regs.group(1))


class _Utils:
    def __init__(self, arch: int):
        self.arch = arch

    def get_device_properties(self, device):
        return {"max_shared_mem": MAX_SHARED[self.arch], "multiprocessor_count": 132 if self.arch == 90 else 108,
                "max_num_regs": 65536, "warpSize": 32, "sm_clock_rate": 1, "mem_clock_rate": 1,
                "mem_bus_width": 1}

    def load_binary(self, name, kernel, shared, device):
        regs = _registers(kernel)
        record = _recorder.pending
        if record is not None:
            record.registers = regs
        # a non-None module: Triton loads a kernel once, when its module is still None
        return name, 0, regs, record.spill_bytes if record is not None else 0, 1024

    def unload_module(self, module):
        pass


class _Launcher:
    """Records the kernel variant when created (Triton creates it before checking limits) and checks the grid
    of every launch."""

    def __init__(self, src, metadata):
        record = KernelRecord(case=_recorder.case, kernel=getattr(src, "name", str(src)),
                              arch=metadata.target.arch, constexprs=_flags(src),
                              num_warps=metadata.num_warps, num_stages=metadata.num_stages, shared=metadata.shared,
                              spill_bytes=_recorder.take_spills())
        if metadata.shared > MAX_SHARED[metadata.target.arch]:
            record.error = f"shared memory {metadata.shared} > {MAX_SHARED[metadata.target.arch]}"
        key = (record.case, record.kernel, json.dumps(record.constexprs, sort_keys=True), record.num_warps,
               record.num_stages)
        if key in _recorder.seen:  # the autotuner's final launch of a config it already benchmarked
            _recorder.pending = _recorder.seen[key]
            return
        _recorder.seen[key] = record
        _recorder.records.append(record)
        _recorder.pending = record

    def __call__(self, grid_x, grid_y, grid_z, *rest):
        for axis, (size, limit) in enumerate(zip((grid_x, grid_y, grid_z), GRID_LIMITS)):
            if not 0 <= size <= limit:
                raise ValueError(f"compile_only: grid dimension {'xyz'[axis]} is {size}, CUDA allows {limit}")


def _flags(src) -> dict:
    """The kernel's upper-case constexpr arguments (block sizes and flags), by name."""
    names = src.fn.arg_names
    out = {}
    for key, value in getattr(src, "constants", {}).items():
        name = names[key[0]] if isinstance(key, tuple) and len(key) == 1 else str(key)
        if name.isupper():
            out[name] = value if isinstance(value, (int, float, bool, str)) else str(value)
    return out


def _benchmark(kernel_call, quantiles=None, **kwargs):
    # compile (and size-check) the config; every config that loads is equally fast: the autotuner keeps the first
    kernel_call()
    return [1.0, 1.0, 1.0] if quantiles else 1.0


class StandInDriver:
    """The parts of Triton's driver interface that compiling and launching use, for an sm_<arch> device."""

    def __init__(self, arch: int):
        if arch not in MAX_SHARED:
            raise ValueError(f"compile_only: arch must be one of {sorted(MAX_SHARED)}, got {arch}")
        self.arch = arch
        self.utils = _Utils(arch)
        self.launcher_cls = _Launcher

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=0):
        return divmod(self.arch, 10)

    def get_active_torch_device(self):
        import torch
        return torch.device("meta")

    def get_benchmarker(self):
        return _benchmark

    def map_python_to_cpp_type(self, ty):
        return ty

    def is_active(self):
        return True


def activate(arch: int) -> list[KernelRecord]:
    """Make Triton compile for an sm_``arch`` GPU in this process from now on; returns the list that every kernel
    variant loaded is appended to. Spill counts need a fresh TRITON_CACHE_DIR (ptxas runs only on a cache miss)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_only: unset TRITON_INTERPRET; the interpreter compiles nothing")
    import sys
    from triton.runtime import driver
    triton.knobs.nvidia.dump_ptxas_log = True
    if _recorder.stdout is None:
        _recorder.stdout, sys.stdout = sys.stdout, _recorder
    driver.set_active(StandInDriver(arch))
    _recorder.records, _recorder.seen = [], {}
    return _recorder.records


@contextlib.contextmanager
def case(label: str):
    """Label the kernels compiled inside the block (the records' ``case``)."""
    previous, _recorder.case = _recorder.case, label
    try:
        yield
    finally:
        _recorder.case = previous
        _recorder.pending = None
