"""Evaluation helpers: per-row correctness in a fixed row order, accuracy and perplexity from it."""
import math

import pytest
import torch

from tiny_models import build
from tiny_text import classification_features
from vtrans_kernels.prune.data import Batches
from vtrans_kernels.prune.evaluate import correct_per_row, evaluate


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return classification_features(tmp_path_factory.mktemp("tok"), 37)


def test_correct_per_row_pairs_rows_across_models_and_batch_sizes(features):
    model = build("bert")
    model.train()
    batches = Batches(features, 8, seed=3, fraction=0.7)  # a seeded subset, so the order is not trivially 0..n
    flags = correct_per_row(model, batches, batch_size=5)
    assert model.training  # the mode is restored
    rows = batches.rows.sort().values
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v[rows] for k, v in features.items()}).logits
    torch.testing.assert_close(flags, logits.argmax(-1) == features["labels"][rows], rtol=0, atol=0)
    torch.testing.assert_close(correct_per_row(model, batches, batch_size=64), flags, rtol=0, atol=0)
    accuracy = evaluate(model, batches, "classification", batch_size=5)["accuracy"]
    assert accuracy == pytest.approx(float(flags.float().mean()))


def test_perplexity_is_the_token_weighted_loss(features):
    model = build("gpt2")
    lm = {"input_ids": features["input_ids"] % model.config.vocab_size,
          "attention_mask": features["attention_mask"]}
    lm["labels"] = lm["input_ids"].masked_fill(lm["attention_mask"] == 0, -100)
    result = evaluate(model, Batches(lm, 8), "lm", batch_size=10)
    model.eval()
    with torch.no_grad():
        losses, counts = [], []
        for start in range(0, 37, 10):
            part = {k: v[start:start + 10] for k, v in lm.items()}
            losses.append(float(model(**part).loss))
            counts.append(float(part["attention_mask"][:, 1:].sum()))
    loss = sum(l * c for l, c in zip(losses, counts)) / sum(counts)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
