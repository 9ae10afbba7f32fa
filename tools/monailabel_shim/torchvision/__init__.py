"""Stand-in for ``torchvision`` in the MONAI Label side environment (``make monailabel-env``), never in the project.

monailabel 0.8.5 imports ``torchvision.utils.make_grid`` and ``save_image`` at the top of
``monailabel/transform/post.py``, which every bundle task imports; they serve only the 2D debugging transform
``DumpImagePrediction2Dd``. No torchvision wheel on PyPI works with the CPU build of torch 2.13.0: PyPI's
torchvision 0.28.0 is compiled against the CUDA build and fails at import (``operator torchvision::nms does not
exist``), and its CPU build lives on download.pytorch.org only. This package lets the import succeed; its version is
below every minimum MONAI asks for, so ``monai.utils.optional_import("torchvision", ...)`` still reports torchvision
as missing, and the two functions raise if anything calls them.
"""

__version__ = "0.0.0"
