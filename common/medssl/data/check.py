"""Validate a datalist before training: every file present, readable, finite and of the expected shape.

``check_datalist`` returns a list of :class:`Problem`; ``assert_datalist_ok`` raises :class:`DataCheckError` (a
``ValueError``) whose message is a table of the problems; ``python -m medssl.data check DATALIST`` prints the table
and exits non-zero on errors.

Decisions:

* Each distinct file is loaded once, with MONAI ``LoadImage(image_only=True, ensure_channel_first=True)``; the
  spatial shape is everything after the channel axis.
* Dimensionality: a 3D file whose last spatial axis has size 1, e.g. (256, 256, 1), counts as 2D. It is an error
  where 3D is expected, and a warning where 2D is expected (``medssl.transforms.SqueezeSingletonSliced`` reads it).
* Channel counts (``num_channels``) are checked on image keys only. Without ``num_channels``, a 3D image with
  several channels (a 4D NIfTI: channels or time points) is an error: every bundle model takes one channel.
* Label keys (``label_keys``) are checked against the reference image key (``"image"`` if checked, else the first
  non-label key): an axis flipped or permuted between their affines is an error (after ``Orientationd`` the label
  would be mirrored against its image), then a different spatial shape is an error and, when both carry an
  affine, a different grid is a warning.
* Values: NaN/Inf voxels and zero-size axes are errors; a constant image (e.g. all zero) and non-integer label
  values are warnings. Warnings never make ``assert_datalist_ok`` or the CLI fail unless ``strict=True``;
  ``assert_datalist_ok`` logs them (one table, before training starts).
* A datalist without any item, or a section to check that is empty, is an error.
* A numeric value (e.g. a class label ``"label": 1``) is accepted without a file check.
* Relative paths are resolved against ``base_dir``, else the folder of the datalist JSON, else the working folder.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DataCheckError",
    "Problem",
    "assert_datalist_ok",
    "check_datalist",
    "format_problems",
    "load_datalist",
]

ERROR, WARNING = "error", "warning"
logger = logging.getLogger(__name__)
_MAX_REASON = 160


@dataclass(frozen=True)
class Problem:
    """One problem found in a datalist: which item, key and file, and why."""

    item: str  # "<datalist>:<section>[<index>]"
    key: str
    file: str
    reason: str
    severity: str = ERROR

    def __str__(self) -> str:
        return f"{self.severity}: {self.item} {self.key} {self.file}: {self.reason}"


class DataCheckError(ValueError):
    """Raised by :func:`assert_datalist_ok`; ``problems`` holds the list, the message is a table."""

    def __init__(self, problems: Sequence[Problem], title: str = "datalist check failed") -> None:
        self.problems = list(problems)
        super().__init__(f"{title}:\n{format_problems(self.problems)}")


def format_problems(problems: Iterable[Problem]) -> str:
    """A plain-text table of problems: severity, item, key, file, reason."""
    rows = [[p.severity, p.item, p.key, p.file, p.reason] for p in problems]
    if not rows:
        return "no problems"
    header = ["severity", "item", "key", "file", "reason"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)) + "  " + header[-1]]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    return "\n".join(lines)


def load_datalist(
    path: str | os.PathLike, section: str = "training", base_dir: str | os.PathLike | None = None
) -> list[dict]:
    """Read one section of an MSD-style datalist JSON into dicts with absolute paths.

    Wraps ``monai.data.load_decathlon_datalist`` (``image`` and ``label`` are always joined to ``base_dir``, other
    keys only when the joined path exists). ``base_dir`` defaults to the JSON's folder.

    Raises:
        FileNotFoundError: the JSON does not exist.
        ValueError: it is not valid JSON, or it has no such section (the message names both).
    """
    from monai.data import load_decathlon_datalist

    data = _read_json(Path(path))
    if section not in data:
        raise ValueError(f"{path}: no section {section!r} (sections: {', '.join(map(str, data)) or 'none'})")
    base = Path(base_dir) if base_dir is not None else Path(path).resolve().parent
    return load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=section, base_dir=str(base))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"datalist not found: {path}")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with sections such as 'training', got {type(data).__name__}")
    return data


@dataclass
class _FileInfo:
    """What one load of a file told us."""

    spatial: tuple[int, ...] = ()
    channels: int = 0
    affine: np.ndarray | None = None
    error: str = ""
    values: tuple[tuple[str, str], ...] = ()  # (severity, reason) of value checks
    label_values: tuple[tuple[str, str], ...] = ()


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _load(files: list[str], check_values: bool, loader: Any) -> _FileInfo:
    for f in files:
        p = Path(f)
        if not p.exists():
            return _FileInfo(error="file not found")
        if p.is_file() and p.stat().st_size == 0:
            return _FileInfo(error="empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = loader(files[0] if len(files) == 1 else files)
    except Exception as e:  # any reader failure is a finding, not a crash
        return _FileInfo(error=f"unreadable: {_short(e)}")
    shape = tuple(int(s) for s in img.shape)
    affine = getattr(img, "affine", None)
    info = _FileInfo(spatial=shape[1:], channels=shape[0], affine=None if affine is None else np.asarray(affine))
    if not check_values:
        return info
    if img.numel() == 0:
        return info  # reported as a zero-size axis by the shape check
    import torch

    x = img.as_tensor() if hasattr(img, "as_tensor") else img
    vals: list[tuple[str, str]] = []
    if x.is_floating_point():
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        if n_nan or n_inf:
            vals.append((ERROR, f"non-finite values: {n_nan} NaN, {n_inf} Inf of {x.numel()}"))
    finite = x[torch.isfinite(x)] if x.is_floating_point() else x
    if finite.numel() and bool((finite == finite.flatten()[0]).all()):
        vals.append((WARNING, f"constant image (every value is {float(finite.flatten()[0]):g})"))
    info.values = tuple(vals)
    if finite.numel() and x.is_floating_point() and not bool((finite == torch.round(finite)).all()):
        info.label_values = ((WARNING, "non-integer values in a label"),)
    return info


def _items(
    datalist: str | os.PathLike | list | dict, sections: Sequence[str], base_dir: str | os.PathLike | None
) -> tuple[str, Path, list[tuple[str, Any]], list[Problem]]:
    """(name, base folder, [(item ref, item)], problems) of a datalist given as a path, a dict or a list."""
    problems: list[Problem] = []
    if isinstance(datalist, (str, os.PathLike)):
        path = Path(datalist)
        name = path.name
        data: Any = _read_json(path)
        base = Path(base_dir) if base_dir is not None else path.resolve().parent
    else:
        name, data = ("<list>" if isinstance(datalist, list) else "<dict>"), datalist
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    if isinstance(data, list):
        if not data:
            problems.append(Problem(name, "-", name, "the datalist is empty: no item to train on"))
        return name, base, [(f"{name}[{i}]", it) for i, it in enumerate(data)], problems
    present = [s for s in sections if s in data]
    for s in sections:
        if s not in data:
            sev = WARNING if present else ERROR
            why = f"no section {s!r} (sections: {', '.join(map(str, data)) or 'none'})"
            problems.append(Problem(name, "-", name, why, sev))
    out = []
    for s in present:
        if not isinstance(data[s], list):
            problems.append(Problem(f"{name}:{s}", "-", name, f"section {s!r} is not a list"))
            continue
        if not data[s]:
            problems.append(Problem(f"{name}:{s}", "-", name, f"section {s!r} is empty"))
        out += [(f"{name}:{s}[{i}]", it) for i, it in enumerate(data[s])]
    return name, base, out, problems


def check_datalist(
    datalist: str | os.PathLike | list[dict] | dict,
    keys: Sequence[str] = ("image",),
    spatial_dims: int | None = None,
    num_channels: int | None = None,
    base_dir: str | os.PathLike | None = None,
    sections: Sequence[str] = ("training", "validation"),
    check_values: bool = True,
    label_keys: Sequence[str] = ("label",),
) -> list[Problem]:
    """Check every item of a datalist; see the module docstring for what is checked and how.

    Args:
        datalist: a JSON path (MSD style, with sections), an in-memory dict with sections, or a list of item dicts
            (a string item stands for ``{"image": item}``).
        keys: keys every item must have; each names a file (or a list of files) that must load.
        spatial_dims: expected number of spatial dimensions (2 or 3), or None to skip.
        num_channels: expected channel count of image keys, or None to skip.
        base_dir: folder for relative paths (default: the JSON's folder, or the working folder for in-memory lists).
        sections: sections to check; a missing one is a warning if another exists, else an error.
        check_values: load the voxels and check for NaN/Inf, zero-size and constant images.
        label_keys: keys holding labels: shape checked against the image, channel count not checked.

    Returns:
        problems, in datalist order; empty when everything is fine.
    """
    from monai.transforms import LoadImage

    name, base, items, problems = _items(datalist, sections, base_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nvImageCodec plugin notice
        loader = LoadImage(image_only=True, ensure_channel_first=True)
    cache: dict[tuple[str, ...], _FileInfo] = {}
    ref_key = "image" if "image" in keys else next((k for k in keys if k not in label_keys), keys[0])
    for ref, item in items:
        if isinstance(item, str):
            item = {"image": item}
        if not isinstance(item, dict):
            problems.append(Problem(ref, "-", name, f"item is a {type(item).__name__}, not a dict"))
            continue
        infos: dict[str, tuple[str, _FileInfo]] = {}
        for key in keys:
            if key not in item or item[key] in (None, "", []):
                problems.append(Problem(ref, key, name, f"missing key {key!r} (item has: {', '.join(item) or '-'})"))
                continue
            if _is_number(item[key]):
                continue  # a class label, not a file
            raw = item[key] if isinstance(item[key], list) else [item[key]]
            files = [str(f if Path(f).is_absolute() else base / f) for f in map(str, raw)]
            shown = files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1})"
            if tuple(files) not in cache:
                cache[tuple(files)] = _load(files, check_values, loader)
            info = cache[tuple(files)]
            if info.error:
                problems.append(Problem(ref, key, shown, info.error))
                continue
            infos[key] = (shown, info)
            is_label = key in label_keys
            problems += [Problem(ref, key, shown, r, s) for s, r in info.values]
            if is_label:
                problems += [Problem(ref, key, shown, r, s) for s, r in info.label_values]
            problems += _check_shape(ref, key, shown, info, spatial_dims, None if is_label else num_channels)
        if ref_key in infos:
            _, rinfo = infos[ref_key]
            for key, (shown, info) in infos.items():
                if key == ref_key or key not in label_keys:
                    continue
                flipped = _orientation_change(info.affine, rinfo.affine)
                if flipped:
                    why = (
                        f"{flipped} against {ref_key!r}: after Orientationd the label would be mirrored against its "
                        "image; save it with the image's affine"
                    )
                    problems.append(Problem(ref, key, shown, why))
                elif _without_trailing_one(info.spatial) != _without_trailing_one(rinfo.spatial):
                    why = f"spatial shape {info.spatial} differs from {ref_key!r} {rinfo.spatial}"
                    problems.append(Problem(ref, key, shown, why))
                elif info.affine is not None and rinfo.affine is not None:
                    if info.affine.shape == rinfo.affine.shape and not np.allclose(
                        info.affine, rinfo.affine, atol=1e-3
                    ):
                        why = f"not on the grid of {ref_key!r}: same shape but different affine"
                        problems.append(Problem(ref, key, shown, why, WARNING))
    return problems


def _without_trailing_one(spatial: tuple[int, ...]) -> tuple[int, ...]:
    """A single-slice file read as ``(H, W, 1)`` (DICOM through ITK, a one-slice NIfTI) is on the grid of ``(H, W)``."""
    return spatial[:-1] if len(spatial) == 3 and spatial[-1] == 1 else spatial


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


def _orientation_change(affine: np.ndarray | None, ref: np.ndarray | None) -> str:
    """How the axes of ``affine`` are flipped or permuted against ``ref`` (e.g. "orientation LAS, not RAS: axis 0
    flipped"), or "" when they point the same way (or either affine is missing or of another dimension)."""
    if affine is None or ref is None or affine.shape != ref.shape:
        return ""
    from nibabel.orientations import aff2axcodes, io_orientation

    ornt, ref_ornt = io_orientation(affine), io_orientation(ref)
    if np.array_equal(ornt, ref_ornt):
        return ""
    codes, ref_codes = "".join(map(str, aff2axcodes(affine))), "".join(map(str, aff2axcodes(ref)))
    if not np.array_equal(ornt[:, 0], ref_ornt[:, 0]):
        how = "axes permuted"
    else:
        how = "axis " + ", ".join(str(i) for i in np.flatnonzero(ornt[:, 1] != ref_ornt[:, 1])) + " flipped"
    return f"orientation {codes}, not {ref_codes}: {how}"


def _check_shape(
    ref: str, key: str, shown: str, info: _FileInfo, spatial_dims: int | None, num_channels: int | None
) -> list[Problem]:
    out = []
    sp, nd = info.spatial, len(info.spatial)
    if any(s == 0 for s in sp):
        out.append(Problem(ref, key, shown, f"zero-size spatial axis, shape {sp}"))
    if spatial_dims is not None and nd != spatial_dims or (spatial_dims == 3 and nd == 3 and sp[-1] == 1):
        if spatial_dims == 2 and nd == 3 and sp[-1] == 1:
            why = f"one-slice volume {sp}: a 2D image once its last axis is squeezed (SqueezeSingletonSliced)"
            out.append(Problem(ref, key, shown, why, WARNING))
        elif spatial_dims == 3 and nd == 3 and sp[-1] == 1:
            out.append(Problem(ref, key, shown, f"2D image stored with a singleton last axis {sp}; 3D expected"))
        else:
            out.append(Problem(ref, key, shown, f"{nd}D image (spatial shape {sp}) where {spatial_dims}D expected"))
    if num_channels is not None and info.channels != num_channels:
        why = f"{info.channels} channel(s), expected {num_channels} (spatial shape {sp})"
        out.append(Problem(ref, key, shown, why))
    elif num_channels is None and nd == 3 and info.channels > 1:
        why = f"4D image: {info.channels} channels or time points of spatial shape {sp}, one expected; save one volume"
        out.append(Problem(ref, key, shown, why))
    return out


def assert_datalist_ok(
    datalist: str | os.PathLike | list[dict] | dict,
    keys: Sequence[str] = ("image",),
    spatial_dims: int | None = None,
    num_channels: int | None = None,
    base_dir: str | os.PathLike | None = None,
    sections: Sequence[str] = ("training", "validation"),
    check_values: bool = True,
    label_keys: Sequence[str] = ("label",),
    strict: bool = False,
) -> list[Problem]:
    """Like :func:`check_datalist`, but raise :class:`DataCheckError` on errors (and warnings if ``strict``).

    Returns:
        the warnings, when there is no error; they are also logged as one table (``logging.WARNING``).
    """
    problems = check_datalist(
        datalist, keys, spatial_dims, num_channels, base_dir, sections, check_values, label_keys=label_keys
    )
    bad = [p for p in problems if strict or p.severity == ERROR]
    name = datalist if isinstance(datalist, (str, os.PathLike)) else "datalist"
    if bad:
        raise DataCheckError(problems, f"{name}: {len(bad)} problem(s)")
    if problems:
        logger.warning(f"{name}: {len(problems)} warning(s), training goes on:\n{format_problems(problems)}")
    return problems


def count_files(
    datalist: str | os.PathLike | list[dict] | dict,
    keys: Sequence[str] = ("image",),
    base_dir: str | os.PathLike | None = None,
    sections: Sequence[str] = ("training", "validation"),
) -> int:
    """Number of distinct files (or file lists) referenced by ``keys`` in the datalist."""
    _, base, items, _ = _items(datalist, sections, base_dir)
    seen = set()
    for _, item in items:
        if isinstance(item, str):
            item = {"image": item}
        if isinstance(item, dict):
            for k in keys:
                if item.get(k) and not _is_number(item[k]):
                    raw = item[k] if isinstance(item[k], list) else [item[k]]
                    seen.add(tuple(str(f if Path(f).is_absolute() else base / f) for f in map(str, raw)))
    return len(seen)
