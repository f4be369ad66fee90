"""Latency targets on a tiny model with a synthetic table: the differentiable measure, the plan's fast widths,
the errors for bad input, and (through the Pruner) the optimisation reaching the table's target."""
import pytest
import torch
from latency_tables import synthetic_table
from tiny_models import build

from vtrans_kernels.hf import attach, detach
from vtrans_kernels.latency.model import LatencyMeasure
from vtrans_kernels.latency.target import latency_target, speedup_to_sparsity

STEP = 8  # the synthetic FFN latency rises every 8 neurons; the table measures every 4


def _masked(name="bert", seed=0):
    model = build(name)
    masks = attach(model, "vib", mask_init={"log_sigma2": -1.0})
    return model, masks


def _randomise_scores(masks, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, _, mask in masks.masks():
            mask.mu.copy_(torch.rand(mask.mu.shape, generator=gen) * 2)
            mask.log_sigma2.fill_(0.0)


def test_measure_is_the_table_sum_and_differentiable():
    model, masks = _masked()
    table = synthetic_table(model, step=STEP)
    measure = LatencyMeasure(table, masks.spec)
    heads, ffn = table.curve("attention", 24), table.curve("ffn", 24)
    expected = table.fixed_ms()[24] + 3 * heads.at(4) + 3 * ffn.at(37)
    assert measure.dense_ms == pytest.approx(expected)
    assert measure.size(16, [2, 0, 4], [8, 16, 0]) == pytest.approx(
        table.fixed_ms()[16] + table.curve("attention", 16).at(2) + table.curve("attention", 16).at(4)
        + table.curve("ffn", 16).at(8) + table.curve("ffn", 16).at(16))
    _randomise_scores(masks, 0)
    sparsity = masks.expected_sparsity(measure)
    assert 0 < float(sparsity.detach()) < 1
    sparsity.backward()
    for structure, _, mask in masks.masks():
        assert mask.mu.grad is not None and mask.mu.grad.abs().sum() > 0, structure
    detach(model)


def test_measure_interpolates_between_hidden_sizes():
    model, masks = _masked()
    measure = LatencyMeasure(synthetic_table(model, step=STEP), masks.spec)
    low, high = measure.size(16), measure.size(24)
    assert measure.size(20) == pytest.approx((low + high) / 2)
    hidden = torch.tensor(20.0, requires_grad=True)
    value = measure.size(hidden)
    value.backward()
    assert float(hidden.grad) == pytest.approx((high - low) / 8)


@pytest.mark.parametrize("speedup", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_plan_uses_fast_widths_and_meets_the_target(speedup, seed):
    model, masks = _masked()
    table = synthetic_table(model, step=STEP)
    measure = latency_target(model, masks.spec, masks.structures, table, speedup)
    _randomise_scores(masks, seed)
    plan = masks.plan(speedup_to_sparsity(speedup), measure)
    hidden = len(plan.hidden)
    heads = [len(plan.heads[i]) for i in range(3)]
    ffn = [len(plan.ffn[i]) for i in range(3)]
    assert hidden in table.hidden_sizes
    assert all(f % STEP == 0 or f == 37 for f in ffn), ffn  # never 4, 12, 20... (slow as the next step)
    predicted = measure.speedup(hidden, heads, ffn)
    assert predicted >= speedup
    assert predicted <= speedup * 1.25  # the loosest threshold that meets it: no needless pruning
    scores = {s: [m.score() for m in masks.heads] if s == "heads" else [m.score() for m in masks.ffn]
              for s in ("heads", "ffn")}
    for structure, kept in (("heads", plan.heads), ("ffn", plan.ffn)):
        for layer, units in kept.items():  # each mask keeps its best-scoring units
            score = scores[structure][layer]
            dropped = sorted(set(range(score.numel())) - set(units))
            if units and dropped:
                assert float(score[units].min()) >= float(score[dropped].max())
    detach(model)


def test_snapping_goes_to_the_nearest_fast_width():
    model, masks = _masked()
    table = synthetic_table(model, step=16, grid=4)
    curve = table.curve("ffn", 24)
    assert curve.fast_widths(37) == [0, 16, 32, 37]
    measure = LatencyMeasure(table, masks.spec)
    _randomise_scores(masks, 3)
    decision = measure.decide(masks, None)  # the masks' own counts, moved to fast widths
    own = masks.decision()
    for kept, decided in zip(decision.ffn, own.ffn):
        assert int(kept.sum()) == curve.snap(int(decided.sum()), 37)
    detach(model)


def test_bad_speedups_are_named():
    model, masks = _masked()
    table = synthetic_table(model, step=STEP)
    for bad in (1.0, 0.5, -2, float("nan"), "2"):
        with pytest.raises(ValueError, match="target_speedup: expected a number > 1"):
            latency_target(model, masks.spec, masks.structures, table, bad)
    reachable = LatencyMeasure(table, masks.spec).max_speedup(masks.structures)
    with pytest.raises(ValueError, match=f"target_speedup: 200x is beyond .* \\({reachable:.2f}x"):
        latency_target(model, masks.spec, masks.structures, table, 200.0)
    latency_target(model, masks.spec, masks.structures, table, reachable * 0.99)
    # without the hidden structure the fixed part is larger and the limit lower
    heads_only = LatencyMeasure(table, masks.spec).max_speedup(("heads",))
    assert heads_only < reachable
    with pytest.raises(ValueError, match="beyond what removing every prunable unit of heads reaches"):
        latency_target(model, masks.spec, ("heads",), table, heads_only * 1.01)
    detach(model)


def test_tables_of_another_device_dtype_or_model_are_refused():
    model, masks = _masked()
    good = synthetic_table(model)
    other_device = synthetic_table(model)
    other_device.device = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}
    with pytest.raises(ValueError, match="latency_table: .*device: the table was measured on cuda 'NVIDIA H100"):
        latency_target(model, masks.spec, masks.structures, other_device, 2.0)
    with pytest.raises(ValueError, match="dtype: the table was measured in bfloat16, this run uses float32"):
        latency_target(model, masks.spec, masks.structures, synthetic_table(model, dtype="bfloat16"), 2.0)
    with pytest.raises(ValueError, match="dtype: the table was measured in float32, this run uses bfloat16"):
        latency_target(model, masks.spec, masks.structures, good, 2.0, dtype=torch.bfloat16)
    detach(model)
    other, other_masks = _masked("roberta")
    with pytest.raises(ValueError, match="model: the table was measured for another model"):
        latency_target(other, other_masks.spec, other_masks.structures, good, 2.0)
    detach(other)


def test_a_table_missing_widths_is_refused(tmp_path):
    model, masks = _masked()
    table = synthetic_table(model)
    table.ffn[24] = {k: v[:-1] for k, v in table.ffn[24].items()}  # lost the full width, 37
    path = tmp_path / "table.json"
    table.save(path)
    with pytest.raises(ValueError, match="latency_table: the latency table is missing widths the plan needs: "
                                         "FFN at hidden 24 lacks widths \\[37\\]"):
        latency_target(model, masks.spec, masks.structures, path, 2.0)
    with pytest.raises(FileNotFoundError, match="latency_table: latency table .*nowhere.json' does not exist"):
        latency_target(model, masks.spec, masks.structures, tmp_path / "nowhere.json", 2.0)
    detach(model)


# ---- through PruneConfig and the Pruner -------------------------------------------------------------------
def _features():
    import tempfile
    from pathlib import Path

    from tiny_text import classification_features

    with tempfile.TemporaryDirectory() as folder:
        return classification_features(Path(folder), 64)


def _classifier():
    model = build("bert")
    model.config.num_labels = 2
    torch.manual_seed(0)
    return type(model)(model.config)


@pytest.mark.parametrize("speedup", [1.5, 2.0, 3.0])
def test_lagrangian_drives_the_expected_latency_to_the_target(speedup):
    """Hard-concrete masks alone, against a stand-in task that values every unit (a random worth times its keep
    probability), with the Pruner's optimiser settings: the min-max settles where the table's expected latency
    meets the target. (VIB keep probabilities saturate under a stand-in pulling on them directly.)"""
    from vtrans_kernels.masks import Lagrangian
    from vtrans_kernels.ops import hard_concrete_expected_l0

    model = build("bert")
    masks = attach(model, "hard_concrete")
    measure = LatencyMeasure(synthetic_table(model, step=STEP), masks.spec)
    target = speedup_to_sparsity(speedup)
    lagrangian = Lagrangian(target, warmup_steps=60)
    gen = torch.Generator().manual_seed(0)
    worth = [0.02 * torch.rand(m.units, generator=gen) for _, _, m in masks.masks()]
    optimizer = torch.optim.AdamW([{"params": masks.mask_parameters(), "lr": 0.05, "weight_decay": 0.0},
                                   {"params": list(lagrangian.parameters()), "lr": 0.1, "weight_decay": 0.0}])
    for step in range(300):
        task = -sum((w * hard_concrete_expected_l0(m.log_alpha)).sum() for w, (_, _, m) in zip(worth, masks.masks()))
        expected = masks.expected_sparsity(measure)
        (task + lagrangian(expected, step)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        masks.constrain()
    assert abs(float(expected.detach()) - target) < 0.01
    decision = masks.decide(measure, target)
    assert speedup <= measure.speedup(*decision.counts(masks.spec)) < speedup * 1.1
    detach(model)


def test_a_pruning_run_ends_with_a_plan_at_the_target(tmp_path):
    from vtrans_kernels.hf import adapter_for, compact
    from vtrans_kernels.prune import PruneConfig, run_pruning
    from vtrans_kernels.prune.data import Batches

    model = _classifier()
    table = synthetic_table(model, step=STEP)
    table.save(tmp_path / "table.json")
    config = PruneConfig(target="latency", target_speedup=2.0, latency_table=str(tmp_path / "table.json"),
                         steps=20, batch_size=8, log_every=5, checkpoint_every=20)
    assert config.target_sparsity == pytest.approx(0.5)
    result = run_pruning(model, Batches(_features(), 8), config, tmp_path / "run", progress=False, plots=False)
    measure = result.pruner.measure
    # the last steps hold the masks' own decision on the table's plan (settle_fraction)
    assert result.summary["mask_decision_sparsity"] == pytest.approx(result.summary["sparsity"], abs=0.02)
    expected = [r["expected_sparsity"] for r in result.records]
    assert expected[-1] > expected[0] + 0.2  # the latency term moved the masks
    kept = result.summary
    hidden, heads, ffn = kept["hidden"][0], [k for k, _ in kept["heads"]], [k for k, _ in kept["ffn"]]
    assert measure.speedup(hidden, heads, ffn) >= 2.0  # the final plan meets the table's target
    assert kept["sparsity"] == pytest.approx(1 - 1 / measure.speedup(hidden, heads, ffn))
    assert all(f % STEP == 0 or f == 37 for f in ffn) and hidden in table.hidden_sizes
    units = adapter_for(compact(model, result.plan)).units()  # the compacted model has exactly those widths
    assert (units.hidden, list(units.heads), list(units.ffn)) == (hidden, heads, ffn)


def test_prune_config_checks_the_latency_settings(tmp_path):
    from vtrans_kernels.prune import PruneConfig

    path = tmp_path / "table.json"
    synthetic_table(build("bert")).save(path)
    with pytest.raises(ValueError, match="target_speedup: expected a number > 1"):
        PruneConfig(target="latency", target_speedup=0.8, latency_table=str(path))
    with pytest.raises(ValueError, match="target_speedup: expected a number > 1 .*got None"):
        PruneConfig(target="latency", latency_table=str(path))
    with pytest.raises(ValueError, match="latency_table \\(--profile\\): expected the path of a latency table"):
        PruneConfig(target="latency", target_speedup=2.0, latency_table=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="round_to: with target='latency'"):
        PruneConfig(target="latency", target_speedup=2.0, latency_table=str(path), round_to=8)
    with pytest.raises(ValueError, match="uniform: not supported with target='latency'"):
        PruneConfig(target="latency", target_speedup=2.0, latency_table=str(path), uniform=True)
    with pytest.raises(ValueError, match="target_speedup: only used with target='latency'"):
        PruneConfig(target_speedup=2.0)
    config = PruneConfig(target="latency", target_speedup=4.0, latency_table=str(path))
    assert PruneConfig.from_dict(config.to_dict()) == config and config.target_sparsity == 0.75


def test_pruner_refuses_a_table_of_another_model_or_an_unreachable_speedup(tmp_path):
    from vtrans_kernels.prune import PruneConfig, Pruner

    other = tmp_path / "other.json"
    synthetic_table(build("roberta")).save(other)
    config = PruneConfig(target="latency", target_speedup=2.0, latency_table=str(other))
    with pytest.raises(ValueError, match="latency_table \\(--profile\\): .*another model"):
        Pruner(_classifier(), config)
    mine = tmp_path / "mine.json"
    synthetic_table(_classifier()).save(mine)
    with pytest.raises(ValueError, match="target_speedup: 500x is beyond what removing every prunable unit"):
        Pruner(_classifier(), PruneConfig(target="latency", target_speedup=500.0, latency_table=str(mine)))
