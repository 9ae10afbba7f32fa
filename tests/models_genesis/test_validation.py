"""Fixed validation pairs (scripts.validation) and the restoration figure (scripts.figures)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.transforms import CopyItemsd

from scripts.figures import RestorationGridSaver
from scripts.transforms import RandBezierIntensityd, RandLocalPixelShuffled
from scripts.validation import FixedCorruptiond, validation_items


def _cube(seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((1, 16, 16, 8), dtype=np.float32))


def _chains() -> dict:
    copy = CopyItemsd(keys="image", names="target")
    return {
        "all": [copy, RandLocalPixelShuffled(keys="image", prob=0.5, num_windows=200), RandBezierIntensityd("image")],
        "nonlinear": [copy, RandBezierIntensityd(keys="image", prob=1.0)],
    }


def test_items_list_every_cube_in_the_main_group_and_the_first_ones_in_the_others():
    cubes = [{"image": f"c{i}.npy"} for i in range(5)]
    items = validation_items(cubes, ["all", "nonlinear", "shuffle"], type_cubes=2, seed=3)
    assert [(it["corruption"], it["image"]) for it in items] == [("all", f"c{i}.npy") for i in range(5)] + [
        ("nonlinear", "c0.npy"),
        ("nonlinear", "c1.npy"),
        ("shuffle", "c0.npy"),
        ("shuffle", "c1.npy"),
    ]
    assert len({it["pair_seed"] for it in items}) == len(items), "every pair has its own seed"
    assert [it["pair_seed"] for it in validation_items(cubes, ["all"], seed=3)] == [
        it["pair_seed"] for it in items[:5]
    ], "a cube's seed does not depend on the other groups"
    assert items[0]["pair_seed"] != validation_items(cubes, ["all"], seed=4)[0]["pair_seed"]
    assert [it["corruption"] for it in validation_items(cubes, ["all", "shuffle"], type_cubes=0)] == ["all"] * 5


def test_same_item_gives_the_same_pair_and_items_differ():
    pairs = FixedCorruptiond(_chains())
    item = {"image": _cube(0), "corruption": "nonlinear", "pair_seed": 11}
    first, again = pairs(item), pairs(dict(item))
    assert torch.equal(first["target"], item["image"]), "the target is the uncorrupted cube"
    assert not torch.equal(first["image"], first["target"])
    assert torch.equal(first["image"], again["image"]), "fixed pairs: the same item always gives the same input"
    other = pairs({**item, "pair_seed": 12})
    assert not torch.equal(other["image"], first["image"]), "another seed draws another corruption"


def test_chain_members_get_distinct_seeds():
    """One seed for every member would apply the same curve to both keys: the two outputs would be equal."""
    chain = [RandBezierIntensityd(keys="image", prob=1.0), RandBezierIntensityd(keys="target", prob=1.0)]
    cube = _cube(1)
    out = FixedCorruptiond({"all": chain})({"image": cube, "target": cube.clone(), "corruption": "all", "pair_seed": 5})
    assert not torch.equal(out["image"], out["target"])


def test_shared_training_transforms_keep_their_random_state():
    chains = _chains()
    shuffle = chains["all"][1]
    before = shuffle.R.get_state()[1].copy()
    pairs = FixedCorruptiond(chains)
    pairs({"image": _cube(2), "corruption": "all", "pair_seed": 1})
    assert np.array_equal(shuffle.R.get_state()[1], before)
    with pytest.raises(KeyError, match="inpaint"):
        pairs({"image": _cube(2), "corruption": "inpaint", "pair_seed": 1})


def test_figure_rows_main_group_first_then_one_per_group(tmp_path):
    volume, zeros = torch.full((1, 8, 8, 4), 0.5), torch.zeros(1, 8, 8, 4)

    def item(group: str, pred: torch.Tensor) -> dict:
        return {"image": zeros, "label": volume, "pred": pred, "group": group}

    batches = [[item("shuffle", zeros), item("all", volume)], [item("all", zeros), item("all", zeros)]]
    saver = RestorationGridSaver(str(tmp_path), max_samples=2)
    engine = Engine(lambda e, batch: batch)
    saver.attach(engine)
    engine.run(batches, max_epochs=2)
    rows = saver.rows()
    assert [r["group"] for r in rows] == ["all", "all", "shuffle"], "rows are collected afresh every epoch"
    assert [r["mse"] for r in rows] == [0.0, 0.25, 0.25] and all(r["mse_identity"] == 0.25 for r in rows)
    assert saver.panel_title(rows[2], "image", "corrupted") == "corrupted\nshuffle: MSE 0.2500"
    assert saver.panel_title(rows[0], "pred") == "MSE 0.0000"
    assert saver.saved == [str(tmp_path / f"images_epoch{e:04d}.png") for e in (1, 2)]
