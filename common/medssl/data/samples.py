"""Build a small, real sample dataset offline, from files shipped inside installed packages.

No data hub can be reached at run time, so ``python -m medssl.data samples --out data/samples`` assembles the
sample set from data packages:

* PyPI ``nilearn`` (MNI ICBM152 2009a T1 and grey/white-matter probability maps),
* PyPI ``pydicom-data`` (chest and leg radiographs, CT and MR slices) and ``pydicom`` itself (small CT/MR files,
  a five-file CT series),
* Debian ``invesalius-examples`` (a real head CT in HU, converted from its ``.inv3`` archive) and ``mricron-data``
  (Colin27 T1 with the AAL label atlas on the same grid), when they are installed.

Layout written under ``OUT`` (paths are relative to ``OUT``; the names are stable, other code depends on them):

====================================  ==============================================================================
``ct/head_ct.nii.gz``                 head CT, int16 HU, 256x256x108, spacing (0.957, 0.957, 1.5) mm, RAS
``ct/head_ct_head_mask.nii.gz``       uint8 0/1 head mask packaged with the CT (threshold >= -142 HU), same grid
``ct/head_ct_bone_mask.nii.gz``       uint8 0/1 bone mask packaged with the CT (threshold >= 226 HU), same grid
``mr/mni152_t1.nii.gz``               MNI152 2009a sym T1, 197x233x189 @ 1 mm, uint8 (byte copy)
``mr/mni152_gm.nii.gz``, ``_wm``      grey/white-matter probability maps, uint8 0..255 = 0..1 (byte copies)
``mr/mni152_gm_label.nii.gz``         uint8 0/1, grey-matter probability > 0.5
``mr/colin27_t1.nii.gz``              Colin27 T1 (mricron ``ch2``), 181x217x181 @ 1 mm, uint8
``mr/colin27_t1_brain.nii.gz``        brain-extracted Colin27 T1 (``ch2bet``), same grid
``mr/colin27_aal.nii.gz``             AAL atlas, 116 labels, same grid
``mr/colin27_gm_label.nii.gz``        uint8 0/1, AAL > 0 (the AAL grey-matter regions)
``xray/chest_pa.png``                 PA chest radiograph, 8-bit, downsampled to 1024 px on the long side
``xray/leg.png``                      lower-leg radiograph, 8-bit, 1024x1024
``slices/*.png``                      8-bit CT/MR slices, display-windowed (see ``_FLAT_2D``)
``dicom/*.dcm``                       original DICOM files (CT_small, MR_small, RG1_UNCI)
``dicom/ct_series/``                  a five-file DICOM CT series (16x16 pixels, real headers)
``datalist_*.json``                   MSD-style datalists ``{"training": [...], "validation": [...]}``
``provenance.json``                   per file: source package, version, path in the package, licence, sha256
``README.md``                         the same, for humans
====================================  ==============================================================================

PNG files store rows x columns (MONAI's ``PILReader`` returns them transposed, as (W, H)). All PNG files are
display-windowed 8-bit images regardless of modality; only the NIfTI CT volume carries HU.

The build is idempotent: ``provenance.json`` is the stamp. A product is rebuilt only when one of its files is
missing or has changed size, or its source version or recipe changed; ``force=True`` rebuilds everything. Files are
written atomically (temporary file in the same folder, then ``os.replace``). A missing source is reported as
``skipped: <what> (<why>, install with: <command>)`` and the rest is built.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import plistlib
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "DATALISTS",
    "FORMAT_VERSION",
    "LOCATORS",
    "PRODUCTS",
    "SOURCES",
    "Product",
    "SamplesReport",
    "Source",
    "SourceMissingError",
    "build_samples",
    "samples_dir",
]

FORMAT_VERSION = 1
"""Version of the layout and of the stamp; bump it to force every existing sample set to be rebuilt."""

DEBIAN_ROOT_ENV = "MEDSSL_DEBIAN_ROOT"
"""Environment variable: root under which Debian data packages are found (default ``/``; for ``dpkg -x`` trees)."""

SAMPLES_ENV = "MEDSSL_SAMPLES"
PROVENANCE = "provenance.json"
MAX_SIDE_2D = 1024
NIFTI_GZIP_LEVEL = 6

DATALISTS = {
    "pretrain_3d": "datalist_pretrain_3d.json",
    "seg_3d": "datalist_seg_3d.json",
    "pretrain_2d": "datalist_pretrain_2d.json",
    "mixed": "datalist_mixed.json",
    "cls_2d": "datalist_cls_2d.json",
    "dicom": "datalist_dicom.json",
}
"""Datalist file names, by role."""

MODALITY_CLASSES = ("CT", "MR", "XR")
"""Class index of each modality in ``datalist_cls_2d.json`` (a real, if easy, image classification task)."""


class SourceMissingError(RuntimeError):
    """A data source is not installed; carries the reason and the command that installs it."""

    def __init__(self, source: str, why: str, install: str) -> None:
        super().__init__(f"{source}: {why}")
        self.source = source
        self.why = why
        self.install = install


@dataclass(frozen=True)
class Source:
    """A package that ships data files."""

    name: str
    kind: str  # "pypi" or "debian"
    install: str
    licence: str
    url: str
    data_dir: str  # PyPI: module/sub/folder inside site-packages; Debian: the package's absolute install folder
    dist: str = ""  # PyPI distribution name, for the version


def _debian_install(pkg: str) -> str:
    return (
        f"sudo apt-get install --no-install-recommends {pkg}  (without root: apt-get download {pkg} && "
        f"dpkg -x {pkg}_*.deb DIR, then --debian-root DIR)"
    )


SOURCES: dict[str, Source] = {
    "invesalius-examples": Source(
        "invesalius-examples",
        "debian",
        _debian_install("invesalius-examples"),
        "GPL-2 (Debian copyright file of invesalius-examples); example study 'ProMED CT 0051' of InVesalius, "
        "CTI Renato Archer. Do not commit derived files to a non-GPL repository.",
        "https://packages.debian.org/invesalius-examples",
        "/usr/share/doc/invesalius-examples/examples",
    ),
    "mricron-data": Source(
        "mricron-data",
        "debian",
        _debian_install("mricron-data"),
        "BSD-3-Clause (Debian copyright file of mricron-data). Upstream atlas terms ask for citation: Colin27 "
        "(Holmes et al., J Comput Assist Tomogr 1998;22:324-333) and AAL (Tzourio-Mazoyer et al., NeuroImage "
        "2002;15:273-289).",
        "https://packages.debian.org/mricron-data",
        "/usr/share/mricron/templates",
    ),
    "nilearn": Source(
        "nilearn",
        "pypi",
        "pip install --no-deps nilearn==0.14.1",
        "BSD-3-Clause (nilearn). MNI ICBM152 2009a template: permissive licence of the McConnell Brain Imaging "
        "Centre, copyright notice and attribution required (Fonov et al., NeuroImage 2011;54:313-327 and "
        "NeuroImage 2009;47:S102).",
        "https://pypi.org/project/nilearn/",
        "nilearn/datasets/data",
        dist="nilearn",
    ),
    "pydicom-data": Source(
        "pydicom-data",
        "pypi",
        "pip install --no-deps pydicom-data==1.0.0",
        "MIT (pydicom-data); images are public DICOM samples, see the origin of each file.",
        "https://pypi.org/project/pydicom-data/",
        "data_store/data",
        dist="pydicom-data",
    ),
    "pydicom": Source(
        "pydicom",
        "pypi",
        "pip install pydicom",
        "MIT (pydicom); test files are public DICOM samples, see the origin of each file.",
        "https://pypi.org/project/pydicom/",
        "pydicom/data/test_files",
        dist="pydicom",
    ),
}
"""Known data sources, by name."""


# ----------------------------------------------------------------------------------------------------------------
# locating sources (without importing the packages: `import nilearn` needs dependencies that are not installed)


def _debian_root() -> Path:
    return Path(os.environ.get(DEBIAN_ROOT_ENV) or "/")


def _pypi_data(source: str) -> Path:
    module, _, subdir = SOURCES[source].data_dir.partition("/")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise SourceMissingError(source, f"Python package {source} is not installed", SOURCES[source].install)
    root = Path(spec.origin).parent / subdir
    if not root.is_dir():
        raise SourceMissingError(source, f"{source} is installed but has no {subdir}/ folder", SOURCES[source].install)
    return root


def _debian_data(source: str) -> Path:
    root = _debian_root() / SOURCES[source].data_dir.lstrip("/")
    if not root.is_dir():
        why = f"Debian package {source} is not installed ({root} not found"
        why += ")" if shutil.which("apt-get") else "; apt-get is not available on this system)"
        raise SourceMissingError(source, why, SOURCES[source].install)
    return root


def locate_invesalius() -> Path:
    """Folder holding ``Cranium.inv3``."""
    return _debian_data("invesalius-examples")


def locate_mricron() -> Path:
    """Folder holding the MRIcron templates (``ch2.nii.gz``, ``aal.nii.gz`` ...)."""
    return _debian_data("mricron-data")


def locate_nilearn() -> Path:
    """``nilearn/datasets/data`` inside the installed package (found without importing nilearn)."""
    return _pypi_data("nilearn")


def locate_pydicom_data() -> Path:
    """``data_store/data`` inside the installed ``pydicom-data`` package."""
    return _pypi_data("pydicom-data")


def locate_pydicom() -> Path:
    """``pydicom/data/test_files`` inside the installed package."""
    return _pypi_data("pydicom")


LOCATORS: dict[str, Callable[[], Path]] = {
    "invesalius-examples": locate_invesalius,
    "mricron-data": locate_mricron,
    "nilearn": locate_nilearn,
    "pydicom-data": locate_pydicom_data,
    "pydicom": locate_pydicom,
}
"""Source name -> function returning its data folder or raising :class:`SourceMissingError` (tests patch this)."""


def source_version(name: str) -> str:
    """Installed version of a source package: ``importlib.metadata`` for PyPI, ``dpkg-query`` for Debian."""
    src = SOURCES[name]
    if src.kind == "pypi":
        try:
            return importlib.metadata.version(src.dist)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"
    root = _debian_root()
    if root == Path("/") and shutil.which("dpkg-query"):
        try:
            res = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True, timeout=20, check=False
            )
            if res.returncode == 0 and res.stdout.strip():
                return res.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    changelog = root / "usr/share/doc" / name / "changelog.Debian.gz"
    try:
        with gzip.open(changelog, "rt", encoding="utf-8", errors="replace") as f:
            m = re.search(r"\(([^)]+)\)", f.readline())
        return m.group(1) if m else "unknown"
    except OSError:
        return "unknown"


# ----------------------------------------------------------------------------------------------------------------
# writing


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    _atomic_write(path, data)
    return True


def _nifti_bytes(img: nib.Nifti1Image) -> bytes:
    """Gzipped NIfTI bytes with a zero gzip timestamp, so that identical inputs give identical files."""
    return gzip.compress(img.to_bytes(), compresslevel=NIFTI_GZIP_LEVEL, mtime=0)


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


@dataclass
class Written:
    """One file produced by a builder: its bytes and its description."""

    path: str
    data: bytes
    processing: str
    shape: list[int] | None = None
    spacing: list[float] | None = None
    dtype: str | None = None
    src: list[Path] = field(default_factory=list)  # the input files it was made from (default: all inputs)


def _nifti_meta(img: nib.Nifti1Image) -> dict[str, Any]:
    zooms = img.header.get_zooms()[:3]
    return {
        "shape": [int(s) for s in img.shape],
        "spacing": [round(float(z), 6) for z in zooms],
        "dtype": str(img.get_data_dtype()),
    }


# ----------------------------------------------------------------------------------------------------------------
# builders: input paths -> written files


def _build_head_ct(inputs: list[Path]) -> list[Written]:
    """Convert InVesalius' ``Cranium.inv3`` (gzip tar: main.plist + raw int16 (z, y, x) + masks) to NIfTI."""
    members: dict[str, bytes] = {}
    with tarfile.open(inputs[0], "r:gz") as tar:
        for m in tar:
            name = os.path.basename(m.name)
            if m.isfile() and (name.endswith(".plist") or name in ("matrix.dat",) or name.startswith("mask_")):
                f = tar.extractfile(m)
                if f is not None:
                    members[name] = f.read()
    main = plistlib.loads(members["main.plist"])
    mat = main["matrix"]
    shape = tuple(int(s) for s in mat["shape"])  # (z, y, x)
    dtype = np.dtype(mat["dtype"]).newbyteorder("<")
    vol = np.frombuffer(members[os.path.basename(mat["filename"])], dtype=dtype).reshape(shape)
    spacing = [float(s) for s in main["spacing"]]  # (x, y, z)

    # InVesalius keeps (z, y, x) with rows flipped to VTK's bottom-up order: +y runs anterior (checked on the
    # frontal sinus and the head rest), +z superior (skull base in the first slices) and +x towards the patient's
    # left as in DICOM (not checkable from the anatomy). Reorder to (x, y, z) and flip x: a plain RAS grid.
    def to_ras(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.transpose(2, 1, 0)[::-1])

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(vol.shape[::-1]) - 1) / 2 * np.asarray(spacing)  # centre the volume on 0

    def nifti(data: np.ndarray, descrip: str) -> nib.Nifti1Image:
        img = nib.Nifti1Image(data, affine)
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        img.header["descrip"] = descrip[:79].encode()
        return img

    ct = nifti(to_ras(vol).astype(np.int16), f"{main.get('name', 'CT')} HU (invesalius Cranium.inv3)")
    vol_desc = (
        f"raw {mat['dtype']} {shape} (z,y,x) from {mat['filename']} in the gzip tar; transposed to (x,y,z), x "
        f"flipped to RAS (y anterior, z superior checked visually, x assumed from DICOM convention), spacing "
        f"{spacing} mm from main.plist, origin at the volume centre"
    )
    out = [Written("ct/head_ct.nii.gz", _nifti_bytes(ct), vol_desc, **_nifti_meta(ct), src=inputs[:1])]
    masks = []
    for key in main.get("masks", {}).values():
        mp = plistlib.loads(members[key])
        mshape = tuple(int(s) for s in mp["mask_shape"])
        m = np.frombuffer(members[mp["mask_file"]], dtype=np.uint8).reshape(mshape)[1:, 1:, 1:]  # row 0: flags
        masks.append((float(mp["threshold_range"][0]), mp["threshold_range"], m, mp["mask_file"]))
    if len(masks) != 2:
        raise ValueError(f"expected 2 masks in {inputs[0].name}, found {len(masks)}")
    masks.sort(key=lambda t: t[0])  # lower threshold: head, higher: bone
    for (_, rng, m, fname), what in zip(masks, ("head", "bone")):
        if m.shape != vol.shape:
            raise ValueError(f"mask {fname} shape {m.shape} does not match the volume {vol.shape}")
        img = nifti(to_ras(m > 127).astype(np.uint8), f"{what} mask, threshold {rng[0]}..{rng[1]} HU")
        desc = f"{fname} [1:,1:,1:] (drops InVesalius' flag row), 255 -> 1, same reorientation as the CT"
        desc += f"; a {what} threshold mask (HU {rng[0]}..{rng[1]}), a weak label"
        out.append(Written(f"ct/head_ct_{what}_mask.nii.gz", _nifti_bytes(img), desc, **_nifti_meta(img)))
    return out


def _copy(rel_out: str, processing: str = "byte copy") -> Callable[[list[Path]], list[Written]]:
    def build(inputs: list[Path]) -> list[Written]:
        meta: dict[str, Any] = {}
        if rel_out.endswith((".nii", ".nii.gz")):
            meta = _nifti_meta(nib.load(inputs[0]))
        return [Written(rel_out, inputs[0].read_bytes(), processing, **meta, src=inputs[:1])]

    return build


def _build_mni152(inputs: list[Path]) -> list[Written]:
    t1, gm, wm = inputs
    out = [
        _copy("mr/mni152_t1.nii.gz", "byte copy")([t1])[0],
        _copy("mr/mni152_gm.nii.gz", "byte copy (uint8 0..255 = probability 0..1)")([gm])[0],
        _copy("mr/mni152_wm.nii.gz", "byte copy (uint8 0..255 = probability 0..1)")([wm])[0],
    ]
    img = nib.load(gm)
    prob = img.get_fdata(dtype=np.float32)
    if prob.max() > 1.0 + 1e-6:
        prob /= 255.0
    lab = nib.Nifti1Image((prob > 0.5).astype(np.uint8), img.affine, img.header)
    lab.set_data_dtype(np.uint8)
    lab.header.set_slope_inter(1, 0)
    lab.header.set_xyzt_units("mm", "sec")
    desc = "grey-matter probability (uint8/255) > 0.5 -> 1, else 0; affine and grid of mni152_gm"
    out.append(Written("mr/mni152_gm_label.nii.gz", _nifti_bytes(lab), desc, **_nifti_meta(lab), src=[gm]))
    return out


def _resave(img: nib.Nifti1Image, data: np.ndarray | None = None) -> nib.Nifti1Image:
    arr = np.asanyarray(img.dataobj) if data is None else data
    new = nib.Nifti1Image(arr, img.affine, img.header)
    new.set_data_dtype(arr.dtype)
    new.header.set_xyzt_units("mm", "sec")
    return new


def _build_colin27(inputs: list[Path]) -> list[Written]:
    ch2, ch2bet, aal = (nib.load(p) for p in inputs)
    for name, img in (("ch2bet", ch2bet), ("aal", aal)):
        if img.shape != ch2.shape or not np.allclose(img.affine, ch2.affine, atol=1e-4):
            raise ValueError(f"{name} is not on the grid of ch2 ({img.shape} vs {ch2.shape})")
    keep = "re-saved with nibabel: data, affine and sform/qform kept; spatial units set to mm"
    out = []
    for rel, img, src in (
        ("mr/colin27_t1.nii.gz", ch2, inputs[0]),
        ("mr/colin27_t1_brain.nii.gz", ch2bet, inputs[1]),
        ("mr/colin27_aal.nii.gz", aal, inputs[2]),
    ):
        new = _resave(img)
        out.append(Written(rel, _nifti_bytes(new), keep, **_nifti_meta(new), src=[src]))
    labels = np.asanyarray(aal.dataobj)
    gm = _resave(aal, (labels > 0).astype(np.uint8))
    desc = "AAL label > 0 -> 1 (the 116 AAL grey-matter regions, cortical, subcortical and cerebellar); grid of ch2"
    out.append(Written("mr/colin27_gm_label.nii.gz", _nifti_bytes(gm), desc, **_nifti_meta(gm), src=[inputs[2]]))
    return out


def _pixel_spacing(ds: Any) -> list[float] | None:
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(kw)
        if v is not None and len(v) == 2 and all(float(x) > 0 for x in v):
            return [float(x) for x in v]
    return None


def _to_png(arr01: np.ndarray, spacing: list[float] | None) -> tuple[bytes, list[int], list[float] | None, str]:
    """Float image in [0, 1] -> 8-bit PNG, downsampled (Lanczos) to at most ``MAX_SIDE_2D`` on the long side."""
    from PIL import Image

    h, w = arr01.shape
    note = "full resolution"
    if max(h, w) > MAX_SIDE_2D:
        scale = MAX_SIDE_2D / max(h, w)
        nh, nw = round(h * scale), round(w * scale)
        img = Image.fromarray(arr01.astype(np.float32), mode="F").resize((nw, nh), Image.Resampling.LANCZOS)
        arr01 = np.asarray(img)
        if spacing is not None:
            spacing = [spacing[0] * h / nh, spacing[1] * w / nw]
        note = f"downsampled {h}x{w} -> {nh}x{nw} (Lanczos)"
    u8 = np.clip(np.rint(np.clip(arr01, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)
    sp = None if spacing is None else [round(s, 6) for s in spacing]
    return _png_bytes(u8), [int(s) for s in u8.shape], sp, note


def _radiograph(rel_out: str) -> Callable[[list[Path]], list[Written]]:
    """Radiograph -> PNG: VOI LUT, robust window, inversion of MONOCHROME1 (so that air and lungs are dark)."""

    def build(inputs: list[Path]) -> list[Written]:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut

        ds = pydicom.dcmread(inputs[0])
        v = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
        h, w = v.shape
        centre = v[h // 5 : h - h // 5, w // 5 : w - w // 5]
        lo, hi = float(np.percentile(v, 0.5)), float(np.percentile(centre, 99.5))
        u = np.clip((v - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        inverted = ds.PhotometricInterpretation == "MONOCHROME1"
        if inverted:
            u = 1.0 - u
        data, shape, sp, note = _to_png(u, _pixel_spacing(ds))
        desc = (
            f"{ds.Modality} {ds.PhotometricInterpretation} {ds.get('BitsStored')}-bit: modality + VOI LUT "
            f"(pydicom), window [{lo:.0f}, {hi:.0f}] (0.5th percentile of the image, 99.5th of its central 60%)"
            f"{', inverted (MONOCHROME1)' if inverted else ''}, 8-bit, {note}"
        )
        return [Written(rel_out, data, desc, shape, sp, "uint8", src=inputs[:1])]

    return build


def _first(v: Any) -> float:
    """First value of a possibly multi-valued DICOM element."""
    from pydicom.multival import MultiValue

    return float(v[0]) if isinstance(v, MultiValue | list | tuple) else float(v)


def _slice(rel_out: str, window: tuple[float, float] | None = None) -> Callable[[list[Path]], list[Written]]:
    """CT/MR slice -> PNG: rescale slope/intercept; CT: given or DICOM window (else 40/400); MR: 0.5-99.5 pct."""

    def build(inputs: list[Path]) -> list[Written]:
        import pydicom
        from pydicom.pixels import apply_modality_lut

        ds = pydicom.dcmread(inputs[0])
        a = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        if ds.Modality == "CT":
            if window is not None:
                wc, ww = window
            elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
                wc, ww = _first(ds.WindowCenter), _first(ds.WindowWidth)
            else:
                wc, ww = 40.0, 400.0
            lo, hi = wc - ww / 2, wc + ww / 2
            how = f"HU window centre {wc:g} / width {ww:g}"
        else:
            lo, hi = (float(x) for x in np.percentile(a, [0.5, 99.5]))
            how = f"0.5-99.5 percentile window [{lo:.1f}, {hi:.1f}]"
        u = np.clip((a - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        data, shape, sp, note = _to_png(u, _pixel_spacing(ds))
        desc = f"{ds.Modality} slice: rescale slope/intercept, {how}, 8-bit, {note}"
        return [Written(rel_out, data, desc, shape, sp, "uint8", src=inputs[:1])]

    return build


def _dicom_copy(rel_outs: Sequence[str]) -> Callable[[list[Path]], list[Written]]:
    def build(inputs: list[Path]) -> list[Written]:
        import pydicom

        out = []
        for p, rel in zip(inputs, rel_outs):
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            shape = [int(ds.Rows), int(ds.Columns)]
            out.append(Written(rel, p.read_bytes(), "byte copy", shape, _pixel_spacing(ds), "dicom", src=[p]))
        return out

    return build


# ----------------------------------------------------------------------------------------------------------------
# what to build


@dataclass(frozen=True)
class Product:
    """A group of output files built together from input files of one source."""

    name: str
    what: str
    source: str
    inputs: tuple[str, ...]  # relative to the source's data folder
    outputs: tuple[str, ...]  # relative to OUT
    build: Callable[[list[Path]], list[Written]]
    recipe: int = 1
    origin: str = ""  # upstream origin / attribution of the image itself


_NEMA = "NEMA WG04 compression test set (ftp://medical.nema.org/MEDICAL/Dicom/DataSets/WG04), public sample"
_CT5N = ("2062", "2392", "2693", "3023", "3353")

# 2D products, one file each: (name, what, source, input, output, CT window (centre, width) or None, origin)
_FLAT_2D = (
    ("chest_pa", "PA chest X-ray", "pydicom-data", "RG1_UNCI.dcm", "xray/chest_pa.png", None, _NEMA),
    ("leg", "leg X-ray", "pydicom-data", "RG3_UNCI.dcm", "xray/leg.png", None, _NEMA),
    # 693_UNCI's own window (40/100) shows the smoothing artefacts of this regression image: use a wide one
    ("ct_head", "head CT slice", "pydicom-data", "693_UNCI.dcm", "slices/ct_head.png", (500.0, 3000.0),
     "pydicom issue #693 regression data set (public sample)"),
    ("ct_abdomen", "abdominal CT slice", "pydicom-data", "explicit_VR-UN.dcm", "slices/ct_abdomen.png", (40.0, 400.0),
     "The Cancer Imaging Archive (de-identified, CC BY; pancreas study), J2K-compressed for pydicom issue #968"),
    ("mr_shoulder", "shoulder MR slice", "pydicom-data", "MR2_UNCI.dcm", "slices/mr_shoulder.png", None, _NEMA),
    ("mr_abdomen", "abdominal MR slice (liver lesion)", "pydicom-data", "MR-SIEMENS-DICOM-WithOverlays.dcm",
     "slices/mr_abdomen.png", None, "GDCM test data (BSD-3-Clause), via pydicom-data"),
    ("ct_small", "small CT slice (vertebra)", "pydicom", "CT_small.dcm", "slices/ct_small.png", (40.0, 400.0),
     _NEMA + " (CT1_UNC, downsized to 128x128)"),
    ("mr_small", "small MR slice", "pydicom", "MR_small.dcm", "slices/mr_small.png", None,
     _NEMA + " (MR1_UNC, downsized to 64x64)"),
)  # fmt: skip


def _flat_2d(name: str, what: str, source: str, src: str, out: str, window: Any, origin: str) -> Product:
    build = _radiograph(out) if out.startswith("xray/") else _slice(out, window)
    return Product(name, f"{what} ({out})", source, (src,), (out,), build, origin=origin)


PRODUCTS: tuple[Product, ...] = (
    Product(
        "head_ct",
        "head CT volume + head/bone masks (ct/head_ct*.nii.gz)",
        "invesalius-examples",
        ("Cranium.inv3",),
        ("ct/head_ct.nii.gz", "ct/head_ct_head_mask.nii.gz", "ct/head_ct_bone_mask.nii.gz"),
        _build_head_ct,
        origin="InVesalius example study 'ProMED CT 0051' (CTI Renato Archer, Brazil)",
    ),
    Product(
        "mni152",
        "MNI152 T1 + GM/WM maps + GM label (mr/mni152_*.nii.gz)",
        "nilearn",
        tuple(f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")),
        ("mr/mni152_t1.nii.gz", "mr/mni152_gm.nii.gz", "mr/mni152_wm.nii.gz", "mr/mni152_gm_label.nii.gz"),
        _build_mni152,
        origin="MNI ICBM152 non-linear symmetric 2009a template (McConnell Brain Imaging Centre), via nilearn",
    ),
    Product(
        "colin27",
        "Colin27 T1 + brain + AAL atlas + GM label (mr/colin27_*.nii.gz)",
        "mricron-data",
        ("ch2.nii.gz", "ch2bet.nii.gz", "aal.nii.gz"),
        ("mr/colin27_t1.nii.gz", "mr/colin27_t1_brain.nii.gz", "mr/colin27_aal.nii.gz", "mr/colin27_gm_label.nii.gz"),
        _build_colin27,
        origin="Colin27 (Holmes et al. 1998) and AAL atlas (Tzourio-Mazoyer et al. 2002), as packaged by MRIcron",
    ),
    *(_flat_2d(*row) for row in _FLAT_2D),
    Product(
        "dicom_files",
        "original DICOM files (dicom/CT_small.dcm, dicom/MR_small.dcm)",
        "pydicom",
        ("CT_small.dcm", "MR_small.dcm"),
        ("dicom/CT_small.dcm", "dicom/MR_small.dcm"),
        _dicom_copy(("dicom/CT_small.dcm", "dicom/MR_small.dcm")),
        origin=_NEMA + " (downsized)",
    ),
    Product(
        "dicom_cr",
        "original chest X-ray DICOM (dicom/RG1_UNCI.dcm)",
        "pydicom-data",
        ("RG1_UNCI.dcm",),
        ("dicom/RG1_UNCI.dcm",),
        _dicom_copy(("dicom/RG1_UNCI.dcm",)),
        origin=_NEMA,
    ),
    Product(
        "ct_series",
        "DICOM CT series (dicom/ct_series/)",
        "pydicom",
        tuple(f"dicomdirtests/98892001/CT5N/{n}" for n in _CT5N),
        tuple(f"dicom/ct_series/{n}" for n in _CT5N),
        _dicom_copy(tuple(f"dicom/ct_series/{n}" for n in _CT5N)),
        origin="pydicom DICOMDIR test series 98892001/CT5N (real headers, pixels reduced to 16x16)",
    ),
)
"""Everything the sample set can contain, in build order."""


# datalist recipes: (path, modality, dims[, label]); items whose files were not built are left out
_P3_TRAIN = [("ct/head_ct.nii.gz", "CT"), ("mr/mni152_t1.nii.gz", "MR")]
_P3_VAL = [("mr/colin27_t1.nii.gz", "MR")]
_P2_TRAIN = [
    ("xray/chest_pa.png", "XR"),
    ("slices/ct_head.png", "CT"),
    ("slices/ct_abdomen.png", "CT"),
    ("slices/mr_shoulder.png", "MR"),
    ("slices/mr_abdomen.png", "MR"),
]
_P2_VAL = [("xray/leg.png", "XR"), ("slices/ct_small.png", "CT"), ("slices/mr_small.png", "MR")]
_SEG_TRAIN = [("mr/mni152_t1.nii.gz", "mr/mni152_gm_label.nii.gz", "MR")]
_SEG_VAL = [("mr/colin27_t1.nii.gz", "mr/colin27_gm_label.nii.gz", "MR")]
_DCM_TRAIN = [("dicom/CT_small.dcm", "CT", 2), ("dicom/MR_small.dcm", "MR", 2), ("dicom/RG1_UNCI.dcm", "XR", 2)]
_DCM_VAL = [("dicom/ct_series", "CT", 3)]


def _datalists(have: set[str]) -> tuple[dict[str, dict[str, list[dict]]], list[str]]:
    """Datalist contents from the set of files present, and notes on what was left out or reused."""

    def img(items: list[tuple[str, str]], dims: int | None = None) -> list[dict]:
        out = [{"image": p, "modality": m} for p, m in items if p in have]
        if dims is not None:
            for d in out:
                d["dims"] = dims
        return out

    def labelled(items: list[dict]) -> list[dict]:
        return [dict(d, label=MODALITY_CLASSES.index(d["modality"])) for d in items]

    def series_ok(p: str) -> bool:
        return p in have or any(h.startswith(p + "/") for h in have)

    lists = {
        "pretrain_3d": {"training": img(_P3_TRAIN), "validation": img(_P3_VAL)},
        "seg_3d": {
            "training": [{"image": i, "label": lab, "modality": m} for i, lab, m in _SEG_TRAIN if {i, lab} <= have],
            "validation": [{"image": i, "label": lab, "modality": m} for i, lab, m in _SEG_VAL if {i, lab} <= have],
        },
        "pretrain_2d": {"training": img(_P2_TRAIN), "validation": img(_P2_VAL)},
        "mixed": {
            "training": img(_P3_TRAIN, 3) + img(_P2_TRAIN, 2),
            "validation": img(_P3_VAL, 3) + img(_P2_VAL, 2),
        },
        "cls_2d": {
            "training": labelled(img(_P3_TRAIN, 3) + img(_P2_TRAIN, 2)),
            "validation": labelled(img(_P3_VAL, 3) + img(_P2_VAL, 2)),
        },
        "dicom": {
            "training": [{"image": p, "modality": m, "dims": d} for p, m, d in _DCM_TRAIN if series_ok(p)],
            "validation": [{"image": p, "modality": m, "dims": d} for p, m, d in _DCM_VAL if series_ok(p)],
        },
    }
    notes = []
    for role, dl in lists.items():
        name = DATALISTS[role]
        if not dl["training"] and not dl["validation"]:
            notes.append(f"{name}: nothing to list, not written")
        elif not dl["validation"]:
            dl["validation"] = [dict(dl["training"][-1])]
            notes.append(f"{name}: validation source missing, validation reuses training item {dl['training'][-1]}")
        elif not dl["training"]:
            dl["training"] = [dict(d) for d in dl["validation"]]
            notes.append(f"{name}: training sources missing, training reuses the validation items")
    return {r: dl for r, dl in lists.items() if dl["training"]}, notes


# ----------------------------------------------------------------------------------------------------------------
# the build


@dataclass
class SamplesReport:
    """What :func:`build_samples` did."""

    out: Path
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one human-readable line per skipped product group
    failed: list[str] = field(default_factory=list)
    datalists: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0

    changed: bool = False  # a datalist, provenance.json or README.md was rewritten

    @property
    def up_to_date(self) -> bool:
        """True when nothing had to be built or rewritten."""
        return not self.built and not self.changed

    @property
    def ok(self) -> bool:
        """True when at least one file is available."""
        return bool(self.files)


def samples_dir(default: str | os.PathLike = "data/samples") -> Path:
    """Folder of the sample set: ``$MEDSSL_SAMPLES`` if set, else ``default``."""
    return Path(os.environ.get(SAMPLES_ENV) or default)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load_provenance(out: Path) -> dict:
    try:
        prov = json.loads((out / PROVENANCE).read_text())
    except (OSError, ValueError):
        return {}
    return prov if prov.get("format_version") == FORMAT_VERSION else {}


def _intact(out: Path, rels: Sequence[str], prev: dict, product: Product) -> bool:
    for rel in rels:
        e = prev.get(rel)
        if not e or e.get("product") != product.name or e.get("recipe") != product.recipe:
            return False
        p = out / rel
        if not p.is_file() or p.stat().st_size != e.get("bytes"):
            return False
    return True


def _clean_tmp(out: Path) -> None:
    """Remove temporary files left by an interrupted run."""
    if out.is_dir():
        for p in out.rglob(".*.tmp"):
            p.unlink(missing_ok=True)


def build_samples(
    out: str | os.PathLike,
    force: bool = False,
    debian_root: str | os.PathLike | None = None,
    echo: Callable[[str], None] | None = print,
) -> SamplesReport:
    """Build (or bring up to date) the sample set in ``out``; see the module docstring for the layout.

    Args:
        out: output folder, created if needed.
        force: rebuild every file even if the stamp says it is up to date. Without it, files of an earlier build
            whose source is now missing (or fails) are kept; with it they are removed, so that the folder matches
            the new provenance.
        debian_root: root under which Debian data packages are looked up (default ``$MEDSSL_DEBIAN_ROOT`` or ``/``).
        echo: where progress lines go (``None``: silent).

    Returns:
        a :class:`SamplesReport`; ``report.ok`` is False when nothing at all could be built.
    """
    say = echo or (lambda _msg: None)
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clean_tmp(out)
    report = SamplesReport(out=out)
    old_env = os.environ.get(DEBIAN_ROOT_ENV)
    if debian_root is not None:
        os.environ[DEBIAN_ROOT_ENV] = str(debian_root)
    try:
        located: dict[str, Path | SourceMissingError] = {}
        versions: dict[str, str] = {}
        for name in SOURCES:
            try:
                located[name] = LOCATORS[name]()
                versions[name] = source_version(name)
            except SourceMissingError as e:
                located[name] = e
    finally:
        if debian_root is not None:
            if old_env is None:
                os.environ.pop(DEBIAN_ROOT_ENV, None)
            else:
                os.environ[DEBIAN_ROOT_ENV] = old_env

    prev_prov = {} if force else _load_provenance(out)
    prev = prev_prov.get("files", {})
    files: dict[str, dict] = {}
    skipped_by_source: dict[str, list[Product]] = {}
    for prod in PRODUCTS:
        src = SOURCES[prod.source]
        root = located[prod.source]
        if isinstance(root, SourceMissingError):
            if not force and _intact(out, prod.outputs, prev, prod):
                files.update({rel: prev[rel] for rel in prod.outputs})
                report.kept.extend(prod.outputs)
                continue
            skipped_by_source.setdefault(prod.source, []).append(prod)
            continue
        version = versions[prod.source]
        if _intact(out, prod.outputs, prev, prod) and all(
            prev[r]["source"]["version"] == version for r in prod.outputs
        ):
            files.update({rel: prev[rel] for rel in prod.outputs})
            report.reused.extend(prod.outputs)
            continue
        inputs = [root / rel for rel in prod.inputs]
        t = time.perf_counter()
        try:
            missing = [str(p) for p in inputs if not p.exists()]
            if missing:
                raise FileNotFoundError(f"{prod.source} {version} has no {', '.join(missing)}")
            written = prod.build(inputs)
        except Exception as e:  # a missing file, decoder or format problem must not stop the other products
            report.failed.append(f"{prod.what} ({type(e).__name__}: {e})")
            if not force and _intact(out, prod.outputs, prev, prod):
                files.update({rel: prev[rel] for rel in prod.outputs})
                report.kept.extend(prod.outputs)
            continue
        for w in written:
            _atomic_write(out / w.path, w.data)
            files[w.path] = {
                "product": prod.name,
                "recipe": prod.recipe,
                "source": {
                    "package": src.name,
                    "kind": src.kind,
                    "version": version,
                    "path_in_package": _path_in_package(w.src or inputs, prod.source, root),
                },
                "origin": prod.origin,
                "licence": src.licence,
                "processing": w.processing,
                "shape": w.shape,
                "spacing": w.spacing,
                "dtype": w.dtype,
                "bytes": len(w.data),
                "sha256": _sha256(w.data),
            }
            report.built.append(w.path)
        say(f"built: {prod.what} in {time.perf_counter() - t:.1f} s")

    for name, prods in skipped_by_source.items():
        err = located[name]
        assert isinstance(err, SourceMissingError)
        what = "; ".join(p.what for p in prods)
        report.skipped.append(f"{what} ({err.why}, install with: {err.install})")
    for prod in PRODUCTS:  # outputs not (or no longer) backed by the provenance: stale or partial, remove them
        for rel in prod.outputs:
            if rel not in files:
                (out / rel).unlink(missing_ok=True)

    # datalists, provenance, README: rewritten only when their content changes
    have = set(files)
    lists, notes = _datalists(have)
    report.notes = notes
    for role, name in DATALISTS.items():
        path = out / name
        if role in lists:
            changed = _write_if_changed(path, (json.dumps(lists[role], indent=2) + "\n").encode())
            report.changed |= changed
            report.datalists.append(name)
        elif path.exists():
            path.unlink()
            report.changed = True

    prov = {
        "format_version": FORMAT_VERSION,
        "generator": "python -m medssl.data samples (medssl.data.samples)",
        "sources": {name: _source_entry(name, loc, versions) for name, loc in located.items()},
        "skipped": report.skipped + report.failed,
        "datalists": {DATALISTS[r]: {k: len(v) for k, v in dl.items()} for r, dl in lists.items()},
        "datalist_notes": notes,
        "files": dict(sorted(files.items())),
    }
    report.changed |= _write_if_changed(out / PROVENANCE, (json.dumps(prov, indent=2) + "\n").encode())
    report.changed |= _write_if_changed(out / "README.md", _readme(prov, lists).encode())
    report.files = prov["files"]
    report.seconds = time.perf_counter() - t0
    return report


def _source_entry(name: str, loc: Path | SourceMissingError, versions: dict[str, str]) -> dict[str, Any]:
    if isinstance(loc, SourceMissingError):
        return {"available": False, "why": loc.why, "install": loc.install}
    src = SOURCES[name]
    return {"available": True, "kind": src.kind, "version": versions[name], "url": src.url}


def _path_in_package(src: Sequence[Path], source: str, root: Path) -> str:
    """Input path(s) of a written file, under the source's data folder as the package installs it."""
    parts = []
    for p in src:
        try:
            parts.append(f"{SOURCES[source].data_dir}/{p.relative_to(root).as_posix()}")
        except ValueError:
            parts.append(p.name)
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# human output


def _fmt_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _fmt_list(v: list | None, sep: str = "x") -> str:
    if not v:
        return "-"
    return sep.join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v)


def summary_table(files: dict[str, dict]) -> str:
    """File | shape | spacing | dtype | source, one row per file."""
    rows = [
        [
            rel,
            _fmt_list(e.get("shape")),
            _fmt_list(e.get("spacing")),
            str(e.get("dtype") or "-"),
            f"{e['source']['package']} {e['source']['version']}",
        ]
        for rel, e in sorted(files.items())
    ]
    return _fmt_table(rows, ["file", "shape", "spacing (mm)", "dtype", "source"])


def _readme(prov: dict, lists: dict[str, dict[str, list[dict]]]) -> str:
    lines = [
        "# medssl sample data",
        "",
        "Built offline by `python -m medssl.data samples` from files shipped in installed packages; do not edit.",
        "Re-running is a no-op when everything is up to date; `--force` rebuilds. Machine-readable details, with",
        "the sha256 of every file: `provenance.json`.",
        "",
        "PNG shapes are rows x columns; MONAI's PILReader returns PNGs transposed, as (width, height). All PNG files",
        "are display-windowed 8-bit images; only `ct/head_ct.nii.gz` carries Hounsfield units.",
        "",
        "## Files",
        "",
        "| file | shape | spacing (mm) | dtype | source | processing |",
        "|---|---|---|---|---|---|",
    ]
    for rel, e in prov["files"].items():
        src = f"{e['source']['package']} {e['source']['version']}: `{e['source']['path_in_package']}`"
        lines.append(
            f"| `{rel}` | {_fmt_list(e.get('shape'))} | {_fmt_list(e.get('spacing'))} | {e.get('dtype') or '-'} "
            f"| {src} | {e['processing']} |"
        )
    lines += ["", "## Datalists (MSD style, paths relative to this folder)", ""]
    for role, dl in lists.items():
        items = ", ".join(f"`{d['image']}`" for d in dl["training"])
        val = ", ".join(f"`{d['image']}`" for d in dl["validation"])
        lines.append(f"* `{DATALISTS[role]}`: training {items}; validation {val}")
    for n in prov["datalist_notes"]:
        lines.append(f"* note: {n}")
    lines += ["", "## Sources and licences", ""]
    origins: dict[str, set[str]] = {}
    for e in prov["files"].values():
        origins.setdefault(e["source"]["package"], set()).add(e["origin"])
    for name, s in prov["sources"].items():
        if s["available"]:
            lines.append(f"* **{name}** {s['version']} ({s['kind']}, {s['url']}): {SOURCES[name].licence}")
            lines += [f"  * origin: {o}" for o in sorted(origins.get(name, ())) if o]
        else:
            lines.append(f"* **{name}**: not available ({s['why']}); install with: `{s['install']}`")
    if prov["skipped"]:
        lines += ["", "## Skipped", ""] + [f"* {s}" for s in prov["skipped"]]
    return "\n".join(lines) + "\n"


def print_report(report: SamplesReport, echo: Callable[[str], None] = print) -> None:
    """Print the summary of a build: the table of files (unless nothing changed) and what was skipped."""
    n = len(report.files)
    if report.up_to_date:
        echo(f"nothing to do: {n} files up to date in {report.out} (use --force to rebuild)")
    else:
        echo(summary_table(report.files))
        echo(
            f"{len(report.built)} files built, {len(report.reused)} up to date, {len(report.kept)} kept from an "
            f"earlier build, {n} in total, in {report.out} ({report.seconds:.1f} s)"
        )
        echo(f"datalists: {', '.join(report.datalists) or 'none'}")
    if report.kept:
        echo(f"kept from an earlier build, their source is missing now: {', '.join(report.kept)}")
    for line in report.skipped + report.failed:
        echo(f"skipped: {line}")
    for note in report.notes:
        echo(f"warning: {note}")
