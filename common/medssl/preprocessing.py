"""One definition of a 3D segmentation bundle's deterministic preprocessing, for training, validation and inference.

``train.json`` (``deterministic_transforms``, used by training and validation), ``evaluate.json`` (through
``validate#preprocessing``) and ``inference.json`` (``preprocessing``) all instantiate
:func:`volume_preprocessing` with the same config keys; inference passes no label key. An inference config read
alone (``python -m monai.bundle run --config_file configs/inference.json``, MONAI Label's ``monaibundle`` app)
therefore applies exactly the transforms validation applied, including each item's ``modality``::

    "preprocessing": {"_target_": "Compose", "transforms": {
        "_target_": "medssl.preprocessing.volume_preprocessing", "pixdim": "@pixdim",
        "default_modality": "@default_modality", "hu_range": "@hu_range", "percentiles": "@percentiles",
        "spatial_size": "@roi_size"}}
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import (
    AsDiscreted,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    Spacingd,
    SpatialPadd,
)

from .transforms import NormalizeByModalityd

__all__ = ["volume_preprocessing"]


def volume_preprocessing(
    image_key: str = "image",
    label_key: str | None = None,
    pixdim: Sequence[float] | None = None,
    default_modality: str = "CT",
    hu_range: Sequence[float] = (-1000.0, 1000.0),
    percentiles: Sequence[float] = (0.5, 99.5),
    binarize_label: bool = True,
    spatial_size: Sequence[int] | None = None,
    axcodes: str = "RAS",
    modality_key: str = "modality",
) -> list[MapTransform]:
    """Load, reorient to ``axcodes``, resample to ``pixdim`` (``None``: keep the spacing), normalise intensities by
    each item's ``modality_key`` (:class:`medssl.transforms.NormalizeByModalityd`; items without it use
    ``default_modality``), threshold the label at 0.5 when ``binarize_label``, pad to at least ``spatial_size``.

    Every spatial step is invertible, so ``Invertd`` returns predictions to the input grid.

    Args:
        image_key: key of the image path.
        label_key: key of the label path (training, validation); ``None`` at inference.
        pixdim: output voxel size in mm, or ``None`` to keep each image's spacing.
        default_modality: modality of items without ``modality_key`` (``"CT"``: Hounsfield window).
        hu_range: Hounsfield window scaled to [0, 1] for CT.
        percentiles: percentile window scaled to [0, 1] for other modalities.
        binarize_label: threshold the label at 0.5 (probability maps and 0/255 masks become 0/1).
        spatial_size: minimum spatial size (the sliding-window ROI); ``None``: no padding.
        axcodes: orientation codes of ``Orientationd``.
        modality_key: item key holding the modality.
    """
    keys = [image_key] if label_key is None else [image_key, label_key]
    modes = ["bilinear", "nearest"][: len(keys)]
    transforms: list[MapTransform] = [
        LoadImaged(keys=keys),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes=axcodes),
    ]
    if pixdim is not None:
        transforms.append(Spacingd(keys=keys, pixdim=pixdim, mode=modes))
    transforms.append(
        NormalizeByModalityd(
            keys=image_key,
            modality_key=modality_key,
            default_modality=default_modality,
            hu_range=hu_range,
            percentiles=percentiles,
        )
    )
    if label_key is not None and binarize_label:
        transforms.append(AsDiscreted(keys=label_key, threshold=0.5))
    if spatial_size is not None:
        transforms.append(SpatialPadd(keys=keys, spatial_size=spatial_size))
    transforms.append(EnsureTyped(keys=keys))
    return transforms
