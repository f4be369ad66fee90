"""A run killed (SIGKILL) at random moments of mask training: the checkpoint is always a whole one (the previous or
the new), the input model is untouched, and the next ``--resume`` continues from it after clearing what the killed
writer left behind."""
import hashlib
import os
import random
import subprocess
import sys
import time

from tiny_text import model_folder, write_data

from vtrans_kernels.prune.checkpoint import load_checkpoint

KILLS = 3
PLANTED = ".checkpoint.pt.leftover.tmp"  # what a writer killed mid-save leaves


def _snapshot(folder):
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in sorted(os.listdir(folder))}


def _wait_for_new_checkpoint(run, checkpoint, previous_mtime, timeout=180):
    deadline = time.monotonic() + timeout
    while run.poll() is None and time.monotonic() < deadline:
        if checkpoint.exists() and checkpoint.stat().st_mtime_ns != previous_mtime:
            return
        time.sleep(0.02)
    raise AssertionError(f"no new checkpoint (exit code {run.poll()}): {run.stderr.read().decode()[-2000:]}")


def test_sigkill_at_random_moments_leaves_a_whole_checkpoint(tmp_path):
    model = model_folder(tmp_path / "model")
    data = write_data(tmp_path / "train.csv", 48)
    out = tmp_path / "out"
    checkpoint = out / "checkpoint.pt"
    before = _snapshot(model)
    command = [sys.executable, "-m", "vtrans_kernels.cli", "prune", "--model", str(model), "--data", str(data),
               "--out", str(out), "--steps", "1000", "--checkpoint-every", "1", "--batch-size", "4",
               "--max-length", "12", "--seq-len", "12", "--no-progress", "--teacher-steps", "1"]
    chance = random.Random(int(os.environ.get("VTRANS_KILL_SEED", "0")))
    last_step, mtime = 0, None
    for kill in range(KILLS):
        run = subprocess.Popen(command + (["--resume"] if kill else []), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
        try:
            _wait_for_new_checkpoint(run, checkpoint, mtime)  # the run is training (and resumed, after a kill)
            assert not (out / PLANTED).exists()  # the resumed run cleared the killed writer's leftovers
            time.sleep(chance.uniform(0.0, 0.5))  # between checkpoints or in the middle of writing one
        finally:
            run.kill()  # SIGKILL
            run.wait()
            run.stderr.close()
        state = load_checkpoint(checkpoint)  # whole: the previous checkpoint or the new one, never a torn one
        assert state["step"] > last_step and state["run"]["settings.steps"] == 1000
        last_step, mtime = state["step"], checkpoint.stat().st_mtime_ns
        assert _snapshot(model) == before
        (out / PLANTED).write_bytes(b"torn")
