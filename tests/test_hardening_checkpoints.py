"""Checkpoint files: loaded without running code, refused clearly when old, torn or crafted, written atomically
(previous file intact on a full disk), flushed, never through a planted link; stale temporaries cleared."""
import errno
import os
import pickle

import pytest
import torch

from vtrans_kernels import fileio
from vtrans_kernels.prune.checkpoint import JsonLog, load_checkpoint, save_atomic


class Payload:
    """Unpickling this creates ``marker`` (what a crafted checkpoint in a shared output folder would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(kind, path, marker):
    if kind == "torch zip":
        torch.save({"step": 3, "masks": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"step": 3, "masks": Payload(marker)}))


@pytest.mark.parametrize("kind", ["torch zip", "raw pickle"])
def test_a_crafted_pickle_creates_nothing(tmp_path, kind):
    marker = tmp_path / "pwned"
    _crafted(kind, tmp_path / "checkpoint.pt", marker)
    with pytest.raises(ValueError, match="could run code, so it is not loaded"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert not marker.exists()


def test_old_pickled_checkpoints_are_refused(tmp_path):
    import numpy as np

    # what Pruner.state_dict wrote before: NumPy's RNG state as an ndarray, which only a full unpickler rebuilds
    torch.save({"step": 2, "rng": [{"numpy": np.random.get_state()}]}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"checkpoint\.pt: it holds Python objects other than tensors"):
        load_checkpoint(tmp_path / "checkpoint.pt")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", b"\x80\x02}q\x00"])
def test_torn_or_corrupt_checkpoints_are_clear_errors(tmp_path, content):
    torch.save({"step": 1, "w": torch.ones(1000)}, tmp_path / "good.pt")
    for name, data in (("checkpoint.pt", content), ("half.pt", (tmp_path / "good.pt").read_bytes()[:700])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"{name} is not a readable checkpoint \(truncated or corrupt\?\)"):
            load_checkpoint(tmp_path / name)


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"step": 1, "w": torch.zeros(3)}, path)
    before = path.read_bytes()

    def half_then_full(state, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError, match=r"cannot write .*checkpoint\.pt: no space left on the device.*previous "
                                      r"checkpoint\.pt, if any, is unchanged"):
        save_atomic({"step": 2, "w": torch.ones(3)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left


def test_checkpoints_are_flushed_to_the_device(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    save_atomic({"step": 1}, tmp_path / "checkpoint.pt")
    assert len(synced) == 2  # the file before the rename, the folder after it


def test_a_planted_link_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("checkpoint.pt", "checkpoint.pt.tmp", "log.jsonl"):  # .tmp: the temporary name used to be fixed
        (out / name).symlink_to(victim)
    save_atomic({"step": 1}, out / "checkpoint.pt")
    JsonLog(out / "log.jsonl").write({"step": 1})
    assert victim.read_text() == "keep me"
    assert not (out / "checkpoint.pt").is_symlink() and load_checkpoint(out / "checkpoint.pt") == {"step": 1}
    assert not (out / "log.jsonl").is_symlink()
    (out / "checkpoint.pt").unlink()
    (out / "checkpoint.pt").symlink_to(tmp_path / "elsewhere.pt")
    torch.save({"step": 9}, tmp_path / "elsewhere.pt")
    with pytest.raises(ValueError, match="is a symbolic link; refusing to follow it"):
        load_checkpoint(out / "checkpoint.pt")


def test_stale_temporaries_are_removed(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".checkpoint.pt.abc.tmp").write_bytes(b"torn")
    (out / ".staging-x.tmp").mkdir()
    (out / "link.tmp").symlink_to(victim)
    (out / "plan.json").write_text("{}")
    assert fileio.remove_stale_temporaries(out) == [".checkpoint.pt.abc.tmp", ".staging-x.tmp", "link.tmp"]
    assert os.listdir(out) == ["plan.json"] and (victim / "precious").read_text() == "x"


def test_resumed_log_drops_later_steps_and_a_torn_tail_and_rejects_damage(tmp_path):
    log = JsonLog(tmp_path / "log.jsonl")
    for step in (1, 2, 3):
        log.write({"step": step})
    assert [r["step"] for r in JsonLog(tmp_path / "log.jsonl", resume_step=2).records()] == [1, 2]
    (tmp_path / "log.jsonl").write_text('{"step": 1}\n{"step": 2, "lo')  # the last write cut by a kill
    assert [r["step"] for r in JsonLog(tmp_path / "log.jsonl", resume_step=2).records()] == [1]
    (tmp_path / "log.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"log\.jsonl line 2: not a JSON record; the log is damaged"):
        JsonLog(tmp_path / "log.jsonl", resume_step=2)
