"""Sample data and input checks for the medssl bundles.

* ``python -m medssl.data samples --out data/samples``: :func:`build_samples`, a small real dataset built offline
  from installed data packages (layout in :mod:`medssl.data.samples`).
* ``python -m medssl.data check DATALIST``: :func:`check_datalist` / :func:`assert_datalist_ok`, input validation
  before training; :func:`load_datalist` reads one section with absolute paths.

Importing this package is light: MONAI is imported only when a check runs, and the sample kit (a long module
bundles never need, so ``make dist`` does not vendor it) only when one of its names is used.
"""

import importlib

from .check import DataCheckError, Problem, assert_datalist_ok, check_datalist, format_problems, load_datalist
from .robust import BadSampleReporter, RobustDataset, SkipBadSamplesDataset  # noqa: F401  (exported for bundle configs)

_SAMPLE_KIT = {"DATALISTS", "SamplesReport", "SourceMissingError", "build_samples", "samples_dir"}


def __getattr__(name: str):
    if name in _SAMPLE_KIT:
        return getattr(importlib.import_module(f"{__name__}.samples"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATALISTS",
    "DataCheckError",
    "Problem",
    "SamplesReport",
    "SourceMissingError",
    "assert_datalist_ok",
    "build_samples",
    "check_datalist",
    "format_problems",
    "load_datalist",
    "samples_dir",
]
