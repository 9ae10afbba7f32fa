"""The bundles as MONAI Label models: a real ``monailabel start_server`` with the ``monaibundle`` app.

MONAI Label runs in its own environment (``make monailabel-env``: monailabel 0.8.5, monai 1.6.1, torch linked from
this environment; see ``tools/monailabel-requirements.txt``). The bundle reaches the app as a user's would: exported
by ``make dist`` and fetched into ``<app>/model/<name>`` with ``python -m monai.bundle download`` and
``download_large_files``. The studies are the 3D segmentation sample volumes and their labels, resampled to 4 mm so
that CPU inference and one training epoch take seconds. The test calls ``/info``, ``/infer`` (label volume: shape,
affine, label names from ``metadata.json``), ``/train`` (one epoch on the studies' labels) and ``/infer`` again,
which must reload the new weights; every request has a timeout and the server is always stopped. A classification
bundle (Medformer) is served under a model folder name containing ``classification`` (how the app picks MONAI
Label's classification writer) on 2D PNG studies, and ``/infer`` must return one score per class.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from nibabel.processing import resample_to_output

from bundle_env import activate_bundle
from medssl.bundle import find_bundles, read_metadata
from medssl.bundle.dist import build_bundle
from medssl.data import load_datalist
from medssl.runner import copy_bundle

ROOT = Path(__file__).resolve().parents[1]
ML_ENV = Path(sys.prefix) / "envs" / "monailabel-0.8.5"
STUDY_SPACING = 4.0
START_TIMEOUT = 600  # deadlines against a hang only: a loaded machine may take minutes
INFER_TIMEOUT = 600
TRAIN_TIMEOUT = 1200


PLANNED = [b for b in find_bundles(ROOT) if (ROOT / "tests" / "plans" / f"{b.name}.json").is_file()]


def _is_classification(bundle: Path) -> bool:
    """``inference.json`` predicts class scores."""
    return next(iter(read_metadata(bundle)["network_data_format"]["outputs"].values())).get("format") == "classes"


def _is_segmentation(bundle: Path) -> bool:
    """``inference.json`` predicts a label map and there is a ``train.json`` for MONAI Label's trainer."""
    pred = next(iter(read_metadata(bundle)["network_data_format"]["outputs"].values()))
    return pred.get("format") == "segmentation" and (bundle / "configs" / "train.json").is_file()


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (ML_ENV / ".side_venv.json").is_file(),
        reason=f"MONAI Label's environment {ML_ENV} is missing: run `make monailabel-env` (1.5-2.5 min, 2.5 GB)",
    ),
]


def expected_labels(meta: dict) -> dict[str, int]:
    """What MONAI Label shows: ``channel_def`` of the first output without background, names lower-cased."""
    pred = next(iter(meta["network_data_format"]["outputs"].values()))
    return {v.lower(): int(k) for k, v in pred["channel_def"].items() if v.lower() != "background"}


def make_studies(samples_dir: Path, out: Path, spatial_dims: int) -> list[str]:
    """The 3D segmentation samples and their labels as a MONAI Label studies folder (for a 2D bundle: the middle
    axial slice of each, as 2D NIfTI); returns the image ids."""
    (out / "labels" / "final").mkdir(parents=True)
    ids = []
    datalist = samples_dir / "datalist_seg_3d.json"
    for item in load_datalist(datalist, "training") + load_datalist(datalist, "validation"):
        study = Path(item["image"]).name.split(".")[0]
        for key, folder, order in (("image", out, 1), ("label", out / "labels" / "final", 0)):
            img = resample_to_output(nib.load(item[key]), voxel_sizes=[STUDY_SPACING] * 3, order=order)
            data = np.asarray(img.dataobj)
            data = (data > 0).astype(np.uint8) if key == "label" else data.astype(np.float32)
            if spatial_dims == 2:
                data = data[:, :, data.shape[2] // 2]
            nib.save(nib.Nifti1Image(data, img.affine), folder / f"{study}.nii.gz")
        ids.append(study)
    return ids


def make_image_studies(samples_dir: Path, out: Path) -> list[str]:
    """The real 2D sample images (CT/MR slices, radiographs; PNG) as a MONAI Label studies folder; the image ids."""
    out.mkdir(parents=True)
    images = sorted((samples_dir / "slices").glob("*.png")) + sorted((samples_dir / "xray").glob("*.png"))
    for image in images:
        shutil.copy(image, out / image.name)
    return [image.stem for image in images]


def ml_python(args: list[str], cwd: Path) -> str:
    """Run ``python args...`` in MONAI Label's environment and return its output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(ML_ENV / "bin" / "python"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{args}:\n{(proc.stdout + proc.stderr)[-3000:]}"
    return proc.stdout


def test_environment_has_the_bundles_pins(tmp_path):
    """MONAI Label's environment holds the versions every bundle's metadata.json pins."""
    pins = {}
    for bundle in PLANNED:
        meta = read_metadata(bundle)
        pins.update({"monai": meta["monai_version"], "numpy": meta["numpy_version"], "torch": meta["pytorch_version"]})
        pins.update(meta.get("required_packages_version", {}))
    code = (
        "import importlib.metadata as m, json, re, sys\n"
        "key = lambda n: re.sub(r'[-_.]+', '-', n).lower()\n"
        "found = {key(d.metadata['Name']): d.version for d in m.distributions()}\n"
        "print(json.dumps({n: found.get(key(n), 'missing') for n in sys.argv[1:]}))"
    )
    installed = json.loads(ml_python(["-c", code, *pins], tmp_path).splitlines()[-1])
    wrong = {n: (v, installed[n]) for n, v in pins.items() if installed[n].split("+")[0] != v}
    assert wrong == {}, f"(pinned, installed) differ; update tools/monailabel-requirements.txt: {wrong}"


def install_bundle(name: str, tmp_path: Path, model: str) -> Path:
    """Export a copy of the bundle (with seeded weights) and download it into ``app/model/<model>`` as a user
    would (``model``: the model folder name, which MONAI Label serves the bundle under)."""
    source = copy_bundle(ROOT / "bundles" / name, tmp_path / "src")
    activate_bundle(source)
    parser = ConfigParser()
    parser.read_config(str(source / "configs" / "inference.json"))
    parser["bundle_root"] = str(source)
    torch.manual_seed(0)
    (source / "models").mkdir(exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), source / "models" / "model.pt")
    dist = build_bundle(source, tmp_path / "dist")
    app = tmp_path / "app"
    shutil.copytree(ML_ENV / "monailabel" / "sample-apps" / "monaibundle", app)
    model_dir = app / "model"
    model_dir.mkdir()
    ml_python(["-m", "monai.bundle", "download", "--name", name, "--url", dist.source, "--bundle_dir", "."], model_dir)
    (model_dir / f"{name}.zip").unlink()
    if dist.large_files:
        ml_python(["-m", "monai.bundle", "download_large_files", "--bundle_path", name], model_dir)
    if model != name:
        (model_dir / name).rename(model_dir / model)
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running ``monailabel start_server`` and bounded requests to it."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def request(self, method: str, path: str, timeout: float, body: bytes | None = None, headers=None):
        """``(status, content type, body)`` of one request; the server must still be running."""
        assert self.proc.poll() is None, f"the server exited ({self.proc.returncode}):\n{self.log_tail()}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read()

    def json(self, method: str, path: str, timeout: float, payload: dict | None = None):
        body = json.dumps(payload).encode() if payload is not None else None
        status, _, data = self.request(method, path, timeout, body, {"Content-Type": "application/json"})
        assert status == 200, f"{method} {path}: HTTP {status} {data[:500]!r}\n{self.log_tail()}"
        return json.loads(data)

    def infer(self, model: str, image: str, out: Path) -> dict:
        """``POST /infer/<model>?image=<id>&output=all``: save the label volume to ``out``, return the result JSON."""
        query = urllib.parse.urlencode({"image": image, "output": "all"})
        form = urllib.parse.urlencode({"params": json.dumps({"device": "cpu"})}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        status, ctype, data = self.request("POST", f"/infer/{model}?{query}", INFER_TIMEOUT, form, headers)
        assert status == 200, f"/infer: HTTP {status} {data[:500]!r}\n{self.log_tail()}"
        message = email.parser.BytesParser().parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + data)
        parts = {part.get_param("name", header="content-disposition"): part for part in message.get_payload()}
        out.write_bytes(parts["image"].get_payload(decode=True))
        return json.loads(parts["params"].get_payload(decode=True))


@pytest.fixture
def server_for(tmp_path, samples_dir) -> Iterator:
    """``server_for(name, model)`` starts MONAI Label with that bundle as ``model`` (default: its name) on a free
    port of 127.0.0.1; always stopped."""
    started: list[subprocess.Popen] = []

    def start(name: str, model: str | None = None) -> tuple[Server, Path, list[str]]:
        model = model or name
        app = install_bundle(name, tmp_path, model)
        studies = tmp_path / "studies"
        if _is_classification(ROOT / "bundles" / name):
            ids = make_image_studies(samples_dir, studies)
        else:
            spatial_shape = next(iter(read_metadata(app / "model" / name)["network_data_format"]["inputs"].values()))
            ids = make_studies(samples_dir, studies, len(spatial_shape["spatial_shape"]))
        port, log = free_port(), tmp_path / "server.log"
        (tmp_path / "home").mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(PATH=f"{ML_ENV / 'bin'}{os.pathsep}{env['PATH']}", HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
        cmd = [str(ML_ENV / "bin" / "monailabel"), "start_server", "--app", str(app), "--studies", str(studies)]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--conf", "models", model, "--conf", "zoo_source", "local", "--conf", "sam2", "false"]
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        started.append(proc)
        server = Server(proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, f"monailabel start_server exited ({proc.returncode}):\n{server.log_tail()}"
            try:
                if server.request("GET", "/info/", timeout=5)[0] == 200:
                    return server, app, ids
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no answer in {START_TIMEOUT} s:\n{server.log_tail()}"
            time.sleep(1)

    yield start
    for proc in started:  # the server and its training processes share one process group
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def _check_label(label: Path, image: Path, labels: dict[str, int]) -> None:
    """The label map has the study's shape and label values; for a 3D study, its affine too (MONAI Label 0.8.5
    writes a 2D result without one: ``monailabel.transform.writer`` passes no affine for arrays of 2 dimensions)."""
    pred, ref = nib.load(label), nib.load(image)
    assert pred.shape == ref.shape, f"label {pred.shape} for a study of {ref.shape}"
    if len(ref.shape) == 3:
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, *labels.values()}


@pytest.mark.parametrize("name", [b.name for b in PLANNED if _is_segmentation(b)])
def test_monai_label_infer_train_infer(name, server_for, tmp_path):
    meta = read_metadata(ROOT / "bundles" / name)
    labels = expected_labels(meta)
    server, app, ids = server_for(name)
    weights = app / "model" / name / "models" / "model.pt"

    info = server.json("GET", "/info/", timeout=30)
    model = info["models"][name]
    assert model["type"] == "segmentation" and model["labels"] == labels and model["version"] == meta["version"]
    assert name in info["trainers"] and info["datastore"]["completed"] == len(ids)

    image = tmp_path / "studies" / f"{ids[-1]}.nii.gz"
    result = server.infer(name, ids[-1], tmp_path / "before.nii.gz")
    assert result["label_names"] == labels
    _check_label(tmp_path / "before.nii.gz", image, labels)

    before = weights.stat().st_mtime_ns
    request = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False}
    task = server.json("POST", f"/train/{name}", timeout=60, payload=request)
    deadline = time.monotonic() + TRAIN_TIMEOUT
    while task["status"] in ("SUBMITTED", "RUNNING"):
        assert time.monotonic() < deadline, f"training did not finish in {TRAIN_TIMEOUT} s:\n{server.log_tail()}"
        time.sleep(3)
        task = server.json("GET", "/train/", timeout=30)
    assert task["status"] == "DONE", "\n".join(task.get("details", [])) + "\n" + server.log_tail()
    # a new file, not necessarily new values: a schedule warming up from lr 0 leaves one step's weights unchanged
    assert weights.stat().st_mtime_ns != before, "training saved no new models/model.pt"

    reloads = server.log.read_text().count("Reload model from cache")
    result = server.infer(name, ids[-1], tmp_path / "after.nii.gz")
    assert result["label_names"] == labels
    _check_label(tmp_path / "after.nii.gz", image, labels)
    assert server.log.read_text().count("Reload model from cache") == reloads + 1, "inference kept the old weights"


@pytest.mark.parametrize("name", [b.name for b in PLANNED if _is_classification(b)])
def test_monai_label_classification_infer(name, server_for, tmp_path):
    meta = read_metadata(ROOT / "bundles" / name)
    labels = expected_labels(meta)
    model = f"{name}_classification"
    server, _, ids = server_for(name, model)

    info = server.json("GET", "/info/", timeout=30)
    served = info["models"][model]
    assert served["type"] == "classification" and served["labels"] == labels and served["version"] == meta["version"]

    for image in ids[:2]:
        query = urllib.parse.urlencode({"image": image, "output": "json"})
        form = urllib.parse.urlencode({"params": json.dumps({"device": "cpu"})}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        status, _, data = server.request("POST", f"/infer/{model}?{query}", INFER_TIMEOUT, form, headers)
        assert status == 200, f"/infer: HTTP {status} {data[:500]!r}\n{server.log_tail()}"
        prediction = json.loads(data)["prediction"]
        assert [(p["idx"], p["label"]) for p in prediction] == sorted((i, n) for n, i in labels.items())
        scores = np.array([p["score"] for p in prediction])
        assert np.all((scores >= 0) & (scores <= 1)) and scores.sum() == pytest.approx(1.0, abs=1e-4)
