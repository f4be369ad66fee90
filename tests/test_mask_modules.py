"""Mask modules, MaskSet decisions, the size measure and the Lagrangian."""
import math

import pytest
import torch

from vtrans_kernels.masks import (ArchitectureSpec, HardConcreteMask, Lagrangian, MaskSet, SizeMeasure, VIBMask,
                                  make_mask)
from vtrans_kernels.masks.gates import LOG_ALPHA_MAX, LOG_ALPHA_MIN
from vtrans_kernels.ops import hard_concrete_expected_l0

SPEC = ArchitectureSpec(hidden_size=40, units_per_layer=(6, 6, 6), ffn_per_layer=(97, 97, 97), q_heads_per_unit=1,
                        kv_heads_per_unit=1, head_dim=8, qkv_bias=True, o_bias=True, ffn_inputs=1, ffn_in_bias=True,
                        ffn_out_bias=True, norm_params=2, pre_ln=False, embedding_rows=100, embedding_norm=True,
                        final_norm=False)


def test_vib_mask_decision_count_kl_and_gates():
    torch.manual_seed(0)
    mask = VIBMask(13)
    with torch.no_grad():
        mask.mu.uniform_(-1, 1)
        mask.log_sigma2.uniform_(-3, 1)
    sigma2 = mask.log_sigma2.exp()
    assert torch.equal(mask.keep(), mask.mu.detach().square() > sigma2.detach())
    torch.testing.assert_close(mask.kl(), 0.5 * torch.log1p(mask.mu.square() / sigma2).sum())
    soft = torch.sigmoid(10 * (torch.log(mask.mu.square()) - mask.log_sigma2)).sum()
    torch.testing.assert_close(mask.soft_count(), soft)
    torch.testing.assert_close(mask.eval_gate(), mask.mu * mask.keep())
    x = torch.randn(5, 13)
    torch.testing.assert_close(mask.gate_last_dim(x, 0, training=False), x * mask.eval_gate())
    # Training: per-row noise, deterministic per seed, the same seed gives the same gates in both forms.
    a, b = mask.gate_last_dim(torch.ones(5, 13), 7, True), mask.gate_last_dim(torch.ones(5, 13), 7, True)
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    torch.testing.assert_close(mask.unit_gates(5, 7, True), a)
    assert not torch.equal(a, mask.gate_last_dim(torch.ones(5, 13), 8, True))


def test_hard_concrete_mask_constrain_scale_and_keep():
    torch.manual_seed(0)
    mask = HardConcreteMask(11)
    with torch.no_grad():
        mask.log_alpha.uniform_(-9, 9)
    mask.constrain()
    assert mask.log_alpha.min() >= LOG_ALPHA_MIN and mask.log_alpha.max() <= LOG_ALPHA_MAX
    torch.testing.assert_close(mask.scale(), torch.sigmoid(0.8 * mask.log_alpha.detach() / (2 / 3)))
    expected = torch.sigmoid(mask.log_alpha - 2 / 3 * math.log(0.1 / 1.1)).sum()
    torch.testing.assert_close(mask.soft_count(), expected)
    assert mask.keep().sum() == int(torch.floor(expected + 0.5))
    # One sample per step shared by all rows.
    gates = mask.gate_last_dim(torch.ones(4, 11), 3, True)
    assert torch.equal(gates[0], gates[3])
    assert torch.equal(mask.training_keep(3), gates[0] != 0)


def test_make_mask_errors():
    with pytest.raises(ValueError, match="method"):
        make_mask("l1", 3)
    with pytest.raises(ValueError, match="units"):
        VIBMask(0)
    with pytest.raises(ValueError, match="drop"):
        HardConcreteMask(3, drop=1.0)
    with pytest.raises(ValueError, match="mask_init"):
        MaskSet(SPEC, "vib", mask_init={"drop": 0.3})
    masks = MaskSet(SPEC, "vib", mask_init={"log_sigma2": -4.0})
    assert abs(masks.ffn[0].log_sigma2.mean().item() + 4.0) < 0.01
    with pytest.raises(ValueError, match="structures"):
        MaskSet(SPEC, "vib", ("hidden", "layers"))
    with pytest.raises(ValueError, match="target"):
        SizeMeasure(SPEC, "latency")


@pytest.mark.parametrize("method", ["vib", "hard_concrete"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("kind", ["params", "flops"])
def test_decide_hits_the_target(method, target, kind):
    torch.manual_seed(1)
    masks = MaskSet(SPEC, method)
    for _, _, mask in masks.masks():
        for p in mask.parameters():
            with torch.no_grad():
                p.normal_(0, 2)
    measure = SizeMeasure(SPEC, kind, seq_len=16)
    decision = masks.decide(measure, target)
    assert abs(masks.sparsity(measure, decision) - target) < 0.01
    assert decision.hidden.any()
    # Kept units are the best scored: no pruned unit outscores a kept one within a mask.
    for keep, (_, _, mask) in zip([decision.hidden, *decision.heads, *decision.ffn], masks.masks()):
        if keep.any() and (~keep).any():
            assert mask.score()[keep].min() >= mask.score()[~keep].max()


def test_decide_keeps_the_decision_when_within_tolerance():
    masks = MaskSet(SPEC, "vib")
    measure = SizeMeasure(SPEC)
    decision = masks.decision()
    sparsity = masks.sparsity(measure)
    again = masks.decide(measure, sparsity + 0.001)
    assert all(torch.equal(a, b) for a, b in zip(decision.ffn, again.ffn))


def test_expected_sparsity_is_differentiable_and_matches_counts():
    masks = MaskSet(SPEC, "hard_concrete", ("heads", "ffn"))
    measure = SizeMeasure(SPEC)
    expected = masks.expected_sparsity(measure)
    expected.backward()
    assert all(m.log_alpha.grad is not None and m.log_alpha.grad.abs().sum() > 0 for _, _, m in masks.masks())
    counts = masks.soft_counts()
    assert counts[0] == SPEC.hidden_size
    torch.testing.assert_close(expected, 1 - measure.size(*counts) / measure.size())


def test_step_seeds_follow_the_counter_and_survive_state_dict():
    masks = MaskSet(SPEC, "vib", seed=5)
    masks.new_step()
    masks.new_step()
    seed = masks.site_seed(3)
    other = MaskSet(SPEC, "vib", seed=5)
    other.load_state_dict(masks.state_dict())
    assert other.site_seed(3) == seed and other.site_seed(4) != seed


def test_lagrangian_ascends_and_ramps():
    lag = Lagrangian(0.6, warmup_steps=10, initial=0.1)
    assert lag.target_at(0) == 0.1 and lag.target_at(5) == pytest.approx(0.35) and lag.target_at(99) == 0.6
    opt = torch.optim.SGD(lag.parameters(), lr=1.0)
    lag(torch.tensor(0.2), step=10).backward()   # gap = -0.4 (not sparse enough)
    opt.step()
    assert lag.lambda1.item() == pytest.approx(-0.4)   # ascent: lambda1 moves along the gap
    assert lag.lambda2.item() == pytest.approx(0.16)
    with pytest.raises(ValueError, match="target_sparsity"):
        Lagrangian(1.0, 5)


def test_vib_straight_through_count_is_the_decision_with_a_gradient_far_from_the_boundary():
    torch.manual_seed(0)
    soft, straight = VIBMask(50, log_sigma2=-2.0), VIBMask(50, log_sigma2=-2.0, straight_through=1.0)
    straight.load_state_dict(soft.state_dict())
    with torch.no_grad():
        for mask in (soft, straight):
            mask.mu[:20] = 0.1  # log SNR about -2.6: pruned; the other 30 sit at +2: kept
    assert straight.soft_count().item() == straight.keep().sum().item() == 30
    for mask in (soft, straight):
        mask.soft_count().backward()
    # 2 units of log SNR from the boundary sigmoid(10 x) is flat (gradient ~1e-8); the straight-through count still
    # pulls on every unit
    assert soft.log_sigma2.grad.abs().max().item() < 1e-6
    assert straight.log_sigma2.grad.abs().min().item() > 1e-2
    with pytest.raises(ValueError, match="straight_through: expected a temperature > 0"):
        VIBMask(3, straight_through=0.0)


@pytest.mark.parametrize("method", ["vib", "hard_concrete"])
@pytest.mark.parametrize("count", [0, 1, 20, 96, 97])
def test_keep_top_keeps_the_best_scored_units_and_their_ranking(method, count):
    torch.manual_seed(2)
    mask = MaskSet(SPEC, method).ffn[0]
    with torch.no_grad():
        for p in mask.parameters():
            p.normal_(0, 1.5)
    order = torch.argsort(mask.score(), descending=True)
    mask.keep_top(count)
    if method == "hard_concrete":
        # its decision keeps round(expected L0) units, which log_alpha's clamp keeps off the extremes (DESIGN 2.2)
        reach = [round(float(hard_concrete_expected_l0(torch.full((97,), bound)).sum()))
                 for bound in (LOG_ALPHA_MIN, LOG_ALPHA_MAX)]
        if not reach[0] < count < reach[1]:
            assert int(mask.keep().sum()) == min(max(count, reach[0]), reach[1])
            return
    assert int(mask.keep().sum()) == count
    assert (mask.score()[order].diff() <= 0).all()  # the ranking stays (hard-concrete's clamp may tie units)
    assert set(order[:count].tolist()) == set(torch.nonzero(mask.keep()).flatten().tolist())
    with pytest.raises(ValueError, match="count"):
        mask.keep_top(98)


@pytest.mark.parametrize("method", ["vib", "hard_concrete"])
@pytest.mark.parametrize("target", [0.25, 0.6, 0.85])
def test_hold_puts_the_decision_on_the_target(method, target):
    torch.manual_seed(3)
    masks = MaskSet(SPEC, method)
    with torch.no_grad():
        for p in masks.mask_parameters():
            p.normal_(0, 2)
    measure = SizeMeasure(SPEC)
    planned = masks.decide(measure, target)
    masks.hold(measure, target)
    assert abs(masks.sparsity(measure) - target) < 0.01
    held = masks.decision()
    assert all(torch.equal(a, b) for a, b in zip([planned.hidden, *planned.heads, *planned.ffn],
                                                  [held.hidden, *held.heads, *held.ffn]))


def test_lagrangian_reports_crossings_of_the_target():
    lag = Lagrangian(0.6, warmup_steps=0)
    assert [lag.crossed(gap) for gap in (-0.3, -0.1, 0.0, 0.02, 0.01, -0.01)] == [False, False, False, True,
                                                                                     False, True]
    again = Lagrangian(0.6, warmup_steps=0)
    again.load_state_dict(lag.state_dict())
    assert again.crossed(0.05)  # the side survives a checkpoint


def test_hold_keeps_vib_scores_comparable_across_masks():
    torch.manual_seed(4)
    masks = MaskSet(SPEC, "vib")
    with torch.no_grad():
        for p in masks.mask_parameters():
            p.normal_(0, 2)
    scores = torch.cat([m.score() for _, _, m in masks.masks()])
    measure = SizeMeasure(SPEC)
    masks.hold(measure, 0.6)
    held = torch.cat([m.score() for _, _, m in masks.masks()])
    assert torch.allclose(held - scores, (held - scores)[:1].expand_as(held), atol=1e-5)  # one shift for all
    assert masks.decide(measure, 0.6).ffn[1].tolist() == masks.decision().ffn[1].tolist()


def _scrambled_masks(method: str, seed: int) -> MaskSet:
    torch.manual_seed(seed)
    masks = MaskSet(SPEC, method)
    with torch.no_grad():
        for p in masks.mask_parameters():
            p.normal_(0, 2)
        if method == "vib":  # the heads of the first layer far above everything else: "scores" keeps them all
            masks.heads[0].log_sigma2.sub_(20.0)
    return masks


def _fractions(decision, spec) -> dict:
    hidden, heads, ffn = decision.counts(spec)
    return {"hidden": hidden / spec.hidden_size, "heads": [k / n for k, n in zip(heads, spec.units_per_layer)],
            "ffn": [k / n for k, n in zip(ffn, spec.ffn_per_layer)]}


@pytest.mark.parametrize("method", ["vib", "hard_concrete"])
@pytest.mark.parametrize("target", [0.3, 0.6])
def test_allocations_share_the_target_as_they_say(method, target):
    masks = _scrambled_masks(method, 5)
    measure = SizeMeasure(SPEC)
    heads_total, ffn_total = sum(SPEC.units_per_layer), sum(SPEC.ffn_per_layer)
    for allocation in ("structure", "layer"):
        decision = masks.decide(measure, target, allocation=allocation)
        assert abs(masks.sparsity(measure, decision) - target) < 0.02, allocation
        _, heads, ffn = decision.counts(SPEC)
        fractions = _fractions(decision, SPEC)
        # hidden dims and heads keep one fraction (rounded up per group); the FFN's is re-chosen to land on target
        head_fraction = sum(heads) / heads_total
        assert abs(fractions["hidden"] - head_fraction) <= 1 / min(SPEC.units_per_layer) + 1e-9, allocation
        assert abs(sum(ffn) / ffn_total - head_fraction) < 0.35, allocation
        if allocation == "layer":
            assert len(set(fractions["heads"])) == 1 and len(set(fractions["ffn"])) == 1
        # within a group (all heads, or one layer's) the kept units outscore the dropped ones
        pairs = list(zip(decision.heads, [m for s, _, m in masks.masks() if s == "heads"]))
        groups = [pairs] if allocation == "structure" else [[pair] for pair in pairs]
        for group in groups:
            kept = torch.cat([m.score()[k] for k, m in group])
            dropped = torch.cat([m.score()[~k] for k, m in group])
            if kept.numel() and dropped.numel():
                assert kept.min() >= dropped.max(), allocation
    if method == "vib":  # by one threshold the first layer keeps every head; shared fractions do not
        assert masks.decide(measure, target).heads[0].all()
        assert not masks.decide(measure, target, allocation="layer").heads[0].all()


@pytest.mark.parametrize("allocation", ["structure", "layer"])
def test_hold_under_an_allocation_makes_it_the_masks_own_decision(allocation):
    masks = _scrambled_masks("vib", 6)
    measure = SizeMeasure(SPEC)
    planned = masks.decide(measure, 0.5, allocation=allocation)
    masks.hold(measure, 0.5, allocation)
    held = masks.decision()
    assert all(torch.equal(a, b) for a, b in zip([planned.hidden, *planned.heads, *planned.ffn],
                                                  [held.hidden, *held.heads, *held.ffn]))
    # the plan of the held masks needs no adjusting: the own decision is the allocation's
    again = masks.decide(measure, 0.5, allocation=allocation)
    assert all(torch.equal(a, b) for a, b in zip(held.heads + held.ffn, again.heads + again.ffn))


def test_allocation_is_checked():
    masks = MaskSet(SPEC, "vib")
    with pytest.raises(ValueError, match="allocation"):
        masks.decide(SizeMeasure(SPEC), 0.5, allocation="even")
