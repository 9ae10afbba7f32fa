"""Released bundles load from any folder and side by side in one process (issue 15, item 2).

Exactly the user's path, in a fresh environment holding only MONAI and the bundles' listed packages
(``test_dist.user_env``; ``medssl`` is not importable there): two zips from ``make dist`` are downloaded with
``monai.bundle.download(url=file://...)`` and ``download_large_files`` into a ``bundle_dir``; from a working folder
that is neither bundle's, one script loads bundle A's network with ``monai.bundle.load``, then bundle B's, then parses
each bundle's inference ``preprocessing`` with its own ``ConfigParser`` (``bundle_root`` set, as MONAI Label does)
and runs it on a sample volume, then runs A's preprocessing again after B's was built. Without
:mod:`medssl.bundle.isolation`, ``load`` fails with ``No module named 'scripts'`` (``Cannot locate ...
scripts.networks.GenesisUNet``) and, once A's ``scripts`` is imported, B finds A's package.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_dist import in_env, plan_step, save_random_weights, sha256, user_env

from medssl.bundle import read_metadata
from medssl.bundle.dist import build_bundle
from medssl.runner import copy_bundle, fill_placeholders

ROOT = Path(__file__).resolve().parents[1]
PAIR = ("models_genesis", "joint_clustering")  # the pair of the issue

USER_SCRIPT = """
import json, os, sys, torch, monai.bundle
from monai.bundle import ConfigParser
bundle_dir, spec_file = sys.argv[1:]
spec = json.load(open(spec_file))
report = {"cwd": os.getcwd(), "loaded": {}, "preprocessed": {}}
for name, s in spec.items():  # the user's download: a zip served from a URL (file:// here), then its large files
    monai.bundle.download(name=name, version=s["version"], url=s["url"], bundle_dir=bundle_dir, progress=False)
    if os.path.isfile(os.path.join(bundle_dir, name, "large_files.yml")):
        monai.bundle.download_large_files(bundle_path=os.path.join(bundle_dir, name))
for name, s in spec.items():  # bundle A's network, then bundle B's, in one process
    net = monai.bundle.load(name=name, bundle_dir=bundle_dir, workflow_type="inference", device="cpu",
                            args_file=s["args_file"], progress=False)
    saved = torch.load(os.path.join(bundle_dir, name, "models", "model.pt"), map_location="cpu", weights_only=True)
    state = net.state_dict()
    report["loaded"][name] = {
        "class": type(net).__name__,
        "file": sys.modules[type(net).__module__].__file__,
        "weights": saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved),
    }

def preprocess(name):  # the user's own pipeline: their ConfigParser, the bundle's preprocessing
    s = spec[name]
    parser = ConfigParser()
    parser.read_config(os.path.join(bundle_dir, name, "configs", "inference.json"))
    parser.update({**json.load(open(s["args_file"])), "bundle_root": os.path.join(bundle_dir, name)})
    pre = parser.get_parsed_content("preprocessing")
    return pre, dict(s["item"])

built = {name: preprocess(name) for name in spec}
for name, (pre, item) in list(built.items()) + list(built.items())[:1]:  # A's again after B's was built
    out = pre(item)
    report["preprocessed"].setdefault(name, []).append(
        {"shape": list(out["image"].shape), "finite": bool(torch.isfinite(torch.as_tensor(out["image"])).all())}
    )
report["medssl"] = any(m == "medssl" or m.startswith("medssl.") for m in sys.modules)
print(json.dumps(report))
"""


def _sample_item(samples_dir: Path) -> dict:
    """The first validation item of the sample datalist the inference config reads, with an absolute image path."""
    datalist = samples_dir / "datalist_seg_3d.json"
    item = json.loads(datalist.read_text())["validation"][0]
    return {"image": str(datalist.parent / item["image"]), "modality": item.get("modality", "MR")}


@pytest.mark.slow
def test_two_released_bundles_load_anywhere_in_one_process(samples_dir, tmp_path):
    metas = [read_metadata(ROOT / "bundles" / name) for name in PAIR]
    first, second = (m["required_packages_version"] for m in metas)
    clashes = {k: (v, second[k]) for k, v in first.items() if k in second and second[k] != v}
    assert not clashes, f"the two bundles pin different versions: {clashes}"
    venv = user_env({**metas[0], "required_packages_version": {**first, **second}})  # a user installs both
    spec, weights = {}, {}
    for name in PAIR:
        source = copy_bundle(ROOT / "bundles" / name, tmp_path / "src")
        overrides = fill_placeholders(plan_step(name, "inference.json")["overrides"], samples=samples_dir)
        weights[name] = sha256(save_random_weights(source, overrides))
        dist = build_bundle(source, tmp_path / "dist")
        args_file = tmp_path / f"{name}.args.json"
        args_file.write_text(json.dumps(overrides))
        spec[name] = {"version": dist.version, "url": dist.source, "args_file": str(args_file)}
        spec[name]["item"] = _sample_item(samples_dir)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    bundle_dir, elsewhere = tmp_path / "bundles", tmp_path / "work"
    bundle_dir.mkdir()
    elsewhere.mkdir()

    out = in_env(venv, ["-c", USER_SCRIPT, str(bundle_dir), str(tmp_path / "spec.json")], elsewhere)
    report = json.loads(out.splitlines()[-1])

    assert report["cwd"] == str(elsewhere) and not report["medssl"]
    for name in PAIR:
        loaded = report["loaded"][name]
        # each network comes from its own bundle's scripts (not the first bundle's cached package), with its weights
        assert Path(loaded["file"]).is_relative_to(bundle_dir / name), loaded
        assert loaded["weights"], f"{name}: load() did not return the weights of models/model.pt"
        assert sha256(bundle_dir / name / "models" / "model.pt") == weights[name]
        runs = report["preprocessed"][name]
        assert all(r["finite"] and len(r["shape"]) == 4 and r["shape"][0] == 1 for r in runs), runs
    assert report["loaded"]["models_genesis"]["class"] == "GenesisUNet"
    # A's preprocessing gives the same result after B's bundle was activated
    assert report["preprocessed"][PAIR[0]][0] == report["preprocessed"][PAIR[0]][1]
