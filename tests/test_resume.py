"""``medssl.resume.ResumableCheckpoint`` under torch.distributed: one file per run, each process gets its own
random states back, and the training state comes from the first process."""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ignite.engine import Engine
from monai.transforms import Compose, RandFlipd, RandGaussianNoised

from medssl.resume import ResumableCheckpoint, transform_random_states


def _setup(rank: int) -> tuple[ResumableCheckpoint, Engine, torch.nn.Module, Compose]:
    """A checkpoint of a tiny run whose every generator is seeded differently on each process."""
    torch.manual_seed(100 + rank)
    np.random.seed(200 + rank)
    network = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    transform = Compose([RandFlipd("image", prob=0.5), RandGaussianNoised("image", prob=0.5)])
    transform.set_random_state(seed=300 + rank)
    engine = Engine(lambda e, b: None)
    return (
        ResumableCheckpoint("unused", {"network": network, "optimizer": optimizer}, transform),
        engine,
        network,
        transform,
    )


def _draws(transform: Compose) -> list[float]:
    """The next value of every generator the checkpoint restores."""
    return [torch.rand(1).item(), np.random.rand()] + [r.rand() for r in transform_random_states(transform)]


def _worker(rank: int, world: int, folder: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world, timeout=timedelta(seconds=300)
    )
    try:
        checkpoint, engine, network, transform = _setup(rank)
        checkpoint.path = type(checkpoint.path)(folder) / "last.pt"
        with torch.no_grad():
            network.weight.fill_(float(rank))  # the processes' copies differ only to show whose are saved
        checkpoint.save(engine)
        expected = _draws(transform)
        _draws(transform)  # the run goes on, then is killed
        with torch.no_grad():
            network.weight.fill_(-1.0)
        dist.barrier()  # the file is complete before anyone reads it
        checkpoint.load(engine)
        result = {"expected": expected, "resumed": _draws(transform), "weight": network.weight.mean().item()}
        torch.save(result, os.path.join(folder, f"result{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[str, list[dict]]:
    folder = str(tmp_path_factory.mktemp("ddp_resume"))
    mp.spawn(_worker, args=(2, folder), nprocs=2, join=True)
    return folder, [torch.load(os.path.join(folder, f"result{r}.pt"), weights_only=True) for r in range(2)]


def test_one_file_holds_every_process_random_states(ddp_run):
    folder, _ = ddp_run
    written = sorted(f for f in os.listdir(folder) if f.endswith(".pt") and not f.startswith("result"))
    assert written == ["last.pt"]
    state = torch.load(os.path.join(folder, "last.pt"), weights_only=True)
    assert len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert state["objects"]["network"]["weight"].eq(0.0).all()  # the first process's copy


def test_each_process_resumes_its_own_random_sequence(ddp_run):
    _, results = ddp_run
    for result in results:
        assert result["resumed"] == result["expected"]
    assert results[0]["expected"] != results[1]["expected"]


def test_every_process_loads_the_saved_training_state(ddp_run):
    _, results = ddp_run
    assert [r["weight"] for r in results] == [0.0, 0.0]


def test_single_process_round_trip(tmp_path):
    checkpoint, engine, network, transform = _setup(0)
    checkpoint.path = tmp_path / "last.pt"
    checkpoint.save(engine)
    expected = _draws(transform)
    with torch.no_grad():
        network.weight.zero_()
    checkpoint.load(engine)
    assert _draws(transform) == expected
    assert not network.weight.eq(0).all()


def test_wrapped_and_plain_networks_share_checkpoints(tmp_path):
    checkpoint, engine, network, _ = _setup(0)
    checkpoint.path = tmp_path / "last.pt"
    checkpoint.objects["network"] = torch.nn.DataParallel(network)  # saved as the module inside
    checkpoint.save(engine)
    plain, _, target, _ = _setup(1)
    plain.path = checkpoint.path
    plain.load(engine)
    torch.testing.assert_close(target.state_dict(), network.state_dict())


def test_other_process_count_restores_the_state_but_warns(ddp_run, caplog):
    folder, _ = ddp_run
    checkpoint, engine, network, transform = _setup(5)
    checkpoint.path = type(checkpoint.path)(folder) / "last.pt"
    with caplog.at_level(logging.WARNING, logger="medssl.resume"):
        checkpoint.load(engine)
    assert "written by 2 process(es), this run has 1" in caplog.text
    assert network.weight.eq(0.0).all()


def test_checkpoint_of_another_config_is_refused(tmp_path):
    checkpoint, engine, _, _ = _setup(0)
    checkpoint.path = tmp_path / "last.pt"
    checkpoint.save(engine)
    other = ResumableCheckpoint(str(checkpoint.path), {"network": torch.nn.Linear(3, 2), "scheduler": object()})
    with pytest.raises(ValueError, match=r"holds no state for \['scheduler'\]"):
        other.load(engine)
