"""A released bundle's configs find their own ``scripts`` package, from any folder and beside other bundles.

Every bundle has a top-level ``scripts`` package. MONAI puts the bundle folder on ``sys.path`` only in
``ConfigWorkflow.run`` (after ``initialize``), ``monai.bundle.load`` never does, and a ``scripts`` package imported
for one bundle stays in ``sys.modules`` when a second bundle is parsed in the same process. MONAI's parser also
evaluates every import statement of a config (``"$from scripts.data import x"``) before anything else, each time it
resolves an item that is not resolved yet, and binds a failed import to a stand-in that raises only when used.

:func:`add_isolation` therefore adds to the configs of a bundle's zip (``medssl.bundle.dist``), using only the
standard library because it runs before ``scripts`` can be imported:

* ``bundle_root``: when the config leaves it at ``"."``, the folder of the configs being run, found from the
  ``ConfigWorkflow`` that reads them (``monai.bundle.load``, ``python -m monai.bundle run``); ``"."`` when there is
  none. MONAI Label, ``--bundle_root`` and ``parser["bundle_root"] = ...`` set it as before;
* ``activate_scripts`` (:data:`ACTIVATE`): drop ``scripts.*`` modules imported from another folder, put
  ``bundle_root`` first on ``sys.path``, and forget the config's resolved import statements so that MONAI evaluates
  them again, now from this bundle (``__local_refs`` is the resolver's own table of resolved items);
* ``"$@activate_scripts"`` first in ``initialize`` (``load`` and ``run`` run it before anything else), and
  ``"_requires_": "@activate_scripts"`` on every top-level component that reaches the bundle's code (the network,
  pre- and post-processing a user or MONAI Label parses on its own).

Objects built before another bundle was activated keep working (they hold their modules); code that imports
``scripts`` inside a function body at call time would see the bundle activated last.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["ACTIVATE", "ACTIVATE_ID", "BUNDLE_ROOT", "IMPORTS", "add_isolation"]

ACTIVATE_ID = "activate_scripts"
IMPORTS = ["$import os", "$import sys", "$import inspect"]
BUNDLE_ROOT = (
    "$next((str(p.parent if p.name == 'configs' else p) for p in (inspect.getattr_static(f.frame.f_locals.get('self'), "
    "'config_root_path', None) for f in inspect.stack(0)) if isinstance(p, os.PathLike)), '.')"
)
ACTIVATE = [
    "$[sys.modules.pop(m) for m in [m for m in sys.modules if m.partition('.')[0] == 'scripts' and not "
    "str(getattr(sys.modules[m], '__file__', None)).startswith(os.path.join(os.path.abspath(@bundle_root), "
    "'scripts', ''))]]",
    "$[sys.path.remove(p) for p in [p for p in sys.path if os.path.abspath(p or '.') == "
    "os.path.abspath(@bundle_root)]] + [sys.path.insert(0, os.path.abspath(@bundle_root))]",
    "$[__local_refs.pop(k) for k in [k for k in __local_refs if k.startswith('imports#')]]",
]
_REQUIRES = f"@{ACTIVATE_ID}"


def _reaches_scripts(node: Any) -> bool:
    """Whether a config value instantiates anything of the bundle's ``scripts`` package (vendored code included)."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str) and target.split(".")[0] == "scripts":
            return True
        return any(_reaches_scripts(v) for v in node.values())
    if isinstance(node, list):
        return any(_reaches_scripts(v) for v in node)
    return False


def _with_requires(component: dict) -> dict:
    """``component`` with ``@activate_scripts`` required first (before the sub-components MONAI resolves in order)."""
    requires = component.get("_requires_")
    if requires == _REQUIRES or (isinstance(requires, list) and _REQUIRES in requires):
        return component
    new = {"_target_": component["_target_"]}
    new["_requires_"] = (
        _REQUIRES if requires is None else [_REQUIRES, *([requires] if isinstance(requires, str) else requires)]
    )
    new.update({k: v for k, v in component.items() if k not in new})
    return new


def add_isolation(config: dict) -> dict:
    """A copy of a parsed JSON config with the items of the module docstring added (a config without ``imports`` or
    ``initialize``, e.g. an overlay, gets only what it already has a place for)."""
    config = copy.deepcopy(config)
    if isinstance(config.get("imports"), list):
        config["imports"] = IMPORTS + [x for x in config["imports"] if x not in IMPORTS]
        config[ACTIVATE_ID] = list(ACTIVATE)
    if config.get("bundle_root") == ".":
        config["bundle_root"] = BUNDLE_ROOT
    if isinstance(config.get("initialize"), list):
        first = f"${_REQUIRES}"
        config["initialize"] = [first] + [x for x in config["initialize"] if x != first]
    for key, value in list(config.items()):
        if isinstance(value, dict) and "_target_" in value and _reaches_scripts(value):
            config[key] = _with_requires(value)
        elif isinstance(value, list):
            config[key] = [
                _with_requires(v) if isinstance(v, dict) and "_target_" in v and _reaches_scripts(v) else v
                for v in value
            ]
    return config
