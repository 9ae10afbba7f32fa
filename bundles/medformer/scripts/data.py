"""Data for Medformer: dataset registry, MedMNIST ``.npz`` and MSD-style datalist reading and checks, multi-task
sampling.

Every dataset is described by a :class:`DatasetSpec` (dimensionality, channels, task type, label names, modality and
body part). Official MedMNIST subsets take their task, labels and channels from the bundle's own copy of MedMNIST's
``INFO`` (:mod:`scripts.medmnist_table`: nothing is downloaded and the ``medmnist`` package is not needed); the
config's ``dataset_registry`` adds the modality and body-part latents and may define new datasets, either in the same
``.npz`` layout (``{split}_images``, ``{split}_labels``) or as a datalist of image files
(``{"training": [{"image": "a.png", "label": 2}, ...], "validation": [...], "test": [...]}``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.data import MetaTensor, get_track_meta
from monai.engines.utils import PrepareBatch
from monai.transforms import Compose, MapTransform, RandFlipd, Randomizable, RandRotated, Transform
from monai.transforms.utils import create_rotate, map_spatial_axes
from monai.utils import get_equivalent_dtype

from medssl.data import RobustDataset, check_datalist, load_datalist
from medssl.transforms import meta_tracking
from scripts.loading import LoadMedformerImaged
from scripts.medmnist_table import INFO

__all__ = [
    "DATALIST_SECTIONS",
    "TASK_TYPES",
    "DatalistSplit",
    "DatasetSpec",
    "FastRandFlipd",
    "FastRandRotated",
    "MedMNISTDataError",
    "MultiTaskDataset",
    "NpzSplit",
    "RandAugment",
    "RandAugmentd",
    "RandViewsd",
    "SamplerEpochSetter",
    "TaskBatchSampler",
    "TaskPrepareBatch",
    "centred_warp",
    "check_datasets",
    "dataset_for",
    "medmnist_info",
    "network_domains",
    "network_tasks",
    "npz_path",
    "resolve_specs",
]

TASK_TYPES = ("multi-class", "binary-class", "multi-label, binary-class", "ordinal-regression")
SPLITS = ("train", "val", "test")
DATALIST_SECTIONS = {"train": "training", "val": "validation", "test": "test"}


def medmnist_info() -> dict[str, dict]:
    """Metadata of the 18 official MedMNIST subsets (:data:`scripts.medmnist_table.INFO`, MedMNIST's ``INFO``)."""
    return INFO


@dataclass(frozen=True)
class DatasetSpec:
    """What Medformer needs to know about one dataset/task.

    Attributes:
        name: dataset id (e.g. ``"pathmnist"``); also the name of its task latent and head.
        dim: 2 or 3.
        n_channels: image channels (1 grayscale, 3 RGB).
        task: one of :data:`TASK_TYPES` (MedMNIST's names).
        labels: class (or label) names, in index order.
        modality: modality latent, e.g. ``"ct"``.
        body_part: body-part latent, e.g. ``"abdomen"``.
        datalist: MSD-style datalist of the dataset's image files (relative to the data folder, or absolute); empty
            for a MedMNIST ``.npz`` dataset.
    """

    name: str
    dim: int
    n_channels: int
    task: str
    labels: tuple[str, ...]
    modality: str
    body_part: str
    datalist: str = ""

    def num_outputs(self, ordinal_mode: str = "ce") -> int:
        """Logits of the task head: one per class or label; one for binary tasks and for ordinal ``"mse"``."""
        if self.task == "binary-class" or (self.task == "ordinal-regression" and ordinal_mode == "mse"):
            return 1
        return len(self.labels)

    def domain(self) -> dict[str, Any]:
        """The network's view of the dataset's inputs (plain values, so networks do not depend on this module)."""
        return {"dim": self.dim, "n_channels": self.n_channels, "modality": self.modality, "body_part": self.body_part}


def resolve_specs(registry: Mapping[str, Mapping], names: Sequence[str]) -> dict[str, DatasetSpec]:
    """Specs of ``names``: ``INFO`` for official subsets, completed or overridden by ``registry[name]``.

    A dataset unknown to MedMNIST must give ``dim``, ``n_channels``, ``task`` and ``labels`` (class names) itself;
    a datalist dataset (``datalist`` given) may give ``num_classes`` instead of ``labels`` (names ``"0"``, ``"1"``...)
    and has one channel unless ``n_channels`` says otherwise.
    """
    info = medmnist_info()
    specs = {}
    for name in names:
        entry = {**_info_entry(info.get(name)), **dict(registry.get(name, {}))}
        if entry.get("datalist"):
            entry.setdefault("n_channels", 1)
            if "labels" not in entry and "num_classes" in entry:
                entry["labels"] = [str(k) for k in range(int(entry["num_classes"]))]
        missing = [k for k in ("dim", "n_channels", "task", "labels", "modality", "body_part") if k not in entry]
        if missing:
            raise ValueError(f"dataset '{name}': no {missing} in dataset_registry (and not an official MedMNIST set)")
        if entry["task"] not in TASK_TYPES:
            raise ValueError(f"dataset '{name}': task '{entry['task']}' is not one of {TASK_TYPES}")
        labels = entry["labels"]
        labels = [labels[k] for k in sorted(labels, key=int)] if isinstance(labels, Mapping) else list(labels)
        specs[name] = DatasetSpec(
            name=name,
            dim=int(entry["dim"]),
            n_channels=int(entry["n_channels"]),
            task=entry["task"],
            labels=tuple(labels),
            modality=entry["modality"],
            body_part=entry["body_part"],
            datalist=str(entry.get("datalist", "")),
        )
        if "num_classes" in entry and int(entry["num_classes"]) != len(labels):
            raise ValueError(f"dataset '{name}': num_classes {entry['num_classes']} but {len(labels)} labels")
    return specs


def _info_entry(info: Mapping | None) -> dict:
    if info is None:
        return {}
    return {
        "dim": 3 if info["python_class"].endswith("3D") else 2,
        "n_channels": info["n_channels"],
        "task": info["task"],
        "labels": info["label"],
    }


def network_domains(specs: Mapping[str, DatasetSpec]) -> dict[str, dict]:
    """``{name: {dim, n_channels, modality, body_part}}``: ``domains`` of :class:`scripts.networks.Medformer`."""
    return {name: spec.domain() for name, spec in specs.items()}


def network_tasks(specs: Mapping[str, DatasetSpec], ordinal_mode: str = "ce") -> dict[str, int]:
    """``{name: num_outputs}``: ``tasks`` of :class:`scripts.networks.Medformer`."""
    return {name: spec.num_outputs(ordinal_mode) for name, spec in specs.items()}


# ----------------------------------------------------------------------------------------------------------------
# .npz files


class MedMNISTDataError(ValueError):
    """A dataset's ``.npz`` file or datalist is missing or does not hold what its dataset spec says."""


def npz_path(root: str | Path, name: str, size: int) -> Path:
    """MedMNIST file naming: ``{name}.npz`` at 28 px, ``{name}_{size}.npz`` for MedMNIST+ sizes."""
    return Path(root) / (f"{name}.npz" if size == 28 else f"{name}_{size}.npz")


def _expected_image_shape(spec: DatasetSpec, size: int) -> tuple[int, ...]:
    if spec.dim == 3:
        return (size, size, size)
    return (size, size) if spec.n_channels == 1 else (size, size, spec.n_channels)


class NpzSplit(Sequence):
    """One split of one MedMNIST ``.npz`` file as a sequence of sample dicts (arrays read on first use).

    Items: ``image`` float32 channel-first in [0, 1], ``label`` as the task's loss expects (int64 class index for
    multi-class and ordinal, float32 vector for binary and multi-label), and the sample's ``dataset``, ``dim``,
    ``modality`` and ``body_part``.
    """

    def __init__(self, root: str | Path, spec: DatasetSpec, split: str, size: int, with_labels: bool = True) -> None:
        self.path = npz_path(root, spec.name, size)
        self.with_labels = with_labels
        self.spec = spec
        self.split = split
        self.size = size
        self.images, self.labels = self._load()

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        where = f"{self.path} (dataset '{self.spec.name}', split '{self.split}')"
        if not self.path.is_file():
            raise MedMNISTDataError(f"{where}: file not found; put the official MedMNIST .npz files in this folder")
        try:
            archive = np.load(self.path, allow_pickle=False)
            keys = set(archive.files)
        except Exception as exc:
            raise MedMNISTDataError(f"{where}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc
        missing = [k for k in (f"{self.split}_images", f"{self.split}_labels") if k not in keys]
        if missing:
            raise MedMNISTDataError(f"{where}: missing array(s) {missing}; the file has {sorted(keys)}")
        images, labels = archive[f"{self.split}_images"], archive[f"{self.split}_labels"]
        expected = _expected_image_shape(self.spec, self.size)
        if images.ndim != len(expected) + 1 or tuple(images.shape[1:]) != expected:
            raise MedMNISTDataError(
                f"{where}: {self.split}_images has shape {images.shape}, expected (N, {', '.join(map(str, expected))})"
                f" for a {self.spec.dim}D, {self.spec.n_channels}-channel set at size {self.size}"
            )
        width = len(self.spec.labels) if self.spec.task.startswith("multi-label") else 1
        if labels.shape != (len(images), width):
            raise MedMNISTDataError(
                f"{where}: {self.split}_labels has shape {labels.shape}, expected ({len(images)}, {width})"
            )
        if self.spec.task != "multi-label, binary-class" and (
            labels.min() < 0 or labels.max() >= len(self.spec.labels)
        ):
            raise MedMNISTDataError(
                f"{where}: labels outside 0..{len(self.spec.labels) - 1} (found {labels.min()}..{labels.max()})"
            )
        return images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        image = self.images[index]
        image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        image = np.moveaxis(image, -1, 0) if image.ndim == 3 and self.spec.dim == 2 else image[None]
        item = {
            "image": np.ascontiguousarray(image),
            "source": f"{self.path.name}:{self.split}_images[{index}]",
            "dataset": self.spec.name,
            "dim": f"{self.spec.dim}d",
            "modality": self.spec.modality,
            "body_part": self.spec.body_part,
        }
        if self.with_labels:
            raw = self.labels[index]
            single = self.spec.task in ("multi-class", "ordinal-regression")
            item["label"] = np.int64(raw[0]) if single else raw.astype(np.float32)
        return item


class DatalistSplit(Sequence):
    """One section of an MSD-style datalist as sample dicts; the images are read by :class:`LoadMedformerImaged`.

    Items: ``image`` (absolute path, also in ``source``), ``label`` as :class:`NpzSplit` gives it (from a class
    index in the datalist, or a list of 0/1 per label for multi-label tasks), and the sample's ``dataset``, ``dim``,
    ``modality`` (the item's own ``modality``, e.g. ``"CT"``, else the dataset's) and ``body_part``.

    Raises:
        MedMNISTDataError: the datalist or the section is missing, or (``with_labels``) labels are missing or do not
            fit the task; one message lists every such item.
    """

    def __init__(self, path: str | Path, section: str, spec: DatasetSpec, with_labels: bool = True) -> None:
        self.path, self.section, self.spec = Path(path), section, spec
        where = f"{self.path} (dataset '{spec.name}', section '{section}')"
        try:
            items = load_datalist(self.path, section)
        except (OSError, ValueError) as err:
            raise MedMNISTDataError(f"{where}: {err}") from err
        problems = [f"[{i}]: no 'image'" for i, item in enumerate(items) if not item.get("image")]
        self.labels: list[Any] = []
        if with_labels:
            for i, item in enumerate(items):
                label, why = self._label(item.get("label"))
                self.labels.append(label)
                if why:
                    problems.append(f"[{i}] {item.get('image')}: {why}")
        if not items:
            problems.append("no items")
        if problems:
            raise MedMNISTDataError(f"{where}:\n    " + "\n    ".join(problems))
        self.with_labels = with_labels
        self.items = items

    def _label(self, value: Any) -> tuple[Any, str]:
        count, task = len(self.spec.labels), self.spec.task
        if task == "multi-label, binary-class":
            if isinstance(value, list) and len(value) == count and all(_is_index(v) and v in (0, 1) for v in value):
                return np.asarray(value, dtype=np.float32), ""
            return None, f"label {value!r} is not a list of {count} values 0 or 1 (one per label)"
        if not (_is_index(value) and 0 <= value < count):
            return None, f"label {value!r} is not a class index 0..{count - 1} ({task})"
        return (np.int64(value), "") if task != "binary-class" else (np.asarray([value], dtype=np.float32), "")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        item = self.items[index]
        out = {
            "image": item["image"],
            "source": item["image"],
            "dataset": self.spec.name,
            "dim": f"{self.spec.dim}d",
            "modality": str(item.get("modality", self.spec.modality)),
            "body_part": self.spec.body_part,
        }
        if self.with_labels:
            out["label"] = self.labels[index]
        return out


def _is_index(value: Any) -> bool:
    return (
        isinstance(value, (int, np.integer))
        and not isinstance(value, bool)
        or (isinstance(value, float) and value.is_integer())
    )


def check_datasets(
    root: str | Path, specs: Mapping[str, DatasetSpec], size_2d: int, size_3d: int, splits: Sequence[str] = SPLITS
) -> None:
    """Read every split of every dataset before training; raise one :class:`MedMNISTDataError` listing all problems.

    ``.npz`` datasets: file, arrays, shapes and labels (:class:`NpzSplit`). Datalist datasets: sections and labels
    (:class:`DatalistSplit`), then every image file with ``medssl.data.check_datalist`` (present, readable, finite,
    of the dataset's dimensionality and channels).
    """
    problems = []
    for spec in specs.values():
        for split in splits:
            try:
                if spec.datalist:
                    DatalistSplit(Path(root) / spec.datalist, DATALIST_SECTIONS[split], spec)
                else:
                    NpzSplit(root, spec, split, size_3d if spec.dim == 3 else size_2d)
            except MedMNISTDataError as err:
                problems.append(str(err))
            if spec.datalist:
                problems += _datalist_file_problems(Path(root) / spec.datalist, spec, DATALIST_SECTIONS[split])
    if problems:
        raise MedMNISTDataError(f"{len(problems)} problem(s) with the datasets:\n  " + "\n  ".join(problems))


def _datalist_file_problems(path: Path, spec: DatasetSpec, section: str) -> list[str]:
    """Errors of the section's image files; a missing or unreadable datalist or section is reported by
    :class:`DatalistSplit`."""
    try:
        found = check_datalist(
            path, keys=["image"], spatial_dims=spec.dim, num_channels=spec.n_channels, sections=[section]
        )
    except (OSError, ValueError):
        return []
    return [f"dataset '{spec.name}': {p}" for p in found if p.severity == "error" and p.key != "-"]


class MultiTaskDataset(torch.utils.data.ConcatDataset):
    """The splits of several datasets concatenated; each with the 2D or 3D transform chain of its dimensionality.

    A datalist dataset's images are first read by :class:`LoadMedformerImaged` (at ``size_2d`` or ``size_3d``), so
    that the transform chains see what an ``.npz`` sample holds.

    Args:
        data: dataset names (in this order; the index ranges follow it).
        specs: their specs (:func:`resolve_specs`).
        root: folder of the ``.npz`` files (and of relative datalist paths).
        split: ``"train"``, ``"val"`` or ``"test"`` (datalist sections ``training``, ``validation``, ``test``).
        size_2d: image size of the 2D sets (28, 64, 128 or 224).
        size_3d: image size of the 3D sets (28 or 64).
        transform_2d: transform of 2D samples.
        transform_3d: transform of 3D samples.
        skip_bad_samples: replace samples whose transform fails (see ``medssl.data.RobustDataset``).
        with_labels: give each sample its ``label`` (False for self-supervised pre-training).
        cache: keep each datalist image as read and resized (the transforms before the first random one) in memory,
            read once at start-up (``medssl.data.RobustDataset(cache=True)``); ``.npz`` sets are in memory anyway.
    """

    def __init__(
        self,
        data: Sequence[str],
        specs: Mapping[str, DatasetSpec],
        root: str | Path,
        split: str,
        size_2d: int = 28,
        size_3d: int = 28,
        transform_2d: Any = None,
        transform_3d: Any = None,
        skip_bad_samples: bool = False,
        with_labels: bool = True,
        cache: bool = False,
    ) -> None:
        self.names = list(data)
        parts = []
        for name in self.names:
            spec = specs[name]
            size = size_3d if spec.dim == 3 else size_2d
            transform = transform_3d if spec.dim == 3 else transform_2d
            if spec.datalist:
                items: Sequence = DatalistSplit(Path(root) / spec.datalist, DATALIST_SECTIONS[split], spec, with_labels)
                load = LoadMedformerImaged("image", spec.dim, size)
                transform = Compose([load, transform]) if transform is not None else load
            else:
                items = NpzSplit(root, spec, split, size, with_labels)
            cached = cache and bool(spec.datalist)
            parts.append(
                RobustDataset(items, transform, skip_bad_samples=skip_bad_samples, path_keys=("source",), cache=cached)
            )
        super().__init__(parts)

    @property
    def sizes(self) -> list[int]:
        """Number of samples of each dataset, in ``names`` order."""
        return [len(d) for d in self.datasets]


# ----------------------------------------------------------------------------------------------------------------
# sampling: every mini-batch holds one dataset (2D and 3D tensors cannot share a batch); batches are interleaved


class TaskBatchSampler(torch.utils.data.Sampler):
    """Batches of indices of a :class:`MultiTaskDataset`, each from one dataset, in shuffled order.

    ``sampling="proportional"`` (the thesis: shuffle the combined index) draws every sample once per epoch, so a
    dataset's share of the batches is its share of the samples. ``"balanced"`` gives every dataset the same number
    of batches per epoch (the mean over datasets), resampling small sets and subsampling large ones.

    Under DDP (``num_replicas > 1``) all processes build the same sequence of global batches of
    ``batch_size * num_replicas`` samples and each takes its own slice, so a global batch still holds one dataset;
    a dataset's last, partial global batch is completed with its first samples (as ``DistributedSampler`` pads), so
    that every process runs the same number of steps. In one process, a dataset's leftover of fewer than
    ``min_batch_size`` samples joins that dataset's previous batch (every sample is still seen once per epoch):
    VICReg's variance and covariance of a one-sample batch are NaN, so pre-training uses ``min_batch_size=2``.
    :class:`SamplerEpochSetter` gives each epoch a new, reproducible order (seeded by ``seed`` and the trainer's
    epoch, hence restored exactly by a resumed run).

    ``epoch_length`` (the thesis's pre-training "epoch" of 39 steps) makes an epoch a fixed number of batches: the
    passes above (pass ``k`` ordered as epoch ``k`` would be) are chained into one stream and epoch ``e`` (from 1)
    takes its batches ``(e - 1) * epoch_length`` to ``e * epoch_length - 1``, so every sample is still seen once per
    pass and the batches of an epoch depend only on ``seed`` and ``e``. ``None``: an epoch is one pass.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        sampling: str = "proportional",
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        min_batch_size: int = 1,
        names: Sequence[str] | None = None,
        epoch_length: int | None = None,
    ) -> None:
        if epoch_length is not None and epoch_length < 1:
            raise ValueError(f"epoch_length must be a positive number of batches or None, got {epoch_length}")
        if sampling not in ("proportional", "balanced"):
            raise ValueError(f"sampling must be 'proportional' or 'balanced', got '{sampling}'")
        if batch_size < min_batch_size:
            raise ValueError(f"batch_size {batch_size} is below the minimum batch size {min_batch_size}")
        names = list(names) if names is not None else [f"#{i}" for i in range(len(sizes))]
        small = [f"'{n}' ({s})" for n, s in zip(names, sizes) if 0 < s < min_batch_size]
        if small:
            raise ValueError(
                f"dataset(s) {', '.join(small)}: fewer samples than the minimum batch size {min_batch_size}"
            )
        self.sizes = list(sizes)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.sampling = sampling
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.min_batch_size = min_batch_size
        self.epoch_length = epoch_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[torch.Tensor]:
        if self.epoch_length is None:
            return self._pass(self.epoch)
        per_pass = len(self._pass(1))
        if per_pass == 0:
            return []
        start = max(self.epoch - 1, 0) * self.epoch_length
        stop = start + self.epoch_length
        first, last = start // per_pass + 1, (stop - 1) // per_pass + 1
        stream = [batch for k in range(first, last + 1) for batch in self._pass(k)]
        offset = (first - 1) * per_pass
        return stream[start - offset : stop - offset]

    def _pass(self, number: int) -> list[torch.Tensor]:
        """The global batches of one pass over every dataset, in the order seeded by ``seed + number``."""
        generator = torch.Generator().manual_seed(self.seed + number)
        step = self.batch_size * self.num_replicas
        offsets = np.cumsum([0, *self.sizes])
        per_set = None
        if self.sampling == "balanced":
            per_set = math.ceil(sum(self.sizes) / len(self.sizes))
        batches = []
        for offset, size in zip(offsets, self.sizes):
            if size == 0:
                continue
            order = torch.randperm(size, generator=generator) if self.shuffle else torch.arange(size)
            if per_set is not None:
                repeats = math.ceil(per_set / size)
                order = torch.cat([torch.randperm(size, generator=generator) for _ in range(repeats)])[:per_set]
            order = order + int(offset)
            full = len(order) // step * step
            own = list(order[:full].split(step))
            rest = order[full:]
            if len(rest) and not self.drop_last:
                if self.num_replicas > 1:  # every process must run the same number of steps (collectives)
                    own.append(torch.cat([rest, order.repeat(math.ceil(step / len(order)))[: step - len(rest)]]))
                elif len(rest) < self.min_batch_size and own:
                    own[-1] = torch.cat([own[-1], rest])
                else:
                    own.append(rest)
            batches += own
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return [batch for batch in batches if len(batch)]  # a dataset under one global batch leaves an empty split

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            mine = (
                batch
                if self.num_replicas == 1
                else batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            )
            if len(mine):
                yield mine.tolist()

    def __len__(self) -> int:
        return sum(1 for batch in self._global_batches() if len(batch) > self.rank * self.batch_size)


class SamplerEpochSetter:
    """Ignite handler: ``sampler.set_epoch(engine.state.epoch)`` when each epoch starts (as MONAI does for
    ``DistributedSampler``)."""

    def __init__(self, sampler: TaskBatchSampler) -> None:
        self.sampler = sampler

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.sampler.set_epoch(engine.state.epoch)


class TaskPrepareBatch(PrepareBatch):
    """``(image, {"label": ..., "dataset": name}, (), {"dataset": name})`` for MONAI's engines.

    The dataset name reaches the network as a keyword argument (it selects the latents and the head) and the loss
    and metrics through the target. ``target_key`` may be absent (self-supervised pre-training): the target then
    only carries the dataset name.
    """

    def __init__(self, input_key: str = "image", target_key: str = "label") -> None:
        self.input_key = input_key
        self.target_key = target_key

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, Any], tuple, dict[str, str]]:
        names = set(batchdata["dataset"])
        if len(names) != 1:
            raise ValueError(f"a Medformer batch must hold one dataset, got {sorted(names)}; use TaskBatchSampler")
        name = names.pop()
        inputs = batchdata[self.input_key].to(device=device, non_blocking=non_blocking)
        target: dict[str, Any] = {"dataset": name}
        if self.target_key in batchdata:
            target["label"] = batchdata[self.target_key].to(device=device, non_blocking=non_blocking)
        return inputs, target, (), {"dataset": name}


# ----------------------------------------------------------------------------------------------------------------
# augmentation
#
# The views are 28-64 px images, on which MONAI's per-call machinery (metadata, lazy-resampling checks, building a
# ``Rotate``/``Affine`` and its grid per call) costs 10-50x the arithmetic. The transforms below keep MONAI's random
# draws and values but execute on plain tensors with single torch calls (bundle docs, "Data pipeline").


def _plain(img: Any) -> torch.Tensor:
    """``img`` as a plain tensor: a MetaTensor's data without its metadata, numpy arrays shared."""
    return img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)


@functools.lru_cache(maxsize=16)
def _grid_coords(n: int, dtype: torch.dtype) -> torch.Tensor:
    """``F.affine_grid``'s coordinates along an axis of ``n`` voxels (``align_corners=False``); never written to."""
    return (torch.arange(n, dtype=dtype) * 2 + 1) / n - 1


def _affine_grid(theta: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``F.affine_grid(theta[None], (1, 1, *shape), align_corners=False)`` as a sum of broadcast terms: one
    full-size operation instead of a batched matrix product (2x faster at 28^2 pixels, 4x at 28^3 voxels)."""
    d = len(shape)
    grid = theta[:, d]
    for k, n in enumerate(reversed(shape)):  # grid coordinate k runs along spatial axis d - 1 - k
        axis = [n if a == d - 1 - k else 1 for a in range(d)]
        grid = grid + theta[:, k] * _grid_coords(n, theta.dtype).view(*axis, 1)
    return grid[None]


def centred_warp(
    img: torch.Tensor,
    matrix: np.ndarray,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Resample channel-first 2D/3D ``img`` at the same size with MONAI's ``Rotate``/``Affine`` convention: the
    output voxel at ``u`` (voxel coordinates from the image centre) takes the input's value at ``matrix @ (u, 1)``
    (``scipy.ndimage.affine_transform``'s "pull" direction), ``align_corners=False``. Computed in ``dtype``,
    returned as float32.

    Args:
        img: ``(C, *spatial)`` tensor.
        matrix: ``(d, d + 1)`` or ``(d + 1, d + 1)`` affine matrix, ``d`` spatial dimensions.
        mode: ``grid_sample`` interpolation.
        padding_mode: ``grid_sample`` padding.
        dtype: computation type.
    """
    size = np.asarray(img.shape[1:], dtype=np.float64)
    d = size.size
    # grid_sample's coordinates are 2 u / size (align_corners False), its axes in reverse order (x = last axis)
    theta = np.empty((d, d + 1))
    theta[:, :d] = (matrix[:d, :d] * size / size[:, None])[::-1, ::-1]
    theta[:, d] = (2.0 * matrix[:d, d] / size)[::-1]
    out = F.grid_sample(
        img.to(dtype)[None],
        _affine_grid(torch.as_tensor(theta, dtype=dtype), img.shape[1:]),
        mode=mode,
        padding_mode=padding_mode,
        align_corners=False,
    )
    return out[0].float()


class FastRandFlipd(RandFlipd):
    """MONAI's ``RandFlipd`` (same arguments, random draws and values) executed as one ``torch.flip`` when metadata
    tracking is off and the call is not lazy; MONAI's own path otherwise. The output is a plain tensor."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        if get_track_meta() or (self.lazy if lazy is None else lazy):
            return super().__call__(data, lazy)
        d = dict(data)
        self.randomize(None)
        for key in self.key_iterator(d):
            img = _plain(d[key])
            d[key] = (
                torch.flip(img, map_spatial_axes(img.ndim, self.flipper.spatial_axis)) if self._do_transform else img
            )
        return d


class FastRandRotated(RandRotated):
    """MONAI's ``RandRotated`` (same arguments, random draws and values) executed with :func:`centred_warp` when
    metadata tracking is off, the call is not lazy, ``keep_size`` is true and ``align_corners`` false; MONAI's own
    path otherwise. The output is a plain float32 tensor."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        lazy_ = self.lazy if lazy is None else lazy
        if get_track_meta() or lazy_ or not self.rand_rotate.keep_size or any(self.align_corners):
            return super().__call__(data, lazy)
        d = dict(data)
        self.randomize(None)
        self.rand_rotate.randomize()
        rotate = self.rand_rotate
        for key, mode, padding_mode, dtype in self.key_iterator(d, self.mode, self.padding_mode, self.dtype):
            img = _plain(d[key])
            if self._do_transform:
                angle = rotate.x if img.ndim == 3 else (rotate.x, rotate.y, rotate.z)
                matrix = create_rotate(img.ndim - 1, angle)
                d[key] = centred_warp(
                    img, matrix, mode, padding_mode, get_equivalent_dtype(dtype or img.dtype, torch.Tensor)
                )
            else:
                d[key] = img.float()
        return d


class RandAugment(Randomizable, Transform):
    """RandAugment (Cubuk et al. 2020) for channel-first 2D tensors in [0, 1]: ``num_ops`` random operations, each at
    magnitude ``magnitude`` of ``num_magnitude_bins - 1`` (10 = 1/3 of the range, as torchvision's scale), with a
    random sign for the signed operations.

    Operations: identity, rotate (30 deg at full scale), shear x/y (0.3), translate x/y (45 % of the side),
    brightness, contrast (factor 1 +- 0.9), solarize, posterize (4 to 8 bits) and autocontrast.
    """

    OPS = (
        "identity",
        "rotate",
        "shear_x",
        "shear_y",
        "translate_x",
        "translate_y",
        "brightness",
        "contrast",
        "solarize",
        "posterize",
        "autocontrast",
    )

    def __init__(self, num_ops: int = 2, magnitude: int = 8, num_magnitude_bins: int = 31) -> None:
        self.num_ops = num_ops
        self.strength = magnitude / (num_magnitude_bins - 1)
        self._ops: list[tuple[str, float]] = []

    def randomize(self, data: Any = None) -> None:
        chosen = self.R.randint(len(self.OPS), size=self.num_ops)
        self._ops = [(self.OPS[i], 1.0 if self.R.rand() < 0.5 else -1.0) for i in chosen]

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        img = torch.as_tensor(img, dtype=torch.float32)
        for name, sign in self._ops:
            img = self._apply(img, name, sign * self.strength)
        return img.clamp(0.0, 1.0)

    @staticmethod
    def _matrix(name: str, m: float, size: Sequence[int]) -> np.ndarray | None:
        """The ``(2, 3)`` matrix of a geometric operation (as MONAI ``Affine``'s ``rotate_params``, ``shear_params``,
        ``translate_params``), None for the others."""
        if name == "rotate":
            return create_rotate(2, math.radians(30.0 * m))[:2]
        shear, shift = 0.3 * m, 0.45 * m
        rows = {
            "shear_x": ((1.0, shear, 0.0), (0.0, 1.0, 0.0)),
            "shear_y": ((1.0, 0.0, 0.0), (shear, 1.0, 0.0)),
            "translate_x": ((1.0, 0.0, shift * size[0]), (0.0, 1.0, 0.0)),
            "translate_y": ((1.0, 0.0, 0.0), (0.0, 1.0, shift * size[1])),
        }.get(name)
        return None if rows is None else np.array(rows)

    @classmethod
    def _apply(cls, img: torch.Tensor, name: str, m: float) -> torch.Tensor:
        matrix = cls._matrix(name, m, img.shape[1:])
        if matrix is not None:
            return centred_warp(img, matrix)
        if name == "brightness":
            return img * (1.0 + 0.9 * m)
        if name == "contrast":
            mean = img.mean(dim=tuple(range(1, img.ndim)), keepdim=True)
            return mean + (img - mean) * (1.0 + 0.9 * m)
        if name == "solarize":
            return torch.where(img >= 1.0 - abs(m), 1.0 - img, img)
        if name == "posterize":
            levels = 2 ** (8 - int(round(4 * abs(m))))
            return torch.floor(img * (levels - 1) + 0.5) / (levels - 1)
        if name == "autocontrast":
            dims = tuple(range(1, img.ndim))
            low, high = img.amin(dim=dims, keepdim=True), img.amax(dim=dims, keepdim=True)
            return torch.where(high > low, (img - low) / (high - low).clamp_min(1e-8), img)
        return img


class RandAugmentd(Randomizable, MapTransform):
    """Dictionary version of :class:`RandAugment`; every key gets the same operations."""

    def __init__(self, keys: KeysCollection, num_ops: int = 2, magnitude: int = 8, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.augment = RandAugment(num_ops=num_ops, magnitude=magnitude)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandAugmentd:
        super().set_random_state(seed, state)
        self.augment.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.augment.randomize()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            d[key] = self.augment(d[key], randomize=False)
        return d


class RandViewsd(Randomizable, MapTransform):
    """Stack ``num_views`` independently augmented copies of ``keys`` on a new first axis (views for VICReg).

    Args:
        keys: keys to augment (e.g. ``"image"``); ``(C, *spatial)`` becomes ``(num_views, C, *spatial)``.
        transform: dictionary transform applied once per view (e.g. a ``Compose`` of random augmentations).
        num_views: number of views.
        track_meta: MONAI's metadata tracking while the views are made; False (for views whose metadata is dropped
            anyway): the same values at about twice the speed on small images (:func:`medssl.transforms.meta_tracking`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: Any,
        num_views: int = 2,
        track_meta: bool = True,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.transform = transform
        self.num_views = num_views
        self.track_meta = track_meta

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandViewsd:
        super().set_random_state(seed, state)
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        with meta_tracking(self.track_meta):
            views = [self.transform(dict(d)) for _ in range(self.num_views)]
        for key in self.key_iterator(d):
            d[key] = torch.stack([torch.as_tensor(v[key]) for v in views])
        return d


def dataset_for(specs: Mapping[str, DatasetSpec], names: Sequence[str]) -> dict[str, DatasetSpec]:
    """The specs of ``names`` only (order kept), e.g. the one dataset of ``train_single.json``."""
    return {name: specs[name] for name in names}
