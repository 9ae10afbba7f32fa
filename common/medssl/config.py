"""Start-up check of the values a user gives on the command line to a bundle's switches and numeric keys.

``python -m monai.bundle run ... --resume false`` passes the *text* ``'false'`` (the command line is parsed by Fire,
which reads Python literals: ``False``, ``None`` and numbers, not JSON's ``false``/``null``), and a non-empty text is
true in Python: the run would resume. Every config therefore starts with ``check_switches({...}, nullable={...})``
over its top-level keys whose default is a boolean or a number (any text is wrong there) or null (``'null'``,
``'none'``, ``'true'``, ``'false'`` are wrong there; a path is not), and stops before anything runs, naming the key and
the values it accepts. ``python -m medssl.config`` writes those lines into the configs and checks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["CHECK_PREFIX", "SwitchError", "check_switches", "switch_keys"]

CHECK_PREFIX = "$check_switches("
_TRUE, _FALSE, _NULL = {"true", "yes", "on"}, {"false", "no", "off"}, {"null", "none", "nil", ""}


class SwitchError(ValueError):
    """A switch or numeric key was given text on the command line."""


def switch_keys(config: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The top-level keys of a config whose value is a boolean or a number, and those whose value is null."""
    plain = [k for k in config if "#" not in k and not k.startswith("_")]
    typed = sorted(k for k in plain if isinstance(config[k], (bool, int, float)))
    return typed, sorted(k for k in plain if config[k] is None)


def _advice(key: str, value: str) -> str:
    word = value.strip().lower()
    if word in _TRUE or word in _FALSE:
        spelling = "True" if word in _TRUE else "False"
        return f"--{key} {value!r} is text, which Python takes as true: write --{key} {spelling} (or 1/0)"
    if word in _NULL:
        return f"--{key} {value!r} is text: write --{key} None"
    return f"--{key} {value!r} is text where a boolean, a number or None is expected"


def check_switches(typed: Mapping[str, Any], nullable: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`SwitchError` naming every key of ``typed`` that holds text and every key of ``nullable`` that
    holds a spelling of null or of a boolean (see the module docstring)."""
    problems = [_advice(key, value) for key, value in typed.items() if isinstance(value, str)]
    problems += [
        _advice(key, value)
        for key, value in (nullable or {}).items()
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE | _NULL
    ]
    if problems:
        raise SwitchError("; ".join(problems))
