"""Per-row results of the encoder study's cells: which dev and test rows each fine-tuned model got right.

A cell's accuracy is one number; two methods' accuracies on the same rows pair up row by row, which tells a real
gap from the splits' sampling noise (``paired.py``). The records sit next to the results CSV, one JSON line per
cell: its ``CELL_KEY`` values (as the CSV holds them, strings), the task, and a "0"/"1" string per split in
``Batches.sequential`` order.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def records_path(csv_path: Path) -> Path:
    """The record file of the results CSV at ``csv_path``: ``encoder_sentiment.csv`` -> ``encoder_sentiment.rows.jsonl``."""
    return csv_path.with_suffix(".rows.jsonl")


def load_records(path: Path) -> list[dict]:
    """Every record in ``path`` (none when it does not exist)."""
    if not path.exists():
        return []
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def recorded_cells(path: Path, keys: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The ``keys`` values of every recorded cell, as ``done_cells`` gives them for the CSV."""
    return {tuple(record["cell"].get(k, "") for k in keys) for record in load_records(path)}


def append_record(path: Path, cell: dict, task: str, correct: dict[str, torch.Tensor]) -> None:
    """Add the record of ``cell`` (its key columns) on ``task``: ``correct`` maps a split to a bool [rows]."""
    record = {"cell": {k: str(v) for k, v in cell.items()}, "task": task,
              **{split: "".join("1" if flag else "0" for flag in flags.tolist()) for split, flags in correct.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def flags(record: dict, split: str) -> torch.Tensor:
    """A record's per-row results on ``split`` as a bool tensor."""
    return torch.tensor([c == "1" for c in record[split]], dtype=torch.bool)
