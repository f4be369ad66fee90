"""`run_pruning(resume=True)` refuses a checkpoint of another run, naming each entry of the run record that
differs, and accepts one that differs only in what happens after the masks are trained."""
import pytest
import torch
from tiny_models import build
from tiny_text import classification_features

from vtrans_kernels.prune import PruneConfig, run_pruning
from vtrans_kernels.prune.data import Batches
from vtrans_kernels.prune.identity import check_same_run, mask_settings

CONFIG = PruneConfig(steps=2, batch_size=8, checkpoint_every=1)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return classification_features(tmp_path_factory.mktemp("tok"), 40, 12)


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


@pytest.mark.parametrize("change", [{"bias_compensation": True},
                                    {"bias_compensation": True, "calibration_batches": 3}])
def test_bias_compensation_may_change(run_dir, features, change):
    """Bias compensation acts at compaction, after the masks are trained; so does calibration_batches when the
    masks start from mask_init (it shapes them only when they start from the one-shot plan)."""
    later = PruneConfig(steps=2, batch_size=8, checkpoint_every=1, **change)
    result = _resume(run_dir, _model(), Batches(features, 8), later)
    assert result.pruner.step == 2


def test_a_mask_setting_changed_with_bias_compensation_is_refused(run_dir, features):
    later = PruneConfig(steps=2, batch_size=8, checkpoint_every=1, bias_compensation=True, mask_lr=0.1)
    with pytest.raises(ValueError, match=r"what differs: settings\.mask_lr: 0\.05 \(checkpoint\) vs 0\.1 "
                                         r"\(this run\)\. Resume"):
        _resume(run_dir, _model(), Batches(features, 8), later)


def test_calibration_batches_shape_the_masks_only_from_the_oneshot_plan():
    def record(**settings):
        return mask_settings(PruneConfig(**settings))

    check_same_run(record(calibration_batches=2), record(calibration_batches=5), "the checkpoint")
    with pytest.raises(ValueError, match=r"what differs: settings\.calibration_batches: 2 \(checkpoint\) vs 5 "):
        check_same_run(record(mask_start="oneshot", calibration_batches=2),
                       record(mask_start="oneshot", calibration_batches=5), "the checkpoint")


def test_records_of_older_versions_with_compaction_settings_still_resume():
    """A checkpoint written before this change records bias_compensation and calibration_batches among its mask
    settings; a resume no longer compares them."""
    older = {**mask_settings(CONFIG), "settings.bias_compensation": False, "settings.calibration_batches": 8}
    check_same_run(older, mask_settings(PruneConfig(steps=2, batch_size=8, checkpoint_every=1,
                                                    bias_compensation=True, calibration_batches=4)), "the checkpoint")
