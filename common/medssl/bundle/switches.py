"""Keep every config's start-up ``check_switches`` line (:mod:`medssl.config`) in step with its keys.

A config runs alone or as an overlay on its base (:func:`medssl.bundle.config_chain`). The line belongs to the
``initialize`` list the run executes, the one of the last file that defines it, and lists the keys of the merged
config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medssl.bundle import config_chain
from medssl.config import CHECK_PREFIX, switch_keys

__all__ = ["IMPORT", "expected_line", "sync_switch_checks"]

IMPORT = "$from medssl.config import check_switches"


def _merged(contents: list[dict[str, Any]]) -> dict[str, Any]:
    """Top-level keys as MONAI merges them: a later file replaces a key, ``+key`` extends its list."""
    merged: dict[str, Any] = {}
    for content in contents:
        for key, value in content.items():
            if key.startswith("+") and isinstance(merged.get(key[1:]), list):
                merged[key[1:]] = merged[key[1:]] + value
            else:
                merged[key] = value
    return merged


def expected_line(merged: dict[str, Any]) -> str:
    typed, nullable = switch_keys(merged)

    def as_dict(keys: list[str]) -> str:
        return "{" + ", ".join(f"'{k}': @{k}" for k in keys) + "}"

    return f"{CHECK_PREFIX}{as_dict(typed)}, nullable={as_dict(nullable)})"


def _owner(contents: list[dict[str, Any]], key: str) -> int | None:
    """Index of the last file of the chain that sets ``key`` (not ``+key``)."""
    owners = [i for i, c in enumerate(contents) if key in c]
    return owners[-1] if owners else None


def sync_switch_checks(configs_dir: str | Path, write: bool = True) -> list[str]:
    """Put the right ``check_switches`` line first in the ``initialize`` list each config of a bundle runs, and its
    import in the ``imports`` it runs; return what was (``write``) or would be changed."""
    configs = sorted(p for p in Path(configs_dir).glob("*.json") if p.name != "metadata.json")
    texts = {p: json.loads(p.read_text()) for p in configs}
    lines: dict[Path, tuple[str, Path]] = {}  # file holding the initialize list -> (its line, the config wanting it)
    changes: list[str] = []
    for config in configs:
        chain = config_chain(config)
        contents = [texts[p] for p in chain]
        merged = _merged(contents)
        if "run" not in merged:
            continue
        init_owner = _owner(contents, "initialize")
        if init_owner is None:
            raise ValueError(f"{config}: no 'initialize' list to hold the switch check")
        line, holder = expected_line(merged), chain[init_owner]
        if lines.get(holder, (line,))[0] != line:
            raise ValueError(
                f"{config} and {lines[holder][1]} need other checks in {holder.name}: give one an 'initialize'"
            )
        lines[holder] = (line, config)
        if IMPORT not in merged.get("imports", []):
            imports_owner = _owner(contents, "imports")
            if imports_owner is None:
                raise ValueError(f"{config}: no 'imports' list for {IMPORT}")
            texts[chain[imports_owner]]["imports"].append(IMPORT)
            changes.append(f"{chain[imports_owner].name}: imports += {IMPORT}")
    for holder, (line, _) in lines.items():
        init = texts[holder]["initialize"]
        rest = [x for x in init if not (isinstance(x, str) and x.startswith(CHECK_PREFIX))]
        if init != [line, *rest]:
            texts[holder]["initialize"] = [line, *rest]
            changes.append(f"{holder.name}: initialize[0] = {line}")
    if write:
        for path, content in texts.items():
            text = json.dumps(content, indent=4) + "\n"
            if path.read_text() != text:
                path.write_text(text)
    return changes
