"""Checkpoint loading and saving shared by every bundle.

Loading goes through ``torch.load(weights_only=True)``, so a checkpoint can only hold tensors and plain containers:
a file that would need arbitrary unpickling is refused. :func:`load_state` compares the checkpoint with the model
key by key and, unless a partial load is explicitly allowed, fails with a :class:`CheckpointMismatchError` that names
the file and the offending keys instead of silently loading half a network.

Typical use from a bundle config (``initialize`` of a fine-tuning network)::

    "$medssl.checkpoint.load_pretrained(@network_def, @pretrained_ckpt, exclude='^out_tr\\.')"
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.utils import copy_model_state

__all__ = [
    "CheckpointMismatchError",
    "LoadReport",
    "extract_state_dict",
    "strip_prefix",
    "load_state",
    "load_pretrained",
    "save_checkpoint_atomic",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
_MAX_LISTED = 20


class CheckpointMismatchError(ValueError):
    """A checkpoint does not match the model it is loaded into (missing, unexpected or shape-mismatched keys)."""


@dataclass
class LoadReport:
    """What :func:`load_state` did.

    Attributes:
        source: the file name, or ``"<dict>"`` when a state dict was passed directly.
        loaded: model keys whose values were copied from the checkpoint.
        missing: model keys absent from the checkpoint (left untouched).
        unexpected: checkpoint keys the model does not have (ignored).
        mismatched: ``(key, checkpoint_shape, model_shape)`` for keys present in both with different shapes.
        excluded: keys skipped on purpose because they match ``exclude`` (model and checkpoint keys, deduplicated).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every non-excluded key matched in name and shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def counts(self) -> str:
        """Counts of loaded / excluded / missing / unexpected / shape-mismatched keys."""
        return (
            f"loaded {len(self.loaded)} tensors, excluded {len(self.excluded)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape-mismatched {len(self.mismatched)}"
        )

    def summary(self) -> str:
        """``"<source>: <counts>"``."""
        return f"{self.source}: {self.counts()}"


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj: Any, keys: Sequence[str] = ("state_dict", "model", "network", "module")) -> dict:
    """Unwrap a state dict from a checkpoint container.

    ``obj`` is returned as is when it already is a state dict (a non-empty mapping of tensors); otherwise the first
    of ``keys`` present in it is followed, recursively, so ``{"epoch": 3, "state_dict": {...}}`` (Models Genesis,
    Lightning), ``{"model": {...}, "optimizer": {...}}`` (MONAI ``CheckpointSaver``) and nestings of those work.

    Raises:
        ValueError: no state dict found; the message lists the container's top-level keys.
    """
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in keys:
            if key in obj and isinstance(obj[key], Mapping):
                try:
                    return extract_state_dict(obj[key], keys)
                except ValueError:
                    continue
        raise ValueError(
            f"no state dict found in checkpoint container with keys {list(obj)[:_MAX_LISTED]}; "
            f"looked for a mapping of tensors, directly or under one of {list(keys)}."
        )
    raise ValueError(f"expected a checkpoint mapping, got {type(obj).__name__}.")


def strip_prefix(sd: Mapping[str, Any], prefixes: Sequence[str] = ("module.",)) -> dict:
    """Remove key prefixes shared by *all* keys (e.g. ``module.`` added by ``DataParallel``), repeatedly.

    A prefix is only stripped when every key carries it, so a model that has a sub-module called ``module`` next
    to others keeps its names.
    """
    out = dict(sd)
    changed = True
    while changed and out:
        changed = False
        for prefix in prefixes:
            if prefix and all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    return out


def _read(source: PathLike | Mapping) -> tuple[dict, str]:
    if isinstance(source, Mapping):
        return extract_state_dict(source), "<dict>"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(
            f"{path}: refused to load, it holds objects other than tensors and plain containers "
            f"(loaded with weights_only=True). Re-save it as a plain state dict. Details: {e}"
        ) from e
    try:
        return extract_state_dict(obj), str(path)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def _apply_prefix_map(sd: Mapping[str, Any], prefix_map: Mapping[str, str]) -> dict:
    out = {}
    for key, value in sd.items():
        for old, new in prefix_map.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def _format_keys(keys: Sequence[Any]) -> str:
    shown = ", ".join(str(k) for k in keys[:_MAX_LISTED])
    more = f" ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"[{shown}{more}] ({len(keys)} in total)"


def _mismatch_message(report: LoadReport, strict: bool) -> str:
    lines = [f"checkpoint {report.source} does not match the model ({report.counts()})."]
    if report.mismatched:
        shapes = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in report.mismatched]
        lines.append(f"shape-mismatched keys: {_format_keys(shapes)}")
    if strict and report.missing:
        lines.append(f"missing keys (in the model, not in the checkpoint): {_format_keys(report.missing)}")
    if strict and report.unexpected:
        lines.append(f"unexpected keys (in the checkpoint, not in the model): {_format_keys(report.unexpected)}")
    lines.append(
        "To load only the matching tensors pass allow_partial=True (or strict=False to tolerate missing/unexpected "
        "keys), or skip the differing layers with exclude='<regex>' (e.g. exclude='^out_tr\\.' for a new output "
        "layer), or rename keys with prefix_map={'old.': 'new.'}."
    )
    return "\n".join(lines)


def load_state(
    model: torch.nn.Module,
    source: PathLike | Mapping,
    *,
    strict: bool = True,
    prefix_map: Mapping[str, str] | None = None,
    exclude: str | re.Pattern | None = None,
    allow_partial: bool = False,
    convert: Callable[[dict, torch.nn.Module], dict] | None = None,
) -> LoadReport:
    """Load a checkpoint into ``model`` in place and report what matched.

    Steps: read ``source`` (a path, loaded with ``weights_only=True`` on the CPU, or an in-memory checkpoint
    mapping), unwrap it with :func:`extract_state_dict`, strip a ``module.`` prefix shared by all keys, rename key
    prefixes with ``prefix_map``, apply ``convert``, drop keys matching ``exclude`` on both sides, then compare with
    ``model.state_dict()``.

    Args:
        model: the network to update.
        source: checkpoint path or mapping.
        strict: like ``nn.Module.load_state_dict``: missing or unexpected keys are an error. Shape mismatches are
            always an error unless ``allow_partial``.
        prefix_map: ``{"old_prefix": "new_prefix"}`` applied to checkpoint keys (first match wins), e.g.
            ``{"base_model.": ""}`` or ``{"": "encoder."}``.
        exclude: regular expression (``re.search``) on key names; matching keys are neither loaded nor reported as
            missing/unexpected/mismatched (e.g. a re-initialised output layer).
        allow_partial: load whatever matches in name and shape and only log the rest.
        convert: ``convert(state_dict, model) -> state_dict``, a method-specific adaptation of the checkpoint
            tensors before the comparison (e.g. input channels, position-embedding grid size).

    Returns:
        a :class:`LoadReport`.

    Raises:
        CheckpointMismatchError: the checkpoint does not fit and ``allow_partial`` is False; the message names the
            file, lists the offending keys and suggests the options above.
    """
    if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        model = model.module
    sd, name = _read(source)
    sd = strip_prefix(sd)
    if prefix_map:
        sd = _apply_prefix_map(sd, prefix_map)
    if convert is not None:
        sd = convert(sd, model)
    target = model.state_dict()
    report = LoadReport(source=name)
    if exclude is not None:
        pattern = re.compile(exclude)
        report.excluded = sorted({k for k in (*target, *sd) if pattern.search(k)})
        skip = set(report.excluded)
        sd = {k: v for k, v in sd.items() if k not in skip}
        target = {k: v for k, v in target.items() if k not in skip}
    report.missing = [k for k in target if k not in sd]
    report.unexpected = [k for k in sd if k not in target]
    for key, value in sd.items():
        if key in target:
            if value.shape == target[key].shape:
                report.loaded.append(key)
            else:
                report.mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
    if not allow_partial and (report.mismatched or (strict and (report.missing or report.unexpected))):
        raise CheckpointMismatchError(_mismatch_message(report, strict))
    copy_model_state(model, {k: sd[k] for k in report.loaded}, inplace=True)
    logger.info(report.summary())
    for title, keys in (("missing", report.missing), ("unexpected", report.unexpected)):
        if keys:
            logger.info(f"{title} keys: {_format_keys(keys)}")
    if report.mismatched:
        logger.info(f"shape-mismatched keys not loaded: {_format_keys([k for k, _, _ in report.mismatched])}")
    return report


def load_pretrained(
    model: torch.nn.Module, path: PathLike | None, exclude: str | re.Pattern | None = None
) -> torch.nn.Module:
    """Initialise ``model`` from a pre-trained checkpoint for fine-tuning, for config ``initialize`` expressions.

    ``path`` None or ``""`` leaves the model as is (training from scratch, logged). Otherwise every key must match
    in name and shape except those matched by ``exclude`` (a regex, e.g. ``'^out_tr\\.'`` when the output layer
    has a different number of classes, or ``'^(up_tr|out_tr)'`` to take only the encoder of a U-Net); anything else
    raises :class:`CheckpointMismatchError`.

    Returns:
        ``model`` (updated in place).
    """
    if path is None or str(path) == "":
        logger.info(f"no pre-trained checkpoint given: {type(model).__name__} keeps its random initialisation.")
        return model
    report = load_state(model, path, strict=True, exclude=exclude)
    logger.info(f"pre-trained weights: {report.summary()}")
    if report.excluded:
        logger.info(f"kept the initialisation of excluded keys: {_format_keys(report.excluded)}")
    return model


def save_checkpoint_atomic(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to a temporary file next to ``path``, then ``os.replace`` it into place.

    A crash mid-write never leaves a truncated checkpoint under ``path``; the temporary file is removed on error.

    Returns:
        the destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
