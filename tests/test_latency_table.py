"""Latency tables: the monotone fit, fast widths, the differentiable interpolation, JSON files and match checks."""
import json

import pytest
import torch
from latency_tables import synthetic_table
from tiny_models import build

from vtrans_kernels.latency import Curve, LatencyTable, isotonic
from vtrans_kernels.latency.environment import architecture_record, device_record
from vtrans_kernels.latency.stats import estimate_ms, settled_ms


def test_isotonic_pools_dips_and_keeps_monotone_input():
    assert isotonic([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]
    assert isotonic([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    fitted = isotonic([5.0, 1.0, 1.0, 1.0])
    assert fitted == [2.0, 2.0, 2.0, 2.0]


def test_fast_widths_are_the_ends_of_flat_steps():
    widths = list(range(0, 41, 4))
    curve = Curve.fit(widths, [0.0] + [float(-(-w // 16)) for w in widths[1:]])
    assert curve.fast_widths() == [0, 16, 32, 40]
    assert curve.fast_widths(36) == [0, 16, 32, 36]
    assert curve.snap(10, 40) == 16 and curve.snap(7, 40) == 0 and curve.snap(8, 40) == 16  # ties go wider
    with pytest.raises(KeyError):
        curve.fast_widths(35)  # not a measured width


def test_noisy_dip_does_not_make_a_wider_width_cheaper():
    curve = Curve.fit([0, 8, 16, 24], [0.0, 1.0, 3.0, 2.0])
    assert curve.values == (0.0, 1.0, 2.5, 2.5)
    assert curve.fast_widths() == [0, 8, 24]


def test_smooth_is_exact_at_fast_widths_and_differentiable_between():
    widths = list(range(0, 33, 4))
    curve = Curve.fit(widths, [0.0] + [float(-(-w // 16)) for w in widths[1:]])
    for width in curve.fast_widths():
        assert curve.smooth(width) == pytest.approx(curve.at(width))
    count = torch.tensor(24.0, requires_grad=True)
    value = curve.smooth(count)
    value.backward()
    assert float(value.detach()) == pytest.approx(1.5)
    assert float(count.grad) == pytest.approx(1 / 16)  # from step 1 at 16 to step 2 at 32


def test_settled_ignores_stretched_samples():
    assert settled_ms([3.0, 7.1, 3.1, 6.9, 7.3, 3.2, 7.0]) == pytest.approx(3.1)  # a majority of 2x stretches
    assert settled_ms([3.0, 3.3, 3.1]) == pytest.approx(3.1)  # a quiet machine: the plain median


def test_estimates():
    samples = [3.0, 7.1, 3.1, 6.9, 7.3, 3.2, 7.0]
    assert estimate_ms(samples, "median") == pytest.approx(6.9)
    assert estimate_ms(samples, "settled") == pytest.approx(3.1)
    with pytest.raises(ValueError, match="statistic: expected 'median' or 'settled'"):
        estimate_ms(samples, "mean")


def test_table_round_trips_through_json(tmp_path):
    model = build("bert")
    table = synthetic_table(model)
    path = tmp_path / "table.json"
    table.save(path)
    loaded = LatencyTable.load(path)
    assert loaded.to_dict() == json.loads(path.read_text())
    assert loaded.hidden_sizes == table.hidden_sizes
    assert loaded.curve("ffn", 24).values == table.curve("ffn", 24).values
    assert loaded.fixed_ms() == table.fixed_ms()


def test_load_names_the_argument_and_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--profile: latency table .*missing.json"):
        LatencyTable.load(tmp_path / "missing.json", "--profile")
    bad = tmp_path / "bad.json"
    bad.write_text('{"hidden": [1]}')
    with pytest.raises(ValueError, match="--profile: .*bad.json.*not a latency table"):
        LatencyTable.load(bad, "--profile")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="is not a latency table JSON file"):
        LatencyTable.load(broken, "--profile")


def test_match_check_refuses_another_device_dtype_or_model():
    model = build("bert")
    table = synthetic_table(model)
    here = device_record("cpu", 1)
    table.check_matches("--profile", model=architecture_record(model), device=here, dtype="float32")
    table.check_matches("--profile", device={**here, "threads": 7})  # thread counts may differ
    with pytest.raises(ValueError, match="--profile: .*device: the table was measured on cpu .*, this run is on "
                                         "cuda 'NVIDIA H100'"):
        table.check_matches("--profile", device={"type": "cuda", "name": "NVIDIA H100"})
    with pytest.raises(ValueError, match="device: the table was measured on cpu 'AMD EPYC 9999'"):
        LatencyTable.from_dict({**table.to_dict(), "device": {"type": "cpu", "name": "AMD EPYC 9999"}}).check_matches(
            "--profile", device=here)
    with pytest.raises(ValueError, match="dtype: the table was measured in float32, this run uses bfloat16"):
        table.check_matches("--profile", dtype="bfloat16")
    other = build("roberta")
    with pytest.raises(ValueError, match="model: the table was measured for another model .*class"):
        table.check_matches("--profile", model=architecture_record(other))


def test_coverage_check_names_missing_widths():
    model = build("bert")
    arch = architecture_record(model)
    table = synthetic_table(model)
    table.check_covers("--profile", arch["heads"], arch["ffn"], arch["hidden"], prune_hidden=True)
    with pytest.raises(ValueError, match="missing widths the plan needs: .*FFN at hidden 24 lacks widths \\[40\\]"):
        table.check_covers("--profile", arch["heads"], [40, 37, 37], arch["hidden"], prune_hidden=True)
    with pytest.raises(ValueError, match="lacks head counts \\[5, 6\\]"):
        table.check_covers("--profile", [6, 4, 4], arch["ffn"], arch["hidden"], prune_hidden=False)
    with pytest.raises(ValueError, match="hidden size 32 \\(the model's\\) was not measured"):
        table.check_covers("--profile", arch["heads"], arch["ffn"], 32, prune_hidden=False)
    single = synthetic_table(model, hidden_sizes=[24])
    with pytest.raises(ValueError, match="hidden dimension cannot be pruned"):
        single.check_covers("--profile", arch["heads"], arch["ffn"], 24, prune_hidden=True)
    single.check_covers("--profile", arch["heads"], arch["ffn"], 24, prune_hidden=False)


def test_architecture_record_ignores_label_count_but_not_shapes():
    import transformers as tf

    def bert(labels, layers=3):
        config = tf.BertConfig(vocab_size=61, hidden_size=24, num_hidden_layers=layers, num_attention_heads=4,
                               intermediate_size=37, max_position_embeddings=40, num_labels=labels)
        return tf.BertForSequenceClassification(config)

    assert architecture_record(bert(2)) == architecture_record(bert(5))
    assert architecture_record(bert(2)) != architecture_record(bert(2, layers=2))
