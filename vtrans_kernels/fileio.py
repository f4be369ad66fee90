"""Writing and reading files in folders the user does not fully control (shared output folders).

Every file is written to a fresh temporary file in the same folder and renamed over its final name: a crash or a
full disk never leaves a torn file under that name, and a symbolic link planted there is replaced, never followed.
Existing files are opened with ``O_NOFOLLOW``. Temporary names end in ``.tmp`` so that a later run can clear what a
killed one left behind (:func:`remove_stale_temporaries`).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

TMP_SUFFIX = ".tmp"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it): new files get the usual mode
os.umask(_UMASK)


def _write_error(path: Path, err: OSError) -> OSError:
    """The error to raise when writing ``path`` failed: a full disk gets its own plain message."""
    if err.errno in _DISK_FULL:
        return OSError(err.errno, f"cannot write {path}: no space left on the device (or file size limit reached); "
                                  f"the previous {path.name}, if any, is unchanged")
    return OSError(err.errno, f"cannot write {path}: {err.strerror or err}")


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *, fsync: bool = False) -> Path:
    """Write ``path`` by calling ``write(file)`` on a new temporary file beside it, then renaming it over ``path``.

    A symbolic link at ``path`` is replaced by the file, not followed. With ``fsync`` the file and its folder are
    flushed to the device before returning (checkpoints: the rename is then durable too). On any failure the
    temporary file is removed and ``path`` keeps its previous content; a full disk raises an ``OSError`` saying so.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; a written file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:  # Ctrl-C included: never leave the temporary file behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _write_error(path, err) from None
        raise
    if fsync:
        _fsync_folder(path.parent)
    return path


def write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data), fsync=fsync)


def write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    """:func:`atomic_write` of ``text`` encoded as UTF-8."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def open_existing(path: str | os.PathLike, mode: str = "rb"):
    """Open an existing file without following a symbolic link at ``path`` (``mode`` "rb", "r" or "a").

    Raises ``ValueError`` naming the file when it is a symbolic link, ``FileNotFoundError`` when it is missing."""
    flags = {"rb": os.O_RDONLY, "r": os.O_RDONLY, "a": os.O_WRONLY | os.O_APPEND}[mode]
    try:
        fd = os.open(path, flags | _NOFOLLOW)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link; refusing to follow it (remove the link)") from None
        raise
    return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` and a newline to the existing file ``path`` (never through a symbolic link)."""
    try:
        with open_existing(path, "a") as f:
            f.write(line + "\n")
    except OSError as err:
        raise _write_error(Path(path), err) from None


def real_folder(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` (and its parents); a symbolic link at ``path`` itself is removed first, so files
    written into the folder land inside it and not wherever the link points."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder inside ``folder`` for a writer that takes a folder (``save_pretrained``); when the block
    ends without error, each file written there is renamed into ``folder`` (replacing, not following, links)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=folder, prefix=".staging-", suffix=TMP_SUFFIX))
    try:
        yield stage
        for name in sorted(os.listdir(stage)):
            target = folder / name
            if (stage / name).is_file():  # writers such as safetensors make owner-only files
                os.chmod(stage / name, 0o666 & ~_UMASK)
            if (stage / name).is_dir() and not target.is_symlink() and target.is_dir():
                shutil.rmtree(target)
            os.replace(stage / name, target)
    except OSError as err:
        raise _write_error(folder, err) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove the ``*.tmp`` entries a killed writer left directly in ``folder`` (links are removed, not
    followed). Returns their names."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in os.scandir(folder):
        if not entry.name.endswith(TMP_SUFFIX):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.unlink(entry.path)
        removed.append(entry.name)
    return sorted(removed)


__all__ = ["atomic_write", "write_bytes", "write_text", "open_existing", "append_line", "real_folder",
           "staged_folder", "remove_stale_temporaries"]
