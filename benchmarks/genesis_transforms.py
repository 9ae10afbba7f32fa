"""Throughput of the Models Genesis corruption: (input, target) pairs per second, in one process on one thread.

Ours is the ``corruption`` of ``bundles/models_genesis/configs/pretrain.json``, built from the config itself
(``GenesisPaird``: flip -> copy to target -> local shuffle -> Bézier curve -> in-/out-painting), on torch tensors,
as the config feeds it, and on numpy arrays.
The official numpy implementation (``generate_pair`` in ModelsGenesis ``pytorch/utils.py``) is not part of this
repository; pass its folder with ``--official-path`` to time it on the same cube, otherwise the reference rate measured
on the development machine is printed instead. The two are timed one after the other here: for a ratio that holds on a
shared machine use ``benchmarks/official_side_by_side.py`` (interleaved rounds, ``make bench``).

    python benchmarks/genesis_transforms.py --samples data/samples --official-path /path/to/ModelsGenesis/pytorch
"""

# ruff: noqa: E402
import os

# One thread: the BLAS and OpenMP pools read these when numpy and torch are first imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import importlib.util
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bundles" / "models_genesis"))

from scripts.transforms import (
    RandBezierIntensity,
    RandInPainting,
    RandLocalPixelShuffle,
    RandOutPainting,
    RandRepeatedFlip,
)

CH2 = Path("/usr/share/mricron/templates/ch2.nii.gz")
#: The official pipeline on this project's development machine (2 shared cores), 64x64x32 cube of ch2.
REFERENCE_OFFICIAL_RATE = 23.0
#: Official probabilities (ModelsGenesis pytorch/config.py); save_samples=None keeps generate_pair from writing files.
OFFICIAL_CONFIG = SimpleNamespace(
    flip_rate=0.4, local_rate=0.5, nonlinear_rate=0.9, paint_rate=0.9, inpaint_rate=0.2, save_samples=None
)


def load_cube(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    """A (1, *size) float32 cube in [0, 1] from the centre of a real volume, or uniform noise if none is found."""
    candidates = [args.image] if args.image else []
    if args.samples:
        candidates.append(args.samples / "mr" / "colin27_t1.nii.gz")  # the sample set's copy of ch2
    candidates.append(CH2)
    size = np.array(args.size)
    for path in candidates:
        if not path.is_file():
            continue
        volume = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        if volume.ndim != 3 or np.any(np.array(volume.shape) < size):
            continue
        volume = (volume - volume.min()) / max(float(volume.max() - volume.min()), 1e-6)
        start = (np.array(volume.shape) - size) // 2
        cube = volume[tuple(slice(s, s + n) for s, n in zip(start, size))]
        return np.ascontiguousarray(cube[None]), f"centre cube of {path.name}, scaled to [0, 1]"
    return np.random.default_rng(args.seed).random((1, *args.size), dtype=np.float32), "uniform noise (no volume found)"


PRETRAIN_CONFIG = ROOT / "bundles" / "models_genesis" / "configs" / "pretrain.json"


def config_chain(seed: int) -> Compose:
    """``pretrain.json``'s ``corruption`` (its default keys), composed and seeded: what pre-training applies."""
    parser = ConfigParser()
    parser.read_config(PRETRAIN_CONFIG)
    return Compose(parser.get_parsed_content("corruption")).set_random_state(seed)


def rate(make_pair, n: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        make_pair()
    start = time.perf_counter()
    for _ in range(n):
        make_pair()
    return n / (time.perf_counter() - start)


def time_ours(cube: np.ndarray, args: argparse.Namespace) -> float:
    chain = config_chain(args.seed)
    tensor = torch.as_tensor(cube)
    ours = rate(lambda: chain({"image": tensor}), args.n)
    print(f"ours, config corruption, torch tensors: {ours:7.1f} pairs/s ({1e3 / ours:.2f} ms/pair, {args.n} pairs)")
    numpy_rate = rate(lambda: chain({"image": cube}), args.n)
    print(f"ours, config corruption, numpy arrays: {numpy_rate:7.1f} pairs/s")
    stages = {
        "local shuffle": RandLocalPixelShuffle(1.0),
        "Bézier curve": RandBezierIntensity(1.0),
        "in-painting": RandInPainting(1.0),
        "out-painting": RandOutPainting(1.0),
        "flip": RandRepeatedFlip(1.0),
    }
    timings = []
    for name, transform in stages.items():
        transform.set_random_state(args.seed)
        timings.append(f"{name} {1e3 / rate(lambda t=transform: t(cube), max(args.n // 5, 10)):.2f}")
    print("  ms per call when applied: " + ", ".join(timings))
    return ours


def load_official(folder: Path):
    spec = importlib.util.spec_from_file_location("models_genesis_official_utils", folder / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_official(cube: np.ndarray, args: argparse.Namespace) -> float:
    official = load_official(args.official_path)
    random.seed(args.seed)
    np.random.seed(args.seed)
    batch = cube[None].astype(np.float64)  # (1, 1, *size): the official cubes are float64
    pairs = official.generate_pair(batch, 1, OFFICIAL_CONFIG)
    result = rate(lambda: next(pairs), args.n_official, warmup=2)
    print(f"official generate_pair:                {result:7.1f} pairs/s ({args.n_official} pairs)")
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="pairs timed for our pipeline")
    parser.add_argument("--n-official", type=int, default=60, help="pairs timed for the official pipeline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=Path, help="sample data folder (uses its mr/colin27_t1.nii.gz)")
    parser.add_argument("--image", type=Path, help="a 3D NIfTI volume to cut the cube from")
    parser.add_argument("--size", type=int, nargs=3, default=[64, 64, 32], help="cube size")
    parser.add_argument("--official-path", type=Path, help="folder holding the official ModelsGenesis utils.py")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    cube, source = load_cube(args)
    print(f"cube {'x'.join(map(str, args.size))}: {source}")
    ours = time_ours(cube, args)
    if args.official_path and (args.official_path / "utils.py").is_file():
        official = time_official(cube, args)
    else:
        official = REFERENCE_OFFICIAL_RATE
        print(f"official comparison skipped (no utils.py in --official-path); reference rate {official:.0f} pairs/s")
    print(f"speed-up: {ours / official:.1f}x (target: at least 20x)")


if __name__ == "__main__":
    main()
