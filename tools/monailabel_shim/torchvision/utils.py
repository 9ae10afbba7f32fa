"""The two names monailabel 0.8.5 imports from ``torchvision.utils``; both raise, as torchvision is absent."""

from __future__ import annotations

from typing import Any


def _absent(name: str) -> None:
    raise NotImplementedError(f"torchvision.utils.{name}: torchvision is not installed in this environment")


def make_grid(*args: Any, **kwargs: Any) -> Any:
    """Unavailable: raises ``NotImplementedError``."""
    _absent("make_grid")


def save_image(*args: Any, **kwargs: Any) -> None:
    """Unavailable: raises ``NotImplementedError``."""
    _absent("save_image")
