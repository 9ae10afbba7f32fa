"""The ``skip_bad_samples`` policy: a sample that fails to load or transform is reported and replaced, never silent.

:class:`SkipBadSamplesDataset` wraps any map-style dataset (MONAI ``Dataset``, ``CacheDataset``,
``PersistentDataset``, ...). When ``dataset[i]`` raises, the failure is logged once per process with the item's
file(s) and the reason, recorded, and the next index (``i + 1``, wrapping) is tried instead, up to ``max_retries``
times: the replacement is deterministic. With ``skip_bad_samples=False`` the first failure raises
:class:`BadSampleError` naming the file(s) and the reason. :class:`BadSampleReporter` logs the table of skipped
samples after each epoch that skipped new ones and at the end of the run. In a bundle config::

    "train#dataset": {"_target_": "medssl.data.SkipBadSamplesDataset", "skip_bad_samples": "@skip_bad_samples",
                      "dataset": {"_target_": "Dataset", "data": "@train_data", "transform": "@train#preprocessing"}},
    "train#handlers": [..., {"_target_": "medssl.data.BadSampleReporter", "dataset": "@train#dataset"}]

Decisions and limits:

* DataLoader workers: every skip is appended as one JSON line to a record file (a temporary file unless
  ``record_file`` is given; truncated when the wrapper is created), so :meth:`SkipBadSamplesDataset.summary` in the
  main process counts skips made in any worker, with any multiprocessing start method. Each process logs a sample
  once, so with ``num_workers=N`` a bad sample may be logged up to N times; the summary counts it once per skip.
* ``CacheDataset`` fills its cache in the constructor, where a failure raises before this wrapper is involved: use
  ``runtime_cache=True`` (or ``"processes"``) so items load, and fail, inside ``__getitem__``, or
  :class:`RobustDataset` with ``cache=True``, which leaves failing items uncached. A failing item is never cached,
  so it is retried (and counted) every epoch.
* A failure is any ``Exception``; the reason is the innermost exception of the chain (MONAI wraps transform errors
  in ``RuntimeError("applying transform ...")``), with the failing transform's class name when MONAI gives it.

This module imports neither torch nor MONAI; ``ignite`` is imported only by :meth:`BadSampleReporter.attach`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BadSample", "BadSampleError", "BadSampleReporter", "RobustDataset", "SkipBadSamplesDataset"]

_MAX_REASON = 240
_TRANSFORM = re.compile(r"applying transform <?([\w.]+)")


class BadSampleError(RuntimeError):
    """A sample could not be loaded or transformed; ``index``, ``path`` and ``reason`` say which and why."""

    def __init__(self, index: int, path: str, reason: str, message: str | None = None) -> None:
        self.index, self.path, self.reason = index, path, reason
        super().__init__(message or f"bad sample {index} ({path}): {reason}")


@dataclass(frozen=True)
class BadSample:
    """One skipped sample: dataset index, its file(s), the first reason, and how many times it was skipped."""

    index: int
    path: str
    reason: str
    count: int


def failure_reason(exc: BaseException) -> str:
    """``"<Type>: <message>"`` of the innermost exception, ``" (in <Transform>)"`` when MONAI names one."""
    transform, root, seen = None, exc, set()
    while id(root) not in seen:
        seen.add(id(root))
        match = _TRANSFORM.search(str(root))
        transform = match.group(1).rsplit(".", 1)[-1] if match else transform
        root = root.__cause__ or root.__context__ or root
    message = " ".join(str(root).split()) or "(no message)"
    reason = f"{type(root).__name__}: {message}" + (f" (in {transform})" if transform else "")
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 3] + "..."


def _remove_if_owner(path: str, pid: int) -> None:
    if os.getpid() == pid and os.path.exists(path):
        os.remove(path)


class SkipBadSamplesDataset:
    """Map-style dataset wrapper applying the ``skip_bad_samples`` policy (module docstring).

    Args:
        dataset: dataset to wrap; items are described by ``dataset.data[index]`` when it has ``data``.
        skip_bad_samples: replace failing samples (True) or raise :class:`BadSampleError` (False).
        max_retries: consecutive replacements tried before giving up with :class:`BadSampleError`.
        path_keys: item keys whose values name the sample's files in logs and summaries.
        record_file: JSON-lines file shared with DataLoader workers; default a temporary file, made at the first bad
            sample and removed with the wrapper.
        logger_name: logger for the per-sample warnings.
    """

    def __init__(
        self,
        dataset: Any,
        skip_bad_samples: bool = True,
        max_retries: int = 10,
        path_keys: Sequence[str] = ("image", "label"),
        record_file: str | None = None,
        logger_name: str = "medssl.data",
    ) -> None:
        self.dataset = dataset
        self.skip_bad_samples = skip_bad_samples
        self.max_retries = max_retries
        self.path_keys = tuple(path_keys)
        self.logger_name = logger_name
        if record_file is None:  # created at the first bad sample, so a killed run without any leaves no file
            name = f"medssl_bad_samples_{os.getpid()}_{uuid.uuid4().hex}.jsonl"
            record_file = os.path.join(tempfile.gettempdir(), name)
            self._finalizer: weakref.finalize | None = weakref.finalize(
                self, _remove_if_owner, record_file, os.getpid()
            )
        else:
            open(record_file, "w").close()
            self._finalizer = None
        self.record_file = record_file
        self._logged: set[int] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_finalizer": None, "_logged": set()}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        size = len(self)
        index = int(index) % size
        for attempt in range(min(self.max_retries, size - 1) + 1):
            current = (index + attempt) % size
            try:
                return self.dataset[current]
            except Exception as exc:
                reason = failure_reason(exc)
                if not self.skip_bad_samples:
                    raise BadSampleError(current, self.describe(current), reason) from exc
                self._record(current, reason)
        raise BadSampleError(
            current,
            self.describe(current),
            reason,
            f"{attempt + 1} consecutive bad samples from index {index} (last {current}, {self.describe(current)}: "
            f"{reason}); skipped samples:\n{self.summary()}",
        )

    def describe(self, index: int) -> str:
        """The sample's file(s): values of ``path_keys``, else the item itself, else its index."""
        data = getattr(self.dataset, "data", None)
        if data is None or not 0 <= index < len(data):
            return f"index {index}"
        item = data[index]
        if isinstance(item, dict):
            paths = [str(item[k]) for k in self.path_keys if isinstance(item.get(k), (str, os.PathLike))]
            if paths:
                return ", ".join(paths)
        return str(item)[:_MAX_REASON]

    def _record(self, index: int, reason: str) -> None:
        path = self.describe(index)
        if index not in self._logged:
            self._logged.add(index)
            logging.getLogger(self.logger_name).warning("skipping bad sample %d (%s): %s", index, path, reason)
        line = json.dumps({"index": index, "path": path, "reason": reason}) + "\n"
        fd = os.open(self.record_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line.encode())  # one O_APPEND write per record: lines of several workers don't interleave
        finally:
            os.close(fd)

    def bad_samples(self) -> list[BadSample]:
        """Every sample skipped so far, by this process and by DataLoader workers, in order of index."""
        first: dict[int, dict[str, Any]] = {}
        counts: dict[int, int] = {}
        if os.path.exists(self.record_file):
            with open(self.record_file) as f:
                for line in f:
                    record = json.loads(line)
                    first.setdefault(record["index"], record)
                    counts[record["index"]] = counts.get(record["index"], 0) + 1
        return [BadSample(i, first[i]["path"], first[i]["reason"], counts[i]) for i in sorted(first)]

    def summary(self) -> str:
        """A plain-text table of the skipped samples (index, times, file, reason)."""
        bad = self.bad_samples()
        if not bad:
            return f"no bad samples (of {len(self)})"
        rows = [[str(b.index), str(b.count), b.path, b.reason] for b in bad]
        header = ["index", "times", "file", "reason"]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in [header, *rows]]
        title = f"{len(bad)} bad sample(s) of {len(self)} skipped ({sum(b.count for b in bad)} time(s)):"
        return "\n".join([title, *lines])


class BadSampleReporter:
    """Ignite handler: log :meth:`SkipBadSamplesDataset.summary` after each epoch in which samples not skipped
    before were skipped (warning), and once at the end of the run (a warning, or info when none were skipped).

    Args:
        dataset: the wrapper, or a DataLoader whose ``dataset`` is the wrapper.
        logger_name: logger for the summaries.
    """

    def __init__(self, dataset: Any, logger_name: str = "medssl.data") -> None:
        self.dataset: SkipBadSamplesDataset = (
            dataset if isinstance(dataset, SkipBadSamplesDataset) else getattr(dataset, "dataset", dataset)
        )
        if not isinstance(self.dataset, SkipBadSamplesDataset):
            raise TypeError(f"BadSampleReporter needs a SkipBadSamplesDataset, got {type(dataset).__name__}.")
        self.logger = logging.getLogger(logger_name)
        self.reported = 0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def epoch_completed(self, engine: Any) -> None:
        bad = self.dataset.bad_samples()
        if len(bad) > self.reported:
            self.logger.warning("epoch %d: %s", engine.state.epoch, self.dataset.summary())
            self.reported = len(bad)

    def completed(self, engine: Any) -> None:
        bad = self.dataset.bad_samples()
        self.logger.log(logging.WARNING if bad else logging.INFO, "run completed: %s", self.dataset.summary())


class RobustDataset(SkipBadSamplesDataset):
    """A MONAI ``Dataset(data, transform)`` under the ``skip_bad_samples`` policy, configured like a plain dataset.

    Bundle configs use it as ``train#dataset`` so that ``train#dataset#data`` (which MONAI Label overrides) and
    ``train#dataloader#dataset: "@train#dataset"`` (which MONAI's workflow property checks expect) keep their form.

    With ``cache=True`` the deterministic part of ``transform`` is cached in memory once per distinct item, with a
    progress bar while it fills (:class:`~medssl.data.cache.DeferredFailureCacheDataset`: MONAI's ``CacheDataset``
    keyed by content, so ``dataset_repeats`` copies share one entry); a sample that fails while caching is not cached
    and fails again on access, where it is skipped or stops the run like any bad sample. ``copy_cache=False``: see
    that class, as for ``item_keys`` (keys that differ between items sharing a cache entry, e.g. a dataset index)
    and ``as_contiguous``.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Any = None,
        skip_bad_samples: bool = True,
        cache: bool = False,
        copy_cache: bool = True,
        item_keys: Sequence[str] = (),
        as_contiguous: bool = True,
        **kwargs: Any,
    ) -> None:
        from monai.data import Dataset

        from .cache import DeferredFailureCacheDataset

        dataset = (
            DeferredFailureCacheDataset(
                data, transform, copy_cache=copy_cache, item_keys=item_keys, as_contiguous=as_contiguous
            )
            if cache
            else Dataset(data=data, transform=transform)
        )
        super().__init__(dataset, skip_bad_samples=skip_bad_samples, **kwargs)
