"""The README.md that `save_compacted` leaves in a model folder: what the model is and what loads it."""
from __future__ import annotations

from torch import nn

from .adapters import adapter_for

# Architectures llama.cpp runs from a vtrans GGUF (its `deci` layout: per-layer heads and FFN widths).
GGUF_FAMILIES = ("llama", "mistral", "qwen2")


def loader_phrase(record: dict | None) -> str:
    """How a model folder with the compaction ``record`` (None: a folder never compacted) loads, in a few words."""
    if record and not record.get("plain_loadable"):
        return "loads with vtrans_kernels.load_compacted (its layers differ in shape)"
    return "loads with from_pretrained"


def _widths(values: list[int]) -> str:
    return f"{values[0]} in every layer" if len(set(values)) == 1 else ", ".join(map(str, values))


def model_card(model: nn.Module, record: dict) -> str:
    """Markdown for the folder of ``model`` (saved by ``save_compacted`` with ``record``): original and kept
    shapes, the loader that reads the folder and the serving exports that apply. Names no absolute path."""
    adapter = adapter_for(model)
    units = adapter.units()
    original = type(adapter.config).from_dict(record["original"])
    name = type(model).__name__
    plain = record.get("plain_loadable", False)
    params = sum(p.numel() for p in model.parameters())
    lines = [f"# {name}, compacted by vtrans-kernels", "",
             f"{params:,} parameters; {len(record['sources'])} layers kept "
             f"(of the original's {original.num_hidden_layers}: {record['sources']}).", "",
             "| | kept |", "|---|---|",
             f"| hidden size | {units.hidden} (of {original.hidden_size}) |",
             f"| attention units per layer (heads, or KV groups) | {_widths(list(units.heads))} |",
             f"| FFN neurons per layer | {_widths(list(units.ffn))} |", ""]
    if record.get("rounding"):
        lines += [f"Widths rounded for the hardware: {len(record['rounding'])} changes (config.json, "
                  "`vtrans_compaction.rounding`).", ""]
    lines += ["## Loading", ""]
    if plain:
        lines += ["Every layer has the same shape, so plain transformers loads this folder:", "", "```python",
                  f"from transformers import {name}", f'model = {name}.from_pretrained("path/to/this/folder")',
                  "```", "", "and so do engines that build a model from its config (vLLM, TGI).", ""]
    else:
        lines += ["Its layers differ in shape (or sublayers were removed), which the config class cannot express: "
                  "`from_pretrained` fails with a size mismatch. Load it with vtrans-kernels:", "", "```python",
                  "import vtrans_kernels", 'model = vtrans_kernels.load_compacted("path/to/this/folder")', "```", ""]
    lines += ["## Serving", "", "```bash",
              "vtrans export --model path/to/this/folder --format onnx --out model.onnx   # ONNX Runtime"]
    if adapter.config.model_type in GGUF_FAMILIES:
        lines.append("vtrans export --model path/to/this/folder --format gguf --out model.gguf   # llama.cpp")
    lines += ["```", ""]
    return "\n".join(lines)
