"""Data for pruning runs: local .csv/.jsonl files or `datasets` names, tokenized into deterministic batches."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .datafile import FORMATS as LOCAL_FORMATS
from .datafile import read_rows


@dataclass
class TextData:
    """Texts and (for classification) integer labels, with the label names in index order."""

    texts: list[str]
    labels: list[int] | None = None
    label_names: list[str] | None = None

    def split(self, fraction: float, seed: int) -> tuple["TextData", "TextData"]:
        """(first, second): a seeded random split with ``fraction`` of the rows in the second part."""
        order = torch.randperm(len(self.texts), generator=torch.Generator().manual_seed(seed)).tolist()
        cut = len(order) - max(1, int(round(fraction * len(order))))
        pick = lambda idx: TextData([self.texts[i] for i in idx],  # noqa: E731
                                    None if self.labels is None else [self.labels[i] for i in idx], self.label_names)
        return pick(order[:cut]), pick(order[cut:])


def load_text_data(data: str, task: str, num_labels: int | None = None) -> TextData:
    """Read ``data``: a local .csv/.jsonl/.json file with a ``text`` column (and ``label`` for classification),
    or a `datasets` hub name (needs network).

    Labels are either all integers or all class names. Names, and integers without ``num_labels``, are mapped
    to class ids in sorted order; with ``num_labels`` (the classes of a model's trained classifier) integer
    labels are the class ids themselves. Raises ``ValueError`` naming the file, the row (and line) and the
    column for an empty or unreadable file, a missing column, an empty text, a blank or mixed label, a single
    class, or a class id outside ``num_labels``."""
    if task not in ("classification", "lm"):
        raise ValueError(f"task: expected 'classification' or 'lm', got {task!r}")
    path = Path(data)
    if path.suffix.lower() in LOCAL_FORMATS or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"--data: no such file: {data}")
        columns, rows = read_rows(path)
    else:
        columns, rows = _hub_rows(data)
    needed = ("text", "label") if task == "classification" else ("text",)
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(f"--data: column(s) {missing} missing in {data}; found {columns}")
    texts = [_text(data, where, row) for where, row in rows]
    if task == "lm":
        return TextData(texts)
    labels, names = _class_ids(data, [(where, _label(data, where, row)) for where, row in rows], num_labels)
    return TextData(texts, labels, names)


def _hub_rows(name: str) -> tuple[list[str], list[tuple[str, dict]]]:
    import datasets

    try:
        table = datasets.load_dataset(name, split="train")
    except Exception as err:  # datasets raises many types
        raise ValueError(f"--data: {name!r} is neither a local file nor a loadable `datasets` name: {err}") \
            from None
    return list(table.column_names), [(f"row {i}", row) for i, row in enumerate(table, 1)]


def _text(data: str, where: str, row: dict) -> str:
    text = row.get("text")
    if not isinstance(text, str):
        raise ValueError(f"--data: {data} {where}, column 'text': expected a string, got {text!r}")
    if not text.strip():
        raise ValueError(f"--data: {data} {where}, column 'text': empty text")
    return text


def _label(data: str, where: str, row: dict) -> int | str:
    """A label as an int (integers, and strings that spell one) or a stripped class name."""
    label = row.get("label")
    if isinstance(label, str):
        label = label.strip()
        if _INTEGER.fullmatch(label):
            return int(label)
    elif isinstance(label, float) and label.is_integer():
        label = int(label)
    if label is None or label == "":
        raise ValueError(f"--data: {data} {where}, column 'label': blank label")
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise ValueError(f"--data: {data} {where}, column 'label': expected an integer class id or a class "
                         f"name, got {label!r}")
    return label


_INTEGER = re.compile(r"[+-]?\d+")


def _class_ids(data: str, labels: list[tuple[str, int | str]], num_labels: int | None):
    """Class ids and names of ``(where, label)`` pairs (see :func:`load_text_data`)."""
    numeric = [(w, v) for w, v in labels if isinstance(v, int)]
    named = [(w, v) for w, v in labels if isinstance(v, str)]
    if numeric and named:
        (w_name, name), (w_num, number) = named[0], numeric[0]
        raise ValueError(f"--data: {data} {w_name}, column 'label': {name!r} is not an integer, while {w_num} has "
                         f"the integer label {number}; use integer class ids or class names throughout")
    values = sorted({v for _, v in labels})
    if len(values) < 2:
        raise ValueError(f"--data: {data}: every row has the label {values[0]!r}; classification needs at least "
                         "two classes")
    if num_labels is not None and numeric:
        for where, value in numeric:
            if not 0 <= value < num_labels:
                raise ValueError(f"--data: {data} {where}, column 'label': class id {value} is outside the model's "
                                 f"{num_labels} labels (0..{num_labels - 1})")
        return [v for _, v in labels], [str(i) for i in range(num_labels)]
    if num_labels is not None and len(values) > num_labels:
        raise ValueError(f"--data: {data} has {len(values)} classes ({', '.join(map(str, values[:10]))}), but the "
                         f"model's classifier has {num_labels} labels")
    index = {v: i for i, v in enumerate(values)}
    return [index[v] for _, v in labels], [str(v) for v in values]


def tokenize_classification(data: TextData, tokenizer, max_length: int) -> dict[str, torch.Tensor]:
    """Padded ``input_ids``/``attention_mask`` (to the longest text, at most ``max_length``) and ``labels``."""
    enc = tokenizer(data.texts, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
    features = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    features["labels"] = torch.tensor(data.labels, dtype=torch.long)
    return features


def tokenize_lm(data: TextData, tokenizer, block_size: int) -> dict[str, torch.Tensor]:
    """The texts joined (EOS between them when the tokenizer has one) and cut into ``block_size`` blocks."""
    ids: list[int] = []
    for text in data.texts:
        ids.extend(tokenizer(text)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    blocks = len(ids) // block_size
    if blocks == 0:
        raise ValueError(f"--data: {len(ids)} tokens is less than one block of {block_size}")
    input_ids = torch.tensor(ids[: blocks * block_size], dtype=torch.long).view(blocks, block_size)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


class Batches:
    """Deterministic batches over tokenized ``features``: batch ``step`` is a pure function of (seed, step), so
    a resumed run sees exactly the batches an uninterrupted one would. ``fraction`` keeps a seeded subset of the
    rows (Fast/Faster-VTrans train on about 3%), at least one batch worth."""

    def __init__(self, features: dict[str, torch.Tensor], batch_size: int, *, seed: int = 0, fraction: float = 1.0):
        rows = {v.shape[0] for v in features.values()}
        if len(rows) != 1:
            raise ValueError(f"Batches: features disagree on the number of rows: {sorted(rows)}")
        self.features, self.batch_size, self.seed = features, int(batch_size), int(seed)
        total = rows.pop()
        keep = min(total, max(self.batch_size, int(round(fraction * total))))
        self.rows = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:keep]
        self._orders: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return int(self.rows.numel())

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1)
            self._orders = {epoch: self.rows[torch.randperm(len(self), generator=gen)]}
        return self._orders[epoch]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        index = torch.stack([self._order(p // len(self))[p % len(self)] for p in positions])
        return {k: v[index] for k, v in self.features.items()}

    def sequential(self, batch_size: int | None = None):
        """Every kept row once, in order (for evaluation)."""
        size = batch_size or self.batch_size
        for start in range(0, len(self), size):
            index = self.rows.sort().values[start:start + size]
            yield {k: v[index] for k, v in self.features.items()}
