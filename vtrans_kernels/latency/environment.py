"""What a latency table was measured for: the device, the library versions and the model's architecture."""
from __future__ import annotations

import platform

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype | str) -> str:
    """``"float32"``, ``"bfloat16"`` or ``"float16"`` for a torch dtype or one of those names."""
    name = dtype if isinstance(dtype, str) else str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    return name


def cpu_name() -> str:
    """The CPU model as the OS reports it (``/proc/cpuinfo``'s model name on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_record(device: torch.device | str, threads: int | None = None) -> dict:
    """``{"type", "name"}`` of ``device`` (the CPU model, or the CUDA device name), plus ``threads`` on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device)}
    if device.type != "cpu":
        raise ValueError(f"device: latency profiles run on 'cpu' or 'cuda', got {str(device)!r}")
    return {"type": "cpu", "name": cpu_name(), "threads": int(threads or torch.get_num_threads())}


def versions() -> dict:
    """Versions of the libraries whose kernels set the latency."""
    import transformers

    from .. import __version__
    return {"torch": torch.__version__, "transformers": transformers.__version__, "vtrans_kernels": __version__}


def architecture_record(model: nn.Module) -> dict:
    """The shapes and code path that set a model's latency: class, model type, attention implementation, unit
    counts per layer, head size, GQA group size, embedding rows, and the head when it runs per token (an LM
    head's vocabulary projection). A pooled classifier's label count is left out (it costs next to nothing, and
    a table serves every label count)."""
    from ..hf.adapters import adapter_for
    from ..hf.adapters.base import RECORD_KEY

    if getattr(model.config, RECORD_KEY, None):
        raise ValueError("model: it is already compacted; profile (and prune) the unpruned model")
    spec = adapter_for(model).spec()
    return {
        "class": type(model).__name__, "model_type": model.config.model_type,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "hidden": spec.hidden_size, "heads": list(spec.units_per_layer), "ffn": list(spec.ffn_per_layer),
        "head_dim": spec.head_dim, "q_heads_per_unit": spec.q_heads_per_unit,
        "embedding_rows": spec.embedding_rows,
        "head_outputs": spec.head_outputs if spec.head_per_token else None,
    }
