"""Stand-in for ``pydicom-seg`` in the MONAI Label side environment (``make monailabel-env``), never in the project.

monailabel 0.8.5 imports ``pydicom_seg`` at the top of ``monailabel/datastore/utils/convert.py``, which the server
imports at start, and uses it only to convert label maps to and from DICOM SEG objects for DICOMweb datastores.
pydicom-seg 0.4.1 (the last release) imports ``pydicom._storage_sopclass_uids``, which pydicom 3 removed, so with
it the server needs ``pydicom<3``, while the bundles pin ``pydicom==3.0.2`` (MedMAE's DICOM reader uses
``pydicom.pixels``, new in pydicom 3). This package lets the import succeed; any use raises, naming the reason.
"""

from __future__ import annotations

from typing import Any

REASON = "DICOM SEG conversion is unavailable in this environment (pydicom-seg 0.4.1 needs pydicom<3)"


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    raise NotImplementedError(f"pydicom_seg.{name}: {REASON}")
