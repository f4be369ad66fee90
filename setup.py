"""Builds vtrans_kernels._C from csrc/: a CUDA extension when torch has CUDA and a toolkit is found (or
FORCE_CUDA=1), otherwise C++ only; VTRANS_SKIP_EXT=1 builds none. Records build info in
vtrans_kernels/_build_info.json.

Environment: TORCH_CUDA_ARCH_LIST (default "8.0;9.0" when no GPU is visible), MAX_JOBS (default 2),
CUDA_HOME (default: the first toolkit root holding bin/nvcc among /usr/local/cuda*).
"""
import glob
import json
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
INFO_FILE = ROOT / "vtrans_kernels" / "_build_info.json"


def find_cuda_home() -> str | None:
    # nvcc on PATH may be a wrapper script, from which torch would guess a wrong root: look for the toolkit.
    for root in [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
                 *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]:
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")) and not _is_script(os.path.join(root, "bin", "nvcc")):
            return root
    return None


def _is_script(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"#!"


def nvidia_wheel_includes() -> list[str]:
    # ATen's CUDA headers want cusparse.h etc., shipped in the nvidia-* wheels next to torch.
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def write_build_info(info: dict) -> None:
    INFO_FILE.write_text(json.dumps(info, indent=2) + "\n")


def extension_modules():
    if os.environ.get("VTRANS_SKIP_EXT") == "1":
        write_build_info({"extension": False, "reason": "VTRANS_SKIP_EXT=1"})
        return [], {}
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    os.environ.setdefault("MAX_JOBS", "2")
    import torch
    from torch.utils import cpp_extension

    want_cuda = os.environ.get("FORCE_CUDA") == "1" or (torch.version.cuda is not None and cuda_home is not None)
    if want_cuda and not torch.cuda.is_available():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    sources = ["csrc/ops.cpp", "csrc/cpu/mask_ops_cpu.cpp"]
    include_dirs = [str(ROOT / "csrc" / "include")]
    cxx = ["-O3", "-fopenmp", "-fopenmp-simd"]  # the C++ standard is the one torch asks for
    kwargs = dict(include_dirs=include_dirs, extra_link_args=["-fopenmp"])
    if want_cuda:
        sources.append("csrc/cuda/mask_ops_cuda.cu")
        kwargs["include_dirs"] = include_dirs + nvidia_wheel_includes()
        kwargs["extra_compile_args"] = {"cxx": cxx + ["-DVTRANS_WITH_CUDA"], "nvcc": ["-O3", "-lineinfo"]}
        ext = cpp_extension.CUDAExtension("vtrans_kernels._C", sources, **kwargs)
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        ext = cpp_extension.CppExtension("vtrans_kernels._C", sources, **kwargs)
    write_build_info({
        "extension": True,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_kernels": want_cuda,
        "cuda_home": cuda_home,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if want_cuda else None,
        "sources": sources,
    })
    print(f"vtrans-kernels: building {'CUDA + C++' if want_cuda else 'C++-only'} extension from {sources}"
          f" (CUDA_HOME={cuda_home}, archs={os.environ.get('TORCH_CUDA_ARCH_LIST')})", flush=True)
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
