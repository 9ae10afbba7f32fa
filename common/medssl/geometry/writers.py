"""Write resliced views: one single-frame DICOM file per slice, and NIfTI in MONAI's array layout.

DICOM: MR or CT Image Storage, 16-bit unsigned pixels with one RescaleSlope/RescaleIntercept per series, and the
geometry tags ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness, SpacingBetweenSlices
(stacks), SliceLocation, FrameOfReferenceUID; UIDs are derived from the subject and view names, so re-running
gives identical files. NIfTI: ``(columns, rows, slices)`` (the layout of MONAI's ``PydicomReader``), RAS affine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .planes import GeometryError, PlaneGeometry, lps_to_ras

__all__ = ["write_dicom_series", "write_nifti"]

_UINT16_MAX = 65535


def _ds(values: Any) -> list[str] | str:
    """DICOM decimal strings (<= 16 characters) of numbers."""
    from pydicom.valuerep import format_number_as_ds

    if np.ndim(values) == 0:
        return format_number_as_ds(float(values))
    return [format_number_as_ds(float(v)) for v in values]


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["medssl.geometry.reslice", *parts])


def write_dicom_series(
    folder: str | os.PathLike,
    images: np.ndarray,
    planes: Sequence[PlaneGeometry],
    subject: str,
    view: str,
    series_number: int = 1,
    modality: str = "MR",
    slice_thickness: float | None = None,
    description: str = "",
) -> list[Path]:
    """Write one single-frame DICOM file per slice: ``folder/IM0001.dcm``, ... in InstanceNumber order.

    Args:
        folder: output folder (created).
        images: ``(N, rows, columns)`` values, stored as uint16 with one RescaleSlope/RescaleIntercept per series.
        planes: DICOM-layout geometry of each slice (:meth:`PlaneGeometry.to_dicom`).
        subject: PatientID / PatientName; with ``view`` it seeds deterministic UIDs (one study and frame of reference
            per subject, one series per view).
        view: SeriesDescription.
        series_number: SeriesNumber.
        modality: "MR" (MR Image Storage) or "CT" (CT Image Storage).
        slice_thickness: SliceThickness (mm); default the spacing between slices, or the smaller pixel spacing.
        description: DerivationDescription (provenance).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

    if modality not in ("MR", "CT"):
        raise ValueError(f"modality must be 'MR' or 'CT', got {modality!r}")
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3 or len(images) != len(planes):
        raise GeometryError(f"{view}: need (N, rows, columns) images for {len(planes)} planes, got {images.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lo, hi = float(images.min()), float(images.max())
    slope = (hi - lo) / _UINT16_MAX if hi > lo else 1.0
    stored = np.clip(np.rint((images - lo) / slope), 0, _UINT16_MAX).astype("<u2")
    between = float(np.linalg.norm(planes[1].origin - planes[0].origin)) if len(planes) > 1 else None
    thickness = slice_thickness or between or float(min(planes[0].spacing))
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    study_uid, frame_uid, series_uid = _uid(subject, "study"), _uid(subject, "frame"), _uid(subject, view, "series")
    paths = []
    for k, plane in enumerate(planes):
        geometry = plane.to_dicom()
        if (geometry["Rows"], geometry["Columns"]) != stored.shape[1:]:
            raise GeometryError(f"{view}: slice {k} is {stored.shape[1:]}, its plane {plane.shape}")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = _uid(subject, view, "instance", str(k))
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.ReferringPhysicianName = ""
        ds.Modality, ds.Manufacturer = modality, "medssl"
        ds.SeriesDescription, ds.DerivationDescription = view, description[:1024]
        ds.PatientName = ds.PatientID = subject
        ds.PatientBirthDate = ds.PatientSex = ""
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.StudyID = study_uid, series_uid, "1"
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.ImagePositionPatient = _ds(geometry["ImagePositionPatient"])
        ds.ImageOrientationPatient = _ds(geometry["ImageOrientationPatient"])
        ds.PixelSpacing = _ds(geometry["PixelSpacing"])
        ds.SliceThickness = _ds(thickness)
        if between is not None:
            ds.SpacingBetweenSlices = _ds(between)
        ds.SliceLocation = _ds(plane.dicom_normal @ plane.origin)
        if modality == "MR":
            ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "RM", "NONE", "2D"
            ds.ScanOptions = ds.EchoTime = ds.RepetitionTime = ds.EchoTrainLength = None
        else:
            ds.KVP = ds.AcquisitionNumber = None
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = geometry["Rows"], geometry["Columns"]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds(lo), _ds(slope), "US"
        ds.WindowCenter, ds.WindowWidth = _ds((lo + hi) / 2), _ds(max(hi - lo, 1.0))
        ds.PixelData = stored[k].tobytes()
        path = folder / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_nifti(
    path: str | os.PathLike, images: np.ndarray, planes: Sequence[PlaneGeometry], slice_thickness: float | None = None
) -> Path:
    """Write ``(N, rows, columns)`` slices as NIfTI ``(columns, rows, N)`` with a RAS affine; a single slice is
    written 2D ``(columns, rows)``. The third affine column is the step between slices (N > 1) or the DICOM normal
    times ``slice_thickness`` (default the smaller pixel spacing)."""
    import nibabel as nib

    images = np.asarray(images)
    first = planes[0].transpose()  # NIfTI / MONAI layout: axis 0 = columns
    if len(planes) > 1:
        step = planes[1].origin - planes[0].origin
        data = images.transpose(2, 1, 0)
    else:
        step = planes[0].dicom_normal * (slice_thickness or float(min(first.spacing)))
        data = images[0].T
    affine = lps_to_ras(first.affine(slice_step=step))
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return Path(path)
