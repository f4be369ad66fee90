"""PruneConfig.compact_from="original": the masks choose the units, the weights from before mask training carry them."""
import json

import pytest
import torch

from tiny_models import build
from tiny_text import classification_features, model_folder, write_data
from vtrans_kernels.hf import compact, load_compacted
from vtrans_kernels.hf.plan import CompactionPlan
from vtrans_kernels.prune import PruneConfig, Pruner
from vtrans_kernels.prune.data import Batches


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return classification_features(tmp_path_factory.mktemp("tok"), 32)


def _states_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("distill_weight", [1.0, 0.0])  # with and without the pruner's own teacher copy
def test_the_original_weights_are_kept_for_compaction(features, distill_weight):
    model = build("bert")
    before = build("bert")
    before.load_state_dict(model.state_dict())
    config = PruneConfig(variant="vtrans", target_sparsity=0.5, steps=4, batch_size=8, seq_len=16,
                         distill_weight=distill_weight, fold_scales=False, compact_from="original")
    pruner = Pruner(model, config)
    for step in range(config.steps):
        pruner.train_step(Batches(features, 8).batch(step))
    pruner.finish()
    source = pruner.compaction_model()
    assert source is not model
    assert _states_equal(source, before)  # untouched by the weight updates
    assert not _states_equal(model, before)  # which did happen
    plan = pruner.plan()
    assert plan.hidden_scale is None and not plan.head_scale and not plan.ffn_scale
    small = compact(source, plan)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in before.parameters())


def test_trained_is_the_default_and_keeps_no_copy(features):
    model = build("bert")
    pruner = Pruner(model, PruneConfig(variant="vtrans", steps=2, batch_size=8, seq_len=16))
    assert pruner.original is None and pruner.compaction_model() is model


@pytest.mark.parametrize("settings, message", [
    (dict(compact_from="teacher", fold_scales=False), "compact_from: expected one of"),
    (dict(variant="faster", compact_from="original", fold_scales=False), "compact_from: 'original' needs a variant"),
    (dict(variant="vtrans", compact_from="original"), "fold_scales: expected False with compact_from='original'"),
])
def test_compact_from_is_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        PruneConfig(**settings)


def test_compact_from_does_not_change_the_masks_a_checkpoint_resumes():
    """It acts after mask training, so a run may resume a checkpoint written with the other choice."""
    from vtrans_kernels.prune.identity import check_same_run, mask_settings

    trained = PruneConfig(variant="vtrans")
    original = PruneConfig(variant="vtrans", compact_from="original", fold_scales=False)
    check_same_run(mask_settings(trained), mask_settings(original), "trained.pt")


def test_cli_compacts_the_input_weights(tmp_path):
    """`vtrans prune --compact-from original` without a fine-tune saves exactly the input model cut by plan.json."""
    from transformers import AutoModelForSequenceClassification

    from vtrans_kernels.cli import main

    folder = model_folder(tmp_path / "bert")
    data = write_data(tmp_path / "train.csv")
    out = tmp_path / "out"
    argv = ["prune", "--model", str(folder), "--data", str(data), "--out", str(out), "--steps", "6",
            "--batch-size", "8", "--max-length", "16", "--no-progress", "--seq-len", "16", "--variant", "vtrans",
            "--target-sparsity", "0.4", "--finetune-steps", "0", "--compact-from", "original"]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["compact_from"] == "original" and config["fold_scales"] is False
    plan = CompactionPlan.load(out / "plan.json")
    expected = compact(AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2), plan).eval()
    saved = load_compacted(out / "compacted")
    ids = torch.tensor([[2, 7, 9, 3, 11, 5]])
    with torch.no_grad():
        torch.testing.assert_close(saved(input_ids=ids).logits, expected(input_ids=ids).logits, rtol=1e-5, atol=1e-6)
