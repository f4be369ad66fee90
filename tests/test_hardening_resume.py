"""`run_pruning(resume=True)` refuses a checkpoint of another run, naming each entry of the run record that
differs, and accepts one that differs only in what happens after the masks are trained."""
import pytest
import torch
from tiny_models import build
from tiny_text import rows, tokenizer

from vtrans_kernels.prune import PruneConfig, run_pruning
from vtrans_kernels.prune.data import Batches, TextData, tokenize_classification

CONFIG = PruneConfig(steps=2, batch_size=8, checkpoint_every=1)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    data = rows(40)
    text = TextData([r["text"] for r in data], [int(r["label"] == "pos") for r in data], ["neg", "pos"])
    return tokenize_classification(text, tokenizer(tmp_path_factory.mktemp("tok")), 12)


def _model(nudge=0.0):
    model = build("bert")
    with torch.no_grad():
        model.classifier.bias += nudge
    return model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, features):
    out = tmp_path_factory.mktemp("run")
    run_pruning(_model(), Batches(features, 8), CONFIG, out, progress=False, plots=False)
    return out


def _resume(out, model, batches, config=CONFIG):
    return run_pruning(model, batches, config, out, resume=True, progress=False, plots=False)


@pytest.mark.parametrize("change, message", [
    ("weights", r"model weights \(fingerprint\): \w{12} \(checkpoint\) vs \w{12} \(this run\)"),
    ("rows", r"training rows \(tokenized, fingerprint\): \w{12} \(checkpoint\) vs \w{12} \(this run\); "
             r"training rows: 40 \(checkpoint\) vs 39 \(this run\)"),
    ("order", r"data-order seed: 0 \(checkpoint\) vs 5 \(this run\)"),
    ("batch", r"batch size: 8 \(checkpoint\) vs 4 \(this run\)"),
])
def test_a_checkpoint_of_another_run_is_refused(run_dir, features, change, message):
    model, batches = _model(), Batches(features, 8)
    if change == "weights":
        model = _model(nudge=0.5)
    elif change == "rows":
        batches = Batches({k: v[:39] for k, v in features.items()}, 8)
    elif change == "order":
        batches = Batches(features, 8, seed=5)
    else:
        batches = Batches(features, 4)
    with pytest.raises(ValueError, match=r"checkpoint\.pt belongs to another run; what differs: .*" + message):
        _resume(run_dir, model, batches)


def test_settings_after_the_masks_may_change(run_dir, features):
    later = PruneConfig(steps=2, batch_size=8, checkpoint_every=1, fold_scales=False, round_to=4, log_every=5,
                        finetune_steps=3)
    result = _resume(run_dir, _model(), Batches(features, 8), later)
    assert result.pruner.step == 2 and result.plan.hidden_scale is None
    assert result.plan.model["model_type"] == "bert" and len(result.plan.model["fingerprint"]) == 64
