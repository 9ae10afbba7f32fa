"""Input checks run at the start of every config: the files load, labels match their images, and the DICOM
geometry the pretext targets need is present (errors name the item, key, file and reason, all at once)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medssl.data import DataCheckError, Problem

__all__ = ["check_geometry", "check_series_labels"]


def check_geometry(items: Sequence[Mapping[str, Any]], tasks: Sequence[str] = ("heatmap", "location")) -> None:
    """Check before training that every item has the geometry its targets need, and report all problems at once.

    Each ``image`` must be a DICOM file with ImagePositionPatient, ImageOrientationPatient and PixelSpacing; the
    heat-map task needs ``references`` (plane geometries) that are not parallel to it, the location task a
    ``stack`` of parallel slices that contains it.

    Raises:
        medssl.data.DataCheckError: a table naming the item, key, file and reason of every problem.
    """
    from medssl.geometry import GeometryError, intersection_line, read_dicom_geometry, slice_stack
    from medssl.geometry.planes import as_plane_geometry

    problems = []
    for i, item in enumerate(items):
        ref, image = f"item[{i}]", str(item.get("image", ""))
        try:
            plane = read_dicom_geometry(image)
        except GeometryError as e:
            problems.append(Problem(ref, "image", image, str(e)))
            continue
        if "heatmap" in tasks:
            refs = item.get("references") or []
            if not refs:
                problems.append(
                    Problem(ref, "references", image, "no reference planes (needed for the line heat-maps)")
                )
            for r in refs:
                try:
                    intersection_line(plane, as_plane_geometry(r))
                except GeometryError as e:
                    problems.append(Problem(ref, "references", image, str(e)))
        if "location" in tasks:
            try:
                slice_stack(item.get("stack") or []).location_of(plane)
            except GeometryError as e:
                problems.append(Problem(ref, "stack", image, str(e) or "no stack of slices"))
    if problems:
        raise DataCheckError(problems, f"{len(problems)} item(s) lack the geometry the pretext targets need")


def check_series_labels(training: Sequence[Mapping[str, Any]], validation: Sequence[Mapping[str, Any]] = ()) -> None:
    """Binary classification items: every ``label`` is 0 or 1 and the training set holds both classes (the
    prevalence-weighted loss needs both).

    Raises:
        medssl.data.DataCheckError: naming the items and reasons.
    """
    problems = []
    for section, items in (("training", training), ("validation", validation)):
        for i, item in enumerate(items):
            if item.get("label") not in (0, 1, 0.0, 1.0, True, False):
                why = f"label must be 0 or 1, got {item.get('label')!r}"
                problems.append(Problem(f"{section}[{i}]", "label", str(item.get("image", "")), why))
    labels = {float(item.get("label", -1)) for item in training}
    if not problems and labels != {0.0, 1.0}:
        problems.append(Problem("training", "label", "-", f"need both classes to weight them, found {sorted(labels)}"))
    if problems:
        raise DataCheckError(problems, "classification labels")
