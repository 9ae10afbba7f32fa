"""Guards that turn silent failures into one clear line: ``medssl.handlers.TrainingGuard`` in every trainer."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver

from medssl.handlers import NonFiniteLossError, TrainingGuard, batch_files
from medssl.resume import ResumableCheckpoint

ROOT = Path(__file__).resolve().parents[1]
GUARD = "medssl.handlers.TrainingGuard"
#: trainer handlers every process needs: the guard, and those whose work is collective or changes the training state
EVERY_RANK = {"TrainingGuard", "ResumableCheckpoint", "ValidationHandler", "LrScheduleHandler", "SamplerEpochSetter"}


def _items(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        {"image": MetaTensor(torch.rand(1, 4, generator=g), meta={"filename_or_obj": f"/data/img{i}.nii.gz"})}
        for i in range(n)
    ]


class _NanOnCall(torch.nn.Module):
    """MSE loss whose ``nan_call``-th call gives NaN (or ``value``)."""

    def __init__(self, nan_call: int, value: float = float("nan")) -> None:
        super().__init__()
        self.nan_call, self.value, self.calls = nan_call, value, 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = torch.nn.functional.mse_loss(pred, target)
        return loss * self.value if self.calls == self.nan_call else loss


def _trainer(tmp_path: Path, loss: torch.nn.Module, items: int = 4, batch_size: int = 2, extra=()) -> SupervisedTrainer:
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loader = DataLoader(_items(items), batch_size=batch_size, shuffle=False, drop_last=True)
    handlers = [
        TrainingGuard(),
        ResumableCheckpoint(str(tmp_path / "last.pt"), {"network": net, "optimizer": opt}),
        CheckpointSaver(str(tmp_path), {"model": net}, save_final=True, final_filename="final.pt"),
        *extra,
    ]
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=3,
        train_data_loader=loader,
        network=net,
        optimizer=opt,
        loss_function=loss,
        prepare_batch=lambda batch, device, non_blocking, **kw: (batch["image"], batch["image"]),
        train_handlers=handlers,
    )


@pytest.mark.parametrize("value, shown", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_non_finite_loss_stops_naming_iteration_and_files(tmp_path: Path, value: float, shown: str) -> None:
    """Epoch 1 (iterations 1-2) is saved; the loss of iteration 3 is NaN: the run raises before the update, the
    epoch-1 checkpoint stays byte-identical, no final checkpoint is written and the weights are epoch 1's."""
    trainer = _trainer(tmp_path, _NanOnCall(3, value))
    saved: dict[str, bytes] = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: saved.update(last=_read(tmp_path)))
    with pytest.raises(NonFiniteLossError) as e:
        trainer.run()
    message = str(e.value)
    assert f"loss is {shown} at iteration 3 (epoch 2)" in message, message
    assert "batch files: /data/img0.nii.gz, /data/img1.nii.gz" in message, message
    assert _read(tmp_path) == saved["last"], "the last good checkpoint changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "a checkpoint was written after the NaN"
    state = torch.load(tmp_path / "last.pt", weights_only=True)["objects"]["network"]
    for name, p in trainer.network.state_dict().items():
        assert torch.equal(p, state[name]), "the NaN step updated the weights"


def _read(folder: Path) -> bytes:
    return (folder / "last.pt").read_bytes()


def test_non_finite_weights_stop_before_the_epoch_is_saved(tmp_path: Path) -> None:
    """A finite loss whose update gives NaN weights in the last step of an epoch: nothing is saved at its end."""
    trainer = _trainer(tmp_path, _NanOnCall(0))

    def poison(engine) -> None:
        if engine.state.iteration == 2:
            with torch.no_grad():
                engine.network.weight.fill_(float("nan"))

    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, poison)
    with pytest.raises(NonFiniteLossError, match=r"non-finite weights \(weight\) after epoch 1, iteration 2"):
        trainer.run()
    assert list(tmp_path.iterdir()) == []


def test_empty_loader_is_an_error_saying_what_to_change(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"3 training item\(s\) per process, fewer than batch_size 4.*drop_last"):
        _trainer(tmp_path, _NanOnCall(0), items=3, batch_size=4)
    with pytest.raises(ValueError, match="training data loader is empty.*no item"):
        _trainer(tmp_path, _NanOnCall(0), items=0, batch_size=4)


def test_batch_files_from_meta_tensors_and_meta_dicts() -> None:
    batch = DataLoader(_items(3), batch_size=3)
    assert batch_files(next(iter(batch))) == [f"/data/img{i}.nii.gz" for i in range(3)]
    meta_dict = {"image": torch.zeros(2, 1), "image_meta_dict": {"filename_or_obj": ["a.png", "a.png"]}}
    assert batch_files(meta_dict) == ["a.png"]
    assert batch_files({"image": torch.zeros(2, 1)}) == []


def _trainer_configs() -> list[Path]:
    configs = sorted(ROOT.glob("bundles/*/configs/pretrain*.json")) + sorted(ROOT.glob("bundles/*/configs/train*.json"))
    return [p for p in configs if "handlers" in json.loads(p.read_text()).get("train", {})]


def test_every_trainer_config_has_the_guard_first() -> None:
    """First, so that its end-of-epoch weight check runs before the handlers that save checkpoints."""
    configs = _trainer_configs()
    assert len(configs) >= 20, configs
    missing = [
        str(p.relative_to(ROOT))
        for p in configs
        if json.loads(p.read_text())["train"]["handlers"][0] != {"_target_": GUARD}
    ]
    assert not missing, f"train#handlers does not start with {GUARD}: {missing}"


def _stand_in(target: str) -> object:
    """An uninitialised instance of a handler's class (what ``isinstance`` filters see), or a plain object."""
    from pydoc import locate

    from monai.bundle.config_item import ComponentLocator

    if "." not in target:
        module = ComponentLocator().get_component_module_name(target)
        target = f"{module if isinstance(module, str) else module[0]}.{target}"
    cls = locate(target) if target.startswith(("medssl.", "monai.", "ignite.")) else None
    return cls.__new__(cls) if isinstance(cls, type) else object()


@pytest.mark.parametrize(
    "overlay", sorted(ROOT.glob("bundles/*/configs/multi_gpu_*.json")), ids=lambda p: f"{p.parent.parent.name}/{p.name}"
)
def test_multi_gpu_overlays_keep_the_guard_on_every_rank(overlay: Path) -> None:
    """A NaN loss on any process must stop the run: the handlers of ranks other than 0 include the guard."""
    cfg = json.loads(overlay.read_text())
    expression = cfg.get("train#trainer#train_handlers")
    if expression is None:
        pytest.skip("no trainer handlers in this overlay")
    base = json.loads((overlay.parent / overlay.name.replace("multi_gpu_", "")).read_text())
    targets = [h["_target_"].rsplit(".", 1)[-1] for h in base["train"]["handlers"]]
    handlers = [_stand_in(h["_target_"]) for h in base["train"]["handlers"]]
    scope: dict = {}
    for line in cfg.get("+imports", []):
        exec(line.lstrip("$"), scope)
    scope["dist"] = type("Rank1", (), {"get_rank": staticmethod(lambda: 1)})
    scope["monai"] = __import__("monai")
    rank1 = eval(re.sub(r"@train#handlers", "handlers", expression.lstrip("$")), {**scope, "handlers": handlers})
    kept = [targets[i] for i, h in enumerate(handlers) if any(h is k for k in rank1)]
    needed = [t for t in targets if t in EVERY_RANK]
    assert set(needed) <= set(kept), f"{overlay.name}: ranks > 0 run without {sorted(set(needed) - set(kept))}"


TINY_MAE = {
    "epochs": 1,
    "warmup_epochs": 0,
    "batch_size": 2,
    "num_workers": 0,
    "progress": False,
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "mlp_dim": 64,
    "decoder_hidden_size": 32,
    "decoder_num_layers": 1,
    "decoder_num_heads": 2,
    "decoder_mlp_dim": 64,
}


@pytest.mark.slow
def test_a_run_whose_loss_becomes_nan_fails_and_keeps_the_earlier_checkpoints(
    samples_dir: Path, tmp_path: Path
) -> None:
    """MedMAE pre-training: a good epoch, then a rerun with lr 1e30 (NaN at iteration 2) exits non-zero with the
    message, and every checkpoint of the good run is byte-identical."""
    from medssl.runner import BundleRunError, copy_bundle, run_config

    bundle = copy_bundle(ROOT / "bundles" / "medmae", tmp_path)
    overrides = {"dataset_dir": str(samples_dir), **TINY_MAE}
    run_config(bundle, "pretrain.json", overrides, log_file=tmp_path / "good.log")
    before = {p.name: p.read_bytes() for p in (bundle / "models").iterdir()}
    assert {"last_pretrain.pt", "pretrained.pt"} <= set(before)
    with pytest.raises(BundleRunError, match=r"exit [1-9]"):
        run_config(bundle, "pretrain.json", {**overrides, "learning_rate": 1e30}, log_file=tmp_path / "nan.log")
    assert (
        "NonFiniteLossError: training stopped: loss is NaN at iteration 2 (epoch 1)"
        in (tmp_path / "nan.log").read_text()
    )
    assert {p.name: p.read_bytes() for p in (bundle / "models").iterdir()} == before


def test_ct_window_on_non_hounsfield_data_warns_once_per_file(samples_dir: Path, caplog) -> None:
    """Real MR (0..254) under the default CT, twice: one warning naming the file and the fix; real CT: none."""
    from monai.transforms import LoadImaged

    from medssl.transforms import NormalizeByModalityd

    load = LoadImaged("image", ensure_channel_first=True, image_only=True)
    mr, ct = (load({"image": str(samples_dir / f)}) for f in ("mr/colin27_t1.nii.gz", "ct/head_ct.nii.gz"))
    norm = NormalizeByModalityd("image")
    with caplog.at_level(logging.WARNING, logger="medssl.transforms"):
        for item in (mr, mr, ct, {**ct, "modality": "CT"}, {**mr, "modality": "MR"}):
            norm(item)
    assert [r.getMessage() for r in caplog.records if r.name == "medssl.transforms"] == [
        f"image {samples_dir / 'mr/colin27_t1.nii.gz'}: modality CT assumed (default_modality) but its intensities "
        "0..254 are not Hounsfield units; set `modality` in the datalist item or `--default_modality MR`"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medssl.transforms"):
        NormalizeByModalityd("image")({**mr, "modality": "CT"})
    assert "modality CT assumed (its item's 'modality')" in caplog.text


def test_squeeze_singleton_slice() -> None:
    from medssl.transforms import SqueezeSingletonSliced

    one = MetaTensor(torch.rand(1, 5, 6, 1), affine=torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0])))
    out = SqueezeSingletonSliced("image")({"image": one})["image"]
    assert out.shape == (1, 5, 6) and torch.equal(out.affine, torch.diag(torch.tensor([2.0, 3.0, 1.0])).double())
    flat = torch.rand(1, 5, 6)
    assert SqueezeSingletonSliced("image")({"image": flat})["image"] is flat
    volume = MetaTensor(torch.rand(1, 5, 6, 2), meta={"filename_or_obj": "vol.nii.gz"})
    with pytest.raises(ValueError, match=r"vol.nii.gz: spatial shape \(5, 6, 2\) is not a 2D image"):
        SqueezeSingletonSliced("image")({"image": volume})


@pytest.mark.slow
def test_mae_pretraining_with_fewer_items_than_a_batch_stops_before_training(samples_dir: Path, tmp_path: Path) -> None:
    """7 training items, batch_size 16 with drop_last: MONAI warned "dataloader is empty" and exited 0."""
    from medssl.runner import BundleRunError, copy_bundle, run_config

    bundle = copy_bundle(ROOT / "bundles" / "medmae", tmp_path)
    overrides = {"dataset_dir": str(samples_dir), **TINY_MAE, "batch_size": 16}
    with pytest.raises(BundleRunError, match=r"exit [1-9]"):
        run_config(bundle, "pretrain.json", overrides, log_file=tmp_path / "empty.log")
    log = (tmp_path / "empty.log").read_text()
    assert (
        "training data loader is empty, nothing would be trained: 7 training item(s) per process, fewer than "
        "batch_size 16, and drop_last=True drops the incomplete batch: lower batch_size to at most 7" in log
    )
    assert not (bundle / "models").exists() or not any((bundle / "models").iterdir())
