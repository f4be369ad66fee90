"""A pruning run stopped part-way, as by a crash, and resumed: shared by the resume tests."""
import pytest

from vtrans_kernels.prune import Pruner, run_pruning


class Interrupt(Exception):
    """Raised instead of the training step at which a test stops a run."""


def interrupt_then_resume(make_model, make_batches, config, folder, at_step: int, monkeypatch):
    """Run ``run_pruning`` into ``folder`` until the pruner is about to take step ``at_step``, stop it there, then
    resume it in the same folder with a fresh model and batches; returns the resumed run's result."""
    original = Pruner.train_step

    def interrupted(self, batch):
        if self.step == at_step:
            raise Interrupt
        return original(self, batch)

    monkeypatch.setattr(Pruner, "train_step", interrupted)
    with pytest.raises(Interrupt):
        run_pruning(make_model(), make_batches(), config, folder, progress=False)
    monkeypatch.setattr(Pruner, "train_step", original)
    return run_pruning(make_model(), make_batches(), config, folder, resume=True, progress=False)
