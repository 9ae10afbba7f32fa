"""medssl.checkpoint: container unwrapping, prefix handling, mismatch reporting, safe loading, atomic saving."""

from __future__ import annotations

import pickle
import re

import pytest
import torch
from torch import nn

from medssl.checkpoint import (
    CheckpointMismatchError,
    extract_state_dict,
    load_pretrained,
    load_state,
    save_checkpoint_atomic,
    strip_prefix,
)


def small_net(out_channels: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, out_channels, 1))


def assert_same_state(a: nn.Module, b: nn.Module, skip: str = "^$") -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if not re.search(skip, k):
            assert torch.equal(sa[k], sb[k]), k


class Opaque:
    """Not a tensor or container: weights-only loading must refuse it."""


def test_round_trip_with_atomic_save(tmp_path):
    src, dst = small_net(), small_net(seed=1)
    path = save_checkpoint_atomic({"epoch": 3, "state_dict": src.state_dict()}, tmp_path / "sub" / "ckpt.pt")
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]
    report = load_state(dst, path)
    assert report.complete and report.source == str(path)
    assert len(report.loaded) == len(src.state_dict())
    assert_same_state(src, dst)


def test_atomic_save_failure_leaves_nothing(tmp_path):
    with pytest.raises((pickle.PicklingError, AttributeError)):
        save_checkpoint_atomic({"f": lambda x: x}, tmp_path / "bad.pt")
    assert list(tmp_path.iterdir()) == []


def test_atomic_save_replaces_existing(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint_atomic({"state_dict": {"w": torch.zeros(2)}}, path)
    save_checkpoint_atomic({"state_dict": {"w": torch.ones(2)}}, path)
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_extract_state_dict_nested_containers():
    sd = small_net().state_dict()
    for container in (
        sd,
        {"state_dict": sd, "epoch": 1},
        {"model": {"state_dict": sd}, "optimizer": {}},
        {"network": sd},
        {"module": {"model": sd}},
        {"state_dict": {"meta": 1}, "model": sd},  # first candidate holds no tensors: keep looking
    ):
        out = extract_state_dict(container)
        assert list(out) == list(sd)
    with pytest.raises(ValueError, match="no state dict found.*'epoch'"):
        extract_state_dict({"epoch": 1, "optimizer": {"lr": 0.1}})
    with pytest.raises(ValueError, match="expected a checkpoint mapping"):
        extract_state_dict([1, 2])


def test_strip_prefix_only_when_shared():
    t = torch.zeros(1)
    assert list(strip_prefix({"module.a": t, "module.b": t})) == ["a", "b"]
    assert list(strip_prefix({"module.module.a": t})) == ["a"]
    assert list(strip_prefix({"module.a": t, "head.b": t})) == ["module.a", "head.b"]
    assert list(strip_prefix({"model.a": t}, prefixes=("model.", "module."))) == ["a"]


def test_dataparallel_prefix_is_stripped(tmp_path):
    src, dst = small_net(), small_net(seed=1)
    path = tmp_path / "dp.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    assert load_state(dst, path).complete
    assert_same_state(src, dst)


def test_shape_mismatch_raises_with_keys_and_hint(tmp_path):
    path = tmp_path / "c.pt"
    torch.save(small_net(2).state_dict(), path)
    dst = small_net(5)
    before = dst[0].weight.clone()
    with pytest.raises(CheckpointMismatchError) as err:
        load_state(dst, path)
    msg = str(err.value)
    assert str(path) in msg and "3.weight" in msg and "3.bias" in msg and "allow_partial=True" in msg
    assert isinstance(err.value, ValueError)
    assert torch.equal(dst[0].weight, before), "nothing is loaded when the check fails"
    with pytest.raises(CheckpointMismatchError):
        load_state(dst, path, strict=False)  # like torch: shape mismatches are errors even when not strict


def test_allow_partial_and_exclude(tmp_path):
    src, path = small_net(2), tmp_path / "c.pt"
    torch.save(src.state_dict(), path)
    dst = small_net(5)
    report = load_state(dst, path, allow_partial=True)
    assert [k for k, _, _ in report.mismatched] == ["3.weight", "3.bias"]
    assert report.mismatched[0][1:] == ((2, 4, 1, 1, 1), (5, 4, 1, 1, 1))
    assert_same_state(src, dst, skip=r"^3\.")
    dst = small_net(5)
    report = load_state(dst, path, exclude=r"^3\.")
    assert report.complete and report.excluded == ["3.bias", "3.weight"]
    assert_same_state(src, dst, skip=r"^3\.")


def test_missing_and_unexpected_keys(tmp_path):
    src = small_net()
    sd = dict(src.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    del sd["0.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"(?s)missing keys.*0\.bias.*unexpected keys.*extra\.weight"):
        load_state(small_net(), sd)
    report = load_state(small_net(), sd, strict=False)
    assert report.missing == ["0.bias"] and report.unexpected == ["extra.weight"] and report.source == "<dict>"


def test_long_key_lists_are_truncated():
    big = nn.Sequential(*[nn.Linear(2, 2) for _ in range(30)])
    with pytest.raises(CheckpointMismatchError, match=r"9\.bias \.\.\. \(\+40 more\)\] \(60 in total\)"):
        load_state(big, {"other.weight": torch.zeros(1)})


def test_prefix_map(tmp_path):
    src = small_net()
    wrapped = {"base_model." + k: v for k, v in src.state_dict().items()}
    dst = small_net(seed=1)
    assert load_state(dst, {"state_dict": wrapped}, prefix_map={"base_model.": ""}).complete
    assert_same_state(src, dst)
    holder = nn.Module()
    holder.encoder = small_net(seed=1)
    assert load_state(holder, src.state_dict(), prefix_map={"": "encoder."}).complete
    assert_same_state(src, holder.encoder)


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": small_net().state_dict(), "extra": Opaque()}, path)
    with pytest.raises(pickle.UnpicklingError, match="unsafe.pt.*weights_only=True"):
        load_state(small_net(), path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_state(small_net(), tmp_path / "nope.pt")


def test_load_pretrained(tmp_path):
    net = small_net(5, seed=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for empty in (None, ""):
        assert load_pretrained(net, empty) is net
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    src, path = small_net(2), tmp_path / "pre.pt"
    save_checkpoint_atomic({"model": src.state_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match=r"3\.weight"):
        load_pretrained(net, path)
    assert load_pretrained(net, str(path), exclude=r"^3\.") is net
    assert_same_state(src, net, skip=r"^3\.")
    assert torch.equal(net[3].weight, before["3.weight"]), "the excluded output layer keeps its initialisation"
