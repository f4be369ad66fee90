"""The distillation terms of the pruning objective against direct computations."""
import pytest
import torch
import torch.nn.functional as F

from vtrans_kernels.prune.objective import hidden_distillation, logit_distillation


def test_logit_distillation_is_the_scaled_kl_over_real_tokens():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    attention_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    temperature = 2.0
    real = attention_mask.bool()
    expected = F.kl_div(F.log_softmax(student[real] / temperature, -1), F.log_softmax(teacher[real] / temperature, -1),
                        log_target=True, reduction="batchmean") * temperature ** 2
    got = logit_distillation(student, teacher, temperature, attention_mask)
    torch.testing.assert_close(got, expected)
    # classifier logits [batch, labels]: the mean over rows
    pooled = logit_distillation(student[:, 0], teacher[:, 0], 1.0)
    torch.testing.assert_close(pooled, F.kl_div(F.log_softmax(student[:, 0], -1), F.log_softmax(teacher[:, 0], -1),
                                                log_target=True, reduction="batchmean"))


def test_hidden_distillation_averages_kept_dims_real_tokens_and_layers():
    torch.manual_seed(0)
    student = tuple(torch.randn(2, 4, 6) for _ in range(3))
    teacher = tuple(torch.randn(2, 4, 6) for _ in range(3))
    keep = torch.tensor([True, False, True, True, False, True])
    attention_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    real = attention_mask.bool()
    expected = torch.stack([(s - t)[real][:, keep].square().mean() for s, t in zip(student, teacher)]).mean()
    torch.testing.assert_close(hidden_distillation(student, teacher, keep, attention_mask), expected)
    everything = torch.stack([(s - t).square().mean() for s, t in zip(student, teacher)]).mean()
    torch.testing.assert_close(hidden_distillation(student, teacher), everything)


def test_relative_hidden_distillation_divides_each_layer_by_the_teacher_power():
    torch.manual_seed(0)
    student = (torch.randn(2, 4, 6), 100 * torch.randn(2, 4, 6))  # the second layer on a 100x larger scale
    teacher = (torch.randn(2, 4, 6), 100 * torch.randn(2, 4, 6))
    keep = torch.tensor([True, True, False, True, True, True])
    attention_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    real = attention_mask.bool()
    expected = torch.stack([(s - t)[real][:, keep].square().mean() / t[real][:, keep].square().mean()
                            for s, t in zip(student, teacher)]).mean()
    got = hidden_distillation(student, teacher, keep, attention_mask, relative=True)
    torch.testing.assert_close(got, expected)
    assert got.item() < 10  # the plain MSE is dominated by the large layer: about 1e4
    assert hidden_distillation(student, teacher, keep, attention_mask).item() > 1e3


def test_hidden_distillation_is_zero_once_every_hidden_dim_is_pruned():
    student, teacher = (torch.randn(1, 3, 4),), (torch.randn(1, 3, 4),)
    value = hidden_distillation(student, teacher, torch.zeros(4, dtype=torch.bool))
    assert value.item() == 0.0


def test_hidden_distillation_rejects_mismatched_layers():
    with pytest.raises(ValueError, match="2 student vs 1 teacher"):
        hidden_distillation((torch.zeros(1, 2, 3),) * 2, (torch.zeros(1, 2, 3),))
