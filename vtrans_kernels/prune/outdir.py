"""Output folders that protect the user's files: never an input's folder, never an earlier run's folder unless
asked to continue it (``--resume``) or replace it (``--overwrite``)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Mapping

from ..fileio import TMP_SUFFIX


def _inside(child: str, parent: str) -> bool:
    return child == parent or os.path.commonpath([child, parent]) == parent


def check_not_input(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse an output folder that is an input (``{"--model": path, ...}``), lies inside an input folder, or
    holds an input: writing there could overwrite or delete it. Links are resolved first."""
    target = os.path.realpath(out)
    for option, path in inputs.items():
        if path is None or not os.path.exists(path):
            continue
        source = os.path.realpath(path)
        if _inside(target, source):
            raise ValueError(f"--out {out} is {'' if target == source else 'inside '}{option} {path}; writing there "
                             f"would overwrite the input; choose another --out")
        if _inside(source, target):
            raise ValueError(f"{option} {path} lies inside --out {out}; a run writes and (with --overwrite) "
                             "deletes files there; keep inputs outside --out")


def prepare_out(out: str | os.PathLike, *, resume: bool, overwrite: bool, ours: Callable[[str], bool],
                clear: bool = True) -> Path:
    """Make ``out`` ready for a run: with ``resume`` it is used as it is; otherwise it must be missing or empty,
    or with ``overwrite`` the entries ``ours(name)`` accepts (an earlier run's files) are removed, links removed
    without following them. ``clear=False`` only checks (call it again once the inputs have loaded, so that a
    failing input does not cost the earlier run). Raises ``ValueError`` naming the folder and what to pass."""
    out = Path(out)
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it; pass one of them")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a folder")
    if resume or not out.exists():
        return out
    entries = sorted(name for name in os.listdir(out) if not name.endswith(TMP_SUFFIX))
    if entries and not overwrite:
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise ValueError(f"--out {out} is not empty ({shown}); pass --resume to continue the run there, --overwrite "
                         "to replace it, or choose another --out")
    for name in entries if clear else ():
        if ours(name):
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    return out
