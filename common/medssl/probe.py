"""Online representation probe: how well a pre-training's frozen features separate labelled classes, per epoch.

:class:`OnlineProbe` embeds a small labelled probe set with the network being pre-trained and scores two classifiers
on those features: k-nearest-neighbours (leave-one-out, cosine similarity) and a linear classifier (closed-form
ridge regression on one-hot targets, stratified k-fold cross-validation). Each score stands next to two trivial
baselines: chance (the majority class's frequency) and the same probe on the untrained network. A pre-training
that learns nothing useful for the probe's classes stays at those baselines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from ignite.engine import Engine, Events

__all__ = ["OnlineProbe", "knn_accuracy", "linear_accuracy", "majority_frequency", "probe_classes"]

logger = logging.getLogger(__name__)


def probe_classes(label: Any, batch_size: int) -> torch.Tensor:
    """The class of each item of a batch's ``label``: a class index (one value per item) is kept; a label map (more
    than one value per item) gives 1 if any of its voxels is > 0 (foreground present), else 0."""
    values = torch.as_tensor(label).reshape(batch_size, -1)
    if values.shape[1] == 1:
        return values[:, 0].long()
    return (values > 0).any(dim=1).long()


def majority_frequency(labels: torch.Tensor) -> float:
    """Chance accuracy: the frequency of the most common class."""
    return float(torch.bincount(labels).max()) / len(labels)


def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, k: int = 20) -> float:
    """Leave-one-out accuracy of a k-nearest-neighbours vote with cosine similarity.

    ``k`` is capped by the number of other items. A tie between classes goes to the class of the more similar
    neighbours (the similarities only break ties, they never outweigh a vote).
    """
    n = len(labels)
    k = min(k, n - 1)
    unit = F.normalize(features.double(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-float("inf"))
    top_similarity, top_index = similarity.topk(k, dim=1)
    votes = F.one_hot(labels[top_index], int(labels.max()) + 1).double()  # (n, k, classes)
    scores = votes.sum(1) + (votes * top_similarity[..., None]).sum(1) / (2 * k + 2)
    return float((scores.argmax(1) == labels).double().mean())


def linear_accuracy(features: torch.Tensor, labels: torch.Tensor, folds: int = 5, ridge: float = 0.1) -> float:
    """Cross-validated accuracy of a linear classifier: ridge regression on one-hot targets, argmax.

    Folds are stratified and deterministic (items sorted by class, dealt round-robin; ``folds`` is capped by the
    number of items). Features are standardised with the training fold's mean and standard deviation; the L2
    penalty is ``ridge`` times the mean squared norm of the standardised training features (scale-free). Solved in
    closed form in the dual (items x items), so it is exact, deterministic and cheap for any feature size.
    """
    n, classes = len(labels), int(labels.max()) + 1
    folds = min(folds, n)
    fold = torch.empty(n, dtype=torch.long)
    fold[torch.argsort(labels, stable=True)] = torch.arange(n) % folds
    x_all, targets = features.double(), F.one_hot(labels, classes).double()
    correct = 0
    for f in range(folds):
        test, train = fold == f, fold != f
        mean, std = x_all[train].mean(0), x_all[train].std(0, unbiased=False)
        std[std == 0] = 1.0
        x, x_test = (x_all[train] - mean) / std, (x_all[test] - mean) / std
        y_mean = targets[train].mean(0)
        gram = x @ x.T
        penalty = ridge * gram.trace() / len(x) + 1e-12
        alpha = torch.linalg.solve(gram + penalty * torch.eye(len(x), dtype=gram.dtype), targets[train] - y_mean)
        scores = x_test @ x.T @ alpha + y_mean
        correct += int((scores.argmax(1) == labels[test]).sum())
    return correct / n


class OnlineProbe:
    """Score the frozen features of the network being trained on a labelled probe set, every ``interval`` epochs.

    At every probe epoch it records, as TensorBoard scalars (step = epoch) and in ``engine.state.metrics`` (so
    ``StatsHandler``/``MetricsSaver`` see them), with ``tag_prefix="probe"``:

    * ``probe_knn_acc``: leave-one-out kNN accuracy (cosine, ``k`` capped by the set size), see :func:`knn_accuracy`;
    * ``probe_linear_acc``: cross-validated linear classifier accuracy, see :func:`linear_accuracy`;
    * ``probe_knn_acc_baseline_chance`` / ``probe_linear_acc_baseline_chance``: the majority class's frequency;
    * ``probe_knn_acc_baseline_untrained`` / ``probe_linear_acc_baseline_untrained``: the same probe on the network
      as it is when the engine starts (epoch 0, also written at step 0 with the probe tags), re-written at every
      probe epoch so each baseline plots beside its metric.

    A log line gives the same numbers. The engine's random generators are left as they were, so switching the
    probe on does not change the training run.

    Args:
        loader: yields MONAI dict batches with ``image`` and ``label_key``: a class index per item, or a label map whose
            class is the presence of foreground (1 if any voxel > 0, else 0), see :func:`probe_classes`. Use
            deterministic transforms, and no ``DistributedSampler``: every process probes the whole set.
        embed: ``embed(images) -> (N, D)`` features (trailing dimensions are flattened). It runs under
            ``torch.no_grad()`` with ``embed`` (if a module, or a module's bound method) and the engine's ``network``
            in eval mode; every module's own train/eval mode is restored afterwards.
        interval: epochs between probes.
        k: neighbours of the kNN vote.
        summary_writer: a ``SummaryWriter`` (or anything with ``add_scalar``); None logs only to the metrics.
        tag_prefix: prefix of every tag and metric name.
        device: where the images go before ``embed``.
        label_key: key of the class (pre-training configs use another key than ``label``, which MONAI Label
            reserves for annotations).

    Raises ``ValueError`` when the probe set is empty or holds a single class (no accuracy could mean anything), or
    when ``loader`` splits it between processes (a ``DistributedSampler``).

    Under ``torch.distributed``, every process runs the probe identically on the whole probe set (DDP keeps the
    weights equal), with no collective call of its own, so no process waits for another; the numbers are in every
    process's metrics and only process 0 writes them to TensorBoard and the log. The untrained network is measured
    by the first of the engine's ``STARTED`` handlers, wherever the probe is listed: before a resume checkpoint
    (e.g. ``medssl.resume.ResumableCheckpoint``) loads trained weights, a resumed run's seed having rebuilt the
    same untrained network. When the engine's own state already starts past epoch 0 (``engine.load_state_dict``),
    the untrained baselines are not measured and a warning says so.
    """

    def __init__(
        self,
        loader: Iterable[Mapping[str, Any]],
        embed: Callable[[torch.Tensor], torch.Tensor],
        interval: int = 1,
        k: int = 20,
        summary_writer: Any = None,
        tag_prefix: str = "probe",
        device: str | torch.device = "cpu",
        label_key: str = "label",
    ) -> None:
        if isinstance(getattr(loader, "sampler", None), torch.utils.data.DistributedSampler):
            raise ValueError(
                f"{tag_prefix}: the probe loader has a DistributedSampler; every process must probe the whole set"
            )
        self.loader = loader
        self.embed = embed
        self.interval = interval
        self.k = k
        self.summary_writer = summary_writer
        self.tag_prefix = tag_prefix
        self.device = torch.device(device)
        self.label_key = label_key
        self.untrained: dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.measure_untrained)
        # first of the STARTED handlers, before a resume checkpoint loads trained weights (ignite has no priorities)
        started = engine._event_handlers[Events.STARTED]
        started.insert(0, started.pop())
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def measure_untrained(self, engine: Engine) -> None:
        """Probe the network as it is at start: the untrained baselines, also written at step 0."""
        if engine.state.epoch > 0:
            logger.warning(
                f"{self.tag_prefix}: the engine starts at epoch {engine.state.epoch}, so the untrained baselines are "
                "not measured"
            )
            return
        scores = self.probe(engine)
        self.untrained = {name: value for name, value in scores.items() if not name.endswith("_baseline_chance")}
        self._record(engine, scores, step=0)

    def __call__(self, engine: Engine) -> None:
        self._record(engine, self.probe(engine), step=engine.state.epoch)

    def probe(self, engine: Engine) -> dict[str, float]:
        """kNN and linear accuracies of the current network and their chance baselines, by metric name."""
        features, labels = self.features(engine)
        if len(labels) == 0:
            raise ValueError(f"{self.tag_prefix}: the probe set is empty; check probe_datalist")
        if len(torch.unique(labels)) < 2:
            raise ValueError(
                f"{self.tag_prefix}: the probe set's {len(labels)} item(s) all have class {int(labels[0])}; it "
                "needs at least two classes (for label maps: items with and without foreground)"
            )
        chance = majority_frequency(labels)
        p = self.tag_prefix
        return {
            f"{p}_knn_acc": knn_accuracy(features, labels, self.k),
            f"{p}_linear_acc": linear_accuracy(features, labels),
            f"{p}_knn_acc_baseline_chance": chance,
            f"{p}_linear_acc_baseline_chance": chance,
        }

    def features(self, engine: Engine) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N, D) of the whole probe set with the frozen network, and the class of each item (N,)."""
        modules = [getattr(engine, "network", None), self.embed, getattr(self.embed, "__self__", None)]
        modes = [(m, m.training) for root in modules if isinstance(root, torch.nn.Module) for m in root.modules()]
        features, labels = [], []
        try:
            for module, _ in modes:
                module.eval()
            with torch.no_grad(), torch.random.fork_rng():
                for batch in self.loader:
                    images = torch.as_tensor(batch["image"]).to(self.device)
                    features.append(torch.as_tensor(self.embed(images)).detach().float().reshape(len(images), -1).cpu())
                    labels.append(probe_classes(batch[self.label_key], len(images)))
        finally:
            for module, training in modes:
                module.train(training)
        if not features:
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
        return torch.cat(features), torch.cat(labels)

    def _record(self, engine: Engine, scores: Mapping[str, float], step: int) -> None:
        values = dict(scores)
        values.update({f"{name}_baseline_untrained": value for name, value in self.untrained.items()})
        engine.state.metrics.update(values)
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        if self.summary_writer is not None:
            for tag, value in values.items():
                self.summary_writer.add_scalar(tag, value, step)
        p = self.tag_prefix
        logger.info(
            f"{p} epoch {step}: "
            + ", ".join(
                f"{kind} {values[f'{p}_{kind}_acc']:.3f} (chance {values[f'{p}_{kind}_acc_baseline_chance']:.3f}"
                + (f", untrained {self.untrained[f'{p}_{kind}_acc']:.3f})" if self.untrained else ")")
                for kind in ("knn", "linear")
            )
        )
