"""Checkpoint files (tensors and plain data only, loaded without running code) and the JSON-lines run log."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from ..fileio import append_line, atomic_write, open_existing, write_text

# What a refused pickle is, said once for every message that refuses one.
_PICKLE_REFUSED = ("it holds Python objects other than tensors and plain data (a checkpoint written by "
                   "vtrans-kernels before checkpoints became code-free, or a crafted file), and loading those could "
                   "run code, so it is not loaded")


def save_atomic(state: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` of ``state`` (tensors, numbers, strings, lists, tuples and dicts only) to a temporary file
    beside ``path``, flushed to the device, then renamed over it: a crash or a full disk leaves either the previous
    file or the new one, and a symbolic link at ``path`` is replaced, not followed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: torch.save(state, f), fsync=True)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a file written by :func:`save_atomic` with ``torch.load(weights_only=True)``, which builds tensors and
    plain data only and never runs code from the file.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for a symbolic link, a
    truncated or corrupt file, or one holding other Python objects (old pickled checkpoints)."""
    path = Path(path)
    if not path.is_file() and not path.is_symlink():
        raise FileNotFoundError(f"resume: no checkpoint at {path} (no run there, or it stopped before its first "
                                "checkpoint: start it again with --overwrite)")
    with open_existing(path, "rb") as f:
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if "weights_only" in str(err) or "Weights only load failed" in str(err):
                raise ValueError(f"resume: refusing {path}: {_PICKLE_REFUSED}; start a new run (--overwrite)") \
                    from None
            raise ValueError(f"resume: {path} is not a readable checkpoint (truncated or corrupt?): "
                             f"{_first_line(err)}") from None
        except (RuntimeError, EOFError, OSError, ValueError, TypeError) as err:
            raise ValueError(f"resume: {path} is not a readable checkpoint (truncated or corrupt?): "
                             f"{_first_line(err)}") from None
    if not isinstance(state, dict):
        raise ValueError(f"resume: {path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def _is_record(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class JsonLog:
    """Append-only JSON-lines log; on resume, entries past the checkpoint's step are dropped."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and (self.path.exists() or self.path.is_symlink()):
            kept = [line for line in self._lines(torn_tail=True) if json.loads(line).get("step", 0) <= resume_step]
        write_text(self.path, "".join(line + "\n" for line in kept))  # replaces a planted link, never follows it

    def _lines(self, torn_tail: bool = False) -> list[str]:
        """The log's records; with ``torn_tail`` an unreadable last line (a write cut by a kill) is dropped."""
        with open_existing(self.path, "r") as f:
            lines = [line for line in f.read().splitlines() if line]
        if torn_tail and lines and not _is_record(lines[-1]):
            lines.pop()
        for number, line in enumerate(lines, 1):
            if not _is_record(line):
                raise ValueError(f"{self.path} line {number}: not a JSON record; the log is damaged "
                                 "(start a new run with --overwrite)")
        return lines

    def write(self, record: dict) -> None:
        append_line(self.path, json.dumps(record))

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self._lines()]
