"""2D detection downstream (``configs/train_detection.json``): MONAI's RetinaNet over the pre-trained ``f_intra``.

* :class:`IntraFPN`: the :class:`~scripts.networks.IntraEncoder` trunk with MONAI's ``FeaturePyramidNetwork`` on
  the chosen levels (plus one max-pooled level), the feature extractor of MONAI's ``RetinaNet``.
* :func:`retinanet_detector`: MONAI's ``RetinaNetDetector`` around it (:class:`AtssRetinaNetDetector`, the same
  with the ATSS matcher called directly), reading targets from ``box``/``box_label``.
* :func:`detection_batch`: ``prepare_batch`` for MONAI engines with uncollated (list) batches.
* :class:`DetectionMAP`: validation AP at one IoU threshold (MONAI's ``COCOMetric``), optionally for the trivial
  baseline that predicts, for every class, one box covering the whole image.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from ignite.metrics import Metric
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.data.box_utils import box_iou
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torch import nn

from scripts.networks import IntraEncoder

__all__ = [
    "IntraFPN",
    "AtssRetinaNetDetector",
    "retinanet_detector",
    "detection_batch",
    "check_box_items",
    "DetectionMAP",
]


class IntraFPN(nn.Module):
    """``f_intra`` levels ``returned_layers`` (1..4, strides 4, 8, 16, 32) through a feature pyramid.

    ``forward(images (N, C, H, W))`` returns an ordered dict of ``len(returned_layers) + 1`` maps with
    ``out_channels`` channels (the last one max-pooled from the coarsest), as MONAI's ``RetinaNet`` expects.
    The encoder is ``self.intra`` so a pre-trained ``intra.trunk.*`` state loads into this module unchanged.
    """

    def __init__(
        self,
        in_channels: int = 1,
        layers: Sequence[int] = (3, 4, 6, 3),
        block_inplanes: Sequence[int] = (64, 128, 256, 512),
        block: str = "bottleneck",
        returned_layers: Sequence[int] = (1, 2),
        out_channels: int = 256,
    ) -> None:
        super().__init__()
        if not returned_layers or any(level not in (1, 2, 3, 4) for level in returned_layers):
            raise ValueError(f"returned_layers must be levels among 1..4, got {list(returned_layers)}")
        self.intra = IntraEncoder(in_channels, layers, block_inplanes, block)
        self.returned_layers = [int(level) for level in returned_layers]
        self.fpn = FeaturePyramidNetwork(
            spatial_dims=2,
            in_channels_list=[self.intra.level_channels[level - 1] for level in self.returned_layers],
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(2),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        maps = self.intra.feature_maps(x.as_subclass(torch.Tensor))
        return self.fpn(OrderedDict((str(level), maps[level]) for level in self.returned_layers))


class AtssRetinaNetDetector(RetinaNetDetector):
    """MONAI's ``RetinaNetDetector`` whose anchor matching calls its ATSS matcher directly.

    MONAI's ``compute_anchor_matched_idxs`` first tests ``isinstance(matcher, torchvision Matcher)``, which raises
    when torchvision is not installed (it is not a dependency of this project) even with MONAI's own ATSS matcher;
    this override is MONAI's ATSS branch alone (its error message invites such an override).
    """

    def compute_anchor_matched_idxs(
        self, anchors: list[torch.Tensor], targets: list[dict[str, torch.Tensor]], num_anchor_locs_per_level
    ) -> list[torch.Tensor]:
        matched = []
        for anchors_per_image, target in zip(anchors, targets):
            boxes = target[self.target_box_key]
            if boxes.numel() == 0:
                matched.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64, device=boxes.device))
                continue
            _, idxs = self.proposal_matcher(
                boxes.to(anchors_per_image.device),
                anchors_per_image,
                num_anchor_locs_per_level,
                self.num_anchors_per_loc,
            )
            matched.append(idxs)
        return matched


def retinanet_detector(
    feature_extractor: IntraFPN,
    num_classes: int,
    base_anchor_shapes: Sequence[Sequence[int]],
    num_candidates: int = 4,
    batch_size_per_image: int = 64,
    positive_fraction: float = 0.3,
    score_thresh: float = 0.02,
    nms_thresh: float = 0.22,
    detections_per_img: int = 100,
) -> RetinaNetDetector:
    """MONAI's RetinaNet on ``feature_extractor`` with anchors ``base_anchor_shapes`` (pixels at the finest level,
    doubled per coarser level), an ATSS matcher, hard-negative sampling and targets read from ``box``/``box_label``
    (boxes ``[x0, y0, x1, y1]`` in the image tensor's axis order; labels 0-based foreground classes)."""
    levels = len(feature_extractor.returned_layers) + 1
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[2**i for i in range(levels)], base_anchor_shapes=[list(s) for s in base_anchor_shapes]
    )
    stride = 2 ** (max(feature_extractor.returned_layers) + 2)
    network = RetinaNet(
        spatial_dims=2,
        num_classes=num_classes,
        num_anchors=anchors.num_anchors_per_location()[0],
        feature_extractor=feature_extractor,
        size_divisible=stride,
    )
    detector = AtssRetinaNetDetector(network, anchors)
    detector.set_target_keys(box_key="box", label_key="box_label")
    detector.set_atss_matcher(num_candidates=num_candidates, center_in_gt=False)
    detector.set_hard_negative_sampler(
        batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction, pool_size=20, min_neg=16
    )
    detector.set_box_selector_parameters(
        score_thresh=score_thresh,
        topk_candidates_per_level=1000,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )
    return detector


def detection_batch(batchdata: list[dict], device=None, non_blocking: bool = False, **kwargs) -> tuple:
    """``prepare_batch`` for a list of items (``no_collation``): images and ``box``/``box_label`` targets on
    ``device``; the targets are also passed to the detector as ``targets=`` (used in training only)."""
    images = [item["image"].to(device=device, non_blocking=non_blocking) for item in batchdata]
    targets = [
        {k: item[k].to(device=device, non_blocking=non_blocking) for k in ("box", "box_label")} for item in batchdata
    ]
    return images, targets, (), {"targets": targets}


def check_box_items(items: Sequence[dict], num_classes: int) -> None:
    """Raise ``ValueError`` naming the image of the first item without ``box``/``box_label`` (write them with
    ``prepare_2d --boxes``), with boxes not ``[x0, y0, x1, y1]``, box and label counts differing, or a class outside
    ``0..num_classes - 1`` (key ``num_classes``)."""
    for item in items:
        name = item.get("image")
        if "box" not in item or "box_label" not in item:
            raise ValueError(f"{name}: datalist item has no box/box_label (run scripts.prepare_2d with --boxes)")
        boxes, labels = item["box"], item["box_label"]
        if any(len(b) != 4 or b[2] < b[0] or b[3] < b[1] for b in boxes) or len(boxes) != len(labels):
            raise ValueError(f"{name}: box must be [[x0, y0, x1, y1], ...] with one box_label per box")
        if any(not 0 <= int(c) < num_classes for c in labels):
            raise ValueError(f"{name}: box_label {list(labels)} outside 0..{num_classes - 1} (key num_classes)")


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class DetectionMAP(Metric):
    """Mean (over classes) average precision at IoU ``iou`` over the validation set, by MONAI's ``COCOMetric``.

    Reads ``engine.state.output`` (``image``, ``label``: list of ``box``/``box_label`` targets, ``pred``: the
    detector's list of ``box``/``box_label``/``box_label_scores``). With ``baseline`` the prediction is replaced by
    one box covering the whole image for every class (score 1), the trivial detector the model must beat.
    """

    required_output_keys = ("image", "label", "pred")

    def __init__(self, num_classes: int, iou: float = 0.5, baseline: bool = False, device: str = "cpu") -> None:
        self.coco = COCOMetric(
            classes=[str(c) for c in range(num_classes)],
            iou_list=[iou],
            iou_range=[iou, iou, 0.05],
            max_detection=[100],
            per_class=False,
            verbose=False,
        )
        self.key = f"AP_IoU_{iou:.2f}_MaxDet_100"
        self.num_classes, self.baseline = num_classes, baseline
        super().__init__(device=device)

    def reset(self) -> None:
        self._pred, self._gt = [], []

    def update(self, output: tuple[list, list, list]) -> None:
        for image, target, pred in zip(*output):
            if self.baseline:
                size = list(image.shape[1:])
                boxes = np.array([[0] * len(size) + size] * self.num_classes, np.float32)
                classes, scores = np.arange(self.num_classes), np.ones(self.num_classes)
                pred = {"box": boxes, "box_label": classes, "box_label_scores": scores}
            self._pred.append({k: _numpy(v) for k, v in pred.items()})
            self._gt.append({k: _numpy(v) for k, v in target.items()})

    def compute(self) -> float:
        results = matching_batch(
            iou_fn=box_iou,
            iou_thresholds=self.coco.iou_thresholds,
            pred_boxes=[p["box"] for p in self._pred],
            pred_classes=[p["box_label"] for p in self._pred],
            pred_scores=[p["box_label_scores"] for p in self._pred],
            gt_boxes=[g["box"] for g in self._gt],
            gt_classes=[g["box_label"] for g in self._gt],
        )
        return float(self.coco(results)[0][self.key])
