"""Mask training under torch.distributed (gloo, 2 CPU processes): DDP-style and FSDP2 runs give the masks of a
1-process run on the same global batch; resume works with the same world size; VIB noise differs by rank."""
import os
import socket

import pytest
import torch
import torch.distributed as dist

from vtrans_kernels.prune import PruneConfig, Pruner, run_pruning
from vtrans_kernels.prune.data import Batches

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


class Interrupt(Exception):
    pass


def _model():
    from tiny_models import build

    model = build("bert")
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    return type(model)(model.config)


def _features():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 61, (48, 10), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids[:, 1] > 30).long()}


def _config(variant="faster", method="hard_concrete"):
    return PruneConfig(method=method, variant=variant, steps=6, batch_size=8, subset_fraction=1.0,
                       checkpoint_every=1, log_every=1, target_sparsity=0.4)


def _masks(result):
    return {k: v.detach().clone() for k, v in result.pruner.masks.state_dict().items()}


def _run(out, variant="faster", method="hard_concrete", fsdp=False, resume=False, stop_at=None, wrap=False):
    original = Pruner.train_step
    if stop_at is not None:
        def interrupted(self, batch):
            if self.step == stop_at:
                raise Interrupt
            return original(self, batch)
        Pruner.train_step = interrupted
    try:
        model = _model()
        if wrap:
            model = torch.nn.parallel.DistributedDataParallel(model)
        return run_pruning(model, Batches(_features(), 8), _config(variant, method), out, progress=False,
                           plots=False, fsdp=fsdp, resume=resume)
    finally:
        Pruner.train_step = original


def _worker(rank, world, port, out, task, result_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        if task == "vib-seeds":
            result = _run(out, method="vib")
            seeds = [None] * world
            dist.all_gather_object(seeds, result.pruner.masks.seed)
            outcome = {"seeds": seeds}
        elif task == "interrupt-resume":
            try:
                _run(out, stop_at=3)
            except Interrupt:
                pass
            dist.barrier()
            outcome = {"masks": _masks(_run(out, resume=True))}
        else:
            variant, engine = task.split("-")
            result = _run(out, variant=variant, fsdp=engine == "fsdp", wrap=engine == "torchddp")
            outcome = {"masks": _masks(result)}
            if variant == "vtrans":
                outcome["weights"] = {k: v.detach().clone() for k, v in result.pruner.model.state_dict().items()}
        if rank == 0:
            torch.save(outcome, result_file)
        dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path, task, world=2):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result_file = tmp_path / f"{task}.pt"
    torch.multiprocessing.spawn(_worker, args=(world, port, str(tmp_path / task), task, str(result_file)),
                                nprocs=world)
    return torch.load(result_file, weights_only=False)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    runs = {variant: _run(out / variant, variant=variant) for variant in ("faster", "vtrans")}
    return {variant: {"masks": _masks(run), "weights": dict(run.pruner.model.state_dict())}
            for variant, run in runs.items()}


@pytest.mark.parametrize("task", ["faster-ddp", "faster-fsdp", "vtrans-ddp", "vtrans-torchddp"])
def test_two_processes_match_one(tmp_path, single, task):
    variant = task.split("-")[0]
    outcome = _spawn(tmp_path, task)
    _assert_same(outcome["masks"], single[variant]["masks"])
    if variant == "vtrans":  # weights trained with the masks also agree
        _assert_same(outcome["weights"], single[variant]["weights"])


def test_kill_and_resume_with_the_same_world_size(tmp_path, single):
    _assert_same(_spawn(tmp_path, "interrupt-resume")["masks"], single["faster"]["masks"])


def test_vib_noise_is_offset_by_rank(tmp_path):
    seeds = _spawn(tmp_path, "vib-seeds")["seeds"]
    assert len(set(seeds)) == 2


def test_resume_refuses_another_world_size(tmp_path):
    _run(tmp_path)  # a 1-process checkpoint
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    state["world_size"] = 2
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="world size"):
        _run(tmp_path, resume=True)


def test_fsdp_refuses_weight_training():
    with pytest.raises(ValueError, match="faster"):
        Pruner(_model(), PruneConfig(variant="vtrans"), fsdp=True)
