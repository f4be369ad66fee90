"""Tiny text tasks for pipeline tests: a word-level tokenizer over the tiny models' vocabulary, a labelled
synthetic corpus, and model folders that `vtrans prune` can load."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from transformers import BertTokenizer

from tiny_models import VOCAB, build

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [f"w{i}" for i in range(VOCAB - len(SPECIAL))]


def tokenizer(folder: Path) -> BertTokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"), do_lower_case=False)


def rows(count: int, seed: int = 0) -> list[dict]:
    """Sentences of random words; the label says whether word w0..w9 appears more than w10..w19 (learnable)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(0, 30, (int(torch.randint(4, 12, (), generator=gen)),), generator=gen).tolist()
        label = "pos" if sum(i < 10 for i in ids) > sum(10 <= i < 20 for i in ids) else "neg"
        out.append({"text": " ".join(WORDS[i] for i in ids), "label": label})
    return out


def write_data(path: Path, count: int = 96, fmt: str = "csv", columns=("text", "label")) -> Path:
    data = [{c: r[c] for c in columns} for r in rows(count)]
    if fmt == "csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(data)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return path


def model_folder(folder: Path, name: str = "bert") -> Path:
    """A tiny random model of ``name`` saved with a tokenizer, for the CLI."""
    model = build(name)
    model.config.num_labels = 2
    if hasattr(model, "classifier") or hasattr(model, "score"):
        model = type(model)(model.config)
    model.save_pretrained(folder)
    tokenizer(folder).save_pretrained(folder)
    return folder


def classification_features(folder: Path, count: int, length: int = 16) -> dict:
    """``rows(count)`` as tokenized classification features (label 1 for "pos"), by a tokenizer written to
    ``folder``."""
    from vtrans_kernels.prune.data import TextData, tokenize_classification

    data = rows(count)
    text = TextData([r["text"] for r in data], [int(r["label"] == "pos") for r in data], ["neg", "pos"])
    return tokenize_classification(text, tokenizer(folder), length)
