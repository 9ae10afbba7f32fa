"""Dice of every foreground class as its own validation metric (``val_dice_<name>``), for ``train_2d.json``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.handlers import MeanDice, from_engine

__all__ = ["per_class_dice"]


def per_class_dice(
    num_classes: int,
    class_names: Sequence[str],
    prefix: str = "val_dice_",
    output_transform: Callable | None = None,
) -> MeanDice:
    """One ``MeanDice`` whose per-class means (over the validation images) land in ``engine.state.metrics`` as
    ``<prefix><name>`` scalars (MONAI's ``return_with_label``; ignite flattens the returned dict).

    Args:
        num_classes: classes including the background (channel 0 of the one-hot ``pred``/``label``).
        class_names: one name per foreground class 1 .. ``num_classes - 1``.
        prefix: metric name prefix.
        output_transform: engine output to ``(pred, label)``; default ``from_engine(["pred", "label"])``. Pass
            ``medssl.handlers.everywhere_prediction`` for the everywhere baseline of each class.

    Raises:
        ValueError: ``class_names`` does not have ``num_classes - 1`` names (MONAI would drop classes silently).
    """
    names = [str(n) for n in class_names]
    if len(names) != num_classes - 1:
        raise ValueError(
            f"class_names {names} has {len(names)} name(s); num_classes {num_classes} needs {num_classes - 1}"
        )
    return MeanDice(
        include_background=False,
        reduction="mean_batch",
        return_with_label=[prefix + n for n in names],
        output_transform=output_transform or from_engine(["pred", "label"]),
    )
