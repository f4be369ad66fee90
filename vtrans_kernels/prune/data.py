"""Data for pruning runs: local .csv/.jsonl files or `datasets` names, tokenized into deterministic batches."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

LOCAL_FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json"}


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


def load_text_data(data: str, task: str) -> TextData:
    """Read ``data``: a local .csv/.jsonl/.json file with a ``text`` column (and ``label`` for classification),
    or a `datasets` hub name (needs network). String labels are mapped to ints in sorted order."""
    if task not in ("classification", "lm"):
        raise ValueError(f"task: expected 'classification' or 'lm', got {task!r}")
    import datasets

    path = Path(data)
    if path.suffix.lower() in LOCAL_FORMATS or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"--data: no such file: {data}")
        fmt = LOCAL_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"--data: expected a .csv, .jsonl or .json file, got {path.name}")
        try:
            table = datasets.load_dataset(fmt, data_files=str(path), split="train")
        except Exception as err:  # datasets raises many types for unreadable files
            raise ValueError(f"--data: cannot read {data} as {fmt}: {err}") from None
    else:
        try:
            table = datasets.load_dataset(data, split="train")
        except Exception as err:
            raise ValueError(f"--data: {data!r} is neither a local file nor a loadable `datasets` name: {err}") \
                from None
    needed = ("text", "label") if task == "classification" else ("text",)
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ValueError(f"--data: column(s) {missing} missing in {data}; found {table.column_names}")
    texts = [str(t) for t in table["text"]]
    if not texts:
        raise ValueError(f"--data: {data} has no rows")
    if task == "lm":
        return TextData(texts)
    raw = table["label"]
    values = sorted(set(raw), key=lambda v: (isinstance(v, str), v)) if len({type(v) for v in raw}) == 1 \
        else sorted({str(v) for v in raw})
    names = [str(v) for v in values]
    index = {name: i for i, name in enumerate(names)}
    return TextData(texts, [index[str(v)] for v in raw], names)


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
