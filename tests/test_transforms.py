"""``medssl.transforms.MetaTracking``: the wrapped transforms' values and random streams, without the metadata."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor, get_track_meta
from monai.transforms import Compose, NormalizeIntensityd, RandAffined, RandFlipd

from medssl.resume import transform_random_states
from medssl.transforms import MetaTracking


def augmentation(wrapped: bool, track_meta: bool = False) -> Compose:
    transforms = [
        RandAffined("image", prob=0.7, translate_range=(6, 6), rotate_range=0.3, padding_mode="zeros"),
        RandFlipd("image", prob=0.5, spatial_axis=0),
        NormalizeIntensityd("image"),
    ]
    if wrapped:
        transforms = [MetaTracking(t, track_meta=track_meta) for t in transforms]
    return Compose(transforms)


def test_wrapping_keeps_values_and_random_streams_and_drops_the_metadata() -> None:
    """Breaks if the wrapper draws from the seed itself (every wrapped transform's stream would shift), changes a
    value, or leaves tracking switched (off or on) after the call."""
    image = MetaTensor(torch.rand(1, 32, 32), affine=torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0])))
    outputs = []
    for seed in range(6):
        reference = augmentation(wrapped=False).set_random_state(seed)({"image": image})["image"]
        fast = augmentation(wrapped=True).set_random_state(seed)({"image": image})["image"]
        assert type(fast) is torch.Tensor and isinstance(reference, MetaTensor)
        torch.testing.assert_close(fast, reference.as_tensor())
        outputs.append(fast)
    assert not all(torch.equal(outputs[0], o) for o in outputs[1:])  # the seeds drew different augmentations
    tracked = augmentation(wrapped=True, track_meta=True).set_random_state(0)({"image": image})["image"]
    assert isinstance(tracked, MetaTensor) and tracked.applied_operations
    assert get_track_meta()


def test_tracking_is_restored_when_the_transform_fails() -> None:
    def fail(data):
        raise RuntimeError("bad sample")

    with pytest.raises(RuntimeError, match="bad sample"):
        MetaTracking(fail)({"image": torch.zeros(1, 4, 4)})
    assert get_track_meta()


def test_the_wrapped_random_states_are_saved_for_resume() -> None:
    """Breaks if a resumed run cannot find (and so cannot restore) the generator of a wrapped transform."""
    chain = augmentation(wrapped=True)
    inner = [t.transform.R for t in chain.transforms[:2]]
    states = transform_random_states(chain)
    assert all(any(r is s for s in states) for r in inner)
